"""What an integration test does when a service it needs is missing."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    """Fail in CI (CI=true: every service must be there); elsewhere skip, saying how to fix it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"required service missing in CI: {reason}")
    raise pytest.skip.Exception(reason)  # outside CI only: the fix is in the reason
