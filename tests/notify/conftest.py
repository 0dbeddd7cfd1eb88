"""The notify tests' shared fixture: a real HTTP server on loopback that records what it is sent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.notify import RecordingServer


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    recording = RecordingServer()
    try:
        yield recording
    finally:
        recording.stop()
