"""Key mistakes said plainly: a public key where the private one is expected (and the reverse),
no terminal and no password, an unencrypted private key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harden.attest.keys import KeyType, keygen, load_public_key, load_signer
from harden.errors import ExitCode, SigningKeyError

PW = b"correct horse"
ROOT = Path(__file__).resolve().parents[2]


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("HARDEN_")}
    full |= {"PYTHONPATH": str(ROOT), "HARDEN_HOME": str(cwd / "home")} | (env or {})
    return subprocess.run(
        [sys.executable, "-c", "from harden.cli import main; main()", *args],
        cwd=cwd,
        env=full,
        stdin=subprocess.DEVNULL,  # no terminal
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_public_key_given_to_sign_is_named_as_such(tmp_path: Path) -> None:
    _, pub = keygen(KeyType.ECDSA_P256, tmp_path / "k", PW)
    pub.chmod(0o644)  # as keygen leaves it: not a permissions problem
    with pytest.raises(SigningKeyError) as e:
        load_signer(f"file:{pub}", PW)
    assert "is a public key" in e.value.message
    assert e.value.hint is not None and ".key" in e.value.hint


def test_private_key_given_to_check_is_named_as_such(tmp_path: Path) -> None:
    key, _ = keygen(KeyType.ED25519, tmp_path / "k", PW)
    with pytest.raises(SigningKeyError) as e:
        load_public_key(key)
    assert "is a private key" in e.value.message
    assert "BEGIN" not in str(e.value.diagnostics())


def _unencrypted(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def test_unencrypted_private_key_refused_unless_allowed(tmp_path: Path) -> None:
    path = _unencrypted(tmp_path / "plain.key")
    with pytest.raises(SigningKeyError) as e:
        load_signer(str(path), PW)
    assert "not encrypted" in e.value.message
    assert e.value.hint is not None and "--allow-unencrypted-key" in e.value.hint
    assert load_signer(str(path), None, allow_unencrypted=True).public_key.keyid


def test_no_terminal_and_no_password_is_exit_4_naming_the_variable(tmp_path: Path) -> None:
    proc = cli("keygen", "--out", str(tmp_path / "k"), cwd=tmp_path)
    assert proc.returncode == int(ExitCode.ENVIRONMENT), proc.stderr
    assert "HARDEN_KEY_PASSWORD" in proc.stderr
    assert "GetPassWarning" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "k.key").exists()


def test_cli_attest_with_public_key_says_so(tmp_path: Path) -> None:
    _, pub = keygen(KeyType.ECDSA_P256, tmp_path / "k", PW)
    proc = cli(
        "attest",
        "127.0.0.1:9/none:1",
        "--key",
        str(pub),
        cwd=tmp_path,
        env={"HARDEN_KEY_PASSWORD": PW.decode()},
    )
    assert proc.returncode == int(ExitCode.ENVIRONMENT)
    assert "is a public key" in proc.stderr
    assert "wrong password" not in proc.stderr and "accessible by group" not in proc.stderr


def test_cli_unencrypted_key_needs_no_password_when_allowed(tmp_path: Path) -> None:
    path = _unencrypted(tmp_path / "plain.key")
    refused = cli("attest", "127.0.0.1:9/none:1", "--key", str(path), cwd=tmp_path)
    assert refused.returncode == int(ExitCode.ENVIRONMENT)
    assert "not encrypted" in refused.stderr
    allowed = cli(
        "attest", "127.0.0.1:9/none:1", "--key", str(path), "--allow-unencrypted-key", cwd=tmp_path
    )
    # the key is accepted; the command then fails on the (closed) registry port, not on the key
    assert "not encrypted" not in allowed.stderr and "password" not in allowed.stderr
    assert allowed.returncode == int(ExitCode.ENVIRONMENT)
