"""Build one VM golden template: base -> overlay -> remediation -> seal -> clone verify.

The pipeline, one VM at a time (qemu under TCG is slow):

1. Boot a qcow2 overlay of the base template (the base is never written), log in with the build
   key, host keys pinned from the serial console.
2. Updates (unless the definition's ``archive: {apply: false}``): the security and stable
   updates pending for the base's dpkg database (read from the base disk with debugfs, never
   through its code; :mod:`builder.vm_packages`), plus the packages those new versions newly
   depend on, downloaded by harden from the signed indices, uploaded over SFTP and installed with
   the guest's ``dpkg -i``. The list goes into the provenance.
   Then upload the rendered OFFLINE remediation for target ``vm`` (rules not for vm, and actively
   waived rules, are skipped) and run it. A failure names the rule and no template is written.
   ``package_present`` rules are not run: the VM has no network, so those packages must already
   be in the base (scripts/vm-base.sh); verification then reports whether they are.
3. No reboot before sealing: the reloads the script defers (``augenrules --load``) run once at
   its end, and whether sysctl, kernel modules, audit rules and mount options are in force after
   a boot is judged on the clone in step 5, which is the boot every instance makes. (An earlier
   reboot and verify here only informed the progress output and cost a third of the build
   under TCG.)
4. Seal: run :func:`builder.qemu.hygiene_script` (no host keys, empty machine-id, no caches),
   stop ``systemd-random-seed`` and remove the seed it saved (otherwise shutdown writes it back
   into the template), power off, flatten the overlay into a standalone zstd qcow2.
5. Read the sealed template's package database (its SBOM) and its newest kernel and initramfs
   from the sealed disk: clones boot the template's own kernel (a kernel update installed in
   step 2 is what the template runs). Boot a clone of the sealed template (new host keys pinned
   from the console, new machine-id) and verify it. The clone's report is the one returned (and
   attested).

Template hygiene (the decision): a ``template.*`` rule is about the template's *disk*, and the
first boot of any clone undoes several of them on purpose (it makes host keys, a machine-id and a
random seed). Checked on the running clone they would fail on every correct template; checked on
the build VM before power-off they would miss what shutdown writes (the random seed). So every
``template.*`` rule is evaluated on the sealed file itself: the clone boots with the sealed qcow2
attached a second time as a read-only disk, which is mounted read-only (``ro,noload``; a
partitioned template's other file systems as its own fstab lists them) and the facts for those
rules are gathered with ``chroot`` into it. Their results replace the clone's own
results for the same rules and say so in their evidence. Every other rule is judged on the
running clone, the way an instance will run.

The sealed template is written as ``<out_dir>/<name>.qcow2`` with ``<name>.qcow2.manifest.json``
beside it (:mod:`harden.vm_manifest`: kernel and initrd copied next to it, the build key
referenced by path, never copied; sha256), so
``harden verify <out_dir>/<name>.qcow2`` works. It is written under a temporary name first and
renamed into place only when the clone is compliant (or the caller allows a non-compliant one).
A build whose inputs (base sha256, baseline digest, labels, harden version) did not change reuses
the existing template and only verifies a clone of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from harden import __version__
from harden.baseline.resolve import Catalogue, ResolvedBaseline, Rule
from harden.builder.children import cleanup_on_signals
from harden.builder.disk_image import DiskImage, inspect_disk
from harden.builder.packages import NoPackageDatabase
from harden.builder.qemu import (
    DEFAULT_APPEND,
    Vm,
    VmImage,
    default_boot_timeout,
    hygiene_script,
    seal,
)
from harden.builder.render import (
    Phase,
    check_remediation,
    remediation_rules,
    render_script,
    rule_times,
    slowest,
)
from harden.builder.ssh_target import SshTarget
from harden.builder.updates import (
    NO_UPDATES,
    UpdatePlan,
    install_failed,
    install_script,
    plan_updates,
)
from harden.builder.vm_packages import DiskPackages, read_disk
from harden.clock import Clock
from harden.debian.archive import Candidate
from harden.debian.fixes import Fix
from harden.debian.pending import PendingUpdate
from harden.errors import InputError, RemediationError, TargetError
from harden.imagedef import ImageDefinition
from harden.results import RuleResult, VerifyReport
from harden.target import CommandResult, TargetKind
from harden.testsuite import Suite, with_results
from harden.verifiers.runner import verify
from harden.verifiers.suites import run_suites
from harden.vm_manifest import TemplateManifest, read_manifest, write_manifest

DEFAULT_TEMPLATES_DIR = Path("/var/cache/harden/templates")
TEMPLATES_ENV = "HARDEN_TEMPLATES"
REMEDIATION_TIMEOUT = 1800.0
UPDATES_TIMEOUT = 1800.0  # dpkg -i of the updates; a kernel's initramfs takes minutes under TCG
# a partitioned template mounts eleven file systems at boot; under TCG on a busy host (2 shared
# cores) that took up to 150 s here, so the build waits longer than Vm's default
BOOT_TIMEOUT = 300.0  # a build boots a partitioned template twice: at least this, under TCG


def _boot_timeout() -> float:
    """300 s, or more when ``HARDEN_VM_BOOT_TIMEOUT`` says so (slow, shared CI runners)."""
    return max(BOOT_TIMEOUT, default_boot_timeout())


# the guest's own power-off (eleven file systems unmounted, auditd stopped) before sealing
SEAL_POWEROFF_TIMEOUT = 180.0
SEALED_RULE_PREFIX = "template."
REMOTE_SCRIPT = "/run/harden-remediation.sh"
REMOTE_FACTS = "/run/harden-sealed-facts.sh"
SEALED_MOUNT = "/run/harden-sealed"
SEALED_DEVICE = "/dev/vdb"

Progress = Callable[[str], None]

# after hygiene_script(): systemd-random-seed saves a seed when it stops (at the latest during
# power-off); stop it now and drop what it saved so the template carries no seed
_SEAL_EXTRA = """set -u
systemctl stop systemd-random-seed.service >/dev/null 2>&1 || true
rm -f /var/lib/systemd/random-seed /var/lib/systemd/credential.secret
sync
"""


def _noop(_: str) -> None:
    return None


def templates_dir() -> Path:
    return Path(os.environ.get(TEMPLATES_ENV) or DEFAULT_TEMPLATES_DIR)


@dataclass(frozen=True)
class VmBuildResult:
    definition: str
    path: Path  # the sealed template (<out_dir>/<name>.qcow2); written only when kept
    sha256: str  # "sha256:<hex>" of the sealed file
    written: bool  # False when not compliant and not allowed: no template was written
    reused: bool
    base_disk: str
    base_sha256: str
    build_key: str
    baseline: ResolvedBaseline
    report: VerifyReport  # the clone's report, template.* rules judged on the sealed disk
    timings: dict[str, float] = field(default_factory=dict)
    updates: tuple[PendingUpdate, ...] = ()  # installed by the updates step (provenance)
    added: tuple[Candidate, ...] = ()  # packages those updates newly depend on
    fixes: tuple[Fix, ...] = ()  # the ids each installed security update's changelog names
    inventory: DiskPackages | None = None  # the sealed template's package database (the SBOM)

    @property
    def compliant(self) -> bool:
        return self.report.compliant

    @property
    def reference(self) -> str:
        return str(self.path)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "template": str(self.path),
            "digest": self.sha256,
            "compliant": self.compliant,
            "written": self.written,
            "reused": self.reused,
            "base": {"disk": self.base_disk, "sha256": self.base_sha256},
            "baseline": self.report.baseline.to_json(),
            "summary": self.report.summary(),
            "sealed_rules": list(self.report.meta.get("sealed_rules", [])),
            "timings": {k: round(v, 1) for k, v in self.timings.items()},
            "updates": [u.describe() for u in self.updates],
            "kernel": self.inventory.kernel_version if self.inventory else None,
        }


def build_key(base_sha256: str, baseline: ResolvedBaseline, defn: ImageDefinition) -> str:
    material = {
        "base": base_sha256,
        "baseline": baseline.digest,
        "labels": defn.doc.labels,
        "append": defn.doc.vm.append if defn.doc.vm else DEFAULT_APPEND,
        "harden": __version__,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


# -- the sealed disk as a read-only second drive (Vm extra_disks: /dev/vdb) -------------------------
class SealedDiskTarget:
    """Runs the facts script chrooted into the sealed disk, mounted read-only in the clone."""

    kind = TargetKind.VM

    def __init__(self, ssh: SshTarget, label: str) -> None:
        self.ssh = ssh
        self.label = label

    def describe(self) -> str:
        return f"{self.label} (sealed disk, read-only)"

    def image_config(self) -> dict[str, Any] | None:
        return None

    def run(self, script: str, *, timeout: float = 600.0) -> CommandResult:
        self.ssh.put_file(script.encode(), REMOTE_FACTS, 0o600)
        # a partitioned template (root on vda1) also mounts the file systems its fstab names as
        # /dev/vdaN (vdbN here); mount points are checked so none leaves the sealed tree
        wrapper = f"""set -u
M={SEALED_MOUNT}
D={SEALED_DEVICE}
mkdir -p "$M"
if ! mountpoint -q "$M"; then
  if [ -b "${{D}}1" ]; then root="${{D}}1"; else root="$D"; fi
  mount -o ro,noload "$root" "$M" || exit 97
  if [ "$root" != "$D" ] && [ -f "$M/etc/fstab" ]; then
    awk 'substr($1, 1, 8) == "/dev/vda" && substr($1, 9) ~ "^[0-9]+$" && $2 ~ "^/[A-Za-z0-9_/.-]+$" && index($2, "..") == 0 && $3 == "ext4" {{ print $2, substr($1, 9) }}' "$M/etc/fstab" \\
      | sort | while read -r mp n; do
        [ -b "$D$n" ] && [ -d "$M$mp" ] || continue
        case "$(realpath -e "$M$mp")" in "$M$mp") ;; *) continue ;; esac  # no symlink on the way
        mount -o ro,noload "$D$n" "$M$mp" || exit 97
      done || exit 97
  fi
fi
chroot "$M" /bin/sh -s <{REMOTE_FACTS}
rc=$?
umount -R "$M"
rm -f {REMOTE_FACTS}
exit $rc
"""
        return self.ssh.run(wrapper, timeout=timeout)


def _sealed_rules(baseline: ResolvedBaseline) -> tuple[Rule, ...]:
    return tuple(r for r in baseline.rules if r.id.startswith(SEALED_RULE_PREFIX))


def merge_sealed(report: VerifyReport, sealed: VerifyReport) -> VerifyReport:
    """The clone's report with each ``template.*`` result replaced by the sealed disk's."""
    by_id: dict[str, RuleResult] = {
        r.rule_id: dataclasses.replace(r, evidence=("judged on the sealed template", *r.evidence))
        for r in sealed.results
    }
    results = tuple(by_id.get(r.rule_id, r) for r in report.results)
    meta = {**report.meta, "sealed_rules": sorted(by_id)}
    return dataclasses.replace(report, results=results, meta=meta)


# -- steps ----------------------------------------------------------------------------------------
@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.monotonic()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.monotonic() - t0


def _remediate(target: SshTarget, script: str, progress: Progress = _noop) -> None:
    target.put_file(script.encode(), REMOTE_SCRIPT, 0o700)
    result = target.run(
        f"sh {REMOTE_SCRIPT}; rc=$?; rm -f {REMOTE_SCRIPT}; exit $rc", timeout=REMEDIATION_TIMEOUT
    )
    progress("remediation: " + slowest(rule_times(result.stdout.decode("utf-8", "replace"))))
    check_remediation(result, consequence="; no template written")


def _keep_failed(
    vm: Vm,
    target: SshTarget,
    base: VmImage,
    base_disk: DiskImage | None,
    kept: Path,
    user: str,
    key: Path | None,
    failure: RemediationError,
) -> RemediationError:
    """--keep-on-error: power the build VM off (after a sync), flatten its overlay into ``kept``
    (a standalone qcow2: no backing file, so harden itself would open it too) and say how to boot
    it and log in. The template is still not written."""
    try:
        with contextlib.suppress(TargetError):
            target.run("sync", timeout=60)
        vm.shutdown()
        seal(vm.overlay, kept, backing=base_disk)
    except (TargetError, OSError) as e:
        return RemediationError(
            failure.message, hint=f"{failure.hint}\n(could not keep the failed state: {e})"
        )
    boot = ["qemu-system-x86_64", "-m", "2048", "-nographic", "-snapshot"]
    boot += ["-drive", f"file={kept},format=qcow2,if=virtio"]
    boot += ["-nic", "user,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22"]
    if base.kernel is not None:
        boot += ["-kernel", str(base.kernel), "-append", base.append]
        if base.initrd is not None:
            boot += ["-initrd", str(base.initrd)]
    login = f"ssh -p 2222{f' -i {shlex.quote(str(key))}' if key else ''} {user}@127.0.0.1"
    return RemediationError(
        f"{failure.message}; the failed disk is kept as {kept}",
        hint=f"{failure.hint}\nboot it (changes not saved): {shlex.join(boot)}\n"
        f"then log in: {login}\nremove it: rm {shlex.quote(str(kept))}",
    )


def _run_checked(target: SshTarget, script: str, what: str) -> None:
    result = target.run(script, timeout=300)
    if not result.ok:
        err = result.stderr.decode("utf-8", "replace").strip()[-1000:]
        raise TargetError(f"{what} failed in the build VM (exit {result.exit_status})", hint=err)


def verify_clone(
    sealed: Path,
    boot: VmImage,
    user: str,
    key: Path | None,
    baseline: ResolvedBaseline,
    clock: Clock,
    *,
    name: str,
    digest: str,
    progress: Progress,
    timings: dict[str, float],
    disk: DiskImage | None = None,
    suites: tuple[Suite, ...] = (),
) -> VerifyReport:
    """Boot a clone of ``sealed`` (inspected here unless ``disk`` is its inspected image) with
    the sealed file also attached read-only as ``/dev/vdb``, and verify it; then run the
    definition's testinfra ``suites`` on the same clone (over SSH, the host key pinned)."""
    clone_image = dataclasses.replace(boot, disk=sealed.absolute())
    with contextlib.ExitStack() as stack:
        stack.enter_context(cleanup_on_signals())
        if disk is None:
            disk = stack.enter_context(inspect_disk(sealed))
        return _verify_clone(
            sealed,
            clone_image,
            disk,
            user,
            key,
            baseline,
            clock,
            name,
            digest,
            progress,
            timings,
            suites,
        )


def _verify_clone(
    sealed: Path,
    clone_image: VmImage,
    disk: DiskImage,
    user: str,
    key: Path | None,
    baseline: ResolvedBaseline,
    clock: Clock,
    name: str,
    digest: str,
    progress: Progress,
    timings: dict[str, float],
    suites: tuple[Suite, ...] = (),
) -> VerifyReport:
    with (
        tempfile.TemporaryDirectory(prefix="harden-vm-clone-") as work,
        Vm(
            clone_image,
            Path(work),
            boot_timeout=_boot_timeout(),
            on_progress=progress,
            disk=disk,
            extra_disks=(disk,),  # the sealed template, read-only, as /dev/vdb
        ) as vm,
    ):
        with _timed(timings, "clone_boot"):
            target = vm.connect(user, key)
        with _timed(timings, "verify"):
            progress(f"verifying a clone of {sealed.name} against {baseline.id}")
            report = verify(target, baseline, clock, image=name, digest=digest)
            rules = _sealed_rules(baseline)
            if rules:
                progress(f"checking {len(rules)} template.* rules on the sealed disk")
                sealed_report = verify(
                    SealedDiskTarget(target, str(sealed)),
                    dataclasses.replace(baseline, rules=rules),
                    clock,
                    image=name,
                    digest=digest,
                )
                report = merge_sealed(report, sealed_report)
        if suites:
            # after the baseline's facts: the suites may change the throwaway clone (accounts,
            # failed logins, the clock); the sealed file is attached read-only
            with _timed(timings, "tests"):
                assert vm.ssh_port is not None
                known_hosts = Path(work, "known_hosts")
                known_hosts.write_text(
                    "".join(
                        f"[127.0.0.1]:{vm.ssh_port} {' '.join(k.split()[:2])}\n"
                        for k in vm.host_keys()
                    ),
                    encoding="utf-8",
                )
                tests = run_suites(
                    suites,
                    f"ssh://{user}@127.0.0.1:{vm.ssh_port}",
                    known_hosts=known_hosts,
                    identity=key,
                    progress=progress,
                )
                report = with_results(report, tests)
        vm.shutdown()
    return report


def _copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    tmp.chmod(0o644)
    os.replace(tmp, dst)


def _previous(template: Path) -> TemplateManifest | None:
    """The record of the last build of ``template``; an unreadable one means: build again."""
    try:
        return read_manifest(template)
    except InputError:
        return None


def build_vm(
    defn: ImageDefinition,
    catalogue: Catalogue,
    clock: Clock,
    *,
    out_dir: Path | None = None,
    force: bool = False,
    allow_noncompliant: bool = False,
    progress: Progress = _noop,
    keep_on_error: bool = False,
) -> VmBuildResult:
    """Build (see the module docstring). SIGTERM/SIGHUP/SIGINT end qemu and remove temp files.
    ``keep_on_error``: a failed remediation's disk is kept, flattened, to boot and inspect."""
    with cleanup_on_signals():
        return _build_vm(
            defn,
            catalogue,
            clock,
            out_dir=out_dir,
            force=force,
            allow_noncompliant=allow_noncompliant,
            progress=progress,
            keep_on_error=keep_on_error,
        )


def _build_vm(
    defn: ImageDefinition,
    catalogue: Catalogue,
    clock: Clock,
    *,
    out_dir: Path | None,
    force: bool,
    allow_noncompliant: bool,
    progress: Progress,
    keep_on_error: bool,
) -> VmBuildResult:
    doc = defn.doc
    if doc.vm is None:
        raise TargetError(f"{defn.path}: not a vm image definition", hint="add 'vm: {disk: ...}'")
    src = doc.vm
    out_dir = (out_dir or templates_dir()).absolute()
    base = VmImage(
        disk=Path(src.disk).absolute(),
        kernel=Path(src.kernel) if src.kernel else None,
        initrd=Path(src.initrd) if src.initrd else None,
        append=src.append,
    )
    if not base.disk.is_file():
        raise TargetError(
            f"the base VM disk {base.disk} does not exist",
            hint="build it with scripts/vm-base.sh (as root)",
        )
    baseline = defn.resolve_baseline(catalogue)
    timings: dict[str, float] = {}
    started = clock.now()

    # the base is an input like any other: inspected (no backing or data file, size bounded,
    # not corrupt) and held open; qemu and the seal read this very file
    with inspect_disk(base.disk) as base_disk:
        progress(f"hashing the base {base.disk}")
        base_sha = base_disk.sha256()
        return _build_from(
            defn,
            base,
            base_disk,
            base_sha,
            baseline,
            clock,
            started,
            timings,
            out_dir=out_dir,
            force=force,
            allow_noncompliant=allow_noncompliant,
            progress=progress,
            keep_on_error=keep_on_error,
        )


def _build_from(
    defn: ImageDefinition,
    base: VmImage,
    base_disk: DiskImage,
    base_sha: str,
    baseline: ResolvedBaseline,
    clock: Clock,
    started: datetime,
    timings: dict[str, float],
    *,
    out_dir: Path,
    force: bool,
    allow_noncompliant: bool,
    progress: Progress,
    keep_on_error: bool,
) -> VmBuildResult:
    doc = defn.doc
    assert doc.vm is not None
    src = doc.vm
    out = out_dir / f"{doc.name}.qcow2"
    ssh_key = Path(src.ssh_key) if src.ssh_key else None
    key = build_key(base_sha, baseline, defn)
    previous = _previous(out)
    if (
        not force
        and out.is_file()
        and previous is not None
        and previous.inputs_key == key
        and previous.name == doc.name
    ):
        progress(
            f"inputs unchanged (base {base_sha[:19]}, baseline {baseline.digest[:19]}): "
            f"reusing {out}"
        )
        with inspect_disk(out) as sealed_disk:
            digest = sealed_disk.sha256()
        inventory = _inventory(out, None, progress)
        boot = VmImage(
            disk=out,
            kernel=previous.kernel or base.kernel,
            initrd=previous.initrd or base.initrd,
            append=previous.append or base.append,
        )
        report = verify_clone(
            out,
            boot,
            src.ssh_user,
            ssh_key,
            baseline,
            clock,
            name=doc.name,
            digest=digest,
            progress=progress,
            timings=timings,
            suites=defn.suites(),
        )
        return VmBuildResult(
            doc.name,
            out,
            digest,
            True,
            True,
            str(base.disk),
            base_sha,
            key,
            baseline,
            report,
            timings,
            inventory=inventory,
        )

    suites = defn.suites()  # checked before the first boot: a bad path costs no VM
    rules = remediation_rules(baseline, TargetKind.VM, started.date())
    family = baseline.platforms[0].family.value
    # no reboot before sealing: reloads (augenrules) run once at the end of the script, and
    # the boot of the sealed template's clone is where effect at boot is judged
    script = render_script(rules, family, TargetKind.VM, Phase.OFFLINE)
    plan = NO_UPDATES
    if doc.archive is None or doc.archive.apply:
        with _timed(timings, "updates"):
            plan = _plan_updates(base.disk, defn, clock, progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".{doc.name}.building.qcow2"
    boot_files = out_dir / f".{doc.name}.building.boot"
    try:
        with (
            tempfile.TemporaryDirectory(prefix="harden-vm-build-") as work,
            Vm(
                base, Path(work), boot_timeout=_boot_timeout(), on_progress=progress, disk=base_disk
            ) as vm,
        ):
            with _timed(timings, "boot"):
                target = vm.connect(src.ssh_user, ssh_key)
            if plan.files:
                with _timed(timings, "updates"):
                    install_updates(target, plan, progress)
            with _timed(timings, "remediation"):
                progress(f"remediation: {len(rules)} rules of {baseline.id} {baseline.version}")
                try:
                    _remediate(target, script, progress)
                except RemediationError as e:
                    if not keep_on_error:
                        raise
                    kept = out_dir / f"{doc.name}.failed-{started:%Y%m%d-%H%M%S}.qcow2"
                    user = src.ssh_user
                    raise _keep_failed(vm, target, base, base_disk, kept, user, ssh_key, e) from e
            with _timed(timings, "seal"):
                progress("sealing: hygiene, power-off, flatten")
                _run_checked(target, hygiene_script(), "the hygiene script")
                _run_checked(target, _SEAL_EXTRA, "removing the random seed")
                if not vm.shutdown(timeout=SEAL_POWEROFF_TIMEOUT):
                    # killed: committed changes may sit only in the ext4 journals, and whatever
                    # mounts the template with noload (the sealed-disk checks, a scanner) would
                    # judge the file systems without them
                    raise TargetError(
                        f"the build VM did not power off within {SEAL_POWEROFF_TIMEOUT:.0f} s; "
                        "no template written",
                        hint="a busy host slows the guest's shutdown under TCG: build again",
                    )
                digest = "sha256:" + seal(vm.overlay, staging, backing=base_disk)
        with _timed(timings, "seal"):
            shutil.rmtree(boot_files, ignore_errors=True)
            boot_files.mkdir(mode=0o700)
            inventory = _inventory(staging, boot_files, progress)
        # the template boots its own newest kernel (a kernel update the build installed), else
        # the base's (a template without one in /boot)
        boot = dataclasses.replace(
            base,
            disk=staging,
            kernel=(inventory and inventory.kernel) or base.kernel,
            initrd=(inventory and inventory.initrd) or base.initrd,
        )
        report = verify_clone(
            staging,
            boot,
            src.ssh_user,
            ssh_key,
            baseline,
            clock,
            name=doc.name,
            digest=digest,
            progress=progress,
            timings=timings,
            suites=suites,
        )
        report = dataclasses.replace(report, started_at=started)

        def result(*, written: bool) -> VmBuildResult:
            return VmBuildResult(
                doc.name,
                out,
                digest,
                written,
                False,
                str(base.disk),
                base_sha,
                key,
                baseline,
                report,
                timings,
                plan.pending,
                plan.added,
                plan.fixes,
                inventory,
            )

        progress("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
        written = report.compliant or allow_noncompliant
        if not written:
            progress(f"not writing {out}: the clone is not compliant")
            staging.unlink(missing_ok=True)
            return result(written=False)
        if not report.compliant:
            progress(f"WARNING: writing NON-COMPLIANT template {out} (--allow-noncompliant)")
        kernel = initrd = None
        if boot.kernel is not None:
            kernel = out_dir / f"{doc.name}.vmlinuz"
            _copy(boot.kernel, kernel)
        if boot.initrd is not None:
            initrd = out_dir / f"{doc.name}.initrd.img"
            _copy(boot.initrd, initrd)
        os.replace(staging, out)
        write_manifest(
            TemplateManifest(
                name=doc.name,
                template=out,
                template_sha256=digest,
                created=started,
                inputs_key=key,
                source_disk=str(base.disk),
                source_sha256=base_sha,
                compliant=report.compliant,
                kernel=kernel,
                initrd=initrd,
                append=base.append,
                build_key=ssh_key,
                ssh_user=src.ssh_user,
                baseline=report.baseline.to_json(),
            )
        )
    finally:
        staging.unlink(missing_ok=True)
        shutil.rmtree(boot_files, ignore_errors=True)
    return result(written=True)


def _plan_updates(
    disk: Path, defn: ImageDefinition, clock: Clock, progress: Progress
) -> UpdatePlan:
    """Remediation step 0, visible in the progress and the provenance: the security and stable
    updates of the archive the definition pins (else the host's apt sources) for the packages
    the base's own database lists (read from its disk, not through its code)."""
    from harden.debian.archive import ArchiveReader
    from harden.paths import harden_home

    progress("remediation: security and stable updates")
    try:
        base = read_disk(disk)
    except NoPackageDatabase as e:
        progress(f"updates: none applied: {e.message}")
        return NO_UPDATES
    reader = ArchiveReader(harden_home() / "archive", clock)
    return plan_updates(
        base.status, base.os_release, reader, defn.update_archives, progress, origin=disk.name
    )


def install_updates(target: SshTarget, plan: UpdatePlan, progress: Progress) -> None:
    """Upload the verified ``.deb`` files over SFTP (as the build account) and install them with
    the guest's ``dpkg -i`` through sudo; the upload folder is removed afterwards."""
    size = sum(len(d) for d in plan.files.values())
    progress(f"updates: installing {len(plan.files)} package(s) ({size / 1e6:.1f} MB)")
    where = target.upload(plan.files, f".harden-updates-{os.getpid()}-{time.monotonic_ns()}")
    result = target.run(
        install_script([f"{where}/{n}" for n in plan.files], where, remount=True),
        timeout=UPDATES_TIMEOUT,
    )
    if not result.ok:
        raise install_failed(result.stderr)


def _inventory(disk: Path, boot_files: Path | None, progress: Progress) -> DiskPackages | None:
    """The sealed template's package database (and with ``boot_files`` its newest kernel),
    read from its disk; None for a template without a dpkg database."""
    try:
        found = read_disk(disk, boot_files_to=boot_files)
    except NoPackageDatabase as e:
        progress(f"no package inventory: {e.message}")
        return None
    kernel = f", kernel {found.kernel_version}" if found.kernel_version else ""
    progress(f"package inventory: {len(found.packages)} packages{kernel}")
    return found
