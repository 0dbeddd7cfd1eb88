"""Workers a failed deploy's unwind stopped for its data restore, and could not start again (one
exits as it starts): the deploy said so and ended, its record kept `paused_workers`, and nothing
ever tried again; the release ran without them until the next deploy. The agent's watch and
`lockstep status` now try again, backing off after a failed try, and `status` says why they are
stopped and that the agent retries (pipeline/paused_workers_retry.py). A real agent, real
workers writing to SQLite, a real worker that refuses to start while a file exists."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lockstep.fault_injection import WAIT_AT_VARIABLE, WAIT_FOR_VARIABLE, WAITING_SUFFIX
from lockstep.pipeline.paused_workers_retry import RETRY_FIRST_DELAY_SECONDS
from tests.deploy.conftest import _stop_everything, make_project
from tests.deploy.writing_workers import (
    commit_a_release_that_fails_smoke,
    deploy_a_writing_release,
    jobs_component,
    record_once_unpaused,
    wait_for_file,
    wait_for_writes,
)

pytestmark = pytest.mark.slow


def test_workers_that_did_not_start_after_the_restore_are_started_by_the_agent(tmp_path: Path) -> None:
    log = tmp_path / "jobs.log"
    refuse = tmp_path / "jobs-refuse"
    project = make_project(
        tmp_path,
        extra_deploy='smoke = [{ command = "test ! -e BREAKS_SMOKE" }]',
        extra_config=jobs_component("solo", log, refuse),
    )
    project.start_agent()
    try:
        deploy_a_writing_release(project, log)

        commit_a_release_that_fails_smoke(project)
        go = project.directory.parent / "restore-go"
        deploy = subprocess.Popen(
            [sys.executable, "-m", "lockstep", "deploy"],
            cwd=project.directory,
            env={**os.environ, **project.env, WAIT_AT_VARIABLE: "restore data", WAIT_FOR_VARIABLE: str(go)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for_file(go.with_name(go.name + WAITING_SUFFIX), deploy)  # the old workers are stopped now
            refuse.touch()  # from now on `jobs` exits as it starts: their start after the restore fails
            go.touch()
            out, err = deploy.communicate(timeout=300)
        finally:
            if deploy.poll() is None:
                deploy.kill()
                deploy.wait()
        ended = time.time()
        assert deploy.returncode == 3, err + out
        assert "THE WORKERS jobs, worker OF SLOT blue DID NOT START AGAIN" in err, err
        assert "the agent starts them (it tries again" in err, err

        # `status` tries at once (as may the agent's watch): it fails, and says so, and when next.
        status = project.lockstep("status")
        assert status.returncode == 0, status.err
        assert "STOPPED in slot blue: jobs, worker" in status.out, status.out
        assert "stopped them for a data restore and starting them again failed" in status.out, status.out
        assert "the agent tries again in" in status.out, status.out
        mark = project.history()[-1]["paused_workers"]
        assert mark is not None and mark["attempts"] == 1 and "jobs" in mark["restart_failed"], mark

        # Backing off: the watch looks every 5 s, but does not try again before the delay is over.
        time.sleep(12)
        mark = project.history()[-1]["paused_workers"]
        assert mark is not None and mark["attempts"] == 1, mark
        assert mark["retry_at"] - time.time() > RETRY_FIRST_DELAY_SECONDS - 20, mark

        refuse.unlink()  # the worker can start again: the next try starts them
        wait_for_writes(log, "solo", "1.0.0", after=ended, timeout=RETRY_FIRST_DELAY_SECONDS + 30)
        record = record_once_unpaused(project)
        assert record["outcome"] == "rolled-back" and record["paused_workers"] is None, record
        assert "its workers jobs, worker were started again afterwards" in record["reason"], record
        assert project.agent_log is not None
        said = project.agent_log.read_text()
        assert "started again the workers jobs, worker of slot blue" in said, said
        status_document = project.status()
        assert status_document["slots"]["blue"]["stopped"] == [] and status_document["paused_workers"] == []
        running = {item["component"] for item in status_document["slots"]["blue"]["processes"] if item["running"]}
        assert running == {"web", "worker", "jobs"}
    finally:
        _stop_everything(project)
