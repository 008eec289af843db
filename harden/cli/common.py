"""Helpers shared by the CLI modules: output files, baseline options, plain tables."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import click

from harden.baseline.resolve import Catalogue
from harden.files import write_atomic

if TYPE_CHECKING:
    from harden.app.context import Context
    from harden.attest.keys import PublicKey, Signer

DEFAULT_DIR = Path("images")  # where status, rebuild, plan, revoke and evidence look

baselines_option = click.option(
    "--baselines",
    "baseline_dirs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Extra directory of baseline YAML files (searched before the shipped ones; "
    "also $HARDEN_BASELINES).",
)


F = TypeVar("F", bound=Callable[..., Any])


def trusted_keys_option(help: str, *, required: bool = False) -> Callable[[F], F]:
    """``--key PUB`` (repeatable) -> ``keys``: the trusted public keys a command checks with."""
    return click.option(
        "--key",
        "keys",
        multiple=True,
        required=required,
        type=click.Path(dir_okay=False, path_type=Path),
        help=help,
    )


# `-o json` is a kubectl habit: refuse it rather than write a file named "json".
FORMAT_NAMES = frozenset({"table", "json", "yaml", "sarif", "junit", "html", "github-matrix"})


def _output_path(_ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None and str(value) in FORMAT_NAMES:
        raise click.BadParameter(
            f"'{value}' is a format, not a file.\n"
            f"hint: -o/--output names a FILE; choose the format with -f {value} "
            f"(or write -o ./{value} for a file of that name)",
            param_hint="'-o' / '--output'",
        )
    return value


output_option = click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    callback=_output_path,
    help="Write to FILE (atomically) instead of stdout.",
)


def format_option(choices: Sequence[str], help: str | None = None) -> Any:
    """``-f/--format`` with the same spelling on every reporting command."""
    return click.option(
        "--format",
        "-f",
        "-f",
        "fmt",
        type=click.Choice(list(choices)),
        default=choices[0],
        show_default=True,
        help=help,
    )


class _Ui:
    """Process-wide output settings set by the top-level options (--quiet) and the terminal."""

    quiet = False
    started = time.monotonic()


def set_quiet(quiet: bool) -> None:
    _Ui.quiet = quiet


def is_quiet() -> bool:
    return _Ui.quiet


def color_allowed(stream: TextIO) -> bool:
    """Colour only on a terminal, never with NO_COLOR set (any value) or TERM=dumb."""
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM", "") != "dumb"


def interactive_stderr() -> bool:
    """Progress decorations (elapsed times) only for a person at a terminal."""
    return sys.stderr.isatty() and os.environ.get("TERM", "") != "dumb"


def note(message: str) -> None:
    """A human summary line on stderr (silenced by --quiet)."""
    if not _Ui.quiet:
        _LIVE.close()
        click.echo(message, err=True)


def warn(message: str) -> None:
    """A warning on stderr (kept under --quiet: it may change what the user does)."""
    _LIVE.close()
    click.echo(f"warning: {message}", err=True)


def duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    """click callback: '12h', '30d', '4w' -> timedelta (None stays None)."""
    if value is None:
        return None
    from harden.imagedef import parse_duration

    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e


def catalogue(dirs: Sequence[Path]) -> Catalogue:
    return Catalogue.from_search_path(dirs)


def emit(text: str, output: Path | None) -> None:
    """Data to stdout, or atomically to ``output`` (opened only once there is something)."""
    if not text.endswith("\n"):
        text += "\n"
    if output is None or str(output) == "-":
        _LIVE.close()  # stdout may be the same terminal
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_atomic(output, text.encode())


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False)


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def progress(message: str) -> None:
    """Human progress goes to stderr; on a terminal each line carries the elapsed time since the
    command started and stays open with a spinner and its own running time until the next line
    closes it (then it shows how long that step took); piped or TERM=dumb: plain lines; --quiet
    drops it."""
    if _Ui.quiet:
        return
    if interactive_stderr():
        elapsed = time.monotonic() - _Ui.started
        _LIVE.show(f"[{_elapsed(elapsed)}] {message}")
        return
    click.echo(message, err=True)


def close_progress() -> None:
    """End the open progress line (before other output: a report, an error, a prompt)."""
    _LIVE.close()


class _LiveLine:
    """The newest progress line on a terminal: redrawn every 0.2 s with a spinner and the time
    the step has taken so far, closed by the next line with the step's duration. Drawn from a
    daemon thread; every write holds the lock, so lines from worker threads do not interleave."""

    FRAMES = "|/-\\"

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, *, ticking: bool = True
    ) -> None:
        self._clock = clock
        self._ticking = ticking  # False: no redraw thread (tests draw by hand)
        self._lock = threading.Lock()
        self._line: str | None = None
        self._since = 0.0
        self._frame = 0
        self._thread: threading.Thread | None = None

    def show(self, line: str) -> None:
        with self._lock:
            self._close_locked()
            self._line, self._since, self._frame = line, self._clock(), 0
            self._draw_locked()
            if self._thread is None and self._ticking:
                self._thread = threading.Thread(
                    target=self._tick, name="harden-progress", daemon=True
                )
                self._thread.start()

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _tick(self) -> None:
        while True:
            time.sleep(0.2)
            self.redraw()

    def redraw(self) -> None:
        with self._lock:
            if self._line is not None:
                self._frame += 1
                self._draw_locked()

    def _draw_locked(self) -> None:
        assert self._line is not None
        step = self._clock() - self._since
        suffix = f" {self.FRAMES[self._frame % len(self.FRAMES)]} {step:.0f}s" if step >= 1 else ""
        width = shutil.get_terminal_size((100, 24)).columns - len(suffix) - 1
        line = self._line if len(self._line) <= width else self._line[: max(width - 1, 0)] + "~"
        sys.stderr.write("\r\033[K" + line + suffix)
        sys.stderr.flush()

    def _close_locked(self) -> None:
        if self._line is None:
            return
        step = self._clock() - self._since
        took = f" ({_elapsed(step)})" if step >= 1 else ""
        sys.stderr.write("\r\033[K" + self._line + took + "\n")
        sys.stderr.flush()
        self._line = None


_LIVE = _LiveLine()


def _elapsed(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    return f"{minutes:02d}:{sec:02d}"


def context() -> Context:
    """The use cases' collaborators for this command: $HARDEN_NOW or the system clock, the
    audit log under $HARDEN_HOME, registry clients with docker config credentials, progress on
    stderr."""
    from harden.app.context import Context

    return Context.from_environment(progress)


def load_signer_from_uri(uri: str, *, allow_unencrypted: bool = False) -> Signer:
    """The signer for ``--key URI``; the password from $HARDEN_KEY_PASSWORD, else a prompt on
    a terminal (no terminal: exit 4 naming the variable, never a GetPassWarning)."""
    from harden.attest import keys
    from harden.errors import SigningKeyError

    if keys.PASSWORD_ENV not in os.environ:
        # first without a password: a public key or an unencrypted one is said before any
        # prompt, and an allowed unencrypted key needs no password at all
        try:
            return keys.load_signer(uri, None, allow_unencrypted=allow_unencrypted)
        except SigningKeyError as e:
            if "no password was given" not in e.message:
                raise
    return keys.load_signer(
        uri, keys.password_from_env_or_prompt(tty_prompt()), allow_unencrypted=allow_unencrypted
    )


def _is_terminal() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()


def tty_prompt(confirm: bool = False) -> Any:
    """A hidden password prompt when stdin and stderr are terminals, else None."""
    if not _is_terminal():
        return None

    def prompt() -> str:
        value: str = click.prompt(
            "Key password", hide_input=True, confirmation_prompt=confirm, err=True
        )
        return value

    return prompt


allow_unencrypted_option = click.option(
    "--allow-unencrypted-key",
    "allow_unencrypted",
    is_flag=True,
    help="Accept a private key that is not encrypted with a password (refused by default).",
)


def load_trusted(keys: Sequence[Path]) -> list[PublicKey]:
    from harden.attest.keys import load_public_key

    return [load_public_key(k) for k in keys]


def compliance_state(compliant: bool) -> str:
    """How a table shows a verification outcome."""
    return "compliant" if compliant else "NOT compliant"


fail_on_option = click.option(
    "--fail-on",
    type=click.Choice(["low", "medium", "high", "critical"]),
    default=None,
    metavar="SEVERITY",
    help="Fail only for failed rules of SEVERITY or above (low, medium, high, critical); "
    "errors always fail. Default: every failure.",
)

exit_code_option = click.option(
    "--exit-code",
    type=click.IntRange(0, 255),
    default=None,
    metavar="N",
    help="Exit N instead of 1 on a policy failure; --exit-code 0 reports without failing "
    "(e.g. to upload SARIF, then decide in a later step).",
)


def policy_exit(failed: bool, exit_code: int | None) -> None:
    """End the command with the policy outcome: 1 (or --exit-code N) when ``failed``."""
    if failed:
        code = 1 if exit_code is None else exit_code
        if code:
            raise click.exceptions.Exit(code)


def complete_baseline_ids(
    _ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[Any]:
    """Shell completion: the ids on the baseline search path ($HARDEN_BASELINES, shipped)."""
    from click.shell_completion import CompletionItem

    try:
        ids = catalogue(()).ids()
    except Exception:  # completion must never print a traceback into the shell
        return []
    return [CompletionItem(i) for i in ids if i.startswith(incomplete)]


def complete_definitions(
    _ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[Any]:
    """Shell completion: image definitions (*.yaml / *.yml) below the typed directory (default
    images/), and directories to descend into."""
    from click.shell_completion import CompletionItem

    typed = Path(incomplete) if incomplete else DEFAULT_DIR
    folder = typed if incomplete.endswith("/") or typed.is_dir() else typed.parent
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return [CompletionItem(incomplete, type="file")]
    out = []
    for p in entries:
        text = str(p) + ("/" if p.is_dir() else "")
        if not text.startswith(incomplete):
            continue
        if p.is_dir():
            out.append(CompletionItem(text, type="dir"))
        elif p.suffix in (".yaml", ".yml"):
            out.append(CompletionItem(text, type="file"))
    return out
