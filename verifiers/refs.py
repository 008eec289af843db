"""What a user typed, as a target scheme; the default baseline per target kind.

The openers that turn a reference into a Target or a statically read image (registry image,
local engine image, running container, SSH, sealed qcow2) compose builder adapters with the
verifiers, so they live one layer up, in :mod:`harden.app.verify`; verifiers never import builder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harden.verifiers.image_layers import ImageFs

from harden import labels
from harden.errors import UsageError
from harden.target import CommandResult, Target, TargetKind

BASELINE_LABEL = labels.BASELINE_ID
DEFAULT_BASELINE = {TargetKind.CONTAINER: "debian-container", TargetKind.VM: "debian-vm"}


@dataclass
class Opened:
    """What an opener found: a target to run the fact script on, or an image read statically
    (``image``) with a way to run the ``command`` checks (``commands``, in a container)."""

    target: Target | None
    digest: str | None
    recorded_baseline: str | None
    image: ImageFs | None = None
    commands: Callable[[str], CommandResult] | None = None

    @property
    def kind(self) -> TargetKind:
        return self.target.kind if self.target is not None else TargetKind.CONTAINER


def names_registry(ref: str) -> bool:
    """Does ``ref`` name a registry host (``host.name/...``, ``host:port/...``, ``localhost/``)?"""
    first = ref.split("/", 1)[0]
    return "/" in ref and ("." in first or ":" in first or first == "localhost")


def scheme_of(ref: str, local: bool = False) -> str:
    if ref.startswith("docker-image://"):
        return "local"
    if ref.startswith("docker://"):
        return "docker"
    if ref.startswith("ssh://"):
        return "ssh"
    if ref.endswith((".qcow2", ".img")) and "://" not in ref:
        return "qcow2"
    if "://" in ref:
        raise UsageError(
            f"unsupported reference {ref!r}",
            hint="use a registry reference, docker-image://NAME, docker://NAME, "
            "ssh://USER@HOST:PORT or FILE.qcow2",
        )
    return "local" if local else "registry"
