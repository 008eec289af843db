"""Build one container golden image: base -> remediation -> commit -> verify -> push.

The base is resolved to a digest first. Remediation runs in throwaway containers (network
``host`` only for the rules that need the package mirror, ``none`` for everything else) that are
removed whatever happens. The committed image carries the OCI base annotations and the baseline
as labels; it is pushed only when compliant (or when the caller insists), and a build whose
inputs (base digest, baseline digest, labels, harden version) did not change reuses the image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from builder.docker_engine import (
    Engine,
    ImageTarget,
    dockerfile_label,
    names_registry,
    repo_digest,
)
from builder.render import Phase, check_remediation, remediation_rules, render_script
from harden import __version__
from harden.baseline.kinds import ImageCheck, ImageConfig
from harden.baseline.model import Target
from harden.baseline.resolve import Catalogue, ResolvedBaseline, Rule
from harden.clock import Clock
from harden.debian.fixes import Fix
from harden.debian.pending import PendingUpdate
from harden.errors import EnvironmentProblem, TargetError
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
from verifiers.facts import FactPlan, new_nonce
from verifiers.facts import parse as parse_facts
from verifiers.runner import report_from_facts, verify
from verifiers.suites import run_suites

REMEDIATION_TIMEOUT = 1800.0

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


def _run_phase(
    engine: Engine,
    image: str,
    script: str,
    network: str,
    changes: list[str],
    facts_script: str | None = None,
) -> tuple[str, bytes]:
    """Run one remediation script in a throwaway container and commit the result."""
    command = ["/bin/sh", "-c", script]
    if facts_script is not None:
        command = ["/bin/sh", "-c", _THEN_FACTS, "sh", script, facts_script]
    with engine.throwaway(image, command, network=network) as c:
        result = engine.run_to_end(c, REMEDIATION_TIMEOUT)
        check_remediation(result)
        return str(engine.commit(c, changes).id), result.stdout


def _base_config_changes(engine: Engine, image_id: str) -> list[str]:
    """Restore the base's CMD/ENTRYPOINT, which the remediation container replaced."""
    cfg = engine.image(image_id).attrs.get("Config") or {}
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
) -> tuple[str, tuple[PendingUpdate, ...], tuple[Fix, ...]]:
    """Remediation step 0, visible in the progress and the provenance: apply the security and
    stable updates of the archive the definition pins (else the host's apt sources)."""
    from builder.updates import apply_updates
    from harden.debian.archive import ArchiveReader
    from harden.paths import harden_home

    progress("remediation: security and stable updates")
    reader = ArchiveReader(harden_home() / "archive", clock)
    return apply_updates(engine, image_id, restore, reader, defn.update_archives, progress)


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
) -> BuildResult:
    doc = defn.doc
    assert doc.base is not None
    baseline = defn.resolve_baseline(catalogue)
    base_id, base_digest = resolve_base(engine, doc.base, progress)
    key = build_key(base_digest, baseline, defn)
    reference = doc.destination or f"harden/{doc.name}:latest"
    started = clock.now()

    image_id: str | None = None
    reused = False
    updates: tuple[PendingUpdate, ...] = ()
    fixes: tuple[Fix, ...] = ()
    if not force:
        previous = engine.find_images({LABEL_BUILD_KEY: key})
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
        restore = _base_config_changes(engine, base_id)
        current = base_id
        if doc.archive is None or doc.archive.apply:
            current, updates, fixes = _updates(engine, current, restore, defn, clock, progress)
        net_script = render_script(rules, family, TargetKind.CONTAINER, Phase.NETWORK)
        if any(r.kind.value == "package_present" for r in rules):
            progress("remediation (network phase: package installs)")
            current, _ = _run_phase(engine, current, net_script, "host", restore)
        off_script = render_script(rules, family, TargetKind.CONTAINER, Phase.OFFLINE)
        if user:
            off_script = user_script(user) + off_script.split("\n", 1)[1]
        labels = {
            **doc.labels,
            OCI_CREATED: rfc3339(started),
            OCI_BASE_NAME: doc.base,
            OCI_BASE_DIGEST: base_digest,
            LABEL_BASELINE_ID: baseline.id,
            LABEL_BASELINE_VERSION: baseline.version,
            LABEL_BASELINE_DIGEST: baseline.digest,
            LABEL_DEFINITION: doc.name,
            LABEL_BUILD_KEY: key,
        }
        changes = restore + [dockerfile_label(k, v) for k, v in sorted(labels.items())]
        if user:
            changes.append(f"USER {user}")
        progress(f"remediation: {len(rules)} rules of {baseline.id} {baseline.version}")
        nonce = new_nonce()
        plan = FactPlan.for_rules(
            [r for r in baseline.rules if Target.CONTAINER in r.targets], TargetKind.CONTAINER
        )
        image_id, stdout = _run_phase(
            engine, current, off_script, "none", changes, plan.script(nonce)
        )
        progress(f"verifying {image_id[:19]} against {baseline.id}")
        report = report_from_facts(
            baseline,
            parse_facts(stdout, nonce),
            TargetKind.CONTAINER,
            ImageTarget(engine, image_id).image_config(),
            clock,
            started=clock.now(),
            image=reference,
            digest=image_id,
        )
    else:
        progress(f"verifying {image_id[:19]} against {baseline.id}")
        target = ImageTarget(engine, image_id)
        report = verify(target, baseline, clock, image=reference, digest=image_id, progress=None)
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
        updates=updates,
        fixes=fixes,
    )
