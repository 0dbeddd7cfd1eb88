"""PagerDuty Events API v2: a failure opens (triggers) an alert, the next success resolves it.

Each kind of job has one alert per project and environment: its `dedup_key` is stable
(`lockstep/shop/production/deploy`), so a repeated failure adds to the open alert instead of
paging again, and the next success resolves it. A success is sent as `resolve` every time: without
an open alert PagerDuty drops it, so lockstep keeps no state about what it triggered (the agent,
cron and a workstation all resolve the same alert). Events outside the mapping (deploy.started,
lock.broken) send nothing. The routing key is the credential; it comes from the variable
secret_env names and only ever travels in the request body.
"""

from __future__ import annotations

import fnmatch
import json
import socket
from collections.abc import Mapping
from typing import Any

from lockstep.notify import ChannelSetup, DeliveryError
from lockstep.notify.config import ChannelConfig
from lockstep.notify.events import (
    BACKUP_FAILED,
    DEPLOY_FAILED,
    DEPLOY_ROLLED_BACK,
    DEPLOY_SUCCEEDED,
    ROLLBACK_DONE,
    ROLLBACK_FAILED,
    SNAPSHOT_CREATED,
    SNAPSHOT_RPO_EXCEEDED,
    SNAPSHOT_VERIFICATION_FAILED,
    SNAPSHOT_VERIFIED,
)
from lockstep.notify.webhook import request

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
MAX_DEDUP_KEY = 255
MAX_SUMMARY = 1024

# Event kind → (job whose alert it concerns, severity). A deploy or rollback that could not undo
# everything may leave nothing serving: critical. A rollback that restored the previous release,
# a failed backup or verification, a backup older than the RPO: error.
TRIGGERS: dict[str, tuple[str, str]] = {
    DEPLOY_FAILED: ("deploy", "critical"),
    ROLLBACK_FAILED: ("deploy", "critical"),
    DEPLOY_ROLLED_BACK: ("deploy", "error"),
    BACKUP_FAILED: ("backup", "error"),
    SNAPSHOT_RPO_EXCEEDED: ("backup", "error"),
    SNAPSHOT_VERIFICATION_FAILED: ("verify", "error"),
}
# Event kind → the job whose alert it resolves: a release serves again, a backup was taken, a snapshot verified.
RESOLVES: dict[str, str] = {
    DEPLOY_SUCCEEDED: "deploy",
    ROLLBACK_DONE: "deploy",
    SNAPSHOT_CREATED: "backup",
    SNAPSHOT_VERIFIED: "verify",
}


def resolves_an_opened_alert(kind: str, patterns: list[str]) -> bool:
    """Whether `kind` resolves an alert that a channel with these event patterns can open.

    A filter such as `["*.failed"]` picks which alerts a channel opens; the successes that close
    them must still reach it, or each alert would stay open until someone resolved it by hand."""
    job = RESOLVES.get(kind)
    if job is None:
        return False
    return any(
        fnmatch.fnmatchcase(trigger, pattern)
        for trigger, (its_job, _) in TRIGGERS.items()
        if its_job == job
        for pattern in patterns
    )


def dedup_key(project: str, environment: object, job: str) -> str:
    """The alert's key, the same for every failure and success of this job in this environment."""
    return f"lockstep/{project}/{environment or '-'}/{job}"[:MAX_DEDUP_KEY]


def event_body(document: Mapping[str, Any], routing_key: str, project: str, source: str) -> dict[str, Any] | None:
    """The Events API v2 request for `document`, or None when its kind neither triggers nor resolves."""
    kind = str(document.get("kind", ""))
    environment = document.get("environment")
    if kind in RESOLVES:
        key = dedup_key(project, environment, RESOLVES[kind])
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": key}
    if kind not in TRIGGERS:
        return None
    job, alert_severity = TRIGGERS[kind]
    where = f"{project} ({environment})" if environment else project
    summary = f"{where}: {document.get('summary', '')}"
    details = document.get("details") or {}
    custom_details = {
        "kind": kind,
        "environment": environment,
        "deploy_id": document.get("deploy_id"),
        **(details if isinstance(details, Mapping) else {}),
    }
    payload = {
        "summary": summary if len(summary) <= MAX_SUMMARY else summary[: MAX_SUMMARY - 1] + "…",
        "source": source,
        "severity": alert_severity,
        "timestamp": document.get("at"),
        "component": project,
        "group": environment,
        "class": kind,
        "custom_details": custom_details,
    }
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key(project, environment, job),
        "client": "lockstep",
        "payload": {name: value for name, value in payload.items() if value is not None},
    }


class PagerDutyChannel:
    """Triggers and resolves PagerDuty alerts through the Events API v2."""

    def __init__(self, url: str, routing_key: str | None, project: str, source: str, config: ChannelConfig) -> None:
        self.url = url
        self._routing_key = routing_key
        self._project = project
        self._source = source
        self._config = config

    def send(self, document: Mapping[str, Any], timeout: float) -> None:
        """Trigger or resolve the alert `document` concerns; nothing for other kinds."""
        if self._routing_key is None:
            raise DeliveryError(
                f"the environment variable {self._config.secret_env} (secret_env) is not set: set it to the "
                "routing key (the Integration Key of the service's Events API v2 integration)",
                permanent=True,
            )
        event = event_body(document, self._routing_key, self._project, self._source)
        if event is None:
            return
        encoded = json.dumps(event, ensure_ascii=False, sort_keys=True).encode("utf-8")
        request(self.url, encoded, {"Content-Type": "application/json"}, timeout)


def build(config: ChannelConfig, setup: ChannelSetup) -> PagerDutyChannel:
    """A PagerDuty channel; the routing key is read from secret_env now and registered as a secret."""
    return PagerDutyChannel(
        config.url or EVENTS_URL,
        setup.variable(config.secret_env),
        setup.project_name,
        socket.gethostname(),
        config,
    )
