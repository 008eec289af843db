"""The exec-free file-system views and static fact gathering (layer tars made here, no engine)."""

from __future__ import annotations

import datetime as dt
import io
import tarfile
from pathlib import Path
from typing import Any

import pytest
from harden.verifiers.facts import FactLimitExceeded, FactPlan
from harden.verifiers.fsview import DirFs, LayerFs, LimitExceeded, display, index_layer
from harden.verifiers.fsview import resolve as lookup
from harden.verifiers.image_layers import LayerCache
from harden.verifiers.runner import evaluate_rules
from harden.verifiers.static_facts import dpkg_status_lines, gather_static

from harden.baseline.resolve import Catalogue, resolve
from harden.errors import InputError
from harden.target import TargetKind

TODAY = dt.date(2026, 12, 1)


def layer(tmp_path: Path, name: str, members: list[tuple[Any, ...]]) -> tuple[Path, list[Any]]:
    """members: (path, kind, data_or_target, mode, uid); kind in file/dir/sym/hard."""
    path = tmp_path / f"{name}.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            p, kind, data, mode, uid = m
            info = tarfile.TarInfo(
                p if isinstance(p, str) else p.decode("utf-8", "surrogateescape")
            )
            info.mode, info.uid = mode, uid
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with path.open("rb") as f:
        return path, index_layer(f)


def test_whiteouts_and_opaque_dirs_hide_only_lower_layers(tmp_path: Path) -> None:
    low = layer(
        tmp_path,
        "low",
        [
            ("etc", "dir", b"", 0o755, 0),
            ("etc/a", "file", b"a", 0o644, 0),
            ("etc/b", "file", b"b", 0o644, 0),
            ("opt/x/old", "file", b"o", 0o644, 0),
        ],
    )
    high = layer(
        tmp_path,
        "high",
        [
            ("opt/x/new", "file", b"n", 0o644, 0),  # before the opaque marker in the same layer
            ("opt/x/.wh..wh..opq", "file", b"", 0o644, 0),
            ("etc/.wh.a", "file", b"", 0o644, 0),
            ("etc/c", "file", b"c2", 0o600, 7),
        ],
    )
    fs = LayerFs([low, high])
    assert fs.lstat(b"/etc/a") is None
    assert fs.listdir(b"/etc") == [b"b", b"c"]
    assert fs.listdir(b"/opt/x") == [b"new"]
    c = fs.lstat(b"/etc/c")
    assert c is not None and c.mode == 0o600 and c.uid == 7
    assert fs.read(c, 10) == b"c2"
    assert fs.read(fs.lstat(b"/etc/b"), 10) == b"b"  # type: ignore[arg-type]


def test_links_resolve_inside_the_root_and_hardlinks_share_data(tmp_path: Path) -> None:
    fs = LayerFs(
        [
            layer(
                tmp_path,
                "l",
                [
                    ("usr/lib/os-release", "file", b"ID=debian\n", 0o644, 0),
                    ("etc/os-release", "sym", "../usr/lib/os-release", 0o777, 0),
                    ("etc/escape", "sym", "/../../../../etc/hostname", 0o777, 0),
                    ("lib", "sym", "usr/lib", 0o777, 0),
                    ("usr/bin/su", "file", b"SU", 0o4755, 0),
                    ("usr/bin/su2", "hard", "usr/bin/su", 0o4755, 0),
                    ("loop", "sym", "loop", 0o777, 0),
                ],
            )
        ]
    )
    node = lookup(fs, b"/etc/os-release")
    assert node is not None and fs.read(node, 100) == b"ID=debian\n"
    assert lookup(fs, b"/lib/os-release") == node
    assert lookup(fs, b"/etc/escape") is None  # never the host's file
    assert lookup(fs, b"/loop") is None
    su2 = fs.lstat(b"/usr/bin/su2")
    assert su2 is not None and fs.read(su2, 10) == b"SU" and su2.mode == 0o4755


def test_read_over_the_limit_raises(tmp_path: Path) -> None:
    fs = LayerFs([layer(tmp_path, "l", [("etc/login.defs", "file", b"A" * 1000, 0o644, 0)])])
    with pytest.raises(LimitExceeded):
        fs.read(fs.lstat(b"/etc/login.defs"), 999)  # type: ignore[arg-type]


def test_display_is_exact_and_unambiguous() -> None:
    assert display(b"/usr/bin/passwd\netc") == "/usr/bin/passwd\\netc"
    assert display(b"/a\\nb") == "/a\\\\nb"
    assert display(b"/x\xff\x01") == "/x\\xff\\x01"
    assert display("/é".encode()) == "/é"


def test_dpkg_status_is_parsed_by_harden() -> None:
    text = (
        "Package: openssh-server\nStatus: install ok installed\nDescription: x\n y\n\n"
        "Package: old\nStatus: deinstall ok config-files\n\n"
        "Package: broken\nStatus: install reinstreq half-installed\n"
    )
    assert list(dpkg_status_lines(text)) == [
        "ii \topenssh-server",
        "rc \told",
        "iHR\tbroken",
    ]


def _facts(fs: LayerFs | DirFs) -> tuple[Any, Any]:
    bl = resolve(Catalogue.from_search_path(), "debian-container")
    plan = FactPlan.for_rules(bl.rules, TargetKind.CONTAINER)
    return bl, gather_static(fs, plan)


def test_static_facts_read_accounts_packages_and_suid_names_exactly(tmp_path: Path) -> None:
    passwd = b"root:x:0:0:root:/root:/bin/bash\n" + b"".join(
        b"u%d:x:%d:100::/:/usr/sbin/nologin\n" % (i, 20000 + i) for i in range(10_000)
    )
    passwd += b"toor:x:0:0::/root:/usr/sbin/nologin\n"
    fs = LayerFs(
        [
            layer(
                tmp_path,
                "l",
                [
                    ("etc/os-release", "file", b"ID=debian\nVERSION_ID=12\n", 0o644, 0),
                    ("etc/passwd", "file", passwd, 0o644, 0),
                    ("etc/group", "file", b"root:x:0:\n", 0o644, 0),
                    ("etc/shadow", "file", b"root:*:1:0:99999:7:::\n", 0o640, 0),
                    (
                        "var/lib/dpkg/status",
                        "file",
                        b"Package: sudo\nStatus: install ok installed\n",
                        0o644,
                        0,
                    ),
                    (b"usr/bin/passwd\netc", "file", b"x", 0o4755, 0),
                    ("usr/bin/passwd", "file", b"x", 0o4755, 0),
                    ("tmp", "dir", b"", 0o777, 0),
                ],
            )
        ]
    )
    bl, facts = _facts(fs)
    assert "sudo" in facts.installed_packages()
    assert facts.lines("suid") == ["/usr/bin/passwd", "/usr/bin/passwd\\netc"]
    results = {r.rule_id: r for r in evaluate_rules(bl, facts, TargetKind.CONTAINER, {}, TODAY)}
    assert results["accounts.uid0-only-root"].status.value == "failed"
    assert "toor" in results["accounts.uid0-only-root"].evidence[0]
    assert results["pkg.sudo-absent"].status.value == "failed"
    assert results["fs.suid-sgid-allowlist"].status.value == "failed"
    assert results["fs.suid-sgid-allowlist"].evidence == (
        "setuid/setgid not on the allow-list: /usr/bin/passwd\\netc",
    )


def test_a_file_over_the_limit_is_an_error_result_with_evidence(tmp_path: Path) -> None:
    fs = LayerFs(
        [
            layer(
                tmp_path,
                "l",
                [
                    ("etc/os-release", "file", b"ID=debian\nVERSION_ID=12\n", 0o644, 0),
                    ("etc/login.defs", "file", b"A" * (2 << 20), 0o644, 0),
                ],
            )
        ]
    )
    bl, facts = _facts(fs)
    with pytest.raises(FactLimitExceeded):
        facts.file("/etc/login.defs")
    results = {r.rule_id: r for r in evaluate_rules(bl, facts, TargetKind.CONTAINER, {}, TODAY)}
    reads_login_defs = {
        r.id for r in bl.rules if str(getattr(r.spec, "path", "")) == "/etc/login.defs"
    }
    login = [results[k] for k in sorted(reads_login_defs)]
    assert login and all(r.status.value == "error" for r in login)
    assert all("more than the limit" in r.evidence[0] for r in login)


def test_directory_view_never_follows_links_out_of_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("ID=debian\nVERSION_ID=12\n")
    (root / "etc" / "passwd").symlink_to("/etc/hostname")  # absolute: inside the root
    fs = DirFs(root)
    assert lookup(fs, b"/etc/passwd") is None  # /etc/hostname does not exist in the root
    _, facts = _facts(fs)
    assert facts.os_release()["ID"] == "debian"
    assert facts.get("passwd") == ""


def test_cache_keys_are_checked_digests(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "c")
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("etc/x")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    data.seek(0)
    key, tmp, entries = cache.put_stream(data)
    assert key.startswith("diff:sha256:")
    cache.commit(key, tmp, entries)
    hit = cache.get(key)
    assert hit is not None and [e.path for e in hit[1]] == [b"/etc/x"]
    with pytest.raises(InputError):
        cache.get("sha256:" + "0" * 64)  # a bare diff id from a config never names an entry
