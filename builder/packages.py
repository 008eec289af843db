"""The package inventory of a built container image: its dpkg database and os-release, read
without running it (:meth:`builder.docker_engine.Engine.read_file`)."""

from __future__ import annotations

from harden.builder.docker_engine import Engine
from harden.debian.dpkg import Package, parse_status
from harden.debian.release import Release, parse_os_release
from harden.errors import TargetError

STATUS = "/var/lib/dpkg/status"
OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")


class NoPackageDatabase(TargetError):
    """The image has no dpkg database: not a Debian image, nothing to inventory or update."""


def image_package_files(engine: Engine, ref: str) -> tuple[bytes, bytes]:
    """The dpkg status database and os-release of image ``ref`` as stored (NoPackageDatabase
    when it has no dpkg database)."""
    status = engine.read_file(ref, STATUS, 64 << 20)
    if status is None:
        raise NoPackageDatabase(f"{ref} has no {STATUS}: not a Debian image, no package inventory")
    release_data = (
        engine.read_file(ref, OS_RELEASE[0], 64 << 10)
        or engine.read_file(ref, OS_RELEASE[1], 64 << 10)
        or b""
    )
    return status, release_data


def image_packages(engine: Engine, ref: str) -> tuple[tuple[Package, ...], Release]:
    """Installed packages and release of image ``ref`` (TargetError when it has no dpkg)."""
    status, release_data = image_package_files(engine, ref)
    return parse_status(status, origin=f"{ref}:{STATUS}"), parse_os_release(release_data)
