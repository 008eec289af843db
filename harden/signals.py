"""SIGTERM and SIGHUP end harden the way Ctrl-C does.

CI runners, ``timeout`` and a closing terminal send SIGTERM or SIGHUP, whose default action ends
the process at once: ``finally`` blocks never run, so containers, VMs and temporary folders stay
behind. :func:`install` turns them into :class:`Terminated` (a ``KeyboardInterrupt``), so they take
the same clean-up path as SIGINT; the process then exits with 128 + the signal number.
"""

from __future__ import annotations

import signal
import threading
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


def exit_status(exc: BaseException) -> int:
    """The exit status for an interruption: 128 + signal (130 for Ctrl-C)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, Terminated):
            return seen.exit_status
        seen = seen.__cause__ or seen.__context__
    return 130
