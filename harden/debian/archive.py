"""Read a Debian archive suite's package index, trusting only what its signed ``InRelease`` says.

1. ``dists/SUITE/InRelease`` is fetched (bounded in bytes and time) and checked with ``gpgv``
   against the suite's keyring; only the text gpgv says was signed is parsed.
2. ``Valid-Until`` is honoured with the injected clock (an expired index is replayable, refused).
3. ``COMPONENT/binary-ARCH/Packages.xz`` is fetched and must match the size and SHA-256 the signed
   Release names; a truncated or altered index is refused.
4. The parsed candidates are cached by the digest of the ``InRelease`` that vouched for them, so an
   unchanged archive costs one small request; a refused download keeps the last good cache.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import json
import lzma
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import requests

from harden.clock import Clock
from harden.debian.dpkg import stanzas
from harden.debian.sources import Archive
from harden.debian.version import compare
from harden.errors import ExitCode, HardenError

MAX_INRELEASE_BYTES = 4 * 1024 * 1024
MAX_INDEX_BYTES = 256 * 1024 * 1024  # compressed; Debian main's Packages.xz is ~10 MB
MAX_INDEX_TEXT_BYTES = 512 * 1024 * 1024
TIMEOUT = (5.0, 30.0)  # connect, per read


class ArchiveError(HardenError):
    """The archive cannot be read or does not verify; never used then."""

    exit_code = ExitCode.ENVIRONMENT


@dataclass(frozen=True)
class Candidate:
    name: str
    version: str
    source: str
    suite: str
    filename: str = ""  # pool path of the .deb, relative to the archive root
    sha256: str = ""
    size: int = 0


class Fetcher(Protocol):
    def get(self, url: str, limit: int) -> bytes: ...


class HttpFetcher:
    """GET with a byte cap and a per-read timeout; every failure is an :class:`ArchiveError`."""

    def __init__(self) -> None:
        self._session = requests.Session()

    def get(self, url: str, limit: int) -> bytes:
        try:
            with self._session.get(url, timeout=TIMEOUT, stream=True, allow_redirects=False) as r:
                if r.status_code != 200:
                    raise ArchiveError(f"{url}: HTTP {r.status_code}")
                chunks, total = [], 0
                for chunk in r.iter_content(65536):
                    total += len(chunk)
                    if total > limit:
                        raise ArchiveError(f"{url}: more than {limit} bytes; refused")
                    chunks.append(chunk)
                return b"".join(chunks)
        except requests.RequestException as e:
            raise ArchiveError(
                f"archive unreachable: {url}: {type(e).__name__}",
                hint="check the mirror in the host's apt sources (or HARDEN_DEBIAN_MIRROR)",
            ) from e


def verify_inrelease(data: bytes, keyring: Path, *, url: str) -> bytes:
    """The signed text of an ``InRelease`` file, or :class:`ArchiveError`."""
    if not keyring.is_file():
        raise ArchiveError(
            f"keyring {keyring} not found", hint="apt-get install debian-archive-keyring"
        )
    with tempfile.TemporaryDirectory(prefix="harden-gpgv.") as tmp:
        src = Path(tmp, "InRelease")
        src.write_bytes(data)
        out = Path(tmp, "Release")
        proc = subprocess.run(
            ["gpgv", "--quiet", "--keyring", str(keyring), "--output", str(out), str(src)],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0 or not out.is_file():
            why = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
            raise ArchiveError(
                f"{url}: signature does not verify with {keyring}: {why[0]}",
                hint="the index was refused and not used; a mirror or proxy may be tampering",
            )
        return out.read_bytes()


def _release_fields(signed: bytes) -> dict[str, str]:
    return next(stanzas(signed.decode("utf-8", "replace")), {})


def _check_valid_until(fields: dict[str, str], now: dt.datetime, url: str) -> None:
    until = fields.get("Valid-Until")
    if not until:
        return
    try:
        when = email.utils.parsedate_to_datetime(until)
    except (TypeError, ValueError) as e:
        raise ArchiveError(f"{url}: unreadable Valid-Until {until!r}") from e
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    if now > when:
        raise ArchiveError(
            f"{url}: the signed index expired at {until}; refused (it could be a replay)",
            hint="pin an archive snapshot in the image definition for reproducible old builds",
        )


def _listed(fields: dict[str, str], path: str) -> tuple[str, int] | None:
    for line in fields.get("SHA256", "").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == path:
            return parts[0], int(parts[1])
    return None


def parse_packages(text: str, suite: str) -> dict[str, Candidate]:
    """The newest version of each binary package in one ``Packages`` index."""
    best: dict[str, Candidate] = {}
    for st in stanzas(text):
        name, version = st.get("Package"), st.get("Version")
        if not name or not version:
            continue
        source = (st.get("Source") or name).split()[0]
        have = best.get(name)
        if have is None or compare(version, have.version) > 0:
            size = st.get("Size", "0")
            best[name] = Candidate(
                name,
                version,
                source,
                suite,
                st.get("Filename", ""),
                st.get("SHA256", ""),
                int(size) if size.isdigit() else 0,
            )
    return best


class ArchiveReader:
    """Candidates of one or more archive suites, verified and cached by ``InRelease`` digest."""

    def __init__(
        self, cache_dir: Path, clock: Clock, *, fetcher: Fetcher | None = None, arch: str = "amd64"
    ) -> None:
        self.cache_dir = cache_dir
        self.cache_dir_debs = cache_dir / "debs"
        self.clock = clock
        self.fetcher = fetcher or HttpFetcher()
        self.arch = arch

    def candidates(self, archive: Archive) -> dict[str, Candidate]:
        base = f"{archive.uri}/dists/{archive.suite}"
        inrelease = self.fetcher.get(f"{base}/InRelease", MAX_INRELEASE_BYTES)
        key = hashlib.sha256(inrelease).hexdigest()
        cached = self.cache_dir / f"{key}-{archive.component}-{self.arch}.json"
        signed = verify_inrelease(inrelease, archive.keyring, url=f"{base}/InRelease")
        fields = _release_fields(signed)
        if archive.check_valid_until:
            _check_valid_until(fields, self.clock.now(), f"{base}/InRelease")
        if cached.is_file():
            return {
                n: Candidate(n, v, s, archive.suite, f, h, z)
                for n, (v, s, f, h, z) in json.loads(cached.read_text()).items()
            }
        text = self._index(base, fields, archive.component)
        found = parse_packages(text, archive.suite)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    c.name: [c.version, c.source, c.filename, c.sha256, c.size]
                    for c in found.values()
                }
            )
        )
        tmp.replace(cached)
        return found

    def _index(self, base: str, fields: dict[str, str], component: str) -> str:
        for suffix, decode in ((".xz", lzma.decompress), ("", bytes)):
            path = f"{component}/binary-{self.arch}/Packages{suffix}"
            listed = _listed(fields, path)
            if listed is None:
                continue
            digest, size = listed
            if size > MAX_INDEX_BYTES:
                raise ArchiveError(f"{base}/{path}: {size} bytes is more than harden reads")
            data = self._fetch_index(base, path, digest, size, fields)
            if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
                raise ArchiveError(
                    f"{base}/{path}: {len(data)} bytes do not match the signed size {size} "
                    "and SHA-256; refused (truncated or altered)",
                )
            try:
                raw = decode(data)
            except lzma.LZMAError as e:
                raise ArchiveError(f"{base}/{path}: not a valid xz stream") from e
            if len(raw) > MAX_INDEX_TEXT_BYTES:
                raise ArchiveError(f"{base}/{path}: the index unpacks to more than harden reads")
            return raw.decode("utf-8", "replace")
        raise ArchiveError(f"{base}: the signed Release lists no {component} index for {self.arch}")

    def _fetch_index(
        self, base: str, path: str, digest: str, size: int, fields: dict[str, str]
    ) -> bytes:
        """The index by its signed SHA-256 where the Release says ``Acquire-By-Hash: yes`` (as
        apt does: a mirror that publishes a new Release meanwhile still serves the file this
        one vouches for), else, or when the by-hash file is missing, by its name."""
        if fields.get("Acquire-By-Hash", "").strip().lower() == "yes":
            folder = path.rsplit("/", 1)[0]
            try:
                return self.fetcher.get(f"{base}/{folder}/by-hash/SHA256/{digest}", size)
            except ArchiveError:
                pass  # checked against the signed size and digest by the caller either way
        return self.fetcher.get(f"{base}/{path}", size)

    def deb(self, archive: Archive, cand: Candidate) -> bytes:
        """The candidate's ``.deb``, checked against the size and SHA-256 of the signed index."""
        if not cand.filename or ".." in cand.filename.split("/") or not cand.sha256:
            raise ArchiveError(f"{cand.name} {cand.version}: the index gives no usable Filename")
        cached = self.cache_dir_debs / f"{cand.sha256}.deb"
        if cached.is_file():
            return cached.read_bytes()
        url = f"{archive.uri}/{cand.filename}"
        data = self.fetcher.get(url, cand.size or MAX_INDEX_BYTES)
        if hashlib.sha256(data).hexdigest() != cand.sha256:
            raise ArchiveError(f"{url}: does not match the SHA-256 of the signed index; refused")
        self.cache_dir_debs.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(cached)
        return data
