"""Verify a reference: open it as a Target (adapters picked by scheme, lazily), resolve the
baseline, run the verifiers, audit the outcome.

The openers compose builder's adapters (docker engine, SSH, qemu) with the verifiers, which is
why they live here, above both, and not in ``verifiers``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from harden.app.context import Context
from harden.audit import AuditAction
from harden.baseline.resolve import Catalogue, Overrides, resolve
from harden.clock import Clock
from harden.errors import InputError, TargetError, UsageError
from harden.imagedef import ImageDefinition
from harden.results import VerifyReport, compliance_word
from harden.target import CommandResult, TargetKind
from harden.testsuite import Suite, with_results
from harden.verifiers.refs import (
    BASELINE_LABEL,
    DEFAULT_BASELINE,
    Opened,
    names_registry,
    scheme_of,
)
from harden.verifiers.runner import verify
from harden.verifiers.static_verify import verify_image, with_label_check
from harden.verifiers.suites import run_suites

__all__ = ["OPENERS", "Opened", "verify_ref", "verify_reference"]


@contextlib.contextmanager
def _registry_image(
    ref: str, progress: Callable[[str], None] | None = None, **_: object
) -> Iterator[Opened]:
    """A registry reference means the registry: read by harden's OCI client, never an image of
    the same name in the local engine. The engine is used only to run ``command`` checks."""
    from harden.verifiers.image_layers import open_registry_image

    if not names_registry(ref):
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
        from harden.builder.docker_engine import Engine, ImageTarget

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
    from harden.builder.docker_engine import Engine, ImageTarget
    from harden.verifiers.image_layers import open_local_image

    name = ref.removeprefix("docker-image://")
    engine = Engine.connect()
    img = open_local_image(engine, name, progress=progress)

    def run(script: str) -> CommandResult:
        return ImageTarget(engine, img.digest).run(script)

    yield Opened(None, img.digest, img.labels.get(BASELINE_LABEL), img, run)


@contextlib.contextmanager
def _docker_container(ref: str, **_: object) -> Iterator[Opened]:
    from harden.builder.docker_engine import Engine, RunningContainerTarget

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
    from harden.builder.ssh_target import SshTarget, parse_ssh_url

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
    boot: bool = True,
    suites: Sequence[Suite] = (),
) -> VerifyReport:
    """Verify ``ref`` against the baseline the caller chose (``baseline_id``, else the default
    for its kind). A baseline label on the image is only compared: a mismatch is a failure.

    ``boot=False`` reads a qcow2 template's file system without booting it (file-level rules
    judged, rules that need a running system reported as errors saying so).
    ``suites`` are only taken here for a qcow2 template (they run on the booted clone, which
    exists only inside this call); for other references the caller runs them."""
    scheme = scheme_of(ref, local)
    if not boot and scheme != "qcow2":
        raise UsageError(
            "--no-boot is for a VM template file (FILE.qcow2)",
            hint="container images are always read without running them",
        )
    if scheme == "qcow2":
        from harden.builder.vm_verify import verify_template, verify_template_at_rest

        baseline = resolve(catalogue, baseline_id or DEFAULT_BASELINE[TargetKind.VM], overrides)
        if not boot:
            if suites:
                raise UsageError(
                    "--no-boot reads the template's files only: testinfra suites need a "
                    "running system",
                    hint="drop --no-boot to run them on a booted clone of the template",
                )
            return verify_template_at_rest(Path(ref), baseline, clock, progress=progress)
        report: VerifyReport = verify_template(
            Path(ref), baseline, clock, identity=identity, progress=progress, suites=tuple(suites)
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


def verify_reference(
    ref: str,
    catalogue: Catalogue,
    ctx: Context,
    *,
    baseline_id: str | None = None,
    definition: ImageDefinition | None = None,
    known_hosts: Path | None = None,
    identity: Path | None = None,
    suites: Sequence[Suite] = (),
    scan_profile: str | None = None,
    local: bool = False,
    boot: bool = True,
) -> VerifyReport:
    """`harden verify REF`: verify and write the VERIFY audit entry.

    With ``definition`` its baseline, parameter overrides and waivers are used (as the build
    did) and its testinfra suites run before ``suites``; a ``baseline_id`` that contradicts it
    is a usage error. Each test is a result beside the baseline's rules. With ``scan_profile``
    (``""``: the default profile) an OpenSCAP second opinion is added to the report; it does not
    change whether the report is compliant."""
    if scan_profile is not None:  # a bad profile or target fails before the verification
        from harden.builder.openscap import check_scan_ref

        check_scan_ref(ref, scan_profile or None)
    overrides = None
    suites = [*(definition.suites() if definition is not None else ()), *suites]
    # a qcow2 template is verified on a booted throwaway clone: its suites run there
    on_clone = scheme_of(ref) == "qcow2"
    if definition is not None:
        if baseline_id is not None and baseline_id != definition.doc.baseline.id:
            raise UsageError(
                f"--baseline {baseline_id} contradicts {definition.path} "
                f"(baseline {definition.doc.baseline.id})"
            )
        baseline_id, overrides = definition.doc.baseline.id, definition.overrides()
    report = verify_ref(
        ref,
        catalogue,
        ctx.clock,
        baseline_id=baseline_id,
        overrides=overrides,
        known_hosts=known_hosts,
        identity=identity,
        progress=ctx.progress,
        local=local,
        boot=boot,
        suites=tuple(suites) if on_clone else (),
    )
    if suites and not on_clone:
        tests = run_suites(
            suites, ref, known_hosts=known_hosts, identity=identity, progress=ctx.progress
        )
        report = with_results(report, tests)
    if scan_profile is not None:
        from harden.builder.openscap import scan_ref

        scan = scan_ref(ref, scan_profile or None, progress=ctx.progress)
        ctx.progress(f"OpenSCAP {scan.profile_short}: score {scan.score} ({scan.seconds:.1f} s)")
        report = dataclasses.replace(report, scan=scan.summary_json())
    ctx.audit.append(
        AuditAction.VERIFY,
        report.image,
        report.digest,
        compliance_word(report.compliant),
        {"baseline": report.baseline.to_json(), "summary": report.summary()},
    )
    return report


@contextlib.contextmanager
def open_target(
    ref: str, *, known_hosts: Path | None = None, identity: Path | None = None
) -> Iterator[Any]:
    """A Target for ``ref`` kept open for a whole suite (one container, one SSH connection).

    Used by the pytest plugin (``pytest --harden-target REF``) that runs testinfra suites."""
    if ref.startswith("ssh://"):
        from harden.builder.ssh_target import SshTarget

        with SshTarget.from_url(ref, key_path=identity, known_hosts=known_hosts) as ssh:
            yield ssh
        return
    from harden.builder.docker_engine import Engine, RunningContainerTarget, names_registry

    engine = Engine.connect()
    if ref.startswith("docker://"):
        yield RunningContainerTarget(engine, ref.removeprefix("docker://"))
        return
    image = ref.removeprefix("docker-image://")
    if image == ref and names_registry(image):
        engine.pull(image)
    keep_alive = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]
    with engine.throwaway(image, keep_alive) as container:
        try:
            container.start()
        except Exception as e:  # docker.errors.APIError: the adapter's own words
            raise TargetError(f"cannot start a test container from {image}: {e}") from e
        config = dict(engine.image(image).attrs.get("Config") or {})
        yield _ImageContainer(RunningContainerTarget(engine, str(container.id)), image, config)


class _ImageContainer:
    """The suite's container of an image: runs in the container, describes the image."""

    def __init__(self, inner: Any, image: str, config: dict[str, Any]) -> None:
        self._inner = inner
        self.kind = inner.kind
        self._image = image
        self._config = config

    def describe(self) -> str:
        return self._image

    def run(self, script: str, *, timeout: float = 600.0) -> Any:
        return self._inner.run(script, timeout=timeout)

    def image_config(self) -> dict[str, Any]:
        return dict(self._config)
