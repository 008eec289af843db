"""What a user typed, as a target scheme; the default baseline per target kind.

The openers that turn a reference into a Target (docker image, running container, SSH, sealed
qcow2) compose builder adapters with the verifiers, so they live one layer up, in
:mod:`harden.app.verify`; verifiers never import builder.
"""

from __future__ import annotations

from dataclasses import dataclass

from harden import labels
from harden.errors import UsageError
from harden.target import Target, TargetKind

BASELINE_LABEL = labels.BASELINE_ID
DEFAULT_BASELINE = {TargetKind.CONTAINER: "debian-container", TargetKind.VM: "debian-vm"}


@dataclass
class Opened:
    target: Target
    digest: str | None
    recorded_baseline: str | None


def scheme_of(ref: str) -> str:
    if ref.startswith("docker://"):
        return "docker"
    if ref.startswith("ssh://"):
        return "ssh"
    if ref.endswith((".qcow2", ".img")) and "://" not in ref:
        return "qcow2"
    if "://" in ref:
        raise UsageError(
            f"unsupported reference {ref!r}",
            hint="use an image name, a registry reference, docker://NAME, ssh://USER@HOST:PORT or FILE.qcow2",
        )
    return "docker-image"
