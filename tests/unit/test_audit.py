"""The hash-chained audit log: appending, reading, and detecting tampering with the file."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import multiprocessing
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from harden.audit import GENESIS, AuditAction, AuditLog, entry_hash
from harden.clock import FixedClock, SystemClock

T0 = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
DIGEST = "sha256:" + "c" * 64


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def log(tmp_path: Path, clock: FixedClock) -> AuditLog:
    log = AuditLog(tmp_path / "home" / "audit.db", clock)
    for i, (action, image) in enumerate(
        [
            ("build", "golden/debian:12"),
            ("verify", "golden/debian:12"),
            ("attest", "golden/debian:12"),
            ("promote", "golden/debian:12"),
            ("verify", "golden/debian:13"),
            ("deny", "golden/debian:13"),
        ]
    ):
        log.append(action, image, DIGEST, "ok", {"n": i, "baseline": "cis-debian12"})
        clock.advance(dt.timedelta(hours=1))
    return log


def tamper(path: Path, *sql: str) -> None:
    """Edit the file the way someone with write access would: drop the guards, then write."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS entries_no_update")
    conn.execute("DROP TRIGGER IF EXISTS entries_no_delete")
    for statement in sql:
        conn.execute(statement)
    conn.close()


def test_append_chains_entries(log: AuditLog) -> None:
    entries = log.entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6]
    assert entries[0].prev_hash == GENESIS
    for before, after in itertools.pairwise(entries):
        assert after.prev_hash == before.hash
    first = entries[0]
    assert first.action == "build" and first.outcome == "ok" and first.digest == DIGEST
    assert first.at == T0 and first.details == {"n": 0, "baseline": "cis-debian12"}
    assert first.hash == entry_hash(
        seq=1,
        at="2025-03-01T12:00:00.000000Z",
        action="build",
        image="golden/debian:12",
        digest=DIGEST,
        outcome="ok",
        details='{"baseline":"cis-debian12","n":0}',
        prev_hash=GENESIS,
    )
    assert log.head() == (6, entries[-1].hash)
    assert log.verify() == []


def test_append_returns_what_is_stored(log: AuditLog) -> None:
    e = log.append(AuditAction.REVOKE, "golden/debian:12", None, "revoked", {"why": "CVE"})
    assert log.entries()[-1] == e
    assert e.seq == 7 and e.digest is None


def test_append_rejects_unknown_actions_and_odd_details(log: AuditLog) -> None:
    with pytest.raises(ValueError):
        log.append("delete", "x", None, "ok", {})
    with pytest.raises(ValueError):
        log.append("build", "x", None, "ok", {"when": dt.datetime.now(dt.UTC)})
    with pytest.raises(ValueError):
        log.append("build", "x", None, "ok", {"nan": float("nan")})
    assert len(log.entries()) == 6


def test_entries_filters(log: AuditLog) -> None:
    assert [e.seq for e in log.entries(image="golden/debian:13")] == [5, 6]
    assert [e.seq for e in log.entries(since=T0 + dt.timedelta(hours=3))] == [4, 5, 6]
    since = T0 + dt.timedelta(hours=4)
    assert [e.seq for e in log.entries(since=since, image="golden/debian:12")] == []
    other_zone = (T0 + dt.timedelta(hours=5)).astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert [e.seq for e in log.entries(since=other_zone)] == [6]


def test_empty_and_missing_log(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "none" / "audit.db", SystemClock())
    assert log.entries() == []
    assert log.verify() == []
    assert log.head() == (0, GENESIS)
    assert not (tmp_path / "none").exists()  # reading never creates it


def test_file_is_private(log: AuditLog) -> None:
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o600


def test_triggers_refuse_updates_and_deletes(log: AuditLog) -> None:
    conn = sqlite3.connect(log.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE entries SET outcome = 'denied' WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM entries WHERE seq = 2")
    conn.close()
    assert log.verify() == []


def test_detects_changed_detail(log: AuditLog) -> None:
    tamper(log.path, """UPDATE entries SET details = '{"baseline":"none","n":1}' WHERE seq = 2""")
    problems = log.verify()
    assert problems == ["entry 2: hash mismatch, its content was changed after it was written"]


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("outcome", "'denied'"),
        ("image", "'evil/debian:12'"),
        ("digest", "NULL"),
        ("at", "'2024-01-01T00:00:00.000000Z'"),
        ("action", "'verify'"),
    ],
)
def test_detects_changed_field(log: AuditLog, column: str, value: str) -> None:
    tamper(log.path, f"UPDATE entries SET {column} = {value} WHERE seq = 3")
    assert any(p.startswith("entry 3: hash mismatch") for p in log.verify())


def test_detects_garbage_details(log: AuditLog) -> None:
    tamper(log.path, "UPDATE entries SET details = 'not json' WHERE seq = 4")
    assert log.verify() == ["entry 4: details are not valid JSON (the entry was changed)"]


def test_detects_deleted_row(log: AuditLog) -> None:
    tamper(log.path, "DELETE FROM entries WHERE seq = 3")
    problems = log.verify()
    assert "entry 4: sequence gap, entries 3..3 are missing" in problems
    assert any(p.startswith("entry 4: prev_hash does not match") for p in problems)


def test_detects_deleted_tail(log: AuditLog) -> None:
    tamper(log.path, "DELETE FROM entries WHERE seq >= 5")
    problems = log.verify()
    assert len(problems) == 1 and "recorded head (entry 6) is not in the log" in problems[0]


def test_detects_forged_row(log: AuditLog) -> None:
    entries = log.entries()
    # a forger who knows the hashing scheme appends a well-formed entry at the end ...
    forged_at = "2025-03-02T00:00:00.000000Z"
    h = entry_hash(
        seq=7,
        at=forged_at,
        action="promote",
        image="evil/img",
        digest=None,
        outcome="ok",
        details="{}",
        prev_hash=entries[-1].hash,
    )
    tamper(
        log.path,
        "INSERT INTO entries VALUES (7, '2025-03-02T00:00:00.000000Z', 'promote', 'evil/img',"
        f" NULL, 'ok', '{{}}', '{entries[-1].hash}', '{h}')",
    )
    assert log.verify() == ["entries after the recorded head (entry 6) were added outside harden"]


def test_detects_row_inserted_in_a_gap(log: AuditLog) -> None:
    tamper(
        log.path,
        "INSERT INTO entries VALUES (10, '2025-03-02T00:00:00.000000Z', 'promote', 'evil/img',"
        f" NULL, 'ok', '{{}}', '{GENESIS}', '{'f' * 64}')",
    )
    problems = log.verify()
    assert "entry 10: sequence gap, entries 7..9 are missing" in problems
    assert any(p.startswith("entry 10: prev_hash does not match") for p in problems)
    assert any(p.startswith("entry 10: hash mismatch") for p in problems)


def test_detects_swapped_rows(log: AuditLog) -> None:
    tamper(
        log.path,
        "UPDATE entries SET seq = -2 WHERE seq = 2",
        "UPDATE entries SET seq = 2 WHERE seq = 4",
        "UPDATE entries SET seq = 4 WHERE seq = -2",
    )
    problems = log.verify()
    for seq in (2, 4):
        assert any(p.startswith(f"entry {seq}: hash mismatch") for p in problems)
        assert any(p.startswith(f"entry {seq}: prev_hash does not match") for p in problems)


def test_detects_rewritten_chain_with_an_anchor(log: AuditLog, clock: FixedClock) -> None:
    anchor = log.head()
    log.path.unlink()
    fresh = AuditLog(log.path, clock)
    fresh.append("build", "golden/debian:12", DIGEST, "ok", {})
    assert fresh.verify() == []  # a rewritten chain is self-consistent ...
    (problem,) = fresh.verify(expected_head=anchor)  # ... but the anchored head is gone
    assert "anchored head (entry 6" in problem


def _append_many(path: str, worker: int, n: int) -> None:
    log = AuditLog(Path(path), SystemClock())
    for i in range(n):
        log.append("verify", f"img{worker}", None, "ok", {"worker": worker, "i": i})


def test_concurrent_writers_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    AuditLog(path, SystemClock()).append("build", "seed", None, "ok", {})
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(path), w, 15)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    log = AuditLog(path, SystemClock())
    entries = log.entries()
    assert [e.seq for e in entries] == list(range(1, 47))
    assert log.verify() == []


# --- the CLI ----------------------------------------------------------------------------------


def _harden(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HARDEN_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-c", "from harden.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_cli_verify_and_show(log: AuditLog) -> None:
    home = log.path.parent
    ok = _harden(home, "audit", "verify")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == ""
    assert f"audit log intact: 6 entries, head 6:{log.head()[1]}" in ok.stderr

    shown = _harden(home, "audit", "show", "--format", "json", "--image", "golden/debian:13")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert [e["seq"] for e in doc["entries"]] == [5, 6]
    assert doc["head"] == {"seq": 6, "hash": log.head()[1]}

    table = _harden(home, "audit", "show", "--since", "2025-03-01T15:00:00Z")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["SEQ", "AT", "ACTION", "IMAGE", "DIGEST", "OUTCOME"]
    assert [ln.split()[0] for ln in lines[2:]] == ["4", "5", "6"]
    assert "3 audit entries" in table.stderr

    anchored = _harden(home, "audit", "verify", "--expect-head", f"6:{log.head()[1]}")
    assert anchored.returncode == 0, anchored.stderr


def test_cli_verify_exits_1_when_tampered(log: AuditLog) -> None:
    tamper(
        log.path,
        "UPDATE entries SET outcome = 'denied' WHERE seq = 2",
        "DELETE FROM entries WHERE seq = 5",
    )
    res = _harden(log.path.parent, "audit", "verify")
    assert res.returncode == 1
    problems = res.stdout.splitlines()
    assert "entry 2: hash mismatch, its content was changed after it was written" in problems
    assert "entry 6: sequence gap, entries 5..5 are missing" in problems
    assert "TAMPERED" in res.stderr


def test_cli_usage_errors(log: AuditLog) -> None:
    bad_date = _harden(log.path.parent, "audit", "show", "--since", "yesterday")
    assert bad_date.returncode == 2
    assert "error: --since 'yesterday' is not a date" in bad_date.stderr
    bad_head = _harden(log.path.parent, "audit", "verify", "--expect-head", "nope")
    assert bad_head.returncode == 2


@pytest.mark.parametrize("command", [["audit", "verify"], ["audit", "show"]])
def test_a_garbage_audit_file_is_invalid_input_not_an_environment_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    from harden.cli import main

    monkeypatch.setenv("HARDEN_HOME", str(tmp_path))
    (tmp_path / "audit.db").write_bytes(bytes(range(256)) * 12)
    with pytest.raises(SystemExit) as e:
        main(command)
    assert e.value.code == 3
    err = capsys.readouterr().err
    assert err.startswith("error: the audit log") and "hint:" in err and "Traceback" not in err


def test_checkpoint_detects_a_cut_tail_a_rewrite_and_unanchored_appends() -> None:
    import datetime as dt

    from harden.attest.checkpoint import Checkpoint, check

    chain = [(1, "a" * 64), (2, "b" * 64), (3, "c" * 64)]
    cp = Checkpoint("reg/harden/audit:ci", 3, "c" * 64, dt.datetime(2026, 8, 1, tzinfo=dt.UTC), "k")
    assert check(chain, cp) == []
    assert "tail was cut" in check(chain[:2], cp)[0]
    assert "rewritten" in check([*chain[:2], (3, "d" * 64)], cp)[0]
    assert "not anchored" in check([*chain, (4, "e" * 64)], cp)[0]
    assert check([], "no audit checkpoint at x") == []  # nothing written, nothing anchored
    assert check(chain, "no audit checkpoint at x") == ["no audit checkpoint at x"]


def test_anchored_log_without_the_audit_key_reads_but_never_writes_unanchored(
    tmp_path: Path, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an auditor on a machine with HARDEN_AUDIT_ANCHOR but without the signing key reads the log;
    # a writer without the key is refused before its entry exists (no unanchored entry is made)
    from harden.errors import InputError

    monkeypatch.setenv("HARDEN_HOME", str(tmp_path))
    monkeypatch.delenv("HARDEN_DB", raising=False)
    monkeypatch.delenv("HARDEN_AUDIT_KEY", raising=False)
    AuditLog.default(clock).append(AuditAction.BUILD, "img", None, "compliant")  # not anchored yet
    monkeypatch.setenv("HARDEN_AUDIT_ANCHOR", "127.0.0.1:5999/audit/anchor:head")
    log = AuditLog.default(clock)
    assert [e.seq for e in log.entries()] == [1] and log.verify() == []
    with pytest.raises(InputError, match="HARDEN_AUDIT_KEY"):
        log.append(AuditAction.BUILD, "img", None, "compliant")
    assert [e.seq for e in AuditLog.default(clock).entries()] == [1]
