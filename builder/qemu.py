"""qemu VMs for harden: accelerator detection, the VM lifecycle on a qcow2 overlay, sealing.

A :class:`Vm` never writes its base image: it boots a fresh qcow2 overlay on the base. The base
is inspected first (:func:`builder.disk_image.inspect_disk`: no backing or data file, size
limit, not corrupt) and qemu reads that inspected descriptor as a ``-blockdev`` node with
``backing: null``; the overlay's backing is that node, never a name read from a file. The guest
sits on qemu's user-mode network with ``restrict=on`` (no network at all) and one forward,
``127.0.0.1:PORT -> 22``. The serial console goes to a local file; the guest prints its SSH host
keys there between markers, and harden pins what it reads (the console file is written by our
own qemu, so it is a trusted channel).

qemu is harden's child (:mod:`builder.children`): never daemonized, its own process group,
PR_SET_PDEATHSIG, ``no_new_privs``, the seccomp ``-sandbox``, and as the unprivileged user
``harden-qemu`` (``HARDEN_QEMU_USER``) when harden runs as root. It opens no file of harden's by
path: disks, console and log are inherited descriptors; QMP is a socketpair.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import re
import resource
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from harden.builder import children
from harden.builder.children import cleanup_on_signals
from harden.builder.disk_image import (
    DiskImage,
    blockdev_spec,
    check_overlay,
    inspect_disk,
    json_filename,
)
from harden.builder.ssh_target import SshTarget, wait_ready
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
QEMU_USER_ENV = "HARDEN_QEMU_USER"
BOOT_TIMEOUT_ENV = "HARDEN_VM_BOOT_TIMEOUT"
DEFAULT_BOOT_TIMEOUT = 120.0
DEFAULT_QEMU_USER = "harden-qemu"
# seccomp: no obsolete syscalls, no set*id, no fork/exec, no scheduler or affinity changes
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


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
    disk: Path  # qcow2 (or raw)
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


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace").replace("\r", "")
    return "\n".join(text.splitlines()[-lines:])


def default_boot_timeout(env: dict[str, str] | None = None) -> float:
    """120 s, or ``HARDEN_VM_BOOT_TIMEOUT`` seconds (slow, shared CI runners under TCG)."""
    environ = os.environ if env is None else env
    text = environ.get(BOOT_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_BOOT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:
        raise TargetError(
            f"{BOOT_TIMEOUT_ENV}={text!r} is not a number of seconds",
            hint=f"e.g. {BOOT_TIMEOUT_ENV}=600",
        )
    return value


# -- who qemu runs as ------------------------------------------------------------------------------
@dataclass(frozen=True)
class QemuUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def qemu_user(env: dict[str, str] | None = None) -> QemuUser | None:
    """The unprivileged user qemu runs as when harden runs as root; None when harden is not root
    (qemu then runs as harden's own, already unprivileged, user). Never root.
    """
    if os.geteuid() != 0:
        return None
    environ = os.environ if env is None else env
    name = environ.get(QEMU_USER_ENV, "").strip() or DEFAULT_QEMU_USER
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise TargetError(
            f"the user {name!r} that harden runs qemu as does not exist",
            hint="run scripts/services.sh, or create it: useradd --system --user-group "
            f"--no-create-home --shell /usr/sbin/nologin {DEFAULT_QEMU_USER} "
            f"(or set {QEMU_USER_ENV} to another unprivileged user)",
        ) from None
    if pw.pw_uid == 0 or pw.pw_gid == 0:
        raise TargetError(
            f"{QEMU_USER_ENV}={name} is root; harden never runs qemu as root",
            hint=f"unset {QEMU_USER_ENV} or name an unprivileged user",
        )
    groups = tuple(g for g in os.getgrouplist(name, pw.pw_gid) if g != 0)
    return QemuUser(name, pw.pw_uid, pw.pw_gid, groups)


def _user_can_use(path: Path, user: QemuUser | None) -> bool:
    """Whether ``user`` may read and write ``path`` by its mode bits (None: harden itself)."""
    if user is None:
        return os.access(path, os.R_OK | os.W_OK)
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_uid == user.uid:
        bits = (st.st_mode >> 6) & 0o6
    elif st.st_gid in user.groups or st.st_gid == user.gid:
        bits = (st.st_mode >> 3) & 0o6
    else:
        bits = st.st_mode & 0o6
    return bits == 0o6


def _boot_file_fd(path: Path, user: QemuUser | None) -> int:
    """A descriptor qemu can open as ``/dev/fd/N`` (a kernel or initrd).

    qemu reopens ``/dev/fd/N``, which checks the file's own mode. harden does not copy a file
    the qemu user may not read into one it may: a kernel or initrd named by a hostile manifest
    (``/etc/shadow`` as initrd) must not reach the guest through harden's privileges.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise TargetError(f"cannot open {path}: {e.strerror}") from e
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise TargetError(f"{path} is not a regular file", hint="give a kernel or initrd file")
    if user is not None and not _user_can_read(st, user):
        os.close(fd)
        raise TargetError(
            f"{path} is not readable by {user.name}, the user qemu runs as",
            hint=f"make it readable (chmod o+r {path}) if it is meant to boot a VM",
        )
    return fd


def _user_can_read(st: os.stat_result, user: QemuUser) -> bool:
    if st.st_uid == user.uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid == user.gid or st.st_gid in user.groups:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


# -- QMP over a socketpair -------------------------------------------------------------------------
class Qmp:
    """harden's end of qemu's QMP monitor: a socketpair, so no socket path exists at all."""

    MAX_LINE = 1 << 20  # qemu may be under a hostile guest's control: bound what is read

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""
        self.ready = False

    def _message(self, deadline: float, alive: Callable[[], bool]) -> dict[str, Any]:
        while True:
            line, sep, rest = self._buf.partition(b"\n")
            if sep:
                self._buf = rest
                try:
                    msg = json.loads(line)
                except ValueError as e:
                    raise TargetError(f"QMP sent something that is not JSON: {e}") from e
                if isinstance(msg, dict):
                    return msg
                continue
            if len(self._buf) > self.MAX_LINE:
                raise TargetError("QMP sent a line longer than 1 MiB")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TargetError("QMP did not answer in time")
            self.sock.settimeout(min(0.5, remaining))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                if not alive():
                    raise TargetError("qemu exited") from None
                continue
            except OSError as e:
                raise TargetError(f"QMP connection failed: {e}") from e
            if not data:
                raise TargetError("qemu closed its QMP connection")
            self._buf += data

    def execute(
        self, command: str, *, timeout: float = 10.0, alive: Callable[[], bool] = lambda: True
    ) -> Any:
        """Send one command and return its ``return`` (events in between are skipped)."""
        deadline = time.monotonic() + timeout
        if not self.ready:
            greeting = self._message(deadline, alive)
            if "QMP" not in greeting:
                raise TargetError(f"unexpected QMP greeting: {str(greeting)[:200]}")
            self.ready = True
            self.execute("qmp_capabilities", timeout=timeout, alive=alive)
        try:
            self.sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
        except OSError as e:
            raise TargetError(f"QMP connection failed: {e}") from e
        while True:
            reply = self._message(deadline, alive)
            if "error" in reply:
                raise TargetError(f"QMP {command} failed: {str(reply['error'])[:300]}")
            if "return" in reply:
                return reply["return"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass(frozen=True)
class QemuFds:
    """Descriptors qemu inherits: it opens no file of harden's by path."""

    disk: int  # the inspected template, read-only
    overlay: int  # read-write
    console: int  # write-only
    qmp: int  # qemu's end of the QMP socketpair
    kernel: int | None = None
    initrd: int | None = None
    extra: tuple[int, ...] = ()  # further inspected disks, read-only

    def all(self) -> tuple[int, ...]:
        fds = (self.disk, self.overlay, self.console, self.qmp, self.kernel, self.initrd)
        return tuple(fd for fd in (*fds, *self.extra) if fd is not None)


_SET_DISK, _SET_OVERLAY, _SET_CONSOLE, _SET_EXTRA = 1, 2, 3, 10


class Vm:
    """One qemu VM on a throw-away overlay. A context manager; see the module docstring.

    ``disk`` is the already inspected template (its descriptor is what qemu reads); without it,
    :meth:`start` inspects ``image.disk`` itself. ``extra_disks`` are attached read-only after the
    overlay (``/dev/vdb``, ...). The caller keeps owning the disks it passes in.
    """

    def __init__(
        self,
        image: VmImage,
        workdir: Path,
        *,
        memory_mb: int = 512,
        cpus: int = 2,
        ssh_port: int | None = None,
        boot_timeout: float | None = None,
        on_progress: Callable[[str], None] | None = None,
        keep: bool = False,
        accel: tuple[str, str] | None = None,
        disk: DiskImage | None = None,
        extra_disks: tuple[DiskImage, ...] = (),
    ) -> None:
        self.image = image
        self.workdir = Path(workdir).absolute()
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.ssh_port = ssh_port
        self.boot_timeout = default_boot_timeout() if boot_timeout is None else boot_timeout
        self.on_progress = on_progress
        self.keep = keep
        self.accel = accel
        self.extra_disks = extra_disks
        self._disk = disk
        self._owns_disk = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp_conn: Qmp | None = None
        self._fds: list[int] = []
        self._started_at = 0.0
        self._target: SshTarget | None = None
        self._signals: contextlib.ExitStack | None = None

    # -- paths -----------------------------------------------------------------------------------
    @property
    def overlay(self) -> Path:
        return self.workdir / "overlay.qcow2"

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.workdir / "qemu.log"

    @property
    def disk(self) -> DiskImage | None:
        """The inspected template qemu reads (once started)."""
        return self._disk

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _progress(self, message: str) -> None:
        if self.on_progress is not None:
            self.on_progress(message)

    # -- command line ----------------------------------------------------------------------------
    def command(self, port: int, fds: QemuFds, disk_format: str = "qcow2") -> list[str]:
        """The qemu command line.

        No tap, no bridge: user-mode net, ``restrict=on``, one loopback forward. No path of
        harden's: disks, console, kernel and initrd come as inherited descriptors, QMP is a
        socketpair. Every disk node names its format and ``backing: null``; the overlay's
        backing is the inspected template node, never a name read from a file. No
        ``-daemonize``: qemu stays harden's child. Seccomp sandbox: no spawning, no privileges.
        """
        accel, _ = self.accel or detect_accel()
        template = {
            **blockdev_spec(disk_format, f"/dev/fdset/{_SET_DISK}"),
            "node-name": "template",
        }
        overlay = {
            "driver": "qcow2",
            "node-name": "overlay",
            "read-only": False,
            "backing": "template",
            "file": {"driver": "file", "filename": f"/dev/fdset/{_SET_OVERLAY}"},
        }
        cmd = [
            QEMU,
            "-name",
            "harden-vm",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-sandbox",
            SANDBOX,
            *accel_args(accel),
            "-smp",
            str(self.cpus),
            "-m",
            str(self.memory_mb),
            "-add-fd",
            f"fd={fds.disk},set={_SET_DISK},opaque=template",
            "-add-fd",
            f"fd={fds.overlay},set={_SET_OVERLAY},opaque=overlay",
            "-add-fd",
            f"fd={fds.console},set={_SET_CONSOLE},opaque=console",
            "-blockdev",
            json.dumps(template, separators=(",", ":")),
            "-blockdev",
            json.dumps(overlay, separators=(",", ":")),
            "-device",
            "virtio-blk-pci,drive=overlay",
        ]
        for i, (fd, extra) in enumerate(zip(fds.extra, self.extra_disks, strict=True)):
            node = {
                **blockdev_spec(extra.format, f"/dev/fdset/{_SET_EXTRA + i}"),
                "node-name": f"extra{i}",
            }
            cmd += [
                "-add-fd",
                f"fd={fd},set={_SET_EXTRA + i},opaque=extra{i}",
                "-blockdev",
                json.dumps(node, separators=(",", ":")),
                "-device",
                f"virtio-blk-pci,drive=extra{i}",
            ]
        cmd += [
            "-netdev",
            f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device",
            "virtio-net-pci,netdev=n0",
            "-device",
            "virtio-rng-pci",
            "-chardev",
            f"file,id=console,path=/dev/fdset/{_SET_CONSOLE}",
            "-serial",
            "chardev:console",
            "-chardev",
            f"socket,id=qmp,fd={fds.qmp}",
            "-mon",
            "chardev=qmp,mode=control",
        ]
        if fds.kernel is not None:
            cmd += ["-kernel", f"/dev/fd/{fds.kernel}", "-append", self.image.append]
            if fds.initrd is not None:
                cmd += ["-initrd", f"/dev/fd/{fds.initrd}"]
        return cmd

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> Vm:
        if self._signals is None:
            self._signals = contextlib.ExitStack()
            self._signals.enter_context(cleanup_on_signals())
        if self._proc is None:
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
            try:
                self.kill()
                if not self.keep:
                    self.overlay.unlink(missing_ok=True)
                if self._owns_disk and self._disk is not None:
                    self._disk.close()
                    self._disk = None
                    self._owns_disk = False
            finally:
                if self._signals is not None:
                    signals, self._signals = self._signals, None
                    signals.close()

    def _close_fds(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        if self._qmp_conn is not None:
            self._qmp_conn.close()
            self._qmp_conn = None

    def _open(self, path: Path, flags: int, mode: int = 0o600) -> int:
        fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
        self._fds.append(fd)
        return fd

    def start(self) -> None:
        """Inspect the template, create the overlay and start qemu; a no-op when running."""
        if self.running:
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
        user = qemu_user()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._disk is None:
            self._disk = inspect_disk(self.image.disk)
            self._owns_disk = True
        disk = self._disk
        if self.accel is None:
            self.accel = detect_accel()
            if self.accel[0] == "kvm" and not _user_can_use(Path("/dev/kvm"), user):
                self.accel = ("tcg", f"/dev/kvm is not usable by {user.name if user else 'us'}")
        self._progress(f"creating overlay on {disk.path.name}")
        self.overlay.unlink(missing_ok=True)
        # -u: the template is not opened by name here; qemu gets it as an inspected descriptor
        _run(
            [
                QEMU_IMG,
                "create",
                "-q",
                "-u",
                "-f",
                "qcow2",
                "-F",
                disk.format,
                "-b",
                str(disk.path.resolve()),
                str(self.overlay),
                str(disk.virtual_size),
            ],
            what="create the VM overlay",
        )
        auto_port = self.ssh_port is None
        for attempt in range(3):
            port = self.ssh_port if self.ssh_port is not None else free_port()
            self._progress(f"booting ({self.accel[0]}: {self.accel[1]}), ssh on 127.0.0.1:{port}")
            error = self._launch(port, disk, user)
            if error is None:
                self.ssh_port = port
                break
            if auto_port and "hostfwd" in error and attempt < 2:
                continue  # the port was taken between free_port() and qemu's bind
            kernel = f" (kernel {self.image.kernel})" if self.image.kernel else ""
            raise TargetError(
                f"qemu did not start{kernel}: {error}",
                hint="check the kernel, initrd and disk of the VM image"
                + (f"\nconsole:\n{self.console_tail()}" if self.console_tail() else ""),
            )
        self._started_at = time.monotonic()

    def _launch(self, port: int, disk: DiskImage, user: QemuUser | None) -> str | None:
        """Start qemu once; None when it is up (QMP answers), else its error message."""
        self.kill()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            qmp_fd = self._keep_fd(theirs.detach())
            self._qmp_conn = Qmp(ours)
            fds = QemuFds(
                disk=disk.fd,
                overlay=self._open(self.overlay, os.O_RDWR),
                console=self._open(self.console_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                qmp=qmp_fd,
                kernel=self._keep_fd(_boot_file_fd(self.image.kernel, user))
                if self.image.kernel
                else None,
                initrd=self._keep_fd(_boot_file_fd(self.image.initrd, user))
                if self.image.initrd
                else None,
                extra=tuple(d.fd for d in self.extra_disks),
            )
            log = self._open(self.qemu_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            self._proc = children.spawn(
                self.command(port, fds, disk.format),
                pass_fds=fds.all(),
                stdout=log,
                stderr=log,
                user=user.uid if user else None,
                group=user.gid if user else None,
                extra_groups=user.groups if user else None,
            )
        except BaseException:
            self._close_fds()
            raise
        finally:
            # qemu holds its own copies now; harden keeps only what it reads (QMP, disk fds)
            for fd in self._fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds = []
        try:
            self._qmp_conn.execute("query-status", timeout=60, alive=lambda: self.running)
            return None
        except TargetError as e:
            proc = self._proc
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=2)
            self.kill()
            return _tail(self.qemu_log, 20).strip() or str(e)

    def _keep_fd(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _check_alive(self) -> None:
        if not self.running:
            raise TargetError(
                "the VM's qemu process exited during boot",
                hint=f"last console lines:\n{self.console_tail()}"
                + (f"\nqemu: {_tail(self.qemu_log, 5)}" if _tail(self.qemu_log, 5) else ""),
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
        if self._proc is None:
            raise TargetError("the VM is not started", hint="call start() first")
        limit = time.monotonic() + (self._remaining() if timeout is None else timeout)
        while True:
            blocks = parse_console_host_keys(_read(self.console_log))
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
        if self._proc is None or self.ssh_port is None:
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

    def shutdown(self, timeout: float = 30) -> bool:
        """Power off cleanly (``systemctl poweroff`` over SSH, else ACPI via QMP), then kill.
        True when the guest powered off by itself within ``timeout`` (its file systems were
        unmounted); False when it had to be killed (or was not running)."""
        if not self.running:
            self.kill()
            return False
        self._progress("powering off")
        if not self._ssh("systemctl poweroff --no-block"):
            with contextlib.suppress(TargetError):
                self._qmp("system_powerdown")
        clean = False
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=timeout)
                clean = True
        self.kill()
        return clean

    def kill(self) -> None:
        """End our qemu (SIGTERM to its process group, then SIGKILL) and reap it."""
        try:
            if self._proc is not None:
                children.stop(self._proc)
        finally:
            self._close_fds()

    def console_tail(self, lines: int = 30) -> str:
        return _tail(self.console_log, lines)

    def _qmp(self, command: str) -> None:
        """Send one QMP command (e.g. system_powerdown) and wait for its return."""
        if self._qmp_conn is None or not self.running:
            raise TargetError("the VM's QMP monitor is not available", hint="is the VM running?")
        self._qmp_conn.execute(command, timeout=10, alive=lambda: self.running)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _run(
    cmd: list[str],
    *,
    what: str,
    timeout: float = 600,
    pass_fds: tuple[int, ...] = (),
    file_limit: int | None = None,
) -> None:
    """Run a qemu-img helper as harden's child (bounded in time, output and file size)."""
    try:
        children.run(cmd, timeout=timeout, pass_fds=pass_fds, file_limit=file_limit)
    except FileNotFoundError as e:
        raise TargetError(f"cannot {what}: {cmd[0]} is not installed") from e
    except children.ChildFailed as e:
        err = e.stderr.decode("utf-8", "replace").strip()[-2000:]
        raise TargetError(
            f"cannot {what}: {err or e}", hint="check free disk space and the image path"
        ) from e


# -- sealing ---------------------------------------------------------------------------------------
def seal(overlay: Path, out: Path, *, backing: DiskImage | None = None) -> str:
    """Flatten ``overlay`` (and its backing) into a standalone zstd-compressed qcow2 at ``out``;
    returns its sha256. Atomic: on any failure no partial file remains.

    With ``backing`` (the inspected template the overlay was made on) the chain is given
    explicitly: the backing name recorded in the overlay is not followed.
    """
    if backing is not None:
        check_overlay(Path(overlay))
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    source = str(overlay)
    pass_fds: tuple[int, ...] = ()
    if backing is not None:
        spec = {
            "driver": "qcow2",
            "read-only": True,
            "file": {"driver": "file", "filename": str(Path(overlay).absolute())},
            "backing": backing.spec(),
        }
        source = json_filename(spec)
        pass_fds = (backing.fd,)
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
                source,
                str(tmp),
            ],
            what=f"seal {overlay} into {out}",
            pass_fds=pass_fds,
            # the sealed file is at most the disk plus qcow2 metadata
            file_limit=(
                backing.virtual_size + backing.virtual_size // 8 + (64 << 20)
                if backing is not None
                else resource.RLIM_INFINITY
            ),
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
