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
from harden.errors import TargetError, UsageError
from harden.imagedef import ImageDefinition
from harden.results import VerifyReport, compliance_word
from harden.target import TargetKind
from harden.testsuite import Suite, with_results
from verifiers.refs import BASELINE_LABEL, DEFAULT_BASELINE, Opened, scheme_of
from verifiers.runner import verify
from verifiers.suites import run_suites

__all__ = ["OPENERS", "Opened", "verify_ref", "verify_reference"]


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
) -> VerifyReport:
    """`harden verify REF`: verify and write the VERIFY audit entry.

    With ``definition`` its baseline, parameter overrides and waivers are used (as the build
    did) and its testinfra suites run before ``suites``; a ``baseline_id`` that contradicts it
    is a usage error. Each test is a result beside the baseline's rules. With ``scan_profile``
    (``""``: the default profile) an OpenSCAP second opinion is added to the report; it does not
    change whether the report is compliant."""
    if scan_profile is not None:  # a bad profile or target fails before the verification
        from builder.openscap import check_scan_ref

        check_scan_ref(ref, scan_profile or None)
    overrides = None
    suites = [*(definition.suites() if definition is not None else ()), *suites]
    if suites and scheme_of(ref) == "qcow2":
        raise UsageError(
            "test suites need a running system; a qcow2 file is verified without booting it",
            hint="boot it and verify ssh://USER@HOST:PORT --tests ..., or build with 'tests'",
        )
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
    )
    if suites:
        tests = run_suites(
            suites, ref, known_hosts=known_hosts, identity=identity, progress=ctx.progress
        )
        report = with_results(report, tests)
    if scan_profile is not None:
        from builder.openscap import scan_ref

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
        from builder.ssh_target import SshTarget

        with SshTarget.from_url(ref, key_path=identity, known_hosts=known_hosts) as ssh:
            yield ssh
        return
    from builder.docker_engine import Engine, RunningContainerTarget, names_registry

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
