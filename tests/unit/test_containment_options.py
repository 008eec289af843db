"""Containment options, golden labels, the host's apt sources and signal handling (no engine)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from harden.builder.container_build import GOLDEN_LABELS, golden_labels
from harden.builder.debs import (
    AptSource,
    Deb,
    host_sources,
    image_sources,
    parse_os_release,
)
from harden.builder.docker_engine import (
    CAPABILITIES,
    TEMPORARY_LABEL,
    Containment,
    Step,
    clean_image_config,
)

from harden import signals
from harden.errors import EnvironmentProblem, ExitCode, ImageDefinitionError, InputError

# ---------------------------------------------------------------- containment


@pytest.mark.parametrize("step", list(Step))
def test_every_step_is_contained(step: Step) -> None:
    opts = Containment().options(step)
    assert opts["network_mode"] == "none"
    assert opts["cap_drop"] == ["ALL"]
    assert opts["cap_add"] == list(CAPABILITIES[step])
    assert opts["security_opt"] == ["no-new-privileges"]
    assert opts["mem_limit"] == opts["memswap_limit"] == 1 << 30  # no swap on top
    assert opts["pids_limit"] == 512 and opts["nano_cpus"] == 10**9
    assert opts["read_only"] is (step is Step.INSPECT)


def test_inspection_reads_everything_and_writes_nothing() -> None:
    opts = Containment().options(Step.INSPECT)
    assert opts["cap_add"] == ["DAC_READ_SEARCH"]
    assert opts["read_only"] is True and set(opts["tmpfs"]) == {"/tmp"}
    # nothing grants more than the remediation needs: no SYS_*, NET_*, MKNOD, SETUID
    granted = {c for caps in CAPABILITIES.values() for c in caps}
    assert granted <= {"CHOWN", "DAC_READ_SEARCH", "FOWNER", "FSETID"}


def test_limits_come_from_the_environment() -> None:
    c = Containment.from_env(
        {
            "HARDEN_CONTAINER_MEMORY": "512m",
            "HARDEN_CONTAINER_PIDS": "64",
            "HARDEN_CONTAINER_CPUS": "0.5",
            "HARDEN_STEP_TIMEOUT": "90",
            "HARDEN_CHECK_TIMEOUT": "15",
        }
    )
    assert (c.memory, c.pids, c.cpus) == (512 << 20, 64, 0.5)
    assert c.timeout(Step.INSPECT) == 15 and c.timeout(Step.INSTALL) == 90
    assert c.timeout(Step.REMEDIATE) == 90
    assert Containment.from_env({}) == Containment()


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("HARDEN_CONTAINER_MEMORY", "lots"),
        ("HARDEN_CONTAINER_MEMORY", "1m"),
        ("HARDEN_CONTAINER_PIDS", "0"),
        ("HARDEN_CHECK_TIMEOUT", "-3"),
        ("HARDEN_CONTAINER_CPUS", "nan"),
    ],
)
def test_bad_limits_are_invalid_input(var: str, value: str) -> None:
    with pytest.raises(InputError) as e:
        Containment.from_env({var: value})
    assert e.value.exit_code is ExitCode.INVALID_INPUT and var in e.value.message


# ---------------------------------------------------------------- labels


def test_golden_labels_never_pass_on_a_harden_label_of_the_base() -> None:
    harden = {k: "v" for k in GOLDEN_LABELS}
    labels = golden_labels(
        {
            TEMPORARY_LABEL: "true",
            "dev.harden.compliant": "true",
            "dev.harden.baseline.id": "debian-common",
            "org.example.vendor": "acme",
        },
        {"org.example.team": "qa"},
        harden,
    )
    assert {k for k in labels if k.startswith("dev.harden.")} == {
        k for k in GOLDEN_LABELS if k.startswith("dev.harden.")
    }
    assert labels["dev.harden.baseline.id"] == "v"
    assert labels["org.example.vendor"] == "acme" and labels["org.example.team"] == "qa"


@pytest.mark.parametrize("key", [TEMPORARY_LABEL, "dev.harden.compliant", GOLDEN_LABELS[0]])
def test_a_definition_cannot_set_harden_labels(key: str) -> None:
    with pytest.raises(ImageDefinitionError):
        golden_labels({}, {key: "x"}, {})


def test_clean_image_config_keeps_layers_and_settings_and_only_the_labels() -> None:
    attrs = {
        "Architecture": "amd64",
        "Os": "linux",
        "Created": "2026-01-01T00:00:00.123Z",
        "Config": {
            "Hostname": "0123456789ab",
            "Image": "sha256:base",
            "User": "app",
            "Env": ["PATH=/usr/bin"],
            "Cmd": ["bash"],
            "Entrypoint": None,
            "WorkingDir": "",
            "Labels": {TEMPORARY_LABEL: "true", "a": "b"},
        },
        "RootFS": {"Type": "layers", "Layers": ["sha256:l1", "sha256:l2"]},
    }
    history = [  # newest first, as the engine returns it
        {"Created": 1767225600, "CreatedBy": "/bin/sh -c remediate", "Size": 10, "Comment": ""},
        {"Created": 1767225500, "CreatedBy": "", "Size": 0, "Comment": "metadata only"},
        {"Created": 1767225400, "CreatedBy": "", "Size": 5, "Comment": "Imported from -"},
    ]
    cfg = clean_image_config(attrs, history, {"x": "y"})
    assert cfg["config"] == {
        "User": "app",
        "Env": ["PATH=/usr/bin"],
        "Cmd": ["bash"],
        "Labels": {"x": "y"},
    }
    assert cfg["rootfs"] == {"type": "layers", "diff_ids": ["sha256:l1", "sha256:l2"]}
    assert [h.get("empty_layer", False) for h in cfg["history"]] == [False, True, False]
    assert cfg["history"][0]["comment"] == "Imported from -"
    assert cfg["history"][2]["created"] == "2026-01-01T00:00:00Z"


# ---------------------------------------------------------------- the host's apt sources


def test_host_sources_reads_deb822_and_one_line_lists(tmp_path: Path) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.invalid/archive/\n"
        "Suites: bookworm bookworm-updates\nComponents: main contrib\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb-src\nURIs: http://mirror.invalid/archive\nSuites: bookworm\n"
        "Components: main\n\n"
        "Types: deb\nEnabled: no\nURIs: http://off.invalid/archive\nSuites: bookworm\n"
        "Components: main\n"
    )
    (d / "security.list").write_text(
        "deb [signed-by=/k.gpg] http://sec.invalid/archive-security bookworm-security main\n"
    )
    (d / "ignored.list.disabled").write_text("deb http://no.invalid/ bookworm main\n")
    found = host_sources(tmp_path)
    assert found == [
        AptSource("http://mirror.invalid/archive", "bookworm", ("main", "contrib")),
        AptSource("http://mirror.invalid/archive", "bookworm-updates", ("main", "contrib")),
        AptSource("http://sec.invalid/archive-security", "bookworm-security", ("main",)),
    ]
    trixie = image_sources(found, "bookworm", "trixie", {})
    assert [s.suite for s in trixie] == ["trixie", "trixie-updates", "trixie-security"]
    assert "signed-by=/usr/share/keyrings/debian-archive-keyring.gpg" in trixie[0].line(
        "amd64", "/usr/share/keyrings/debian-archive-keyring.gpg"
    )


def test_no_source_for_the_codename_is_an_environment_problem() -> None:
    other = [AptSource("http://x.invalid/ubuntu", "jammy", ("main",))]
    with pytest.raises(EnvironmentProblem) as e:
        image_sources(other, "bookworm", "bookworm", {})
    assert "HARDEN_DEBIAN_MIRROR" in (e.value.hint or "")
    mirror = image_sources(
        other, "bookworm", "trixie", {"HARDEN_DEBIAN_MIRROR": "http://m.invalid/d/"}
    )
    assert mirror == [AptSource("http://m.invalid/d", "trixie", ("main",))]


def test_deb_names() -> None:
    d = Deb("http://x.invalid/a.deb", "auditd_1%3a3.0.9-1_amd64.deb", 1, "00")
    assert (d.package, d.version, d.local_name) == (
        "auditd",
        "1:3.0.9-1",
        "auditd_1-3.0.9-1_amd64.deb",
    )
    assert parse_os_release(b'ID=debian\nVERSION_CODENAME="trixie"\n') == {
        "ID": "debian",
        "VERSION_CODENAME": "trixie",
    }


# ---------------------------------------------------------------- signals


def test_sigterm_becomes_the_ctrl_c_path_with_its_own_exit_status() -> None:
    saved = {s: signal.getsignal(s) for s in signals.HANDLED}
    try:
        signals.install()
        with pytest.raises(KeyboardInterrupt) as e:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0.1)  # let the handler run
        assert isinstance(e.value, signals.Terminated)
        assert signals.exit_status(e.value) == 143
        os.kill(os.getpid(), signal.SIGHUP)  # a second signal during clean-up is ignored
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        signals._state["raised"] = False
    assert signals.exit_status(KeyboardInterrupt()) == 130
