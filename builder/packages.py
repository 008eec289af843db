"""The package inventory of a built container image: its dpkg database and os-release, read
without running it (:func:`builder.docker_engine.read_image_files`)."""

from __future__ import annotations

from builder.docker_engine import Engine, read_image_files
from harden.debian.dpkg import Package, parse_status
from harden.debian.release import Release, parse_os_release
from harden.errors import TargetError

STATUS = "/var/lib/dpkg/status"
OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")


class NoPackageDatabase(TargetError):
    """The image has no dpkg database: not a Debian image, nothing to inventory or update."""


def image_packages(engine: Engine, ref: str) -> tuple[tuple[Package, ...], Release]:
    """Installed packages and release of image ``ref`` (TargetError when it has no dpkg)."""
    files = read_image_files(engine, ref, [STATUS, *OS_RELEASE])
    status = files[STATUS]
    if status is None:
        raise NoPackageDatabase(f"{ref} has no {STATUS}: not a Debian image, no package inventory")
    release_data = files[OS_RELEASE[0]] or files[OS_RELEASE[1]] or b""
    return parse_status(status, origin=f"{ref}:{STATUS}"), parse_os_release(release_data)
