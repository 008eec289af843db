"""Canonical statements (golden files) and parse() of what we read back.

Regenerate the golden files with ``HARDEN_REGEN_GOLDEN=1 pytest tests/unit/test_statements.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest

from harden.attest import statements as st
from harden.attest.dsse import PAYLOAD_TYPE, pae
from harden.attest.statements import BuildInfo, Subject
from harden.baseline.model import Waiver
from harden.clock import FixedClock
from harden.errors import AttestationError
from harden.results import BaselineRef, RuleResult, Status, VerifyReport, WaiverInfo

GOLDEN = Path(__file__).parent / "golden" / "attestations"
IMAGE = "sha256:" + "a" * 64
BASE = "sha256:" + "c" * 64
BASELINE_DIGEST = "sha256:" + "b" * 64
T0 = dt.datetime(2026, 8, 1, 10, 0, 0, tzinfo=dt.UTC)
SUBJECT = Subject("127.0.0.1:5000/staging/debian12-hardened", IMAGE)
WAIVER = Waiver(
    rule="deb12.aide-installed",
    reason="AIDE replaced by the host IDS",
    owner="secops@example.com",
    expires=dt.date(2026, 12, 31),
)


CIS = {"deb12.telnet-absent": "2.2.18", "deb12.sshd-root-login": "5.2.10"}


def _rule(rule_id: str, status: Status, **kw: Any) -> RuleResult:
    return RuleResult(
        rule_id=rule_id,
        status=status,
        title=rule_id.replace("-", " "),
        severity="high",
        kind="package_absent",
        controls={"iso27017": ("A.12.6.1",), "cis_debian12": (CIS.get(rule_id, "1.1.1"),)},
        **kw,
    )


def report(*extra: RuleResult) -> VerifyReport:
    clock = FixedClock(T0)
    started = clock.now()
    clock.advance(dt.timedelta(seconds=42))
    return VerifyReport(
        image="127.0.0.1:5000/staging/debian12-hardened@" + IMAGE,
        digest=IMAGE,
        target="container",
        platform="debian 12",
        baseline=BaselineRef("debian12-cis", "1.2.0", BASELINE_DIGEST),
        results=(
            _rule("deb12.telnet-absent", Status.PASSED),
            _rule("deb12.sshd-root-login", Status.PASSED),
            _rule(
                "deb12.aide-installed",
                Status.WAIVED,
                waiver=WaiverInfo(WAIVER.reason, WAIVER.owner, WAIVER.expires, False),
            ),
            _rule("deb12.grub-password", Status.NOT_APPLICABLE, reason="container"),
            *extra,
        ),
        started_at=started,
        finished_at=clock.now(),
    )


def build_info() -> BuildInfo:
    return BuildInfo(
        build_type=st.BUILD_TYPE_CONTAINER,
        image_definition={
            "name": "debian12-hardened",
            "path": "images/debian12.yaml",
            "sha256": "d" * 64,
        },
        base_name="127.0.0.1:5000/library/debian:12",
        base_digest=BASE,
        baseline_id="debian12-cis",
        baseline_version="1.2.0",
        baseline_digest=BASELINE_DIGEST,
        builder_id="https://ci.example.com/golden-image-ci",
        harden_version="0.1.0",
        started_on=T0,
        finished_on=T0 + dt.timedelta(minutes=20),
        invocation_id="https://ci.example.com/runs/1234",
    )


CASES: dict[str, Any] = {
    "provenance": lambda: st.provenance(SUBJECT, build_info()),
    "test_result": lambda: st.test_result(SUBJECT, report(), "harden:baseline/debian12-cis"),
    "test_result_failed": lambda: st.test_result(
        SUBJECT, report(_rule("deb12.nis-absent", Status.FAILED, evidence=("nis 3.17",))), ""
    ),
    "compliance": lambda: st.compliance(
        SUBJECT,
        report(),
        verified_at=T0 + dt.timedelta(seconds=42),
        valid_until=T0 + dt.timedelta(days=30),
        waivers={WAIVER.rule: WAIVER},
        controls=st.controls_covered(report()),
    ),
    "revocation": lambda: st.revocation(
        SUBJECT,
        reason="base image carries CVE-2026-0001",
        revoked_at=T0 + dt.timedelta(days=3),
        revoked_by="secops@example.com",
        cascade_from=BASE,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_statements(name: str) -> None:
    data = st.serialize(CASES[name]()) + b"\n"
    path = GOLDEN / f"{name}.json"
    if os.environ.get("HARDEN_REGEN_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert path.read_bytes() == data, f"{path} differs; HARDEN_REGEN_GOLDEN=1 regenerates it"
    # what we write, we read back
    parsed = st.parse(data[:-1])
    assert parsed.matches(IMAGE)


def test_canonical_form() -> None:
    b = st.serialize({"b": 1, "a": {"d": [], "c": "é"}})
    assert b == '{"a":{"c":"é","d":[]},"b":1}'.encode()
    with pytest.raises(ValueError):
        st.serialize({"x": float("nan")})


def test_reference_test_result_example_pae_prefix() -> None:
    example = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [
            {
                "name": "registry.example.com/staging/ubuntu-hardened",
                "digest": {"sha256": "a" * 64},
            }
        ],
        "predicateType": "https://in-toto.io/attestation/test-result/v0.1",
        "predicate": {
            "result": "PASSED",
            "configuration": [
                {"name": "baselines/cis-ubuntu-22.04.yaml", "digest": {"sha256": "b" * 64}}
            ],
            "url": "https://ci.example.com/runs/1234",
            "passedTests": ["test_sshd_root_login_disabled", "test_telnet_not_installed"],
            "warnedTests": [],
            "failedTests": [],
        },
    }
    body = st.serialize(example)
    assert len(body) == 595
    assert pae(PAYLOAD_TYPE, body).startswith(
        b'DSSEv1 28 application/vnd.in-toto+json 595 {"_type":"https:/'
    )
    t = st.parse(body).test_result()
    assert t.result == "PASSED" and t.configuration[0].sha256 == "sha256:" + "b" * 64


def test_test_result_mapping() -> None:
    p = CASES["test_result"]()["predicate"]
    assert p["result"] == "WARNED"
    assert p["passedTests"] == ["deb12.sshd-root-login", "deb12.telnet-absent"]
    assert p["warnedTests"] == ["deb12.aide-installed"]
    assert p["failedTests"] == []
    assert p["configuration"] == [
        {
            "name": "debian12-cis@1.2.0",
            "digest": {"sha256": "b" * 64},
            "uri": "harden:baseline/debian12-cis",
        }
    ]
    failed = CASES["test_result_failed"]()["predicate"]
    assert failed["result"] == "FAILED" and failed["failedTests"] == ["deb12.nis-absent"]
    errored = st.test_result(SUBJECT, report(_rule("deb12.x-err", Status.ERROR)), "")
    assert errored["predicate"]["result"] == "FAILED"
    only_pass = VerifyReport(**{**report().__dict__, "results": report().results[:2]})
    assert st.test_result(SUBJECT, only_pass, "")["predicate"]["result"] == "PASSED"


def test_compliance_typed_accessor() -> None:
    c = st.parse(st.serialize(CASES["compliance"]())).compliance()
    assert c.compliant is True
    assert c.verifiedAt == T0 + dt.timedelta(seconds=42)
    assert c.validUntil == T0 + dt.timedelta(days=30)
    assert c.baseline.id == "debian12-cis" and c.baseline.digest == BASELINE_DIGEST
    assert [(w.rule, w.expires) for w in c.waivers] == [(WAIVER.rule, WAIVER.expires)]
    assert c.controls["iso27017"] == ["A.12.6.1"]
    assert c.summary["waived"] == 1 and c.summary["total"] == 4
    with pytest.raises(AttestationError, match="predicate type"):
        st.parse(st.serialize(CASES["compliance"]())).revocation()


def test_compliance_refuses_inverted_window() -> None:
    with pytest.raises(ValueError):
        st.compliance(
            SUBJECT,
            report(),
            verified_at=T0,
            valid_until=T0 - dt.timedelta(1),
            waivers={},
            controls={},
        )


def test_provenance_pins_dependencies() -> None:
    p = st.parse(st.serialize(CASES["provenance"]())).provenance()
    base = p.dependency("base-image")
    assert base is not None and base.sha256 == BASE
    assert base.uri == "docker://127.0.0.1:5000/library/debian:12"
    baseline = p.dependency("baseline")
    assert baseline is not None and baseline.sha256 == BASELINE_DIGEST
    assert p.runDetails.builder.version == {"harden": "0.1.0"}


def _stmt(**over: Any) -> dict[str, Any]:
    s: dict[str, Any] = json.loads(st.serialize(CASES["revocation"]()))
    s.update(over)
    return s


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        (_stmt(_type="https://in-toto.io/Statement/v0.1"), "Statement/v0.1"),
        (_stmt(subject=[]), "subject"),
        (_stmt(subject=[{"name": "x", "digest": {"sha256": "A" * 64}}]), "sha256"),
        (_stmt(subject=[{"name": "x", "digest": {"sha256": "a" * 63}}]), "sha256"),
        (_stmt(subject=[{"name": "x", "digest": {"sha512": "a" * 128}}]), "sha256"),
        (_stmt(subject=[{"name": "x"}]), "digest"),
        (_stmt(predicate=[1, 2]), "predicate"),
        (_stmt(predicate="x"), "predicate"),
        (_stmt(predicateType=""), "predicateType"),
        ([1], "not a JSON object"),
    ],
)
def test_parse_rejects(doc: Any, match: str) -> None:
    with pytest.raises(AttestationError, match=match):
        st.parse(json.dumps(doc).encode())


def test_parse_rejects_bad_bytes() -> None:
    with pytest.raises(AttestationError, match="UTF-8"):
        st.parse(b"\xff\xfe")
    with pytest.raises(AttestationError, match="duplicate"):
        st.parse(b'{"_type":"a","_type":"https://in-toto.io/Statement/v1"}')


def test_unknown_fields_ignored_and_subject_matched_by_digest_only() -> None:
    doc = _stmt(extraTopLevel={"x": 1})
    doc["subject"] = [
        {"name": "anything/else:tag", "digest": {"sha256": "a" * 64, "sha512": "f" * 128}},
        {"digest": {"sha256": "e" * 64}, "annotations": {"k": "v"}},
    ]
    s = st.parse(json.dumps(doc).encode())
    assert s.matches(IMAGE)
    assert s.matches("sha256:" + "e" * 64)
    assert not s.matches("sha256:" + "b" * 64)
    assert not s.matches("a" * 64)  # a bare hex is not a digest reference


@pytest.mark.parametrize(
    "predicate",
    [
        {"revokedAt": "2026-08-01T00:00:00Z", "revokedBy": "x"},  # no reason
        {"reason": "r", "revokedAt": "2026-08-01T00:00:00+02:00", "revokedBy": "x"},  # not Z
        {"reason": "r", "revokedAt": "yesterday", "revokedBy": "x"},
        {"reason": "r", "revokedAt": "2026-08-01T00:00:00Z", "revokedBy": "x", "cascadeFrom": "c"},
    ],
)
def test_typed_accessor_raises_on_malformed_predicate(predicate: dict[str, Any]) -> None:
    s = st.parse(json.dumps(_stmt(predicate=predicate)).encode())
    with pytest.raises(AttestationError, match="malformed"):
        s.revocation()


def test_subject_and_digest_validation_when_building() -> None:
    with pytest.raises(ValueError):
        Subject("x", "a" * 64)
    with pytest.raises(ValueError):
        Subject("x", "sha256:" + "A" * 64)
    with pytest.raises(ValueError):
        st.revocation([], reason="r", revoked_at=T0, revoked_by="me")
