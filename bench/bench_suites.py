"""A team's testinfra suite through harden vs the same checks in one testinfra session.

50 typical checks (files, modes, owners, packages, users, commands) against one running container.
Baseline: the checks' own work, called directly on one ``testinfra.get_host`` (no pytest, no
start-up): what the suite costs at the least. harden: ``run_suite`` (its own pytest process, the
target opened once). Target: <= 1.5x.
"""

from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path
from typing import Any

import docker
import testinfra
from harden.verifiers.suites import run_suite

from bench.common import Result, interleaved
from harden.testsuite import Suite

IMAGE = "debian:12"
FILES = [
    "/etc/passwd",
    "/etc/group",
    "/etc/shadow",
    "/etc/hostname",
    "/etc/os-release",
    "/etc/login.defs",
    "/etc/pam.d/common-auth",
    "/etc/pam.d/su",
    "/bin/sh",
    "/usr/bin/su",
]
PACKAGES = [
    "bash",
    "coreutils",
    "dpkg",
    "apt",
    "login",
    "passwd",
    "nginx",
    "openssh-server",
    "telnet",
    "rsh-client",
]


def checks(host: Any) -> int:
    """The 50 checks, each its own testinfra call(s); returns how many held."""
    held = 0
    for f in FILES:  # 30
        held += host.file(f).exists
        held += host.file(f).user == "root"
        held += (host.file(f).mode & 0o002) == 0
    for p in PACKAGES:  # 10
        held += host.package(p).is_installed == (
            p in {"bash", "coreutils", "dpkg", "apt", "login", "passwd"}
        )
    for u in ["root", "daemon", "nobody", "sys", "bin"]:  # 5
        held += host.user(u).exists
    for c in ["true", "test -d /etc", "test ! -e /etc/nologin-x", "id -u", "umask"]:  # 5
        held += host.run(c).rc == 0
    return held


SUITE = """
import pytest
FILES = {files!r}
PACKAGES = {packages!r}
INSTALLED = {{"bash", "coreutils", "dpkg", "apt", "login", "passwd"}}

@pytest.mark.parametrize("f", FILES)
def test_exists(host, f): assert host.file(f).exists

@pytest.mark.parametrize("f", FILES)
def test_owner(host, f): assert host.file(f).user == "root"

@pytest.mark.parametrize("f", FILES)
def test_not_world_writable(host, f): assert host.file(f).mode & 0o002 == 0

@pytest.mark.parametrize("p", PACKAGES)
def test_package(host, p): assert host.package(p).is_installed == (p in INSTALLED)

@pytest.mark.parametrize("u", ["root", "daemon", "nobody", "sys", "bin"])
def test_user(host, u): assert host.user(u).exists

@pytest.mark.parametrize("c", ["true", "test -d /etc", "test ! -e /etc/nologin-x", "id -u", "umask"])
def test_command(host, c): assert host.run(c).rc == 0
"""


def run() -> list[Result]:
    client = docker.from_env()
    container = client.containers.run(
        IMAGE,
        ["/bin/sh", "-c", "sleep 3600"],
        detach=True,
        network_mode="none",
        labels={"dev.harden.temporary": "true"},
    )
    try:
        with tempfile.TemporaryDirectory(prefix="harden-bench-suite.") as tmp:
            path = Path(tmp, "test_fifty.py")
            path.write_text(textwrap.dedent(SUITE.format(files=FILES, packages=PACKAGES)))
            ref = f"docker://{container.name}"
            host = testinfra.get_host(f"docker://root@{container.name}")
            results = run_suite(Suite((path,), root=Path(tmp)), ref)
            assert len(results) == 50, len(results)
            harden_s, plain_s = interleaved(
                lambda: run_suite(Suite((path,), root=Path(tmp)), ref), lambda: checks(host), 3
            )
    finally:
        container.remove(force=True)
    ratio = harden_s / plain_s
    return [
        Result(
            "50 testinfra checks as a harden suite (one container)",
            harden_s,
            "the same checks, one testinfra session",
            plain_s,
            "<= 1.5x",
            ratio <= 1.5,
        )
    ]
