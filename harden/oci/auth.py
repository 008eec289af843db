"""Registry credentials from the docker client configuration.

Reads ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``) the way the docker CLI
does: a per-registry ``credHelpers`` entry wins, then an inline ``auths.<host>.auth``
(base64 ``user:password``), then the global ``credsStore``. A helper is the program
``docker-credential-<name>``, run with the server address on stdin.

Secrets never reach a log line, an exception message or a ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harden.errors import InputError, RegistryError

Runner = Callable[..., "subprocess.CompletedProcess[bytes]"]

#: docker-credential helpers answer this on stdout/stderr when they know no credentials
_NOT_FOUND_MARKERS = ("credentials not found", "not found in native keychain")
_HELPER_TIMEOUT = 30.0
_MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class Credentials:
    """Username and secret for one registry. ``identity_token`` is an OAuth2 refresh token."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # never show a secret, even by accident
        return f"Credentials(username={self.username!r}, password=<redacted>)"


def docker_config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("DOCKER_CONFIG")
    if base:
        return Path(base) / "config.json"
    return Path(env.get("HOME", str(Path.home()))) / ".docker" / "config.json"


def _host_keys(registry: str) -> list[str]:
    """The spellings a registry may have as a key in ``auths``/``credHelpers``."""
    keys = [registry, f"https://{registry}", f"http://{registry}"]
    keys += [f"{k}/v1/" for k in keys[1:]] + [f"{k}/v2/" for k in keys[1:]]
    if registry in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        keys.append("https://index.docker.io/v1/")
    return keys


def _load_config(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            raw = fh.read(_MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise RegistryError(
            f"cannot read docker config {path}: {e.strerror}",
            hint="fix its permissions or point DOCKER_CONFIG at another directory",
        ) from e
    if len(raw) > _MAX_CONFIG_BYTES:
        raise InputError(f"docker config {path} is larger than 1 MiB")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(
            f"docker config {path} is not valid JSON",
            hint="run `docker login` again or repair the file",
        ) from e
    if not isinstance(data, dict):
        raise InputError(f"docker config {path} is not a JSON object")
    return data


def _from_helper(helper: str, registry: str, runner: Runner) -> Credentials | None:
    program = f"docker-credential-{helper}"
    try:
        proc = runner(
            [program, "get"],
            input=registry.encode(),
            capture_output=True,
            timeout=_HELPER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError as e:
        raise RegistryError(
            f"docker credential helper {program} for {registry} is not installed",
            hint=f"install {program}, or remove it from credsStore/credHelpers in "
            f"{docker_config_path()}",
        ) from e
    except subprocess.TimeoutExpired as e:
        raise RegistryError(
            f"docker credential helper {program} did not answer for {registry}",
            hint="unlock the keychain it uses, or log in again with `docker login`",
        ) from e
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        text = (out + proc.stderr.decode(errors="replace")).lower()
        if any(m in text for m in _NOT_FOUND_MARKERS):
            return None
        # the helper's output may echo secrets: do not include it
        raise RegistryError(
            f"docker credential helper {program} failed for {registry} (exit {proc.returncode})",
            hint=f"run `echo {registry} | {program} get` to see why",
        )
    try:
        answer = json.loads(out)
        username = str(answer.get("Username", ""))
        secret = str(answer.get("Secret", ""))
    except (ValueError, AttributeError) as e:
        raise RegistryError(
            f"docker credential helper {program} gave an unreadable answer for {registry}"
        ) from e
    if username == "<token>":
        return Credentials(identity_token=secret)
    return Credentials(username=username, password=secret)


def _from_auth_entry(entry: Mapping[str, Any], registry: str, path: Path) -> Credentials | None:
    token = entry.get("identitytoken")
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode()
            username, sep, password = decoded.partition(":")
        except (binascii.Error, UnicodeDecodeError) as e:
            raise InputError(
                f"docker config {path}: auths entry for {registry} is not base64 user:password",
                hint=f"run `docker login {registry}` again",
            ) from e
        if not sep:
            raise InputError(
                f"docker config {path}: auths entry for {registry} has no ':' separator",
                hint=f"run `docker login {registry}` again",
            )
        return Credentials(
            username=username,
            password=password,
            identity_token=token if isinstance(token, str) and token else None,
        )
    if isinstance(token, str) and token:
        return Credentials(identity_token=token)
    return None


def load_docker_credentials(
    registry: str,
    *,
    env: Mapping[str, str] | None = None,
    runner: Runner = subprocess.run,
) -> Credentials | None:
    """Credentials for ``registry`` (``host[:port]``) or None when the config has none."""
    path = docker_config_path(env)
    config = _load_config(path)
    keys = _host_keys(registry)
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict):
        for key in keys:
            name = helpers.get(key)
            if isinstance(name, str) and name:
                return _from_helper(name, registry, runner)
    auths = config.get("auths")
    if isinstance(auths, dict):
        for key in keys:
            entry = auths.get(key)
            if isinstance(entry, dict):
                creds = _from_auth_entry(entry, registry, path)
                if creds is not None:
                    return creds
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        return _from_helper(store, registry, runner)
    return None
