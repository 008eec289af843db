"""Signing keys: generation, file modes, passwords, keyids, key URI schemes, `harden keygen`."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

from harden.attest import keys
from harden.attest.keys import KeyType, keygen, load_public_key, load_signer
from harden.errors import ExitCode, SigningKeyError, UsageError

PW = b"correct horse"


@pytest.mark.parametrize("key_type", list(KeyType))
def test_keygen_writes_encrypted_key_0600_and_public_key(tmp_path: Path, key_type: KeyType) -> None:
    key_path, pub_path = keygen(key_type, tmp_path / "sub" / "signing", PW)
    assert key_path == tmp_path / "sub" / "signing.key"
    assert pub_path == tmp_path / "sub" / "signing.pub"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert pub_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert not [p for p in key_path.parent.iterdir() if p.name.startswith(".")]  # no temp left

    signer = load_signer(f"file:{key_path}", PW)
    pub = load_public_key(pub_path)
    assert pub.key_type is key_type
    sig = signer.sign(b"data")
    assert pub.verify(bytes.fromhex(sig.signature), b"data")
    assert not pub.verify(bytes.fromhex(sig.signature), b"datA")
    assert keys.signer_public_key(signer).keyid == pub.keyid


def test_keyid_is_sha256_of_der_spki_and_stable(tmp_path: Path) -> None:
    _, pub_path = keygen(KeyType.ECDSA_P256, tmp_path / "k", PW)
    der = load_pem_public_key(pub_path.read_bytes()).public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
    a = load_public_key(pub_path)
    b = load_public_key(pub_path)
    assert a.keyid == b.keyid == hashlib.sha256(der).hexdigest()
    # the signer made from the private key reports the same keyid
    assert load_signer(str(tmp_path / "k.key"), PW).public_key.keyid == a.keyid


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    keygen(KeyType.ED25519, tmp_path / "k", PW)
    before = (tmp_path / "k.key").read_bytes()
    with pytest.raises(SigningKeyError) as e:
        keygen(KeyType.ED25519, tmp_path / "k", PW)
    assert e.value.exit_code == ExitCode.ENVIRONMENT
    assert (tmp_path / "k.key").read_bytes() == before
    # only the .pub existing is also refused, and no .key is left behind
    (tmp_path / "p.pub").write_text("x")
    with pytest.raises(SigningKeyError):
        keygen(KeyType.ED25519, tmp_path / "p", PW)
    assert not (tmp_path / "p.key").exists()


def test_keygen_refuses_empty_password(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        keygen(KeyType.ED25519, tmp_path / "k", b"")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_group_or_world_readable_private_key_refused(tmp_path: Path, mode: int) -> None:
    key_path, _ = keygen(KeyType.ECDSA_P256, tmp_path / "k", PW)
    os.chmod(key_path, mode)
    with pytest.raises(SigningKeyError) as e:
        load_signer(str(key_path), PW)
    assert int(e.value.exit_code) == 4
    assert e.value.hint == f"chmod 600 {key_path}"


def test_wrong_or_missing_password_refused(tmp_path: Path) -> None:
    key_path, _ = keygen(KeyType.ED25519, tmp_path / "k", PW)
    with pytest.raises(SigningKeyError, match="wrong password"):
        load_signer(str(key_path), b"nope")
    with pytest.raises(SigningKeyError, match="no password"):
        load_signer(str(key_path), None)


def test_missing_key_and_garbage_key(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="cannot read"):
        load_signer(str(tmp_path / "absent.key"), PW)
    junk = tmp_path / "junk.key"
    junk.write_bytes(b"not a key")
    junk.chmod(0o600)
    with pytest.raises(SigningKeyError):
        load_signer(str(junk), PW)
    bad_pub = tmp_path / "bad.pub"
    bad_pub.write_bytes(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(SigningKeyError, match="not a PEM"):
        load_public_key(bad_pub)


def test_key_uri_schemes(tmp_path: Path) -> None:
    key_path, _ = keygen(KeyType.ED25519, tmp_path / "k", PW)
    a = load_signer(f"file:{key_path}", PW).public_key.keyid
    b = load_signer(str(key_path), PW).public_key.keyid
    c = load_signer(f"file://{key_path}", PW).public_key.keyid
    assert a == b == c
    with pytest.raises(UsageError) as e:
        load_signer("awskms:///alias/harden", None)
    assert e.value.exit_code == ExitCode.USAGE
    assert e.value.hint is not None and "file:" in e.value.hint


def test_scheme_dict_is_open_for_new_signers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_path, _ = keygen(KeyType.ED25519, tmp_path / "k", PW)
    seen: list[str] = []

    def fake_kms(rest: str, password: bytes | None) -> keys.Signer:
        seen.append(rest)
        return load_signer(str(key_path), PW)

    monkeypatch.setitem(keys.SIGNER_FOR_URI_SCHEME, "testkms", fake_kms)
    load_signer("testkms://projects/p/keys/k", None)
    assert seen == ["//projects/p/keys/k"]


def test_password_from_env_or_prompt() -> None:
    env = {"HARDEN_KEY_PASSWORD": "s3cret"}
    assert keys.password_from_env_or_prompt(lambda: "typed", environ=env) == b"s3cret"
    assert keys.password_from_env_or_prompt(lambda: "typed", environ={}) == b"typed"
    with pytest.raises(SigningKeyError):
        keys.password_from_env_or_prompt(None, environ={})


def test_cli_keygen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harden.cli import cli

    monkeypatch.setenv("HARDEN_KEY_PASSWORD", "pw")
    runner = CliRunner()
    out = tmp_path / "ci"
    r = runner.invoke(cli, ["keygen", "--type", "ed25519", "--out", str(out)])
    assert r.exit_code == 0, r.output
    pub = load_public_key(tmp_path / "ci.pub")
    assert f"keyid: {pub.keyid}" in r.stderr
    assert str(tmp_path / "ci.pub") in r.stderr
    assert r.stdout == ""
    assert stat.S_IMODE((tmp_path / "ci.key").stat().st_mode) == 0o600
    r2 = runner.invoke(cli, ["keygen", "--out", str(out)])
    assert isinstance(r2.exception, SigningKeyError)
    assert r2.exception.exit_code == 4


def test_cli_keygen_prompts_with_confirmation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harden.cli import cli

    monkeypatch.delenv("HARDEN_KEY_PASSWORD", raising=False)
    monkeypatch.setattr("harden.cli.common._is_terminal", lambda: True)  # CliRunner has no tty
    r = CliRunner().invoke(cli, ["keygen", "--out", str(tmp_path / "p")], input="abc\nabc\n")
    assert r.exit_code == 0, r.output
    load_signer(str(tmp_path / "p.key"), b"abc")
