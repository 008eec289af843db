"""`harden verify FILE.qcow2`: boot a throwaway overlay of a template, verify, shut it down.

A template made of a whole-disk filesystem boots with a kernel and initrd: they are found in a
``manifest.json`` next to the file (as scripts/vm-base.sh writes it) or given as ``vmlinuz`` and
``initrd.img`` in the same folder; otherwise the disk's own boot loader is used.

The file is hostile until inspected: :func:`builder.disk_image.inspect_disk` runs before anything
else (a backing file, an external data file, a format other than the name declares, a virtual size
over the limit, a truncated or corrupt image: refused, exit 3, no qemu started), and qemu then
reads the inspected descriptor, not the path. SIGTERM, SIGHUP and SIGINT end qemu and remove the
overlay and temporary directory (:func:`builder.children.cleanup_on_signals`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harden.baseline.resolve import ResolvedBaseline
from harden.builder.children import cleanup_on_signals
from harden.builder.disk_image import inspect_disk
from harden.builder.qemu import DEFAULT_APPEND, VmImage
from harden.clock import Clock
from harden.errors import TargetError, UsageError
from harden.results import VerifyReport
from harden.testsuite import Suite
from harden.vm_manifest import manifest_path


def image_for(disk: Path) -> tuple[VmImage, Path | None]:
    """The boot description of ``disk`` and the SSH key recorded beside it (if any)."""
    image, key, _user = image_and_user_for(disk)
    return image, key


def image_and_user_for(disk: Path) -> tuple[VmImage, Path | None, str]:
    """As :func:`image_for`, plus the SSH user recorded beside it (default root)."""
    folder = disk.parent
    manifest = manifest_path(disk) if manifest_path(disk).is_file() else folder / "manifest.json"
    kernel = initrd = key = None
    user = "root"
    append = DEFAULT_APPEND
    if manifest.is_file():
        try:
            data: dict[str, Any] = json.loads(manifest.read_text(encoding="utf-8"))
        except ValueError as e:
            raise TargetError(f"{manifest}: not JSON ({e})") from e
        kernel = Path(data["kernel"]) if data.get("kernel") else None
        initrd = Path(data["initrd"]) if data.get("initrd") else None
        key = Path(data["build_key"]) if data.get("build_key") else None
        append = str(data.get("append", DEFAULT_APPEND))
        user = str(data.get("ssh_user") or "root")
    else:
        if (folder / "vmlinuz").is_file():
            kernel = folder / "vmlinuz"
        if (folder / "initrd.img").is_file():
            initrd = folder / "initrd.img"
    return VmImage(disk=disk.absolute(), kernel=kernel, initrd=initrd, append=append), key, user


def verify_template_at_rest(
    path: Path,
    baseline: ResolvedBaseline,
    clock: Clock,
    *,
    progress: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Verify the template ``path`` without booting it and without mounting it: its ext4 file
    system copied out by debugfs as an unprivileged user (:mod:`builder.sealed_view`), owners
    and modes as the disk declares them, read by the same static fact gathering as a container
    image. Rules that need a running system are errors saying so (``--no-boot``)."""
    import time

    from harden.builder.sealed_view import extracted_tree
    from harden.verifiers.fsview import DirFs
    from harden.verifiers.static_verify import verify_at_rest

    if not path.exists():
        raise UsageError(f"no such VM template: {path}")
    t0 = time.perf_counter()
    with extracted_tree(path, digest=True) as tree:
        if progress:
            progress(f"copied out {len(tree.files)} entries of {path.name} with debugfs")
        view = DirFs(tree.root, declared=tree.declared)
        meta = {
            "source": "qcow2 file system (debugfs, not booted, not mounted)",
            "extract_seconds": round(time.perf_counter() - t0, 3),
        }
        if tree.problems:
            meta["problems"] = list(tree.problems[:20])
        return verify_at_rest(
            view,
            baseline,
            clock,
            image=str(path),
            digest=tree.digest,
            meta=meta,
            progress=progress,
        )


def verify_template(
    path: Path,
    baseline: ResolvedBaseline,
    clock: Clock,
    *,
    identity: Path | None = None,
    progress: Callable[[str], None] | None = None,
    suites: tuple[Suite, ...] = (),
) -> VerifyReport:
    """Boot a throwaway clone of the template ``path`` and verify it (then run ``suites`` on it).

    The clone sees the template itself as a read-only second disk, so the ``template.*`` hygiene
    rules (no host keys, empty machine-id: things every first boot recreates) are judged on the
    sealed file, the rest on the running clone — as ``harden build`` does for a VM template.
    """
    from harden.builder.vm_build import verify_clone

    if not path.exists():
        raise UsageError(f"no such VM template: {path}")
    with cleanup_on_signals(), inspect_disk(path) as disk:
        image, recorded_key, user = image_and_user_for(path)
        key = identity or recorded_key
        if key is None:
            raise UsageError(
                f"no SSH key to log in to {path}",
                hint="pass --identity KEY (the key whose public half is in the SSH user's "
                "authorized_keys)",
            )
        return verify_clone(
            path,
            image,
            user,
            key,
            baseline,
            clock,
            name=str(path),
            digest=disk.sha256(),
            progress=progress or (lambda _m: None),
            timings={},
            disk=disk,
            suites=suites,
        )
