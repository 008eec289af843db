"""Conventions shared by the commands: -f/-o, `-o json` refused, --quiet, completion, config file,
colour rules, --fail-on thresholds."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from harden.cli import cli
from harden.cli.common import color_allowed
from harden.results import BaselineRef, RuleResult, Status, VerifyReport

ROOT = Path(__file__).resolve().parents[2]


def harden(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HARDEN_")}
    full_env["PYTHONPATH"] = str(ROOT)
    full_env["XDG_CONFIG_HOME"] = str(cwd / "xdg")
    full_env["XDG_CONFIG_DIRS"] = str(cwd / "xdg-dirs")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", "from harden.cli import main; main()", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("fmt", ["json", "yaml", "table", "sarif", "junit", "html"])
def test_output_given_a_format_name_is_refused_with_a_hint(tmp_path: Path, fmt: str) -> None:
    proc = harden("baseline", "list", "-o", fmt, cwd=tmp_path)
    assert proc.returncode == 2
    assert f"-f {fmt}" in proc.stderr
    assert not (tmp_path / fmt).exists()


def test_short_format_and_output_file(tmp_path: Path) -> None:
    proc = harden("baseline", "list", "-f", "json", "-o", "out.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    doc = json.loads((tmp_path / "out.json").read_text())
    assert "debian-container" in {b["id"] for b in doc["baselines"]}


def test_every_format_option_has_the_short_f() -> None:
    from harden.cli import COMMANDS

    runner = CliRunner()
    seen = 0
    for name in COMMANDS:
        out = runner.invoke(cli, [name, "--help"]).output
        if "--format" in out:
            assert "-f, --format" in out, name
            seen += 1
    assert seen >= 6


def _option_envvars() -> dict[str, str]:
    """Every option's generated HARDEN_<COMMAND>_<OPTION> name -> the command path."""
    import click

    ctx = click.Context(cli)
    found: dict[str, str] = {}

    def walk(cmd: click.Command, path: str) -> None:
        for p in cmd.params:
            if isinstance(p, click.Option) and isinstance(p.envvar, str):
                found[p.envvar] = f"{path} --{p.name}"
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None
                walk(sub, f"{path} {name}")

    walk(cli, "harden")
    return found


def test_option_variables_never_shadow_a_global_variable() -> None:
    # HARDEN_AUDIT_KEY (the audit signer) must not also be `harden audit --key`, and so on: a
    # generated option variable that equals a global one would give one setting two meanings.
    import re

    root = Path(__file__).resolve().parents[2]
    globals_ = {
        m.group(0)  # string literals: the variables the code reads
        for folder in ("harden", "builder", "verifiers")
        for f in (root / folder).rglob("*.py")
        for m in re.finditer(r"(?<=[\"'])HARDEN_[A-Z][A-Z0-9_]*[A-Z0-9](?=[\"'])", f.read_text())
    }
    generated = _option_envvars()
    assert len(generated) > 50
    same_meaning = {"HARDEN_DEBUG"}  # the top-level --debug is that variable
    clashes = {v: generated[v] for v in globals_ & set(generated) - same_meaning}
    assert not clashes


def test_config_file_then_env_then_flags(tmp_path: Path) -> None:
    (tmp_path / "harden.toml").write_text('[baseline.list]\nformat = "json"\n')
    from_file = harden("baseline", "list", cwd=tmp_path)
    assert from_file.returncode == 0, from_file.stderr
    assert json.loads(from_file.stdout)["schema_version"] == 1
    from_env = harden(
        "baseline", "list", cwd=tmp_path, env={"HARDEN_BASELINE_LIST_FORMAT": "table"}
    )
    assert from_env.stdout.startswith("ID ")
    from_flag = harden(
        "baseline", "list", "-f", "json", cwd=tmp_path, env={"HARDEN_BASELINE_LIST_FORMAT": "table"}
    )
    assert from_flag.stdout.startswith("{")


def test_xdg_config_used_when_no_local_file(tmp_path: Path) -> None:
    cfg = tmp_path / "xdg" / "harden" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('[baseline.list]\nformat = "json"\n')
    proc = harden("baseline", "list", cwd=tmp_path)
    assert proc.stdout.startswith("{"), proc.stderr


def test_config_typo_is_an_input_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "harden.toml").write_text('[verify]\nformt = "json"\n')
    proc = harden("baseline", "list", cwd=tmp_path)
    assert proc.returncode == 3
    assert "harden.toml" in proc.stderr
    assert "formt" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_completion_scripts_and_baseline_ids(tmp_path: Path) -> None:
    for shell in ("bash", "zsh", "fish"):
        proc = harden("completion", shell, cwd=tmp_path)
        assert proc.returncode == 0
        assert "_HARDEN_COMPLETE" in proc.stdout
    proc = harden(
        cwd=tmp_path,
        env={
            "_HARDEN_COMPLETE": "bash_complete",
            "COMP_WORDS": "harden verify x --baseline debian-v",
            "COMP_CWORD": "4",
        },
    )
    assert "plain,debian-vm" in proc.stdout.splitlines()
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "app.yaml").write_text("x: 1\n")
    (tmp_path / "images" / "notes.txt").write_text("x\n")
    proc = harden(
        cwd=tmp_path,
        env={
            "_HARDEN_COMPLETE": "bash_complete",
            "COMP_WORDS": "harden build images/",
            "COMP_CWORD": "2",
        },
    )
    assert proc.stdout.splitlines() == ["file,images/app.yaml"]
    proc = harden(
        cwd=tmp_path,
        env={"_HARDEN_COMPLETE": "bash_complete", "COMP_WORDS": "harden comp", "COMP_CWORD": "1"},
    )
    assert proc.stdout.splitlines() == ["plain,completion"]


class _Tty:
    def isatty(self) -> bool:
        return True


def test_colour_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert color_allowed(_Tty())  # type: ignore[arg-type]
    monkeypatch.setenv("TERM", "dumb")
    assert not color_allowed(_Tty())  # type: ignore[arg-type]
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("NO_COLOR", "")
    assert not color_allowed(_Tty())  # type: ignore[arg-type]


def test_quiet_drops_summary_lines(tmp_path: Path) -> None:
    loud = harden("baseline", "lint", str(ROOT / "baselines" / "debian-common.yaml"), cwd=tmp_path)
    quiet = harden(
        "-q", "baseline", "lint", str(ROOT / "baselines" / "debian-common.yaml"), cwd=tmp_path
    )
    assert loud.returncode == quiet.returncode == 0
    assert loud.stderr.strip() or loud.stdout.strip()
    assert quiet.stderr == ""


def _report(*results: tuple[Status, str]) -> VerifyReport:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return VerifyReport(
        image="x",
        digest=None,
        target="container",
        platform="debian 12",
        baseline=BaselineRef("b", "1", "sha256:" + "0" * 64),
        results=tuple(
            RuleResult(f"r{i}", status, "t", sev, "file", {})
            for i, (status, sev) in enumerate(results)
        ),
        started_at=now,
        finished_at=now,
    )


def test_fail_on_threshold() -> None:
    low_fail = _report((Status.FAILED, "low"), (Status.PASSED, "high"))
    assert not low_fail.compliant_at(None)
    assert not low_fail.compliant_at("low")
    assert low_fail.compliant_at("medium")
    assert not _report((Status.FAILED, "critical")).compliant_at("high")
    assert not _report((Status.ERROR, "low")).compliant_at("critical")  # errors always count
    assert not _report((Status.FAILED, "weird")).compliant_at("critical")  # unknown ranks high


def test_live_progress_line_spins_then_closes_with_the_step_time(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from harden.cli.common import _LiveLine

    now = [100.0]
    live = _LiveLine(lambda: now[0], ticking=False)
    live.show("[00:00] pulling base")
    now[0] += 0.5
    live.redraw()  # under a second: no spinner yet
    now[0] += 2.0
    live.redraw()
    live.redraw()
    now[0] += 70.0
    live.show("[01:12] remediation")  # closes the first line with its duration
    live.close()
    live.close()  # idempotent
    err = capsys.readouterr().err
    frames = err.split("\r\x1b[K")
    assert frames[1:4] == ["[00:00] pulling base"] * 2 + ["[00:00] pulling base - 2s"]
    assert frames[4] == "[00:00] pulling base \\ 2s"  # the spinner turned
    assert frames[5] == "[00:00] pulling base (01:12)\n"  # the step took 72.5 s
    assert frames[6] == "[01:12] remediation"
    assert frames[7] == "[01:12] remediation\n"  # closed at once: no duration
    assert len(frames) == 8
