"""The host's apt sources (deb822 ``*.sources`` and one-line ``*.list``): where Debian lives.

harden never writes a mirror's host name into code: the archive it reads for security updates is
the one the host's apt configuration names (or a mirror given in the image definition / the
``HARDEN_DEBIAN_MIRROR`` environment variable).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from harden.debian.dpkg import stanzas
from harden.errors import ExitCode, HardenError

DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


@dataclass(frozen=True)
class AptSource:
    uri: str  # without a trailing slash
    suite: str
    components: tuple[str, ...]
    signed_by: Path | None = None

    def line(self, arch: str, keyring: str) -> str:
        """A one-line ``deb`` entry for this source, signed by ``keyring`` (harden's own apt
        configuration for fetching packages, whatever the host's entry says)."""
        opts = f"[arch={arch} signed-by={keyring}]"
        return f"deb {opts} {self.uri} {self.suite} {' '.join(self.components)}"


def _deb822(text: str) -> list[AptSource]:
    out: list[AptSource] = []
    body = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    for st in stanzas(body):
        if "deb" not in st.get("Types", "").split() or st.get("Enabled", "yes") == "no":
            continue
        signed = st.get("Signed-By", "").strip()
        key = Path(signed) if signed.startswith("/") and "\n" not in signed else None
        for uri in st.get("URIs", "").split():
            for suite in st.get("Suites", "").split():
                comps = tuple(st.get("Components", "").split())
                out.append(AptSource(uri.rstrip("/"), suite, comps, key))
    return out


def _one_line(text: str) -> list[AptSource]:
    out: list[AptSource] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        words = line.split()[1:]
        key = None
        if words and words[0].startswith("["):
            opts = []
            while words:
                w = words.pop(0)
                opts.append(w.strip("[]"))
                if w.endswith("]"):
                    break
            for opt in opts:
                name, _, value = opt.partition("=")
                if name == "signed-by" and value.startswith("/"):
                    key = Path(value)
        if len(words) >= 2:
            out.append(AptSource(words[0].rstrip("/"), words[1], tuple(words[2:]), key))
    return out


def host_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    """Every ``deb`` source the host's apt would use, in apt's reading order."""
    found: list[AptSource] = []
    main = etc_apt / "sources.list"
    if main.is_file():
        found += _one_line(main.read_text(errors="replace"))
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        for f in sorted(parts.iterdir()):
            if f.suffix == ".list":
                found += _one_line(f.read_text(errors="replace"))
            elif f.suffix == ".sources":
                found += _deb822(f.read_text(errors="replace"))
    return found


@dataclass(frozen=True)
class Archive:
    """One suite of one mirror, with the keyring its ``InRelease`` must be signed by."""

    uri: str
    suite: str
    component: str = "main"
    keyring: Path = DEFAULT_KEYRING
    check_valid_until: bool = True  # False for a pinned snapshot (old by design)

    @property
    def label(self) -> str:
        return f"{self.uri} {self.suite}"


class NoArchiveError(HardenError):
    exit_code = ExitCode.ENVIRONMENT


def update_archives(
    codename: str, sources: list[AptSource], *, mirror: str | None = None
) -> list[Archive]:
    """The ``<codename>-security`` and ``<codename>-updates`` suites to compare an image with.

    The mirror that serves a suite for the host's release serves it for other releases too, so
    ``trixie-security`` is read from wherever the host reads ``bookworm-security``. ``mirror``
    (image definition or ``HARDEN_DEBIAN_MIRROR``) replaces the main archive.
    """
    mirror = mirror or os.environ.get("HARDEN_DEBIAN_MIRROR") or None
    out: list[Archive] = []
    for flavour in ("security", "updates"):
        src = next((s for s in sources if s.suite.endswith("-" + flavour)), None)
        if flavour == "updates" and mirror:
            out.append(Archive(mirror.rstrip("/"), f"{codename}-updates"))
        elif src is not None:
            out.append(
                Archive(src.uri, f"{codename}-{flavour}", keyring=src.signed_by or DEFAULT_KEYRING)
            )
    if not out:
        raise NoArchiveError(
            f"the host's apt sources name no -security or -updates suite to compare {codename} with",
            hint="add them to /etc/apt/sources.list.d or set HARDEN_DEBIAN_MIRROR",
        )
    return out


def archives_for(
    codename: str,
    *,
    mirror: str | None = None,
    security_mirror: str | None = None,
    keyring: Path | None = None,
    snapshot: bool = False,
    etc_apt: Path = Path("/etc/apt"),
) -> list[Archive]:
    """The security and updates suites for ``codename``: pinned by an image definition's
    ``archive`` (both suites from ``mirror`` unless ``security_mirror`` is given), else the
    host's apt sources (:func:`update_archives`)."""
    if mirror or security_mirror:
        key = keyring or DEFAULT_KEYRING
        out = []
        for uri, flavour in ((security_mirror or mirror, "security"), (mirror, "updates")):
            if uri:
                out.append(
                    Archive(
                        uri.rstrip("/"),
                        f"{codename}-{flavour}",
                        keyring=key,
                        check_valid_until=not snapshot,
                    )
                )
        return out
    found = update_archives(codename, host_sources(etc_apt))
    return [
        Archive(
            a.uri,
            a.suite,
            a.component,
            keyring or a.keyring,
            check_valid_until=a.check_valid_until and not snapshot,
        )
        for a in found
    ]
