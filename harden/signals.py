"""SIGTERM and SIGHUP end harden the way Ctrl-C does.

CI runners, ``timeout`` and a closing terminal send SIGTERM or SIGHUP, whose default action ends
the process at once: ``finally`` blocks never run, so containers, VMs and temporary folders stay
behind. :func:`install` turns them into :class:`Terminated` (a ``KeyboardInterrupt``), so they take
the same clean-up path as SIGINT; the process then exits with 128 + the signal number.
:func:`handled` does the same for the length of a block (with SIGINT too), for code that must
also clean up when it runs outside the CLI (a VM, a disk extraction).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

HANDLED = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM or SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


_state = {"raised": False}


def _handler(signum: int, _frame: FrameType | None) -> None:
    if _state["raised"]:
        return  # the clean-up of the first signal is running: let it finish
    _state["raised"] = True
    raise Terminated(signum)


def install() -> None:
    """Route SIGTERM and SIGHUP into :class:`Terminated` (main thread only; else a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in HANDLED:
        signal.signal(sig, _handler)


_scope = {"depth": 0}


@contextlib.contextmanager
def handled(after_signal: Callable[[], None] | None = None) -> Iterator[None]:
    """Within the block, SIGTERM, SIGHUP and SIGINT raise :class:`Terminated` (once; a second
    signal during the clean-up is ignored) in the main thread; ``after_signal`` runs at the end
    of a block a signal ended (e.g. kill what the unwinding did not reach).

    Nests: only the outermost block installs and restores the handlers. Outside the main thread
    (where Python cannot install handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _scope["depth"] > 0:
        _scope["depth"] += 1
        try:
            yield
        finally:
            _scope["depth"] -= 1
        return
    sigs = (*HANDLED, signal.SIGINT)
    previous = {s: signal.getsignal(s) for s in sigs}
    raised_before = _state["raised"]
    _state["raised"] = False
    _scope["depth"] = 1
    for s in sigs:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        try:
            if _state["raised"] and after_signal is not None:
                after_signal()
        finally:
            _scope["depth"] = 0
            for s, h in previous.items():
                signal.signal(s, h if h is not None else signal.SIG_DFL)
            _state["raised"] = raised_before


def exit_status(exc: BaseException) -> int:
    """The exit status for an interruption: 128 + signal (130 for Ctrl-C)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, Terminated):
            return seen.exit_status
        seen = seen.__cause__ or seen.__context__
    return 130
