"""A rollback started from the dashboard: the real `lockstep rollback` in a child process.

Running the CLI (rather than the pipeline inside the agent) keeps the rollback exactly what an
operator would run, with its lock, history record, hooks and notifications, and the agent's
API free to answer it. One at a time; its output goes to a log file under logs/ and the page
polls for the outcome.

The job outlives the agent (its own session, so an agent restart does not stop a rollback
half-way), and so does its record: `dashboard-rollback-ID.json` beside the log says what was
asked and which process runs it, and a shell around the rollback writes its exit status to
`dashboard-rollback-ID.exit` whether or not an agent is there to see it end. A client polling
after an agent restart gets the real outcome instead of "no such rollback".

Finished jobs' files are kept for the 20 newest finished jobs, none older than 30 days (pruned when
the agent starts and whenever the dashboard starts a rollback): the history keeps every rollback's
record for good, the log is only for the page to show. A running job's files are never removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockstep.actions.environment import EnvironmentContext
from lockstep.errors import LockstepError
from lockstep.exit_codes import ExitCode
from lockstep.traffic.hold import process_start_ticks

OUTPUT_SHOWN = 20_000
LOG_PREFIX = "dashboard-rollback-"
KEEP_FINISHED_JOBS = 20
KEEP_FINISHED_SECONDS = 30 * 24 * 3600
# Every file a job leaves beside its log (the .tmp ones when a write was cut short).
JOB_FILE_SUFFIXES = (".json", ".log", ".exit", ".json.tmp", ".exit.tmp")

# Runs the rollback ("$@") and records its exit status atomically in $1: the agent that started
# it may be gone (restarted) when it ends.
RECORD_EXIT = (
    'exit_file=$1; shift; "$@"; code=$?; echo "$code" > "$exit_file.tmp" && mv "$exit_file.tmp" "$exit_file"; '
    'exit "$code"'
)


class RollbackBusy(LockstepError):
    exit_code = ExitCode.LOCKED


@dataclass
class RollbackJob:
    identifier: str
    with_data: bool
    target: str | None  # a release ID, or None for the previous release
    log_path: Path
    started_at: float
    process: subprocess.Popen[bytes] | None = None  # None for a job an earlier agent started
    pid: int | None = None
    start_ticks: int | None = None
    exit_code: int | None = None
    finished_at: float | None = None
    watcher: threading.Thread | None = field(default=None, repr=False)

    @property
    def record_path(self) -> Path:
        return self.log_path.with_suffix(".json")

    @property
    def exit_path(self) -> Path:
        return self.log_path.with_suffix(".exit")

    @property
    def state(self) -> str:
        if self.exit_code is None and self.process is None:
            self._read_exit_file()
        if self.exit_code is not None:
            return "succeeded" if self.exit_code == 0 else "failed"
        if self.process is not None or self._alive():
            return "running"
        return "unknown"  # its process was killed before it could record the outcome

    def _alive(self) -> bool:
        if self.pid is None or self.start_ticks is None:
            return False
        return process_start_ticks(self.pid) == self.start_ticks

    def _read_exit_file(self) -> None:
        try:
            code = int(self.exit_path.read_text().strip())
            finished = self.exit_path.stat().st_mtime
        except (OSError, ValueError):
            return
        self.exit_code, self.finished_at = code, finished

    def remove_files(self) -> None:
        """Delete the job's record first (so a half-removed job is never listed), then the rest."""
        for suffix in JOB_FILE_SUFFIXES:
            # One that cannot be removed is left for the next pruning: it must not stop the agent.
            with contextlib.suppress(OSError):
                self.log_path.with_suffix(suffix).unlink(missing_ok=True)

    def save_record(self) -> None:
        document = {
            "id": self.identifier,
            "with_data": self.with_data,
            "target": self.target,
            "started_at": self.started_at,
            "pid": self.pid,
            "start_ticks": self.start_ticks,
        }
        temporary = self.record_path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(document))
        temporary.replace(self.record_path)

    @classmethod
    def from_record(cls, record_path: Path) -> RollbackJob | None:
        """A job an earlier agent started, from its record; None for an unreadable record."""
        try:
            document = json.loads(record_path.read_text())
            return cls(
                identifier=str(document["id"]),
                with_data=bool(document["with_data"]),
                target=document["target"] if isinstance(document["target"], str) else None,
                log_path=record_path.with_suffix(".log"),
                started_at=float(document["started_at"]),
                pid=document["pid"] if isinstance(document["pid"], int) else None,
                start_ticks=document["start_ticks"] if isinstance(document["start_ticks"], int) else None,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def to_document(self) -> dict[str, Any]:
        try:
            output = self.log_path.read_text(encoding="utf-8", errors="replace")[-OUTPUT_SHOWN:]
        except OSError:
            output = ""
        return {
            "id": self.identifier,
            "state": self.state,
            "with_data": self.with_data,
            "target": self.target,
            "exit_code": self.exit_code,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "output": output
            + (
                "\n[the rollback's process ended without recording its outcome (killed?): see `lockstep history`]"
                if self.state == "unknown"
                else ""
            ),
        }


def rollback_command(context: EnvironmentContext, with_data: bool, target: str | None = None) -> list[str]:
    """The argv of the rollback: always the environment's own config and --yes (the page asked);
    `target` is a release ID already checked against the history (given as --to=ID, never an option)."""
    config_file = (
        context.config_path.resolve() if context.config_path is not None else context.directory / "lockstep.toml"
    )
    argv = [sys.executable, "-m", "lockstep", "rollback", "-c", str(config_file), "--env", context.environment]
    argv = [*argv, "--yes", "--log-format", "json", *(["--with-data"] if with_data else [])]
    return [*argv, f"--to={target}"] if target else argv


class RollbackRunner:
    """Starts one dashboard rollback at a time and keeps the jobs it ran."""

    def __init__(self, context: EnvironmentContext) -> None:
        self.context = context
        self._jobs: dict[str, RollbackJob] = {}
        self._lock = threading.Lock()
        for record_path in sorted(context.layout.logs.glob(f"{LOG_PREFIX}*.json")):
            job = RollbackJob.from_record(record_path)
            if job is not None:
                self._jobs[job.identifier] = job
        self._prune(time.time())

    def start(self, with_data: bool, target: str | None = None) -> RollbackJob:
        with self._lock:
            if any(job.state == "running" for job in self._jobs.values()):
                raise RollbackBusy("a rollback started from the dashboard is still running", "wait for its outcome")
            logs = self.context.layout.logs
            logs.mkdir(parents=True, exist_ok=True)
            number = len(self._jobs) + 1
            identifier = time.strftime("%Y%m%d_%H%M%S", time.gmtime()) + f"_{number}"
            while identifier in self._jobs or (logs / f"{LOG_PREFIX}{identifier}.log").exists():
                number += 1
                identifier = time.strftime("%Y%m%d_%H%M%S", time.gmtime()) + f"_{number}"
            log_path = logs / f"{LOG_PREFIX}{identifier}.log"
            job = RollbackJob(identifier, with_data, target, log_path, time.time())
            rollback = rollback_command(self.context, with_data, target)
            argv = ["sh", "-c", RECORD_EXIT, "sh", str(job.exit_path), *rollback]
            with open(job.log_path, "wb") as log:
                job.process = subprocess.Popen(
                    argv,
                    cwd=self.context.directory,
                    env=dict(os.environ),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C to the agent must not interrupt a rollback half-way
                )
            job.pid, job.start_ticks = job.process.pid, process_start_ticks(job.process.pid)
            job.save_record()
            job.watcher = threading.Thread(target=self._watch, args=(job,), name="dashboard-rollback", daemon=True)
            job.watcher.start()
            self._jobs[identifier] = job
            self._prune(time.time())
            return job

    def _prune(self, now: float) -> None:
        """Remove finished jobs beyond the newest KEEP_FINISHED_JOBS or older than
        KEEP_FINISHED_SECONDS, and files of no job (an unreadable record, a log whose record was
        never written) that old: a dashboard used for years must not fill logs/ with them."""
        cutoff = now - KEEP_FINISHED_SECONDS
        finished = sorted(
            (job for job in self._jobs.values() if job.state != "running"),
            key=lambda job: job.started_at,
            reverse=True,
        )
        for index, job in enumerate(finished):
            if index >= KEEP_FINISHED_JOBS or (job.finished_at or job.started_at) < cutoff:
                job.remove_files()
                del self._jobs[job.identifier]
        for path in self.context.layout.logs.glob(f"{LOG_PREFIX}*"):
            identifier = path.name[len(LOG_PREFIX) :].split(".", 1)[0]
            if identifier in self._jobs:
                continue
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    def _watch(self, job: RollbackJob) -> None:
        assert job.process is not None
        code = job.process.wait()
        job.finished_at = time.time()
        job.exit_code = code

    def job(self, identifier: str) -> RollbackJob | None:
        with self._lock:
            return self._jobs.get(identifier)

    def wait_all(self, timeout: float) -> None:
        """On agent shutdown: let a running rollback finish (it does not need the dashboard)."""
        deadline = time.monotonic() + timeout
        for job in list(self._jobs.values()):
            if job.watcher is not None:
                job.watcher.join(max(0.0, deadline - time.monotonic()))
