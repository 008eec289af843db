"""harden build / verify against the real Docker Engine and the local registry."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import docker
import docker_run
import harden_cli
import pytest
import requests

pytestmark = pytest.mark.integration

REGISTRY = "127.0.0.1:5000"
BASE = f"{REGISTRY}/library/debian:12"
ROOT = Path(__file__).resolve().parents[2]


harden = harden_cli.run


@pytest.fixture(scope="session")
def client() -> docker.DockerClient:
    return docker.from_env()


def definition(tmp_path: Path, name: str, **over: object) -> Path:
    doc: dict[str, object] = {
        "name": name,
        "base": BASE,
        "target": "container",
        "baseline": {"id": "debian-container"},
        "destination": f"{REGISTRY}/test/{name}:latest",
        "max_age": "30d",
    }
    doc.update(over)
    p = tmp_path / f"{name}.yaml"
    p.write_text(json.dumps(doc))  # JSON is YAML
    return p


def temp_containers(client: docker.DockerClient) -> list[str]:
    return [
        c.name
        for c in client.containers.list(all=True, filters={"label": "dev.harden.temporary=true"})
    ]


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("defs")
    r = harden("build", str(definition(d, "itest-golden")), "--force", "--format", "json")
    assert r.returncode == 0, r.stderr
    result: dict[str, Any] = json.loads(r.stdout)
    return result


def test_base_image_is_not_compliant() -> None:
    r = harden("verify", BASE, "--baseline", "debian-container", "--format", "json")
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    assert report["schema_version"] == 1
    assert report["compliant"] is False
    failed = {x["rule_id"] for x in report["results"] if x["status"] == "failed"}
    assert "image.non-root-user" in failed
    assert all(x["evidence"] for x in report["results"] if x["status"] == "failed")


def test_build_pushes_a_compliant_labelled_image(
    built: dict[str, Any], client: docker.DockerClient
) -> None:
    assert built["compliant"] and built["pushed"]
    assert built["summary"]["failed"] == 0 and built["summary"]["error"] == 0
    # the digest is the manifest digest the registry serves for the tag
    head = requests.head(
        f"http://{REGISTRY}/v2/test/itest-golden/manifests/latest",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        timeout=10,
    )
    assert head.headers["Docker-Content-Digest"] == built["digest"]
    labels = client.images.get(built["image_id"]).attrs["Config"]["Labels"]
    assert labels["org.opencontainers.image.base.name"] == BASE
    assert labels["org.opencontainers.image.base.digest"] == built["base"]["digest"]
    assert labels["org.opencontainers.image.created"].endswith("Z")
    assert labels["dev.harden.baseline.id"] == "debian-container"
    assert labels["dev.harden.baseline.digest"] == built["baseline"]["digest"]


def test_verify_hardened_image_reports_every_rule_none_as_error(built: dict[str, Any]) -> None:
    r = harden("verify", f"{REGISTRY}/test/itest-golden:latest", "--format", "json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    shown = json.loads(
        harden("baseline", "show", "debian-container", "--resolved", "--format", "json").stdout
    )
    assert {x["rule_id"] for x in report["results"]} == {x["id"] for x in shown["rules"]}
    assert report["summary"]["error"] == 0
    assert report["baseline"]["id"] == "debian-container"  # the default; the label agrees


def test_hardened_image_still_runs_a_shell(
    built: dict[str, Any], client: docker.DockerClient
) -> None:
    out = docker_run.output(client, built["image_id"], ["sh", "-c", "id -un; echo ok"])
    assert out.split() == ["app", "ok"]


def test_unchanged_inputs_reuse_the_image_and_force_rebuilds(
    built: dict[str, Any], tmp_path: Path
) -> None:
    again = harden("build", str(definition(tmp_path, "itest-golden")), "--format", "json")
    assert again.returncode == 0, again.stderr
    j = json.loads(again.stdout)
    assert j["reused"] is True and j["image_id"] == built["image_id"]


def test_building_on_the_output_changes_nothing(
    built: dict[str, Any], client: docker.DockerClient
) -> None:
    """Run the same remediation on the hardened image: the filesystem diff is empty."""
    import datetime as dt

    from harden.baseline.resolve import Catalogue, resolve
    from harden.builder.render import Phase, remediation_rules, render_script
    from harden.target import TargetKind

    bl = resolve(Catalogue.from_search_path(), "debian-container")
    script = render_script(
        remediation_rules(bl, TargetKind.CONTAINER, dt.date.today()),
        "debian",
        TargetKind.CONTAINER,
        Phase.OFFLINE,
    )
    c = client.containers.create(
        built["image_id"],
        ["/bin/sh", "-c", script],
        entrypoint=[],
        user="root",
        network_mode="none",
    )
    try:
        c.start()
        assert c.wait(timeout=120)["StatusCode"] == 0, c.logs().decode()[-2000:]
        assert c.diff() in (None, []), c.diff()
    finally:
        c.remove(force=True)


def test_verify_running_container(built: dict[str, Any], client: docker.DockerClient) -> None:
    c = client.containers.run(
        built["image_id"],
        ["sleep", "60"],
        network_mode="none",
        detach=True,
        name="harden-itest-running",
    )
    try:
        r = harden("verify", "docker://harden-itest-running", "--format", "json")
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr
        assert json.loads(r.stdout)["summary"]["error"] == 0
    finally:
        c.remove(force=True)


# ---------------------------------------------------------------- faults and bad input


def test_engine_not_running_exit_4_with_hint(tmp_path: Path) -> None:
    r = harden(
        "verify", "docker-image://debian:12", env={"DOCKER_HOST": f"unix://{tmp_path}/nope.sock"}
    )
    assert r.returncode == 4
    assert "error: the Docker Engine is not running" in r.stderr
    assert "hint:" in r.stderr and "dockerd" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_base_exit_4_naming_it(tmp_path: Path) -> None:
    d = definition(tmp_path, "itest-missing", base=f"{REGISTRY}/library/nope:1")
    r = harden("build", str(d))
    assert r.returncode == 4, r.stderr
    assert f"{REGISTRY}/library/nope:1" in r.stderr and "Traceback" not in r.stderr


def test_registry_down_during_push_exit_4_and_no_tag(tmp_path: Path) -> None:
    d = definition(tmp_path, "itest-nopush", destination="127.0.0.1:5999/test/nopush:latest")
    r = harden("build", str(d), "--force")
    assert r.returncode == 4, r.stderr
    assert "push" in r.stderr and "Traceback" not in r.stderr


def _failing_baseline(tmp_path: Path, remediation: str) -> Path:
    bdir = tmp_path / "bl"
    bdir.mkdir()
    (bdir / "broken.yaml").write_text(
        textwrap.dedent(f"""\
        id: broken
        version: 1.0.0
        title: a baseline whose remediation fails
        extends: [debian-container]
        platforms: [{{family: debian}}]
        targets: [container]
        rules:
          - id: custom.fails
            title: a command that cannot succeed
            controls: {{iso27017: [CLD.9.5.2]}}
            command:
              check: test -e /nonexistent-marker
              remediation: {json.dumps(remediation)}
        """)
    )
    return bdir


def test_failing_remediation_names_rule_and_output(
    tmp_path: Path, client: docker.DockerClient
) -> None:
    bdir = _failing_baseline(tmp_path, "echo cannot-do-this >&2; exit 3")
    d = definition(
        tmp_path,
        "itest-broken",
        baseline={"id": "broken"},
        destination=f"{REGISTRY}/test/broken:latest",
    )
    before = set(temp_containers(client))
    r = harden("build", str(d), "--baselines", str(bdir), "--force")
    assert r.returncode == 4, r.stderr
    assert "custom.fails" in r.stderr and "cannot-do-this" in r.stderr
    assert set(temp_containers(client)) <= before
    tags = requests.get(f"http://{REGISTRY}/v2/test/broken/tags/list", timeout=10)
    assert tags.status_code == 404 or not (tags.json().get("tags") or [])


def test_keep_on_error_keeps_the_failed_state_to_enter(
    tmp_path: Path, client: docker.DockerClient
) -> None:
    # the remediation writes a marker, then fails: the kept image holds the marker, a shell in it
    # (the command the error prints, network none) sees it, and nothing else is left behind
    bdir = _failing_baseline(tmp_path, "echo half-done > /root/marker; echo nope >&2; exit 3")
    d = definition(
        tmp_path,
        "itest-kept",
        baseline={"id": "broken"},
        destination=f"{REGISTRY}/test/kept:latest",
    )
    before = set(temp_containers(client))
    r = harden("build", str(d), "--baselines", str(bdir), "--force", "--keep-on-error")
    assert r.returncode == 4, r.stderr
    assert "custom.fails" in r.stderr and "nope" in r.stderr and "Traceback" not in r.stderr
    m = re.search(
        r"enter it: (docker run .*? (harden-kept/itest-kept:remediate-[0-9-]+))$", r.stderr, re.M
    )
    assert m, r.stderr
    enter, kept = m.group(1), m.group(2)
    try:
        image = client.images.get(kept)
        labels = image.attrs["Config"].get("Labels") or {}
        assert labels == {"dev.harden.kept": kept}  # not temporary: no clean-up removes it
        assert "--network none" in enter
        shell = subprocess.run(
            [*shlex.split(enter.replace(" -it ", " -i ")), "-c", "cat /root/marker"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert shell.returncode == 0 and shell.stdout.strip() == "half-done", shell.stderr
        assert set(temp_containers(client)) <= before
    finally:
        client.images.remove(kept, force=True)


def test_ctrl_c_during_build_leaves_no_container(
    tmp_path: Path, client: docker.DockerClient
) -> None:
    bdir = _failing_baseline(tmp_path, "sleep 30")
    # no updates step: the interrupt is meant for the remediation container
    d = definition(tmp_path, "itest-interrupt", baseline={"id": "broken"}, archive={"apply": False})
    before = set(temp_containers(client))
    p = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from harden.cli import main; main()",
            "build",
            str(d),
            "--baselines",
            str(bdir),
            "--force",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (set(temp_containers(client)) - before):
        time.sleep(0.2)
    assert set(temp_containers(client)) - before, "the build never started a container"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert set(temp_containers(client)) <= before


def test_malformed_definition_exit_3_with_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(
        "name: x\nbase: 127.0.0.1:5000/library/debian:12\ntarget: container\nbaseline:\n  id: debian-container\n  colour: blue\n"
    )
    r = harden("build", str(p))
    assert r.returncode == 3
    assert f"{p}:6" in r.stderr and "Traceback" not in r.stderr


def test_verify_with_the_definition_uses_its_waivers(built: dict[str, Any], tmp_path: Path) -> None:
    waiver = {"rule": "pkg.telnet-absent", "reason": "r", "owner": "qa", "expires": "2099-01-01"}
    d = definition(
        tmp_path, "itest-waived", baseline={"id": "debian-container", "waivers": [waiver]}
    )
    r = harden("verify", built["image_id"], "--local", "--definition", str(d), "--format", "json")
    assert r.returncode == 0, r.stderr
    by_id = {x["rule_id"]: x for x in json.loads(r.stdout)["results"]}
    assert by_id["pkg.telnet-absent"]["status"] == "waived"
    assert by_id["pkg.telnet-absent"]["waiver"]["owner"] == "qa"
    plain = json.loads(harden("verify", built["image_id"], "--local", "--format", "json").stdout)
    assert {x["rule_id"]: x for x in plain["results"]}["pkg.telnet-absent"]["status"] == "passed"


@pytest.mark.parametrize("fmt", ["junit", "sarif", "html", "json"])
def test_report_formats_of_a_real_verify_are_valid(
    built: dict[str, Any], tmp_path: Path, fmt: str
) -> None:
    """The base image (failures, evidence from a real target) in every format, validated."""
    import jsonschema
    import xmlschema

    fixtures = ROOT / "tests" / "unit" / "fixtures"
    out = tmp_path / f"report.{fmt}"
    r = harden("verify", BASE, "--baseline", "debian-container", "--format", fmt, "-o", str(out))
    assert r.returncode == 1, r.stderr  # the base is not compliant
    text = out.read_text(encoding="utf-8")
    if fmt == "junit":
        xmlschema.XMLSchema(str(fixtures / "junit.xsd")).validate(str(out))
        assert "image.non-root-user" in text and "<failure" in text
    elif fmt == "sarif":
        schema = json.loads((fixtures / "sarif-schema-2.1.0.json").read_text())
        doc = json.loads(text)
        cls = jsonschema.validators.validator_for(schema)
        cls(schema, format_checker=cls.FORMAT_CHECKER).validate(doc)
        rule_ids = {res["ruleId"] for res in doc["runs"][0]["results"]}
        assert "image.non-root-user" in rule_ids
    elif fmt == "json":
        schema = json.loads((ROOT / "docs" / "report.schema.json").read_text())
        jsonschema.validate(json.loads(text), schema)
    else:
        assert text.lstrip().lower().startswith("<!doctype html") and "NOT compliant" in text
