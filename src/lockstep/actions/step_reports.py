"""Step outcomes of the snapshot commands (backup, snapshot create, verify, restore, forget).

The snapshot pipeline does not report steps itself; these actions time each step around the
pipeline calls and tell the same Reporter a deploy uses, so every long-running command logs the
same way: one event per step outcome with its duration, on a terminal or as JSON lines.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lockstep.errors import LockstepError
from lockstep.pipeline.manifest import Manifest
from lockstep.pipeline.project_secrets import project_secrets, teach_project_secrets
from lockstep.pipeline.steps import Reporter, bind_context
from lockstep.pipeline.verification_records import VerificationResult
from lockstep.wording import counted

if TYPE_CHECKING:  # snapshot_create reports through this module
    from lockstep.actions.snapshot_create import ProjectContext


class SilentReporter:
    """For callers that want no progress (the agent's schedules, library use): every event is dropped."""

    def step_started(self, step: str, detail: str) -> None:
        return None

    def step_finished(self, step: str, seconds: float, detail: str) -> None:
        return None

    def step_failed(self, step: str, seconds: float, reason: str) -> None:
        return None

    def info(self, message: str) -> None:
        return None

    def warn(self, message: str) -> None:
        return None

    def confirm(self, question: str, expected_answer: str | None = None) -> bool:
        return False


@dataclass
class StepOutcome:
    """What the body of a step says about how it went, for the step-finished event."""

    detail: str = ""


def failure_reason(error: BaseException) -> str:
    """One line for a step-failed event: the error's own message, never a traceback."""
    if isinstance(error, LockstepError):
        return error.message
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return f"internal error ({type(error).__name__})"


@contextmanager
def reported_step(reporter: Reporter, step: str, detail: str = "") -> Iterator[StepOutcome]:
    """Report `step` started, then finished with its duration, or failed with why (and re-raise)."""
    reporter.step_started(step, detail)
    started = time.monotonic()
    outcome = StepOutcome()
    try:
        yield outcome
    except BaseException as error:
        reporter.step_failed(step, time.monotonic() - started, failure_reason(error))
        raise
    reporter.step_finished(step, time.monotonic() - started, outcome.detail)


def report_detail(reporter: Reporter, message: str) -> None:
    """A detail only --verbose shows; reporters without the notion drop it."""
    detail = getattr(reporter, "detail", None)
    if callable(detail):
        detail(message)


def bind_operation(reporter: Reporter, **fields: object) -> None:
    """Fields every later event of this command carries (env, operation, snapshot_id)."""
    bind_context(reporter, **{name: value for name, value in fields.items() if value is not None})


def teach_secrets(reporter: Reporter, project: ProjectContext) -> None:
    """Give the reporter's redactor the secrets this project reads that are not in the environment:
    database passwords (password_env, password_file), the repository's password file, the secret
    files' values and secret-named `env` values."""
    teach_project_secrets(project.config)  # the process's redactor: the CLI's error line uses it
    add = getattr(reporter, "add_secret", None)
    if not callable(add):
        return
    for value in project_secrets(project.config):
        add(value)
    password_file = project.access.password_file_in_use()
    if password_file is not None:
        with suppress(OSError):
            add(password_file.read_text(encoding="utf-8").rstrip("\r\n"))


def report_warnings(reporter: Reporter, manifest: Manifest) -> None:
    """What a new snapshot could not keep exactly (a FLOAT column, a system-versioned table's
    history): a warning each, so that no one finds out only at a restore."""
    for warning in manifest.warnings:
        reporter.warn(warning)


def report_manifest(reporter: Reporter, manifest: Manifest) -> None:
    """--verbose: what the snapshot holds, database by database.

    The dump of each database is timed inside the snapshot pipeline, which records no
    per-database duration yet; the whole snapshot step carries the time."""
    for name, database in manifest.databases.items():
        rows = sum(table.rows for table in database.tables)
        report_detail(
            reporter,
            f"database {name}: {database.engine} {database.server_version}, {database.size} bytes, "
            f"{counted(len(database.tables), 'table')}, {counted(rows, 'row')}",
        )
    for file in manifest.files:
        report_detail(reporter, f"file {file.path} ({file.kind}, {file.size} bytes)")


def report_verification(reporter: Reporter, result: VerificationResult) -> None:
    """Each database's test-restore as a step outcome with the duration the verification measured,
    and each finding as a detail (the result, printed or --json, lists them all)."""
    for database in result.databases:
        step = f"test-restore {database.name}"
        if database.ok:
            detail = f"{counted(database.tables, 'table')}, {counted(database.rows, 'row')}" + (
                f", {database.integrity}" if database.integrity else ""
            )
            reporter.step_finished(step, database.seconds, detail)
        else:
            reporter.step_failed(step, database.seconds, database.integrity or "the test-restore failed")
    for finding in result.findings:
        report_detail(reporter, f"problem: {finding.subject}: {finding.message}")
    for note in result.notes:
        report_detail(reporter, f"note: {note}")
