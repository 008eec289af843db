"""The remediation step that applies Debian security and stable updates to a container image.

Small and in one place, so the host-side package download of the offline installs can replace
the download here: harden itself reads the signed indices of ``<codename>-security`` and
``<codename>-updates`` (:class:`harden.debian.archive.ArchiveReader`: InRelease checked with
gpgv, index and every ``.deb`` checked against the signed hashes), picks the installed packages
with a newer candidate, copies those ``.deb`` files into a container with network ``none`` and
installs them with the image's ``dpkg -i``. The list of upgraded packages is returned for the
provenance; a fresh build therefore has no pending security update.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

from harden.builder.docker_engine import Engine, Step
from harden.builder.packages import NoPackageDatabase, image_packages

from harden.debian.archive import ArchiveReader
from harden.debian.fixes import Fix, changelog_of, fixed_ids
from harden.debian.pending import PendingUpdate, pending_updates
from harden.debian.sources import Archive
from harden.errors import TargetError

INBOX = "/var/cache/harden-updates"
TIMEOUT = 1800.0


def apply_updates(
    engine: Engine,
    image_id: str,
    changes: list[str],
    reader: ArchiveReader,
    archives_of: Callable[[str], Sequence[Archive]],
    progress: Callable[[str], None],
) -> tuple[str, tuple[PendingUpdate, ...], tuple[Fix, ...]]:
    """The image with every pending update installed (or ``image_id`` when none), the list, and
    the CVE/DSA/DLA ids the changelogs of the installed security updates name (for the VEX)."""
    try:
        packages, release = image_packages(engine, image_id)
    except NoPackageDatabase as e:
        progress(f"updates: none applied: {e.message}")
        return image_id, (), ()
    if not release.codename:
        raise TargetError(f"{image_id[:19]}: /etc/os-release names no VERSION_CODENAME")
    archives = list(archives_of(release.codename))
    tables = [reader.candidates(a) for a in archives]
    pending = pending_updates(packages, tables)
    progress(
        f"updates: {len(pending)} package(s) from "
        + ", ".join(a.label for a in archives)
        + (": " + ", ".join(u.describe() for u in pending) if pending else "")
    )
    if not pending:
        return image_id, (), ()
    by_suite = {a.suite: (a, t) for a, t in zip(archives, tables, strict=True)}
    files: dict[str, bytes] = {}
    fixes: list[Fix] = []
    for u in pending:
        archive, table = by_suite[u.suite]
        cand = table[u.name]
        deb = reader.deb(archive, cand)
        files[Path(cand.filename).name or f"{u.name}.deb"] = deb
        if u.security:
            log = changelog_of(deb, u.name, u.source)
            ids, published = fixed_ids(log, u.installed, u.candidate) if log else ((), None)
            fixes.append(Fix(u, ids, published))
    names = " ".join(shlex.quote(f"{INBOX}/{n}") for n in sorted(files))
    script = (
        f"set -eu\nexport DEBIAN_FRONTEND=noninteractive\n"
        # dpkg -i installs in argument order: a package whose Pre-Depends (libpam-modules on
        # libpam-modules-bin) comes later in the list is refused on the first pass, done on the next
        f"n=0\nuntil dpkg -i --force-confold {names}; do\n"
        '  n=$((n + 1)); [ "$n" -lt 3 ] || exit 1; echo "dpkg: pass $((n + 1))" >&2\ndone\n'
        f"rm -rf {INBOX}\n"
    )
    with engine.throwaway(image_id, ["/bin/sh", "-c", script], step=Step.INSTALL) as c:
        engine.put_files(
            c, "/var/cache", _tar({f"harden-updates/{n}": d for n, d in files.items()})
        )
        result = engine.run_to_end(c, TIMEOUT)
        if not result.ok:
            tail = result.stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
            raise TargetError(
                "installing the security/stable updates failed: " + " | ".join(tail),
                hint="an update needs a package the image does not have; "
                "pin an archive snapshot in the definition (archive: mirror:) or add it",
            )
        return str(engine.commit(c, changes).id), pending, tuple(fixes)


def _tar(files: dict[str, bytes]) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for d in sorted({n.rpartition("/")[0] for n in files} - {""}):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()
