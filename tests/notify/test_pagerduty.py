"""The PagerDuty channel against a real HTTP server on loopback: Events API v2 triggers and resolves."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

from lockstep.notify import ChannelSetup
from lockstep.notify.config import ChannelConfig
from lockstep.notify.pagerduty import EVENTS_URL, build
from lockstep.redaction import Redactor
from tests.notify import RecordingServer, Warnings, make_notifier, sample_event

ROUTING_KEY = "R0uting0Key0of0the0integration99"


def pagerduty(server: RecordingServer) -> dict[str, Any]:
    return {"kind": "pagerduty", "url": f"{server.url}/v2/enqueue", "secret_env": "PAGERDUTY_ROUTING_KEY"}


def test_a_failed_backup_triggers_an_alert_with_the_event_facts(tmp_path: Path, server: RecordingServer) -> None:
    """backup.failed: one POST of the Events API v2 trigger, its dedup_key naming project, environment
    and job, the host as source, and the event's facts as custom_details."""
    warnings = Warnings()
    notifier = make_notifier(
        tmp_path, [pagerduty(server)], {"PAGERDUTY_ROUTING_KEY": ROUTING_KEY}, warnings, project="shop"
    )
    notifier.notify(sample_event("backup.failed", error="database orders: connection refused"))
    notifier.close()

    (request,) = server.wait_for(1)
    assert (request.method, request.path) == ("POST", "/v2/enqueue")
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": "lockstep/shop/production/backup",
        "client": "lockstep",
        "payload": {
            "summary": "shop (production): backup.failed for shop at 3f2c1a9",
            "source": socket.gethostname(),
            "severity": "error",
            "timestamp": "2026-11-22T06:00:00Z",
            "component": "shop",
            "group": "production",
            "class": "backup.failed",
            "custom_details": {
                "kind": "backup.failed",
                "environment": "production",
                "deploy_id": "d-20261122-0600",
                "commit": "3f2c1a9",
                "duration_seconds": 12.5,
                "error": "database orders: connection refused",
            },
        },
    }
    assert warnings.lines == []


def test_the_next_success_resolves_the_alert_its_failure_opened(tmp_path: Path, server: RecordingServer) -> None:
    """A failed deploy (critical) is resolved by the next deploy that succeeds, a failed backup by the
    next snapshot, a failed verification by the next verified one, each under its own dedup_key;
    a rollback that left nothing serving is critical too, an automatic rollback error. Events that
    neither fail nor resolve anything (deploy.started, lock.broken) send nothing."""
    warnings = Warnings()
    notifier = make_notifier(
        tmp_path, [pagerduty(server)], {"PAGERDUTY_ROUTING_KEY": ROUTING_KEY}, warnings, project="shop"
    )
    kinds = [
        "deploy.started",
        "deploy.failed",
        "lock.broken",
        "deploy.succeeded",
        "deploy.rolled_back",
        "rollback.failed",
        "rollback.done",
        "backup.failed",
        "snapshot.rpo_exceeded",
        "snapshot.created",
        "snapshot.verification_failed",
        "snapshot.verified",
    ]
    for kind in kinds:
        notifier.notify(sample_event(kind))
    notifier.close()
    events = [json.loads(request.body) for request in server.wait_for(10)]
    assert [
        (event["event_action"], event["dedup_key"].rsplit("/", 1)[1], event.get("payload", {}).get("severity"))
        for event in events
    ] == [
        ("trigger", "deploy", "critical"),
        ("resolve", "deploy", None),
        ("trigger", "deploy", "error"),
        ("trigger", "deploy", "critical"),
        ("resolve", "deploy", None),
        ("trigger", "backup", "error"),
        ("trigger", "backup", "error"),
        ("resolve", "backup", None),
        ("trigger", "verify", "error"),
        ("resolve", "verify", None),
    ]
    assert events[1] == {
        "routing_key": ROUTING_KEY,
        "event_action": "resolve",
        "dedup_key": "lockstep/shop/production/deploy",
    }
    assert len(server.received()) == 10
    assert warnings.lines == []


def test_the_dedup_key_separates_projects_and_environments(tmp_path: Path, server: RecordingServer) -> None:
    """Staging's failed deploy must not be resolved by production's success, nor one project's by another's."""
    warnings = Warnings()
    environ = {"PAGERDUTY_ROUTING_KEY": ROUTING_KEY}
    for project, environment in (("shop", "staging"), ("shop", "production"), ("blog", "production")):
        notifier = make_notifier(
            tmp_path, [pagerduty(server)], environ, warnings, project=project, environment=environment
        )
        event = sample_event("deploy.failed")
        notifier.notify(type(event)(kind=event.kind, environment=None, summary="deploy failed"))
        notifier.close()
    keys = [json.loads(request.body)["dedup_key"] for request in server.wait_for(3)]
    assert keys == [
        "lockstep/shop/staging/deploy",
        "lockstep/shop/production/deploy",
        "lockstep/blog/production/deploy",
    ]


def test_a_failures_only_filter_still_resolves_the_alerts_it_opened(tmp_path: Path, server: RecordingServer) -> None:
    """events = ["*.failed"] picks which alerts the channel opens; the success that closes one must
    still reach PagerDuty, or every alert would stay open until resolved by hand. Successes whose
    alerts the filter cannot open (a verification, with only backup failures chosen) stay out."""
    warnings = Warnings()
    channel = {**pagerduty(server), "events": ["backup.failed"]}
    notifier = make_notifier(tmp_path, [channel], {"PAGERDUTY_ROUTING_KEY": ROUTING_KEY}, warnings, project="shop")
    for kind in ("backup.failed", "snapshot.verified", "deploy.succeeded", "snapshot.created"):
        notifier.notify(sample_event(kind))
    notifier.close()

    actions = [
        (body["event_action"], body["dedup_key"]) for body in map(json.loads, (r.body for r in server.wait_for(2)))
    ]
    assert actions == [("trigger", "lockstep/shop/production/backup"), ("resolve", "lockstep/shop/production/backup")]
    assert len(server.received()) == 2
    assert warnings.lines == []


def test_server_errors_are_retried_and_a_bad_request_warns_without_the_key(tmp_path: Path) -> None:
    """Two 500s then 202: the same trigger arrives three times and nobody is warned. A 400 (PagerDuty
    refused the event) is not retried: one warning that says so and shows no routing key."""
    flaky = RecordingServer(statuses=[500, 500, 202, 400])
    try:
        warnings = Warnings()
        notifier = make_notifier(
            tmp_path, [pagerduty(flaky)], {"PAGERDUTY_ROUTING_KEY": ROUTING_KEY}, warnings, project="shop"
        )
        notifier.notify(sample_event("deploy.failed", hook_output=f"key={ROUTING_KEY}"))
        notifier.notify(sample_event("deploy.succeeded"))
        notifier.close(timeout=30)
        requests = flaky.wait_for(4)
        assert len({request.body for request in requests[:3]}) == 1
        assert json.loads(requests[3].body)["event_action"] == "resolve"
        (line,) = warnings.wait_for(1)
        assert "HTTP 400" in line and "1 attempt" in line and "deploy.succeeded not sent" in line
        assert ROUTING_KEY not in line
        assert len(flaky.received()) == 4
    finally:
        flaky.stop()


def test_an_unset_routing_key_variable_warns_by_name(tmp_path: Path, server: RecordingServer) -> None:
    """secret_env naming an unset variable: one warning per event naming it and what to put there."""
    warnings = Warnings()
    notifier = make_notifier(tmp_path, [pagerduty(server)], {}, warnings)
    notifier.notify(sample_event("backup.failed"))
    notifier.close()
    (line,) = warnings.wait_for(1)
    assert "PAGERDUTY_ROUTING_KEY (secret_env) is not set" in line and "routing key" in line
    assert server.received() == []


def test_without_url_events_go_to_pagerduty(tmp_path: Path) -> None:
    """url is only for tests and the EU endpoint: left out, the channel posts to PagerDuty's US endpoint."""
    config = ChannelConfig.model_validate({"kind": "pagerduty", "secret_env": "PAGERDUTY_ROUTING_KEY"})
    setup = ChannelSetup(tmp_path, {"PAGERDUTY_ROUTING_KEY": ROUTING_KEY}, Redactor(), stdout=lambda: sys.stdout)
    channel = build(config, setup)
    assert channel.url == EVENTS_URL == "https://events.pagerduty.com/v2/enqueue"
    assert setup.redactor.redact(f"x {ROUTING_KEY} y") == "x *** y"
