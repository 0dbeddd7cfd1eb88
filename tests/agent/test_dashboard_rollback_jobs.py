"""The files the agent keeps for dashboard rollbacks (record, log, exit status) are bounded: only
the newest finished jobs, none older than a month, and never a running job's."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import cast

from lockstep.actions.environment import EnvironmentContext
from lockstep.agent.dashboard.rollback_job import (
    KEEP_FINISHED_JOBS,
    KEEP_FINISHED_SECONDS,
    LOG_PREFIX,
    RollbackRunner,
)
from lockstep.traffic.hold import process_start_ticks

DAY = 24 * 3600


def context_for(logs: Path) -> EnvironmentContext:
    """The runner only reads `layout.logs` of its context when it loads and prunes jobs."""
    return cast(EnvironmentContext, SimpleNamespace(layout=SimpleNamespace(logs=logs)))


def leave_job(
    logs: Path, identifier: str, started_at: float, exit_code: int | None, *, alive: bool = False
) -> list[Path]:
    """The files an earlier agent left for one job: its record and log, and its exit status once
    it ended (dated when it ended). `alive` makes its process this test's, which is running."""
    pid = os.getpid()
    ticks = process_start_ticks(pid) if alive else -1  # -1: that process is gone
    record = logs / f"{LOG_PREFIX}{identifier}.json"
    record.write_text(
        json.dumps(
            {
                "id": identifier,
                "with_data": False,
                "target": None,
                "started_at": started_at,
                "pid": pid,
                "start_ticks": ticks,
            }
        )
    )
    log = record.with_suffix(".log")
    log.write_text(f"output of {identifier}\n")
    files = [record, log]
    if exit_code is not None:
        exit_file = record.with_suffix(".exit")
        exit_file.write_text(f"{exit_code}\n")
        os.utime(exit_file, (started_at + 60, started_at + 60))
        files.append(exit_file)
    return files


def test_only_the_newest_finished_jobs_are_kept(tmp_path: Path) -> None:
    """Every dashboard rollback left three files in logs/ for good; now the oldest finished ones
    go when the agent starts, and the newest stay readable through the API."""
    now = time.time()
    count = KEEP_FINISHED_JOBS + 5
    files = {
        f"job{index:02d}": leave_job(tmp_path, f"job{index:02d}", now - (count - index) * 3600, index % 2)
        for index in range(count)
    }
    runner = RollbackRunner(context_for(tmp_path))
    removed = [identifier for identifier in sorted(files) if runner.job(identifier) is None]
    assert removed == [f"job{index:02d}" for index in range(5)]
    for identifier, paths in files.items():
        assert all(path.exists() == (identifier not in removed) for path in paths), identifier
    newest = runner.job(f"job{count - 1:02d}")
    assert newest is not None and newest.to_document()["output"] == f"output of job{count - 1:02d}\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        path.name for identifier, paths in files.items() if identifier not in removed for path in paths
    )


def test_old_finished_jobs_go_but_a_running_one_stays(tmp_path: Path) -> None:
    now = time.time()
    old = now - KEEP_FINISHED_SECONDS - DAY
    kept_finished = leave_job(tmp_path, "recent", now - DAY, 1)
    running = leave_job(tmp_path, "running", old, None, alive=True)  # a very long rollback
    old_finished = leave_job(tmp_path, "old", old, 0)
    old_killed = leave_job(tmp_path, "killed", old, None)  # ended without an exit status
    orphan_old = tmp_path / f"{LOG_PREFIX}noreco.log"  # its record was never written
    orphan_old.write_text("")
    os.utime(orphan_old, (old, old))
    orphan_new = tmp_path / f"{LOG_PREFIX}fresh.log"  # perhaps being started right now
    orphan_new.write_text("")
    unrelated = tmp_path / "release-1.log"
    unrelated.write_text("")
    os.utime(unrelated, (old, old))

    runner = RollbackRunner(context_for(tmp_path))

    assert all(path.exists() for path in [*kept_finished, *running, orphan_new, unrelated])
    assert not any(path.exists() for path in [*old_finished, *old_killed, orphan_old])
    running_job = runner.job("running")
    assert running_job is not None and running_job.state == "running"
    assert runner.job("old") is None and runner.job("killed") is None
    recent = runner.job("recent")
    assert recent is not None and recent.state == "failed"

    # A month later (the agent never restarted), the next pruning takes the recent one too.
    runner._prune(now + KEEP_FINISHED_SECONDS)
    assert runner.job("recent") is None and not any(path.exists() for path in kept_finished)
    assert all(path.exists() for path in running)
