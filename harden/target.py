"""The Target interface: something harden can run shell on (a container, a VM over SSH).

Adapters live in ``builder/`` (docker, qemu+SSH); the core and the verifiers only see this.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


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
