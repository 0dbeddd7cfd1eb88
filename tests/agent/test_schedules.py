"""The agent's Scheduler: when schedules are due, catching up after downtime, no overlap, records,
notifications, the real jobs against a real repository, and a real agent taking a scheduled backup.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from lockstep.actions.environment import EnvironmentContext, load_environment
from lockstep.agent.schedules import JobOutcome, JobRunner, Scheduler, schedule_key
from lockstep.config.agent_model import ScheduleConfig
from lockstep.errors import LockstepError
from lockstep.pipeline.history import History, OperationRecord
from tests.conftest import TEST_PASSWORD, missing, run_lockstep
from tests.deploy.conftest import NotesProject, _stop_everything, make_project

WAIT_SECONDS = 60.0

BASE_CONFIG = """
default_environment = "test"

[repository]
url = "local:repository"

[databases.main]
url = "sqlite:///app.db"

[app]
state_directory = "state"

[[notifications.channels]]
kind = "event-log"
path = "events.jsonl"
"""


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, start: str) -> None:
        self.moment = datetime.fromisoformat(start)

    def __call__(self) -> datetime:
        return self.moment

    def set(self, text: str) -> None:
        self.moment = datetime.fromisoformat(text)


class FakeJobs:
    """Job runners that count calls and concurrency, and can be held until released."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.active: dict[str, int] = {}
        self.most_at_once: dict[str, int] = {}
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.outcomes: dict[str, Callable[[ScheduleConfig], JobOutcome]] = {}

    def runner(self, job: str) -> JobRunner:
        def run(schedule: ScheduleConfig) -> JobOutcome:
            with self.lock:
                self.calls.append(schedule_key(schedule))
                self.active[job] = self.active.get(job, 0) + 1
                self.most_at_once[job] = max(self.most_at_once.get(job, 0), self.active[job])
            try:
                assert self.gate.wait(WAIT_SECONDS), "the test never released the job"
                if job in self.outcomes:
                    return self.outcomes[job](schedule)
                return JobOutcome(True, f"{job} ok", snapshot_id="ab" * 32 if job == "backup" else None)
            finally:
                with self.lock:
                    self.active[job] -= 1

        return run

    def runners(self) -> dict[str, JobRunner]:
        return {job: self.runner(job) for job in ("backup", "verify", "forget")}


def write_project(directory: Path, schedules: str) -> EnvironmentContext:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "lockstep.toml").write_text(BASE_CONFIG + schedules)
    return load_environment(directory, None, None)


def schedule_block(job: str, cron: str, level: str | None = None) -> str:
    return f'\n[[schedules]]\njob = "{job}"\ncron = "{cron}"\n' + (f'level = "{level}"\n' if level else "")


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def wait_idle(scheduler: Scheduler) -> None:
    wait_until(lambda: not scheduler.running_jobs(), "the scheduled jobs to finish")


def scheduled_records(context: EnvironmentContext) -> list[OperationRecord]:
    return [record for record in History(context.layout.history_database).all() if record.ref]


def events(directory: Path) -> list[dict[str, Any]]:
    path = directory / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def previous_run(context: EnvironmentContext, schedule: ScheduleConfig, started: str, outcome: str) -> None:
    """A run recorded by an earlier agent."""
    moment = datetime.fromisoformat(started).timestamp()
    History(context.layout.history_database).save(
        OperationRecord(
            id=f"earlier-{started}",
            operation=f"scheduled-{schedule.job}",
            environment=context.environment,
            started_at=moment,
            performer="lockstep agent (schedule)",
            host="elsewhere",
            pid=0,
            outcome=outcome,
            finished_at=moment + 5,
            ref=schedule_key(schedule),
        )
    )


@pytest.fixture
def jobs() -> FakeJobs:
    return FakeJobs()


@pytest.fixture
def scheduler_factory(jobs: FakeJobs) -> Iterator[Callable[[EnvironmentContext, Clock], Scheduler]]:
    made: list[Scheduler] = []

    def make(context: EnvironmentContext, clock: Clock) -> Scheduler:
        scheduler = Scheduler(context, now=clock, runners=jobs.runners(), warn=lambda _: None)
        made.append(scheduler)
        return scheduler

    try:
        yield make
    finally:
        jobs.gate.set()
        for scheduler in made:
            scheduler.close()


def test_a_schedule_that_never_ran_runs_at_the_first_tick_and_is_recorded(
    tmp_path: Path, jobs: FakeJobs, scheduler_factory: Callable[[EnvironmentContext, Clock], Scheduler]
) -> None:
    """No recorded run → run at once (a new schedule proves itself); the run lands in the history."""
    context = write_project(tmp_path, schedule_block("backup", "0 2 * * *"))
    clock = Clock("2026-03-10 12:00:30")
    scheduler = scheduler_factory(context, clock)
    scheduler.tick()
    wait_idle(scheduler)
    assert jobs.calls == ["backup 0 2 * * *"]
    [record] = scheduled_records(context)
    assert record.operation == "scheduled-backup" and record.outcome == "succeeded"
    assert record.environment == "test" and record.ref == "backup 0 2 * * *"
    assert record.started_at == clock.moment.timestamp()
    assert record.finished_at is not None and record.finished_at >= record.started_at
    assert record.snapshot_id == "ab" * 32 and record.message == "backup ok"
    assert record.steps and record.steps[0]["step"] == "backup" and record.steps[0]["outcome"] == "ok"
    scheduler.tick()  # the 02:00 occurrence is handled now
    clock.set("2026-03-11 01:59:59")
    scheduler.tick()
    assert jobs.calls == ["backup 0 2 * * *"]


def test_a_schedule_runs_at_each_occurrence(
    tmp_path: Path, jobs: FakeJobs, scheduler_factory: Callable[[EnvironmentContext, Clock], Scheduler]
) -> None:
    """After the first run, the next run comes when the clock passes the next occurrence, once."""
    context = write_project(tmp_path, schedule_block("forget", "*/15 * * * *"))
    clock = Clock("2026-03-10 10:00:10")
    scheduler = scheduler_factory(context, clock)
    for moment in ("10:00:10", "10:05:00", "10:14:59", "10:15:00", "10:15:30", "10:29:00", "10:31:00"):
        clock.set(f"2026-03-10 {moment}")
        scheduler.tick()
        wait_idle(scheduler)
    assert len(jobs.calls) == 3  # 10:00 (first), 10:15 and 10:30
    started = [datetime.fromtimestamp(record.started_at) for record in scheduled_records(context)]
    assert [moment.strftime("%H:%M:%S") for moment in started] == ["10:00:10", "10:15:00", "10:31:00"]


def test_catch_up_after_downtime_runs_once_not_once_per_missed_occurrence(
    tmp_path: Path, jobs: FakeJobs, scheduler_factory: Callable[[EnvironmentContext, Clock], Scheduler]
) -> None:
    """Down for three days over a daily 02:00 backup: the agent runs it once at start, then waits."""
    context = write_project(tmp_path, schedule_block("backup", "0 2 * * *"))
    previous_run(context, context.config.schedules[0], "2026-03-07 02:00:03", "succeeded")
    clock = Clock("2026-03-10 12:00:00")
    scheduler = scheduler_factory(context, clock)
    for _ in range(5):
        scheduler.tick()
        wait_idle(scheduler)
    assert jobs.calls == ["backup 0 2 * * *"]
    clock.set("2026-03-11 01:59:00")
    scheduler.tick()
    assert jobs.calls == ["backup 0 2 * * *"]
    clock.set("2026-03-11 02:00:01")
    scheduler.tick()
    wait_idle(scheduler)
    assert len(jobs.calls) == 2


def test_no_catch_up_when_nothing_was_missed(
    tmp_path: Path, jobs: FakeJobs, scheduler_factory: Callable[[EnvironmentContext, Clock], Scheduler]
) -> None:
    """A restart after today's run has happened (even a failed one) runs nothing until the next occurrence."""
    context = write_project(tmp_path, schedule_block("backup", "0 2 * * *") + schedule_block("verify", "0 4 * * 0"))
    previous_run(context, context.config.schedules[0], "2026-03-10 02:00:03", "failed")
    previous_run(context, context.config.schedules[1], "2026-03-08 04:00:00", "succeeded")  # a Sunday
    scheduler = scheduler_factory(context, Clock("2026-03-10 12:00:00"))
    scheduler.tick()
    wait_idle(scheduler)
    assert jobs.calls == []


def test_a_changed_schedule_counts_as_new(
    tmp_path: Path, jobs: FakeJobs, scheduler_factory: Callable[[EnvironmentContext, Clock], Scheduler]
) -> None:
    """Runs are matched to the schedule that made them: another verify level has not run yet."""
    context = write_project(tmp_path, schedule_block("verify", "0 4 * * 0", level="data"))
    earlier = ScheduleConfig(job="verify", cron="0 4 * * 0", level="restore")
    previous_run(context, earlier, "2026-03-08 04:00:00", "succeeded")
    scheduler = scheduler_factory(context, Clock("2026-03-10 12:00:00"))
    scheduler.tick()
    wait_idle(scheduler)
    assert jobs.calls == ["verify 0 4 * * 0 (data)"]


def test_a_tick_while_the_same_schedule_still_runs_is_skipped_and_recorded(
    tmp_path: Path, jobs: FakeJobs, scheduler_factory: Callable[[EnvironmentContext, Clock], Scheduler]
) -> None:
    """A slow backup every minute: the next occurrence is skipped (recorded once), never run alongside."""
    context = write_project(tmp_path, schedule_block("backup", "* * * * *"))
    clock = Clock("2026-03-10 10:00:10")
    scheduler = scheduler_factory(context, clock)
    jobs.gate.clear()
    scheduler.tick()
    wait_until(lambda: jobs.calls == ["backup * * * * *"], "the slow backup to start")
    for moment in ("10:01:05", "10:01:30", "10:01:59"):
        clock.set(f"2026-03-10 {moment}")
        scheduler.tick()
    assert scheduler.running_jobs() == ["backup"]
    records = scheduled_records(context)
    assert [record.outcome for record in records] == ["running", "skipped"]
    skipped = records[1]
    assert skipped.operation == "scheduled-backup" and skipped.ref == "backup * * * * *"
    assert skipped.reason is not None and records[0].id in skipped.reason and "still running" in skipped.reason
    jobs.gate.set()
    wait_idle(scheduler)
    clock.set("2026-03-10 10:02:00")
    scheduler.tick()
    wait_idle(scheduler)
    assert jobs.calls == ["backup * * * * *"] * 2
    assert jobs.most_at_once["backup"] == 1
    assert [record.outcome for record in scheduled_records(context)] == ["succeeded", "skipped", "succeeded"]


def test_other_schedules_of_the_same_job_and_forget_wait_for_the_running_one(
    tmp_path: Path, jobs: FakeJobs, scheduler_factory: Callable[[EnvironmentContext, Clock], Scheduler]
) -> None:
    """Two backup schedules never run at once; forget (exclusive lock) waits for the backup; verify does not."""
    context = write_project(
        tmp_path,
        schedule_block("backup", "0 * * * *")
        + schedule_block("backup", "0 2 * * *")
        + schedule_block("forget", "0 3 * * *")
        + schedule_block("verify", "0 4 * * *", level="structure"),
    )
    clock = Clock("2026-03-10 12:00:00")
    scheduler = scheduler_factory(context, clock)
    jobs.gate.clear()
    scheduler.tick()
    wait_until(lambda: len(jobs.calls) == 2, "the first backup and the verify to start")
    assert sorted(jobs.calls) == ["backup 0 * * * *", "verify 0 4 * * * (structure)"]
    scheduler.tick()
    assert len(jobs.calls) == 2 and not any(record.outcome == "skipped" for record in scheduled_records(context))
    jobs.gate.set()
    wait_idle(scheduler)
    scheduler.tick()  # the second backup schedule and forget: one of them now, the other after it
    wait_idle(scheduler)
    scheduler.tick()
    wait_idle(scheduler)
    assert sorted(jobs.calls[2:]) == ["backup 0 2 * * *", "forget 0 3 * * *"]
    assert jobs.most_at_once["backup"] == 1 and jobs.most_at_once["forget"] == 1


def test_a_failing_job_is_recorded_notified_and_the_scheduler_carries_on(
    tmp_path: Path,
    jobs: FakeJobs,
    scheduler_factory: Callable[[EnvironmentContext, Clock], Scheduler],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backup that raises: a failed record with the message (secrets blanked), backup.failed sent."""
    monkeypatch.setenv("LOCKSTEP_PASSWORD", "hunter2-the-repository-password")

    def fail(schedule: ScheduleConfig) -> JobOutcome:
        raise LockstepError("cannot open with hunter2-the-repository-password", "check the password")

    jobs.outcomes["backup"] = fail
    context = write_project(tmp_path, schedule_block("backup", "0 2 * * *") + schedule_block("forget", "0 3 * * *"))
    clock = Clock("2026-03-10 12:00:00")
    scheduler = scheduler_factory(context, clock)
    scheduler.tick()  # the backup; forget waits for it (it wants the repository to itself)
    wait_idle(scheduler)
    scheduler.tick()
    wait_idle(scheduler)
    clock.set("2026-03-11 02:00:00")
    scheduler.tick()  # a failure does not stop later runs
    wait_idle(scheduler)
    scheduler.close()
    records = {record.ref: record for record in scheduled_records(context)}
    backup = records["backup 0 2 * * *"]
    assert backup.outcome == "failed" and backup.failed_step == "backup"
    assert backup.reason is not None and backup.reason.startswith("cannot open with ")
    assert "check the password" in backup.reason and "hunter2" not in backup.reason
    assert records["forget 0 3 * * *"].outcome == "succeeded"
    assert len(jobs.calls) == 3
    sent = events(tmp_path)
    failures = [event for event in sent if event["kind"] == "backup.failed"]
    assert len(failures) == 2
    assert failures[0]["environment"] == "test" and failures[0]["details"]["job"] == "backup"
    assert "hunter2" not in json.dumps(sent)


def test_verification_outcomes_are_notified(
    tmp_path: Path, jobs: FakeJobs, scheduler_factory: Callable[[EnvironmentContext, Clock], Scheduler]
) -> None:
    """A failed verification is a failed run with snapshot.verification_failed; a good one is verified."""
    results = iter([JobOutcome(False, "snapshot 1234abcd failed verification (data): pack damaged", "12" * 32)])
    jobs.outcomes["verify"] = lambda schedule: next(results, JobOutcome(True, "snapshot verified", "34" * 32))
    context = write_project(tmp_path, schedule_block("verify", "0 4 * * *", level="data"))
    clock = Clock("2026-03-10 12:00:00")
    scheduler = scheduler_factory(context, clock)
    scheduler.tick()
    wait_idle(scheduler)
    clock.set("2026-03-11 04:00:00")
    scheduler.tick()
    wait_idle(scheduler)
    scheduler.close()
    first, second = scheduled_records(context)
    assert first.outcome == "failed" and first.snapshot_id == "12" * 32 and "pack damaged" in (first.reason or "")
    assert second.outcome == "succeeded" and second.snapshot_id == "34" * 32
    assert [event["kind"] for event in events(tmp_path)] == ["snapshot.verification_failed", "snapshot.verified"]


def test_an_unexpected_exception_in_a_job_is_recorded_not_raised(
    tmp_path: Path, jobs: FakeJobs, scheduler_factory: Callable[[EnvironmentContext, Clock], Scheduler]
) -> None:
    """A bug in a job becomes a failed run naming the exception; the agent's loop never sees it."""

    def crash(schedule: ScheduleConfig) -> JobOutcome:
        raise RuntimeError("boom")

    jobs.outcomes["forget"] = crash
    context = write_project(tmp_path, schedule_block("forget", "0 3 * * *"))
    scheduler = scheduler_factory(context, Clock("2026-03-10 12:00:00"))
    scheduler.tick()
    wait_idle(scheduler)
    [record] = scheduled_records(context)
    assert record.outcome == "failed" and record.reason == "internal error: RuntimeError: boom"


def test_a_run_cut_short_by_a_killed_agent_is_marked_and_retried(
    tmp_path: Path, jobs: FakeJobs, scheduler_factory: Callable[[EnvironmentContext, Clock], Scheduler]
) -> None:
    """A "running" record whose process is gone becomes "interrupted", and the run is caught up."""
    context = write_project(tmp_path, schedule_block("backup", "0 2 * * *"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    started = datetime.fromisoformat("2026-03-10 02:00:01").timestamp()
    History(context.layout.history_database).save(
        OperationRecord(
            id="killed",
            operation="scheduled-backup",
            environment="test",
            started_at=started,
            performer="lockstep agent (schedule)",
            host=socket.gethostname(),
            pid=dead.pid,
            ref="backup 0 2 * * *",
        )
    )
    scheduler = scheduler_factory(context, Clock("2026-03-10 02:10:00"))
    killed = History(context.layout.history_database).get("killed")
    assert killed is not None and killed.outcome == "interrupted"
    assert killed.reason == "the agent stopped before the job finished"
    scheduler.tick()
    wait_idle(scheduler)
    assert jobs.calls == ["backup 0 2 * * *"]


def test_close_records_a_job_that_outlives_it_as_interrupted(
    tmp_path: Path, jobs: FakeJobs, scheduler_factory: Callable[[EnvironmentContext, Clock], Scheduler]
) -> None:
    """Stopping the agent waits a bounded time for a running job, then records it interrupted."""
    context = write_project(tmp_path, schedule_block("verify", "0 4 * * *"))
    scheduler = scheduler_factory(context, Clock("2026-03-10 12:00:00"))
    jobs.gate.clear()
    scheduler.tick()
    wait_until(lambda: bool(jobs.calls), "the verify to start")
    began = time.monotonic()
    scheduler.close(timeout=0.5)
    assert time.monotonic() - began < 10
    [record] = scheduled_records(context)
    assert record.outcome == "interrupted"
    scheduler.tick()  # closed: nothing new starts
    assert len(jobs.calls) == 1


@pytest.fixture
def berlin_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone set to Europe/Berlin (DST in March and October)."""
    if not Path("/usr/share/zoneinfo/Europe/Berlin").exists():
        missing("tzdata is not installed (apt-get install tzdata)")
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.usefixtures("berlin_time")
def test_daylight_saving_time_neither_doubles_nor_loses_a_run(
    tmp_path: Path, jobs: FakeJobs, scheduler_factory: Callable[[EnvironmentContext, Clock], Scheduler]
) -> None:
    """02:30 daily: on the night spring skips 02:00-03:00 it runs once right after the jump; on the
    night autumn repeats 02:00-03:00 it runs at the first 02:30 only."""
    context = write_project(tmp_path, schedule_block("backup", "30 2 * * *"))
    previous_run(context, context.config.schedules[0], "2026-03-28 02:30:00", "succeeded")
    clock = Clock("2026-03-29 01:59:00")
    scheduler = scheduler_factory(context, clock)
    for moment in ("2026-03-29 01:59:00", "2026-03-29 03:00:00", "2026-03-29 03:31:00", "2026-03-29 23:00:00"):
        clock.set(moment)
        scheduler.tick()
        wait_idle(scheduler)
    assert len(jobs.calls) == 1
    assert datetime.fromtimestamp(scheduled_records(context)[-1].started_at).hour == 3
    autumn = (
        ("2026-10-24 02:30:00", 0),
        ("2026-10-25 02:29:00", 0),
        ("2026-10-25 02:30:00", 0),
        ("2026-10-25 02:30:00", 1),
    )
    for moment, fold in autumn:
        clock.moment = datetime.fromisoformat(moment).replace(fold=fold)
        scheduler.tick()
        wait_idle(scheduler)
    clock.set("2026-10-25 03:30:00")
    scheduler.tick()
    assert len(jobs.calls) == 3  # the day before, and the first 02:30
    last = scheduled_records(context)[-1]
    assert last.started_at == datetime(2026, 10, 25, 2, 30, fold=0).timestamp()


def test_invalid_cron_in_the_config_is_a_usage_error_naming_schedules(tmp_path: Path) -> None:
    """A typo in [[schedules]] cron fails every command loading the config with exit 2 and the key."""
    (tmp_path / "lockstep.toml").write_text(BASE_CONFIG + schedule_block("backup", "0 25 * * *"))
    completed = run_lockstep(["history"], cwd=tmp_path, env={"LOCKSTEP_PASSWORD": TEST_PASSWORD})
    assert completed.returncode == 2, completed.err
    assert "schedules.0.cron" in completed.err
    assert "cron field hour ('25'): 25 is outside 0-23" in completed.err


# -- the real jobs, in-process, against a real repository --------------------------------------


@pytest.fixture
def real_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EnvironmentContext:
    """A project with a SQLite database and an initialised local repository (no git: no code)."""
    monkeypatch.setenv("LOCKSTEP_PASSWORD", TEST_PASSWORD)
    monkeypatch.setenv("LOCKSTEP_SCRYPT_N", "1024")
    schedules = (
        schedule_block("backup", "0 2 * * *")
        + schedule_block("verify", "0 4 * * *", level="restore")
        + schedule_block("forget", "0 5 * * *")
    )
    context = write_project(tmp_path, schedules + '\n[backup]\nverify_level = "none"\n')
    with contextlib.closing(sqlite3.connect(tmp_path / "app.db")) as connection, connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
        connection.execute("INSERT INTO notes VALUES ('scheduled')")
    completed = run_lockstep(["repo", "init"], cwd=tmp_path, env={"LOCKSTEP_PASSWORD": TEST_PASSWORD})
    assert completed.returncode == 0, completed.err
    return context


def test_the_real_jobs_back_up_verify_and_forget(real_project: EnvironmentContext) -> None:
    """Backup makes a "scheduled" snapshot, verify test-restores the newest, forget applies retention."""
    context = real_project
    clock = Clock("2026-03-10 12:00:00")
    for job in ("backup", "verify", "forget"):  # one at a time: verify needs the backup's snapshot
        scheduler = Scheduler(context, now=clock, warn=lambda _: None)
        scheduler.schedules = [item for item in scheduler.schedules if item.config.job == job]
        try:
            scheduler.tick()
            wait_idle(scheduler)
        finally:
            scheduler.close()
    records = {record.operation: record for record in scheduled_records(context)}
    backup, verify, forget = records["scheduled-backup"], records["scheduled-verify"], records["scheduled-forget"]
    assert backup.outcome == "succeeded", backup.reason
    assert backup.message is not None and backup.message.startswith("backup ok: snapshot ")
    assert verify.outcome == "succeeded", verify.reason
    assert verify.snapshot_id == backup.snapshot_id
    assert verify.message == f"snapshot {backup.snapshot_id[:8]} verified (restore)"  # type: ignore[index]
    assert forget.outcome == "succeeded", forget.reason
    assert forget.message is not None and forget.message.startswith("forgot 0 snapshot(s)")
    listed = run_lockstep(["snapshot", "list", "--json"], cwd=context.directory)
    assert listed.returncode == 0, listed.err
    [snapshot] = json.loads(listed.out)
    assert snapshot["kind"] == "scheduled" and snapshot["id"] == backup.snapshot_id
    assert [event["kind"] for event in events(context.directory)] == ["snapshot.created", "snapshot.verified"]


def test_a_scheduled_backup_of_an_environment_with_a_table_uses_and_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's backup of "test" (default_environment, with an [environments.test] table that
    points main at another database) saves that database under env:test, and its record's line
    names the environment, as `lockstep backup` without --env now does."""
    monkeypatch.setenv("LOCKSTEP_PASSWORD", TEST_PASSWORD)
    monkeypatch.setenv("LOCKSTEP_SCRYPT_N", "1024")
    tables = '\n[backup]\nverify_level = "none"\n\n[environments.test.databases.main]\nurl = "sqlite:///test.db"\n'
    context = write_project(tmp_path, schedule_block("backup", "0 2 * * *") + tables)
    for name, rows in (("app.db", 1), ("test.db", 3)):
        with contextlib.closing(sqlite3.connect(tmp_path / name)) as connection, connection:
            connection.execute("CREATE TABLE notes (text TEXT)")
            connection.executemany("INSERT INTO notes VALUES ('row')", [()] * rows)
    assert run_lockstep(["repo", "init"], cwd=tmp_path).returncode == 0
    scheduler = Scheduler(context, now=Clock("2026-03-10 12:00:00"), warn=lambda _: None)
    try:
        scheduler.tick()
        wait_idle(scheduler)
    finally:
        scheduler.close()
    [record] = scheduled_records(context)
    assert record.outcome == "succeeded", record.reason
    assert record.message is not None and record.message.startswith("backup ok: snapshot "), record.message
    assert " of environment test, " in record.message, record.message
    listed = run_lockstep(["snapshot", "list", "--json"], cwd=tmp_path)
    [snapshot] = json.loads(listed.out)
    assert snapshot["environment"] == "test" and snapshot["databases"]["main"]["tables"][0]["rows"] == 3


def test_without_the_password_the_backup_fails_with_a_clear_record(
    real_project: EnvironmentContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent cannot open the repository: the run is failed, saying what is missing; backup.failed goes out."""
    monkeypatch.delenv("LOCKSTEP_PASSWORD")
    context = real_project
    scheduler = Scheduler(context, now=Clock("2026-03-10 12:00:00"), warn=lambda _: None)
    scheduler.schedules = scheduler.schedules[:1]
    try:
        scheduler.tick()
        wait_idle(scheduler)
    finally:
        scheduler.close()
    [record] = scheduled_records(context)
    assert record.outcome == "failed" and record.failed_step == "backup"
    assert record.reason is not None and "LOCKSTEP_PASSWORD" in record.reason, record.reason
    assert [event["kind"] for event in events(context.directory)] == ["backup.failed"]


def test_a_scheduled_backup_goes_to_the_repository_copies_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's backup job is `lockstep backup`'s path: [repository.copies] get the snapshot,
    and a copy that does not open fails the run with the copy named."""
    monkeypatch.setenv("LOCKSTEP_PASSWORD", TEST_PASSWORD)
    monkeypatch.setenv("LOCKSTEP_SCRYPT_N", "1024")
    monkeypatch.setenv("USB_COPY_PASSWORD", "usb-copy-password-for-the-agent")
    copy_table = '\n[repository.copies.usb]\nurl = "usb"\npassword_env = "USB_COPY_PASSWORD"\n'
    context = write_project(tmp_path, schedule_block("backup", "0 2 * * *") + copy_table)
    with contextlib.closing(sqlite3.connect(tmp_path / "app.db")) as connection, connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    for location, password in (("repository", TEST_PASSWORD), ("usb", "usb-copy-password-for-the-agent")):
        completed = run_lockstep(["repo", "init", "-r", location], cwd=tmp_path, env={"LOCKSTEP_PASSWORD": password})
        assert completed.returncode == 0, completed.err

    def run_once(clock: Clock) -> None:
        scheduler = Scheduler(context, now=clock, warn=lambda _: None)
        try:
            scheduler.tick()
            wait_idle(scheduler)
        finally:
            scheduler.close()

    run_once(Clock("2026-03-10 12:00:00"))
    [record] = scheduled_records(context)
    assert record.outcome == "succeeded", record.reason
    assert record.message is not None and ", copied to usb, " in record.message
    listed = run_lockstep(
        ["repo", "snapshots", "--json", "-r", "usb"],
        cwd=tmp_path,
        env={"LOCKSTEP_PASSWORD": "usb-copy-password-for-the-agent"},
    )
    assert listed.returncode == 0, listed.err
    assert [item["original"] for item in json.loads(listed.out)] == [record.snapshot_id]

    monkeypatch.setenv("USB_COPY_PASSWORD", "not-the-usb-copy-password")
    run_once(Clock("2026-03-11 12:00:00"))
    failed = scheduled_records(context)[-1]
    assert failed.outcome == "failed" and failed.reason is not None
    assert "copy usb: its password does not open the repository" in failed.reason, failed.reason
    assert "not-the-usb-copy-password" not in failed.reason


def test_verify_with_no_snapshot_yet_fails_clearly(real_project: EnvironmentContext) -> None:
    """A verify before any backup is a failed run that says to take a backup first."""
    context = real_project
    scheduler = Scheduler(context, now=Clock("2026-03-10 12:00:00"), warn=lambda _: None)
    scheduler.schedules = [item for item in scheduler.schedules if item.config.job == "verify"]
    try:
        scheduler.tick()
        wait_idle(scheduler)
    finally:
        scheduler.close()
    [record] = scheduled_records(context)
    assert record.outcome == "failed"
    assert (
        record.reason == "environment test has no snapshot to verify yet: schedule a backup, or run `lockstep backup`"
    )


# -- a real agent ------------------------------------------------------------------------------


@pytest.fixture
def scheduled_project(tmp_path: Path) -> Iterator[NotesProject]:
    project = make_project(tmp_path, extra_config='[[schedules]]\njob = "backup"\ncron = "0 3 * * *"\n')
    try:
        yield project
    finally:
        _stop_everything(project)


def test_a_real_agent_takes_the_scheduled_backup_at_start_and_records_it(scheduled_project: NotesProject) -> None:
    """The agent starts with a backup schedule that never ran: a "scheduled" snapshot appears and
    `lockstep history` lists the run, without waiting for 03:00."""
    project = scheduled_project
    project.database.parent.mkdir(parents=True)  # as a first deploy would leave it (a backup needs the database)
    with contextlib.closing(sqlite3.connect(project.database)) as connection, connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    project.start_agent()
    deadline = time.monotonic() + WAIT_SECONDS
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        runs = [record for record in project.history() if record["operation"] == "scheduled-backup"]
        if runs and runs[-1]["outcome"] != "running":
            break
        time.sleep(0.5)
    assert runs and runs[-1]["outcome"] == "succeeded", (runs, project.agent_log and project.agent_log.read_text())
    [run] = runs
    assert run["ref"] == "backup 0 3 * * *" and run["environment"] == "test"
    listed = project.lockstep("snapshot", "list", "--json")
    assert listed.returncode == 0, listed.err
    scheduled = [snapshot for snapshot in json.loads(listed.out) if snapshot["kind"] == "scheduled"]
    assert [snapshot["id"] for snapshot in scheduled] == [run["snapshot_id"]]
    table = project.lockstep("history")
    assert table.returncode == 0 and "scheduled-backup" in table.out and "succeeded" in table.out
    # A restart does not take another one: the 03:00 occurrence is covered by the run at start.
    assert project.lockstep("agent", "stop").returncode == 0
    assert project.agent is not None
    project.agent.wait(timeout=30)
    project.start_agent()
    time.sleep(2)  # a few ticks of the new agent
    assert len([record for record in project.history() if record["operation"] == "scheduled-backup"]) == 1


def test_scheduled_retention_is_one_pass_with_the_per_environment_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduled forget of environment "test" (no [environments.test] table) covers two names:
    its deploys' snapshots (env:test) and `snapshot create`'s (env:default). It ran one forget per
    name, each taking the exclusive lock, listing the snapshots and pruning. Now one pass: the same
    snapshots are kept as by the forget of each name alone, under one lock and one listing."""
    import shutil

    from lockstep.actions.snapshot_create import load_project
    from lockstep.actions.snapshot_forget import forget_snapshots
    from lockstep.repository.repository import Repository
    from lockstep.repository.snapshot import Snapshot
    from lockstep.storage.base import FileType
    from lockstep.storage.local import LocalBackend
    from tests.conftest import TEST_PASSWORD

    monkeypatch.setenv("LOCKSTEP_PASSWORD", TEST_PASSWORD)
    monkeypatch.setenv("LOCKSTEP_SCRYPT_N", "1024")
    retention = "\n[retention]\nkeep_daily = 2\nkeep_weekly = 0\nkeep_monthly = 0\nkeep_pre_deploy = 1\n"
    context = write_project(tmp_path / "project", schedule_block("forget", "0 5 * * *") + retention)
    database = tmp_path / "project" / "app.db"
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    assert run_lockstep(["repo", "init"], cwd=context.directory).returncode == 0

    def create(note: str) -> str:
        with contextlib.closing(sqlite3.connect(database)) as connection, connection:
            connection.execute("INSERT INTO notes VALUES (?)", (note * 5000,))
        created = run_lockstep(["snapshot", "create", "--json"], cwd=context.directory)
        assert created.returncode == 0, created.err
        return str(json.loads(created.out)["id"])

    templates = {"test": create("a"), "default": create("b")}
    location = context.directory / "repository"
    repository = Repository.open(LocalBackend(location), TEST_PASSWORD)
    try:
        for environment, template in templates.items():
            for day, kind in enumerate(["scheduled", "pre-deploy", "pre-deploy", "scheduled", "manual"], start=1):
                copy = Snapshot.from_document(repository.load_snapshot(template).to_document())
                copy.time = f"2025-03-0{day}T10:00:00Z"
                copy.tags = ["lockstep", f"kind:{kind}", f"env:{environment}"]
                repository.save_snapshot(copy)
            repository.backend.remove(FileType.SNAPSHOT, template)
    finally:
        repository.close()

    # What the forget of each name alone leaves, on a copy of the same repository.
    copied = tmp_path / "copy"
    shutil.copytree(context.directory, copied)
    project = load_project(copied, None, None)
    for name in ("default", "test"):
        forget_snapshots(
            project.access, project.config.retention, context.project.name, environments=(name,), run_prune=True
        )
    expected = Repository.open(LocalBackend(copied / "repository"), TEST_PASSWORD)
    try:
        left_per_environment = {snapshot.id for snapshot in expected.list_snapshots()}
    finally:
        expected.close()

    calls: Counter[tuple[str, FileType]] = Counter()
    original_save, original_list = LocalBackend.save, LocalBackend.list

    def counted_save(self: LocalBackend, file_type: FileType, name: str, data: bytes) -> None:
        if Path(self.root).resolve() == location.resolve():
            calls["save", file_type] += 1
        original_save(self, file_type, name, data)

    def counted_list(self: LocalBackend, file_type: FileType) -> Iterator[tuple[str, int]]:
        if Path(self.root).resolve() == location.resolve():
            calls["list", file_type] += 1
        return original_list(self, file_type)

    monkeypatch.setattr(LocalBackend, "save", counted_save)
    monkeypatch.setattr(LocalBackend, "list", counted_list)
    scheduler = Scheduler(context, now=Clock("2026-03-10 12:00:00"), warn=lambda _: None)
    try:
        scheduler.tick()
        wait_idle(scheduler)
    finally:
        scheduler.close()
    monkeypatch.undo()
    [record] = scheduled_records(context)
    assert record.outcome == "succeeded", record.reason
    assert record.message is not None and record.message.startswith("forgot 4 snapshot(s), pruned ")
    actual = Repository.open(LocalBackend(location), TEST_PASSWORD)
    try:
        left = {snapshot.id for snapshot in actual.list_snapshots()}
    finally:
        actual.close()
    assert len(left) == 6 and left == left_per_environment
    assert calls["save", FileType.LOCK] == 1, calls
    assert calls["list", FileType.SNAPSHOT] == 2, calls  # the plan's, and prune's
