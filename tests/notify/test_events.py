"""Events: the kinds from issue #6, and a JSON document that any channel can send."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from lockstep.notify import events
from lockstep.notify.events import EVENT_KINDS, Event


def test_every_issue_kind_exists() -> None:
    """The eleven kinds the issue lists, and rollback.failed, with stable spellings (they are API for
    webhook receivers)."""
    assert set(EVENT_KINDS) == {
        "deploy.started",
        "deploy.succeeded",
        "deploy.failed",
        "deploy.rolled_back",
        "rollback.done",
        "rollback.failed",
        "snapshot.created",
        "snapshot.verified",
        "snapshot.verification_failed",
        "backup.failed",
        "lock.broken",
        "snapshot.rpo_exceeded",
    }
    assert events.DEPLOY_ROLLED_BACK == "deploy.rolled_back"


def test_unknown_kind_is_a_programming_error() -> None:
    """A misspelt kind fails where the event is made, not silently in every filter."""
    with pytest.raises(ValueError, match=r"unknown event kind 'deploy\.finished'"):
        Event("deploy.finished", "production", "x", {}, datetime.datetime.now(datetime.UTC))


def test_document_is_json_with_utc_time_and_plain_values() -> None:
    """Paths, datetimes, sets and naive times become JSON values; the time is RFC 3339 UTC."""
    event = Event(
        kind="snapshot.created",
        environment=None,
        summary="snapshot 4f1a created",
        details={
            "path": Path("/srv/app"),
            "taken": datetime.datetime(2026, 1, 2, 3, 4, 5),
            "tags": {"b", "a"},
            "ratio": float("nan"),
        },
        at=datetime.datetime(2026, 1, 2, 4, 4, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=1))),
    )
    document = event.to_document()
    assert json.loads(json.dumps(document, allow_nan=False)) == document
    assert document["at"] == "2026-01-02T03:04:05Z"
    assert document["details"] == {
        "path": "/srv/app",
        "taken": "2026-01-02T03:04:05Z",
        "tags": ["a", "b"],
        "ratio": "nan",
    }
    assert document["severity"] == "info"
    assert document["deploy_id"] is None


def test_environment_is_filled_in_only_when_missing() -> None:
    """with_environment keeps an event's own environment."""
    bare = Event("lock.broken", None, "lock broken", {}, datetime.datetime.now(datetime.UTC))
    assert bare.with_environment("staging").environment == "staging"
    assert bare.with_environment("staging").with_environment("production").environment == "staging"
    assert Event("deploy.failed", None, "x").to_document()["severity"] == "error"
