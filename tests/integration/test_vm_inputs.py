"""Hostile VM inputs against the real qemu-img and qemu, and a SIGTERM during a VM verify.

The refusal tests boot nothing: each hostile file is made with the real qemu-img, then
``harden verify FILE`` must exit 3 with an error and a hint, and no qemu-system process may have
been started (``qemu-system-x86_64`` and ``qemu-img`` on PATH are wrappers that record each call
and then run the real program). One test boots the cached base template under TCG and sends
SIGTERM while it boots: harden must end qemu and remove its temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import harden_cli
import pytest
from harden.builder.disk_image import DiskImageError, analyse_info
from needs import unavailable
from vm_fixtures import VmTemplate

pytestmark = [pytest.mark.integration]

SHADOW_JSON = 'json:{"driver":"raw","file":{"driver":"file","filename":"/etc/shadow"}}'


def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Hostile:
    dir: Path
    files: dict[str, Path]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Hostile:
    if shutil.which("qemu-img") is None:
        unavailable("qemu-img is not installed (apt-get install qemu-utils)")
    d = tmp_path_factory.mktemp("hostile")
    files = {
        "backing": d / "backing.qcow2",
        "json-backing": d / "json-backing.qcow2",
        "data-file": d / "data-file.qcow2",
        "huge": d / "huge.qcow2",
        "raw-named-qcow2": d / "raw-named.qcow2",
        "truncated": d / "truncated.qcow2",
    }
    _qemu_img(
        "create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", str(files["backing"])
    )
    _qemu_img(
        "create", "-q", "-f", "qcow2", "-u", "-b", SHADOW_JSON, "-F", "raw",
        str(files["json-backing"]), "1G",
    )  # fmt: skip
    data = d / "data.raw"
    _qemu_img("create", "-q", "-f", "raw", str(data), "64M")
    _qemu_img(
        "create", "-q", "-f", "qcow2", "-o", f"data_file={data}", str(files["data-file"]), "64M"
    )
    _qemu_img("create", "-q", "-f", "qcow2", str(files["huge"]), "1P")
    with files["raw-named-qcow2"].open("wb") as f:  # a raw disk: an ext4 superblock, no header
        f.truncate(16 << 20)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", str(files["raw-named-qcow2"])], check=True, capture_output=True
    )
    full = d / "full.qcow2"
    payload = d / "payload.raw"
    payload.write_bytes(os.urandom(8 << 20))
    _qemu_img("convert", "-q", "-f", "raw", "-O", "qcow2", str(payload), str(full))
    files["truncated"].write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    return Hostile(d, files)


@dataclass(frozen=True)
class Wrappers:
    path: str  # PATH with the wrappers first
    log: Path  # one line per call: "PROGRAM ARGS..."

    def calls(self, program: str) -> list[str]:
        if not self.log.exists():
            return []
        return [line for line in self.log.read_text().splitlines() if line.startswith(program)]


@pytest.fixture
def wrappers(tmp_path: Path) -> Wrappers:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for program in ("qemu-system-x86_64", "qemu-img"):
        real = shutil.which(program)
        if real is None:
            unavailable(f"{program} is not installed")
        wrapper = bin_dir / program
        wrapper.write_text(f'#!/bin/sh\necho "{program} $*" >> {log}\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
    return Wrappers(f"{bin_dir}:{os.environ['PATH']}", log)


REFUSALS = {
    "backing": "names a backing file (/etc/hostname)",
    "json-backing": "names a json: backing specification",
    "data-file": "keeps its data in an external file",
    "huge": "virtual size 1.0 PiB",
    "raw-named-qcow2": "must be qcow2, this one is raw data",
    "truncated": "truncated or corrupt",
}


@pytest.mark.parametrize("kind", sorted(REFUSALS))
def test_hostile_disk_refused_before_any_qemu(
    kind: str, hostile: Hostile, wrappers: Wrappers, tmp_path: Path
) -> None:
    path = hostile.files[kind]
    r = harden_cli.run(
        "verify",
        str(path),
        env={"PATH": wrappers.path, "HARDEN_HOME": str(tmp_path / "home")},
        timeout=120,
    )
    assert r.returncode == 3, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert f"error: {path}: refused: " in r.stderr
    assert REFUSALS[kind] in r.stderr
    assert "hint: " in r.stderr
    assert wrappers.calls("qemu-system") == [], "qemu was started for a refused disk"
    for call in wrappers.calls("qemu-img"):  # qemu-img only ever sees an explicit node
        assert "--backing-chain" not in call
        assert '"backing":null' in call
        assert "/etc/hostname" not in call
        assert "/etc/shadow" not in call


def test_the_hostile_files_are_what_they_claim(hostile: Hostile) -> None:
    """qemu-img's own view (no backing chain opened) is refused by the second layer alone."""

    def info(path: Path, *fmt: str) -> dict[str, object]:
        out = subprocess.run(
            ["qemu-img", "info", "--output=json", *fmt, str(path)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        parsed: dict[str, object] = json.loads(out)
        return parsed

    expected = {
        "backing": "backing file (/etc/hostname)",
        "json-backing": "/etc/shadow",
        "data-file": "external file",
        "huge": "larger than the limit",
        "raw-named-qcow2": "this one is raw",
    }
    for kind, needle in expected.items():
        path = hostile.files[kind]
        with pytest.raises(DiskImageError) as e:
            analyse_info(info(path), str(path), ("qcow2",), 64 << 30)
        assert needle in e.value.message, kind
    # the truncated file looks fine to `qemu-img info`; only `check` finds it
    check = subprocess.run(
        ["qemu-img", "check", "-f", "qcow2", str(hostile.files["truncated"])],
        capture_output=True,
        timeout=60,
    )
    assert check.returncode == 2


def test_size_limit_is_configurable(hostile: Hostile, wrappers: Wrappers, tmp_path: Path) -> None:
    small = hostile.dir / "small.qcow2"
    if not small.exists():
        _qemu_img("create", "-q", "-f", "qcow2", str(small), "2G")
    r = harden_cli.run(
        "verify",
        str(small),
        env={
            "PATH": wrappers.path,
            "HARDEN_HOME": str(tmp_path / "home"),
            "HARDEN_VM_MAX_VIRTUAL_SIZE": "1G",
        },
        timeout=120,
    )
    assert r.returncode == 3, r.stderr[-2000:]
    assert "larger than the limit 1.0 GiB" in r.stderr
    assert wrappers.calls("qemu-system") == []


# -- SIGTERM while a VM verify boots ------------------------------------------------------------
def _children_named(parent: int, prefix: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == parent and comm.startswith(prefix):
            found.append(int(entry.name))
    return found


def _alive(pid: int, start_time: str) -> bool:
    """The same process (PID and start time) still exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0] != "Z" and fields[19] == start_time


def _start_time(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()[19]


@pytest.fixture
def verify_process(vm_template: VmTemplate, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(tmpdir),
        "HARDEN_HOME": str(tmp_path / "home"),
        "HARDEN_QEMU_ACCEL": "tcg",
    }
    proc = subprocess.Popen(
        [*harden_cli.COMMAND, "verify", str(vm_template.image.disk)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=harden_cli.ROOT,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.vm
def test_sigterm_during_vm_verify_leaves_no_qemu_and_no_temp_dir(
    verify_process: subprocess.Popen[str], tmp_path: Path
) -> None:
    proc = verify_process
    assert proc.stderr is not None
    seen: list[str] = []
    for line in proc.stderr:  # progress on stderr: wait until qemu is booting
        seen.append(line)
        if line.startswith("booting"):
            break
    assert seen and seen[-1].startswith("booting"), "".join(seen)
    qemu: list[int] = []
    deadline = time.monotonic() + 60
    while not qemu and time.monotonic() < deadline:
        qemu = _children_named(proc.pid, "qemu-system")
        time.sleep(0.1)
    assert len(qemu) == 1, f"no qemu child of harden ({proc.pid})"
    started = _start_time(qemu[0])
    owner = Path(f"/proc/{qemu[0]}/status").read_text().split("Uid:")[1].split()[0]
    assert owner != "0", "qemu runs as root"
    tmpdir = tmp_path / "tmp"
    assert any(tmpdir.iterdir()), "harden made no temporary directory"

    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    rc = proc.wait(timeout=60)
    assert rc != 0
    assert "Traceback" not in rest, rest[-3000:]
    assert not _alive(qemu[0], started), "qemu outlived the SIGTERM to harden"
    assert list(tmpdir.iterdir()) == [], "temporary files left behind"


def test_seal_refuses_an_overlay_rewritten_to_name_a_data_file(tmp_path: Path) -> None:
    """qemu writes the overlay; if a guest subverted qemu and made the overlay name a host file
    as its data file, sealing (qemu-img as root) must not read that file into the template."""
    from harden.builder.disk_image import inspect_disk
    from harden.builder.qemu import seal

    base = tmp_path / "base.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", str(base), "16M")
    overlay = tmp_path / "overlay.qcow2"
    host_file = tmp_path / "host-file"  # stands for any host file; never a real one in a test
    _qemu_img(
        "create", "-q", "-f", "qcow2", "-o", f"data_file={host_file}",
        "-u", "-b", str(base), "-F", "qcow2", str(overlay), "16M",
    )  # fmt: skip
    out = tmp_path / "out" / "sealed.qcow2"
    out.parent.mkdir()
    with inspect_disk(base) as disk, pytest.raises(DiskImageError) as e:
        seal(overlay, out, backing=disk)
    assert "external file" in e.value.message
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_seal_with_explicit_backing_flattens_the_inspected_base(tmp_path: Path) -> None:
    """The seal reads the base through the inspected descriptor (not the overlay's backing
    name) and writes a standalone image larger than any helper output bound."""
    from harden.builder.disk_image import inspect_disk
    from harden.builder.qemu import seal

    payload = tmp_path / "payload.raw"
    payload.write_bytes(os.urandom(24 << 20))  # incompressible: the sealed file is > 24 MiB
    base = tmp_path / "base.qcow2"
    _qemu_img("convert", "-q", "-f", "raw", "-O", "qcow2", str(payload), str(base))
    overlay = tmp_path / "overlay.qcow2"
    _qemu_img(
        "create", "-q", "-f", "qcow2", "-u", "-b", "/nonexistent/elsewhere.qcow2", "-F", "qcow2",
        str(overlay), str(24 << 20),
    )  # fmt: skip
    out = tmp_path / "sealed.qcow2"
    with inspect_disk(base) as disk:
        digest = seal(overlay, out, backing=disk)
    assert out.stat().st_size > 24 << 20
    assert len(digest) == 64
    same = subprocess.run(
        ["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", str(payload), str(out)],
        capture_output=True,
        timeout=120,
    )
    assert same.returncode == 0, same.stderr
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(out)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert "backing-filename" not in info
