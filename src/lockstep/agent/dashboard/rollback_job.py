"""A rollback started from the dashboard: the real `lockstep rollback` in a child process.

Running the CLI (rather than the pipeline inside the agent) keeps the rollback exactly what an
operator would run, with its lock, history record, hooks and notifications, and the agent's
API free to answer it. One at a time; its output goes to a log file under logs/ and the page
polls for the outcome.
"""

from __future__ import annotations

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

OUTPUT_SHOWN = 20_000


class RollbackBusy(LockstepError):
    exit_code = ExitCode.LOCKED


@dataclass
class RollbackJob:
    identifier: str
    with_data: bool
    target: str | None  # a release ID, or None for the previous release
    log_path: Path
    started_at: float
    process: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    finished_at: float | None = None
    watcher: threading.Thread | None = field(default=None, repr=False)

    @property
    def state(self) -> str:
        if self.exit_code is None:
            return "running"
        return "succeeded" if self.exit_code == 0 else "failed"

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
            "output": output,
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

    def start(self, with_data: bool, target: str | None = None) -> RollbackJob:
        with self._lock:
            if any(job.state == "running" for job in self._jobs.values()):
                raise RollbackBusy("a rollback started from the dashboard is still running", "wait for its outcome")
            identifier = time.strftime("%Y%m%d_%H%M%S", time.gmtime()) + f"_{len(self._jobs) + 1}"
            logs = self.context.layout.logs
            logs.mkdir(parents=True, exist_ok=True)
            log_path = logs / f"dashboard-rollback-{identifier}.log"
            job = RollbackJob(identifier, with_data, target, log_path, time.time())
            with open(job.log_path, "wb") as log:
                job.process = subprocess.Popen(
                    rollback_command(self.context, with_data, target),
                    cwd=self.context.directory,
                    env=dict(os.environ),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C to the agent must not interrupt a rollback half-way
                )
            job.watcher = threading.Thread(target=self._watch, args=(job,), name="dashboard-rollback", daemon=True)
            job.watcher.start()
            self._jobs[identifier] = job
            return job

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
