"""Credentials from the docker config: inline auths, credential helpers, DOCKER_CONFIG."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harden.errors import ExitCode, InputError, RegistryError
from harden.oci import Credentials, load_docker_credentials


def write_config(tmp_path: Path, doc: dict[str, Any]) -> dict[str, str]:
    (tmp_path / "config.json").write_text(json.dumps(doc))
    return {"DOCKER_CONFIG": str(tmp_path), "HOME": "/nonexistent"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_inline_auth_for_host_and_url_keys(tmp_path: Path) -> None:
    env = write_config(
        tmp_path,
        {
            "auths": {
                "127.0.0.1:5443": {"auth": b64("alice:pa:ss")},
                "https://reg.example.com": {"auth": b64("bob:pw")},
            }
        },
    )
    assert load_docker_credentials("127.0.0.1:5443", env=env) == Credentials("alice", "pa:ss")
    assert load_docker_credentials("reg.example.com", env=env) == Credentials("bob", "pw")
    assert load_docker_credentials("other:5000", env=env) is None


def test_missing_config_means_no_credentials(tmp_path: Path) -> None:
    assert load_docker_credentials("x:1", env={"DOCKER_CONFIG": str(tmp_path / "none")}) is None


def test_home_default_location(tmp_path: Path) -> None:
    (tmp_path / ".docker").mkdir()
    (tmp_path / ".docker" / "config.json").write_text(
        json.dumps({"auths": {"h:1": {"auth": b64("u:p")}}})
    )
    assert load_docker_credentials("h:1", env={"HOME": str(tmp_path)}) == Credentials("u", "p")


def test_broken_config_is_invalid_input(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError):
        load_docker_credentials("h:1", env={"DOCKER_CONFIG": str(tmp_path)})
    env = write_config(tmp_path, {"auths": {"h:1": {"auth": "!!!"}}})
    with pytest.raises(InputError) as info:
        load_docker_credentials("h:1", env=env)
    assert "!!!" not in info.value.diagnostics()


class FakeRunner:
    def __init__(self, returncode: int = 0, stdout: bytes = b"", missing: bool = False) -> None:
        self.calls: list[tuple[list[str], bytes]] = []
        self.returncode, self.stdout, self.missing = returncode, stdout, missing

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        self.calls.append((argv, kwargs["input"]))
        if self.missing:
            raise FileNotFoundError(argv[0])
        return subprocess.CompletedProcess(argv, self.returncode, self.stdout, b"")


def test_cred_helper_wins_over_store_and_gets_server_on_stdin(tmp_path: Path) -> None:
    env = write_config(tmp_path, {"credsStore": "desktop", "credHelpers": {"h:1": "pass"}})
    runner = FakeRunner(stdout=b'{"ServerURL":"h:1","Username":"u","Secret":"s"}')
    assert load_docker_credentials("h:1", env=env, runner=runner) == Credentials("u", "s")
    assert runner.calls == [(["docker-credential-pass", "get"], b"h:1")]
    runner.calls.clear()
    load_docker_credentials("other:2", env=env, runner=runner)
    assert runner.calls[0][0] == ["docker-credential-desktop", "get"]


def test_helper_identity_token_and_not_found(tmp_path: Path) -> None:
    env = write_config(tmp_path, {"credsStore": "x"})
    token = FakeRunner(stdout=b'{"Username":"<token>","Secret":"refresh"}')
    creds = load_docker_credentials("h:1", env=env, runner=token)
    assert creds is not None and creds.identity_token == "refresh" and creds.username == ""
    none = FakeRunner(returncode=1, stdout=b"credentials not found in native keychain")
    assert load_docker_credentials("h:1", env=env, runner=none) is None


def test_missing_or_failing_helper_is_a_registry_error_with_hint(tmp_path: Path) -> None:
    env = write_config(tmp_path, {"credsStore": "nosuch"})
    with pytest.raises(RegistryError) as info:
        load_docker_credentials("h:1", env=env, runner=FakeRunner(missing=True))
    assert info.value.exit_code == ExitCode.ENVIRONMENT
    assert "docker-credential-nosuch" in (info.value.hint or "")
    failing = FakeRunner(returncode=2, stdout=b"secret-echo")
    with pytest.raises(RegistryError) as info:
        load_docker_credentials("h:1", env=env, runner=failing)
    assert "secret-echo" not in info.value.diagnostics()


def test_real_helper_program_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    helper = tmp_path / "bin" / "docker-credential-harden-test"
    helper.parent.mkdir()
    helper.write_text(
        '#!/bin/sh\nread server\nprintf \'{"ServerURL":"%s","Username":"u-%s","Secret":"s"}\' '
        '"$server" "$server"\n'
    )
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{helper.parent}{os.pathsep}{os.environ['PATH']}")
    env = write_config(tmp_path, {"credHelpers": {"h:1": "harden-test"}})
    assert load_docker_credentials("h:1", env=env) == Credentials("u-h:1", "s")
