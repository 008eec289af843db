"""Which vulnerabilities a pending update fixes, and an OpenVEX statement of those fixed by a build.

Debian's security OVAL files are not on the package mirrors this runs against, so the fixed CVE
ids are read from the source of truth they are made from: the Debian changelog inside the updated
``.deb`` (fetched from the signed index, hash-checked). The entries newer than the installed
version and up to the candidate name the CVEs (and DSA/DLA ids where the maintainer wrote them).
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import re
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from debian.changelog import Changelog

from harden.debian.archive import ArchiveError
from harden.debian.pending import PendingUpdate
from harden.debian.version import compare

OPENVEX_CONTEXT = "https://openvex.dev/ns/v0.2.0"
MAX_CHANGELOG_BYTES = 8 * 1024 * 1024
_IDS = re.compile(r"\b(CVE-\d{4}-\d{4,7}|DSA-\d{3,5}-\d{1,2}|DLA-\d{3,5}-\d{1,2})\b")


@dataclass(frozen=True)
class Fix:
    update: PendingUpdate
    ids: tuple[str, ...]  # CVE / DSA / DLA ids, sorted
    published: str | None  # the changelog date of the candidate entry (RFC 2822 as written)


def _members(deb: bytes) -> dict[str, bytes]:
    """The members of an ``ar`` archive (a .deb), by name."""
    if not deb.startswith(b"!<arch>\n"):
        raise ArchiveError("not a Debian package (no ar header)")
    out: dict[str, bytes] = {}
    pos = 8
    while pos + 60 <= len(deb):
        header = deb[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii", "replace").strip() or 0)
        out[name] = deb[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
    return out


def changelog_of(deb: bytes, package: str, source: str) -> str | None:
    """``usr/share/doc/<pkg>/changelog.Debian.gz`` from the package's data member, if it has one."""
    data = next((v for k, v in _members(deb).items() if k.startswith("data.tar")), None)
    if data is None:
        raise ArchiveError(f"{package}: the .deb has no data member")
    wanted = {  # native packages (apt) have changelog.gz only
        f"./usr/share/doc/{name}/{log}"
        for name in (package, source)
        for log in ("changelog.Debian.gz", "changelog.gz")
    }
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
        for member in tf:
            if member.name in wanted and member.isfile() and member.size <= MAX_CHANGELOG_BYTES:
                f = tf.extractfile(member)
                if f is None:
                    return None
                raw = gzip.GzipFile(fileobj=io.BytesIO(f.read())).read(MAX_CHANGELOG_BYTES)
                return raw.decode("utf-8", "replace")
    return None


def fixed_ids(changelog: str, installed: str, candidate: str) -> tuple[tuple[str, ...], str | None]:
    """Ids named by the entries in (installed, candidate], and the candidate entry's date."""
    ids: set[str] = set()
    published = None
    for block in Changelog(changelog, strict=False):
        version = str(block.version)
        if compare(version, candidate) > 0 or compare(version, installed) <= 0:
            continue
        if compare(version, candidate) == 0:
            published = block.date
        ids.update(_IDS.findall("\n".join(block.changes())))
    return tuple(sorted(ids)), published


def openvex(
    fixes: Iterable[Fix],
    *,
    product: str,
    purls: Mapping[str, str],
    now: dt.datetime,
    author: str = "harden",
) -> dict[str, Any]:
    """An OpenVEX v0.2.0 document: each CVE fixed by the rebuild is ``fixed`` in ``product``."""
    by_cve: dict[str, set[str]] = {}
    for fix in fixes:
        for vid in fix.ids:
            if vid.startswith("CVE-"):
                by_cve.setdefault(vid, set()).add(purls.get(fix.update.name, fix.update.name))
    stamp = now.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return {
        "@context": OPENVEX_CONTEXT,
        "@id": f"https://harden.dev/vex/{product.replace(':', '-')}",
        "author": author,
        "timestamp": stamp,
        "version": 1,
        "statements": [
            {
                "vulnerability": {"name": cve},
                "products": [{"@id": product, "subcomponents": [{"@id": p} for p in sorted(subs)]}],
                "status": "fixed",
            }
            for cve, subs in sorted(by_cve.items())
        ],
    }
