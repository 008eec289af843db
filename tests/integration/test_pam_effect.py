"""A PAM setting counts only when its module is in the stack, on a real Debian 12 image.

The image built from a baseline that only edits faillock.conf fails the faillock check with
evidence that the file has no effect; the image built with the faillock rule itself gets
pam_faillock.so into common-auth and common-account (pam-auth-update) and passes.
"""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path
from typing import Any

import docker
import docker_run
import harden_cli
import pytest

pytestmark = pytest.mark.integration

REGISTRY = "127.0.0.1:5000"
BASE = f"{REGISTRY}/library/debian:12"
harden = harden_cli.run

RULE = """\
  - id: pam.faillock-deny
    title: Accounts are locked after repeated failed logins (faillock deny)
    controls: {iso27017: [CLD.9.5.2]}
    config_line:
      path: /etc/security/faillock.conf
      key: deny
      value: 5
      compare: le
      match: last
      separator: equals
"""

CONF_ONLY = """\
  - id: custom.faillock-conf-only
    title: faillock.conf says deny = 5 (and nothing else is changed)
    controls: {iso27017: [CLD.9.5.2]}
    command:
      check: grep -Eq '^deny = 5$' /etc/security/faillock.conf
      remediation: printf 'deny = 5\\n' >> /etc/security/faillock.conf
"""


def _baselines(tmp_path: Path) -> Path:
    d = tmp_path / "bl"
    d.mkdir()
    for bid, rules in (("pam-conf-only", CONF_ONLY), ("pam-faillock", RULE)):
        (d / f"{bid}.yaml").write_text(
            textwrap.dedent(f"""\
            id: {bid}
            version: 1.0.0
            title: {bid}
            platforms: [{{family: debian}}]
            targets: [container]
            rules:
            """)
            + rules
        )
    return d


def _build(tmp_path: Path, bdir: Path, baseline: str, name: str) -> dict[str, Any]:
    doc = {
        "name": name,
        "base": BASE,
        "target": "container",
        "baseline": {"id": baseline},
        "destination": f"{REGISTRY}/test/{name}:latest",
        "max_age": "30d",
    }
    p = tmp_path / f"{name}.yaml"
    p.write_text(json.dumps(doc))
    r = harden("build", str(p), "--baselines", str(bdir), "--force", "--format", "json")
    assert r.returncode == 0, r.stderr
    built: dict[str, Any] = json.loads(r.stdout)
    return built


def test_faillock_conf_without_the_module_fails_and_the_rule_puts_it_in_force(
    tmp_path: Path,
) -> None:
    bdir = _baselines(tmp_path)
    tag = uuid.uuid4().hex[:8]
    conf_only = _build(tmp_path, bdir, "pam-conf-only", f"itest-pam-conf-{tag}")
    ref = f"{conf_only['image']}@{conf_only['digest']}"
    r = harden(
        "verify", ref, "--baselines", str(bdir), "--baseline", "pam-faillock", "--format", "json"
    )
    assert r.returncode == 1, r.stderr
    # the image's baseline label names the profile it was built with: that mismatch is its own
    # finding (image.baseline-label); the rule under test is pam.faillock-deny
    (res,) = [x for x in json.loads(r.stdout)["results"] if x["rule_id"] == "pam.faillock-deny"]
    assert res["status"] == "failed"
    assert (
        "faillock.conf has no effect: pam_faillock.so is not in the PAM stack" in res["evidence"][0]
    )
    assert any(e.startswith("/etc/security/faillock.conf: deny 5") for e in res["evidence"])

    fixed = _build(tmp_path, bdir, "pam-faillock", f"itest-pam-faillock-{tag}")
    assert fixed["compliant"] and fixed["summary"]["passed"] == 1
    client = docker.from_env()
    out = docker_run.output(
        client,
        fixed["image_id"],
        ["sh", "-c", "grep -h pam_faillock /etc/pam.d/common-auth /etc/pam.d/common-account"],
        user="root",
    )
    assert "pam_faillock.so preauth" in out and "pam_faillock.so authfail" in out
    assert "account\trequired\tpam_faillock.so" in out
    r = harden(
        "verify",
        f"{fixed['image']}@{fixed['digest']}",
        "--baselines",
        str(bdir),
        "--baseline",
        "pam-faillock",
        "--format",
        "json",
    )
    assert r.returncode == 0, r.stdout
    # the image's baseline label names the profile it was built with: that mismatch is its own
    # finding (image.baseline-label); the rule under test is pam.faillock-deny
    (res,) = [x for x in json.loads(r.stdout)["results"] if x["rule_id"] == "pam.faillock-deny"]
    assert res["status"] == "passed"
    assert any("pam_faillock.so preauth" in e for e in res["evidence"])
