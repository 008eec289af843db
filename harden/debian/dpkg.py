"""Parse a dpkg ``status`` database (RFC 822 stanzas) into installed packages, bounded.

The file comes from the artefact (a hostile image may put anything there): the parser reads text
only, caps the size and the number of stanzas, and raises :class:`DpkgStatusError` rather than
returning a partial inventory, so a package list is never silently cut short.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from harden.errors import InputError

MAX_STATUS_BYTES = 64 * 1024 * 1024
MAX_PACKAGES = 100_000
_SOURCE = re.compile(r"^(?P<name>\S+)(?:\s+\((?P<version>[^)]+)\))?$")


class DpkgStatusError(InputError):
    """The package database cannot be read completely."""


@dataclass(frozen=True, order=True)
class Package:
    name: str
    version: str
    architecture: str
    source: str  # the source package name (the binary's own name when dpkg records none)
    source_version: str

    @property
    def purl_arch(self) -> str:
        return self.architecture or "all"


def stanzas(text: str) -> Iterator[dict[str, str]]:
    """RFC 822 paragraphs; continuation lines are folded into the field before them."""
    fields: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, None
        elif line[0] in " \t":
            if last is not None:
                fields[last] += "\n" + line.strip()
        else:
            key, sep, value = line.partition(":")
            if sep:
                last = key.strip()
                fields[last] = value.strip()
    if fields:
        yield fields


def parse_status(data: bytes, *, origin: str = "/var/lib/dpkg/status") -> tuple[Package, ...]:
    """Installed packages (``Status: install ok installed``), sorted by name and architecture."""
    if len(data) > MAX_STATUS_BYTES:
        raise DpkgStatusError(
            f"{origin} is {len(data)} bytes, more than the {MAX_STATUS_BYTES} harden reads",
            hint="a real package database is a few MB; this artefact's is not trustworthy",
        )
    text = data.decode("utf-8", "replace")
    out: list[Package] = []
    for i, st in enumerate(stanzas(text)):
        if i >= MAX_PACKAGES:
            raise DpkgStatusError(f"{origin} lists more than {MAX_PACKAGES} packages")
        if st.get("Status", "").split()[-1:] != ["installed"]:
            continue
        name, version = st.get("Package", ""), st.get("Version", "")
        if not name or not version:
            raise DpkgStatusError(f"{origin}: an installed entry without Package or Version")
        source, source_version = name, version
        m = _SOURCE.match(st.get("Source", ""))
        if m:
            source = m["name"]
            source_version = m["version"] or version
        out.append(Package(name, version, st.get("Architecture", ""), source, source_version))
    return tuple(sorted(out))
