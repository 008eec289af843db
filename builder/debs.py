"""Package installs without network for base-image code: harden fetches the ``.deb`` files.

A rule that installs packages used to run the base image's own ``/bin/sh`` and ``apt-get`` with
the host network. Instead the host's apt (trusted) resolves and downloads them in a private state:

- ``Dir::State::status`` is a copy of the image's ``/var/lib/dpkg/status``, read from the image
  without running it, so apt resolves against what the image has installed;
- the sources list names the image's codename (``VERSION_CODENAME`` of its os-release) on the
  archives the host's apt sources name for the host's codename (no mirror host name is written
  here; ``HARDEN_DEBIAN_MIRROR`` overrides), each ``signed-by`` the Debian archive keyring, so
  apt verifies every InRelease signature and every ``.deb`` hash;
- the lists live in a cache under ``$HARDEN_HOME/cache/apt`` (an unchanged archive costs one
  conditional request), and verified ``.deb`` files in ``$HARDEN_HOME/cache/debs`` by SHA-256.

The build copies the files into the container and its remediation installs them from that local
folder (``$HARDEN_DEBS``) with network ``none``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harden.debian.sources import AptSource, host_sources
from harden.errors import EnvironmentProblem, TargetError
from harden.paths import harden_home

DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MIRROR_ENV = "HARDEN_DEBIAN_MIRROR"
DEBS_DIR = "/run/harden-debs"  # where the container finds the files ($HARDEN_DEBS)
STATUS_LIMIT = 64 << 20  # bytes of /var/lib/dpkg/status read from an image
APT_TIMEOUT = 900.0  # seconds for one host apt-get run
# Docker's architecture names -> Debian's
DEBIAN_ARCH = {
    "amd64": "amd64",
    "arm64": "arm64",
    "arm": "armhf",
    "386": "i386",
    "ppc64le": "ppc64el",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
_URI_LINE = re.compile(r"^'([^']+)' (\S+) ([0-9]+)( \S+)?\s*$")
_SUITE_SUFFIXES = ("", "-updates", "-security")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Deb:
    """One package file, as apt's signed indices describe it."""

    uri: str
    apt_name: str  # apt's file name (epoch colon escaped as %3a)
    size: int
    digest: str  # SHA-256 from the signed Packages index (apt-cache show)

    @property
    def package(self) -> str:
        return urllib.parse.unquote(self.apt_name).split("_")[0]

    @property
    def version(self) -> str:
        parts = urllib.parse.unquote(self.apt_name).split("_")
        return parts[1] if len(parts) > 2 else "?"

    @property
    def local_name(self) -> str:
        """A plain file name (no colon, no percent) for the container's folder."""
        return urllib.parse.unquote(self.apt_name).replace(":", "-")


@dataclass(frozen=True)
class Fetched:
    """The verified files of a build's package installs, in ``folder``."""

    folder: Path
    debs: tuple[Deb, ...]
    per_rule: Mapping[str, tuple[str, ...]]  # rule id -> local file names
    from_cache: int

    def summary(self) -> str:
        names = ", ".join(f"{d.package} {d.version}" for d in self.debs) or "none"
        return (
            f"{len(self.debs)} .deb files fetched and verified on the host "
            f"({self.from_cache} from the cache): {names}"
        )

    def archive(self, out: Path) -> Path:
        """A tar of the folder for ``put_archive`` at ``/``: run/harden-debs/{*.deb,rules/*}."""
        with tarfile.open(out, "w") as tar:
            tar.add(self.folder, arcname=DEBS_DIR.lstrip("/"))
        return out


# ---------------------------------------------------------------- the host's apt sources
# (read by harden.debian.sources, the one parser of apt's source lists)


def image_sources(
    host: Sequence[AptSource], host_codename: str, image_codename: str, env: Mapping[str, str]
) -> list[AptSource]:
    """The host's sources for ``host_codename`` (and its -updates, -security suites), pointed at
    ``image_codename``; ``HARDEN_DEBIAN_MIRROR`` names the main archive instead."""
    mirror = env.get(MIRROR_ENV, "").strip().rstrip("/")
    if mirror:
        return [AptSource(mirror, image_codename, ("main",))]
    out: list[AptSource] = []
    for src in host:
        for suffix in _SUITE_SUFFIXES:
            if src.suite == host_codename + suffix:
                s = AptSource(src.uri, image_codename + suffix, src.components or ("main",))
                if s not in out:
                    out.append(s)
    if not any(s.suite == image_codename for s in out):
        raise EnvironmentProblem(
            f"the host's apt sources name no Debian archive for {host_codename or '?'}, so "
            f"harden cannot fetch packages for {image_codename}",
            hint=f"set {MIRROR_ENV} to a Debian archive URI (scripts/apt-mirror.sh prints the "
            "host's)",
        )
    return out


def parse_os_release(data: bytes) -> dict[str, str]:
    result: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            result.setdefault(key.strip(), value.strip().strip('"').strip("'"))
    return result


def host_codename(os_release: Path = Path("/etc/os-release")) -> str:
    try:
        return parse_os_release(os_release.read_bytes()).get("VERSION_CODENAME", "")
    except OSError:
        return ""


# ---------------------------------------------------------------- the host's apt, private state


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class HostApt:
    """The host's ``apt-get`` with every ``Dir::`` pointing at private places."""

    def __init__(
        self, work: Path, status: bytes, arch: str, sources: Sequence[AptSource], cache: Path
    ) -> None:
        self.work = work
        self.arch = arch
        self.cache = cache
        key = hashlib.sha256(
            "\n".join([arch, *(s.line(arch, DEBIAN_KEYRING) for s in sources)]).encode()
        ).hexdigest()[:16]
        self.lists = cache / "apt" / key / "lists"
        (self.lists / "partial").mkdir(parents=True, exist_ok=True)
        etc = work / "etc"
        for d in (etc / "sources.list.d", etc / "preferences.d", etc / "trusted.gpg.d"):
            d.mkdir(parents=True, exist_ok=True)
        (etc / "sources.list").write_text(
            "".join(s.line(arch, DEBIAN_KEYRING) + "\n" for s in sources)
        )
        (work / "status").write_bytes(status)
        (work / "pkgcache").mkdir(exist_ok=True)
        (work / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        self.options = {
            "Dir::State::status": str(work / "status"),
            "Dir::State::Lists": str(self.lists),
            "Dir::State::extended_states": str(work / "extended_states"),
            "Dir::Etc::SourceList": str(etc / "sources.list"),
            "Dir::Etc::SourceParts": str(etc / "sources.list.d"),
            "Dir::Etc::Preferences": str(etc / "preferences"),
            "Dir::Etc::PreferencesParts": str(etc / "preferences.d"),
            # no key of the host's own apt is trusted: only the signed-by keyring of each source
            "Dir::Etc::Trusted": str(etc / "trusted.gpg"),
            "Dir::Etc::TrustedParts": str(etc / "trusted.gpg.d"),
            "Dir::Cache": str(work / "pkgcache"),
            "Dir::Cache::archives": str(work / "archives"),
            "APT::Architecture": arch,
            "APT::Architectures::": arch,
            "APT::Install-Recommends": "false",
            "APT::Get::AllowUnauthenticated": "false",
            "Acquire::AllowInsecureRepositories": "false",
            "Acquire::Languages": "none",
        }

    def _run(self, *args: str, cwd: Path | None = None, tool: str = "apt-get") -> str:
        argv = [tool, "-q"]
        for k, v in self.options.items():
            argv += ["-o", f"{k}={v}"]
        argv += list(args)
        env = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=APT_TIMEOUT, cwd=cwd, env=env
            )
        except FileNotFoundError as e:
            raise EnvironmentProblem(
                f"package installs need the host's {tool}, which is missing",
                hint="run harden on a Debian host (apt-get and debian-archive-keyring)",
            ) from e
        except subprocess.TimeoutExpired as e:
            raise EnvironmentProblem(
                f"apt-get {args[0]} took longer than {APT_TIMEOUT:.0f}s"
            ) from e
        if done.returncode != 0:
            errors = [ln for ln in done.stderr.splitlines() if ln.startswith(("E:", "W:"))]
            detail = "\n".join(errors or done.stderr.strip().splitlines()[-5:])
            raise EnvironmentProblem(
                f"the host's {tool} {args[0]} failed (exit {done.returncode})",
                hint=(detail or "no output")[-2000:],
            )
        return done.stdout

    def update(self) -> None:
        if not Path(DEBIAN_KEYRING).is_file():
            raise EnvironmentProblem(
                f"the Debian archive keyring {DEBIAN_KEYRING} is missing on the host",
                hint="apt-get install debian-archive-keyring",
            )
        self._run("update", "--error-on=any")

    def uris(self, packages: Sequence[str]) -> list[Deb]:
        """What ``apt-get install PACKAGES`` would download for the image (nothing runs)."""
        out = self._run("--print-uris", "-y", "install", *packages)
        found = [(m[1], m[2], int(m[3])) for m in map(_URI_LINE.match, out.splitlines()) if m]
        if not found:
            return []
        names = [urllib.parse.unquote(name).split("_")[:2] for _, name, _ in found]
        shown = self._run(
            "show", "--no-all-versions", *(f"{n}={v}" for n, v in names), tool="apt-cache"
        )
        sha = {}
        for stanza in re.split(r"\n\s*\n", shown):
            f = dict(
                (k.strip(), v.strip())
                for k, _, v in (ln.partition(":") for ln in stanza.splitlines())
                if not k.startswith(" ")
            )
            if f.get("SHA256"):
                sha[(f.get("Package"), f.get("Version"))] = f["SHA256"]
        debs = []
        for (uri, name, size), (pkg, version) in zip(found, names, strict=True):
            digest = sha.get((pkg, version))
            if not digest:
                raise EnvironmentProblem(f"the signed index gives no SHA256 for {pkg} {version}")
            debs.append(Deb(uri, name, size, digest))
        return debs

    def download(self, debs: Sequence[Deb], into: Path) -> None:
        """``apt-get download NAME=VERSION``: apt checks each file against the signed index."""
        self._run("download", *(f"{d.package}={d.version}" for d in debs), cwd=into)


def fetch_debs(
    status: bytes,
    os_release: bytes,
    docker_arch: str,
    rules: Mapping[str, Sequence[str]],
    folder: Path,
    *,
    env: Mapping[str, str],
    progress: Progress,
    cache: Path | None = None,
) -> Fetched:
    """Resolve and download the packages of each rule (rule id -> packages) for the image whose
    dpkg status and os-release are given, into ``folder`` (``*.deb`` and ``rules/<id>`` lists)."""
    osr = parse_os_release(os_release)
    codename = osr.get("VERSION_CODENAME", "")
    if osr.get("ID") != "debian" or not codename:
        raise TargetError(
            f"package installs need a Debian image with VERSION_CODENAME in its os-release "
            f"(it says ID={osr.get('ID', '?')}, VERSION_CODENAME={codename or '?'})"
        )
    arch = DEBIAN_ARCH.get(docker_arch)
    if arch is None:
        raise TargetError(f"no Debian architecture for the image's {docker_arch!r}")
    sources = image_sources(host_sources(), host_codename(), codename, env)
    cache = cache or harden_home() / "cache"
    work = folder.parent / "apt"
    apt = HostApt(work, status, arch, sources, cache)
    progress(f"fetching packages for {codename}/{arch} with the host's apt (signed indices)")
    with _locked(apt.lists.parent / "lock"):
        apt.update()
        per_rule_debs = {rule: apt.uris(pkgs) for rule, pkgs in rules.items()}
    wanted: dict[str, Deb] = {}
    for debs in per_rule_debs.values():
        for d in debs:
            wanted.setdefault(d.apt_name, d)
    store = cache / "debs"
    store.mkdir(parents=True, exist_ok=True)
    download = work / "download"
    download.mkdir()
    if os.geteuid() == 0:  # apt fetches as _apt when it can write there
        with contextlib.suppress(KeyError, OSError):
            shutil.chown(download, "_apt")
    (folder / "rules").mkdir(parents=True)
    from_cache = 0
    missing = []
    for d in wanted.values():
        cached = store / f"{d.digest}.deb"
        if cached.is_file() and _sha(cached) == d.digest:
            shutil.copyfile(cached, folder / d.local_name)
            from_cache += 1
        else:
            missing.append(d)
    if missing:
        apt.download(missing, download)
    for d in missing:
        got = download / d.apt_name
        if not got.is_file() or _sha(got) != d.digest:
            raise EnvironmentProblem(
                f"{d.apt_name} does not match the hash of the signed index",
                hint="the mirror or a proxy served a different file; try again later",
            )
        tmp = store / f".{d.digest}.tmp"
        shutil.copyfile(got, tmp)
        os.replace(tmp, store / f"{d.digest}.deb")
        os.replace(got, folder / d.local_name)
    for rule, debs in per_rule_debs.items():
        (folder / "rules" / rule).write_text("".join(d.local_name + "\n" for d in debs))
    fetched = Fetched(
        folder,
        tuple(sorted(wanted.values(), key=lambda d: d.package)),
        {r: tuple(d.local_name for d in debs) for r, debs in per_rule_debs.items()},
        from_cache,
    )
    progress("package installs: " + fetched.summary())
    return fetched
