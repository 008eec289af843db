"""The OpenSCAP second opinion without running a scanner: the ARF reader (on a real ARF made here
by oscap-chroot on debian:12, trimmed), the score, safe unpacking, the agreement table, the
scan predicate, the gate's ScanScoreAtLeast and the scan in every report format."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import xmlschema

from harden.attest import statements as st
from harden.attest.dsse import VerifiedStatement
from harden.attest.statements import Subject
from harden.errors import AttestationError, InputError
from harden.gate import Evidence, GateConfigError, ScanScoreAtLeast
from harden.report import Format, render
from harden.results import BaselineRef, RuleResult, Status, VerifyReport
from harden.scan.agreement import compare, mapping_of, parse_known, ssg_ids
from harden.scan.arf import ArfError, parse_arf, parse_arf_stream
from harden.scan.model import (
    Family,
    RuleOutcome,
    ScanResult,
    XccdfResult,
    family_of,
    profile_id,
    score_of,
)
from harden.scan.rootfs import UnsafeArchive, read_os_release, resolve_in_root, unpack_export

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
ARF = FIXTURES / "arf" / "debian12-anssi-minimal.xml"
A = "sha256:" + "a" * 64
T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
RULE = "xccdf_org.ssgproject.content_rule_"


# ---------------------------------------------------------------- the ARF reader


def test_real_arf_is_read() -> None:
    r = parse_arf(ARF)
    assert r.profile == "xccdf_org.ssgproject.content_profile_anssi_bp28_minimal"
    assert r.benchmark == "xccdf_org.ssgproject.content_benchmark_DEBIAN-12"
    assert r.scanner == "OpenSCAP 1.3.7" and r.content_version == "0.1.76"
    assert r.counts(None) == {
        "pass": 16,
        "fail": 14,
        "error": 0,
        "unknown": 0,
        "notapplicable": 4,
        "notchecked": 1,
        "notselected": 3,
        "informational": 0,
        "fixed": 0,
    }
    by = r.by_short_id()
    assert by["package_telnet_removed"].result is XccdfResult.PASS
    assert by["accounts_passwords_pam_faillock_deny"].result is XccdfResult.FAIL
    assert by["security_patches_up_to_date"].result is XccdfResult.NOTCHECKED
    assert r.xccdf_score == 75.0  # OpenSCAP's own weighted score, kept beside harden's
    assert r.arf_digest.startswith("sha256:") and len(r.arf_digest) == 71


def test_score_is_pass_rate_over_judged_rules() -> None:
    r = parse_arf(ARF)
    # 16 pass / (16 pass + 14 fail); n/a, notchecked, notselected left out
    assert r.score == round(100 * 16 / 30, 1) == 53.3
    assert score_of(r.counts()) == r.score


def _arf(body: str, *, result_ns: str = "http://checklists.nist.gov/xccdf/1.2") -> bytes:
    return (
        '<?xml version="1.0"?><arf:asset-report-collection '
        'xmlns:arf="http://scap.nist.gov/schema/asset-reporting-format/1.1"><arf:reports>'
        f'<arf:report id="x"><arf:content><TestResult xmlns="{result_ns}" id="t" '
        'version="0.1.76" test-system="cpe:/a:redhat:openscap:1.3.7">'
        '<profile idref="xccdf_org.ssgproject.content_profile_p"/>'
        f"{body}</TestResult></arf:content></arf:report></arf:reports>"
        "</arf:asset-report-collection>"
    ).encode()


def _rr(rule: str, result: str) -> str:
    return f'<rule-result idref="{RULE}{rule}"><result>{result}</result></rule-result>'


def test_families_are_scored_apart() -> None:
    body = (
        _rr("package_telnet_removed", "pass")
        + _rr("sysctl_net_ipv4_ip_forward", "fail")
        + _rr("kernel_config_page_poisoning", "fail")
        + _rr("accounts_tmout", "error")
    )
    r = parse_arf_stream(io.BytesIO(_arf(body)))
    assert r.score == 50.0  # pass / (pass + error): an unreadable rule is not a pass
    assert r.families[Family.SYSCTL].to_json() == {"score": 0.0, "passed": 0, "judged": 1}
    assert r.families[Family.KERNEL_CONFIG].judged == 1
    assert family_of(RULE + "sysctl_kernel_kptr_restrict") is Family.SYSCTL
    assert profile_id("anssi_bp28_high").endswith("content_profile_anssi_bp28_high")


def test_nothing_judged_has_no_score() -> None:
    r = parse_arf_stream(io.BytesIO(_arf(_rr("package_telnet_removed", "notapplicable"))))
    assert r.score is None


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"<a>", "not well-formed"),
        (_arf("", result_ns="http://checklists.nist.gov/xccdf/1.1"), "no XCCDF 1.2 TestResult"),
        (_arf(_rr("x", "maybe")), "unknown result"),
        (_arf(_rr("x", "pass") + _rr("x", "fail")), "two results"),
        (
            _arf('<rule-result idref="a b&lt;"><result>pass</result></rule-result>'),
            "not an XCCDF id",
        ),
        (
            b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>',
            "forbidden XML construct",
        ),
    ],
)
def test_hostile_or_broken_arf_is_refused(doc: bytes, message: str) -> None:
    with pytest.raises(ArfError, match=message):
        parse_arf_stream(io.BytesIO(doc))


def test_arf_size_is_bounded(tmp_path: Path) -> None:
    with pytest.raises(ArfError, match="larger than"):
        parse_arf(ARF, max_bytes=1000)


def test_two_test_results_are_refused() -> None:
    one = _arf(_rr("a", "pass")).decode()
    start = one.index('<arf:report id="x">')
    end = one.index("</arf:reports>")
    doubled = one[:end] + one[start:end] + one[end:]
    with pytest.raises(ArfError, match="more than one"):
        parse_arf_stream(io.BytesIO(doubled.encode()))


# ---------------------------------------------------------------- safe unpacking


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


def _info(name: str, kind: bytes = tarfile.REGTYPE, **kw: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = kw.pop("mode", 0o644)
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def test_unpack_keeps_owners_modes_symlinks_and_skips_devices(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    stream = _tar(
        (_info("etc", tarfile.DIRTYPE, mode=0o755), None),
        (_info("etc/shadow", uid=0, gid=42, mode=0o640), b"root:*:1::::::\n"),
        (_info("usr/bin/su", mode=0o4755), b"\x7fELF"),
        (_info("usr/lib/os-release"), b'ID=debian\nVERSION_ID="12"\n'),
        (_info("etc/os-release", tarfile.SYMTYPE, linkname="../usr/lib/os-release"), None),
        (_info("etc/localtime", tarfile.SYMTYPE, linkname="/usr/share/zoneinfo/UTC"), None),
        (_info("usr/bin/su2", tarfile.LNKTYPE, linkname="usr/bin/su", mode=0o4755), None),
        (_info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3), None),
        (_info("run/fifo", tarfile.FIFOTYPE), None),
    )
    u = unpack_export(stream, root)
    st_shadow = os.stat(root / "etc/shadow")
    assert (st_shadow.st_gid, st_shadow.st_mode & 0o7777) == (42, 0o640)
    assert os.stat(root / "usr/bin/su").st_mode & 0o7777 == 0o4755
    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert os.stat(root / "usr/bin/su2").st_ino == os.stat(root / "usr/bin/su").st_ino
    assert not (root / "dev/null").exists() and set(u.skipped) == {"dev/null", "run/fifo"}
    assert read_os_release(root) == {"ID": "debian", "VERSION_ID": "12"}


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([(_info("/etc/passwd"), b"x")], "absolute path"),
        ([(_info("../escape"), b"x")], "leaves the root"),
        ([(_info("a/../../escape"), b"x")], "leaves the root"),
        (
            [
                (_info("etc", tarfile.SYMTYPE, linkname="/tmp"), None),
                (_info("etc/cron.d/evil"), b"x"),
            ],
            "written through",
        ),
        ([(_info("x", tarfile.LNKTYPE, linkname="../../etc/shadow"), None)], "leaves the root"),
        ([(_info("x", tarfile.LNKTYPE, linkname="/etc/shadow"), None)], "absolute path"),
        (
            [
                (_info("d", tarfile.DIRTYPE, mode=0o755), None),
                (_info("d/f"), b"x"),
                (_info("d"), b"y"),
            ],
            "cannot unpack",
        ),
    ],
)
def test_unpack_refuses_escapes(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], message: str
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    with pytest.raises(UnsafeArchive, match=message):
        unpack_export(_tar(*members), root)
    assert not outside.exists() and not (tmp_path / "escape").exists()


def test_symlink_replaced_by_a_file_is_not_written_through(tmp_path: Path) -> None:
    root, target = tmp_path / "root", tmp_path / "victim"
    root.mkdir()
    target.write_text("keep")
    stream = _tar(
        (_info("passwd", tarfile.SYMTYPE, linkname=str(target)), None),
        (_info("passwd"), b"overwritten?"),
    )
    unpack_export(stream, root)
    assert target.read_text() == "keep"
    assert (root / "passwd").read_bytes() == b"overwritten?"


def test_resolve_in_root_never_leaves_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (tmp_path / "secret").write_text("ID=evil\n")
    os.symlink("../../secret", root / "etc/os-release")  # ".." stops at the root
    assert resolve_in_root(root, "etc/os-release") is None
    os.symlink("loop", root / "loop")
    assert resolve_in_root(root, "loop") is None
    assert read_os_release(root) == {}


# ---------------------------------------------------------------- the agreement


AGREEMENT_DOC = """
| harden rule | SSG rule | artefact | reason | proof |
|---|---|---|---|---|
| `login.umask` | `accounts_umask_etc_login_defs` | container | harden reads UMASK | see test |
"""


def _scan(**results: str) -> ScanResult:
    return ScanResult(
        profile="p",
        benchmark="b",
        content="c",
        content_version="v",
        scanner="OpenSCAP 1.3.7",
        rules=tuple(RuleOutcome(RULE + k, XccdfResult(v)) for k, v in results.items()),
    )


def test_agreement_finds_false_passes_and_honours_the_doc() -> None:
    known = parse_known(AGREEMENT_DOC)
    mapping = {
        "pkg.telnet-absent": ("package_telnet_removed",),
        "login.umask": ("accounts_umask_etc_login_defs",),
        "pam.faillock-deny": ("accounts_passwords_pam_faillock_deny",),
        "sysctl.ip-forward": ("sysctl_net_ipv4_ip_forward",),
        "pkg.typo": ("package_telnett_removed",),
        "ssh.strict": ("sshd_disable_root_login",),
    }
    harden = {
        "pkg.telnet-absent": "passed",
        "login.umask": "passed",
        "pam.faillock-deny": "passed",
        "sysctl.ip-forward": "passed",
        "pkg.typo": "passed",
        "ssh.strict": "failed",
    }
    scan = _scan(
        package_telnet_removed="pass",
        accounts_umask_etc_login_defs="fail",
        accounts_passwords_pam_faillock_deny="fail",
        sysctl_net_ipv4_ip_forward="fail",
        sshd_disable_root_login="pass",
    )
    a = compare(
        "container", harden, mapping, scan, known, defined=frozenset({"package_telnet_removed"})
    )
    assert [p.rule for p in a.false_passes] == ["pam.faillock-deny"]
    assert [p.rule for p, _ in a.explained] == ["login.umask"]
    assert [p.rule for p in a.confirmed] == ["pkg.telnet-absent"]
    assert [p.rule for p in a.stricter] == ["ssh.strict"]
    assert [p.ssg for p in a.unknown_ids] == ["package_telnett_removed"]
    assert [p.rule for p in a.not_judged] == ["sysctl.ip-forward"]  # host kernel: apart
    assert "FALSE PASS pam.faillock-deny" in "\n".join(a.lines())
    # the same doc row does not excuse the vm artefact
    assert compare("vm", harden, mapping, scan, known).false_passes[0].rule == "login.umask"


def test_agreement_doc_rows_must_parse() -> None:
    with pytest.raises(InputError, match="a disagreement row needs"):
        parse_known("| `login.umask` | accounts_umask | container | r | p |")
    with pytest.raises(InputError, match="reason and proof"):
        parse_known("| `a.b` | `c` | vm |  | p |")


def test_the_published_agreement_doc_parses() -> None:
    rows = parse_known((ROOT / "docs" / "scanner-agreement.md").read_text(encoding="utf-8"))
    assert all(r.reason and r.proof for r in rows)


def test_mapping_reads_references_then_controls() -> None:
    @dataclasses.dataclass
    class R:
        id: str
        controls: dict[str, Any]
        references: Any = None

    assert ssg_ids(R("a.b", {}, {"ssg": ("x",), "anssi": ()})) == ("x",)
    assert ssg_ids(R("a.b", {}, type("Refs", (), {"ssg": ["y"]})())) == ("y",)
    assert ssg_ids(R("a.b", {"ssg": ["z"]})) == ("z",)
    assert mapping_of([R("a.b", {}), R("c.d", {"ssg": ["z"]})]) == {"c.d": ("z",)}


# ---------------------------------------------------------------- predicate and gate


def _scan_statement(scan: ScanResult, *, digest: str = A, **override: Any) -> dict[str, Any]:
    s = st.openscap_scan(Subject("reg/img", digest), scan.to_json(), T0)
    s["predicate"].update(override)
    return s


def _verified(statement: dict[str, Any]) -> VerifiedStatement:
    payload = st.serialize(statement)
    return VerifiedStatement(payload, st.parse(payload), "k1")


def _ev(*statements: VerifiedStatement) -> Evidence:
    return Evidence(A, list(statements), [], [], T0 + dt.timedelta(hours=1))


def _arf_scan() -> ScanResult:
    return dataclasses.replace(parse_arf(ARF), content="ssg-debian12-ds.xml")


def test_scan_predicate_round_trips() -> None:
    v = _verified(_scan_statement(_arf_scan()))
    p = v.statement.openscap_scan()
    assert p.score == 53.3 and p.counts["pass"] == 16 and p.arfDigest.startswith("sha256:")
    assert {r.id for r in p.rules} >= {"package_telnet_removed"}
    assert all(r.result != "notselected" for r in p.rules)


def test_gate_scan_score() -> None:
    good = _verified(_scan_statement(_arf_scan()))
    assert ScanScoreAtLeast(50).check(_ev(good)) == []
    low = ScanScoreAtLeast(53.4).check(_ev(good))
    assert len(low) == 1 and "below the minimum 53.4" in low[0]
    assert "no valid OpenSCAP scan attestation" in ScanScoreAtLeast(0).check(_ev())[0]
    other = _verified(_scan_statement(_arf_scan(), digest="sha256:" + "b" * 64))
    assert "no valid OpenSCAP scan" in ScanScoreAtLeast(0).check(_ev(other))[0]


def test_gate_refuses_a_score_its_counts_do_not_give() -> None:
    inflated = _verified(_scan_statement(_arf_scan(), score=99.0))
    with pytest.raises(AttestationError, match="does not match the counts"):
        inflated.statement.openscap_scan()
    reasons = ScanScoreAtLeast(10).check(_ev(inflated))
    assert any("does not match the counts" in r for r in reasons)
    assert any("no valid OpenSCAP scan" in r for r in reasons)


def test_gate_latest_scan_counts() -> None:
    old = _verified(_scan_statement(_arf_scan()))
    newer = _scan_statement(_arf_scan(), scannedAt="2026-12-01T13:00:00Z")
    newer["predicate"]["counts"] = dict(newer["predicate"]["counts"], fail=30)
    newer["predicate"]["score"] = score_of(newer["predicate"]["counts"])
    assert ScanScoreAtLeast(50).check(_ev(old, _verified(newer)))  # the newer, lower one wins


def test_gate_minimum_is_a_percentage() -> None:
    with pytest.raises(GateConfigError):
        ScanScoreAtLeast(101)


# ---------------------------------------------------------------- every report format


def _report() -> VerifyReport:
    return VerifyReport(
        image="debian:12",
        digest=A,
        target="container",
        platform="debian 12",
        baseline=BaselineRef("debian-container", "1.0.0", "sha256:" + "b" * 64),
        results=(
            RuleResult("pkg.telnet-absent", Status.PASSED, "telnet", "low", "package_absent", {}),
        ),
        started_at=T0,
        finished_at=T0,
        scan=_arf_scan().summary_json(),
    )


def test_scan_in_every_format() -> None:
    r = _report()
    doc = json.loads(render(r, Format.JSON))
    schema = json.loads((ROOT / "docs" / "report.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(doc)
    assert (
        doc["scan"]["score"] == 53.3
        and "accounts_passwords_pam_faillock_deny" in (doc["scan"]["failed_rules"])
    )
    bad = json.loads(render(r, Format.JSON))
    bad["scan"]["score"] = 120
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(bad)
    assert "OpenSCAP second opinion: anssi_bp28_minimal score 53.3" in render(r, Format.TABLE)
    junit = render(r, Format.JUNIT)
    xmlschema.XMLSchema(str(FIXTURES / "junit.xsd")).validate(junit)
    assert 'name="openscap.score" value="53.3"' in junit
    sarif = json.loads(render(r, Format.SARIF))
    jsonschema.Draft7Validator(
        json.loads((FIXTURES / "sarif-schema-2.1.0.json").read_text())
    ).validate(sarif)
    assert sarif["runs"][0]["properties"]["openscap"]["score"] == 53.3
    html = render(r, Format.HTML)
    assert 'id="openscap"' in html and "<b>53.3</b>" in html


def test_no_scan_no_scan_key() -> None:
    r = dataclasses.replace(_report(), scan=None)
    assert "scan" not in json.loads(render(r, Format.JSON))
    assert "OpenSCAP" not in render(r, Format.TABLE) + render(r, Format.HTML)


def test_apt_cache_of_a_read_only_tree_stays_inside_it(tmp_path: Path) -> None:
    """scripts/vm-oscap.sh scans a VM template mounted read-only; libapt's cache then lives on
    the tmpfs at ROOT/proc. The path is checked before the scanner runs."""
    from harden.builder.openscap import VM_APT_CACHE, apt_config, scan_root

    assert 'Dir::Cache "/proc/.harden-apt-cache";' in apt_config(tmp_path, VM_APT_CACHE)
    assert 'Dir::State::status "/var/lib/dpkg/status";' in apt_config(tmp_path, VM_APT_CACHE)
    root = tmp_path / "root"
    root.mkdir()
    for bad in ("../outside", "/abs", "proc/../../x", "a b"):
        with pytest.raises(InputError, match="plain path inside the root"):
            scan_root(root, "anssi_bp28_minimal", tmp_path, apt_cache=bad)
    (root / "proc").symlink_to(tmp_path)  # a symlink on the way out of the tree
    with pytest.raises(InputError, match="not a directory harden made"):
        scan_root(root, "anssi_bp28_minimal", tmp_path, apt_cache=VM_APT_CACHE)
