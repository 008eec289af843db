"""``/etc/os-release`` of an artefact: which Debian release (codename, version) it is."""

from __future__ import annotations

import shlex
from dataclasses import dataclass


@dataclass(frozen=True)
class Release:
    distro: str  # "debian"
    version: str  # "12" ("" for testing/sid)
    codename: str  # "bookworm"

    @property
    def purl_distro(self) -> str:
        """The purl ``distro`` qualifier: ``debian-12`` (``debian-trixie`` without a number)."""
        return f"{self.distro}-{self.version or self.codename}"


def parse_os_release(data: bytes) -> Release:
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines()[:200]:
        key, sep, value = line.partition("=")
        if sep and key.strip().isidentifier():
            try:
                words = shlex.split(value)
            except ValueError:
                continue
            fields[key.strip()] = words[0] if words else ""
    return Release(
        fields.get("ID", "debian") or "debian",
        fields.get("VERSION_ID", ""),
        fields.get("VERSION_CODENAME", ""),
    )
