"""harden.files.write_atomic: replace regular files atomically, write through anything else."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from harden.files import write_atomic


def test_regular_file_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "report.json"
    write_atomic(target, b"first")
    write_atomic(target, b"second", mode=0o600)
    assert target.read_bytes() == b"second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]  # no temp file left


def test_a_fifo_is_written_through_not_replaced(tmp_path: Path) -> None:
    # `-o /dev/null` or `-o /dev/stdout` in CI: renaming a temp file over the path would put a
    # regular file where the device was (here a FIFO stands in for the device)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_atomic(fifo, b"through the pipe")
    reader.join(timeout=30)
    assert got == [b"through the pipe"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_a_directory_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    with pytest.raises(OSError):
        write_atomic(tmp_path / "out", b"data")
    assert (tmp_path / "out" / "keep").read_text() == "x"
