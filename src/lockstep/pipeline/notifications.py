"""The deploy pipeline's link to notifications: one Notifier per command, secrets known to it."""

from __future__ import annotations

import sys
from contextlib import suppress
from typing import Any

from lockstep.actions.environment import EnvironmentContext
from lockstep.notify.dispatcher import Notifier
from lockstep.notify.events import Event
from lockstep.pipeline.history import OperationRecord
from lockstep.pipeline.project_secrets import teach_project_secrets
from lockstep.pipeline.steps import Reporter
from lockstep.redaction import Redactor


def secrets_redactor(context: EnvironmentContext) -> Redactor:
    """The process's redactor, taught the project's secrets: the repository password (and the
    password file the command was given), the database passwords, the secret files' values,
    secret-named `env` values and secret-named variables.

    The process's, so the CLI's last error line hides what the deploy's notifications hid."""
    redactor = teach_project_secrets(context.config)
    password_file = context.project.access.password_file_in_use()
    if password_file is not None:
        with suppress(OSError, UnicodeDecodeError):
            redactor.add(password_file.read_text(encoding="utf-8").rstrip("\r\n"))
    return redactor


def teach_reporter_secrets(reporter: Reporter, redactor: Redactor) -> None:
    """Give a reporter that redacts (the CLI's) the secrets `redactor` knows: database passwords
    from password_file are in no environment variable, so the reporter cannot find them itself."""
    add = getattr(reporter, "add_secret", None)
    if callable(add):
        for value in redactor.known_values():
            add(value)


def notifier_for(context: EnvironmentContext, reporter: Reporter) -> Notifier:
    """Notifications go out in the background; their warnings go through the reporter (stderr)."""
    return Notifier(
        context.config.notifications,
        context.directory,
        context.environment,
        redactor=secrets_redactor(context),
        warn=reporter.warn,
        stdout=lambda: sys.stderr,  # stdout belongs to --json
        project=context.config.project,
    )


def operation_event(kind: str, record: OperationRecord, summary: str, **details: Any) -> Event:
    """An event about a deploy or rollback, with the record's essentials as details."""
    return Event(
        kind=kind,
        environment=record.environment,
        summary=summary,
        details={
            "operation": record.operation,
            "release": record.release_id,
            "commit": record.commit,
            "performer": record.performer,
            "snapshot": record.snapshot_id,
            "outcome": record.outcome,
            "failed_step": record.failed_step,
            "reason": record.reason,
            "duration": record.duration,
            **details,
        },
        deploy_id=record.id,
    )
