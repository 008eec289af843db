"""Disk images a user hands to harden (``harden verify FILE.qcow2``, a VM definition's base disk).

Every such file may be hostile. Before qemu sees it, :func:`inspect_disk`:

1. opens it once (a regular file, read-only) and keeps that descriptor: everything later (the
   checks, the sha256, qemu itself via ``-add-fd``) reads this inode, never the path again;
2. reads the qcow2 header itself (magic, version, backing file offset, external data file bit
   and header extension, encryption, table offsets against the file size, virtual size) without
   any external program, so a backing file or data file is refused before qemu parses anything;
3. runs ``qemu-img info --output=json`` (bounded: timeout, output size) on an explicit
   ``json:`` description of the image (``driver`` set, ``backing: null``): no format probing,
   no backing chain opened; its answer must agree (format, no backing, no data file, size);
4. runs ``qemu-img check`` on the same description (qcow2): truncated or corrupt images are
   refused.

Refusals are :class:`DiskImageError` (exit 3, invalid input) with a hint.

Formats: a ``.qcow2`` file must be qcow2; ``.raw`` must be raw; ``.img`` may be either (both
conventions exist). Other formats (vmdk, vhdx, qed, vdi, LUKS, ...) are refused: their metadata
can name further host files. The virtual size is limited (default 64 GiB;
``HARDEN_VM_MAX_VIRTUAL_SIZE`` changes it, e.g. ``200G``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import resource
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from harden.builder import children

from harden.errors import InputError, TargetError
from harden.files import sha256_fd

QEMU_IMG = "qemu-img"
QCOW2_MAGIC = b"QFI\xfb"
DEFAULT_MAX_VIRTUAL_SIZE = 64 << 30
MAX_VIRTUAL_SIZE_ENV = "HARDEN_VM_MAX_VIRTUAL_SIZE"
INFO_TIMEOUT = 30.0
CHECK_TIMEOUT = 300.0
HEADER_READ = 64 * 1024
QEMU_IMG_MEMORY = 2 << 30  # RLIMIT_AS for qemu-img on a hostile file

# qcow2 (docs/interop/qcow2.txt in qemu)
_INCOMPAT_DIRTY = 1 << 0
_INCOMPAT_CORRUPT = 1 << 1
_INCOMPAT_DATA_FILE = 1 << 2
_EXT_END = 0x00000000
_EXT_DATA_FILE = 0x44415441
_EXT_ENCRYPTION = 0x0537BE77
_EXT_BACKING_FORMAT = 0xE2792ACA

# other formats, refused by name (their metadata may name more host files)
_OTHER_MAGICS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"KDMV", "vmdk"),
    (0, b"# Disk DescriptorFile", "vmdk descriptor"),
    (0, b"vhdxfile", "vhdx"),
    (0, b"conectix", "vhd"),
    (0, b"QED\x00", "qed"),
    (0, b"LUKS\xba\xbe", "LUKS"),
    (0x40, b"\x7f\x10\xda\xbe", "vdi"),
    (0, b"QFI\xfb", "qcow2"),
    (0, b"OOOM", "qcow (version 1)"),
    (0, b"WithoutFreSpacExt", "parallels"),
    (0, b"cloop", "cloop"),
    (0, b"DMG", "dmg"),
)

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgtpe]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


class DiskImageError(InputError):
    """A disk image harden refuses to open (exit 3)."""


def parse_size(text: str) -> int:
    """``"64G"``, ``"64GiB"``, ``"512m"``, ``"1073741824"`` -> bytes (binary units)."""
    m = _SIZE_RE.match(text)
    if m is None:
        raise InputError(
            f"{MAX_VIRTUAL_SIZE_ENV}={text!r} is not a size",
            hint="write a number of bytes or a number with K, M, G, T or P (binary units), e.g. 200G",
        )
    return int(m.group(1)) << _UNITS[m.group(2).lower()]


def max_virtual_size(env: Mapping[str, str] | None = None) -> int:
    environ = os.environ if env is None else env
    text = environ.get(MAX_VIRTUAL_SIZE_ENV, "").strip()
    return parse_size(text) if text else DEFAULT_MAX_VIRTUAL_SIZE


def human_size(n: int) -> str:
    for unit, shift in (("EiB", 60), ("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def expected_formats(path: Path) -> tuple[str, ...]:
    suffix = path.suffix.lower()
    if suffix == ".qcow2":
        return ("qcow2",)
    if suffix == ".raw":
        return ("raw",)
    return ("qcow2", "raw")  # .img and anything else: both conventions exist


def _printable(raw: bytes, limit: int = 200) -> str:
    text = raw[:limit].decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text + ("..." if len(raw) > limit else "")


# -- the qcow2 header, read by harden itself ----------------------------------------------------------
@dataclass(frozen=True)
class Qcow2Header:
    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible_features: int
    extensions: tuple[tuple[int, bytes], ...]

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    def extension(self, kind: int) -> bytes | None:
        return next((data for k, data in self.extensions if k == kind), None)


def parse_qcow2_header(data: bytes, name: str) -> Qcow2Header:
    """The fixed header and its extensions from the first bytes of a qcow2 file."""

    def corrupt(why: str) -> DiskImageError:
        return DiskImageError(
            f"{name}: the qcow2 header is malformed ({why})",
            hint="the file is corrupt or not a qcow2 image; `qemu-img check` shows the details",
        )

    if len(data) < 72 or data[:4] != QCOW2_MAGIC:
        raise corrupt("shorter than a qcow2 header")
    (
        _magic,
        version,
        backing_offset,
        backing_size,
        cluster_bits,
        size,
        crypt,
        l1_size,
        l1_offset,
        rt_offset,
        rt_clusters,
        nb_snapshots,
        snapshots_offset,
    ) = struct.unpack_from(">4sIQIIQIIQQIIQ", data, 0)
    if version not in (2, 3):
        raise corrupt(f"version {version}; harden reads versions 2 and 3")
    incompatible = 0
    header_length = 72
    if version == 3:
        if len(data) < 104:
            raise corrupt("a version 3 header is shorter than 104 bytes")
        incompatible, _compat, _autoclear, _refcount_order, header_length = struct.unpack_from(
            ">QQQII", data, 72
        )
        if header_length < 104 or header_length > len(data):
            raise corrupt(f"header length {header_length}")
    if not 9 <= cluster_bits <= 21:
        raise corrupt(f"cluster_bits {cluster_bits}")
    extensions: list[tuple[int, bytes]] = []
    offset = (header_length + 7) & ~7
    while offset + 8 <= min(len(data), 1 << cluster_bits):
        kind, length = struct.unpack_from(">II", data, offset)
        if kind == _EXT_END:
            break
        body = data[offset + 8 : offset + 8 + length]
        if len(body) != length:
            raise corrupt(f"header extension 0x{kind:08x} runs past the first cluster")
        extensions.append((kind, body))
        offset += 8 + ((length + 7) & ~7)
        if len(extensions) > 1024:
            raise corrupt("more than 1024 header extensions")
    return Qcow2Header(
        version=version,
        backing_file_offset=backing_offset,
        backing_file_size=backing_size,
        cluster_bits=cluster_bits,
        size=size,
        crypt_method=crypt,
        l1_size=l1_size,
        l1_table_offset=l1_offset,
        refcount_table_offset=rt_offset,
        refcount_table_clusters=rt_clusters,
        nb_snapshots=nb_snapshots,
        snapshots_offset=snapshots_offset,
        incompatible_features=incompatible,
        extensions=tuple(extensions),
    )


def _backing_refusal(name: str, backing: str) -> DiskImageError:
    kind = "a json: backing specification" if backing.startswith("json:") else "a backing file"
    return DiskImageError(
        f"{name}: refused: the qcow2 image names {kind} ({_printable(backing.encode())}); "
        "harden opens only standalone images, never a file named inside an image",
        hint="flatten it where that backing file is meant to be read: "
        "qemu-img convert -O qcow2 IMAGE standalone.qcow2",
    )


def _data_file_refusal(name: str, data_file: str) -> DiskImageError:
    return DiskImageError(
        f"{name}: refused: the qcow2 image keeps its data in an external file "
        f"({_printable(data_file.encode()) or 'name not recorded'}); harden opens only "
        "standalone images",
        hint="convert it into a standalone image: qemu-img convert -O qcow2 IMAGE standalone.qcow2",
    )


def _too_big(name: str, size: int, limit: int) -> DiskImageError:
    return DiskImageError(
        f"{name}: refused: virtual size {human_size(size)} ({size} bytes) is larger than the "
        f"limit {human_size(limit)}",
        hint=f"if an image this large is expected, raise the limit: {MAX_VIRTUAL_SIZE_ENV}=SIZE "
        "(e.g. 200G)",
    )


def _truncated(name: str, why: str) -> DiskImageError:
    return DiskImageError(
        f"{name}: refused: the image is truncated or corrupt ({why})",
        hint="copy or download it again; `qemu-img check IMAGE` shows the details",
    )


def check_qcow2_header(header: Qcow2Header, file_size: int, name: str, limit: int) -> None:
    """Refuse what a qcow2 header alone shows: backing file, data file, encryption, size, EOF."""
    if header.backing_file_offset or header.backing_file_size:
        start, length = header.backing_file_offset, min(header.backing_file_size, 1023)
        raise _backing_refusal(name, f"{length} bytes at offset {start}")
    data_file = header.extension(_EXT_DATA_FILE)
    if header.incompatible_features & _INCOMPAT_DATA_FILE or data_file is not None:
        raise _data_file_refusal(name, (data_file or b"").decode("utf-8", "backslashreplace"))
    if header.crypt_method or header.extension(_EXT_ENCRYPTION) is not None:
        raise DiskImageError(
            f"{name}: refused: the qcow2 image is encrypted",
            hint="decrypt it into a plain qcow2 first (qemu-img convert with --object secret)",
        )
    if header.incompatible_features & _INCOMPAT_CORRUPT:
        raise _truncated(name, "qemu marked it corrupt")
    if header.size > limit:
        raise _too_big(name, header.size, limit)
    cluster = header.cluster_size
    regions = (
        ("L1 table", header.l1_table_offset, header.l1_size * 8),
        ("refcount table", header.refcount_table_offset, header.refcount_table_clusters * cluster),
        ("snapshot table", header.snapshots_offset, 1 if header.nb_snapshots else 0),
    )
    for what, offset, length in regions:
        if length and offset + length > file_size:
            raise _truncated(
                name, f"the {what} ends at byte {offset + length}, the file has {file_size}"
            )


def _with_backing_name(header: Qcow2Header, data: bytes) -> str:
    """The backing file name as recorded (for the refusal message), bounded."""
    start, length = header.backing_file_offset, min(header.backing_file_size, 1023)
    if start > 0 and start + length <= len(data):
        return data[start : start + length].decode("utf-8", "backslashreplace")
    return f"{header.backing_file_size} bytes at offset {start}"


# -- what qemu-img says --------------------------------------------------------------------------
def analyse_info(
    info: Mapping[str, Any], name: str, formats: tuple[str, ...], limit: int
) -> tuple[str, int]:
    """(format, virtual size) from ``qemu-img info --output=json``, or a refusal."""
    fmt = str(info.get("format", ""))
    if fmt not in formats:
        raise _wrong_format(name, formats, fmt or "unknown")
    for key in ("full-backing-filename", "backing-filename"):
        if info.get(key):
            raise _backing_refusal(name, str(info[key]))
    if "backing-filename-format" in info or "backing-image" in info:
        raise _backing_refusal(name, str(info.get("backing-filename-format", "?")))
    specific = (info.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file") or "data-file-raw" in specific:
        raise _data_file_refusal(name, str(specific.get("data-file", "")))
    if info.get("encrypted"):
        raise DiskImageError(f"{name}: refused: the image is encrypted")
    if specific.get("corrupt"):
        raise _truncated(name, "qemu marked it corrupt")
    size = info.get("virtual-size")
    if not isinstance(size, int) or size < 0:
        raise _truncated(name, f"no usable virtual size ({size!r})")
    if size > limit:
        raise _too_big(name, size, limit)
    return fmt, size


def _wrong_format(name: str, formats: tuple[str, ...], found: str) -> DiskImageError:
    want = " or ".join(formats)
    suffix = Path(name).suffix or "(no suffix)"
    return DiskImageError(
        f"{name}: refused: a {suffix} file must be {want}, this one is {found}",
        hint="name raw disks .img or .raw; convert other formats first: "
        "qemu-img convert -O qcow2 IMAGE standalone.qcow2",
    )


def _sniff(head: bytes) -> str:
    for offset, magic, fmt in _OTHER_MAGICS:
        if head[offset : offset + len(magic)] == magic:
            return fmt
    return "raw"


# -- the inspected image -------------------------------------------------------------------------
def blockdev_spec(fmt: str, filename: str, *, read_only: bool = True) -> dict[str, Any]:
    """A qemu block node for ``filename`` with the format fixed and no backing chain."""
    spec: dict[str, Any] = {
        "driver": fmt,
        "read-only": read_only,
        "file": {"driver": "file", "filename": filename, "read-only": read_only},
    }
    if fmt == "qcow2":
        spec["backing"] = None
    return spec


def json_filename(spec: Mapping[str, Any]) -> str:
    return "json:" + json.dumps(spec, separators=(",", ":"))


@dataclass
class DiskImage:
    """An inspected disk image, held open by ``fd``. A context manager that closes it."""

    path: Path
    fd: int
    format: str  # "qcow2" | "raw"
    virtual_size: int
    file_size: int

    def spec(self, filename: str | None = None) -> dict[str, Any]:
        """The block node for this image (``filename`` defaults to ``/dev/fd/FD``)."""
        return blockdev_spec(self.format, filename or f"/dev/fd/{self.fd}")

    def sha256(self) -> str:
        """``sha256:<hex>`` of the very inode that was inspected."""
        return sha256_fd(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> DiskImage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _open_regular(path: Path) -> tuple[int, os.stat_result]:
    try:
        # O_NONBLOCK: a FIFO must not hang harden; cleared below for a regular file
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError as e:
        raise DiskImageError(f"{path}: no such disk image") from e
    except OSError as e:
        raise DiskImageError(f"{path}: cannot open the disk image: {e.strerror}") from e
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise DiskImageError(
            f"{path}: refused: not a regular file",
            hint="harden opens disk images from regular files only (no devices, FIFOs, sockets)",
        )
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
    return fd, st


def _qemu_img(args: list[str], fd: int, timeout: float, what: str) -> Any:
    try:
        return children.run(
            [QEMU_IMG, *args],
            timeout=timeout,
            pass_fds=(fd,),
            limits=[(resource.RLIMIT_AS, QEMU_IMG_MEMORY)],
            check=False,
        )
    except FileNotFoundError as e:
        raise TargetError(f"{QEMU_IMG} is not installed", hint="apt-get install qemu-utils") from e
    except children.ChildFailed as e:
        raise DiskImageError(
            f"refused: {what}: {e}",
            hint="the image makes qemu-img work too long or too much; it is not checked",
        ) from e


def inspect_disk(
    path: Path,
    *,
    max_size: int | None = None,
    formats: tuple[str, ...] | None = None,
    check: bool = True,
) -> DiskImage:
    """Open and inspect ``path`` (see the module docstring); the caller closes the result."""
    path = Path(path).absolute()
    name = str(path)
    limit = max_virtual_size() if max_size is None else max_size
    allowed = formats or expected_formats(path)
    fd, st = _open_regular(path)
    try:
        head = os.pread(fd, HEADER_READ, 0)
        found = _sniff(head)
        header: Qcow2Header | None = None
        if found not in allowed:
            raise _wrong_format(name, allowed, found if found != "raw" else "raw data")
        if found == "qcow2":
            header = parse_qcow2_header(head, name)
            if header.backing_file_offset or header.backing_file_size:
                raise _backing_refusal(name, _with_backing_name(header, head))
            check_qcow2_header(header, st.st_size, name, limit)
        elif st.st_size > limit:
            raise _too_big(name, st.st_size, limit)
        spec = json_filename(blockdev_spec(found, f"/dev/fd/{fd}"))
        proc = _qemu_img(
            ["info", "--output=json", spec], fd, INFO_TIMEOUT, f"{name}: qemu-img info"
        )
        if proc.returncode != 0:
            raise _truncated(
                name, _first_line(proc.stderr) or f"qemu-img info exit {proc.returncode}"
            )
        try:
            info = json.loads(proc.stdout)
        except ValueError as e:
            raise _truncated(name, f"qemu-img info gave no JSON: {e}") from e
        fmt, size = analyse_info(info, name, (found,), limit)
        if header is not None and size != header.size:
            raise _truncated(name, f"header size {header.size} but qemu-img sees {size}")
        if check and fmt == "qcow2":
            proc = _qemu_img(
                ["check", "--output=json", spec], fd, CHECK_TIMEOUT, f"{name}: qemu-img check"
            )
            # 0 clean, 3 only leaked clusters (harmless, space only); 2 corrupt, 1 not checkable
            if proc.returncode not in (0, 3):
                try:
                    report = json.loads(proc.stdout)
                except ValueError:
                    report = {}
                count = report.get("corruptions") or report.get("check-errors")
                detail = (
                    f"{count} corruptions" if count else f"qemu-img check exit {proc.returncode}"
                )
                line = _first_line(proc.stderr)
                raise _truncated(name, detail + (f"; first: {line}" if line else ""))
        return DiskImage(path, fd, fmt, size, st.st_size)
    except BaseException:
        os.close(fd)
        raise


def check_overlay(path: Path) -> None:
    """Refuse an overlay (written through qemu, which a guest may have subverted) whose header
    asks for an external data file or encryption; its backing name is ignored by whoever passes
    the backing explicitly (:func:`builder.qemu.seal`)."""
    with open(path, "rb") as f:
        head = f.read(HEADER_READ)
    header = parse_qcow2_header(head, str(path))
    if header.incompatible_features & _INCOMPAT_DATA_FILE or header.extension(_EXT_DATA_FILE):
        raise _data_file_refusal(str(path), "")
    if header.crypt_method or header.extension(_EXT_ENCRYPTION) is not None:
        raise DiskImageError(f"{path}: refused: the overlay is encrypted")


def _first_line(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    return _printable(text.splitlines()[0].encode(), 300) if text else ""
