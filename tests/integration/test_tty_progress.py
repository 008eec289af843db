"""Progress as a person sees it (a real TTY from tmux): lines carry the elapsed time on a
terminal, and none when stderr is piped."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from needs import unavailable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TIMED = re.compile(r"^\[\d\d:\d\d\] ", re.M)


@pytest.fixture
def definition(tmp_path: Path) -> Path:
    if shutil.which("tmux") is None:
        unavailable("tmux (apt-get install tmux)")
    uid = secrets.token_hex(4)
    text = (ROOT / "images" / "debian12.yaml").read_text()
    text = re.sub(
        r"(?m)^destination: .*$", f"destination: 127.0.0.1:5000/cikit-tty-{uid}/g:1", text
    )
    text = re.sub(r"(?m)^promote_to: .*$", "", text)
    text = re.sub(r"(?ms)^tests:.*", "", text)
    path = tmp_path / "images" / "tty.yaml"
    path.parent.mkdir()
    path.write_text(text)
    return path


def _command(definition: Path, tmp_path: Path) -> str:
    env = f"PYTHONPATH={shlex.quote(str(ROOT))} HARDEN_HOME={shlex.quote(str(tmp_path / 'home'))}"
    harden = f"{shlex.quote(sys.executable)} -c 'from harden.cli import main; main()'"
    return f"{env} {harden} build {shlex.quote(str(definition))} --no-push --force"


def test_build_progress_has_times_on_a_tty_and_none_when_piped(
    definition: Path, tmp_path: Path
) -> None:
    session = f"cikit-{secrets.token_hex(4)}"
    log = tmp_path / "tty.log"
    done = tmp_path / "done"
    cmd = f"{_command(definition, tmp_path)} >/dev/null; touch {shlex.quote(str(done))}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARDEN_", "TMUX"))}
    env["TERM"] = "xterm-256color"
    subprocess.run(
        [
            "tmux",
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "200",
            "-y",
            "50",
            "sh",
            "-c",
            f"{cmd}; sleep 30",
        ],
        env=env,
        check=True,
        timeout=30,
    )
    try:
        subprocess.run(
            ["tmux", "pipe-pane", "-t", session, "-o", f"cat >> {shlex.quote(str(log))}"],
            check=True,
            timeout=30,
        )
        deadline = time.monotonic() + 600
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(1)
        assert done.exists(), "the build did not finish in the tmux session"
        screen = subprocess.run(
            ["tmux", "capture-pane", "-p", "-S", "-1000", "-t", session],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False, timeout=30)
    raw = log.read_bytes().decode(errors="replace") if log.exists() else ""  # keeps \r
    seen = screen + raw
    assert TIMED.search(seen), seen[-3000:]
    # the open line spins with its running time, and a finished step says how long it took
    assert re.search(r"\r\x1b\[K\[\d\d:\d\d\] [^\r\n]* [|/\\-] \d+s", raw), raw[-3000:]
    assert re.search(r"(?m)^\[\d\d:\d\d\] .* \(\d\d:\d\d\)$", screen), screen[-3000:]

    piped = subprocess.run(
        ["sh", "-c", _command(definition, tmp_path)],
        env={**env, "TERM": "xterm-256color"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    dest = re.search(r"(?m)^destination: (\S+)", definition.read_text())
    assert dest is not None
    subprocess.run(["docker", "rmi", "-f", dest.group(1)], capture_output=True, check=False)
    assert piped.returncode in (0, 1), piped.stderr[-3000:]
    assert piped.stderr.strip()  # progress is there ...
    assert not TIMED.search(piped.stderr), piped.stderr[-3000:]  # ... without times
    assert "\r" not in piped.stderr and "\x1b" not in piped.stderr  # ... and no redraws
