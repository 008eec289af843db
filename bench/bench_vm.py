"""VM benchmarks: a template build split into its phases, and verify of debian-vm on a running
VM, harden (one SSH command for all facts) vs the same checks one testinfra call each, side by
side on the same VM and the same SSH connection (targets: >= 10x faster and < 5 s)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import testinfra

from bench.bench_container import plain_testinfra_check
from bench.common import Result, interleaved
from harden.baseline.resolve import Catalogue, resolve
from harden.builder.qemu import Vm, VmImage
from harden.builder.vm_build import build_vm
from harden.clock import SystemClock
from harden.imagedef import load_definition
from harden.target import TargetKind
from harden.verifiers.runner import verify

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = Path("/var/cache/harden/vm/current/manifest.json")
DEFINITION = ROOT / "images" / "debian12-vm.yaml"


def bench_verify() -> Result:
    catalogue = Catalogue.from_search_path()
    bl = resolve(catalogue, "debian-vm")
    rules = [r for r in bl.rules if TargetKind.VM.value in {t.value for t in r.targets}]
    image = VmImage.from_manifest(MANIFEST)
    # the account and key a build of the demo definition logs in with (root has no SSH access)
    src = load_definition(DEFINITION).doc.vm
    assert src is not None and src.ssh_key is not None
    user, key = src.ssh_user, Path(src.ssh_key)
    with (
        tempfile.TemporaryDirectory(prefix="harden-bench-vm-") as work,
        Vm(image, Path(work)) as vm,
    ):
        target = vm.connect(user, key)
        target.run("true")
        # plain testinfra on the very same (pinned, TCP_NODELAY) paramiko connection, through
        # sudo as harden's own commands are
        host = testinfra.get_host(f"paramiko://{user}@127.0.0.1:{vm.ssh_port}", sudo=user != "root")
        host.backend.__dict__["client"] = target._client
        clock = SystemClock()

        def ours() -> None:
            verify(target, bl, clock, image="bench-vm", digest=None)

        def plain() -> None:
            for r in rules:
                plain_testinfra_check(host, r, {})

        # one untimed verify first, as bench_container's: right after boot the guest's page
        # cache is cold (systemctl, find, sshd and their libraries are read from the emulated
        # disk: 6-8 s instead of 4.5), and a running VM under verification has been up a while
        ours()
        t_ours, t_plain = interleaved(ours, plain, repeat=2)
        vm.shutdown()
    speedup = t_plain / t_ours
    return Result(
        name=f"verify debian-vm ({len(rules)} rules) on a running VM (TCG)",
        harden_s=t_ours,
        baseline_name="testinfra, one call per check",
        baseline_s=t_plain,
        target=">= 10x faster and < 5 s",
        met=speedup >= 10 and t_ours < 5.0,
        note=f"{speedup:.1f}x faster",
    )


def bench_build() -> list[Result]:
    defn = load_definition(DEFINITION)
    with tempfile.TemporaryDirectory(prefix="harden-bench-vm-out-") as out:
        began = time.monotonic()
        result = build_vm(
            defn, Catalogue.from_search_path(), SystemClock(), out_dir=Path(out), force=True
        )
        took = time.monotonic() - began
    return [
        Result(
            name="vm template build, end to end (TCG)",
            harden_s=took,
            baseline_name="",
            baseline_s=0.0,
            target="< 240 s, compliant",
            met=took < 240.0 and result.report.compliant,
            note="{passed} passed, {failed} failed of {total} rules".format(
                **result.report.summary()
            ),
        ),
        *(
            Result(
                name=f"vm template build: {phase}",
                harden_s=seconds,
                baseline_name="",
                baseline_s=0.0,
                target="(split of the build)",
                met=True,
            )
            for phase, seconds in result.timings.items()
        ),
    ]


def run() -> list[Result]:
    return [bench_verify(), *bench_build()]
