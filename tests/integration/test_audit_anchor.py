"""The audit log anchored by signed checkpoints in the real registry: an entry appended with a
valid chain and a cut tail are both detected by `harden audit verify`, without --expect-head."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import harden_cli
import pytest

from harden.attest.keys import KeyType, keygen
from harden.audit import AuditLog, entry_hash
from harden.clock import SystemClock
from harden.oci import RegistryClient

pytestmark = pytest.mark.integration

REGISTRY = "127.0.0.1:5000"


def _forge_append(db: Path) -> None:
    """What someone with write access to the file does: a new entry with a valid chain and the
    recorded head moved along."""
    conn = sqlite3.connect(db)
    seq, prev = conn.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
    fields = {
        "seq": seq + 1,
        "at": "2026-08-01T12:00:00.000000Z",
        "action": "promote",
        "image": "127.0.0.1:5000/prod/app:1",
        "digest": "sha256:" + "f" * 64,
        "outcome": "allowed",
        "details": "{}",
        "prev_hash": prev,
    }
    h = entry_hash(**fields)
    conn.execute(
        "INSERT INTO entries (seq, at, action, image, digest, outcome, details, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (*fields.values(), h),
    )
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('head', ?)",
        (json.dumps({"seq": seq + 1, "hash": h}),),
    )
    conn.commit()
    conn.close()


def _cut(db: Path, keep: int) -> None:
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER entries_no_delete")  # the triggers stop mistakes, not attackers
    conn.execute("DELETE FROM entries WHERE seq > ?", (keep,))
    h = conn.execute("SELECT hash FROM entries WHERE seq = ?", (keep,)).fetchone()[0]
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('head', ?)",
        (json.dumps({"seq": keep, "hash": h}),),
    )
    conn.commit()
    conn.close()


def test_appended_forgery_and_cut_tail_are_detected_against_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_registry: RegistryClient
) -> None:
    keygen(KeyType.ED25519, tmp_path / "audit", b"pw")
    anchor = f"{REGISTRY}/harden-test/{uuid.uuid4().hex[:8]}/audit:ci"
    env = {
        "HARDEN_HOME": str(tmp_path / "home"),
        "HARDEN_AUDIT_ANCHOR": anchor,
        "HARDEN_AUDIT_KEY": f"file:{tmp_path / 'audit.key'}",
        "HARDEN_KEY_PASSWORD": "pw",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    log = AuditLog.default(SystemClock())
    for i in range(3):  # every append publishes a signed checkpoint of the new head
        log.append("verify", f"{REGISTRY}/app:{i}", None, "compliant", {"i": i})
    pub = str(tmp_path / "audit.pub")
    r = harden_cli.run("audit", "verify", "--key", pub, env=env)
    assert r.returncode == 0, r.stdout + r.stderr

    db = tmp_path / "home" / "audit.db"
    backup = db.read_bytes()
    _forge_append(db)
    assert AuditLog(db, SystemClock()).verify() == []  # the chain alone cannot tell
    r = harden_cli.run("audit", "verify", "--key", pub, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "not anchored" in r.stdout

    db.write_bytes(backup)
    _cut(db, 1)
    assert AuditLog(db, SystemClock()).verify() == []
    r = harden_cli.run("audit", "verify", "--key", pub, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "tail was cut" in r.stdout

    # a checkpoint signed by another key does not count
    keygen(KeyType.ED25519, tmp_path / "other", b"pw")
    db.write_bytes(backup)
    r = harden_cli.run("audit", "verify", "--key", str(tmp_path / "other.pub"), env=env)
    assert r.returncode == 1 and "cannot be trusted" in r.stdout, r.stdout + r.stderr
