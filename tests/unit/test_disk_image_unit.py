"""Unit tests for builder.disk_image (the qcow2 header read by harden itself, qemu-img's JSON
judged) and builder.children (signals, parent-death, bounded helpers). No qemu needed."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from harden.builder import children
from harden.builder.disk_image import (
    DEFAULT_MAX_VIRTUAL_SIZE,
    QCOW2_MAGIC,
    DiskImageError,
    analyse_info,
    check_qcow2_header,
    expected_formats,
    inspect_disk,
    max_virtual_size,
    parse_qcow2_header,
    parse_size,
)

from harden import signals
from harden.errors import ExitCode, InputError

GIB = 1 << 30
ROOT = Path(__file__).resolve().parents[2]


def qcow2_header(
    *,
    version: int = 3,
    size: int = GIB,
    backing: tuple[int, int] = (0, 0),
    backing_name: bytes = b"",
    crypt: int = 0,
    incompatible: int = 0,
    extensions: tuple[tuple[int, bytes], ...] = (),
    l1: tuple[int, int] = (0x30000, 16),
    refcount: tuple[int, int] = (0x10000, 1),
    cluster_bits: int = 16,
) -> bytes:
    """A qcow2 header as qemu lays it out (docs/interop/qcow2.txt)."""
    fixed = struct.pack(
        ">4sIQIIQIIQQIIQ",
        QCOW2_MAGIC,
        version,
        backing[0],
        backing[1],
        cluster_bits,
        size,
        crypt,
        l1[1],
        l1[0],
        refcount[0],
        refcount[1],
        0,
        0,
    )
    if version == 3:
        fixed += struct.pack(">QQQII", incompatible, 0, 0, 4, 104)
    body = b""
    for kind, data in extensions:
        body += struct.pack(">II", kind, len(data)) + data + b"\0" * (-len(data) % 8)
    body += struct.pack(">II", 0, 0)
    out = fixed + body
    if backing_name:
        out = out.ljust(backing[0], b"\0") + backing_name
    return out.ljust(4096, b"\0")


def test_clean_header_parses() -> None:
    h = parse_qcow2_header(qcow2_header(), "t.qcow2")
    assert (h.version, h.size, h.cluster_size) == (3, GIB, 65536)
    check_qcow2_header(h, 0x40000, "t.qcow2", DEFAULT_MAX_VIRTUAL_SIZE)


def test_backing_file_in_header_refused(tmp_path: Path) -> None:
    name = b"/etc/hostname"
    path = tmp_path / "evil.qcow2"
    path.write_bytes(
        qcow2_header(backing=(0x200, len(name)), backing_name=name).ljust(0x40000, b"\0")
    )
    with pytest.raises(DiskImageError) as e:
        inspect_disk(path)
    assert e.value.exit_code == ExitCode.INVALID_INPUT
    assert "backing file (/etc/hostname)" in e.value.message
    assert e.value.hint


def test_json_backing_named_as_such(tmp_path: Path) -> None:
    name = b'json:{"driver":"raw","file":{"driver":"file","filename":"/etc/shadow"}}'
    path = tmp_path / "evil.qcow2"
    path.write_bytes(
        qcow2_header(backing=(0x200, len(name)), backing_name=name).ljust(0x40000, b"\0")
    )
    with pytest.raises(DiskImageError) as e:
        inspect_disk(path)
    assert "json: backing specification" in e.value.message
    assert "/etc/shadow" in e.value.message


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"incompatible": 1 << 2}, "external file"),
        ({"extensions": ((0x44415441, b"/etc/shadow"),)}, "external file (/etc/shadow)"),
        ({"crypt": 1}, "encrypted"),
        ({"extensions": ((0x0537BE77, b"\0" * 16),)}, "encrypted"),
        ({"incompatible": 1 << 1}, "corrupt"),
        ({"size": 1 << 50}, "virtual size 1.0 PiB"),
        ({"l1": (0x10_0000_0000, 16)}, "truncated"),
        ({"refcount": (0x10000, 1 << 20)}, "truncated"),
    ],
)
def test_header_refusals(kwargs: dict[str, object], needle: str) -> None:
    h = parse_qcow2_header(qcow2_header(**kwargs), "x.qcow2")  # type: ignore[arg-type]
    with pytest.raises(DiskImageError) as e:
        check_qcow2_header(h, 0x40000, "x.qcow2", DEFAULT_MAX_VIRTUAL_SIZE)
    assert needle in e.value.message
    assert e.value.exit_code == ExitCode.INVALID_INPUT


@pytest.mark.parametrize(
    "data",
    [
        QCOW2_MAGIC + b"\0" * 10,
        qcow2_header(version=4),
        qcow2_header(cluster_bits=30),
        qcow2_header(extensions=((0x1234, b"x" * 9000),)),
    ],
)
def test_malformed_headers_refused(data: bytes) -> None:
    with pytest.raises(DiskImageError) as e:
        parse_qcow2_header(data[:8192], "m.qcow2")
    assert "malformed" in e.value.message


def test_raw_data_named_qcow2_and_other_formats_refused(tmp_path: Path) -> None:
    raw = tmp_path / "disk.qcow2"
    raw.write_bytes(b"\0" * 65536)
    with pytest.raises(DiskImageError) as e:
        inspect_disk(raw)
    assert "must be qcow2, this one is raw data" in e.value.message
    vmdk = tmp_path / "disk.img"
    vmdk.write_text('# Disk DescriptorFile\nRW 100 FLAT "/etc/shadow" 0\n')
    with pytest.raises(DiskImageError) as e:
        inspect_disk(vmdk)
    assert "vmdk descriptor" in e.value.message
    fifo = tmp_path / "fifo.qcow2"
    os.mkfifo(fifo)
    with pytest.raises(DiskImageError) as e:
        inspect_disk(fifo)  # must not hang on the FIFO
    assert "not a regular file" in e.value.message


def test_raw_over_the_limit_refused(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    with raw.open("wb") as f:
        f.truncate(3 << 20)
    with pytest.raises(DiskImageError) as e:
        inspect_disk(raw, max_size=2 << 20)
    assert "larger than the limit 2.0 MiB" in e.value.message
    assert "HARDEN_VM_MAX_VIRTUAL_SIZE" in (e.value.hint or "")


def test_expected_formats_by_suffix() -> None:
    assert expected_formats(Path("a.qcow2")) == ("qcow2",)
    assert expected_formats(Path("a.QCOW2")) == ("qcow2",)
    assert expected_formats(Path("a.raw")) == ("raw",)
    assert expected_formats(Path("a.img")) == ("qcow2", "raw")


def test_sizes() -> None:
    assert parse_size("64G") == 64 * GIB
    assert parse_size("200GiB") == 200 * GIB
    assert parse_size("512m") == 512 << 20
    assert parse_size("1024") == 1024
    with pytest.raises(InputError):
        parse_size("lots")
    assert max_virtual_size({}) == 64 * GIB
    assert max_virtual_size({"HARDEN_VM_MAX_VIRTUAL_SIZE": "1T"}) == 1 << 40


INFO = {"format": "qcow2", "virtual-size": GIB, "format-specific": {"data": {"corrupt": False}}}


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"backing-filename": "/etc/hostname"}, "backing file (/etc/hostname)"),
        ({"full-backing-filename": 'json:{"file":"/etc/shadow"}'}, "json: backing"),
        ({"backing-filename-format": "raw"}, "backing"),
        ({"format-specific": {"data": {"data-file": "/etc/shadow"}}}, "external file"),
        ({"format-specific": {"data": {"corrupt": True}}}, "corrupt"),
        ({"virtual-size": 1 << 50}, "larger than the limit"),
        ({"format": "raw"}, "this one is raw"),
        ({"encrypted": True}, "encrypted"),
    ],
)
def test_qemu_img_info_judged(extra: dict[str, object], needle: str) -> None:
    with pytest.raises(DiskImageError) as e:
        analyse_info({**INFO, **extra}, "x.qcow2", ("qcow2",), 64 * GIB)
    assert needle in e.value.message


def test_qemu_img_info_clean() -> None:
    assert analyse_info(INFO, "x.qcow2", ("qcow2",), 64 * GIB) == ("qcow2", GIB)


# -- children ----------------------------------------------------------------------------------
def _gone(pid: int, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_child_dies_with_its_parent_even_on_sigkill(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: a SIGKILLed harden (no clean-up at all) still takes its child along."""
    # as root the child also changes user first (as qemu does): that must not clear PDEATHSIG
    as_user = "user=65534, group=65534, extra_groups=[]" if os.geteuid() == 0 else ""
    script = textwrap.dedent(
        f"""
        import sys, time
        from harden.builder import children
        p = children.spawn(["sleep", "300"], {as_user})
        print(p.pid, flush=True)
        time.sleep(300)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    status = Path(f"/proc/{child}/stat").read_text().split()
    assert int(status[3]) == parent.pid  # ppid
    assert int(status[4]) == child  # its own process group (and session)
    if as_user:
        assert Path(f"/proc/{child}/status").read_text().split("Uid:")[1].split()[0] == "65534"
    parent.kill()
    parent.wait()
    assert _gone(child), "the child outlived its SIGKILLed parent"


def test_sigterm_unwinds_like_ctrl_c_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    cleaned: list[str] = []
    with (
        pytest.raises(signals.Terminated) as e,
        children.cleanup_on_signals(),
        children.cleanup_on_signals(),  # nested: one installation
    ):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            os.kill(os.getpid(), signal.SIGHUP)  # a second signal does not abort this
            cleaned.append("cleanup")
    assert e.value.signum == signal.SIGTERM
    assert isinstance(e.value, KeyboardInterrupt)
    assert cleaned == ["cleanup"]
    assert signal.getsignal(signal.SIGTERM) == before


def test_terminated_kills_what_unwinding_missed() -> None:
    with pytest.raises(signals.Terminated), children.cleanup_on_signals():
        proc = children.spawn(["sleep", "300"])
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert proc.poll() is not None
    assert proc.pid not in children.live_children()


def test_run_bounds_time_and_output() -> None:
    with pytest.raises(children.ChildFailed) as e:
        children.run(["sleep", "30"], timeout=0.5)
    assert "did not finish within 0.5 s" in str(e.value)
    with pytest.raises(children.ChildFailed) as e:
        children.run(["head", "-c", "100000", "/dev/zero"], timeout=10, max_output=1000)
    assert "more than 1000 bytes" in str(e.value)
    ok = children.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10, check=False)
    assert (ok.returncode, ok.stdout, ok.stderr) == (3, b"out\n", b"err\n")
    assert children.live_children() == []


def test_debugfs_listing_parsed_by_inode() -> None:
    from harden.builder.sealed_view import FileMeta, parse_ls_p

    out = (
        b"debugfs 1.47.0 (5-Feb-2023)\n"
        b"debugfs: ls -p <2>\n"
        b"/2/040755/0/0/.//\n/2/040755/0/0/..//\n"
        b"/12/040755/0/0/etc//\n"
        b"/17/104755/0/0/a/b/1/\n"  # a crafted name holding a slash: kept whole
        b"/0/000000/0/0//0/\n"  # an empty directory slot
        b"\n"
        b"debugfs: ls -p <12>\n"
        b"/14/100644/12/34/passwd/11/\n"
        b"/15/100644/0/0/new\n"  # a name with a newline: a problem, not a silent loss
        b"line/1/\n"
    )
    listing, problems = parse_ls_p(out)
    assert listing[2] == [
        (12, FileMeta(0o40755, 0, 0), b"etc"),
        (17, FileMeta(0o104755, 0, 0), b"a/b"),
    ]
    assert listing[12] == [(14, FileMeta(0o100644, 12, 34), b"passwd")]
    assert len(problems) == 2 and "inode 12" in problems[0]
