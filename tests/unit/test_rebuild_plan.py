"""Rebuild planning (waves, descendants, unknowns, cycles), plan formats, locks, the runner."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from pathlib import Path

import pytest
import yaml

from harden.audit import AuditLog
from harden.clock import FixedClock
from harden.errors import HardenError, UsageError
from harden.imagedef import ImageDefinition, load_definition
from harden.lifecycle import ImageFacts, ImageStatus, State
from harden.rebuild import (
    ImageLock,
    LockTimeout,
    Outcome,
    PlanFormat,
    PlannedBuild,
    plan_rebuild,
    render_plan,
    run_plan,
)

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
REG = "127.0.0.1:5000"


def define(tmp: Path, name: str, base: str, dest: str) -> ImageDefinition:
    p = tmp / f"{name}.yaml"
    p.write_text(
        json.dumps(
            {
                "name": name,
                "base": base,
                "target": "container",
                "baseline": {"id": "debian-container"},
                "destination": dest,
            }
        )
    )
    return load_definition(p)


def status(name: str, state: State, outdated: tuple[str, ...] = ()) -> ImageStatus:
    f = ImageFacts(name=name, definition="", destination="", max_age=dt.timedelta(days=30))
    return ImageStatus(f, state, ("why",), T0, outdated=outdated)


@pytest.fixture
def family(tmp_path: Path) -> list[ImageDefinition]:
    """base-img <- child (via :latest implied) <- grandchild; other is unrelated."""
    return [
        define(tmp_path, "base-img", f"{REG}/library/debian:12", f"{REG}/golden/base:latest"),
        define(tmp_path, "child", f"{REG}/golden/base", f"{REG}/golden/child:1"),
        define(tmp_path, "grandchild", f"{REG}/golden/child:1", f"{REG}/golden/gc:1"),
        define(tmp_path, "other", f"{REG}/library/debian:13", f"{REG}/golden/other:1"),
    ]


def names(plan: object) -> list[list[str]]:
    return [[b.name for b in w] for w in plan.waves]  # type: ignore[attr-defined]


def test_parent_outdated_pulls_in_descendants_in_waves(family: list[ImageDefinition]) -> None:
    statuses = [
        status("base-img", State.OUTDATED, ("base",)),
        status("child", State.FRESH),
        status("grandchild", State.FRESH),
        status("other", State.EXPIRING),
    ]
    plan = plan_rebuild(family, statuses)
    assert names(plan) == [["base-img"], ["child"], ["grandchild"]]
    reasons = {b.name: b.reason for b in plan.builds}
    assert reasons == {
        "base-img": "outdated (base)",
        "child": "parent rebuilt (base-img)",
        "grandchild": "parent rebuilt (child)",
    }
    assert plan.waves[1][0].parents == ("base-img",)


def test_independent_needs_share_a_wave_and_fresh_ones_stay(
    family: list[ImageDefinition],
) -> None:
    statuses = [
        status("base-img", State.FRESH),
        status("child", State.STALE),
        status("grandchild", State.FRESH),
        status("other", State.MISSING),
    ]
    plan = plan_rebuild(family, statuses)
    assert names(plan) == [["child", "other"], ["grandchild"]]


def test_unknown_is_not_planned_unless_a_parent_is_rebuilt(family: list[ImageDefinition]) -> None:
    statuses = [
        status("base-img", State.UNKNOWN),
        status("child", State.UNKNOWN),
        status("grandchild", State.FRESH),
        status("other", State.REVOKED),
    ]
    plan = plan_rebuild(family, statuses)
    assert names(plan) == [["other"]]
    assert plan.unknown == ("base-img", "child")
    plan = plan_rebuild(family, [], everything=True)
    assert names(plan) == [["base-img", "other"], ["child"], ["grandchild"]]
    assert {b.reason for b in plan.builds} == {"requested"}


def test_a_cycle_is_refused(tmp_path: Path) -> None:
    defs = [
        define(tmp_path, "a", f"{REG}/x/b:1", f"{REG}/x/a:1"),
        define(tmp_path, "b", f"{REG}/x/a:1", f"{REG}/x/b:1"),
    ]
    with pytest.raises(UsageError, match="cycle"):
        plan_rebuild(defs, [status("a", State.STALE), status("b", State.FRESH)])


def test_plan_formats(family: list[ImageDefinition]) -> None:
    plan = plan_rebuild(family, [status("base-img", State.STALE)])
    doc = json.loads(render_plan(plan, PlanFormat.JSON))
    assert doc["schema_version"] == 1
    assert doc["waves"][0][0]["command"].startswith("harden build ")
    assert doc["waves"][0][0]["command"].endswith("base-img.yaml")
    lines = render_plan(plan, PlanFormat.GITHUB_MATRIX).splitlines()
    assert lines[0] == "waves=3"
    wave0 = json.loads(lines[1].removeprefix("wave0="))
    assert [i["name"] for i in wave0["include"]] == ["base-img"]
    assert wave0["include"][0]["definition"].endswith("base-img.yaml")
    gl = yaml.safe_load(render_plan(plan, PlanFormat.GITLAB, '--key "$K"'))
    assert gl["stages"] == ["wave-0", "wave-1", "wave-2"]
    job = gl["rebuild-wave-1"]
    assert job["stage"] == "wave-1"
    assert job["parallel"]["matrix"][0]["DEFINITION"][0].endswith("child.yaml")
    assert job["script"] == ['harden build "$DEFINITION" --force --key "$K"']
    empty = yaml.safe_load(render_plan(plan_rebuild(family, []), PlanFormat.GITLAB))
    assert "nothing-to-rebuild" in empty


def test_lock_timeout_names_the_holder(tmp_path: Path) -> None:
    clock = FixedClock(T0)
    first = ImageLock(tmp_path / "locks", "app/x", clock)
    first.acquire(0)
    try:
        with pytest.raises(LockTimeout) as e:
            ImageLock(tmp_path / "locks", "app/x", clock).acquire(0.3, poll=0.05)
        assert f"pid {os.getpid()}" in e.value.message
        assert "since 2026-03-01T00:00:00Z" in e.value.message
    finally:
        first.release()
    with ImageLock(tmp_path / "locks", "app/x", clock).held(0):  # free again
        pass


def test_a_waiting_run_gets_the_lock_when_released(tmp_path: Path) -> None:
    clock = FixedClock(T0)
    first = ImageLock(tmp_path, "img", clock)
    first.acquire(0)
    threading.Timer(0.2, first.release).start()
    second = ImageLock(tmp_path, "img", clock)
    second.acquire(5, poll=0.05)
    second.release()


def test_runner_continues_after_a_failure_and_skips_its_children(
    family: list[ImageDefinition], tmp_path: Path
) -> None:
    plan = plan_rebuild(
        family, [status("base-img", State.STALE), status("other", State.OUTDATED, ("baseline",))]
    )
    clock = FixedClock(T0)
    audit = AuditLog(tmp_path / "audit.db", clock)
    built: list[str] = []

    def build(b: PlannedBuild) -> str:
        if b.name == "base-img":
            raise HardenError("remediation failed")
        built.append(b.name)
        return "sha256:" + "1" * 64

    outcomes = run_plan(
        plan, build, jobs=2, lock_dir=tmp_path / "locks", lock_timeout=1, audit=audit, clock=clock
    )
    got = {o.name: (o.outcome, o.detail) for o in outcomes}
    assert got["base-img"] == (Outcome.FAILED, "remediation failed")
    assert got["other"][0] is Outcome.REBUILT
    assert got["child"] == (Outcome.SKIPPED, "parent base-img failed")
    assert got["grandchild"] == (Outcome.SKIPPED, "parent child failed")
    assert built == ["other"]
    entries = [(e.image, e.outcome, e.details.get("reason")) for e in audit.entries()]
    assert (f"{REG}/golden/other:1", "rebuilt", "outdated (baseline)") in entries
    assert (f"{REG}/golden/base:latest", "failed", "stale") in entries
    assert all(e.action == "rebuild" for e in audit.entries())
    assert audit.verify() == []


def test_runner_recheck_skips_what_another_run_did(
    family: list[ImageDefinition], tmp_path: Path
) -> None:
    plan = plan_rebuild(family, [status("other", State.STALE)])
    clock = FixedClock(T0)
    outcomes = run_plan(
        plan,
        lambda b: pytest.fail("must not build"),
        jobs=1,
        lock_dir=tmp_path,
        lock_timeout=1,
        audit=AuditLog(tmp_path / "a.db", clock),
        clock=clock,
        recheck=lambda b: None,
    )
    assert [(o.outcome, o.detail) for o in outcomes] == [
        (Outcome.SKIPPED, "no longer needed (rebuilt by another run)")
    ]
    dry = run_plan(
        plan,
        lambda b: pytest.fail("must not build"),
        jobs=1,
        lock_dir=tmp_path,
        lock_timeout=1,
        audit=AuditLog(tmp_path / "a.db", clock),
        clock=clock,
        dry_run=True,
    )
    assert [o.outcome for o in dry] == [Outcome.PLANNED]


def test_vm_templates_with_a_destination_are_planned_too(tmp_path: Path) -> None:
    p = tmp_path / "vm.yaml"
    p.write_text(
        json.dumps(
            {
                "name": "tmpl",
                "target": "vm",
                "vm": {"disk": "/var/cache/harden/vm/current/base.qcow2"},
                "baseline": {"id": "debian-vm"},
                "destination": f"{REG}/staging/tmpl:latest",
            }
        )
    )
    vm = load_definition(p)
    no_dest = tmp_path / "local.yaml"
    no_dest.write_text(
        p.read_text()
        .replace(f'"destination": "{REG}/staging/tmpl:latest"', '"max_age": "30d"')
        .replace('"tmpl"', '"local"')
    )
    plan = plan_rebuild([vm, load_definition(no_dest)], [status("tmpl", State.MISSING)])
    assert [b.name for wave in plan.waves for b in wave] == ["tmpl"]
