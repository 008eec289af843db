"""Turn what a user typed into a Target and verify it. Adapters are picked by scheme, lazily."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from harden.baseline.resolve import Catalogue, Overrides, resolve
from harden.clock import Clock
from harden.errors import UsageError
from harden.results import VerifyReport
from harden.target import Target, TargetKind
from verifiers.runner import verify

BASELINE_LABEL = "dev.harden.baseline.id"
DEFAULT_BASELINE = {TargetKind.CONTAINER: "debian-container", TargetKind.VM: "debian-vm"}


@dataclass
class Opened:
    target: Target
    digest: str | None
    recorded_baseline: str | None


@contextlib.contextmanager
def _docker_image(ref: str, **_: object) -> Iterator[Opened]:
    from builder.docker_engine import Engine, ImageTarget, names_registry

    engine = Engine.connect()
    if names_registry(ref):
        engine.pull(ref)  # a registry reference is pulled; a failed pull falls back to local
    target = ImageTarget(engine, ref)
    attrs = target.attrs
    digests = attrs.get("RepoDigests") or []
    digest = digests[0].partition("@")[2] if digests else str(attrs.get("Id"))
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    yield Opened(target, digest, labels.get(BASELINE_LABEL))


@contextlib.contextmanager
def _docker_container(ref: str, **_: object) -> Iterator[Opened]:
    from builder.docker_engine import Engine, RunningContainerTarget

    engine = Engine.connect()
    target = RunningContainerTarget(engine, ref.removeprefix("docker://"))
    cfg = target.image_config() or {}
    yield Opened(
        target,
        str(target.attrs.get("Image")),
        (cfg.get("Labels") or {}).get(BASELINE_LABEL),
    )


@contextlib.contextmanager
def _ssh(
    ref: str, *, known_hosts: Path | None = None, identity: Path | None = None, **_: object
) -> Iterator[Opened]:
    from builder.ssh_target import SshTarget, parse_ssh_url

    user, host, port = parse_ssh_url(ref)
    target = SshTarget(host, port, user, key_path=identity, known_hosts=known_hosts)
    try:
        yield Opened(target, None, None)
    finally:
        target.close()


OPENERS: dict[str, Callable[..., contextlib.AbstractContextManager[Opened]]] = {
    "docker-image": _docker_image,
    "docker": _docker_container,
    "ssh": _ssh,
}


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


def verify_ref(
    ref: str,
    catalogue: Catalogue,
    clock: Clock,
    *,
    baseline_id: str | None = None,
    overrides: Overrides | None = None,
    known_hosts: Path | None = None,
    identity: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> VerifyReport:
    scheme = scheme_of(ref)
    if scheme == "qcow2":
        from builder.vm_verify import verify_template

        baseline = resolve(catalogue, baseline_id or DEFAULT_BASELINE[TargetKind.VM], overrides)
        report: VerifyReport = verify_template(
            Path(ref), baseline, clock, identity=identity, progress=progress
        )
        return report
    opener = OPENERS[scheme]
    with opener(ref, known_hosts=known_hosts, identity=identity, progress=progress) as opened:
        bid = baseline_id or opened.recorded_baseline or DEFAULT_BASELINE[opened.target.kind]
        baseline = resolve(catalogue, bid, overrides)
        return verify(
            opened.target, baseline, clock, image=ref, digest=opened.digest, progress=progress
        )
