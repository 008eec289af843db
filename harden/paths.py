"""Where shipped data lives: next to the packages in a checkout, under harden/_data in a wheel."""

from __future__ import annotations

import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    installed = _PKG / "_data" / name
    if installed.is_dir():
        return installed
    return _PKG.parent / name


def shipped_baselines_dir() -> Path:
    return _data_dir("baselines")


def templates_dir() -> Path:
    return _data_dir("templates")


def shipped_suites_dir() -> Path:
    """harden's own testinfra suites (``harden:behaviour/...`` in an image definition)."""
    return _PKG / "verifiers"  # harden.verifiers, found without importing it


def harden_home() -> Path:
    """Local state (inventory cache, audit log): ``$HARDEN_HOME`` or ~/.local/state/harden."""
    env = os.environ.get("HARDEN_HOME")
    if env:
        return Path(env)
    return Path.home() / ".local" / "state" / "harden"


def in_checkout() -> bool:
    """True when running from a source checkout (its scripts/ are there to name in hints)."""
    return (_PKG.parent / "scripts" / "services.sh").is_file()


def setup_hint(checkout: str, installed: str) -> str:
    """A hint that makes sense where harden runs: scripts/ of a checkout, else plain advice."""
    return checkout if in_checkout() else installed
