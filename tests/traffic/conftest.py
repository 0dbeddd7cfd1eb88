"""Fixtures the traffic-switch tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.traffic.backend import BackendProcess, start_backend


@pytest.fixture(scope="module")
def backends() -> Iterator[tuple[BackendProcess, BackendProcess]]:
    """Two real HTTP backends, "blue" and "green", shared by the tests of one file."""
    blue = start_backend("blue")
    try:
        green = start_backend("green")
        try:
            yield blue, green
        finally:
            green.stop()
    finally:
        blue.stop()
