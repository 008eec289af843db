"""`harden evidence`: bundle assembly from fake inputs, hostile text, atomic output."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from harden.attest.keys import KeyType, PublicKey, Signer, keygen, load_public_key, load_signer
from harden.attest.statements import Subject
from harden.attest.store import sign_statements
from harden.audit import AuditAction, AuditLog
from harden.baseline.resolve import Catalogue
from harden.clock import FixedClock
from harden.errors import InputError, RegistryError
from harden.evidence import (
    Bundle,
    Fetched,
    ImageFacts,
    collect,
    load_definitions,
    parse_since,
    read_audit,
    render_html,
    write_bundle,
)
from harden.imagedef import ImageDefinition
from harden.results import BaselineRef, RuleResult, Status, VerifyReport

T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
DIGEST = "sha256:" + "d" * 64
DEST = "127.0.0.1:5000/staging/golden:latest"
HOSTILE = "\x1b[31m<script>document.title='pwned'</script><img src=x onerror=alert(1)>\x1b[0m"


class FakeRegistry:
    """A RegistryView with fixed answers per reference."""

    def __init__(self, facts: dict[str, ImageFacts] | None = None, fail: bool = False) -> None:
        self._facts = facts or {}
        self._fail = fail
        self.asked: list[str] = []

    def facts(self, reference: str) -> ImageFacts:
        self.asked.append(reference)
        if self._fail:
            raise RegistryError("cannot reach 127.0.0.1:5000: connection refused")
        return self._facts.get(reference, ImageFacts(None))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Signer, PublicKey, Signer]:
    d = tmp_path_factory.mktemp("keys")
    k, p = keygen(KeyType.ED25519, d / "trusted", b"pw")
    u, _ = keygen(KeyType.ED25519, d / "untrusted", b"pw")
    return load_signer(str(k), b"pw"), load_public_key(p), load_signer(str(u), b"pw")


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return Catalogue.from_search_path()


def _images_dir(tmp_path: Path, owner: str = "platform-team", reason: str = "web image") -> Path:
    d = tmp_path / "images"
    d.mkdir(parents=True)
    (d / "golden.yaml").write_text(
        json.dumps(
            {
                "name": "golden",
                "base": "127.0.0.1:5000/library/debian:12",
                "target": "container",
                "baseline": {
                    "id": "debian-container",
                    "waivers": [
                        {
                            "rule": "pkg.sudo-absent",
                            "reason": reason,
                            "owner": owner,
                            "expires": "2027-03-31",
                        }
                    ],
                },
                "destination": DEST,
            }
        )
    )
    # no destination: not a golden image, never asked about
    (d / "local.yaml").write_text(
        json.dumps(
            {
                "name": "local-only",
                "base": "127.0.0.1:5000/library/debian:12",
                "target": "container",
                "baseline": {"id": "debian-container"},
            }
        )
    )
    return d


def _report(defn: ImageDefinition, catalogue: Catalogue) -> VerifyReport:
    rb = defn.resolve_baseline(catalogue)
    results = []
    for i, rule in enumerate(r for r in rb.rules if "container" in {t.value for t in r.targets}):
        status = Status.FAILED if i == 0 else Status.PASSED
        results.append(
            RuleResult(
                rule.id,
                status,
                rule.title,
                rule.severity.value,
                rule.kind.value,
                dict(rule.controls),
            )
        )
    # the first rule failed but is not waived here: make it waived to stay compliant
    first = results[0]
    results[0] = RuleResult(
        first.rule_id, Status.PASSED, first.title, first.severity, first.kind, first.controls
    )
    return VerifyReport(
        image=DEST,
        digest=DIGEST,
        target="container",
        platform="debian 12",
        baseline=BaselineRef(rb.id, rb.version, rb.digest),
        results=tuple(results),
        started_at=T0 - dt.timedelta(days=2),
        finished_at=T0 - dt.timedelta(days=2),
    )


def _signed(
    report: VerifyReport, signer: Signer, subject_digest: str = DIGEST
) -> list[tuple[str, bytes]]:
    signed = sign_statements(
        report,
        Subject("127.0.0.1:5000/staging/golden", subject_digest),
        signer,
        verified_at=report.finished_at,
        valid_until=report.finished_at + dt.timedelta(days=30),
        waivers={},
        build=None,
    )
    return [(f"sha256:{i}" + "0" * 63, s.envelope) for i, s in enumerate(signed, start=1)]


def _audit(tmp_path: Path) -> tuple[AuditLog, FixedClock]:
    clock = FixedClock(T0 - dt.timedelta(days=40))
    log = AuditLog(tmp_path / "home" / "audit.db", clock)
    log.append(AuditAction.BUILD, DEST, "sha256:" + "1" * 64, "compliant", {"reused": False})
    clock.advance(dt.timedelta(days=38))
    log.append(
        AuditAction.REBUILD, DEST, None, "started", {"reason": "outdated (base): debian:12 moved"}
    )
    log.append(
        AuditAction.REBUILD, DEST, DIGEST, "rebuilt", {"reason": "outdated (base): debian:12 moved"}
    )
    clock.advance(dt.timedelta(hours=1))
    log.append(
        AuditAction.PROMOTE,
        "127.0.0.1:5000/staging/golden:latest",
        DIGEST,
        "allowed",
        {"src": DEST, "dst": "127.0.0.1:5000/prod/golden:1"},
    )
    log.append(AuditAction.PROMOTE, "127.0.0.1:5000/prod/golden:1", DIGEST, "copied", {})
    log.append(
        AuditAction.DENY,
        "127.0.0.1:5000/other/thing:1",
        "sha256:" + "9" * 64,
        "denied",
        {"reasons": ["SignatureValid: no attestation verifies with a trusted key"]},
    )
    clock.advance(dt.timedelta(hours=1))
    # inputs unchanged: the build reused the image; that is no rebuild
    log.append(AuditAction.BUILD, DEST, DIGEST, "compliant", {"reused": True, "pushed": True})
    return log, clock


def _bundle(
    tmp_path: Path,
    keys: tuple[Signer, PublicKey, Signer],
    catalogue: Catalogue,
    *,
    signer: Signer | None = None,
    subject_digest: str = DIGEST,
    since: dt.datetime | None = None,
    controls: tuple[str, ...] = (),
    problems: tuple[tuple[str, str], ...] = (),
    images: Path | None = None,
) -> Bundle:
    images = images or _images_dir(tmp_path)
    defs = load_definitions(images)
    report = _report(defs[0], catalogue)
    envs = _signed(report, signer or keys[0], subject_digest)
    registry = FakeRegistry({DEST: ImageFacts(DIGEST, Fetched(tuple(envs), problems))})
    log, _ = _audit(tmp_path)
    return collect(
        defs,
        catalogue,
        registry,
        read_audit(log, since),
        [keys[1]],
        FixedClock(T0),
        since=since,
        controls=controls,
    )


def test_bundle_cites_verified_result_and_history(
    tmp_path: Path, keys: tuple[Signer, PublicKey, Signer], catalogue: Catalogue
) -> None:
    b = _bundle(tmp_path, keys, catalogue)
    assert b.ok, b.problems
    keyid = keys[1].keyid
    [img] = b.images
    assert img.name == "golden" and img.digest == DIGEST
    assert [a.kind for a in img.attestations] == ["test-result", "compliance"]
    assert all(a.statement == f"signature verified with key {keyid}" for a in img.attestations)
    assert img.result is not None and img.result.compliant
    assert img.result.attestation == "sha256:2" + "0" * 63  # the compliance referrer
    assert img.result.test_result == "PASSED"
    # last rebuild: the "rebuilt" entry, not the "started" one nor the first build
    assert img.last_rebuild == T0 - dt.timedelta(days=2)
    # history of this image: its builds, and the promotion followed to production by digest
    actions = [(h.action, h.outcome) for h in img.history]
    assert actions == [
        ("build", "compliant"),
        ("rebuild", "started"),
        ("rebuild", "rebuilt"),
        ("promote", "allowed"),
        ("promote", "copied"),
        ("build", "compliant"),
    ]
    assert [h.new_image for h in img.history] == [True, False, True, False, False, False]
    assert img.last_build == T0 - dt.timedelta(days=2) + dt.timedelta(hours=2)
    [summary] = b.summary()
    assert summary["control"] == "iso27017:CLD.9.5.2"
    [row] = summary["images"]
    assert row["signed_result"] == "compliant"
    assert row["signature"] == f"signature verified with key {keyid}"
    assert row["last_rebuild"] == "2026-02-27T12:00:00Z"
    passed, total = row["control_rules_passed"]
    assert passed == total > 0

    doc = b.to_json()
    assert doc["schema_version"] == 1 and doc["ok"] is True
    cld = next(c for c in doc["controls"] if (c["framework"], c["id"]) == ("iso27017", "CLD.9.5.2"))
    assert cld["images"] == ["golden"]
    rule_ids = {r["id"] for r in cld["rules"]}
    assert "pkg.sudo-absent" in rule_ids
    # the shipped VM baseline's rules are there too, with the baseline that carries them
    assert any("debian-vm" in r["baselines"] for r in cld["rules"])
    assert [h["reason"] for h in doc["history"]["rebuilds"]][1] == (
        "outdated (base): debian:12 moved"
    )
    assert [d["image"] for d in doc["history"]["denials"]] == ["127.0.0.1:5000/other/thing:1"]
    assert doc["history"]["denials"][0]["reason"].startswith("SignatureValid:")
    assert len(doc["history"]["promotions"]) == 2
    assert doc["waivers"] == [
        {
            "image": "golden",
            "rule": "pkg.sudo-absent",
            "owner": "platform-team",
            "expires": "2027-03-31",
            "reason": "web image",
            "expired": False,
            "in_signed_result": False,
        }
    ]
    assert doc["audit_log"]["intact"] is True and doc["audit_log"]["head"]["seq"] == 7
    json.dumps(doc)  # plain JSON


def test_untrusted_signature_is_not_verified(
    tmp_path: Path, keys: tuple[Signer, PublicKey, Signer], catalogue: Catalogue
) -> None:
    b = _bundle(tmp_path, keys, catalogue, signer=keys[2])
    assert not b.ok
    [img] = b.images
    assert img.result is None
    assert all(not a.verified for a in img.attestations)
    assert img.attestations[0].statement == "NOT verified: no signature by a trusted key"
    assert b.summary()[0]["images"][0]["signed_result"] == "no verified signed result"
    assert len(b.problems) == 2


def test_signature_for_another_subject_is_not_verified(
    tmp_path: Path, keys: tuple[Signer, PublicKey, Signer], catalogue: Catalogue
) -> None:
    b = _bundle(tmp_path, keys, catalogue, subject_digest="sha256:" + "e" * 64)
    [img] = b.images
    assert not b.ok and img.result is None
    assert "but for another image" in img.attestations[0].statement


def test_unreadable_referrer_is_a_problem(
    tmp_path: Path, keys: tuple[Signer, PublicKey, Signer], catalogue: Catalogue
) -> None:
    bad = (("sha256:" + "f" * 64, "digest mismatch"),)
    b = _bundle(tmp_path, keys, catalogue, problems=bad)
    assert not b.ok
    assert b.images[0].result is not None  # the good ones still count
    assert b.problems == [f"golden: attestation sha256:{'f' * 64} NOT verified: digest mismatch"]


def test_tampered_audit_log_is_stated(
    tmp_path: Path, keys: tuple[Signer, PublicKey, Signer], catalogue: Catalogue
) -> None:
    defs = load_definitions(_images_dir(tmp_path))
    log, _ = _audit(tmp_path)
    conn = sqlite3.connect(log.path, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS entries_no_update")
    conn.execute("UPDATE entries SET outcome = 'allowed' WHERE action = 'deny'")
    conn.close()
    registry = FakeRegistry()
    b = collect(defs, catalogue, registry, read_audit(log, None), [keys[1]], FixedClock(T0))
    assert not b.audit_intact and not b.ok
    assert any("hash mismatch" in p for p in b.audit.problems)
    assert b.problems[-1] == "the audit log is TAMPERED (1 problem(s))"
    html = render_html(b)
    assert "audit log TAMPERED" in html and "hash mismatch" in html
    assert registry.asked == [DEST]
    assert b.images[0].digest is None
    assert b.summary()[0]["images"][0]["signed_result"] == "not in the registry"


def test_since_filters_history(
    tmp_path: Path, keys: tuple[Signer, PublicKey, Signer], catalogue: Catalogue
) -> None:
    since = parse_since("2026-02-01")
    b = _bundle(tmp_path, keys, catalogue, since=since)
    assert b.history and all(h.at >= since for h in b.history)
    assert 1 not in {h.seq for h in b.history}  # the first build, 40 days ago
    assert len(b.history) == 6
    assert b.to_json()["since"] == "2026-02-01T00:00:00Z"
    with pytest.raises(InputError):
        parse_since("last tuesday")


def test_control_filter(
    tmp_path: Path, keys: tuple[Signer, PublicKey, Signer], catalogue: Catalogue
) -> None:
    b = _bundle(tmp_path, keys, catalogue, controls=("CLD.9.5.1",))
    assert [c.key for c in b.controls] == ["iso27017:CLD.9.5.1"]
    assert b.focus == ("iso27017:CLD.9.5.1",)
    with pytest.raises(InputError, match="no rule of the baselines maps to it"):
        _bundle(tmp_path / "x", keys, catalogue, controls=("iso27017:NOPE.1",))


def test_registry_errors_propagate(
    tmp_path: Path, keys: tuple[Signer, PublicKey, Signer], catalogue: Catalogue
) -> None:
    defs = load_definitions(_images_dir(tmp_path))
    log, _ = _audit(tmp_path)
    with pytest.raises(RegistryError):
        collect(defs, catalogue, FakeRegistry(fail=True), read_audit(log, None), [], FixedClock(T0))


def test_bad_images_dir(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a directory"):
        load_definitions(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image definitions"):
        load_definitions(tmp_path / "empty")


# ---------------------------------------------------------------- HTML


def test_html_escapes_hostile_evidence(
    tmp_path: Path, keys: tuple[Signer, PublicKey, Signer], catalogue: Catalogue
) -> None:
    images = _images_dir(tmp_path, owner="owner " + HOSTILE, reason="reason " + HOSTILE)
    defs = load_definitions(images)
    envs = _signed(_report(defs[0], catalogue), keys[0])
    log = AuditLog(tmp_path / "h" / "audit.db", FixedClock(T0))
    log.append(AuditAction.REBUILD, DEST, DIGEST, "rebuilt " + HOSTILE, {"reason": HOSTILE})
    log.append(AuditAction.DENY, "127.0.0.1:5000/x/" + HOSTILE, None, "denied", {})
    registry = FakeRegistry(
        {DEST: ImageFacts(DIGEST, Fetched(tuple(envs), (("sha256:" + "f" * 64, HOSTILE),)))}
    )
    b = collect(defs, catalogue, registry, read_audit(log, None), [keys[1]], FixedClock(T0))
    html = render_html(b)
    assert "<script" not in html and "<img" not in html
    assert "\x1b" not in html
    assert "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;" in html
    assert html.count("<title>") == 1
    assert "external" not in html and "http://" not in html and "https://" not in html
    assert 'rel="stylesheet"' not in html and "<link" not in html
    # the JSON keeps the data (it is JSON-escaped by construction), the HTML shows it cleaned
    doc = b.to_json()
    assert doc["waivers"][0]["owner"] == "owner " + HOSTILE


def test_html_summary_at_the_top(
    tmp_path: Path, keys: tuple[Signer, PublicKey, Signer], catalogue: Catalogue
) -> None:
    b = _bundle(tmp_path, keys, catalogue)
    html = render_html(b)
    assert html.index('id="summary"') < html.index('id="images"') < html.index('id="history"')
    top = html[html.index('id="summary"') : html.index('id="images"')]
    assert "iso27017:CLD.9.5.2" in top and "golden" in top
    assert f"signature verified with key {keys[1].keyid}" in top
    assert "2026-02-27T12:00:00Z" in top
    assert "audit log intact" in html


# ---------------------------------------------------------------- atomic output


def test_write_bundle_and_replace(
    tmp_path: Path, keys: tuple[Signer, PublicKey, Signer], catalogue: Catalogue
) -> None:
    b = _bundle(tmp_path, keys, catalogue)
    out = tmp_path / "out"
    write_bundle(b, out)
    assert sorted(p.name for p in out.iterdir()) == [
        ".harden-evidence",
        "evidence.json",
        "index.html",
    ]
    first = (out / "evidence.json").read_text()
    assert json.loads(first)["images"][0]["name"] == "golden"
    write_bundle(b, out)  # replaces the previous bundle
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_write_bundle_failure_leaves_previous(
    tmp_path: Path,
    keys: tuple[Signer, PublicKey, Signer],
    catalogue: Catalogue,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b = _bundle(tmp_path, keys, catalogue)
    out = tmp_path / "out"
    write_bundle(b, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_rename = os.rename

    def failing_rename(src: Any, dst: Any) -> None:
        if Path(dst) == out.absolute() and ".tmp-" in str(src):
            raise OSError("disk full")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(InputError, match="disk full"):
        write_bundle(b, out)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    # a render failure: nothing is created at all
    fresh = tmp_path / "fresh"

    def boom(_: Bundle) -> str:
        raise RuntimeError("template broke")

    monkeypatch.setattr("harden.evidence.render_html", boom)
    with pytest.raises(RuntimeError):
        write_bundle(b, fresh)
    assert not fresh.exists()


def test_write_bundle_refuses_foreign_directory(
    tmp_path: Path, keys: tuple[Signer, PublicKey, Signer], catalogue: Catalogue
) -> None:
    b = _bundle(tmp_path, keys, catalogue)
    foreign = tmp_path / "home-dir"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    with pytest.raises(InputError, match="harden did not write"):
        write_bundle(b, foreign)
    assert (foreign / "thesis.txt").read_text() == "precious"
    # an evidence.json of someone else's, next to other files: refused, nothing touched
    (foreign / "evidence.json").write_text("{}")
    with pytest.raises(InputError, match="harden did not write"):
        write_bundle(b, foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["evidence.json", "thesis.txt"]
    # a bundle harden wrote, to which a user added a file: refused too, the file stays
    ours = tmp_path / "ours"
    write_bundle(b, ours)
    (ours / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"files harden did not write \(notes.txt\)") as e:
        write_bundle(b, ours)
    assert e.value.exit_code == 3
    assert (ours / "notes.txt").read_text() == "mine" and (ours / "evidence.json").is_file()
    # an empty directory is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    write_bundle(b, empty)
    assert (empty / "index.html").is_file()
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        write_bundle(b, afile)


def test_write_bundle_to_an_unwritable_place_is_a_clean_input_error(
    tmp_path: Path, keys: tuple[Signer, PublicKey, Signer], catalogue: Catalogue
) -> None:
    b = _bundle(tmp_path, keys, catalogue)
    with pytest.raises(InputError, match="cannot write the evidence bundle") as e:
        write_bundle(b, Path("/proc/harden-evidence-test"))
    assert e.value.exit_code == 3


# ---------------------------------------------------------------- promote --format junit


def test_promote_junit_one_testcase_per_policy() -> None:
    from harden.cli.promote_cmd import junit_xml
    from harden.gate import Decision
    from harden.promote import PromoteResult

    policies = ["SignatureValid", "SubjectMatches", "ResultPassed", "NotRevoked"]
    denied = PromoteResult(
        "127.0.0.1:5000/s/a:1",
        "127.0.0.1:5000/p/a:1",
        DIGEST,
        Decision(False, ["ResultPassed: result is FAILED <b>", "odd reason"], policies=policies),
        2,
        1,
        ["referrer sha256:x: " + HOSTILE],
    )
    root = ET.fromstring(junit_xml(denied))
    suite = root.find("testsuite")
    assert suite is not None
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert list(cases) == [*policies, "gate"]
    assert suite.get("tests") == "5" and suite.get("failures") == "2"
    failure = cases["ResultPassed"].find("failure")
    assert failure is not None and failure.text == "result is FAILED <b>"
    assert cases["SignatureValid"].find("failure") is None
    out = suite.find("system-out")
    assert out is not None and out.text is not None and "\x1b" not in out.text

    allowed = PromoteResult("a", "b", DIGEST, Decision(True, [], policies=policies), 3, 3)
    root = ET.fromstring(junit_xml(allowed))
    assert root.get("failures") == "0" and root.get("tests") == "4"


def test_cli_output_errors_are_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from harden.cli import main

    monkeypatch.setenv("HARDEN_HOME", str(tmp_path / "home"))
    images = tmp_path / "images"
    images.mkdir()
    (images / "local.yaml").write_text(  # no destination: nothing to ask a registry
        "name: local\nbase: 127.0.0.1:1/library/debian:12\ntarget: container\n"
        "baseline:\n  id: debian-container\n"
    )
    with pytest.raises(SystemExit) as e:
        main(["evidence", str(images), "-o", "/proc/harden-evidence-test"])
    err = capsys.readouterr().err
    assert e.value.code == 3, err
    assert "error: cannot write the evidence bundle" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        main(["attest", "127.0.0.1:1/x:y", "--key", "file:/nonexistent", "--valid-for", "bogus"])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "--valid-for" in err and "bogus" in err and "Traceback" not in err
