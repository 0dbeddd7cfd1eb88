"""The Notifier's promises to the deploy that calls it: never raise, never hang, warn once, redacted."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from lockstep.notify import ChannelSetup, DeliveryError
from lockstep.notify import dispatcher as dispatcher_module
from lockstep.notify.config import ChannelConfig, NotificationsConfig
from lockstep.notify.dispatcher import Notifier
from tests.notify import Warnings, sample_event

SECRET = "db-password-271828"


class BuggyChannel:
    """Raises something that is not a DeliveryError, with a secret in the message, then works."""

    def __init__(self) -> None:
        self.calls = 0
        self.delivered: list[Mapping[str, Any]] = []

    def send(self, document: Mapping[str, Any], timeout: float) -> None:
        self.calls += 1
        if self.calls == 1:
            raise KeyError(f"bug while formatting with password {SECRET}")
        self.delivered.append(document)


def test_no_channels_starts_no_threads_and_closes_at_once(tmp_path: Path) -> None:
    """A project without [notifications] pays nothing: no threads, close() returns immediately."""
    before = threading.active_count()
    notifier = Notifier(NotificationsConfig(), tmp_path, "production", warn=Warnings(), environ={})
    notifier.notify(sample_event())
    assert threading.active_count() == before
    started = time.monotonic()
    notifier.close()
    assert time.monotonic() - started < 0.1


def test_bug_in_a_channel_becomes_a_redacted_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception in a channel is caught, reported with secrets masked, and the next event still goes."""
    channel = BuggyChannel()

    def fake_build(config: ChannelConfig, setup: ChannelSetup) -> BuggyChannel:
        return channel

    monkeypatch.setattr(dispatcher_module, "build_channel", fake_build)
    warnings = Warnings()
    config = NotificationsConfig.model_validate({"channels": [{"kind": "github-actions", "name": "buggy"}]})
    notifier = Notifier(config, tmp_path, None, warn=warnings, environ={"SHOP_DATABASE_PASSWORD": SECRET})
    notifier.notify(sample_event("deploy.started"))
    notifier.notify(sample_event("deploy.succeeded"))
    notifier.close(timeout=30)
    (line,) = warnings.wait_for(1)
    assert "buggy" in line and "KeyError" in line
    assert SECRET not in line
    assert [document["kind"] for document in channel.delivered] == ["deploy.succeeded"]


def test_channel_that_cannot_be_built_is_reported_on_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A channel whose construction fails does not fail the Notifier; each event to it gives a warning."""

    def broken_build(config: ChannelConfig, setup: ChannelSetup) -> Any:
        raise RuntimeError("cannot load the CA file")

    monkeypatch.setattr(dispatcher_module, "build_channel", broken_build)
    warnings = Warnings()
    config = NotificationsConfig.model_validate({"channels": [{"kind": "github-actions"}]})
    notifier = Notifier(config, tmp_path, None, warn=warnings, environ={})
    notifier.notify(sample_event())
    notifier.close(timeout=30)
    (line,) = warnings.wait_for(1)
    assert "not usable" in line and "cannot load the CA file" in line


def test_failing_warning_sink_does_not_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a warn callable that raises (stderr closed) cannot make notify or close raise."""

    class Refusing:
        def send(self, document: Mapping[str, Any], timeout: float) -> None:
            raise DeliveryError("down", permanent=True)

    def fake_build(config: ChannelConfig, setup: ChannelSetup) -> Refusing:
        return Refusing()

    def broken_warn(line: str) -> None:
        raise OSError("stderr is closed")

    monkeypatch.setattr(dispatcher_module, "build_channel", fake_build)
    config = NotificationsConfig.model_validate({"channels": [{"kind": "github-actions"}]})
    notifier = Notifier(config, tmp_path, None, warn=broken_warn, environ={})
    notifier.notify(sample_event())
    notifier.close(timeout=30)


def test_notify_survives_an_unserialisable_detail(tmp_path: Path) -> None:
    """Odd detail values are turned into strings rather than breaking the event."""
    warnings = Warnings()
    log = tmp_path / "events.jsonl"
    config = NotificationsConfig.model_validate({"channels": [{"kind": "event-log", "path": str(log)}]})
    notifier = Notifier(config, tmp_path, None, warn=warnings, environ={})
    notifier.notify(sample_event("deploy.failed", error=ValueError("boom"), data=b"\xffbytes"))
    notifier.close(timeout=30)
    assert '"error":"boom"' in log.read_text()
    assert warnings.lines == []
