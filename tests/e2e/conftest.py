"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import pytest

from tests.support.chromium import find_chromium


@pytest.fixture
def chromium() -> str:
    """Debian's chromium (scripts/setup.sh installs it); the only reason the page tests skip."""
    path = find_chromium()
    if path is None:
        pytest.skip("chromium is not installed (scripts/setup.sh installs it: apt-get install chromium)")
    return path
