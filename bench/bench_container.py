"""Container benchmarks (issue: verify vs plain testinfra, build vs docker build, no-change rebuild)."""

from __future__ import annotations

import datetime as dt
import io
import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import docker
import testinfra

from bench.common import Result, interleaved, median_time
from harden.baseline import kinds as k
from harden.baseline.resolve import Catalogue, ResolvedBaseline, Rule, resolve
from harden.builder.container_build import build_container
from harden.builder.docker_engine import Engine, RunningContainerTarget
from harden.builder.render import Phase, audit_check_script, remediation_rules, render_script
from harden.clock import SystemClock
from harden.imagedef import load_definition
from harden.target import TargetKind
from harden.verifiers.runner import verify

BASE = "127.0.0.1:5000/library/debian:12"


def plain_testinfra_check(host: Any, rule: Rule, image_config: dict[str, Any]) -> bool:
    """The same rule checked the plain testinfra way: one testinfra call per property."""
    spec = rule.spec
    if isinstance(spec, (k.PackageAbsent, k.PackagePresent)):
        present = [host.package(p).is_installed for p in spec.packages]
        return not any(present) if isinstance(spec, k.PackageAbsent) else all(present)
    if isinstance(spec, k.FileAbsent):
        return all(host.run("ls -d %s", p).rc != 0 for p in spec.paths)
    if isinstance(spec, k.FilePermissions):
        ok = True
        for p in spec.paths:
            f = host.file(str(p))
            if not f.exists:
                continue
            ok &= (f.mode & ~int(str(spec.max_mode), 8)) == 0
            if spec.owner:
                ok &= f.user == spec.owner
            if spec.group:
                ok &= f.group == spec.group
        return ok
    if isinstance(spec, k.ConfigLine):
        f = host.file(str(spec.path))
        return f.exists and f.contains(spec.key)
    if isinstance(spec, k.ServiceDisabled):
        return all(
            not host.file(f"/etc/systemd/system/multi-user.target.wants/{u}").exists
            for u in spec.units
        )
    if isinstance(spec, k.Sysctl):
        persisted = host.file("/etc/sysctl.d/99-harden.conf")
        live = host.run("cat %s", "/proc/sys/" + spec.key.replace(".", "/"))
        return persisted.exists and persisted.contains(spec.key) and live.rc == 0
    if isinstance(spec, k.SuidSgidAllowlist):
        return host.run("find / -xdev -type f -perm /6000").rc == 0
    if isinstance(spec, k.WorldWritable):
        return host.run("find / -xdev -type f -perm -0002").rc == 0
    if isinstance(spec, k.Accounts):
        return host.file("/etc/passwd").exists and host.file("/etc/shadow").exists
    if isinstance(spec, k.Command):
        return host.run(spec.check).rc == 0
    if isinstance(spec, k.AuditRules):
        return host.run(audit_check_script(spec)).rc == 0
    if isinstance(spec, k.ImageConfig):
        return bool(image_config.get("User"))
    return host.run("true").rc == 0  # kernel modules / mounts: not applicable in a container


def _applicable(bl: ResolvedBaseline) -> list[Rule]:
    return [r for r in bl.rules if TargetKind.CONTAINER.value in {t.value for t in r.targets}]


def bench_verify(engine: Engine, image: str, bl: ResolvedBaseline) -> Result:
    client = engine.client
    c = client.containers.run(image, ["sleep", "600"], network_mode="none", detach=True)
    try:
        target = RunningContainerTarget(engine, c.name)
        host = testinfra.get_host(f"docker://root@{c.name}")
        cfg = target.image_config() or {}
        rules = _applicable(bl)
        clock = SystemClock()

        def ours() -> None:
            verify(target, bl, clock, image=image, digest=None)

        def plain() -> None:
            for r in rules:
                plain_testinfra_check(host, r, cfg)

        ours()  # warm up imports
        t_ours, t_plain = interleaved(ours, plain, repeat=3)
    finally:
        c.remove(force=True)
    speedup = t_plain / t_ours
    return Result(
        name=f"verify {bl.id} ({len(rules)} rules) on a running container",
        harden_s=t_ours,
        baseline_name="testinfra, one call per check",
        baseline_s=t_plain,
        target=">= 20x faster and < 1 s",
        met=speedup >= 20 and t_ours < 1.0,
        note=f"{speedup:.1f}x faster",
    )


def _docker_build(client: docker.DockerClient, script: str, user: str | None) -> None:
    dockerfile = f"FROM {BASE}\nCOPY remediate.sh /tmp/remediate.sh\nRUN sh /tmp/remediate.sh && rm /tmp/remediate.sh\n"
    if user:
        dockerfile += f"USER {user}\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile), ("remediate.sh", script)):
            info = tarfile.TarInfo(name)
            raw = data.encode()
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    buf.seek(0)
    client.images.build(
        fileobj=buf, custom_context=True, network_mode="none", nocache=True, rm=True, forcerm=True
    )


def bench_build(
    engine: Engine, catalogue: Catalogue, defn_path: Path, bl: ResolvedBaseline
) -> tuple[Result, Result]:
    from harden.builder.container_build import container_user, user_script

    defn = load_definition(defn_path)
    rules = remediation_rules(bl, TargetKind.CONTAINER, dt.date.today())
    user = container_user(rules)
    script = render_script(rules, "debian", TargetKind.CONTAINER, Phase.OFFLINE)
    if user:
        script = user_script(user) + script.split("\n", 1)[1]
    clock = SystemClock()

    def ours() -> None:
        build_container(defn, catalogue, engine, clock, force=True, push=False)

    def plain() -> None:
        _docker_build(engine.client, script, user)

    t_ours, t_plain = interleaved(ours, plain, repeat=3)
    build = Result(
        name="harden build (remediate + commit + verify)",
        harden_s=t_ours,
        baseline_name="docker build of the same remediation",
        baseline_s=t_plain,
        target="<= 1.15x",
        met=t_ours / t_plain <= 1.15,
    )
    t_again = median_time(
        lambda: build_container(defn, catalogue, engine, clock, push=False), repeat=3
    )
    rebuild = Result(
        name="no-change rebuild (reuse + re-verify)",
        harden_s=t_again,
        baseline_name="",
        baseline_s=0.0,
        target="< 3 s",
        met=t_again < 3.0,
    )
    return build, rebuild


def run() -> list[Result]:
    engine = Engine.connect()
    catalogue = Catalogue.from_search_path()
    bl = resolve(catalogue, "debian-container")
    with tempfile.TemporaryDirectory() as d:
        defn_path = Path(d) / "bench.yaml"
        defn_path.write_text(
            json.dumps(
                {
                    "name": "bench-golden",
                    "base": BASE,
                    "target": "container",
                    "baseline": {"id": "debian-container"},
                    "max_age": "30d",
                }
            )
        )
        build, rebuild = bench_build(engine, catalogue, defn_path, bl)
        image = build_container(
            load_definition(defn_path), catalogue, engine, SystemClock(), push=False
        ).image_id
        return [bench_verify(engine, image, bl), build, rebuild]
