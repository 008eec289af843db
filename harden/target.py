"""The Target interface: something harden can run shell on (a container, a VM over SSH).

Adapters live in ``builder/`` (docker, qemu+SSH); the core and the verifiers only see this.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

# A walk of a target's file system (the fact walk, the suid and world-writable remediations)
# enters every local file system, not only the one "/" is on: a partitioned VM keeps /var,
# /home, ... on file systems of their own. It skips the kernel's own trees and file systems,
# and network or FUSE mounts, whose files are another machine's (or a user's) and which a walk
# could hang on.
WALK_SKIP_PATHS = ("/proc", "/sys", "/dev", "/run")
WALK_SKIP_FSTYPES = (
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "securityfs", "debugfs",
    "tracefs", "bpf", "pstore", "configfs", "fusectl", "mqueue", "hugetlbfs", "binfmt_misc",
    "autofs", "nfs", "nfs4", "cifs", "smb3", "9p", "fuse", "fuse.sshfs", "ceph", "glusterfs",
)  # fmt: skip


def walk_prune(root: str = "") -> str:
    """``find`` words that prune what a walk skips, ending in ``-o``; ``root`` is a shell word
    prefixed to the paths (``"$R"`` for a remediation against a root folder)."""
    tests = [f"-path {root}{p}" for p in WALK_SKIP_PATHS]
    tests += [f"-fstype {t}" for t in WALK_SKIP_FSTYPES]
    return "\\( " + " -o ".join(tests) + " \\) -prune -o"


# What one command on a target may print (stdout and stderr together) before harden stops
# reading and refuses: a fact script prints a few megabytes (the walk lists only setuid,
# world-writable and foreign-owned entries); a hostile or broken target must not grow harden's
# memory without bound.
MAX_TARGET_OUTPUT = 64 << 20


def output_refused(target: str, limit: int) -> str:
    return (
        f"{target}: the command printed more than {limit >> 20} MiB: refused "
        "(harden reads at most that much from a target)"
    )


class TargetKind(StrEnum):
    CONTAINER = "container"
    VM = "vm"


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


class Target(Protocol):
    kind: TargetKind

    def describe(self) -> str:
        """How the user named it (image ref, ssh://user@host:port, file.qcow2)."""
        ...

    def run(self, script: str, *, timeout: float = 600.0) -> CommandResult:
        """Run ``script`` with /bin/sh as root on the target; never raises for a non-zero exit."""
        ...

    def image_config(self) -> dict[str, Any] | None:
        """The container image config (User, Env, Healthcheck, Labels); None on a VM."""
        ...
