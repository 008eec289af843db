"""Build one container golden image: base -> remediation -> commit -> verify -> push.

The base is resolved to a digest first. Remediation runs in throwaway, contained containers
(network ``none``, few capabilities, limits: :class:`builder.docker_engine.Containment`) that are
removed whatever happens. Packages a rule installs are fetched and verified by the host's apt
(:mod:`builder.debs`) and installed from a local folder, so base-image code never sees a network.
The committed image carries exactly :data:`GOLDEN_LABELS` of harden's own labels (never the
temporary label of the container it came from) plus the base's and the definition's other labels;
it is pushed only when compliant (or when the caller insists), and a build whose inputs (base
digest, baseline digest, labels, harden version) did not change reuses the image.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import shlex
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harden import __version__
from harden.baseline.kinds import ImageCheck, ImageConfig, PackagePresent
from harden.baseline.model import Target
from harden.baseline.resolve import Catalogue, ResolvedBaseline, Rule
from harden.builder.debs import DEBS_DIR, STATUS_LIMIT, Fetched, fetch_debs
from harden.builder.docker_engine import (
    TEMPORARY_LABEL,
    Engine,
    ImageTarget,
    Step,
    names_registry,
    repo_digest,
)
from harden.builder.render import Phase, check_remediation, remediation_rules, render_script
from harden.builder.updates import NO_UPDATES, UpdatePlan
from harden.clock import Clock
from harden.debian.archive import Candidate
from harden.debian.fixes import Fix
from harden.debian.pending import PendingUpdate
from harden.errors import (
    EnvironmentProblem,
    ImageDefinitionError,
    RemediationError,
    TargetError,
)
from harden.imagedef import ImageDefinition
from harden.labels import BASE_DIGEST as OCI_BASE_DIGEST
from harden.labels import BASE_NAME as OCI_BASE_NAME
from harden.labels import BASELINE_DIGEST as LABEL_BASELINE_DIGEST
from harden.labels import BASELINE_ID as LABEL_BASELINE_ID
from harden.labels import BASELINE_VERSION as LABEL_BASELINE_VERSION
from harden.labels import BUILD_KEY as LABEL_BUILD_KEY
from harden.labels import CREATED as OCI_CREATED
from harden.labels import DEFINITION as LABEL_DEFINITION
from harden.results import VerifyReport, rfc3339
from harden.target import TargetKind
from harden.testsuite import with_results
from harden.verifiers.facts import FactPlan, Facts, new_nonce
from harden.verifiers.facts import parse as parse_facts
from harden.verifiers.image_layers import open_local_image
from harden.verifiers.static_verify import verify_image
from harden.verifiers.suites import run_suites

if TYPE_CHECKING:
    from docker.models.containers import Container

HARDEN_LABEL_PREFIX = "dev.harden."
# the labels harden puts on a golden image (docs/operations.md); no other dev.harden.* label
# reaches it: not the temporary label of its remediation container, not one the base carries
GOLDEN_LABELS = (
    OCI_CREATED,
    OCI_BASE_NAME,
    OCI_BASE_DIGEST,
    LABEL_BASELINE_ID,
    LABEL_BASELINE_VERSION,
    LABEL_BASELINE_DIGEST,
    LABEL_DEFINITION,
    LABEL_BUILD_KEY,
)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    definition: str
    image_id: str
    reference: str
    digest: str | None  # manifest digest in the destination once pushed
    pushed: bool
    reused: bool
    base_name: str
    base_digest: str
    baseline: ResolvedBaseline
    report: VerifyReport
    updates: tuple[PendingUpdate, ...] = ()  # security/stable updates the build installed
    fixes: tuple[Fix, ...] = ()  # what the installed security updates fixed (CVE/DSA ids)
    added: tuple[Candidate, ...] = ()  # packages the updates newly depend on (installed too)

    @property
    def compliant(self) -> bool:
        return self.report.compliant

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "image": self.reference,
            "digest": self.digest,
            "image_id": self.image_id,
            "compliant": self.compliant,
            "pushed": self.pushed,
            "reused": self.reused,
            "base": {"name": self.base_name, "digest": self.base_digest},
            "baseline": self.report.baseline.to_json(),
            "summary": self.report.summary(),
        }


def _noop(_: str) -> None:
    return None


def resolve_base(engine: Engine, ref: str, progress: Progress) -> tuple[str, str]:
    """The image id and digest of the base. A registry reference is pulled (digest = manifest)."""
    progress(f"resolving base {ref}")
    image = engine.pull(ref) if names_registry(ref) else None
    if image is None:
        try:
            image = engine.image(ref)
        except TargetError as e:
            raise EnvironmentProblem(
                f"base image {ref} is missing: not in its registry and not in the local engine",
                hint="check the name; here, scripts/services.sh builds and pushes debian:12 and :13",
            ) from e
    digest = repo_digest(image, ref) or str(image.id)
    return str(image.id), digest


def container_user(rules: Sequence[Rule]) -> str | None:
    for r in rules:
        if isinstance(r.spec, ImageConfig) and r.spec.check is ImageCheck.NON_ROOT_USER:
            return str(r.spec.user or "app")
    return None


def user_script(user: str) -> str:
    u = shlex.quote(user)
    return (
        "#!/bin/sh\nset -eu\n"
        f"if ! id -u {u} >/dev/null 2>&1; then\n"
        f"  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {u}\n"
        "fi\n"
    )


def build_key(base_digest: str, baseline: ResolvedBaseline, defn: ImageDefinition) -> str:
    material = {
        "base": base_digest,
        "baseline": baseline.digest,
        "labels": defn.doc.labels,
        "harden": __version__,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


# run the remediation, and only when it succeeded, the read-only fact collection on the very
# filesystem that is then committed: one container instead of a second one for verification
_THEN_FACTS = 'sh -c "$1" harden-remediate && exec sh -c "$2" harden-facts'
# install from the folder harden copied in, then remove it before the commit, whatever happened
_THEN_CLEAN = 'sh -c "$1" harden-remediate; rc=$?; rm -rf "$HARDEN_DEBS"; exit "$rc"'


def _run_phase(
    engine: Engine,
    image: str,
    script: str,
    step: Step,
    changes: list[str],
    facts_script: str | None = None,
    *,
    labels: Mapping[str, str] | None = None,
    files: Path | None = None,
    keep: str | None = None,
) -> tuple[str, bytes]:
    """Run one remediation script in a throwaway container and commit the result: an
    intermediate image, or with ``labels`` the golden image with exactly those labels.
    ``files``: a tar put at / before the start (the fetched packages, $HARDEN_DEBS).
    ``keep``: when the script fails, commit the failed state as this image reference (see
    :func:`_keep_failed`) before the container is removed."""
    command = ["/bin/sh", "-c", script]
    env: dict[str, str] = {}
    if facts_script is not None:
        command = ["/bin/sh", "-c", _THEN_FACTS, "sh", script, facts_script]
    if files is not None:
        command = ["/bin/sh", "-c", _THEN_CLEAN, "sh", script]
        env["HARDEN_DEBS"] = DEBS_DIR
    with engine.throwaway(image, command, step=step, environment=env) as c:
        if files is not None:
            engine.put_files(c, "/", files.read_bytes())
        result = engine.run_to_end(c, engine.containment.timeout(step))
        try:
            check_remediation(result)
        except RemediationError as e:
            if keep is None:
                raise
            raise _keep_failed(engine, c, changes, keep, e) from e
        if labels is None:
            return str(engine.commit(c, changes).id), result.stdout
        golden = engine.commit_clean(c, changes, labels)
    return golden.result(), result.stdout  # the container was removed meanwhile


KEPT_LABEL = "dev.harden.kept"  # a failed remediation's state, kept for a person to inspect


def kept_reference(name: str, step: Step, started: dt.datetime) -> str:
    """Where --keep-on-error keeps a failed step: harden-kept/NAME:STEP-YYYYMMDD-HHMMSS."""
    return f"harden-kept/{name}:{step.value}-{started:%Y%m%d-%H%M%S}"


def _keep_failed(
    engine: Engine, c: Container, changes: list[str], ref: str, failure: RemediationError
) -> RemediationError:
    """Commit the failed container's file system as ``ref`` (labelled only ``dev.harden.kept``,
    never temporary, so no clean-up removes it) and say how to enter it: a shell in a container
    of that image, with no network, as the step ran."""
    try:
        image_id = engine.commit_clean(c, changes, {KEPT_LABEL: ref}).result()
        engine.tag(engine.image(image_id), ref)
    except (TargetError, OSError) as e:  # docker's errors are requests' (OSError) ones
        return RemediationError(
            failure.message, hint=f"{failure.hint}\n(could not keep the failed state: {e})"
        )
    enter = f"docker run --rm -it --network none --user root --entrypoint /bin/sh {ref}"
    return RemediationError(
        f"{failure.message}; the failed state is kept as image {ref}",
        hint=f"{failure.hint}\nenter it: {enter}\nremove it: docker rmi {ref}",
    )


def _base_config_changes(cfg: Mapping[str, Any]) -> list[str]:
    """Restore the base's CMD/ENTRYPOINT, which the remediation container replaced."""
    return [
        f"CMD {json.dumps(cfg.get('Cmd') or [])}",
        f"ENTRYPOINT {json.dumps(cfg.get('Entrypoint') or [])}",
    ]


def _updates(
    engine: Engine,
    image_id: str,
    restore: list[str],
    defn: ImageDefinition,
    clock: Clock,
    progress: Progress,
) -> tuple[str, UpdatePlan]:
    """Remediation step 0, visible in the progress and the provenance: apply the security and
    stable updates of the archive the definition pins (else the host's apt sources)."""
    from harden.builder.updates import apply_updates
    from harden.debian.archive import ArchiveReader
    from harden.paths import harden_home

    progress("remediation: security and stable updates")
    reader = ArchiveReader(harden_home() / "archive", clock)
    return apply_updates(engine, image_id, restore, reader, defn.update_archives, progress)


def golden_labels(
    base_labels: Mapping[str, str], definition_labels: Mapping[str, str], harden: Mapping[str, str]
) -> dict[str, str]:
    """The labels of a golden image: the base's and the definition's, except harden's namespace,
    then harden's own (:data:`GOLDEN_LABELS`). A base cannot pass a dev.harden.* label on."""
    for k in definition_labels:
        if k.startswith(HARDEN_LABEL_PREFIX) or k in GOLDEN_LABELS:
            raise ImageDefinitionError(
                f"label {k} is set by harden itself",
                hint="choose a label outside dev.harden.* and org.opencontainers.image.base.*",
            )
    unknown = set(harden) - set(GOLDEN_LABELS)
    assert not unknown, f"undocumented harden labels {unknown}"
    labels = {k: v for k, v in base_labels.items() if not k.startswith(HARDEN_LABEL_PREFIX)}
    labels.update(definition_labels)
    labels.update(harden)
    return labels


def package_rules(rules: Sequence[Rule]) -> dict[str, list[str]]:
    """Rule id -> packages of the rules that install packages."""
    out: dict[str, list[str]] = {}
    for r in rules:
        if isinstance(r.spec, PackagePresent):
            assert isinstance(r.spec.packages, list), "parameters are substituted"
            out[r.id] = list(r.spec.packages)
    return out


def fetch_packages(
    engine: Engine, image: str, rules: Mapping[str, list[str]], tmp: Path, progress: Progress
) -> Fetched:
    """Read the image's dpkg status and os-release (without running it) and fetch the .deb
    files of ``rules`` with the host's apt into ``tmp``."""
    status = engine.read_file(image, "/var/lib/dpkg/status", STATUS_LIMIT)
    if status is None:
        raise TargetError(f"{image} has no /var/lib/dpkg/status: it cannot install packages")
    osr = engine.read_file(image, "/etc/os-release", 64 << 10) or engine.read_file(
        image, "/usr/lib/os-release", 64 << 10
    )
    arch = str(engine.image(image).attrs.get("Architecture") or "")
    return fetch_debs(
        status, osr or b"", arch, rules, tmp / "harden-debs", env=os.environ, progress=progress
    )


def _verify_committed(
    engine: Engine,
    image_id: str,
    baseline: ResolvedBaseline,
    clock: Clock,
    reference: str,
    command_facts: Facts | None,
    progress: Progress,
) -> VerifyReport:
    """Verify the committed image exec-free (its layers, read by harden)."""
    progress(f"verifying {image_id[:19]} against {baseline.id} (reading its layers)")
    img = open_local_image(engine, image_id)
    report = verify_image(
        img,
        baseline,
        clock,
        image=reference,
        run_commands=ImageTarget(engine, image_id).run,
        command_facts=command_facts,
    )
    return dataclasses.replace(report, digest=image_id)


def build_container(
    defn: ImageDefinition,
    catalogue: Catalogue,
    engine: Engine,
    clock: Clock,
    *,
    force: bool = False,
    allow_noncompliant: bool = False,
    push: bool = True,
    progress: Progress = _noop,
    keep_on_error: bool = False,
) -> BuildResult:
    """Build, verify (and push) the golden image of ``defn``. ``keep_on_error``: a failed
    remediation step's file system is kept as an image (:func:`kept_reference`) to inspect."""
    doc = defn.doc
    assert doc.base is not None
    baseline = defn.resolve_baseline(catalogue)
    base_id, base_digest = resolve_base(engine, doc.base, progress)
    key = build_key(base_digest, baseline, defn)
    reference = doc.destination or f"harden/{doc.name}:latest"
    started = clock.now()

    image_id: str | None = None
    reused = False
    updated_with = NO_UPDATES
    if not force:
        # an image committed before labels were cleaned (it carries the temporary label of its
        # remediation container) is never reused: it is rebuilt with clean labels
        previous = [
            i
            for i in engine.find_images({LABEL_BUILD_KEY: key})
            if TEMPORARY_LABEL not in ((i.attrs.get("Config") or {}).get("Labels") or {})
        ]
        if previous:
            image_id = str(previous[0].id)
            reused = True
            progress(
                f"inputs unchanged (base {base_digest[:19]}, baseline {baseline.digest[:19]}): "
                f"reusing {image_id[:19]}"
            )
    if image_id is None:
        family = baseline.platforms[0].family.value
        rules = remediation_rules(baseline, TargetKind.CONTAINER, started.date())
        user = container_user(rules)
        base_cfg = engine.image(base_id).attrs.get("Config") or {}
        restore = _base_config_changes(base_cfg)
        current = base_id
        if doc.archive is None or doc.archive.apply:
            current, updated_with = _updates(engine, current, restore, defn, clock, progress)
        updated = current if current != base_id else None
        labels = golden_labels(
            base_cfg.get("Labels") or {},
            doc.labels,
            {
                OCI_CREATED: rfc3339(started),
                OCI_BASE_NAME: doc.base,
                OCI_BASE_DIGEST: base_digest,
                LABEL_BASELINE_ID: baseline.id,
                LABEL_BASELINE_VERSION: baseline.version,
                LABEL_BASELINE_DIGEST: baseline.digest,
                LABEL_DEFINITION: doc.name,
                LABEL_BUILD_KEY: key,
            },
        )
        intermediate: str | None = None

        def kept(step: Step) -> str | None:
            return kept_reference(doc.name, step, started) if keep_on_error else None

        try:
            pkgs = package_rules(rules)
            if pkgs:
                with tempfile.TemporaryDirectory(prefix="harden-debs-") as tmp:
                    os.chmod(tmp, 0o755)  # noqa: S103 - the host's apt downloads as _apt
                    fetched = fetch_packages(engine, base_id, pkgs, Path(tmp), progress)
                    progress("remediation (package installs from local files, network none)")
                    net_script = render_script(rules, family, TargetKind.CONTAINER, Phase.NETWORK)
                    intermediate, _ = _run_phase(
                        engine,
                        current,
                        net_script,
                        Step.INSTALL,
                        restore,
                        files=fetched.archive(Path(tmp) / "debs.tar"),
                        keep=kept(Step.INSTALL),
                    )
                    current = intermediate
            off_script = render_script(rules, family, TargetKind.CONTAINER, Phase.OFFLINE)
            if user:
                off_script = user_script(user) + off_script.split("\n", 1)[1]
            changes = list(restore)
            if user:
                changes.append(f"USER {user}")
            progress(f"remediation: {len(rules)} rules of {baseline.id} {baseline.version}")
            # only the baseline's command checks run, on the very filesystem that is committed;
            # every other fact is read from the committed image's layers (nothing in it runs,
            # so a lying dpkg-query or /bin/sh in the base cannot make the build pass)
            nonce = new_nonce()
            plan = FactPlan.for_rules(
                [r for r in baseline.rules if Target.CONTAINER in r.targets], TargetKind.CONTAINER
            )
            commands = plan.commands_script(nonce) or None
            image_id, stdout = _run_phase(
                engine,
                current,
                off_script,
                Step.REMEDIATE,
                changes,
                commands,
                labels=labels,
                keep=kept(Step.REMEDIATE),
            )
        finally:
            if intermediate is not None:
                engine.remove_image(intermediate)
            if updated is not None:  # the updates step's commit, like the install step's
                engine.remove_image(updated)
        ran = parse_facts(stdout, nonce) if commands else None
        report = _verify_committed(engine, image_id, baseline, clock, reference, ran, progress)
    else:
        report = _verify_committed(engine, image_id, baseline, clock, reference, None, progress)
    suites = defn.suites()
    if suites:  # the team's testinfra suites, on one container of the built image
        tests = run_suites(suites, f"docker-image://{image_id}", progress=progress)
        report = with_results(report, tests)
    engine.tag(engine.image(image_id), reference)

    digest: str | None = None
    pushed = False
    if push and doc.destination:
        if report.compliant or allow_noncompliant:
            if not report.compliant:
                progress(f"WARNING: pushing NON-COMPLIANT image {reference} (--allow-noncompliant)")
            progress(f"pushing {reference}")
            digest = engine.push(reference)
            pushed = True
        else:
            progress(f"not pushing {reference}: not compliant")
    if digest is not None:
        report = dataclasses.replace(report, digest=digest)
    return BuildResult(
        definition=doc.name,
        image_id=image_id,
        reference=reference,
        digest=digest,
        pushed=pushed,
        reused=reused,
        base_name=doc.base,
        base_digest=base_digest,
        baseline=baseline,
        report=report,
        updates=updated_with.pending,
        fixes=updated_with.fixes,
        added=updated_with.added,
    )
