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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lockstep.fault_injection import WAIT_AT_VARIABLE, WAIT_FOR_VARIABLE, WAITING_SUFFIX
from lockstep.pipeline.paused_workers_retry import RETRY_FIRST_DELAY_SECONDS
from lockstep.pipeline.worker_pause import RESTART_SETTLE_SECONDS
from tests.deploy.conftest import _stop_everything, make_project
from tests.deploy.writing_workers import (
    JOBS,
    Write,
    commit_a_release_that_fails_smoke,
    deploy_a_writing_release,
    jobs_component,
    logged_writes,
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


def _unwind_with_workers_stopped(project: Any, before_restart: Callable[[], None]) -> tuple[str, float]:
    """A deploy of 2.0.0 that fails its smoke test and restores the data with 1.0.0's workers
    stopped; `before_restart` runs while they are (inside the restore). Its stderr, and when it ended."""
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
        before_restart()
        go.touch()
        out, err = deploy.communicate(timeout=300)
    finally:
        if deploy.poll() is None:
            deploy.kill()
            deploy.wait()
    assert deploy.returncode == 3, err + out
    return err, time.time()


def test_workers_that_exit_a_second_after_their_restart_are_not_taken_for_running(tmp_path: Path) -> None:
    """The agent's start check (0.3 s) passed a worker that exited a second later (its database
    still locked, say): the restart was taken for done, the mark cleared, and nothing but the
    agent's crash-loop handling was left. A restart counts once the workers stayed up
    RESTART_SETTLE_SECONDS; until then the deploy, `status` and the retry say they are not up."""
    log = tmp_path / "jobs.log"
    crashes = tmp_path / "jobs-crashes"
    project = make_project(
        tmp_path,
        extra_deploy='smoke = [{ command = "test ! -e BREAKS_SMOKE" }]',
        extra_config=jobs_component("solo", log, crashes=crashes),
    )
    project.start_agent()
    try:
        deploy_a_writing_release(project, log)
        # From the restart on, `jobs` exits a second after each of its next 4 starts, whoever starts it.
        err, ended = _unwind_with_workers_stopped(project, lambda: crashes.write_text("4"))
        assert "THE WORKERS jobs, worker OF SLOT blue DID NOT STAY UP after the data restore" in err, err
        assert "jobs exited after it was started" in err, err
        assert "started the workers of slot blue again" not in err, err
        mark = project.history()[-1]["paused_workers"]
        assert mark is not None and "jobs exited after it was started" in mark["restart_failed"], mark

        status = project.lockstep("status")
        assert status.returncode == 0, status.err
        assert "in slot blue: jobs, worker — its release runs without them" in status.out, status.out
        assert "jobs exited after it was started" in status.out, status.out
        document = project.status()
        (paused,) = document["paused_workers"]
        assert paused["slot"] == "blue" and paused["restart_failed"], paused

        # The mark goes only once `jobs` stayed up RESTART_SETTLE_SECONDS after its last exit.
        record = record_once_unpaused(project, timeout=RETRY_FIRST_DELAY_SECONDS * 3 + 60)
        seen_unpaused = time.time()
        assert record["paused_workers"] is None, record
        exits = [float(line) for line in crashes.with_name(crashes.name + ".times").read_text().split()]
        assert len(exits) == 4 and crashes.read_text() == "0", exits
        assert seen_unpaused >= exits[-1] + RESTART_SETTLE_SECONDS, (seen_unpaused, exits)
        assert "its workers jobs, worker" in record["reason"], record
        wait_for_writes(log, "solo", "1.0.0", after=exits[-1])
        running = {item["component"] for item in project.status()["slots"]["blue"]["processes"] if item["running"]}
        assert running == {"web", "worker", "jobs"}
        assert ended < exits[-1]
    finally:
        _stop_everything(project)


def test_a_later_deploy_that_changed_the_slots_ends_the_retry_without_a_try(tmp_path: Path) -> None:
    """Workers left stopped in slot blue, whose restart keeps failing; then a deploy moves the
    traffic to green. Blue's workers are not to run any more: the mark goes, at once (not once
    the back-off is over), and the retry does not start them."""
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
        err, _ = _unwind_with_workers_stopped(project, refuse.touch)  # blue's `jobs` refuses to start from now on
        assert "DID NOT START AGAIN" in err, err
        unwound = project.history()[-1]["id"]
        deadline = time.monotonic() + 60
        while (mark := _record(project, unwound)["paused_workers"]) is None or not mark.get("attempts"):
            assert time.monotonic() < deadline, mark  # the agent's first try, at once, fails
            time.sleep(0.3)
        assert mark["attempts"] == 1 and mark["retry_at"] > time.time() + 10, mark

        # 3.0.0: its `jobs` ignores the refuse file; its deploy goes to green and succeeds.
        (project.directory / "VERSION").write_text("3.0.0\n")
        (project.directory / "BREAKS_SMOKE").unlink()
        assert 'os.environ.get("JOBS_REFUSE")' in JOBS
        (project.directory / "jobs.py").write_text(JOBS.replace('os.environ.get("JOBS_REFUSE")', "None"))
        project.commit("notes 3.0.0: a release that deploys")
        later = project.lockstep("deploy")
        assert later.returncode == 0, later.err
        deployed = time.time()
        assert project.status()["active_slot"] == "green"

        deadline = time.monotonic() + 20  # the watch looks every 5 s; the back-off has 20 s and more left
        while (record := _record(project, unwound))["paused_workers"] is not None:
            assert time.monotonic() < deadline, record
            time.sleep(0.3)
        assert time.time() < mark["retry_at"], "the mark went only once the back-off was over"
        assert "were not started: a later operation changed the slots" in record["reason"], record
        assert project.agent_log is not None
        said = project.agent_log.read_text()
        assert "(try 2)" not in said and "started again the workers" not in said, said
        assert writes_since(log, "1.0.0", deployed) == []  # blue's workers were not started
        refuse.unlink()
        assert project.status()["paused_workers"] == []
    finally:
        _stop_everything(project)


def _record(project: Any, operation_id: str) -> dict[str, Any]:
    return next(record for record in project.history() if record["id"] == operation_id)


def writes_since(log: Path, release: str, since: float) -> list[Write]:
    return [write for write in logged_writes(log) if write.release == release and write.at >= since]
