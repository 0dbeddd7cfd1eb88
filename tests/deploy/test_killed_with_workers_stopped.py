"""A deploy or rollback killed (kill -9) while it has the serving release's workers stopped for
a data restore (pipeline/worker_pause.py): no `finally` runs, so the workers stayed stopped, and
the clean-up of the killed operation neither started them nor said so; `status` showed the
release as running. Real agent, real workers writing to SQLite, a real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lockstep.fault_injection import KILL_AT_VARIABLE, WAIT_AT_VARIABLE, WAIT_FOR_VARIABLE, WAITING_SUFFIX
from lockstep.pipeline.paused_workers_retry import RETRY_FIRST_DELAY_SECONDS
from lockstep.pipeline.worker_pause import RESTART_SETTLE_SECONDS
from tests.deploy.conftest import NotesProject, _stop_everything, clean_up_said, free_ports, make_project
from tests.deploy.test_deploy_unwind_workers import WORKERS_ONLY
from tests.deploy.writing_workers import (
    SEED,
    commit_a_release_that_fails_smoke,
    deploy_a_writing_release,
    jobs_component,
    record_once_unpaused,
    wait_for_file,
    wait_for_writes,
)

pytestmark = pytest.mark.slow


def _workers_only_two_releases(tmp_path: Path, log: Path) -> tuple[NotesProject, str]:
    """An app of workers only, 1.0.0 then 2.0.0 deployed (with a migration): the active slot."""
    project = make_project(tmp_path)
    (listen,) = free_ports(1)
    config = WORKERS_ONLY.format(jobs=jobs_component("solo", log), listen=listen)
    (project.directory / "lockstep.toml").write_text(config.replace("BREAKS_SMOKE", "NEVER_THERE"))
    project.start_agent()
    try:
        deploy_a_writing_release(project, log)
        (project.directory / "VERSION").write_text("2.0.0\n")
        (project.directory / "migrations" / "003_seed.sql").write_text(SEED)
        project.commit("notes 2.0.0")
        second = project.lockstep("deploy")
        assert second.returncode == 0, second.err
        wait_for_writes(log, "solo", "2.0.0", after=0)
        return project, str(project.status()["active_slot"])
    except BaseException:
        _stop_everything(project)
        raise


def _kill_rollback_at(project: NotesProject, where: str) -> None:
    """`rollback --with-data`, SIGKILLed at the kill point `where`, or at the wait point there."""
    go = project.directory.parent / "restore-go"
    wait = where == "restore data"
    points = {WAIT_AT_VARIABLE: where, WAIT_FOR_VARIABLE: str(go)} if wait else {KILL_AT_VARIABLE: where}
    rollback = subprocess.Popen(
        [sys.executable, "-m", "lockstep", "rollback", "--with-data", "--yes"],
        cwd=project.directory,
        env={**os.environ, **project.env, **points},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if wait:
            wait_for_file(go.with_name(go.name + WAITING_SUFFIX), rollback)
            os.kill(rollback.pid, signal.SIGKILL)
        assert rollback.wait(timeout=300) == -signal.SIGKILL
    finally:
        if rollback.poll() is None:
            rollback.kill()
            rollback.wait()


def _running(project: NotesProject, slot: str) -> set[str]:
    return {item["component"] for item in project.status()["slots"][slot]["processes"] if item["running"]}


def test_a_deploy_killed_in_its_data_restore_gets_the_old_workers_started_again(tmp_path: Path) -> None:
    """Killed inside the unwind's restore, the old release's workers stopped: the clean-up starts
    them again (the old release serves, and its workers belong with it) and says so."""
    log = tmp_path / "jobs.log"
    project = make_project(
        tmp_path,
        extra_deploy='smoke = [{ command = "test ! -e BREAKS_SMOKE" }]',
        extra_config=jobs_component("solo", log),
    )
    project.start_agent()
    try:
        deploy_a_writing_release(project, log)
        killed = _kill_a_deploy_in_its_data_restore(project)

        said = clean_up_said(project)
        wait_for_writes(log, "solo", "1.0.0", after=killed, timeout=30)  # they write again
        assert "it had stopped the workers jobs, worker of slot blue" in said and "started them again" in said, said
        status = project.status()
        assert status["active_slot"] == "blue"
        assert _running(project, "blue") == {"web", "worker", "jobs"}
        assert status["slots"]["blue"]["stopped"] == []
        record = project.history()[-1]
        assert record["outcome"] == "interrupted" and record["paused_workers"] is None, record
    finally:
        _stop_everything(project)


def _kill_a_deploy_in_its_data_restore(project: NotesProject) -> float:
    """A deploy of 2.0.0 that fails its smoke test, SIGKILLed inside its data restore, 1.0.0's
    workers stopped; when it was killed."""
    commit_a_release_that_fails_smoke(project)
    go = project.directory.parent / "restore-go"
    deploy = subprocess.Popen(
        [sys.executable, "-m", "lockstep", "deploy"],
        cwd=project.directory,
        env={**os.environ, **project.env, WAIT_AT_VARIABLE: "restore data", WAIT_FOR_VARIABLE: str(go)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_file(go.with_name(go.name + WAITING_SUFFIX), deploy)  # the old workers are stopped now
        assert "jobs" not in _running(project, "blue")
        os.kill(deploy.pid, signal.SIGKILL)
    finally:
        if deploy.poll() is None:
            deploy.kill()
        deploy.wait()
    return time.time()


def test_workers_the_clean_up_starts_that_exit_a_second_later_are_not_taken_for_running(tmp_path: Path) -> None:
    """The clean-up of a deploy killed in its data restore starts the old release's workers again;
    one exits a second later (past the agent's start check). It was taken for started: the mark
    cleared, "started them again" said. As after a restore, a start counts once the workers stayed
    up RESTART_SETTLE_SECONDS; until then the mark stays, with why, and the agent's retry takes over."""
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
        killed = _kill_a_deploy_in_its_data_restore(project)
        crashes.write_text("1")  # the clean-up's start of `jobs` exits a second later; the next one stays

        said = clean_up_said(project)
        assert "THE WORKERS jobs, worker OF SLOT blue (release " in said and "DID NOT STAY UP" in said, said
        # Seen by its exit event, or, when the agent has not polled it yet, as not running.
        assert "jobs exited after it was started" in said or "jobs is not running after it was started" in said, said
        assert "for a data restore: started them again" not in said, said
        record = project.history()[-1]
        assert record["outcome"] == "interrupted" and "DID NOT STAY UP" in record["reason"], record
        (exited,) = [float(line) for line in crashes.with_name(crashes.name + ".times").read_text().split()]
        assert killed < exited

        # The retry's mark goes once they stayed up RESTART_SETTLE_SECONDS after that exit.
        record = record_once_unpaused(project, timeout=RETRY_FIRST_DELAY_SECONDS * 2 + 60)
        assert record["paused_workers"] is None and time.time() >= exited + RESTART_SETTLE_SECONDS, record
        wait_for_writes(log, "solo", "1.0.0", after=exited)
        assert _running(project, "blue") == {"web", "worker", "jobs"}
    finally:
        _stop_everything(project)


@pytest.mark.parametrize("where", ["workers stopped", "restore data"])
def test_a_rollback_with_data_killed_after_it_stopped_the_workers_starts_them_again(tmp_path: Path, where: str) -> None:
    """An app of workers only, `rollback --with-data` killed after it stopped the newer release's
    workers, before any database was replaced (just after the stop; or inside the restore, before
    its pre-restore snapshot): the newer release stays the active one, and without its workers
    nothing of it ran. The clean-up starts them again."""
    log = tmp_path / "jobs.log"
    project, active = _workers_only_two_releases(tmp_path, log)
    try:
        _kill_rollback_at(project, where)
        killed = time.time()  # its newer workers stopped (`status` would already clean up: not asked here)

        said = clean_up_said(project)
        assert f"it had stopped the workers jobs of slot {active}" in said and "started them again" in said, said
        wait_for_writes(log, "solo", "2.0.0", after=killed, timeout=30)
        assert project.status()["active_slot"] == active
        assert _running(project, active) == {"jobs"}
    finally:
        _stop_everything(project)


def test_a_rollback_with_data_killed_in_its_restore_says_the_workers_stay_stopped(tmp_path: Path) -> None:
    """Killed as it began to replace the databases with the older release's data: its workers
    would write into data that is not theirs, so they are not started; the clean-up and `status`
    say loudly that they are stopped, and what to run."""
    log = tmp_path / "jobs.log"
    project, active = _workers_only_two_releases(tmp_path, log)
    try:
        _kill_rollback_at(project, "pre-restore snapshot saved")

        said = clean_up_said(project)
        assert f"THE WORKERS jobs OF SLOT {active}" in said and "ARE STOPPED" in said, said
        assert "lockstep rollback --with-data" in said, said
        status = project.lockstep("status")
        assert f"STOPPED in slot {active}: jobs" in status.out, status.out
        assert project.status()["slots"][active]["stopped"] == ["jobs"]
        record = project.history()[-1]
        assert "ARE STOPPED" in record["reason"], record
    finally:
        _stop_everything(project)
