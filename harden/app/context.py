"""The collaborators every use case takes explicitly: clock, audit log, registry clients, progress.

``Context.from_environment()`` is what the CLI (and any service) builds once per command: the
clock honours ``$HARDEN_NOW``, the audit log is ``$HARDEN_HOME/audit.db`` (or in ``$HARDEN_DB``),
registry clients use the docker config's credentials. Tests build a ``Context`` with a
``FixedClock``, an audit log in a temp dir and a client factory over a fake registry.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from harden.audit import AuditLog
from harden.clock import Clock, clock_from_environment

if TYPE_CHECKING:
    from harden.oci.client import RegistryClient
    from harden.oci.types import Reference

Progress = Callable[[str], None]
ClientFactory = Callable[[str], "RegistryClient"]  # registry host[:port] -> a client


def no_progress(_: str) -> None:
    return None


def default_client(registry: str) -> RegistryClient:
    """A client for ``registry`` with credentials from the docker config."""
    from harden.oci.client import RegistryClient
    from harden.oci.types import Reference

    return RegistryClient.for_reference(Reference(registry, "harden"))


@dataclass(frozen=True)
class Context:
    clock: Clock
    audit: AuditLog
    registry: ClientFactory = default_client
    progress: Progress = no_progress

    @classmethod
    def from_environment(cls, progress: Progress = no_progress) -> Context:
        """$HARDEN_NOW (a testing aid) or the system clock; the audit log in $HARDEN_DB
        (PostgreSQL) or under $HARDEN_HOME."""
        clock = clock_from_environment(os.environ)
        return cls(clock, AuditLog.default(clock), default_client, progress)

    def client(self, ref: Reference) -> RegistryClient:
        return self.registry(ref.registry)

    def prefixed(self, prefix: str) -> Context:
        """The same collaborators, progress lines prefixed (``[name] ...`` in a rebuild)."""
        outer = self.progress
        return replace(self, progress=lambda m: outer(f"{prefix}{m}"))
