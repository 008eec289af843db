"""Image definitions: what golden image to build from which base with which baseline.

```yaml
name: debian12-hardened
base: 127.0.0.1:5000/library/debian:12
target: container
baseline:
  id: debian-container
  parameters: {umask: "027"}
  waivers: [{rule: pkg.nginx-absent, reason: web image, owner: web-team, expires: 2027-03-31}]
destination: 127.0.0.1:5000/staging/debian12-hardened:latest
max_age: 30d
labels: {org.opencontainers.image.vendor: Example}
tests:                      # testinfra suites, relative to this file, run in the verify stage
  - tests/golden            # a folder or a file
  - {path: tests/web.py, k: "not slow", markers: smoke, timeout: 60}
```
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from harden.baseline.model import BaselineIdStr, RuleIdStr, Target, Waiver
from harden.baseline.resolve import (
    Catalogue,
    Overrides,
    ResolvedBaseline,
    raise_validation,
    resolve,
)
from harden.errors import ImageDefinitionError, InputError
from harden.paths import shipped_suites_dir
from harden.testsuite import Suite
from harden.yamlio import LineMap, load_file

if TYPE_CHECKING:
    from harden.debian.sources import Archive

ImageRef = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.\-_:/@]*$", max_length=255)]
_DURATION = re.compile(r"^(\d+)([hdw])$")
_UNITS = {"h": dt.timedelta(hours=1), "d": dt.timedelta(days=1), "w": dt.timedelta(weeks=1)}


def parse_duration(text: str) -> dt.timedelta:
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"a duration like 12h, 30d or 4w, got {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


class Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BaselineSelection(Strict):
    id: BaselineIdStr
    parameters: dict[str, Any] = Field(default_factory=dict)
    waivers: list[Waiver] = Field(default_factory=list)
    exclude_rules: list[RuleIdStr] = Field(default_factory=list)


class VmSource(Strict):
    """A VM template to start from: a qcow2 disk, with a kernel and initrd for direct boot."""

    disk: str
    kernel: str | None = None
    initrd: str | None = None
    append: str = "root=/dev/vda rw console=ttyS0"
    ssh_user: str = "root"
    ssh_key: str | None = None


class ArchivePin(Strict):
    """Where security and stable updates come from (default: the host's apt sources).

    ``mirror`` serves ``<codename>-updates`` and, unless ``security_mirror`` is given, also
    ``<codename>-security``: a snapshot URL pins every update a build applies (reproducible).
    ``snapshot: true`` accepts a signed index past its ``Valid-Until`` (as apt's snapshot option
    does; a pinned snapshot is old by design)."""

    mirror: Annotated[str, StringConstraints(pattern=r"^https?://\S+$", max_length=1024)] | None = (
        None
    )
    security_mirror: (
        Annotated[str, StringConstraints(pattern=r"^https?://\S+$", max_length=1024)] | None
    ) = None
    keyring: str | None = None  # default: /usr/share/keyrings/debian-archive-keyring.gpg
    snapshot: bool = False
    apply: bool = True  # the build upgrades the packages the archive has fixes for


SHIPPED_PREFIX = "harden:"  # harden's own suites: harden:behaviour/container, harden:behaviour/vm


class TestSuiteEntry(Strict):
    """testinfra test files or folders, relative to the definition, run in the verify stage."""

    path: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    k: str | None = None  # pytest -k expression
    markers: str | None = None  # pytest -m expression
    timeout: Annotated[float, Field(gt=0, le=3600)] = 120.0  # per test, seconds


class ImageDefinitionDoc(Strict):
    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.\-_]{0,127}$")]
    description: str = ""
    base: ImageRef | None = None
    vm: VmSource | None = None
    target: Target
    baseline: BaselineSelection
    destination: ImageRef | None = None
    # optional: where `harden promote` puts it; `harden status` shows the digest there too
    promote_to: ImageRef | None = None
    max_age: str = "30d"
    labels: dict[str, str] = Field(default_factory=dict)
    tests: list[str | TestSuiteEntry] = Field(default_factory=list)
    archive: ArchivePin | None = None  # security/updates source (default: host apt sources)

    @field_validator("max_age")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v)
        return v


@dataclass(frozen=True)
class ImageDefinition:
    doc: ImageDefinitionDoc
    path: Path
    lines: LineMap
    sha256: str

    @property
    def name(self) -> str:
        return self.doc.name

    @property
    def max_age(self) -> dt.timedelta:
        return parse_duration(self.doc.max_age)

    def overrides(self) -> Overrides:
        b = self.doc.baseline
        return Overrides(
            parameters=b.parameters,
            waivers=tuple(b.waivers),
            exclude_rules=tuple(b.exclude_rules),
            lines=self.lines,
            prefix=("baseline",),
        )

    def resolve_baseline(self, catalogue: Catalogue) -> ResolvedBaseline:
        return resolve(catalogue, self.doc.baseline.id, self.overrides())

    def update_archives(self, codename: str) -> list[Archive]:
        """The security and updates suites this image is compared with and upgraded from: the
        definition's ``archive`` pin, else the host's apt sources."""
        from harden.debian.sources import archives_for

        pin = self.doc.archive
        if pin is None:
            return archives_for(codename)
        return archives_for(
            codename,
            mirror=pin.mirror,
            security_mirror=pin.security_mirror,
            keyring=Path(pin.keyring) if pin.keyring else None,
            snapshot=pin.snapshot,
        )

    def suites(self) -> tuple[Suite, ...]:
        """The definition's test suites, paths resolved against the definition's folder."""
        here = self.path.resolve().parent
        out = []
        for i, entry in enumerate(self.doc.tests):
            e = TestSuiteEntry(path=entry) if isinstance(entry, str) else entry
            if e.path.startswith(SHIPPED_PREFIX):
                path = shipped_suites_dir() / e.path.removeprefix(SHIPPED_PREFIX)
            else:
                path = (here / e.path).resolve()
            if not path.exists():
                raise ImageDefinitionError(
                    f"test suite path {e.path} does not exist (looked for {path})",
                    location=self.lines.location(("tests", i)),
                    hint="paths in 'tests' are relative to the image definition",
                )
            out.append(
                Suite((path,), root=here, keyword=e.k, markers=e.markers, test_timeout=e.timeout)
            )
        return tuple(out)


def load_definitions(directory: Path, *, require_some: bool = False) -> list[ImageDefinition]:
    """Every image definition (``*.yaml``/``*.yml``) in ``directory``, sorted by file name.

    The one loader of a directory of definitions (status, rebuild, plan, revoke, evidence): not
    a directory, two files defining the same name, and - with ``require_some`` - no file at all
    are invalid input (exit 3)."""
    if not directory.is_dir():
        raise InputError(
            f"{directory} is not a directory of image definitions",
            hint="pass the folder with the images/*.yaml files (default: images/)",
        )
    paths = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not paths and require_some:
        raise InputError(f"no image definitions (*.yaml) in {directory}")
    defs = [load_definition(p) for p in paths]
    names: dict[str, Path] = {}
    for d in defs:
        if d.name in names:
            raise InputError(f"{d.path} and {names[d.name]} both define {d.name}")
        names[d.name] = d.path
    return defs


def load_definition(path: Path) -> ImageDefinition:
    loaded = load_file(path, ImageDefinitionError)
    if not isinstance(loaded.data, dict):
        raise ImageDefinitionError(
            "the top level must be a mapping (name, base, target, baseline, destination, ...)",
            location=loaded.lines.location(),
        )
    try:
        doc = ImageDefinitionDoc.model_validate(loaded.data)
    except ValidationError as e:
        raise_validation(e, loaded.lines, error=ImageDefinitionError)
        raise  # pragma: no cover
    if doc.target is Target.CONTAINER and doc.base is None:
        raise ImageDefinitionError(
            "a container image definition needs 'base' (an image reference)",
            location=loaded.lines.location(("target",)),
        )
    if doc.target is Target.VM and doc.vm is None:
        raise ImageDefinitionError(
            "a vm image definition needs 'vm' (disk, kernel, initrd)",
            location=loaded.lines.location(("target",)),
        )
    return ImageDefinition(doc, path, loaded.lines, hashlib.sha256(path.read_bytes()).hexdigest())
