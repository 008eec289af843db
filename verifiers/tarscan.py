"""A small, strict reader of tar headers: what a layer index needs, nothing else.

:func:`scan` walks the headers of an uncompressed tar file (ustar, POSIX pax, GNU) and yields one
:class:`TarMember` per file-system entry: its name (ustar ``prefix``/``name``, a pax ``path``
record or a GNU ``L`` long name), type, mode, owner, size, link target (``linkname``, ``linkpath``
or a GNU ``K`` long link) and where its data starts. Data is never read, only skipped; a header is
read with one ``pread`` of 512 bytes, so a 120 MB layer of 10,000 members costs 10,000 small
reads and no copy of its content.

It is strict where Python's :mod:`tarfile` is lenient, and follows Go's ``archive/tar`` (the
reader of the Docker Engine and containerd, which decide what a container's file system is) where
the two differ. A header that the two readers could understand differently is refused, never
guessed at. :class:`TarFormatError` (an :class:`~harden.errors.InputError`) is raised for:

- a truncated header, truncated member data or a truncated extended header;
- a checksum that does not match (anywhere in the archive, not only in the first header: tarfile
  takes a bad header after the first one for the end of the archive and silently drops the rest);
- a numeric field that is not octal digits between optional spaces and NUL padding (a leading
  NUL before the digits reads 0 to tarfile and the digits to Go), a negative or overflowing
  base-256 number, a checksum in base-256;
- one end-of-archive block followed by anything but a second one or the end of the file;
- member types a layer has no business holding (GNU sparse, contiguous, multi-volume, ...) and
  pax ``GNU.sparse.*`` records;
- a non-ustar header (GNU or V7) with bytes in the ustar prefix area (tarfile prepends them to
  the name, Go ignores them), the star format;
- a pax extended header whose records do not fill it exactly (``"%d %s=%s\\n"``, length
  checked), a NUL in a ``path``/``linkpath``/``uname``/``gname`` record, a ``size``/``uid``/
  ``gid`` record that is not decimal digits; two pax headers, two GNU long names or two long
  links before one member, a pax ``path`` together with a GNU long name (tarfile and Go pick
  different ones); a global pax header that sets a field of the members (tarfile applies it to
  every later member, Go ignores it);
- an extended header (pax or GNU) larger than :data:`MAX_EXTENDED_BYTES` (Go's own limit), one at
  the end of the archive, an empty GNU long name.

Every length is bounded: by the file (a member's data must be in it), by
:data:`MAX_EXTENDED_BYTES` (what is read into memory) and by the caller's limits on names and
entries.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

from harden.errors import InputError

BLOCK = 512
MAX_EXTENDED_BYTES = 1 << 20  # a pax header or a GNU long name/link (Go's maxSpecialFileSize)
ZERO_BLOCK = bytes(BLOCK)
_NO_PREFIX = bytes(155)

# type flags
REG, AREG, LINK, SYM, CHR, BLK, DIR, FIFO = b"0", b"\0", b"1", b"2", b"3", b"4", b"5", b"6"
PAX, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK = b"x", b"g", b"L", b"K"
_HEADER_ONLY = frozenset({LINK, SYM, CHR, BLK, DIR, FIFO})  # their size field is ignored
_MEMBER_TYPES = frozenset({REG, AREG}) | _HEADER_ONLY
_EXTENDED = frozenset({PAX, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK})
# pax records that change a member as harden reads it (mtime, uname, gname: not read)
_PAX_FIELDS = (b"path", b"linkpath", b"size", b"uid", b"gid")
_NO_NUL = (b"path", b"linkpath", b"uname", b"gname")
_MAX_DIGITS = 20  # a decimal pax number (2**64 has 20 digits)

# the numeric fields (mode, uid, gid, size, mtime, checksum) as Go and tarfile write them: zero
# padded octal and a NUL (the checksum: six digits, NUL, space). Anything else takes the general
# parser, which accepts the same values and refuses what the two readers could read differently.
_CANONICAL = re.compile(
    rb"([0-7]{7})\0([0-7]{7})\0([0-7]{7})\0([0-7]{11})\0[0-7]{11}\0([0-7]{6})\0 "
)
_CANONICAL_DEV = re.compile(rb"(?:[0-7]{7}\0|\0{8}){2}")

_USTAR_MAGIC = b"ustar\0"  # + version "00" (Go does not check it)
_GNU_MAGIC = b"ustar  \0"
_STAR_TRAILER = b"tar\0"


class TarFormatError(InputError):
    """A tar header harden does not accept: malformed, truncated or ambiguous."""


class TarLimitError(TarFormatError):
    """An extended header larger than :data:`MAX_EXTENDED_BYTES`."""


class TarMember(NamedTuple):
    """One file-system entry of a tar archive, as its headers describe it."""

    name: bytes  # raw bytes, as stored (not normalised)
    type: bytes  # REG (also for a "\\0" member), LINK, SYM, CHR, BLK, DIR or FIFO
    mode: int  # the whole mode field (permission, set-id and sticky bits in the low 12)
    uid: int
    gid: int
    size: int  # bytes of data (0 for every type but REG)
    linkname: bytes  # hard link or symlink target, raw; b"" when none
    offset: int  # offset of the member's own header block
    offset_data: int  # offset of its data


class Source:
    """Where :func:`scan` reads: bytes at an offset, and whether the data reaches an offset.
    A plain file is a :class:`FileSource`; a layer still streaming into its cache file is one
    whose reads wait for (pull) the bytes they need."""

    def read_at(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset``; fewer only where the data ends."""
        raise NotImplementedError

    def holds(self, end: int) -> bool:
        """Whether the data is at least ``end`` bytes long."""
        raise NotImplementedError


class FileSource(Source):
    """A seekable binary file; a real one (with a descriptor) is read with ``pread``."""

    def __init__(self, fileobj: BinaryIO) -> None:
        try:
            fd = fileobj.fileno()
        except (AttributeError, OSError, ValueError):
            fd = -1
        self._file = fileobj
        self._fd = fd
        if fd >= 0:
            fileobj.flush()  # a file being written (a layer tar that was just streamed)
            self.size = os.fstat(fd).st_size
        else:
            self.size = fileobj.seek(0, os.SEEK_END)

    def read_at(self, offset: int, size: int) -> bytes:
        if self._fd >= 0:
            return os.pread(self._fd, size, offset)
        self._file.seek(offset)
        return self._file.read(size)

    def holds(self, end: int) -> bool:
        return end <= self.size


def _cut(field: bytes) -> bytes:
    """A string field: everything before the first NUL (tarfile and Go agree)."""
    i = field.find(0)
    return field if i < 0 else field[:i]


def _octal(field: bytes, what: str, pos: int) -> int:
    head = _cut(field)
    digits = head.strip(b" ")
    if not digits:
        # empty: all NUL or spaces. "\0\0644" would be 0 to tarfile and 0644 to Go
        if field.strip(b"\0 "):
            raise TarFormatError(f"offset {pos}: the {what} field {field!r} is not a number")
        return 0
    if not digits.isdigit():  # ASCII digits only: no sign, no "_", no tab
        raise TarFormatError(f"offset {pos}: the {what} field {field!r} is not a number")
    try:
        return int(digits, 8)
    except ValueError:  # an 8 or a 9
        raise TarFormatError(
            f"offset {pos}: the {what} field {field!r} is not an octal number"
        ) from None


def _number(field: bytes, what: str, pos: int, *, negative: bool = False) -> int:
    """A numeric field: octal text, or GNU base-256 (first byte 0x80, big-endian; 0xff for a
    negative number, accepted only where ``negative`` says so: an mtime before 1970)."""
    first = field[0]
    if first & 0x80:
        if first == 0xFF and negative:
            return int.from_bytes(field, "big", signed=True)
        if first != 0x80:  # tarfile reads only 0x80 and 0xff as base-256 markers
            raise TarFormatError(f"offset {pos}: the {what} field is not a valid base-256 number")
        value = int.from_bytes(field[1:], "big")
        if value >> 63:
            raise TarFormatError(f"offset {pos}: the {what} field overflows")
        return value
    return _octal(field, what, pos)


def _checksum_ok(blk: bytes, stored: int) -> bool:
    """The header sum with the checksum field counted as spaces, unsigned or signed bytes (both
    are accepted by tarfile and Go). adler32's low half is 1 + the byte sum modulo 65521: exact
    for at most 256 bytes (256 * 255 + 1 < 65521), so the header is summed in three pieces."""
    unsigned = (
        (zlib.adler32(blk[:148]) & 0xFFFF)
        + (zlib.adler32(blk[156:412]) & 0xFFFF)
        + (zlib.adler32(blk[412:]) & 0xFFFF)
        - 3
        + 8 * 32
    )
    if stored == unsigned:
        return True
    high = sum(1 for b in blk[:148] if b & 0x80) + sum(1 for b in blk[156:] if b & 0x80)
    return stored == unsigned - 256 * high


def _pax_records(data: bytes, pos: int) -> dict[bytes, bytes]:
    """The records of a pax extended header: ``"%d %s=%s\\n"`` each, filling it exactly."""
    out: dict[bytes, bytes] = {}
    i, end = 0, len(data)
    while i < end:
        sp = data.find(b" ", i, min(end, i + _MAX_DIGITS + 1))
        digits = data[i:sp] if sp > i else b""
        if not digits.isdigit():
            raise TarFormatError(f"offset {pos}: a pax record has no valid length")
        length = int(digits)
        stop = i + length
        if length < 5 or stop > end or data[stop - 1] != 0x0A:
            raise TarFormatError(f"offset {pos}: a pax record has a wrong length")
        key, eq, value = data[sp + 1 : stop - 1].partition(b"=")
        if not eq or not key or b"\0" in key:
            raise TarFormatError(f"offset {pos}: a pax record is not KEY=VALUE")
        if key in _NO_NUL and b"\0" in value:  # Go refuses these; tarfile keeps the NUL
            raise TarFormatError(f"offset {pos}: a pax {key.decode()} record holds a NUL byte")
        if key.startswith(b"GNU.sparse."):
            raise TarFormatError(f"offset {pos}: sparse files are not supported in a layer")
        out[key] = value  # a repeated key: the last one counts (tarfile and Go agree)
        i = stop
    return out


def _pax_number(records: dict[bytes, bytes], key: bytes, default: int, pos: int) -> int:
    value = records.get(key)
    if value is None:
        return default
    if not value.isdigit() or len(value) > _MAX_DIGITS:
        raise TarFormatError(f"offset {pos}: the pax {key.decode()} record {value[:40]!r} is bad")
    return int(value)


def scan(tar: BinaryIO | Source) -> Iterator[TarMember]:
    """The members of an uncompressed tar, in order (see the module docstring for what is
    refused). ``tar`` is a seekable binary file or a :class:`Source`."""
    src = tar if isinstance(tar, Source) else FileSource(tar)
    read_at, holds = src.read_at, src.holds
    pos = 0
    pax: dict[bytes, bytes] | None = None
    long_name: bytes | None = None
    long_link: bytes | None = None
    while True:
        blk = read_at(pos, BLOCK)
        if len(blk) < BLOCK:
            pending = pax is not None or long_name is not None or long_link is not None
            if blk or pos == 0 or pending:
                what = "an empty file" if pos == 0 and not blk else "truncated"
                raise TarFormatError(f"offset {pos}: {what} (a tar header is {BLOCK} bytes)")
            return  # the data ends at a header boundary, without end-of-archive blocks
        if blk == ZERO_BLOCK:
            if pax is not None or long_name is not None or long_link is not None:
                raise TarFormatError(f"offset {pos}: an extended header without a member")
            nxt = read_at(pos + BLOCK, BLOCK)
            if nxt and nxt != ZERO_BLOCK:
                raise TarFormatError(
                    f"offset {pos + BLOCK}: data after an end-of-archive block that is not "
                    "a second one"
                )
            return
        fast = _CANONICAL.match(blk, 100)
        if fast is not None:
            f_mode, f_uid, f_gid, f_size, f_sum = fast.group(1, 2, 3, 4, 5)
            mode, uid, gid, size = int(f_mode, 8), int(f_uid, 8), int(f_gid, 8), int(f_size, 8)
            stored = int(f_sum, 8)
        else:
            if blk[148] & 0x80:
                raise TarFormatError(f"offset {pos}: bad header checksum")
            stored = _octal(blk[148:156], "checksum", pos)
            mode = _number(blk[100:108], "mode", pos)
            uid = _number(blk[108:116], "uid", pos)
            gid = _number(blk[116:124], "gid", pos)
            size = _number(blk[124:136], "size", pos)
            _number(blk[136:148], "mtime", pos, negative=True)
        if not _checksum_ok(blk, stored):
            raise TarFormatError(f"offset {pos}: bad header checksum")

        kind = blk[156:157]
        if kind not in _MEMBER_TYPES and kind not in _EXTENDED:
            raise TarFormatError(
                f"offset {pos}: tar member type {kind!r} is not supported in a layer"
            )
        name = blk[:100].partition(b"\0")[0]
        magic = blk[257:265]
        if magic[:6] == _USTAR_MAGIC:
            if blk[508:] == _STAR_TRAILER:
                raise TarFormatError(f"offset {pos}: the star tar format is not supported")
            _devices(blk, pos)
            prefix = blk[345:500].partition(b"\0")[0]
            if prefix:
                name = prefix + b"/" + name
        else:
            if magic == _GNU_MAGIC:
                _devices(blk, pos)
            if blk[345:500] != _NO_PREFIX:
                # GNU atime/ctime/sparse data, or a V7 header with a prefix: tarfile reads it as
                # a name prefix, Go does not
                raise TarFormatError(
                    f"offset {pos}: a non-ustar header with data in the ustar prefix area"
                )

        data = pos + BLOCK
        if kind in _EXTENDED:
            if size > MAX_EXTENDED_BYTES:
                raise TarLimitError(
                    f"offset {pos}: an extended header of {size} bytes, more than "
                    f"{MAX_EXTENDED_BYTES}"
                )
            ext = read_at(data, size) if size else b""
            if len(ext) != size:
                raise TarFormatError(f"offset {pos}: a truncated extended header")
            pos = data + _padded(size)
            if kind in (PAX, PAX_GLOBAL):
                records = _pax_records(ext, data)
                if kind == PAX_GLOBAL:
                    if pax is not None or long_name is not None or long_link is not None:
                        raise TarFormatError(
                            f"offset {data}: a global pax header between an extended header and "
                            "its member"
                        )
                    set_fields = [k.decode() for k in _PAX_FIELDS if k in records]
                    if set_fields:
                        raise TarFormatError(
                            f"offset {data}: a global pax header sets {', '.join(set_fields)} "
                            "for the members after it (readers disagree on whether it applies)"
                        )
                    continue
                if pax is not None:
                    raise TarFormatError(f"offset {data}: two pax headers for one member")
                pax = records
            else:
                value = _cut(ext)
                if not value:
                    raise TarFormatError(f"offset {data}: an empty GNU long name")
                if kind == GNU_LONGNAME:
                    if long_name is not None:
                        raise TarFormatError(f"offset {data}: two GNU long names for one member")
                    long_name = value
                else:
                    if long_link is not None:
                        raise TarFormatError(f"offset {data}: two GNU long links for one member")
                    long_link = value
            continue
        linkname = _cut(blk[157:257])
        if pax is not None:
            if b"path" in pax:
                if long_name is not None:
                    raise TarFormatError(f"offset {pos}: both a pax path and a GNU long name")
                name = pax[b"path"]
            if b"linkpath" in pax:
                if long_link is not None:
                    raise TarFormatError(f"offset {pos}: both a pax linkpath and a GNU long link")
                linkname = pax[b"linkpath"]
            size = _pax_number(pax, b"size", size, pos)
            uid = _pax_number(pax, b"uid", uid, pos)
            gid = _pax_number(pax, b"gid", gid, pos)
        if long_name is not None:
            name = long_name
        if long_link is not None:
            linkname = long_link
        if kind == AREG:
            # an old-style regular file whose name ends in "/" is a directory: tarfile decides on
            # the header's name field, Go on the final name; both must say the same
            slash = name.endswith(b"/")
            if slash != _cut(blk[:100]).endswith(b"/"):
                raise TarFormatError(f"offset {pos}: a type-0 member whose kind is ambiguous")
            kind = DIR if slash else REG
        if kind in _HEADER_ONLY:
            size = 0
        end = data + size
        if not holds(end):
            raise TarFormatError(f"offset {pos}: member data ends beyond the end of the file")
        yield TarMember(name, kind, mode, uid, gid, size, linkname, pos, data)
        pax = long_name = long_link = None
        pos = data + _padded(size)
        if not holds(pos):
            raise TarFormatError(f"offset {pos}: the last member's padding is truncated")


def _devices(blk: bytes, pos: int) -> None:
    if _CANONICAL_DEV.match(blk, 329) is None:
        _number(blk[329:337], "devmajor", pos)
        _number(blk[337:345], "devminor", pos)


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK
