"""A local JSON-lines event log: one redacted event document per line, appended and fsync'd.

It is the record that survives when every remote channel is down, and a file other tools can tail.
Each line is written with a single append so concurrent lockstep processes never interleave lines;
the file is created readable by its owner only, as it can name hosts and databases.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lockstep.notify import ChannelSetup, DeliveryError
from lockstep.notify.config import ChannelConfig


def append_event(path: Path, document: Mapping[str, Any]) -> None:
    """Append `document` as one line to `path` and fsync it; the directory is created when missing."""
    line = json.dumps(document, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, line.encode("utf-8"))
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class EventLogChannel:
    """Appends every event to a JSON-lines file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def send(self, document: Mapping[str, Any], timeout: float) -> None:
        """Append `document` to the log."""
        try:
            append_event(self.path, document)
        except OSError as error:
            raise DeliveryError(f"cannot append to {self.path}: {error.strerror or error}") from None


def build(config: ChannelConfig, setup: ChannelSetup) -> EventLogChannel:
    """An event-log channel; a relative path is taken from lockstep.toml's directory."""
    assert config.path is not None
    return EventLogChannel(setup.resolve(config.path))
