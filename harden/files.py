"""One home for two file facts: the sha256 digest of a file and an atomic write.

Every module that hashes a file (VM templates, base disks, artifact layers) or writes a result
(reports, schemas, manifests, attestations beside a template) goes through these, so a digest is
always ``sha256:<hex>`` and a crash never leaves half a file.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

READ_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """``sha256:<hex>`` of the file at ``path`` (read in 1 MiB chunks; OSError propagates)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return sha256_fd(fd)
    finally:
        os.close(fd)


def sha256_fd(fd: int) -> str:
    """``sha256:<hex>`` of an open file from its start (``pread``: the offset is untouched), so
    a caller that inspected this very inode hashes it and not whatever the path names now."""
    h = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, READ_CHUNK, offset):
        h.update(chunk)
        offset += len(chunk)
    return "sha256:" + h.hexdigest()


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically: a temp file beside it, fsync, chmod, rename.

    A path that exists and is not a regular file (``-o /dev/null``, ``/dev/stdout``, a FIFO) is
    written through, never replaced: renaming over it would put a file where a device was."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
            with open(path, "wb") as f:
                f.write(data)
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
