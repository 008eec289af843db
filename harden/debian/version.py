"""Debian version ordering (epoch, upstream, revision; ``~`` sorts first), never string order."""

from __future__ import annotations

from debian.debian_support import version_compare


def compare(a: str, b: str) -> int:
    """<0, 0 or >0 as ``a`` is older than, equal to or newer than ``b`` (dpkg's rules)."""
    return int(version_compare(a, b))


def newer(candidate: str, installed: str) -> bool:
    return compare(candidate, installed) > 0
