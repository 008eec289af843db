"""Behaviour of a container golden image: its command runs as a non-root user who cannot write
outside the paths meant to be writable."""

from __future__ import annotations

from typing import Any

import pytest

WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/proc", "/sys", "/dev")  # noqa: S108


def _user(config: dict[str, Any] | None) -> str:
    if config is None:
        pytest.skip("not a container image")
    return str(config.get("User") or "").split(":")[0]


@pytest.mark.controls("iso27017:CLD.9.5.2")
def test_command_runs_as_a_non_root_user(host: Any, harden_image_config: Any) -> None:
    """The image's command runs as a non-root user"""
    user = _user(harden_image_config)
    assert user not in ("", "root", "0"), f"the image runs as {user or 'root (no USER)'}"
    uid = host.run("id -u %s", user)
    assert uid.rc == 0, f"USER {user} does not exist in the image: {uid.stderr}"
    assert uid.stdout.strip() != "0", f"USER {user} has uid 0"


@pytest.mark.controls("iso27017:CLD.9.5.2")
def test_user_cannot_write_outside_writable_paths(host: Any, harden_image_config: Any) -> None:
    """The image's user can write nothing outside its home and the temporary directories"""
    user = _user(harden_image_config)
    if user in ("", "root", "0"):
        pytest.fail("the image runs as root: everything is writable")
    home = host.run("getent passwd %s", user).stdout.split(":")[5:6]
    allowed = (*WRITABLE, *home)
    # as the user (setpriv drops to its uid, gids and no capabilities), list what it may write
    probe = host.run(
        "setpriv --reuid=%s --regid=%s --init-groups --inh-caps=-all "
        "find / -xdev -writable -not -type l -print 2>/dev/null | head -n 200",
        user,
        user,
    )
    assert probe.rc == 0 or probe.stdout, f"could not run as {user}: {probe.stderr}"
    found = [
        p
        for p in probe.stdout.splitlines()
        if p and not any(p == a or p.startswith(a.rstrip("/") + "/") for a in allowed)
    ]
    assert found == [], f"{user} can write: {', '.join(found[:20])}"
    # and a real write attempt in a system directory fails
    attempt = host.run(
        "setpriv --reuid=%s --regid=%s --init-groups --inh-caps=-all touch /usr/harden-probe",
        user,
        user,
    )
    assert attempt.rc != 0, "the user created /usr/harden-probe"
