"""Child processes that never outlive harden, and signals that clean up like Ctrl-C.

Every helper process harden starts for a VM (qemu, qemu-img) goes through :func:`spawn`:

- it runs in its own process group (its own session), so a terminal's Ctrl-C or a CI runner's
  process-group signal reaches harden, which then ends the child in order;
- it gets ``PR_SET_PDEATHSIG`` = SIGKILL (set in the child, after any user switch, and re-checked
  against the parent's PID to close the fork race), so even a SIGKILL of harden ends it;
- it gets ``PR_SET_NO_NEW_PRIVS`` (no set-uid escalation from anything it might execute);
- it never daemonizes: harden holds the :class:`subprocess.Popen` and reaps it.

:func:`cleanup_on_signals` turns SIGTERM, SIGHUP and SIGINT into :class:`Terminated` (a
:class:`KeyboardInterrupt`), so ``with`` blocks unwind exactly as for Ctrl-C: VMs are killed,
overlays and temporary directories removed. A second signal during that clean-up is ignored.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import Any

from harden.signals import handled  # one handler, one exception (Terminated) for every path

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38


_libc: Any = None
_live: set[subprocess.Popen[Any]] = set()
_live_lock = threading.Lock()


def _prctl() -> Callable[..., int]:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fn: Callable[..., int] = _libc.prctl
    return fn


def cleanup_on_signals() -> contextlib.AbstractContextManager[None]:
    """Within the block, SIGTERM/SIGHUP/SIGINT raise :class:`Terminated` (once) in the main
    thread, and a block a signal ended kills every child still alive (nests; see
    :func:`harden.signals.handled`)."""
    return handled(after_signal=kill_all)


def _preexec(parent: int, limits: Sequence[tuple[int, int]]) -> Callable[[], None]:
    prctl = _prctl()  # resolved in the parent: the child only calls it

    def run_in_child() -> None:
        # runs after subprocess switched user/groups (a credential change clears PDEATHSIG)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # harden died between fork and prctl
            os._exit(125)
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        for what, value in limits:
            resource.setrlimit(what, (value, value))

    return run_in_child


def spawn(
    cmd: Sequence[str],
    *,
    pass_fds: Sequence[int] = (),
    stdin: Any = subprocess.DEVNULL,
    stdout: Any = None,
    stderr: Any = None,
    user: int | None = None,
    group: int | None = None,
    extra_groups: Sequence[int] | None = None,
    limits: Sequence[tuple[int, int]] = (),
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` as a contained child (see the module docstring); :func:`stop` ends it."""
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs["user"] = user
    if group is not None:
        kwargs["group"] = group
    if extra_groups is not None:
        kwargs["extra_groups"] = list(extra_groups)
    proc = subprocess.Popen(
        list(cmd),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
        preexec_fn=_preexec(os.getpid(), limits),
        **kwargs,
    )
    with _live_lock:
        _live.add(proc)
    return proc


def stop(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """End ``proc`` and its process group: SIGTERM, then SIGKILL after ``grace`` s; reap it."""
    try:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=30)
    finally:
        with _live_lock:
            _live.discard(proc)


def _signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    # start_new_session: the child's PID is its process group id. The group is only ours while
    # the leader is not reaped (a reaped PID may be reused), so after reaping only the PID goes.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if proc.returncode is None:
            os.killpg(proc.pid, sig)


def kill_all() -> None:
    """SIGKILL every child :func:`spawn` started that is still running (last resort)."""
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        with contextlib.suppress(Exception):
            stop(proc, grace=0.5)


def live_children() -> list[int]:
    """PIDs of spawned children not yet stopped (for tests and diagnostics)."""
    with _live_lock:
        return [p.pid for p in _live if p.poll() is None]


class ChildFailed(Exception):
    """A helper exited non-zero, timed out or wrote too much; ``str()`` says which."""

    def __init__(self, message: str, returncode: int | None, stdout: bytes, stderr: bytes) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def run(
    cmd: Sequence[str],
    *,
    timeout: float,
    pass_fds: Sequence[int] = (),
    max_output: int = 4 << 20,
    limits: Sequence[tuple[int, int]] = (),
    check: bool = True,
    file_limit: int | None = None,
    user: tuple[int, int, Sequence[int]] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a helper to completion with a time limit and bounded output (bytes).

    Output beyond ``max_output`` bytes (each stream) is an error; the child is killed on timeout,
    on too much output and on any exception in harden (a signal included). Every file the child
    writes is limited to ``file_limit`` bytes (RLIMIT_FSIZE; default: ``max_output``).
    ``user`` = (uid, gid, groups) runs it as that user.
    """
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        fsize = file_limit if file_limit is not None else max_output + 1
        proc = spawn(
            cmd,
            pass_fds=pass_fds,
            stdout=out,
            stderr=err,
            limits=[(resource.RLIMIT_FSIZE, fsize), *limits],
            user=user[0] if user else None,
            group=user[1] if user else None,
            extra_groups=user[2] if user else None,
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(proc, grace=1)
            raise ChildFailed(
                f"{os.path.basename(cmd[0])} did not finish within {timeout:g} s", None, b"", b""
            ) from None
        finally:
            stop(proc, grace=1)
        sizes = [os.fstat(f.fileno()).st_size for f in (out, err)]
        stdout, stderr = (_read(f, max_output) for f in (out, err))
    if proc.returncode == -signal.SIGXFSZ or max(sizes) > max_output:
        raise ChildFailed(
            f"{os.path.basename(cmd[0])} wrote more than {max_output} bytes",
            proc.returncode,
            stdout[:max_output],
            stderr[:max_output],
        )
    if check and proc.returncode != 0:
        raise ChildFailed(
            f"{os.path.basename(cmd[0])} exited with {proc.returncode}",
            proc.returncode,
            stdout,
            stderr,
        )
    return subprocess.CompletedProcess(list(cmd), proc.returncode, stdout, stderr)


def _read(f: Any, limit: int) -> bytes:
    f.seek(0)
    data: bytes = f.read(limit)
    return data
