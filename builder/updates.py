"""The remediation step that applies Debian security and stable updates to a container image or
a VM template.

Small and in one place, so the host-side package download of the offline installs can replace
the download here: harden itself reads the signed indices of ``<codename>-security`` and
``<codename>-updates`` (:class:`harden.debian.archive.ArchiveReader`: InRelease checked with
gpgv, index and every ``.deb`` checked against the signed hashes), picks the installed packages
with a newer candidate (plus the packages those new versions newly depend on, such as a kernel
metapackage's new ABI package), copies those ``.deb`` files into a container with network
``none`` (or over SSH into the build VM) and installs them with the target's ``dpkg -i``. The
list of upgraded packages is returned for the provenance; a fresh build therefore has no pending
security update.
"""

from __future__ import annotations

import io
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from debian.deb822 import PkgRelation
from debian.debfile import DebFile

from harden.builder.docker_engine import Engine, Step
from harden.builder.packages import STATUS, NoPackageDatabase, image_package_files
from harden.debian.archive import ArchiveReader, Candidate
from harden.debian.dpkg import parse_status, stanzas
from harden.debian.fixes import Fix, changelog_of, fixed_ids
from harden.debian.pending import PendingUpdate, pending_updates
from harden.debian.release import parse_os_release
from harden.debian.sources import Archive
from harden.errors import TargetError

INBOX = "/var/cache/harden-updates"
TIMEOUT = 1800.0
MAX_ADDED = 64  # new packages pulled in by updated dependencies (a new kernel ABI package)


@dataclass(frozen=True)
class UpdatePlan:
    """What the updates step installs: the pending updates, the packages they newly depend on
    (a kernel metapackage's new ABI package), the verified ``.deb`` files by file name, and the
    ids each security update's changelog names (for the VEX)."""

    pending: tuple[PendingUpdate, ...]
    added: tuple[Candidate, ...]
    files: dict[str, bytes]
    fixes: tuple[Fix, ...]


NO_UPDATES = UpdatePlan((), (), {}, ())


def plan_updates(
    status: bytes,
    os_release: bytes,
    reader: ArchiveReader,
    archives_of: Callable[[str], Sequence[Archive]],
    progress: Callable[[str], None],
    *,
    origin: str,
) -> UpdatePlan:
    """The updates for the package database ``status`` (read by harden from the artefact, not
    through its code) of a release described by ``os_release``."""
    packages = parse_status(status, origin=f"{origin}:{STATUS}")
    release = parse_os_release(os_release)
    if not release.codename:
        raise TargetError(f"{origin}: /etc/os-release names no VERSION_CODENAME")
    archives = list(archives_of(release.codename))
    tables = [reader.candidates(a) for a in archives]
    pending = pending_updates(packages, tables)
    progress(
        f"updates: {len(pending)} package(s) from "
        + ", ".join(a.label for a in archives)
        + (": " + ", ".join(u.describe() for u in pending) if pending else "")
    )
    if not pending:
        return NO_UPDATES
    by_suite = {a.suite: (a, t) for a, t in zip(archives, tables, strict=True)}
    files: dict[str, bytes] = {}
    fixes: list[Fix] = []
    for u in pending:
        archive, table = by_suite[u.suite]
        cand = table[u.name]
        deb = reader.deb(archive, cand)
        files[_file_name(cand)] = deb
        if u.security:
            log = changelog_of(deb, u.name, u.source)
            ids, published = fixed_ids(log, u.installed, u.candidate) if log else ((), None)
            fixes.append(Fix(u, ids, published))
    added = _new_dependencies(status, files, archives, tables, reader)
    if added:
        progress(
            "updates: new dependencies: "
            + ", ".join(f"{c.name} {c.version}" for c, _ in added.values())
        )
    for cand, deb in added.values():
        files[_file_name(cand)] = deb
    return UpdatePlan(pending, tuple(c for c, _ in added.values()), files, tuple(fixes))


def _file_name(cand: Candidate) -> str:
    return Path(cand.filename).name or f"{cand.name}.deb"


def _new_dependencies(
    status: bytes,
    files: dict[str, bytes],
    archives: Sequence[Archive],
    tables: Sequence[Mapping[str, Candidate]],
    reader: ArchiveReader,
) -> dict[str, tuple[Candidate, bytes]]:
    """Packages the updated versions depend on that the image has no package (or ``Provides``)
    for, taken from the same suites, recursively: a kernel metapackage's update depends on a new
    ABI package. A relation no suite can satisfy is left to dpkg, which then names it."""
    have = _installed_names(status)
    added: dict[str, tuple[Candidate, bytes]] = {}
    queue = list(files.values())
    while queue:
        control = _control(queue.pop())
        relations = _relations(control.get("Pre-Depends", ""))
        relations += _relations(control.get("Depends", ""))
        for alternatives in relations:
            names = [a["name"] for a in alternatives]
            if any(n in have or n in added for n in names):
                continue
            found = next(
                (
                    (archive, table[n])
                    for n in names
                    for archive, table in zip(archives, tables, strict=True)
                    if n in table
                ),
                None,
            )
            if found is None:
                continue
            if len(added) >= MAX_ADDED:
                raise TargetError(
                    f"the updates depend on more than {MAX_ADDED} packages the image does not have",
                    hint="rebuild the base from a current archive",
                )
            archive, cand = found
            deb = reader.deb(archive, cand)
            added[cand.name] = (cand, deb)
            queue.append(deb)
    return added


def _installed_names(status: bytes) -> set[str]:
    """Installed package names and what they provide."""
    names: set[str] = set()
    for st in stanzas(status.decode("utf-8", "replace")):
        if st.get("Status", "").split()[-1:] != ["installed"]:
            continue
        names.add(st.get("Package", ""))
        for alternatives in _relations(st.get("Provides", "")):
            names.update(a["name"] for a in alternatives)
    return names


def _relations(text: str) -> list[list[PkgRelation.ParsedRelation]]:
    """A relationship field's alternatives (python-debian logs a warning for an empty one)."""
    return PkgRelation.parse_relations(text) if text.strip() else []


def _control(deb: bytes) -> Mapping[str, str]:
    """The control fields of a verified ``.deb``."""
    return DebFile(fileobj=io.BytesIO(deb)).debcontrol()


# A VM mounts /var noexec (ANSSI-BP28 R28): dpkg runs the maintainer scripts it keeps in
# /var/lib/dpkg, so that file system is remounted exec for the install and noexec again after it
# (Debian's usual DPkg::Pre-Invoke/Post-Invoke remount, done once here).
_EXEC_DPKG = """\
mp=$(findmnt -n -o TARGET --target /var/lib/dpkg 2>/dev/null || true)
if [ -n "$mp" ] && findmnt -n -o OPTIONS --target /var/lib/dpkg | tr , '\\n' | grep -qx noexec
then
  mount -o remount,exec "$mp"
  trap 'mount -o remount,noexec "$mp"' EXIT
fi
"""


def install_script(paths: Sequence[str], cleanup: str, *, remount: bool = False) -> str:
    """Install the ``.deb`` files at ``paths`` with the target's own dpkg, keep local
    configuration, remove ``cleanup`` afterwards; with ``remount`` a ``noexec`` file system
    holding /var/lib/dpkg is made ``exec`` for the install."""
    names = " ".join(shlex.quote(p) for p in sorted(paths))
    return (
        "set -eu\nexport DEBIAN_FRONTEND=noninteractive\n" + (_EXEC_DPKG if remount else "") +
        # dpkg -i installs in argument order: a package whose Pre-Depends (libpam-modules on
        # libpam-modules-bin) comes later in the list is refused on the first pass, done on the next
        f"n=0\nuntil dpkg -i --force-confold {names}; do\n"
        '  n=$((n + 1)); [ "$n" -lt 3 ] || exit 1; echo "dpkg: pass $((n + 1))" >&2\ndone\n'
        f"rm -rf {shlex.quote(cleanup)}\n"
    )


def install_failed(stderr: bytes) -> TargetError:
    """The error of a failed install: dpkg's first errors (its last lines only list packages)."""
    lines = [x.strip() for x in stderr.decode("utf-8", "replace").splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith(("dpkg: error", "dpkg (subprocess)", "E:"))]
    shown = list(dict.fromkeys(errors))[:3] or lines[-5:]
    return TargetError(
        "installing the security/stable updates failed: " + " | ".join(shown),
        hint="an update needs a package the image does not have; "
        "pin an archive snapshot in the definition (archive: mirror:) or add it",
    )


def apply_updates(
    engine: Engine,
    image_id: str,
    changes: list[str],
    reader: ArchiveReader,
    archives_of: Callable[[str], Sequence[Archive]],
    progress: Callable[[str], None],
) -> tuple[str, UpdatePlan]:
    """The image with every pending update installed (or ``image_id`` when none) and the plan:
    what was installed and the CVE/DSA/DLA ids the installed security updates' changelogs name
    (for the VEX)."""
    try:
        status, os_release = image_package_files(engine, image_id)
    except NoPackageDatabase as e:
        progress(f"updates: none applied: {e.message}")
        return image_id, NO_UPDATES
    plan = plan_updates(status, os_release, reader, archives_of, progress, origin=image_id[:19])
    if not plan.pending:
        return image_id, plan
    script = install_script([f"{INBOX}/{n}" for n in plan.files], INBOX)
    with engine.throwaway(image_id, ["/bin/sh", "-c", script], step=Step.INSTALL) as c:
        engine.put_files(
            c, "/var/cache", _tar({f"harden-updates/{n}": d for n, d in plan.files.items()})
        )
        result = engine.run_to_end(c, TIMEOUT)
        if not result.ok:
            raise install_failed(result.stderr)
        return str(engine.commit(c, changes).id), plan


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
