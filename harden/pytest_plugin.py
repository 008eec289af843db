"""pytest plugin: run a team's testinfra suite against anything harden can open.

``pytest --harden-target REF tests/`` binds the ``host`` fixture (a testinfra ``Host``) to REF:
an image or registry reference (one throwaway container, network ``none``, for the whole session),
``docker://CONTAINER``, or ``ssh://USER@HOST:PORT`` (pinned host keys from ``--harden-known-hosts``,
one SSH connection for the whole session). harden's verify and build stages run the same files
through this plugin, so a suite behaves the same both ways.

Markers: ``@pytest.mark.controls("iso27017:CLD.9.5.2", ...)`` names the controls a test covers.
``--harden-test-timeout`` bounds each test (then it is an ``error``); ``--harden-results FILE``
writes one JSON object per test (node id, outcome, duration, failure text, controls).
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from testinfra.backend.base import BaseBackend

MAX_LONGREPR = 4000


class TestTimeout(Exception):
    """A test ran longer than --harden-test-timeout."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harden", "harden: run testinfra suites against a harden target")
    group.addoption("--harden-target", metavar="REF", help="image, registry ref, docker://, ssh://")
    group.addoption("--harden-known-hosts", metavar="FILE", help="pinned SSH host keys")
    group.addoption("--harden-identity", metavar="FILE", help="SSH private key")
    group.addoption(
        "--harden-test-timeout",
        metavar="SECONDS",
        type=float,
        default=None,  # None: 120 s with --harden-target, else no limit (harden's own tests)
        help="per-test time limit; a test over it is an error (default 120 with --harden-target)",
    )
    group.addoption("--harden-results", metavar="FILE", help="write results as JSON lines")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "controls(*ids): controls this test covers, e.g. iso27017:CLD.9.5.2"
    )
    if config.getoption("--harden-target"):
        config.pluginmanager.register(_HostFixture(config), "harden-host")
    path = config.getoption("--harden-results")
    if path:
        config.pluginmanager.register(_Recorder(Path(path)), "harden-results")


class _HostFixture:
    """Registered after testinfra's own plugin, so its ``host`` fixture wins."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.fixture(scope="session")
    def harden_target(self) -> Iterator[Any]:
        """The Target harden opened for REF (one container or SSH connection per session)."""
        from harden.app.verify import open_target

        opt = self.config.getoption
        with open_target(
            str(opt("--harden-target")),
            known_hosts=_path(opt("--harden-known-hosts")),
            identity=_path(opt("--harden-identity")),
        ) as target:
            yield target

    @pytest.fixture(scope="session")
    def host(self, harden_target: Any) -> Any:
        """testinfra's Host, bound to the harden target."""
        import testinfra.host

        limit = self.config.getoption("--harden-test-timeout") or 120.0
        return testinfra.host.Host(_TargetBackend(harden_target, float(limit)))

    @pytest.fixture(scope="session")
    def harden_image_config(self, harden_target: Any) -> dict[str, Any] | None:
        """The image's config (User, Env, Cmd, Volumes, Labels); None for a machine."""
        cfg: dict[str, Any] | None = harden_target.image_config()
        return cfg


def _path(value: object) -> Path | None:
    return Path(str(value)) if value else None


class _TargetBackend(BaseBackend):  # type: ignore[misc]
    """A testinfra backend over harden's own Target: its pinned keys, its one connection."""

    NAME = "harden"

    def __init__(self, target: Any, timeout: float) -> None:
        self._target = target
        self._timeout = timeout
        super().__init__(target.describe())

    def run(self, command: str, *args: str, **kwargs: Any) -> Any:
        cmd = self.get_command(command, *args)
        res = self._target.run(cmd, timeout=self._timeout)
        return self.result(res.exit_status, self.encode(cmd), res.stdout, res.stderr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    given = item.config.getoption("--harden-test-timeout")
    default = 120.0 if item.config.getoption("--harden-target") else 0.0
    limit = float(given if given is not None else default)
    if limit <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expired(signum: int, frame: FrameType | None) -> None:
        raise TestTimeout(f"test did not finish within {limit:g}s (--harden-test-timeout)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def controls_of(item: pytest.Item) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for mark in item.iter_markers("controls"):
        for arg in mark.args:
            scheme, sep, ident = str(arg).partition(":")
            if sep and scheme and ident:
                found.setdefault(scheme, []).append(ident)
    return {k: sorted(set(v)) for k, v in sorted(found.items())}


class _Recorder:
    """One JSON line per test: passed / failed / skipped / error (setup, teardown, timeout)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._items: dict[str, pytest.Item] = {}
        self._started: dict[str, float] = {}
        self._reports: dict[str, list[pytest.TestReport]] = {}
        self._out = path.open("w", encoding="utf-8")

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        self._items = {i.nodeid: i for i in items}

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            message = _message(report) or "the file could not be collected"
            self._write(
                report.nodeid or "<collection>", "error", 0.0, _text(report), {}, "", message
            )

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self._started[nodeid] = time.monotonic()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._reports.setdefault(report.nodeid, []).append(report)

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        reports = self._reports.pop(nodeid, [])
        outcome, text, message = "passed", "", ""
        for r in reports:
            if r.when == "call" and r.failed:
                timed_out = "TestTimeout" in _text(r)
                outcome, text = ("error" if timed_out else "failed"), _text(r)
                message = _message(r)
            elif r.failed:  # setup or teardown broke: the test proves nothing
                outcome, text = "error", f"{r.when}: {_text(r)}"
                message = f"{r.when}: {_message(r)}"
            elif r.skipped and outcome == "passed":
                outcome, text = "skipped", _skip_reason(r)
        item = self._items.get(nodeid)
        title = ""
        if item is not None and isinstance(item, pytest.Function) and item.obj.__doc__:
            title = item.obj.__doc__.strip().splitlines()[0]
        duration = time.monotonic() - self._started.pop(nodeid, time.monotonic())
        controls = controls_of(item) if item is not None else {}
        self._write(nodeid, outcome, duration, text, controls, title, message)

    def pytest_sessionfinish(self) -> None:
        with contextlib.suppress(OSError):
            self._out.close()

    def _write(
        self,
        nodeid: str,
        outcome: str,
        duration: float,
        text: str,
        controls: dict[str, list[str]],
        title: str,
        message: str = "",
    ) -> None:
        rec = {
            "nodeid": nodeid,
            "outcome": outcome,
            "duration": round(duration, 3),
            "text": text[-MAX_LONGREPR:],
            "controls": controls,
            "title": title,
            "message": message[:MAX_LONGREPR],
        }
        self._out.write(json.dumps(rec) + "\n")
        self._out.flush()


def _text(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The failure text, ending with the exception's own message (the line a reader wants)."""
    text = str(report.longreprtext or "")
    message = _message(report)
    return f"{text}\n{message}" if message else text


def _message(report: pytest.TestReport | pytest.CollectReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    return str(getattr(crash, "message", "") or "")


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr or "")
