"""The strict tar header scanner of the layer index, against Python's tarfile and crafted headers.

Archives written by tarfile in each format must read the same with both readers; crafted headers
that are hostile, truncated or that two readers would read differently must be refused with a
clear message (never silently cut, never guessed at).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from harden.errors import InputError
from harden.verifiers import tarscan
from harden.verifiers.fsview import MAX_NAME_BYTES, LimitExceeded, index_layer
from harden.verifiers.image_layers import LayerCache
from harden.verifiers.tarscan import TarFormatError, TarLimitError, TarMember, scan

# ---------------------------------------------------------------- helpers


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def header(
    name: bytes = b"f",
    *,
    typeflag: bytes = b"0",
    size: int = 0,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    linkname: bytes = b"",
    magic: bytes = b"ustar\x0000",
    prefix: bytes = b"",
    fields: dict[int, bytes] | None = None,
    checksum: int | None = None,
) -> bytes:
    """One 512-byte header; ``fields`` overwrites raw bytes at an offset before the checksum
    is computed (``checksum`` forces a stored value instead)."""
    blk = bytearray(512)
    blk[0 : len(name)] = name
    blk[100:108] = _octal(mode, 8)
    blk[108:116] = _octal(uid, 8)
    blk[116:124] = _octal(gid, 8)
    blk[124:136] = _octal(size, 12)
    blk[136:148] = _octal(1_700_000_000, 12)
    blk[156:157] = typeflag
    blk[157 : 157 + len(linkname)] = linkname
    blk[257 : 257 + len(magic)] = magic
    if magic.startswith(b"ustar"):
        blk[329:337] = _octal(0, 8)
        blk[337:345] = _octal(0, 8)
    blk[345 : 345 + len(prefix)] = prefix
    for offset, raw in (fields or {}).items():
        blk[offset : offset + len(raw)] = raw
    blk[148:156] = b" " * 8
    total = sum(blk) if checksum is None else checksum
    blk[148:156] = b"%06o\0 " % total
    return bytes(blk)


def member(name: bytes, data: bytes = b"", **kw: object) -> bytes:
    pad = -len(data) % 512
    return header(name, size=len(data), **kw) + data + bytes(pad)  # type: ignore[arg-type]


def pax(records: dict[bytes, bytes] | bytes, *, typeflag: bytes = b"x") -> bytes:
    if isinstance(records, bytes):
        body = records
    else:
        body = b""
        for key, value in records.items():
            rest = b" %s=%s\n" % (key, value)
            n = len(rest) + 1
            while len(b"%d" % n) + len(rest) != n:
                n += 1
            body += b"%d%s" % (n, rest)
    return member(b"PaxHeaders/f", body, typeflag=typeflag)


def gnu_long(value: bytes, typeflag: bytes = b"L") -> bytes:
    return member(b"././@LongLink", value + b"\0", typeflag=typeflag, magic=b"ustar  \0")


END = bytes(1024)


def read(tmp_path: Path, data: bytes) -> list[TarMember]:
    path = tmp_path / "layer.tar"
    path.write_bytes(data)
    with path.open("rb") as f:
        return list(scan(f))


def refused(tmp_path: Path, data: bytes, match: str) -> None:
    with pytest.raises(TarFormatError, match=match):
        read(tmp_path, data)


def tarfile_view(path: Path) -> list[tuple[bytes, int, int, int, int, bytes, int]]:
    """What the index took from tarfile before the scanner: name, mode, uid, gid, data size,
    link target and data offset of every member."""
    out = []
    with tarfile.open(path, "r:", encoding="utf-8", errors="surrogateescape") as tar:
        for i in tar:
            out.append(
                (
                    i.name.encode("utf-8", "surrogateescape").rstrip(b"/"),
                    i.mode,
                    i.uid,
                    i.gid,
                    i.size if i.isreg() else 0,
                    i.linkname.encode("utf-8", "surrogateescape"),
                    i.offset_data,
                )
            )
    return out


def scan_view(path: Path) -> list[tuple[bytes, int, int, int, int, bytes, int]]:
    with path.open("rb") as f:
        return [
            (m.name.rstrip(b"/"), m.mode, m.uid, m.gid, m.size, m.linkname, m.offset_data)
            for m in scan(f)
        ]


# ---------------------------------------------------------------- the same as tarfile


def _write_all_kinds(path: Path, fmt: int) -> None:
    long_dir = "d" * 120
    with tarfile.open(path, "w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:

        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **kw: object) -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            for k, v in kw.items():
                setattr(info, k, v)
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if data else None)

        add("etc", tarfile.DIRTYPE, mode=0o755)
        add("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n", mode=0o644)
        add("usr/bin/su", data=b"SU" * 700, mode=0o4755)
        add("usr/bin/su2", tarfile.LNKTYPE, linkname="usr/bin/su", mode=0o4755)
        add("usr/bin/passwd\netc", data=b"x", mode=0o6755)
        add("usr/lib/\udcff\udcfe-not-utf8", data=b"y")  # bytes that are not UTF-8
        add("etc/os-release", tarfile.SYMTYPE, linkname="../usr/lib/os-release")
        add("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3)
        add("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0)
        add("run/fifo", tarfile.FIFOTYPE)
        add("etc/.wh.shadow")
        add("opt/.wh..wh..opq")
        add("empty", data=b"")
        if fmt != tarfile.USTAR_FORMAT:  # ustar cannot hold these
            add(f"{long_dir}/{'f' * 150}", data=b"long")  # GNU L / pax path
            add("longlink", tarfile.SYMTYPE, linkname="t" * 200)  # GNU K / pax linkpath
            add("bigid", data=b"z", uid=3_000_000_000, gid=2_500_000)  # base-256 / pax uid
        else:
            add(f"{long_dir}/{'f' * 90}", data=b"prefix")  # ustar prefix + name


@pytest.mark.parametrize(
    "fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=str
)
def test_archives_in_every_format_read_as_tarfile_reads_them(tmp_path: Path, fmt: int) -> None:
    path = tmp_path / "a.tar"
    _write_all_kinds(path, fmt)
    got = scan_view(path)
    assert got == tarfile_view(path)
    names = {m[0] for m in got}
    assert b"usr/bin/passwd\netc" in names and b"usr/lib/\xff\xfe-not-utf8" in names
    with path.open("rb") as f:
        kinds = {m.name.rstrip(b"/"): m.type for m in scan(f)}
    assert kinds[b"etc"] == tarscan.DIR and kinds[b"usr/bin/su2"] == tarscan.LINK
    assert kinds[b"dev/null"] == tarscan.CHR and kinds[b"run/fifo"] == tarscan.FIFO


def test_a_file_object_without_a_descriptor_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "a.tar"
    _write_all_kinds(path, tarfile.PAX_FORMAT)
    with path.open("rb") as f:
        from_file = list(scan(f))
    assert list(scan(io.BytesIO(path.read_bytes()))) == from_file


def test_the_layer_index_is_the_one_tarfile_gave(tmp_path: Path) -> None:
    path = tmp_path / "a.tar"
    _write_all_kinds(path, tarfile.GNU_FORMAT)
    with path.open("rb") as f:
        entries = {e.path: e for e in index_layer(f)}
    assert entries[b"/etc/shadow"].type == "whiteout"
    assert entries[b"/opt"].type == "opaque"
    assert entries[b"/usr/bin/su2"].link == b"/usr/bin/su"
    assert entries[b"/usr/bin/su"].mode == 0o4755 and entries[b"/usr/bin/su"].size == 1400
    assert entries[b"/bigid"].uid == 3_000_000_000


def test_pax_long_path_and_linkpath(tmp_path: Path) -> None:
    name = b"a/" * 200 + b"file"
    data = (
        pax({b"path": name, b"mtime": b"1700000000.5", b"SCHILY.xattr.user.x": b"1"})
        + member(b"short", b"data")
        + pax({b"linkpath": b"/" + b"t" * 300, b"uid": b"70000", b"gid": b"80000"})
        + member(b"link", typeflag=b"2")
        + END
    )
    first, second = read(tmp_path, data)
    assert first.name == name and first.size == 4
    assert second.linkname == b"/" + b"t" * 300 and (second.uid, second.gid) == (70000, 80000)
    assert scan_view(tmp_path / "layer.tar") == tarfile_view(tmp_path / "layer.tar")


def test_pax_size_moves_the_next_header(tmp_path: Path) -> None:
    data = pax({b"size": b"3"}) + header(b"f", size=0) + b"abc" + bytes(509) + member(b"g") + END
    f, g = read(tmp_path, data)
    assert f.size == 3 and g.name == b"g"
    assert scan_view(tmp_path / "layer.tar") == tarfile_view(tmp_path / "layer.tar")


def test_gnu_long_name_and_link(tmp_path: Path) -> None:
    name = b"x" * 300
    data = (
        gnu_long(name)
        + gnu_long(b"y" * 200, b"K")
        + member(b"trunc", typeflag=b"2", magic=b"ustar  \0")
        + END
    )
    (m,) = read(tmp_path, data)
    assert (m.name, m.linkname) == (name, b"y" * 200)
    assert scan_view(tmp_path / "layer.tar") == tarfile_view(tmp_path / "layer.tar")


def test_base_256_numbers(tmp_path: Path) -> None:
    size = b"\x80" + (5).to_bytes(11, "big")
    uid = b"\x80" + (3_000_000_000).to_bytes(7, "big")
    mtime = b"\xff" * 12  # -1: before 1970, not read by harden, allowed
    data = member(b"f", b"hello", fields={124: size, 108: uid, 136: mtime}) + END
    (m,) = read(tmp_path, data)
    assert (m.size, m.uid) == (5, 3_000_000_000)
    assert scan_view(tmp_path / "layer.tar") == tarfile_view(tmp_path / "layer.tar")


def test_old_style_names_and_numbers_that_both_readers_agree_on(tmp_path: Path) -> None:
    data = (
        member(b"dir/", typeflag=b"\0")  # a V7 directory
        + member(b"file", b"ab", typeflag=b"\0", fields={100: b"  644 \0\0"})  # spaces
        + member(b"v7", b"c", magic=b"")  # no magic: V7 header
        + END
    )
    d, f, v7 = read(tmp_path, data)
    assert d.type == tarscan.DIR and f.type == tarscan.REG and f.mode == 0o644
    assert v7.name == b"v7" and v7.size == 1
    assert scan_view(tmp_path / "layer.tar") == tarfile_view(tmp_path / "layer.tar")


def test_a_signed_checksum_is_accepted_like_tarfile_does(tmp_path: Path) -> None:
    blk = bytearray(header("é".encode() * 10))
    blk[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in blk)
    blk[148:156] = b"%06o\0 " % signed
    (m,) = read(tmp_path, bytes(blk) + END)
    assert m.name == "é".encode() * 10
    assert scan_view(tmp_path / "layer.tar") == tarfile_view(tmp_path / "layer.tar")


def test_end_of_archive_forms(tmp_path: Path) -> None:
    assert read(tmp_path, END) == []  # the engine's empty layer
    assert [m.name for m in read(tmp_path, member(b"f", b"x"))] == [b"f"]  # no end blocks
    assert len(read(tmp_path, member(b"f") + bytes(512))) == 1  # one end block, then EOF
    trailing = member(b"f") + END + b"anything after the end is not read"
    assert len(read(tmp_path, trailing)) == 1
    ignored = pax({b"comment": b"made by git"}, typeflag=b"g") + member(b"f") + END
    assert [m.name for m in read(tmp_path, ignored)] == [b"f"]


# ---------------------------------------------------------------- refused


def test_bad_checksum_anywhere_is_refused(tmp_path: Path) -> None:
    good = member(b"a", b"1")
    bad = header(b"b", checksum=1234)
    refused(tmp_path, bad + END, "offset 0: bad header checksum")
    refused(tmp_path, good + bad + END, "offset 1024: bad header checksum")
    # tarfile took the bad second header for the end of the archive: member b was dropped
    with tarfile.open(tmp_path / "layer.tar") as tar:
        assert tar.getnames() == ["a"]


def test_truncation_is_refused(tmp_path: Path) -> None:
    whole = member(b"a", b"x" * 600) + member(b"b") + END
    refused(tmp_path, b"", "an empty file")
    refused(tmp_path, whole[:300], "offset 0: truncated")
    refused(tmp_path, whole[:1000], "member data ends beyond the end of the file")
    refused(tmp_path, whole[:1300], "padding is truncated")
    refused(tmp_path, whole[: 1536 + 100], "offset 1536: truncated")
    refused(tmp_path, pax({b"path": b"x" * 600})[:1000], "truncated extended header")
    refused(tmp_path, pax({b"path": b"long"}), "offset 1024: truncated")


def test_an_end_block_followed_by_data_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, member(b"a") + bytes(512) + member(b"hidden") + END, "not a second one")
    refused(tmp_path, member(b"a") + bytes(512) + bytes(100), "not a second one")


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"\x00\x004755\x00", "not a number"),  # tarfile reads 0, Go reads 04755
        (b"0004758\x00", "not an octal number"),
        (b"-000001\x00", "not a number"),
        (b"0_0644\x00\x00", "not a number"),
        (b"\t000644\x00", "not a number"),
        (b"\xff\xff\xff\xff\xff\xff\xff\xff", "not a valid base-256"),  # negative
        (b"\x81\x00\x00\x00\x00\x00\x00\x01", "not a valid base-256"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_numbers_two_readers_could_read_differently_are_refused(
    tmp_path: Path, raw: bytes, match: str
) -> None:
    refused(tmp_path, member(b"f", fields={100: raw}) + END, match)


def test_fields_harden_does_not_index_are_still_checked(tmp_path: Path) -> None:
    refused(tmp_path, member(b"f", fields={136: b"17000000000z"}) + END, "mtime field")
    refused(tmp_path, member(b"f", fields={329: b"abcdefg\0"}) + END, "devmajor field")


def test_a_huge_base_256_size_is_refused(tmp_path: Path) -> None:
    overflow = b"\x80" + b"\xff" * 11
    refused(tmp_path, member(b"f", fields={124: overflow}) + END, "overflows")
    huge = b"\x80" + (1 << 40).to_bytes(11, "big")  # 1 TiB claimed, 0 bytes there
    refused(tmp_path, member(b"f", fields={124: huge}) + END, "beyond the end of the file")


@pytest.mark.parametrize("typeflag", [b"S", b"7", b"V", b"M", b"D", b"N", b"A"])
def test_member_types_a_layer_has_no_business_holding(tmp_path: Path, typeflag: bytes) -> None:
    refused(tmp_path, member(b"f", typeflag=typeflag) + END, "is not supported in a layer")


def test_headers_whose_name_readers_disagree_on_are_refused(tmp_path: Path) -> None:
    gnu_atime = member(b"f", magic=b"ustar  \0", fields={345: _octal(1_700_000_000, 12)})
    refused(tmp_path, gnu_atime + END, "prefix area")  # tarfile: "<atime>/f", Go: "f"
    v7_prefix = member(b"f", magic=b"", prefix=b"etc")
    refused(tmp_path, v7_prefix + END, "prefix area")
    star = member(b"f", fields={508: b"tar\0"})
    refused(tmp_path, star + END, "star tar format")
    slash = pax({b"path": b"d/"}) + member(b"d", typeflag=b"\0")
    refused(tmp_path, slash + END, "kind is ambiguous")  # tarfile: file, Go: directory


@pytest.mark.parametrize(
    ("ext", "match"),
    [
        (pax(b"12 path=abc\n" + b"\0" * 10), "no valid length"),  # NUL padding in the records
        (pax(b"11 path=abc\n"), "wrong length"),
        (pax(b"12 path=abcX"), "wrong length"),  # no newline
        (pax(b"99 path=abc\n"), "wrong length"),
        (pax(b"+12 path=abc\n"), "no valid length"),
        (pax(b"9 =value\n"), "not KEY=VALUE"),
        (pax(b"9 novalu\n"), "not KEY=VALUE"),
        (pax({b"path": b"a\0b"}), "holds a NUL byte"),
        (pax({b"linkpath": b"a\0b"}), "holds a NUL byte"),
        (pax({b"size": b"12a"}), "size record"),
        (pax({b"uid": b"-1"}), "uid record"),
        (pax({b"gid": b"1" * 30}), "gid record"),
        (pax({b"GNU.sparse.major": b"1"}), "sparse files"),
        (pax({b"path": b"a"}) + pax({b"path": b"b"}), "two pax headers"),
        (gnu_long(b"a") + gnu_long(b"b"), "two GNU long names"),
        (gnu_long(b"a", b"K") + gnu_long(b"b", b"K"), "two GNU long links"),
        (pax({b"path": b"a"}) + gnu_long(b"b"), "both a pax path and a GNU long name"),
        (pax({b"linkpath": b"a"}) + gnu_long(b"b", b"K"), "both a pax linkpath"),
        (pax({b"path": b"evil"}, typeflag=b"g"), "global pax header sets path"),
        (pax({b"uid": b"0"}, typeflag=b"g"), "global pax header sets uid"),
        (pax({b"path": b"a"}) + pax({b"comment": b"c"}, typeflag=b"g"), "between an extended"),
        (member(b"././@LongLink", b"\0", typeflag=b"L"), "empty GNU long name"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_malformed_or_ambiguous_extended_headers_are_refused(
    tmp_path: Path, ext: bytes, match: str
) -> None:
    refused(tmp_path, ext + member(b"f", typeflag=b"2") + END, match)


def test_an_extended_header_without_a_member_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, pax({b"path": b"a"}) + END, "extended header without a member")


def test_an_oversized_extended_header_is_a_limit(tmp_path: Path) -> None:
    big = pax({b"comment": b"c" * tarscan.MAX_EXTENDED_BYTES})
    with pytest.raises(TarLimitError, match="more than 1048576"):
        read(tmp_path, big + member(b"f") + END)
    path = tmp_path / "layer.tar"
    with path.open("rb") as f, pytest.raises(LimitExceeded):
        index_layer(f)


def test_the_index_bounds_names_and_link_targets(tmp_path: Path) -> None:
    path = tmp_path / "layer.tar"
    long_name = pax({b"path": b"n" * (MAX_NAME_BYTES + 1)}) + member(b"f") + END
    path.write_bytes(long_name)
    with path.open("rb") as f, pytest.raises(LimitExceeded, match="name is longer"):
        index_layer(f)
    long_link = pax({b"linkpath": b"t" * (MAX_NAME_BYTES + 1)}) + member(b"l", typeflag=b"2")
    path.write_bytes(long_link + END)
    with path.open("rb") as f, pytest.raises(LimitExceeded, match="link target is longer"):
        index_layer(f)


def test_the_index_refuses_with_an_input_error_naming_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "layer.tar"
    path.write_bytes(member(b"a") + header(b"b", checksum=7) + END)
    with path.open("rb") as f, pytest.raises(InputError) as e:
        index_layer(f)
    assert e.value.message == (
        "a layer is not a readable tar archive: offset 512: bad header checksum"
    )


# ---------------------------------------------------------------- streamed into the cache


@pytest.mark.parametrize("size", [1, 7, 511, 512, 513, 4096, 1 << 20])
def test_a_layer_streamed_in_any_chunking_is_indexed_as_the_file(tmp_path: Path, size: int) -> None:
    path = tmp_path / "a.tar"
    _write_all_kinds(path, tarfile.PAX_FORMAT)
    data = path.read_bytes() + b"trailing bytes after the end are kept"
    with path.open("rb") as f:
        expected = index_layer(f)
    cache = LayerCache(tmp_path / "cache")
    chunks = (data[i : i + size] for i in range(0, len(data), size))
    key, tmp, entries = cache.put_chunks(chunks)
    assert entries == expected
    assert tmp.read_bytes() == data  # the whole stream is kept, as it came
    assert key == "diff:sha256:" + hashlib.sha256(data).hexdigest()


def test_a_truncated_stream_is_refused_and_leaves_no_file(tmp_path: Path) -> None:
    whole = member(b"a", b"x" * 5000) + member(b"b") + END
    cache = LayerCache(tmp_path / "cache")
    for cut in (300, 2000, 5632 + 100):
        chunks = (whole[:cut][i : i + 1000] for i in range(0, cut, 1000))
        with pytest.raises(InputError, match="not a readable tar archive"):
            cache.put_chunks(chunks)
    assert not list((tmp_path / "cache").iterdir())


def test_an_index_of_an_older_version_is_not_used(tmp_path: Path) -> None:
    """An index written before the strict scanner (tarfile silently cut some hostile layers
    short) is not trusted: the layer is read again."""
    cache = LayerCache(tmp_path / "cache")
    data = member(b"etc/x", b"x") + END
    key, tmp, entries = cache.put_chunks(iter([data]))
    tar, _ = cache.commit(key, tmp, entries)
    assert cache.get(key) is not None
    idx = tar.with_suffix(".idx")
    idx.write_bytes(idx.read_bytes().replace(b'{"v":2,', b'{"v":1,'))
    assert cache.get(key) is None
