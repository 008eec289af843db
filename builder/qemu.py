"""qemu VMs for harden: accelerator detection, the VM lifecycle on a qcow2 overlay, sealing.

A :class:`Vm` never writes its base image: it boots a fresh qcow2 overlay backed by the absolute
path of the base. The guest sits on qemu's user-mode network with ``restrict=on`` (no network at
all) and one forward, ``127.0.0.1:PORT -> 22``. The serial console goes to a local file; the
guest prints its SSH host keys there between markers, and harden pins what it reads (the console
file is written by our own qemu, so it is a trusted channel).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from builder.ssh_target import SshTarget, wait_ready
from harden.errors import TargetError

QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"
HOST_KEYS_BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
HOST_KEYS_END = "-----END SSH HOST KEY KEYS-----"
DEFAULT_APPEND = "root=/dev/vda rw console=ttyS0"
TCG_ARGS = ("-accel", "tcg,thread=multi,tb-size=256", "-cpu", "max")
KVM_ARGS = ("-accel", "kvm", "-cpu", "host")
_KEY_RE = re.compile(
    r"((?:ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|sk-ssh-ed25519@openssh\.com|"
    r"sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3})"
)
_POLL = 0.5


# -- accelerator -----------------------------------------------------------------------------------
def _loaded_modules(proc_modules: str) -> set[str]:
    return {line.split()[0] for line in proc_modules.splitlines() if line.strip()}


def detect_accel(
    proc_modules: str | None = None,
    *,
    sys_module: Path = Path("/sys/module"),
    dev_kvm: Path = Path("/dev/kvm"),
    env: dict[str, str] | None = None,
) -> tuple[str, str]:
    """("kvm"|"tcg", reason). KVM only with kvm_intel or kvm_amd loaded and kvm_pvm not loaded.

    ``/dev/kvm`` alone proves nothing: a nested PVM (``kvm_pvm``) offers it but cannot run a
    stock kernel. ``HARDEN_QEMU_ACCEL=tcg|kvm`` overrides the detection.
    """
    environ = os.environ if env is None else env
    forced = environ.get("HARDEN_QEMU_ACCEL", "").strip().lower()
    if forced in ("kvm", "tcg"):
        return forced, f"HARDEN_QEMU_ACCEL={forced}"
    if proc_modules is None:
        try:
            proc_modules = Path("/proc/modules").read_text(encoding="utf-8")
        except OSError:
            proc_modules = ""
    modules = _loaded_modules(proc_modules)
    with contextlib.suppress(OSError):
        # built-in modules are missing from /proc/modules but present here
        modules |= {
            p.name for p in sys_module.iterdir() if p.name in ("kvm_intel", "kvm_amd", "kvm_pvm")
        }
    if "kvm_pvm" in modules:
        return "tcg", "kvm_pvm is loaded (nested PVM: KVM cannot boot a stock kernel here)"
    vendor = next((m for m in ("kvm_intel", "kvm_amd") if m in modules), None)
    if vendor is None:
        return "tcg", "neither kvm_intel nor kvm_amd is loaded"
    if not os.access(dev_kvm, os.R_OK | os.W_OK):
        return "tcg", f"{vendor} is loaded but {dev_kvm} is not usable"
    return "kvm", f"{vendor} is loaded and {dev_kvm} is usable"


def accel_args(accel: str) -> list[str]:
    return list(KVM_ARGS if accel == "kvm" else TCG_ARGS)


# -- console host keys -----------------------------------------------------------------------------
def parse_console_host_keys(text: str) -> list[list[str]]:
    """Every complete host key block on the console, oldest first; each a list of key lines.

    Lines may carry a prefix (timestamps, a unit name) or be interleaved with kernel messages:
    only ``TYPE BASE64`` is taken from lines between the markers.
    """
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.replace("\r", "")
        if HOST_KEYS_BEGIN in line:
            current = []
        elif HOST_KEYS_END in line:
            if current:
                blocks.append(current)
            current = None
        elif current is not None:
            m = _KEY_RE.search(line)
            if m:
                current.append(m.group(1))
    return blocks


# -- the VM ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VmImage:
    disk: Path  # qcow2
    kernel: Path | None = None  # None: boot the disk's own boot loader
    initrd: Path | None = None
    append: str = DEFAULT_APPEND

    @classmethod
    def from_manifest(cls, manifest: Path) -> VmImage:
        """The image scripts/vm-base.sh described in ``manifest.json``."""
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            return cls(
                disk=Path(data["base"]),
                kernel=Path(data["kernel"]),
                initrd=Path(data["initrd"]),
                append=str(data.get("append", DEFAULT_APPEND)),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TargetError(
                f"cannot read the VM template manifest {manifest}: {e}",
                hint="rebuild the template with scripts/vm-base.sh",
            ) from e


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is dead for our purposes
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            return False
    return True


def _tail(path: Path, lines: int) -> str:
    try:
        data = path.read_bytes()[-64 * 1024 :]
    except OSError:
        return ""
    text = data.decode("utf-8", "replace").replace("\r", "")
    return "\n".join(text.splitlines()[-lines:])


class Vm:
    """One qemu VM on a throw-away overlay. A context manager; see the module docstring."""

    def __init__(
        self,
        image: VmImage,
        workdir: Path,
        *,
        memory_mb: int = 512,
        cpus: int = 2,
        ssh_port: int | None = None,
        boot_timeout: float = 120.0,
        on_progress: Callable[[str], None] | None = None,
        keep: bool = False,
        accel: tuple[str, str] | None = None,
    ) -> None:
        self.image = image
        self.workdir = Path(workdir).absolute()
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.ssh_port = ssh_port
        self.boot_timeout = boot_timeout
        self.on_progress = on_progress
        self.keep = keep
        self.accel = accel
        self.pid: int | None = None
        self._started_at = 0.0
        self._target: SshTarget | None = None
        self._sockdir: Path | None = None

    # -- paths -----------------------------------------------------------------------------------
    @property
    def overlay(self) -> Path:
        return self.workdir / "overlay.qcow2"

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    @property
    def pidfile(self) -> Path:
        return self.workdir / "qemu.pid"

    @property
    def qmp_socket(self) -> Path:
        path = self.workdir / "qmp.sock"
        if len(str(path)) < 100:  # AF_UNIX paths are limited to 108 bytes
            return path
        if self._sockdir is None:
            self._sockdir = Path(tempfile.mkdtemp(prefix="harden-qmp-"))
        return self._sockdir / "qmp.sock"

    def _progress(self, message: str) -> None:
        if self.on_progress is not None:
            self.on_progress(message)

    # -- command line ----------------------------------------------------------------------------
    def command(self, port: int) -> list[str]:
        """The qemu command line (no tap, no bridge: user-mode net, restrict=on, loopback only)."""
        accel, _ = self.accel or detect_accel()
        cmd = [
            QEMU,
            "-name",
            "harden-vm",
            "-nodefaults",
            "-display",
            "none",
            *accel_args(accel),
            "-smp",
            str(self.cpus),
            "-m",
            str(self.memory_mb),
            "-drive",
            f"file={self.overlay},if=virtio,format=qcow2",
            "-netdev",
            f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device",
            "virtio-net-pci,netdev=n0",
            "-device",
            "virtio-rng-pci",
            "-serial",
            f"file:{self.console_log}",
            "-qmp",
            f"unix:{self.qmp_socket},server=on,wait=off",
            "-daemonize",
            "-pidfile",
            str(self.pidfile),
        ]
        if self.image.kernel is not None:
            cmd += ["-kernel", str(self.image.kernel), "-append", self.image.append]
            if self.image.initrd is not None:
                cmd += ["-initrd", str(self.image.initrd)]
        return cmd

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> Vm:
        if self.pid is None:
            try:
                self.start()
            except BaseException:
                self._cleanup()
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        try:
            if self._target is not None:
                self._target.close()
                self._target = None
        finally:
            self.kill()
            if not self.keep:
                self.overlay.unlink(missing_ok=True)
            for path in (self.pidfile, self.qmp_socket):
                path.unlink(missing_ok=True)
            if self._sockdir is not None:
                shutil.rmtree(self._sockdir, ignore_errors=True)
                self._sockdir = None

    def start(self) -> None:
        """Create the overlay and start qemu in the background; a no-op when already running."""
        if self.pid is not None and _pid_alive(self.pid):
            return
        for path in (self.image.disk, self.image.kernel, self.image.initrd):
            if path is not None and not path.is_file():
                raise TargetError(
                    f"VM image file {path} does not exist",
                    hint="build the base template with scripts/vm-base.sh or fix the image paths",
                )
        if shutil.which(QEMU) is None or shutil.which(QEMU_IMG) is None:
            raise TargetError(
                f"{QEMU} or {QEMU_IMG} is not installed",
                hint="apt-get install qemu-system-x86 qemu-utils",
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.accel is None:
            self.accel = detect_accel()
        self._progress(f"creating overlay on {self.image.disk.name}")
        self.overlay.unlink(missing_ok=True)
        _run(
            [
                QEMU_IMG,
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                str(self.image.disk.resolve()),
                str(self.overlay),
            ],
            what="create the VM overlay",
        )
        auto_port = self.ssh_port is None
        for attempt in range(3):
            port = self.ssh_port if self.ssh_port is not None else free_port()
            for path in (self.console_log, self.pidfile, self.qmp_socket):
                path.unlink(missing_ok=True)
            self._progress(f"booting ({self.accel[0]}: {self.accel[1]}), ssh on 127.0.0.1:{port}")
            proc = subprocess.run(
                self.command(port), capture_output=True, text=True, timeout=60, check=False
            )
            if proc.returncode == 0:
                self.ssh_port = port
                break
            stderr = proc.stderr.strip()
            self._read_pid()  # a daemon child may exist even if the parent failed
            self.kill()
            if auto_port and "hostfwd" in stderr and attempt < 2:
                continue  # the port was taken between free_port() and qemu's bind
            raise TargetError(
                f"qemu did not start: {stderr or f'exit {proc.returncode}'}",
                hint="check the kernel, initrd and disk of the VM image"
                + (f"\nconsole:\n{self.console_tail()}" if self.console_tail() else ""),
            )
        self._started_at = time.monotonic()
        if self._read_pid() is None:
            raise TargetError("qemu started but wrote no pidfile", hint=str(self.pidfile))

    def _read_pid(self) -> int | None:
        try:
            self.pid = int(self.pidfile.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return self.pid
        return self.pid

    def _is_ours(self, pid: int) -> bool:
        """The PID still belongs to our qemu (guards against PID reuse)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return str(self.pidfile).encode() in cmdline

    @property
    def running(self) -> bool:
        return self.pid is not None and _pid_alive(self.pid) and self._is_ours(self.pid)

    def _check_alive(self) -> None:
        if not self.running:
            raise TargetError(
                "the VM's qemu process exited during boot",
                hint=f"last console lines:\n{self.console_tail()}",
            )

    def _remaining(self) -> float:
        return self._started_at + self.boot_timeout - time.monotonic()

    def _boot_failed(self, what: str) -> TargetError:
        return TargetError(
            f"VM did not {what} within {self.boot_timeout:g} s "
            f"(accel {self.accel[0] if self.accel else '?'})",
            hint=f"last console lines ({self.console_log}):\n{self.console_tail()}",
        )

    def host_keys(self, timeout: float | None = None) -> list[str]:
        """The host keys the guest printed on the console in its latest boot (OpenSSH lines)."""
        if self.pid is None:
            raise TargetError("the VM is not started", hint="call start() first")
        limit = time.monotonic() + (self._remaining() if timeout is None else timeout)
        while True:
            try:
                text = self.console_log.read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = ""
            blocks = parse_console_host_keys(text)
            if blocks:
                return blocks[-1]
            self._check_alive()
            if time.monotonic() >= limit:
                raise self._boot_failed("print its SSH host keys on the console")
            time.sleep(_POLL)

    def connect(
        self,
        user: str = "root",
        key_path: Path | None = None,
        *,
        pinned_host_keys: list[str] | None = None,
    ) -> SshTarget:
        """Wait until an SSH command succeeds; host keys pinned from the console by default."""
        if self.pid is None or self.ssh_port is None:
            raise TargetError("the VM is not started", hint="call start() first")
        keys = pinned_host_keys if pinned_host_keys is not None else self.host_keys()
        port = self.ssh_port

        def make() -> SshTarget:
            return SshTarget(
                "127.0.0.1",
                port,
                user,
                key_path=key_path,
                pinned_host_keys=keys,
                connect_timeout=10,
            )

        self._progress("waiting for SSH")
        try:
            target = wait_ready(make, max(1.0, self._remaining()), _POLL, check=self._check_alive)
        except TargetError as e:
            if self.running and self._remaining() <= 0:
                raise self._boot_failed("accept SSH commands") from e
            raise
        self._progress("ready")
        if self._target is not None:
            self._target.close()
        self._target = target
        return target

    def _ssh(self, script: str) -> bool:
        if self._target is None:
            return False
        with contextlib.suppress(TargetError):  # the connection drops as the guest goes down
            self._target.run(script, timeout=15)
        self._target.close()
        self._target = None
        return True

    def reboot(self) -> None:
        """Reboot the guest cleanly and wait until it printed its host keys again.

        Call :meth:`connect` afterwards for a new :class:`SshTarget`.
        """
        if not self.running:
            raise TargetError("the VM is not running", hint="call start() first")
        before = len(parse_console_host_keys(_read(self.console_log)))
        self._progress("rebooting")
        if not self._ssh("systemctl reboot --no-block"):
            self._qmp("system_reset")
        self._started_at = time.monotonic()
        while len(parse_console_host_keys(_read(self.console_log))) <= before:
            self._check_alive()
            if self._remaining() <= 0:
                raise self._boot_failed("come back after a reboot")
            time.sleep(_POLL)

    def shutdown(self, timeout: float = 30) -> None:
        """Power off cleanly (``systemctl poweroff`` over SSH, else ACPI via QMP), then kill."""
        if not self.running:
            self.kill()
            return
        self._progress("powering off")
        if not self._ssh("systemctl poweroff --no-block"):
            with contextlib.suppress(TargetError):
                self._qmp("system_powerdown")
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            time.sleep(0.2)
        self.kill()

    def kill(self) -> None:
        """End our qemu by its own PID (SIGTERM, then SIGKILL); never any other process."""
        pid = self.pid if self.pid is not None else self._read_pid()
        if pid is None or not self._is_ours(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while _pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)

    def console_tail(self, lines: int = 30) -> str:
        return _tail(self.console_log, lines)

    def _qmp(self, command: str) -> None:
        """Send one QMP command (e.g. system_powerdown) and wait for its return."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(self.qmp_socket))
                f = s.makefile("rwb")
                f.readline()  # greeting
                for cmd in ("qmp_capabilities", command):
                    f.write(json.dumps({"execute": cmd}).encode() + b"\n")
                    f.flush()
                    while True:
                        line = f.readline()
                        if not line:
                            raise TargetError(f"QMP closed during {cmd}")
                        reply = json.loads(line)
                        if "error" in reply:
                            raise TargetError(f"QMP {cmd} failed: {reply['error']}")
                        if "return" in reply:
                            break
        except (OSError, ValueError) as e:
            raise TargetError(
                f"cannot talk to the VM's QMP socket {self.qmp_socket}: {e}",
                hint="is the VM still running?",
            ) from e


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _run(cmd: list[str], *, what: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TargetError(f"cannot {what}: {e}", hint=f"is {cmd[0]} installed?") from e
    if proc.returncode != 0:
        raise TargetError(
            f"cannot {what}: {proc.stderr.strip() or f'{cmd[0]} exit {proc.returncode}'}",
            hint="check free disk space and the image path",
        )
    return proc


# -- sealing ---------------------------------------------------------------------------------------
def seal(overlay: Path, out: Path) -> str:
    """Flatten ``overlay`` (and its backing chain) into a standalone zstd-compressed qcow2 at
    ``out``; returns its sha256. Atomic: on any failure no partial file remains.
    """
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _run(
            [
                QEMU_IMG,
                "convert",
                "-q",
                "-O",
                "qcow2",
                "-c",
                "-o",
                "compression_type=zstd",
                str(overlay),
                str(tmp),
            ],
            what=f"seal {overlay} into {out}",
        )
        digest = hashlib.sha256()
        with tmp.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
            os.fsync(f.fileno())
        tmp.chmod(0o644)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def hygiene_script() -> str:
    """Shell run in the guest before sealing: no host keys, no machine-id, no logs or caches."""
    return """set -u
rm -f /etc/ssh/ssh_host_*
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
journalctl --rotate >/dev/null 2>&1 || true
journalctl --vacuum-time=1s >/dev/null 2>&1 || true
rm -rf /var/log/journal/*/*.journal~
if command -v apt-get >/dev/null 2>&1; then apt-get clean; fi
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
find /tmp /var/tmp -mindepth 1 -delete 2>/dev/null || true
rm -f /root/.bash_history
sync
"""
