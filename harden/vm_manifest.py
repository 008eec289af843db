"""The record of one sealed VM template, written beside it as ``<name>.qcow2.manifest.json``.

One file per template name, so two VM definitions writing to the same directory keep their own
records. ``harden build`` writes it (builder/vm_build.py) and reads it back to decide whether the
inputs changed; ``harden verify FILE.qcow2`` boots the template with its kernel, initrd and SSH
key; publishing reads the build time for the artifact. Its keys are those of the base template
manifest scripts/vm-base.sh writes (``base``, ``kernel``, ``initrd``, ``append``, ``build_key``),
plus the build's own.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harden.errors import InputError
from harden.files import write_atomic
from harden.results import rfc3339

SCHEMA_VERSION = 1
SUFFIX = ".manifest.json"


def manifest_path(template: Path) -> Path:
    """``<dir>/<name>.qcow2`` -> ``<dir>/<name>.qcow2.manifest.json``."""
    return template.with_name(template.name + SUFFIX)


@dataclass(frozen=True)
class TemplateManifest:
    name: str
    template: Path  # the sealed qcow2 (key "base": what boots, as in vm-base.sh's manifest)
    template_sha256: str
    created: dt.datetime
    inputs_key: str  # what a no-change rebuild compares
    source_disk: str
    source_sha256: str
    compliant: bool
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""
    build_key: Path | None = None  # the SSH key that logs in as ssh_user
    ssh_user: str = "root"
    baseline: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "base": str(self.template),
            "template_sha256": self.template_sha256,
            "kernel": str(self.kernel) if self.kernel else None,
            "initrd": str(self.initrd) if self.initrd else None,
            "append": self.append,
            "build_key": str(self.build_key) if self.build_key else None,
            "ssh_user": self.ssh_user,
            "source": {"disk": self.source_disk, "sha256": self.source_sha256},
            "baseline": dict(self.baseline),
            "compliant": self.compliant,
            "inputs_key": self.inputs_key,
            "created": rfc3339(self.created),
        }

    @classmethod
    def from_json(cls, data: object, where: Path) -> TemplateManifest:
        """Parse a manifest; InputError (exit 3) names the file when it is not one."""
        try:
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            source = data["source"]
            created = dt.datetime.fromisoformat(str(data["created"]).replace("Z", "+00:00"))
            if created.tzinfo is None:
                raise ValueError("created has no time zone")
            baseline = data.get("baseline") or {}
            if not isinstance(source, dict) or not isinstance(baseline, dict):
                raise TypeError("source and baseline must be objects")
            return cls(
                name=str(data["name"]),
                template=Path(str(data["base"])),
                template_sha256=str(data["template_sha256"]),
                created=created,
                inputs_key=str(data["inputs_key"]),
                source_disk=str(source["disk"]),
                source_sha256=str(source["sha256"]),
                compliant=bool(data["compliant"]),
                kernel=_path(data.get("kernel")),
                initrd=_path(data.get("initrd")),
                append=str(data.get("append") or ""),
                build_key=_path(data.get("build_key")),
                ssh_user=str(data.get("ssh_user") or "root"),
                baseline=baseline,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(
                f"{where}: not a VM template manifest ({e})",
                hint="build the template again with `harden build --force`",
            ) from e


def _path(value: object) -> Path | None:
    return Path(str(value)) if value else None


def write_manifest(manifest: TemplateManifest) -> Path:
    """Write ``manifest`` beside its template, atomically; returns the path."""
    path = manifest_path(manifest.template)
    text = json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n"
    write_atomic(path, text.encode("utf-8"))
    return path


def read_manifest(template: Path) -> TemplateManifest | None:
    """The manifest of ``template`` (None when there is none); malformed: InputError."""
    path = manifest_path(template)
    if not path.is_file():
        return None
    return TemplateManifest.from_json(_load(path), path)


def _load(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read the VM template manifest ({e})") from e
