"""Package inventory of a built artefact as a CycloneDX 1.6 SBOM (``https://cyclonedx.org/bom``).

The inventory comes from the artefact's own dpkg database, parsed by harden (never by running the
artefact's ``dpkg-query``). Each binary package is a component with its Debian purl
(``pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-12``) and its source package; the image
(or qcow2 file) is the described subject in ``metadata.component``. The document is reproducible:
references are purls, the serial number is derived from the subject digest and the package set,
the timestamp comes from the injected clock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Container, Sequence
from typing import Any

from cyclonedx.model import Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.bom_ref import BomRef
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from harden.debian.dpkg import Package

CYCLONEDX_BOM = "https://cyclonedx.org/bom"
CODENAME_PROPERTY = "harden:debian:codename"
SOURCE_PROPERTY = "harden:deb:source"
_NAMESPACE = uuid.UUID("6f1c1f0e-4e0a-4c7a-9b35-2f8a3f4d9a11")


def purl(pkg: Package, distro: str) -> PackageURL:
    return PackageURL(
        type="deb",
        namespace="debian",
        name=pkg.name,
        version=pkg.version,
        qualifiers={"arch": pkg.purl_arch, "distro": distro},
    )


def cyclonedx(
    packages: Sequence[Package],
    *,
    subject_name: str,
    subject_digest: str,
    distro: str,
    now: dt.datetime,
    codename: str | None = None,
) -> dict[str, Any]:
    """The SBOM as a JSON object (CycloneDX 1.6), ready to be an in-toto predicate.

    ``codename`` (``bookworm``) is recorded as the metadata property ``harden:debian:codename``:
    the release whose security suites ``harden status`` compares the packages with."""
    listing = "\n".join(f"{p.name} {p.version} {p.architecture}" for p in packages)
    serial = uuid.uuid5(_NAMESPACE, f"{subject_digest}\n{listing}")
    bom = Bom(serial_number=serial)
    bom.metadata.timestamp = now
    if codename:
        bom.metadata.properties.add(Property(name=CODENAME_PROPERTY, value=codename))
    root = Component(
        name=subject_name,
        type=ComponentType.CONTAINER,
        bom_ref=BomRef(subject_digest),
        version=subject_digest,
    )
    bom.metadata.component = root
    components = []
    for p in packages:
        ref = purl(p, distro)
        props = [Property(name=SOURCE_PROPERTY, value=f"{p.source} {p.source_version}")]
        components.append(
            Component(
                name=p.name,
                version=p.version,
                type=ComponentType.LIBRARY,
                purl=ref,
                bom_ref=BomRef(ref.to_string()),
                properties=props,
            )
        )
    bom.components.update(components)
    bom.register_dependency(root, components)
    doc: dict[str, Any] = json.loads(JsonV1Dot6(bom).output_as_string())
    return doc


def packages_of(doc: dict[str, Any]) -> dict[str, str]:
    """name -> version of every Debian component in a CycloneDX document (for comparisons)."""
    out: dict[str, str] = {}
    for comp in doc.get("components") or []:
        if str(comp.get("purl", "")).startswith("pkg:deb/"):
            out[str(comp["name"])] = str(comp["version"])
    return out


def digest_of(doc: dict[str, Any]) -> str:
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(data).hexdigest()


def codename_of(doc: dict[str, Any]) -> str | None:
    """The Debian codename recorded in the document's metadata (None when it names none)."""
    meta = doc.get("metadata")
    for prop in (meta.get("properties") or []) if isinstance(meta, dict) else []:
        if isinstance(prop, dict) and prop.get("name") == CODENAME_PROPERTY:
            value = prop.get("value")
            return str(value) if isinstance(value, str) and value.isalnum() else None
    return None


def installed_of(doc: dict[str, Any], only: Container[str] | None = None) -> tuple[Package, ...]:
    """The Debian packages a signed SBOM lists, as :class:`Package` (for pending updates).

    ``only``: the names worth reading (those an archive has a candidate for); the others are
    skipped before any other work (`status` reads one SBOM of hundreds of packages per image)."""
    out: list[Package] = []
    for comp in doc.get("components") or []:
        if not isinstance(comp, dict):
            continue
        name = comp.get("name")
        if only is not None and (not isinstance(name, str) or name not in only):
            continue
        ref = comp.get("purl")
        version = comp.get("version")
        if not isinstance(ref, str) or not ref.startswith("pkg:deb/"):
            continue
        if not isinstance(name, str) or not isinstance(version, str) or not name or not version:
            continue
        query = ref.partition("?")[2]
        at = query.find("arch=")
        arch = query[at + 5 :].split("&", 1)[0] if at >= 0 else ""
        source, source_version = name, version
        for prop in comp.get("properties") or ():
            if isinstance(prop, dict) and prop.get("name") == SOURCE_PROPERTY:
                parts = str(prop.get("value", "")).split()
                if len(parts) == 2:
                    source, source_version = parts
        out.append(Package(name, version, arch, source, source_version))
    out.sort(key=lambda p: (p.name, p.architecture, p.version))
    return tuple(out)
