"""Signing keys: generation, signers picked by key URI scheme, public keys with a stable keyid.

Private keys are PKCS#8 PEM encrypted with a password; public keys are SubjectPublicKeyInfo PEM
(the format cosign uses for ECDSA P-256). The keyid is the lowercase hex SHA-256 of the DER
SubjectPublicKeyInfo, so it is the same whoever computes it and whatever the file looks like.

Signing itself is securesystemslib's :class:`CryptoSigner`; this module only loads keys.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from securesystemslib.exceptions import UnverifiedSignatureError, VerificationError
from securesystemslib.signer import (  # type: ignore[attr-defined]  # no __all__ upstream
    CryptoSigner,
    Signature,
    Signer,
    SSlibKey,
)

from harden.errors import SigningKeyError, UsageError

__all__ = [
    "PASSWORD_ENV",
    "SIGNER_FOR_URI_SCHEME",
    "KeyType",
    "PublicKey",
    "Signer",
    "keygen",
    "load_public_key",
    "load_signer",
    "password_from_env_or_prompt",
    "public_key_from_pem",
    "signer_public_key",
]

PASSWORD_ENV = "HARDEN_KEY_PASSWORD"  # noqa: S105 - the variable name, not a password
MAX_KEY_FILE_BYTES = 64 * 1024

_ECDSA_P256_SCHEME = "ecdsa-sha2-nistp256"
_ED25519_SCHEME = "ed25519"


class KeyType(StrEnum):
    ECDSA_P256 = "ecdsa-p256"
    ED25519 = "ed25519"


@dataclass(frozen=True)
class PublicKey:
    """A verification key. ``keyid`` = hex SHA-256 of the DER SubjectPublicKeyInfo."""

    keyid: str
    key_type: KeyType
    pem: bytes
    sslib_key: SSlibKey

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when ``signature`` is this key's signature over exactly ``data``."""
        sig = Signature(self.sslib_key.keyid, signature.hex())
        try:
            self.sslib_key.verify_signature(sig, data)
        except (UnverifiedSignatureError, VerificationError):
            return False
        return True


def _key_type_of(key: PublicKeyTypes, source: str) -> tuple[KeyType, str]:
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return KeyType.ECDSA_P256, _ECDSA_P256_SCHEME
    if isinstance(key, Ed25519PublicKey):
        return KeyType.ED25519, _ED25519_SCHEME
    raise SigningKeyError(
        f"{source}: unsupported key type {type(key).__name__}",
        hint="harden signs with ECDSA P-256 or Ed25519 keys; make one with `harden keygen`",
    )


def _spki_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _public_key(key: PublicKeyTypes, source: str) -> PublicKey:
    key_type, scheme = _key_type_of(key, source)
    keyid = hashlib.sha256(_spki_der(key)).hexdigest()
    pem = key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    return PublicKey(keyid, key_type, pem, SSlibKey.from_crypto(key, keyid, scheme))


def public_key_from_pem(data: bytes, source: str = "public key") -> PublicKey:
    if _pem_kind(data) == "private":
        raise SigningKeyError(
            f"{source} is a private key, but checking signatures needs the public key",
            hint="pass the PREFIX.pub written by `harden keygen` (keep the PREFIX.key secret: "
            "only `attest` and `build` take it)",
        )
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise SigningKeyError(
            f"{source}: not a PEM SubjectPublicKeyInfo public key ({e})",
            hint="pass the .pub file written by `harden keygen` (or a cosign public key)",
        ) from e
    return _public_key(key, source)


def load_public_key(path: Path) -> PublicKey:
    return public_key_from_pem(_read_small(path, "public key"), str(path))


def signer_public_key(signer: Signer) -> PublicKey:
    """The :class:`PublicKey` of a signer made by :func:`load_signer`."""
    key = signer.public_key
    if not isinstance(key, SSlibKey):
        raise SigningKeyError(f"signer key {type(key).__name__} is not a local key")
    value = key.keyval.get("public", "")
    crypto_key: PublicKeyTypes
    if key.keytype == "ed25519":
        crypto_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(value))
    else:
        crypto_key = load_pem_public_key(value.encode())
    return _public_key(crypto_key, "signer")


# ---------------------------------------------------------------- generation


def keygen(key_type: KeyType, out_prefix: Path, password: bytes) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (encrypted PKCS#8 PEM, mode 0600) and ``PREFIX.pub`` (SPKI PEM).

    Refuses to overwrite either file (SigningKeyError, exit 4). Each file is written to a
    temporary file first and linked into place, so a crash never leaves half a key.
    """
    if not password:
        raise UsageError(
            "an empty password would leave the private key unencrypted",
            hint=f"set {PASSWORD_ENV} or type a password at the prompt",
        )
    key_path = out_prefix.with_name(out_prefix.name + ".key")
    pub_path = out_prefix.with_name(out_prefix.name + ".pub")
    for p in (key_path, pub_path):
        if p.exists() or p.is_symlink():
            raise SigningKeyError(
                f"{p} already exists; refusing to overwrite a key",
                hint="choose another --out prefix or move the old key away first",
            )
    private: PrivateKeyTypes
    match key_type:
        case KeyType.ECDSA_P256:
            private = ec.generate_private_key(ec.SECP256R1())
        case KeyType.ED25519:
            private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(password)
    )
    public_pem = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    _write_new(key_path, private_pem, 0o600)
    try:
        _write_new(pub_path, public_pem, 0o644)
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise
    return key_path, pub_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Atomically create ``path`` (temp file + hard link, which fails if it exists)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError as e:
            raise SigningKeyError(
                f"{path} already exists; refusing to overwrite a key",
                hint="choose another --out prefix or move the old key away first",
            ) from e
    finally:
        Path(tmp).unlink(missing_ok=True)


# ---------------------------------------------------------------- signers by key URI scheme

SignerLoader = Callable[[str, bytes | None], Signer]


def _load_file_signer(
    path_text: str, password: bytes | None, *, allow_unencrypted: bool = False
) -> Signer:
    path = Path(path_text)
    try:
        st = path.stat()
    except OSError as e:
        raise SigningKeyError(
            f"cannot read private key {path}: {e.strerror}",
            hint="pass --key file:PATH of a key made by `harden keygen`",
        ) from e
    if not stat.S_ISREG(st.st_mode):
        raise SigningKeyError(f"private key {path} is not a regular file")
    data = _read_small(path, "private key")
    if _pem_kind(data) == "public":
        # said before the mode check: a world-readable .pub is not a permissions problem
        raise SigningKeyError(
            f"{path} is a public key, but signing needs the private key",
            hint="pass the PREFIX.key written by `harden keygen`; the PREFIX.pub is what "
            "`promote`, `status` and `attestation verify` take as --key",
        )
    if st.st_mode & 0o077:
        raise SigningKeyError(
            f"private key {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"chmod 600 {path}",
        )
    # PKCS#8 ("ENCRYPTED PRIVATE KEY") or traditional OpenSSL armour ("Proc-Type: 4,ENCRYPTED")
    encrypted = b"ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data
    if not encrypted and not allow_unencrypted:
        raise SigningKeyError(
            f"private key {path} is not encrypted",
            hint="re-create it with `harden keygen` (PKCS#8, encrypted with a password), or "
            "pass --allow-unencrypted-key when the key is protected otherwise",
        )
    try:
        private = load_pem_private_key(data, (password or None) if encrypted else None)
    except TypeError as e:
        raise SigningKeyError(
            f"private key {path} is encrypted and no password was given",
            hint=f"set {PASSWORD_ENV} or run interactively to be prompted",
        ) from e
    except ValueError as e:
        raise SigningKeyError(
            f"cannot decrypt private key {path}: wrong password or not a PEM PKCS#8 key",
            hint=f"check {PASSWORD_ENV}",
        ) from e
    pub = _public_key(private.public_key(), str(path))
    try:
        return CryptoSigner(private, pub.sslib_key)
    except ValueError as e:  # pragma: no cover - _public_key already filtered key types
        raise SigningKeyError(f"private key {path}: {e}") from e


def _pem_kind(data: bytes) -> str:
    """ "public", "private" or "" from the PEM armour (the first BEGIN line)."""
    head = data[:4096]
    begin = head.find(b"-----BEGIN ")
    if begin < 0:
        return ""
    label = head[begin + 11 : head.find(b"-----", begin + 11)]
    if label.endswith(b"PUBLIC KEY"):
        return "public"
    if label.endswith(b"PRIVATE KEY"):
        return "private"
    return ""


# key URI scheme -> loader. A KMS adapter registers itself here (imported lazily by its module).
SIGNER_FOR_URI_SCHEME: dict[str, SignerLoader] = {
    "file": _load_file_signer,
}


def load_signer(uri: str, password: bytes | None, *, allow_unencrypted: bool = False) -> Signer:
    """A signer for ``uri``: ``file:PATH`` or a bare path; other schemes from the dict.
    An unencrypted private key file is refused unless ``allow_unencrypted``."""
    scheme, sep, rest = uri.partition(":")
    if not sep or "/" in scheme or os.sep in scheme or len(scheme) < 2:
        # a bare path (also "C:\\..." style or "./x:y")
        scheme, rest = "file", uri
    elif scheme not in SIGNER_FOR_URI_SCHEME and Path(uri).exists():
        scheme, rest = "file", uri
    loader = SIGNER_FOR_URI_SCHEME.get(scheme)
    if loader is None:
        supported = ", ".join(f"{s}:" for s in sorted(SIGNER_FOR_URI_SCHEME))
        raise UsageError(
            f"unsupported key URI scheme {scheme!r} in {uri!r}",
            hint=f"supported schemes: {supported} (or a plain file path)",
        )
    if scheme == "file" and rest.startswith("//"):
        rest = rest[2:]  # file:///abs/path
    if not rest:
        raise UsageError(f"key URI {uri!r} names no key", hint="use file:PATH")
    if loader is _load_file_signer:
        return _load_file_signer(rest, password, allow_unencrypted=allow_unencrypted)
    return loader(rest, password)


def password_from_env_or_prompt(
    prompt: Callable[[], str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> bytes:
    """The key password from ``$HARDEN_KEY_PASSWORD``, else from ``prompt()`` (if given)."""
    env = os.environ if environ is None else environ
    value = env.get(PASSWORD_ENV)
    if value is not None:
        return value.encode()
    if prompt is None:
        raise SigningKeyError(
            f"no terminal to ask for the key password and {PASSWORD_ENV} is not set",
            hint=f"set {PASSWORD_ENV} (CI: from a secret) or run in a terminal",
        )
    return prompt().encode()


def _read_small(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as e:
        raise SigningKeyError(f"cannot read {what} {path}: {e.strerror}") from e
    if len(data) > MAX_KEY_FILE_BYTES:
        raise SigningKeyError(f"{what} {path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    return data
