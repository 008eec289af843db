"""`harden verify ssh://...` from the command line against a real sshd (in a container)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import harden_cli
import pytest
from vm_fixtures import SshdServer

from harden.builder.ssh_target import known_hosts_name
from harden.errors import TargetError

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def harden(*args: str) -> subprocess.CompletedProcess[str]:
    return harden_cli.run(*args, timeout=300)


def test_verify_over_ssh_with_a_pinned_host_key(sshd_server: SshdServer, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(
        f"{known_hosts_name(sshd_server.host, sshd_server.port)} {sshd_server.host_key_line}\n"
    )
    url = f"ssh://{sshd_server.user}@{sshd_server.host}:{sshd_server.port}"
    r = harden(
        "verify",
        url,
        "--known-hosts",
        str(known),
        "-i",
        str(sshd_server.key_path),
        "--baseline",
        "debian-common",
        "--format",
        "json",
    )
    assert r.returncode in (0, 1), r.stderr
    report = json.loads(r.stdout)
    assert report["target"] == "vm" and report["platform"] == "debian 12"
    assert report["summary"]["error"] == 0 and report["summary"]["total"] > 60


def test_verify_over_ssh_refuses_an_unknown_host_key(
    sshd_server: SshdServer, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    url = f"ssh://{sshd_server.user}@{sshd_server.host}:{sshd_server.port}"
    r = harden("verify", url, "--known-hosts", str(empty), "-i", str(sshd_server.key_path))
    assert r.returncode == 4, r.stderr
    assert "SHA256:" in r.stderr and "Traceback" not in r.stderr


def test_a_host_that_prints_without_end_is_refused_at_the_output_limit(
    sshd_server: SshdServer,
) -> None:
    """A hostile or broken host cannot grow harden's memory: one command's output is read up to
    the target's limit, then refused (TargetError: exit 4 from the CLI); the connection stays
    usable for the next command."""
    target = sshd_server.target()
    target.max_output = 1 << 20
    with pytest.raises(TargetError, match=r"printed more than 1 MiB: refused"):
        target.run("yes harden-output-without-end")
    assert target.run("echo still-here").stdout == b"still-here\n"
    # stderr counts as well
    with pytest.raises(TargetError, match="refused"):
        target.run("yes harden-output-without-end >&2")
    assert target.run("head -c 900000 /dev/zero | wc -c").stdout.strip() == b"900000"
