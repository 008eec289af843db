"""Shared state in PostgreSQL (HARDEN_DB): many CI runners, one audit chain, one rollback memory.

The database is the real one scripts/services.sh starts (Debian's postgresql on 127.0.0.1:5432);
each test gets a database of its own (``harden_test_<random>``, dropped at the end), so parallel
runs never share a chain. The URL of a role that may create databases comes from
``$HARDEN_TEST_DB`` (default: the one services.sh creates).
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import os
import socket
import subprocess
import sys
import tarfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harden_cli
import pytest
from needs import unavailable

from harden.attest.keys import KeyType, keygen
from harden.audit import AuditLog, entry_hash
from harden.clock import SystemClock
from harden.oci import RegistryClient
from harden.oci.model import OCI_MANIFEST, canonical_json, compute_digest

pytestmark = pytest.mark.integration

REGISTRY = "127.0.0.1:5000"
ADMIN_URL = os.environ.get(
    "HARDEN_TEST_DB", "postgresql://harden:harden-test@127.0.0.1:5432/harden"
)
RUNNERS = 4
ENTRIES = 200

# one CI runner: a process that runs `harden verify` ENTRIES/RUNNERS times through the CLI's
# entry point (argument parsing, use case, exit code mapping), each run appending one entry
RUNNER = textwrap.dedent(
    """
    import sys
    from harden.cli import main
    n, ref, baselines = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    codes = []
    for _ in range(n):
        try:
            main(["verify", ref, "--baseline", "pgstate-tiny", "--baselines", baselines,
                  "--format", "json", "--output", "/dev/null"])
        except SystemExit as e:
            codes.append(e.code)
    print(" ".join(str(c) for c in codes))
    """
)

TINY_BASELINE = textwrap.dedent(
    """\
    id: pgstate-tiny
    version: 1.0.0
    title: one static file check (cheap, read from the image's layers)
    platforms: [{family: debian}]
    targets: [container]
    rules:
      - id: tiny.no-marker
        title: no marker file
        rationale: a check that reads one path of the image, nothing runs
        severity: low
        controls: {iso27017: [CLD.9.5.2]}
        file_absent: {paths: [/nonexistent-marker]}
    """
)


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty database of this test's own; its URL (dropped afterwards)."""
    try:
        import psycopg
    except ImportError:
        unavailable("psycopg is not installed (pip install 'psycopg[binary]')")
    name = f"harden_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=10)
    except psycopg.Error as e:
        unavailable(f"no PostgreSQL at {ADMIN_URL} ({e}); run scripts/services.sh")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield _with_database(ADMIN_URL, name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _tiny_image(client: RegistryClient, repo: str, tags: list[str]) -> str:
    """A one-layer Debian-looking image (just /etc/os-release) under ``tags``; its digest."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        content = f'ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n# {repo}\n'.encode()
        info = tarfile.TarInfo("etc/os-release")
        info.size, info.mtime, info.mode = len(content), 0, 0o644
        tar.addfile(info, io.BytesIO(content))
    tar_bytes = buf.getvalue()
    layer = gzip.compress(tar_bytes, mtime=0)
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "config": {"User": "app"},
            "rootfs": {"type": "layers", "diff_ids": [compute_digest(tar_bytes)]},
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": compute_digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": compute_digest(layer),
                    "size": len(layer),
                }
            ],
        }
    )
    for blob in (config, layer):
        client.upload_blob(repo, blob, compute_digest(blob))
    for tag in tags:
        client.put_manifest(repo, tag, manifest, OCI_MANIFEST)
    return compute_digest(manifest)


def _anchored_env(tmp_path: Path, url: str) -> dict[str, str]:
    """HARDEN_DB plus signed audit checkpoints at a registry location of this test's own."""
    keygen(KeyType.ED25519, tmp_path / "audit", b"pw")
    return {
        "HARDEN_DB": url,
        "HARDEN_AUDIT_ANCHOR": f"{REGISTRY}/harden-test/{uuid.uuid4().hex[:10]}/audit:ci",
        "HARDEN_AUDIT_KEY": f"file:{tmp_path / 'audit.key'}",
        "HARDEN_KEY_PASSWORD": "pw",
    }


def _images(tmp_path: Path) -> Path:
    """An images directory whose one definition has no destination (no golden image to judge:
    the bundle is about the audit log)."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "x.yaml").write_text(
        json.dumps(
            {
                "name": "x",
                "base": f"{REGISTRY}/library/debian:12",
                "target": "container",
                "baseline": {"id": "debian-container"},
            }
        )
    )
    return images


def _sql(url: str, *statements: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """What the owner of the database (or anyone holding its password) can do by hand."""
    import psycopg

    rows: list[tuple[Any, ...]] = []
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            cur = conn.execute(statement, args if "%s" in statement else ())
            if cur.description is not None:
                rows = [tuple(r) for r in cur.fetchall()]
    return rows


def test_four_runners_share_one_chain(
    tmp_path: Path, pg_url: str, local_registry: RegistryClient
) -> None:
    """4 CI runners (separate HARDEN_HOMEs, one HARDEN_DB) append 200 entries concurrently,
    each also publishing a signed checkpoint: one linear chain of 200 entries, anchored by
    the latest checkpoint, and the evidence bundle lists all of them."""
    repo = f"harden-test/{uuid.uuid4().hex[:10]}/tiny"
    _tiny_image(local_registry, repo, [f"runner{i}" for i in range(RUNNERS)])
    baselines = tmp_path / "baselines"
    baselines.mkdir()
    (baselines / "tiny.yaml").write_text(TINY_BASELINE)
    env = {**os.environ, **_anchored_env(tmp_path, pg_url)}
    procs = []
    for i in range(RUNNERS):
        home = tmp_path / f"runner{i}"
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    RUNNER,
                    str(ENTRIES // RUNNERS),
                    f"{REGISTRY}/{repo}:runner{i}",
                    str(baselines),
                ],
                cwd=harden_cli.ROOT,
                env={**env, "HARDEN_HOME": str(home)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for p in procs:
            out, err = p.communicate(timeout=1800)
            assert p.returncode == 0, err[-3000:]
            assert out.split() == ["0"] * (ENTRIES // RUNNERS), err[-3000:]
            assert "Traceback" not in err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    check_env = {k: v for k, v in env.items() if k.startswith("HARDEN_")}
    check_env["HARDEN_HOME"] = str(tmp_path / "auditor")  # a fifth machine, nothing local
    pub = str(tmp_path / "audit.pub")
    r = harden_cli.run("audit", "verify", "--key", pub, env=check_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"audit log intact: {ENTRIES} entries" in r.stderr

    r = harden_cli.run("audit", "show", "--format", "json", env=check_env)
    assert r.returncode == 0, r.stderr
    entries = json.loads(r.stdout)["entries"]
    assert [e["seq"] for e in entries] == list(range(1, ENTRIES + 1))
    for before, after in itertools.pairwise(entries):
        assert after["prev_hash"] == before["hash"]
    per_runner = {
        i: sum(1 for e in entries if e["image"].endswith(f":runner{i}")) for i in range(RUNNERS)
    }
    assert per_runner == dict.fromkeys(range(RUNNERS), ENTRIES // RUNNERS)
    switches = sum(1 for a, b in itertools.pairwise(entries) if a["image"] != b["image"])
    print(f"runner switches along the chain: {switches} (4 runners one after the other: 3)")

    images = _images(tmp_path)
    bundle = tmp_path / "evidence"
    r = harden_cli.run("evidence", str(images), "-o", str(bundle), "--key", pub, env=check_env)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads((bundle / "evidence.json").read_text())
    audit = doc["audit_log"]
    assert audit["intact"] and audit["entries"] == ENTRIES, audit
    assert audit["path"].startswith("postgresql://harden:***@127.0.0.1"), audit["path"]
    assert "harden-test" not in json.dumps(audit)  # the password is never in the bundle
    shown = doc["history"]["verifications"]
    assert [(h["seq"], h["image"]) for h in shown] == [(e["seq"], e["image"]) for e in entries]


def _forge_append(url: str) -> None:
    """A valid-chain entry appended by someone holding the database password, not the key."""
    (seq, prev), *_ = _sql(url, "SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1")
    fields = {
        "seq": seq + 1,
        "at": "2026-08-01T12:00:00.000000Z",
        "action": "promote",
        "image": f"{REGISTRY}/prod/app:1",
        "digest": "sha256:" + "f" * 64,
        "outcome": "allowed",
        "details": "{}",
        "prev_hash": prev,
    }
    h = entry_hash(**fields)
    _sql(
        url,
        "INSERT INTO entries (seq, at, action, image, digest, outcome, details, prev_hash, hash)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        args=(*fields.values(), h),
    )
    _sql(
        url,
        "UPDATE meta SET value = %s WHERE key = 'head'",
        args=(json.dumps({"seq": seq + 1, "hash": h}),),
    )


def test_tampering_in_postgresql_is_detected(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, local_registry: RegistryClient
) -> None:
    env = {**_anchored_env(tmp_path, pg_url), "HARDEN_HOME": str(tmp_path / "home")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    log = AuditLog.default(SystemClock())
    assert log.location.startswith("postgresql://harden:***@")
    for i in range(3):
        log.append("verify", f"{REGISTRY}/app:{i}", None, "compliant", {"i": i})
    pub = str(tmp_path / "audit.pub")
    assert harden_cli.run("audit", "verify", "--key", pub, env=env).returncode == 0

    # the triggers refuse an UPDATE or DELETE by mistake...
    import psycopg

    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        _sql(pg_url, "UPDATE entries SET outcome = 'non-compliant' WHERE seq = 2")
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        _sql(pg_url, "DELETE FROM entries WHERE seq = 3")
    # ...an owner disables them: the chain shows the change
    _sql(
        pg_url,
        "ALTER TABLE entries DISABLE TRIGGER USER",
        "UPDATE entries SET details = '{\"i\":7}' WHERE seq = 2",
    )
    r = harden_cli.run("audit", "verify", "--key", pub, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "entry 2: hash mismatch" in r.stdout
    images = _images(tmp_path)
    r = harden_cli.run("evidence", str(images), "-o", str(tmp_path / "ev1"), "--key", pub, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    doc = json.loads((tmp_path / "ev1" / "evidence.json").read_text())
    assert not doc["audit_log"]["intact"] and doc["audit_log"]["entries"] == 3, doc["audit_log"]
    _sql(pg_url, "UPDATE entries SET details = '{\"i\":1}' WHERE seq = 2")
    assert harden_cli.run("audit", "verify", "--key", pub, env=env).returncode == 0

    # an entry appended with a valid chain, without the audit key: not anchored
    _forge_append(pg_url)
    assert AuditLog.default(SystemClock()).verify() == []  # the chain alone cannot tell
    r = harden_cli.run("audit", "verify", "--key", pub, env=env)
    assert r.returncode == 1 and "not anchored" in r.stdout, r.stdout + r.stderr

    # a cut tail: the log no longer reaches the latest checkpoint (audit verify and evidence)
    _sql(pg_url, "DELETE FROM entries WHERE seq > 1")
    (h,), *_ = _sql(pg_url, "SELECT hash FROM entries WHERE seq = 1")
    _sql(
        pg_url,
        "UPDATE meta SET value = %s WHERE key = 'head'",
        args=(json.dumps({"seq": 1, "hash": h}),),
    )
    assert AuditLog.default(SystemClock()).verify() == []
    r = harden_cli.run("audit", "verify", "--key", pub, env=env)
    assert r.returncode == 1 and "tail was cut" in r.stdout, r.stdout + r.stderr
    r = harden_cli.run("evidence", str(images), "-o", str(tmp_path / "ev2"), "--key", pub, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    doc = json.loads((tmp_path / "ev2" / "evidence.json").read_text())
    assert any("tail was cut" in p for p in doc["audit_log"]["problems"]), doc["audit_log"]


def test_revocation_list_rollback_is_remembered_across_runners(
    tmp_path: Path, pg_url: str, local_registry: RegistryClient
) -> None:
    """Runner A saw version 2; the list is rolled back to version 1 in the registry; runner B,
    a fresh machine on the same HARDEN_DB, refuses it (with only local files it could not)."""
    keygen(KeyType.ED25519, tmp_path / "rl", b"pw")
    repo = f"harden-test/{uuid.uuid4().hex[:10]}/revocations"
    base = {"HARDEN_REVOCATIONS": f"{REGISTRY}/{repo}:current", "HARDEN_KEY_PASSWORD": "pw"}
    a = {**base, "HARDEN_DB": pg_url, "HARDEN_HOME": str(tmp_path / "a")}
    key, pub = f"file:{tmp_path / 'rl.key'}", str(tmp_path / "rl.pub")
    for args in (("init", REGISTRY, "--key", key), ("refresh", REGISTRY, "--key", key)):
        r = harden_cli.run("revocations", *args, env=a)
        assert r.returncode == 0, r.stderr
    v1 = local_registry.get_manifest(repo, "v1")
    local_registry.put_manifest(repo, "current", v1.data, v1.media_type)

    b = {**base, "HARDEN_DB": pg_url, "HARDEN_HOME": str(tmp_path / "b")}
    r = harden_cli.run("revocations", "show", REGISTRY, "--key", pub, env=b)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "rolled back: version 1, version 2 was seen before" in r.stdout + r.stderr
    alone = {**base, "HARDEN_HOME": str(tmp_path / "c")}  # control: a runner without HARDEN_DB
    r = harden_cli.run("revocations", "show", REGISTRY, "--key", pub, env=alone)
    assert r.returncode == 0, r.stdout + r.stderr


def test_content_cache_is_shared_and_checked(pg_url: str) -> None:
    """What one runner cached by digest another reuses; a row that does not match its digest
    is not used; a database that cannot be reached means no cache, not a failure."""
    from harden.state.pg_cache import PgContentCache
    from harden.state.postgres import PgDatabase

    data = b'{"schemaVersion": 2}'
    digest = compute_digest(data)
    first = PgContentCache(PgDatabase(pg_url))
    assert first.get(digest) is None
    first.put(digest, data)
    first.close()
    second = PgContentCache(PgDatabase(pg_url))  # another runner
    assert second.get(digest) == data and second.hits == 1
    _sql(pg_url, "UPDATE content SET data = %s WHERE digest = %s", args=(b"forged", digest))
    assert second.get(digest) is None and second.misses == 1
    second.close()
    down = PgContentCache(PgDatabase(f"postgresql://harden:x@127.0.0.1:{_free_port()}/harden"))
    down.put(digest, data)
    assert down.get(digest) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_database_is_exit_4_in_one_line(tmp_path: Path) -> None:
    url = f"postgresql://harden:secret-pw@127.0.0.1:{_free_port()}/harden"
    env = {"HARDEN_DB": url, "HARDEN_HOME": str(tmp_path)}
    for args in (("audit", "verify"), ("audit", "show")):
        r = harden_cli.run(*args, env=env)
        assert r.returncode == 4, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert lines[0].startswith(
            "error: cannot reach the state database postgresql://harden:***@"
        )
        assert lines[1].startswith("hint: check HARDEN_DB") and len(lines) == 2, r.stderr
        assert "secret-pw" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "url",
    [
        "mysql://harden@127.0.0.1/harden",
        "postgresql://harden@127.0.0.1:port/harden",
        "postgresql://harden@127.0.0.1:5432",
        "postgresql://harden@127.0.0.1:5432/harden?no_such_option=1",
    ],
)
def test_invalid_database_url_is_exit_3(tmp_path: Path, url: str) -> None:
    r = harden_cli.run("audit", "verify", env={"HARDEN_DB": url, "HARDEN_HOME": str(tmp_path)})
    assert r.returncode == 3, r.stdout + r.stderr
    assert r.stderr.startswith("error: HARDEN_DB=") and "\nhint: " in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
