"""The typed record of a sealed VM template, one per template name (harden/vm_manifest.py)."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
from harden.builder.vm_verify import image_for

from harden.errors import InputError
from harden.vm_manifest import TemplateManifest, manifest_path, read_manifest, write_manifest

CREATED = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


def manifest(template: Path, name: str, **over: object) -> TemplateManifest:
    fields: dict[str, object] = {
        "name": name,
        "template": template,
        "template_sha256": "sha256:" + "a" * 64,
        "created": CREATED,
        "inputs_key": f"key-of-{name}",
        "source_disk": "/var/cache/harden/vm/current/base.qcow2",
        "source_sha256": "sha256:" + "b" * 64,
        "compliant": True,
        "kernel": template.with_name(f"{name}.vmlinuz"),
        "initrd": template.with_name(f"{name}.initrd.img"),
        "append": "root=/dev/vda console=ttyS0",
        "build_key": Path("/keys/id_ed25519"),
        "ssh_user": "root",
        "baseline": {"id": "debian-vm", "version": "1.0.0"},
    }
    fields.update(over)
    return TemplateManifest(**fields)  # type: ignore[arg-type]


def test_round_trip_and_the_file_is_named_after_the_template(tmp_path: Path) -> None:
    template = tmp_path / "web.qcow2"
    m = manifest(template, "web")
    path = write_manifest(m)
    assert path == tmp_path / "web.qcow2.manifest.json" == manifest_path(template)
    assert read_manifest(template) == m
    data = json.loads(path.read_text())
    assert data["base"] == str(template) and data["created"] == "2026-05-01T12:00:00Z"
    assert data["source"] == {"disk": m.source_disk, "sha256": m.source_sha256}
    assert not list(tmp_path.glob(".*"))  # atomic: no temp file left


def test_two_templates_in_one_directory_keep_their_own_records(tmp_path: Path) -> None:
    web, db = tmp_path / "web.qcow2", tmp_path / "db.qcow2"
    write_manifest(manifest(web, "web"))
    write_manifest(manifest(db, "db", compliant=False))
    web_m, db_m = read_manifest(web), read_manifest(db)
    assert web_m is not None and db_m is not None
    assert (web_m.name, web_m.inputs_key, web_m.compliant) == ("web", "key-of-web", True)
    assert (db_m.name, db_m.inputs_key, db_m.compliant) == ("db", "key-of-db", False)
    assert read_manifest(tmp_path / "none.qcow2") is None


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        json.dumps({"name": "web"}),
        json.dumps({**manifest(Path("/t/web.qcow2"), "web").to_json(), "created": "yesterday"}),
        json.dumps({**manifest(Path("/t/web.qcow2"), "web").to_json(), "source": "disk"}),
    ],
)
def test_a_malformed_record_is_invalid_input_naming_the_file(tmp_path: Path, text: str) -> None:
    template = tmp_path / "web.qcow2"
    manifest_path(template).write_text(text)
    with pytest.raises(InputError, match=re.escape("web.qcow2.manifest.json")):
        read_manifest(template)


def test_verify_boots_a_template_with_its_own_record(tmp_path: Path) -> None:
    web, db = tmp_path / "web.qcow2", tmp_path / "db.qcow2"
    write_manifest(manifest(web, "web"))
    write_manifest(manifest(db, "db", build_key=Path("/keys/db"), append="console=ttyS0"))
    image, key = image_for(db)
    assert image.disk == db.absolute() and key == Path("/keys/db")
    assert image.kernel == tmp_path / "db.vmlinuz" and image.initrd == tmp_path / "db.initrd.img"
    assert image.append == "console=ttyS0"
    # a base template of scripts/vm-base.sh: the directory's manifest.json, as before
    base = tmp_path / "base" / "base.qcow2"
    base.parent.mkdir()
    (base.parent / "manifest.json").write_text(
        json.dumps({"base": str(base), "kernel": "/b/vmlinuz", "initrd": "/b/initrd.img"})
    )
    image, key = image_for(base)
    assert image.kernel == Path("/b/vmlinuz") and key is None
