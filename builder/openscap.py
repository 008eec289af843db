"""OpenSCAP adapter: scan an unpacked root with ``oscap-chroot`` and the SCAP Security Guide
content installed by scripts/openscap.sh, and read the result back (harden.scan).

Containment: the scanner runs on the host and only *reads* the unpacked directory. Nothing from
the image is executed: the dpkginfo probe (libapt) would otherwise chroot into the root and run
the image's own ``/usr/bin/dpkg --print-foreign-architectures``; the apt configuration written
here names the architectures, so apt never forks dpkg, and reads only the root's dpkg status
(``Dir::State::status``; apt prefixes the probe root) with empty source lists and no host apt
configuration parts. A run is bounded by a timeout and killed as a process group.

The dpkginfo pitfall: without that configuration the probe fails to initialise
(``dpkginfo_init has failed``), every ``package_*_removed`` rule then passes and every
``*_installed`` rule fails. That line in the scanner's log is an error here, never a score.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from harden.errors import EnvironmentProblem, InputError, TargetError
from harden.paths import setup_hint
from harden.scan.arf import parse_arf
from harden.scan.model import (
    JUDGED,
    SSG_RULE_PREFIX,
    Family,
    RuleOutcome,
    ScanResult,
    XccdfResult,
    profile_id,
)
from harden.scan.rootfs import read_os_release, unpack_export

if TYPE_CHECKING:
    from harden.builder.docker_engine import Engine

DEFAULT_SSG_DIR = Path("/usr/share/harden/ssg")
DEFAULT_TIMEOUT = 600.0
DPKGINFO_FAILED = "dpkginfo_init has failed"
APT_CACHE_DIR = ".harden-oscap-apt"  # created inside a root harden unpacked itself
INSTALL_HINT = setup_hint(
    "install OpenSCAP and the SSG content with: sudo scripts/openscap.sh",
    "install OpenSCAP and the SCAP Security Guide content "
    "(Debian: apt-get install openscap-scanner ssg-debian, or the SSG release zip)",
)
# short profile names: the default per target kind (see docs/scanner-agreement.md)
DEFAULT_PROFILE = {"container": "anssi_bp28_enhanced", "vm": "anssi_bp28_enhanced"}
ANSSI_LEVELS = ("minimal", "intermediary", "enhanced", "high")


def _noop(_: str) -> None:
    return None


def ssg_dir() -> Path:
    return Path(os.environ.get("HARDEN_SSG_DIR") or DEFAULT_SSG_DIR)


@dataclass(frozen=True)
class Content:
    path: Path  # the SCAP data stream
    version: str  # the SSG package version (VERSION beside the data streams)


def content_for(os_release: dict[str, str], directory: Path | None = None) -> Content:
    """The data stream matching the root's os-release (Debian 12 and 13)."""
    directory = directory or ssg_dir()
    distro, version = os_release.get("ID", ""), os_release.get("VERSION_ID", "")
    if distro != "debian" or version not in ("12", "13"):
        raise InputError(
            f"no SCAP content for {distro or 'an unknown system'} {version}".rstrip(),
            hint="OpenSCAP scans are available for Debian 12 and 13 roots",
        )
    ds = directory / f"ssg-debian{version}-ds.xml"
    if not ds.is_file():
        raise EnvironmentProblem(f"SCAP content {ds} is missing", hint=INSTALL_HINT)
    version_file = directory / "VERSION"
    content_version = ""
    if version_file.is_file():
        content_version = version_file.read_text(encoding="utf-8", errors="replace").strip()[:64]
    return Content(ds, content_version)


def oscap_version() -> str:
    """``OpenSCAP 1.3.7`` (EnvironmentProblem when oscap-chroot is not installed)."""
    if shutil.which("oscap-chroot") is None or shutil.which("oscap") is None:
        raise EnvironmentProblem("OpenSCAP (oscap-chroot) is not installed", hint=INSTALL_HINT)
    out = subprocess.run(
        ["oscap", "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    first = (out.stdout.splitlines() or [""])[0]
    return "OpenSCAP " + first.rsplit(" ", 1)[-1] if first else "OpenSCAP"


def apt_config(root: Path, cache: str = APT_CACHE_DIR) -> str:
    """The apt.conf for the dpkginfo probe (paths are relative to the probe root, which apt
    prepends as RootDir); ``cache``: a writable directory inside the root, relative to it."""
    return "\n".join(
        [
            'Dir::State::status "/var/lib/dpkg/status";',
            'Dir::Etc::SourceList "";',
            'Dir::Etc::SourceParts "";',
            'Dir::Etc::Parts "";',
            'Dir::Etc::Main "";',
            'Dir::Etc::Preferences "";',
            'Dir::Etc::PreferencesParts "";',
            'APT::Architecture "amd64";',
            'APT::Architectures { "amd64"; };',
            f'Dir::Cache "/{cache}";',
            "",
        ]
    )


_RULE_ID = re.compile(
    rb'<xccdf-1\.2:Rule [^>]*?id="xccdf_org\.ssgproject\.content_rule_([a-z0-9_\-]+)"'
)
TAILORED_PROFILE = "xccdf_dev.harden_profile_agreement"


def content_rule_ids(content: Path) -> frozenset[str]:
    """The short ids of every rule the data stream defines (installed, trusted content)."""
    return frozenset(m.decode() for m in _RULE_ID.findall(content.read_bytes()))


def tailoring(rules: Sequence[str]) -> str:
    """An XCCDF 1.2 tailoring whose one profile selects exactly ``rules`` (short SSG ids).

    It does not ``extends`` the scanned profile: OpenSCAP 1.3.7 ignores the selects of a
    tailored profile that extends one which deselects them. The rules then run with the data
    stream's default values, which is why their results are kept apart (``ScanResult.extra``)."""
    from xml.sax.saxutils import quoteattr

    selects = "\n".join(
        f'    <xccdf:select idref={quoteattr(SSG_RULE_PREFIX + r)} selected="true"/>'
        for r in sorted(set(rules))
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<xccdf:Tailoring xmlns:xccdf="http://checklists.nist.gov/xccdf/1.2" '
        'id="xccdf_dev.harden_tailoring_agreement">\n'
        '  <xccdf:version time="2026-01-01T00:00:00">1</xccdf:version>\n'
        f"  <xccdf:Profile id={quoteattr(TAILORED_PROFILE)}>\n"
        "    <xccdf:title>harden agreement: mapped rules outside the profile</xccdf:title>\n"
        f"{selects}\n"
        "  </xccdf:Profile>\n"
        "</xccdf:Tailoring>\n"
    )


def _run_oscap(
    root: Path,
    content: Content,
    profile_args: Sequence[str],
    workdir: Path,
    name: str,
    timeout: float,
    html: Path | None = None,
) -> Path:
    """One ``oscap-chroot ... xccdf eval``; returns the ARF path (errors raised)."""
    arf = workdir / f"{name}.xml"
    log = workdir / f"{name}.log"
    argv = ["oscap-chroot", str(root), "xccdf", "eval", *profile_args, "--results-arf", str(arf)]
    if html is not None:
        argv += ["--report", str(html)]
    argv.append(str(content.path))
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(workdir),
        "APT_CONFIG": str(workdir / "apt.conf"),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(  # a fixed argv, no shell
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise TargetError(f"the OpenSCAP scan did not finish in {timeout:.0f} s") from e
    text = log.read_bytes()[-1024 * 1024 :].decode("utf-8", "replace")
    if DPKGINFO_FAILED in text:
        # libapt says why on stderr ("E: ..." / "W: ..."): keep it in the message
        apt_says = [ln.strip() for ln in text.splitlines() if re.match(r"^\s*[EW]: ", ln)]
        raise TargetError(
            "the OpenSCAP dpkginfo probe failed to read the root's package database "
            f"({DPKGINFO_FAILED}): package rules would be wrong, no score is given",
            hint=f"see {log}" + "".join(f"\n{ln[:300]}" for ln in apt_says[:10]),
        )
    # oscap: 0 every rule passed, 2 some rule failed, anything else an error
    if rc not in (0, 2) or not arf.is_file():
        tail = " | ".join(line for line in text.splitlines()[-5:] if line.strip())
        raise TargetError(f"oscap-chroot failed (exit {rc}): {tail[:500]}")
    return arf


def scan_root(
    root: Path,
    profile: str,
    workdir: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    html: Path | None = None,
    extra_rules: Sequence[str] = (),
    progress: Callable[[str], None] = _noop,
    apt_cache: str = APT_CACHE_DIR,
) -> ScanResult:
    """Scan the unpacked ``root`` with ``profile``; the ARF is ``workdir/arf.xml``.

    ``extra_rules`` (short SSG ids the data stream defines): those the profile does not select
    are evaluated too, in a second run with a tailoring, into ``ScanResult.extra`` (not scored).
    ``apt_cache``: where libapt may write its cache, relative to the root (a root mounted
    read-only, as scripts/vm-oscap.sh mounts a VM template, offers a tmpfs for it).
    """
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*", apt_cache) or ".." in apt_cache:
        raise InputError(f"apt cache {apt_cache!r} must be a plain path inside the root")
    cache = root
    for name in Path(apt_cache).parts:  # no symlink on the way: the cache stays in the root
        cache = cache / name
        if cache.is_symlink() or (cache.exists() and not cache.is_dir()):
            raise InputError(f"{apt_cache} in the root is not a directory harden made")
    scanner = oscap_version()
    content = content_for(read_os_release(root))
    full_profile = profile_id(profile)
    cache.mkdir(mode=0o700, exist_ok=True)
    (workdir / "apt.conf").write_text(apt_config(root, apt_cache), encoding="utf-8")
    progress(f"scanning with {scanner}, {content.path.name} {content.version}, {full_profile}")
    started = time.monotonic()
    arf = _run_oscap(root, content, ["--profile", full_profile], workdir, "arf", timeout, html=html)
    result = parse_arf(arf)
    if result.profile != full_profile:
        raise InputError(f"the ARF is of profile {result.profile}, not {full_profile}")
    extra: tuple[RuleOutcome, ...] = ()
    judged = result.by_short_id()
    missing = [
        r
        for r in sorted(set(extra_rules))
        if r not in judged or judged[r].result is XccdfResult.NOTSELECTED
    ]
    if missing:
        (workdir / "tailoring.xml").write_text(tailoring(missing), encoding="utf-8")
        progress(f"evaluating {len(missing)} mapped rule(s) outside {result.profile_short}")
        extra_arf = _run_oscap(
            root,
            content,
            ["--tailoring-file", str(workdir / "tailoring.xml"), "--profile", TAILORED_PROFILE],
            workdir,
            "extra",
            timeout,
        )
        wanted = set(missing)
        extra = tuple(r for r in parse_arf(extra_arf).rules if r.short_id in wanted)
    return replace(
        result,
        content=content.path.name,
        content_version=content.version or result.content_version,
        scanner=scanner if result.scanner == "OpenSCAP" else result.scanner,
        seconds=time.monotonic() - started,
        extra=extra,
    )


@contextlib.contextmanager
def private_dir(prefix: str = "harden-scan-") -> Iterator[Path]:
    """A 0700 temporary directory removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        path.chmod(0o700)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def scan_image(
    engine: Engine,
    ref: str,
    profile: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    keep_arf: Path | None = None,
    html: Path | None = None,
    extra_rules: Sequence[str] = (),
    progress: Callable[[str], None] = _noop,
) -> ScanResult:
    """Export the file system of image ``ref`` (a created, never started container), unpack it
    safely and scan it. ``keep_arf``: copy the ARF there."""
    from harden.builder.docker_engine import exported_filesystem

    with private_dir() as work:
        root = work / "root"
        root.mkdir(mode=0o700)
        progress(f"exporting the file system of {ref}")
        with exported_filesystem(engine, ref) as stream:
            unpacked = unpack_export(stream, root)
        progress(
            f"unpacked {unpacked.entries} entries ({unpacked.bytes // (1024 * 1024)} MiB), "
            f"{len(unpacked.skipped)} device nodes skipped"
        )
        result = scan_root(
            root,
            profile,
            work,
            timeout=timeout,
            html=html,
            extra_rules=extra_rules,
            progress=progress,
        )
        if keep_arf is not None:
            shutil.copyfile(work / "arf.xml", keep_arf)
        return result


def scan_container(
    engine: Engine,
    name: str,
    profile: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    progress: Callable[[str], None] = _noop,
) -> ScanResult:
    """A running container's file system as it is now (``docker export`` of the container)."""
    from harden.builder.docker_engine import exported_container

    with private_dir() as work:
        root = work / "root"
        root.mkdir(mode=0o700)
        with exported_container(engine, name) as stream:
            unpack_export(stream, root)
        return scan_root(root, profile, work, timeout=timeout, progress=progress)


def scan_directory(
    root: Path,
    profile: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    progress: Callable[[str], None] = _noop,
) -> ScanResult:
    """An already extracted root (a VM template's file systems copied out by harden)."""
    with private_dir() as work:
        return scan_root(root, profile, work, timeout=timeout, progress=progress)


def _kind_of(scheme: str) -> str:
    return "vm" if scheme == "qcow2" else "container"


def scan_ref(
    ref: str,
    profile: str | None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    progress: Callable[[str], None] = _noop,
) -> ScanResult:
    """``harden verify REF --scan [PROFILE]``: scan what REF names (profile None: the default
    for its target kind). Images and running containers are exported; a VM template is not
    yet (its file systems must be copied out read-only first)."""
    from harden.builder.docker_engine import Engine

    scheme = check_scan_ref(ref, profile)
    chosen = profile or DEFAULT_PROFILE[_kind_of(scheme)]
    engine = Engine.connect()
    if scheme == "docker":
        return scan_container(
            engine, ref.removeprefix("docker://"), chosen, timeout=timeout, progress=progress
        )
    return scan_image(engine, ref, chosen, timeout=timeout, progress=progress)


def check_scan_ref(ref: str, profile: str | None) -> str:
    """Before anything runs: REF is something --scan can read, PROFILE is a profile name and the
    scanner is installed. Returns REF's scheme."""
    from harden.errors import UsageError
    from harden.verifiers.refs import scheme_of

    if profile:
        check_profile(profile)
    scheme = scheme_of(ref)
    if scheme in ("ssh", "qcow2"):
        raise UsageError(
            f"--scan cannot read the file system of {ref} yet",
            hint="scan a container image, a registry reference or docker://NAME; "
            "a VM template can be scanned from its extracted root (builder.openscap.scan_directory)",
        )
    oscap_version()
    return scheme


def check_profile(profile: str) -> str:
    """A profile name as typed: short (anssi_bp28_high) or a full XCCDF id; else UsageError."""
    import re

    from harden.errors import UsageError

    if not re.fullmatch(r"[a-z0-9_]{1,80}|xccdf_[A-Za-z0-9_.\-]{1,200}", profile):
        raise UsageError(
            f"{profile!r} is not an XCCDF profile",
            hint="e.g. --scan anssi_bp28_enhanced (minimal, intermediary, enhanced, high)",
        )
    return profile


VM_APT_CACHE = "proc/.harden-apt-cache"  # scripts/vm-oscap.sh mounts a tmpfs on ROOT/proc


def scan_tree_main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m harden.builder.openscap ROOT OUTDIR PROFILE...``: scan a VM template's file
    systems that scripts/vm-oscap.sh mounted read-only under ROOT (a tmpfs on ROOT/proc holds
    libapt's cache), with the same apt configuration, dpkginfo check, bounds and score as
    ``harden build --scan``. Per profile: OUTDIR/PROFILE.arf.xml, OUTDIR/PROFILE.json (the
    result), OUTDIR/PROFILE.failed (file-judged rules that fail, error or are unknown) and a
    line on stdout. Exit 0, 2 usage, 3 bad input, 4 scanner or environment problem."""
    import json
    import sys

    from harden.errors import HardenError

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or any(a.startswith("-") for a in args):
        sys.stderr.write("usage: python3 -m harden.builder.openscap ROOT OUTDIR PROFILE...\n")
        return 2
    root, outdir, profiles = Path(args[0]), Path(args[1]), args[2:]
    try:
        for p in profiles:
            check_profile(p)
        outdir.mkdir(parents=True, exist_ok=True)
        for profile in profiles:
            with private_dir() as work:
                try:
                    result = scan_root(root, profile, work, apt_cache=VM_APT_CACHE)
                finally:  # the scanner's log, also (above all) when it failed
                    if (work / "arf.log").is_file():
                        shutil.copyfile(work / "arf.log", outdir / f"{profile}.log")
                shutil.copyfile(work / "arf.xml", outdir / f"{profile}.arf.xml")
            (outdir / f"{profile}.json").write_text(
                json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
            )
            (outdir / f"{profile}.failed").write_text(
                "".join(f"{r.short_id} {r.result.value}\n" for r in result.failing()),
                encoding="utf-8",
            )
            c = result.counts()
            passed, failed = c["pass"] + c["fixed"], c["fail"]
            pass_fail = 100.0 * passed / (passed + failed) if passed + failed else 0.0
            others = " ".join(
                f"{k}={v}"
                for k, v in c.items()
                if v and k not in ("pass", "fixed", "fail", "notselected")
            )
            apart = sum(1 for r in result.rules if r.family != Family.FILE and r.result in JUDGED)
            sys.stdout.write(
                f"{result.profile_short} {pass_fail:.1f} pass={passed} fail={failed} {others} "
                f"score={result.score} excluded(kernel_config_,sysctl_)={apart}\n"
            )
            sys.stdout.flush()
    except HardenError as e:
        sys.stderr.write(f"error: {e.message}\n")
        if e.hint:
            sys.stderr.write(f"hint: {e.hint}\n")
        return e.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(scan_tree_main())
