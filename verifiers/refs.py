"""Turn what a user typed into a Target and verify it. Adapters are picked by scheme, lazily."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from harden.baseline.resolve import Catalogue, Overrides, resolve
from harden.clock import Clock
from harden.errors import InputError, UsageError
from harden.results import VerifyReport
from harden.target import CommandResult, Target, TargetKind
from verifiers.image_layers import ImageFs
from verifiers.runner import verify
from verifiers.static_verify import BASELINE_LABEL, verify_image, with_label_check

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


def _names_registry(ref: str) -> bool:
    first = ref.split("/", 1)[0]
    return "/" in ref and ("." in first or ":" in first or first == "localhost")


@contextlib.contextmanager
def _registry_image(
    ref: str, progress: Callable[[str], None] | None = None, **_: object
) -> Iterator[Opened]:
    """A registry reference means the registry: read by harden's OCI client, never an image of
    the same name in the local engine. The engine is used only to run ``command`` checks."""
    from verifiers.image_layers import open_registry_image

    if not _names_registry(ref):
        raise InputError(
            f"{ref!r} is not a registry reference (it names no registry host)",
            hint="write HOST[:PORT]/REPO[:TAG][@DIGEST]; to verify an image of the local Docker "
            "Engine say so: docker-image://NAME or --local",
        )
    img = open_registry_image(ref, progress=progress)
    name = ref.split("@", 1)[0]
    last = name.rsplit("/", 1)
    repo = name.rsplit(":", 1)[0] if ":" in last[-1] else name
    pinned = f"{repo}@{img.digest}"

    def run(script: str) -> CommandResult:
        from builder.docker_engine import Engine, ImageTarget

        engine = Engine.connect()
        if engine.pull(pinned) is None:
            raise InputError(f"the engine could not pull {pinned} to run the command checks")
        return ImageTarget(engine, pinned).run(script)

    yield Opened(None, img.digest, img.labels.get(BASELINE_LABEL), img, run)


@contextlib.contextmanager
def _local_image(
    ref: str, progress: Callable[[str], None] | None = None, **_: object
) -> Iterator[Opened]:
    """An image of the local engine (``docker-image://NAME`` or ``--local``), read from its
    exported layers; only the ``command`` checks run, in a container of it."""
    from builder.docker_engine import Engine, ImageTarget
    from verifiers.image_layers import open_local_image

    name = ref.removeprefix("docker-image://")
    engine = Engine.connect()
    img = open_local_image(engine, name, progress=progress)

    def run(script: str) -> CommandResult:
        return ImageTarget(engine, img.digest).run(script)

    yield Opened(None, img.digest, img.labels.get(BASELINE_LABEL), img, run)


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
    "registry": _registry_image,
    "local": _local_image,
    "docker": _docker_container,
    "ssh": _ssh,
}


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
    local: bool = False,
) -> VerifyReport:
    """Verify ``ref`` against the baseline the caller chose (``baseline_id``, else the default
    for its kind). A baseline label on the image is only compared: a mismatch is a failure."""
    scheme = scheme_of(ref, local)
    if scheme == "qcow2":
        from builder.vm_verify import verify_template

        baseline = resolve(catalogue, baseline_id or DEFAULT_BASELINE[TargetKind.VM], overrides)
        report: VerifyReport = verify_template(
            Path(ref), baseline, clock, identity=identity, progress=progress
        )
        return report
    opener = OPENERS[scheme]
    with opener(ref, known_hosts=known_hosts, identity=identity, progress=progress) as opened:
        bid = baseline_id or DEFAULT_BASELINE[opened.kind]
        baseline = resolve(catalogue, bid, overrides)
        if opened.image is not None:
            report = verify_image(
                opened.image,
                baseline,
                clock,
                image=ref,
                run_commands=opened.commands,
                progress=progress,
            )
        else:
            assert opened.target is not None
            report = verify(
                opened.target, baseline, clock, image=ref, digest=opened.digest, progress=progress
            )
        return with_label_check(report, opened.recorded_baseline, baseline.id)
