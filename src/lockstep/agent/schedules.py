"""The agent's scheduled work: `[[schedules]]` backups, verifications and retention, run in-process.

When is a schedule due? When its most recent cron occurrence (at or before now) is later than the
start of its last recorded run. That one rule covers the normal case and catching up after
downtime: however many occurrences were missed, the schedule runs once. A schedule with no
recorded run at all (new, or its cron or level changed) runs as soon as the agent starts, so a
wrong password or an unreachable database shows up at once instead of at 02:00. A run that the
agent's stop cut short ("interrupted") does not count, so it is retried at the next start.
Both sides are compared on the local wall clock, so daylight saving time neither doubles a run
nor loses one (a job in the hour that spring skips runs right after the jump).

Runs go to the environment's history (`lockstep history`) as operations `scheduled-backup`,
`scheduled-verify` and `scheduled-forget`; `ref` holds the schedule (e.g. `backup 0 2 * * *`).
Each job runs in its own thread, at most one per job: an occurrence that comes while the same
schedule still runs is recorded as "skipped"; one that finds another schedule of the same job
running (or any job running while `forget` wants its exclusive lock, or the reverse) waits for it.
A failed job is recorded, sends backup.failed or snapshot.verification_failed, and the agent
carries on.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lockstep.actions.backup import human_size, run_backup, summary_line
from lockstep.actions.environment import EnvironmentContext
from lockstep.actions.snapshot_create import load_project
from lockstep.actions.snapshot_forget import forget_snapshots
from lockstep.actions.snapshot_list import lockstep_snapshots
from lockstep.actions.snapshot_verify import database_servers
from lockstep.agent.cron import CronExpression
from lockstep.config.agent_model import ScheduleConfig
from lockstep.errors import LockstepError, NotFound
from lockstep.notify.dispatcher import Notifier
from lockstep.notify.events import (
    BACKUP_FAILED,
    SNAPSHOT_CREATED,
    SNAPSHOT_VERIFICATION_FAILED,
    SNAPSHOT_VERIFIED,
    Event,
)
from lockstep.pipeline.history import History, OperationRecord
from lockstep.pipeline.notifications import secrets_redactor
from lockstep.pipeline.snapshot import ENVIRONMENT_TAG_PREFIX, environment_name
from lockstep.pipeline.verify import verify_snapshot

OPERATION_PREFIX = "scheduled-"
PERFORMER = "lockstep agent (schedule)"
MAX_FINDINGS_SHOWN = 3
CLOSE_TIMEOUT = 10.0

Clock = Callable[[], datetime]
Warn = Callable[[str], None]


@dataclass(frozen=True)
class JobOutcome:
    """What one run did: `ok` False for a job that ran but found a problem (a failed verification)."""

    ok: bool
    detail: str
    snapshot_id: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


JobRunner = Callable[[ScheduleConfig], JobOutcome]


def schedule_key(schedule: ScheduleConfig) -> str:
    """How history names a schedule: `backup 0 2 * * *`, `verify 0 4 * * 0 (restore)`."""
    key = f"{schedule.job} {' '.join(schedule.cron.split())}"
    return f"{key} ({schedule.level})" if schedule.job == "verify" else key


def _print_warning(line: str) -> None:
    print(f"lockstep agent: warning: {line}", file=sys.stderr, flush=True)


@dataclass
class _Schedule:
    config: ScheduleConfig
    expression: CronExpression
    key: str


@dataclass
class _Run:
    schedule: _Schedule
    record: OperationRecord
    thread: threading.Thread


class Scheduler:
    """Decides on every `tick()` which schedules are due and starts them in the background.

    `now` returns the local wall-clock time (naive, like `datetime.now()`); `runners` replace the
    real jobs (tests); `warn` receives one line per problem the agent should log.
    """

    def __init__(
        self,
        context: EnvironmentContext,
        now: Clock = datetime.now,
        runners: Mapping[str, JobRunner] | None = None,
        warn: Warn = _print_warning,
        notifier: Notifier | None = None,
    ) -> None:
        self.context = context
        self.now = now
        self.warn = warn
        self.history = History(context.layout.history_database)
        self.redactor = secrets_redactor(context)
        self.notifier = notifier or Notifier(
            context.config.notifications,
            context.directory,
            context.environment,
            redactor=self.redactor,
            warn=lambda line: warn(line.removeprefix("warning: ")),
            project=context.config.project,
        )
        self.runners: Mapping[str, JobRunner] = runners or _real_runners(context, warn)
        self.schedules = [
            _Schedule(schedule, CronExpression.parse(schedule.cron), schedule_key(schedule))
            for schedule in context.config.schedules
        ]
        self._lock = threading.Lock()
        self._running: dict[str, _Run] = {}  # job → its run
        self._closed = False
        self._mark_abandoned()
        self._last_started = self._last_runs()

    # -- state ---------------------------------------------------------------------------------

    def _mark_abandoned(self) -> None:
        """Runs left "running" by an agent that was killed: they are over, say so."""
        for record in self.history.abandoned():
            if record.operation.startswith(OPERATION_PREFIX):
                record.outcome = "interrupted"
                record.finished_at = time.time()
                record.reason = record.reason or "the agent stopped before the job finished"
                self.history.save(record)

    def _last_runs(self) -> dict[str, float]:
        """Each schedule's latest recorded start (a skipped occurrence counts, an interrupted run not)."""
        last: dict[str, float] = {}
        for record in self.history.all():
            if record.operation.startswith(OPERATION_PREFIX) and record.ref and record.outcome != "interrupted":
                last[record.ref] = max(last.get(record.ref, 0.0), record.started_at)
        return last

    def running_jobs(self) -> list[str]:
        """The jobs running right now (for status pages and tests)."""
        with self._lock:
            return sorted(self._running)

    # -- ticking -------------------------------------------------------------------------------

    def tick(self) -> None:
        """Start every due schedule that may start; never raises (the agent loop must go on)."""
        try:
            self._tick()
        except Exception as error:  # a full disk under history.db must not stop the agent
            self.warn(self.redactor.redact(f"the scheduler failed this round: {type(error).__name__}: {error}"))

    def _tick(self) -> None:
        moment = self.now()
        with self._lock:
            if self._closed:
                return
            for schedule in self.schedules:
                occurrence = schedule.expression.latest_at_or_before(moment)
                last = self._last_started.get(schedule.key)
                # Compared on the wall clock: a 02:30 job on the night 02:00-03:00 is skipped by DST
                # runs once right after the jump, and once when 02:30 comes twice in autumn.
                if last is not None and datetime.fromtimestamp(last, moment.tzinfo) >= occurrence:
                    continue
                running = self._running.get(schedule.config.job)
                if running is not None and running.schedule.key == schedule.key:
                    self._record_skip(schedule, running, moment)
                elif self._may_start(schedule.config.job):
                    self._start(schedule, moment)

    def _may_start(self, job: str) -> bool:
        """One run per job; forget (exclusive repository lock) only alone. Caller holds the lock."""
        if job in self._running:
            return False
        return not ("forget" in self._running or (job == "forget" and self._running))

    def _new_record(self, schedule: _Schedule, moment: datetime) -> OperationRecord:
        return OperationRecord(
            id=f"{moment:%Y%m%d_%H%M%S}_{schedule.config.job}_{secrets.token_hex(2)}",
            operation=OPERATION_PREFIX + schedule.config.job,
            environment=self.context.environment,
            started_at=moment.timestamp(),
            performer=PERFORMER,
            host=socket.gethostname(),
            pid=os.getpid(),
            ref=schedule.key,
        )

    def _record_skip(self, schedule: _Schedule, running: _Run, moment: datetime) -> None:
        record = self._new_record(schedule, moment)
        record.outcome = "skipped"
        record.finished_at = record.started_at
        started = datetime.fromtimestamp(running.record.started_at).strftime("%Y-%m-%d %H:%M:%S")
        record.reason = f"the previous run {running.record.id} (started {started}) is still running"
        self.history.save(record)
        self._last_started[schedule.key] = record.started_at
        self.warn(f"{schedule.key}: skipped, {record.reason}")

    def _start(self, schedule: _Schedule, moment: datetime) -> None:
        record = self._new_record(schedule, moment)
        self.history.save(record)
        self._last_started[schedule.key] = record.started_at
        thread = threading.Thread(
            target=self._run, args=(schedule, record), name=f"lockstep-{record.operation}", daemon=True
        )
        self._running[schedule.config.job] = _Run(schedule, record, thread)
        thread.start()

    # -- running -------------------------------------------------------------------------------

    def _run(self, schedule: _Schedule, record: OperationRecord) -> None:
        started = time.monotonic()
        job = schedule.config.job
        try:
            outcome = self.runners[job](schedule.config)
        except LockstepError as error:
            outcome = JobOutcome(ok=False, detail=str(error))
        except Exception as error:  # a bug in a job must not take the agent down
            outcome = JobOutcome(ok=False, detail=f"internal error: {type(error).__name__}: {error}")
        detail = self.redactor.redact(outcome.detail)
        seconds = time.monotonic() - started
        record.finished_at = record.started_at + seconds
        record.outcome = "succeeded" if outcome.ok else "failed"
        record.snapshot_id = outcome.snapshot_id
        record.message = detail if outcome.ok else None
        record.failed_step = None if outcome.ok else job
        record.reason = None if outcome.ok else detail
        step: dict[str, Any] = {
            "step": job,
            "outcome": "ok" if outcome.ok else "failed",
            "seconds": round(seconds, 3),
            "detail": detail,
        }
        # The sizes a job measured (a backup's added_bytes, a prune's bytes_freed), for /metrics.
        step.update({key: value for key, value in outcome.details.items() if isinstance(value, int)})
        record.steps = [step]
        try:
            self.history.save(record)
        except Exception as error:
            self.warn(f"{schedule.key}: could not record the run: {type(error).__name__}: {error}")
        finally:
            with self._lock:
                if self._running.get(job) is not None and self._running[job].record.id == record.id:
                    del self._running[job]
        if not outcome.ok:
            self.warn(f"{schedule.key} failed: {detail}")
        self._notify(schedule, record, outcome, detail)

    def _notify(self, schedule: _Schedule, record: OperationRecord, outcome: JobOutcome, detail: str) -> None:
        job = schedule.config.job
        if job == "verify":
            kind = SNAPSHOT_VERIFIED if outcome.ok else SNAPSHOT_VERIFICATION_FAILED
        elif job == "backup":
            kind = SNAPSHOT_CREATED if outcome.ok else BACKUP_FAILED
        elif not outcome.ok:
            kind = BACKUP_FAILED  # retention is part of keeping backups
        else:
            return
        summary = f"scheduled {job} " + ("ok" if outcome.ok else "failed") + f": {detail}"
        details = {
            "job": job,
            "schedule": schedule.key,
            "run": record.id,
            "snapshot": outcome.snapshot_id,
            "duration": record.duration,
            **({} if outcome.ok else {"error": detail}),
            **outcome.details,
        }
        self.notifier.notify(Event(kind=kind, environment=self.context.environment, summary=summary, details=details))

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Start nothing more; give running jobs `timeout` seconds, then record them as interrupted."""
        with self._lock:
            self._closed = True
            runs = list(self._running.values())
        deadline = time.monotonic() + timeout
        for run in runs:
            run.thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            unfinished = [run for run in self._running.values() if run.thread.is_alive()]
        for run in unfinished:
            run.record.outcome = "interrupted"
            run.record.finished_at = time.time()
            run.record.reason = "the agent stopped before the job finished"
            try:
                self.history.save(run.record)
            except Exception as error:
                self.warn(f"{run.schedule.key}: could not record the interruption: {error}")
        self.notifier.close()


# -- the real jobs ---------------------------------------------------------------------------


def _snapshot_environment(context: EnvironmentContext) -> str | None:
    """The `--env` that `lockstep backup` would be given for this environment.

    An environment with an [environments.NAME] table is passed by name; the default
    environment without one is what `lockstep backup` (no --env) snapshots.
    """
    base = load_project(context.directory, context.config_path, None)
    return context.environment if context.environment in base.config.environments else None


def _environment_tags(context: EnvironmentContext, snapshot_environment: str | None) -> set[str]:
    """Tags of this environment's snapshots: its scheduled ones and its deploys' pre-deploy ones."""
    return {
        ENVIRONMENT_TAG_PREFIX + context.environment,
        ENVIRONMENT_TAG_PREFIX + environment_name(snapshot_environment),
    }


def _real_runners(context: EnvironmentContext, warn: Warn) -> dict[str, JobRunner]:
    def backup(schedule: ScheduleConfig) -> JobOutcome:
        result = run_backup(
            context.directory,
            context.config_path,
            _snapshot_environment(context),
            message=f"scheduled by the agent ({schedule_key(schedule)})",
            warn=warn,
        )
        return JobOutcome(
            ok=True,
            detail=summary_line(result),
            snapshot_id=result.snapshot.id,
            details={"stored_bytes": result.stored_bytes, "added_bytes": result.added_bytes},
        )

    def verify(schedule: ScheduleConfig) -> JobOutcome:
        snapshot_environment = _snapshot_environment(context)
        project = load_project(context.directory, context.config_path, snapshot_environment)
        wanted = _environment_tags(context, snapshot_environment)
        with project.access.session(exclusive=False) as repository:
            candidates = [
                snapshot for snapshot in lockstep_snapshots(repository, project.name) if wanted & set(snapshot.tags)
            ]
            if not candidates:
                raise NotFound(
                    f"environment {context.environment} has no snapshot to verify yet",
                    "schedule a backup, or run `lockstep backup`",
                )
            newest = max(candidates, key=lambda snapshot: snapshot.time_ns)
            result = verify_snapshot(repository, newest, schedule.level, database_servers(project.config))
        if result.ok:
            return JobOutcome(True, f"snapshot {newest.short_id} verified ({schedule.level})", newest.id)
        shown = "; ".join(finding.message for finding in result.findings[:MAX_FINDINGS_SHOWN])
        more = len(result.findings) - MAX_FINDINGS_SHOWN
        return JobOutcome(
            False,
            f"snapshot {newest.short_id} failed verification ({schedule.level}): {shown}"
            + (f" (and {more} more)" if more > 0 else ""),
            newest.id,
        )

    def forget(schedule: ScheduleConfig) -> JobOutcome:
        snapshot_environment = _snapshot_environment(context)
        project = load_project(context.directory, context.config_path, snapshot_environment)
        # One pass over both names this environment's snapshots carry: one exclusive lock, one
        # listing, one prune. The plan groups by environment, so each name's snapshots are kept
        # or removed exactly as a forget of that name alone would decide.
        names = tuple(sorted({context.environment, environment_name(snapshot_environment)}))
        result = forget_snapshots(
            project.access, project.config.retention, project.name, environments=names, run_prune=True
        )
        removed = len(result.removed)
        freed = result.prune.bytes_freed if result.prune is not None else 0
        return JobOutcome(
            True,
            f"forgot {removed} snapshot(s), pruned {human_size(freed)}",
            details={"forgotten": removed, "bytes_freed": freed},
        )

    return {"backup": backup, "verify": verify, "forget": forget}
