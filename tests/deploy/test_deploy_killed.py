"""`lockstep deploy` killed with SIGKILL at the steps where it matters most: no unwinding runs,
so what the next `status` or deploy says and does is all the operator gets."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_lockstep
from tests.deploy.conftest import NotesProject, _stop_everything, clean_up_said, deploy_three_releases, make_project

pytestmark = pytest.mark.slow


def _kill_at(project: NotesProject, step: str, after: float) -> None:
    process = project.deploy_until_step(step)
    time.sleep(after)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.stderr is not None
    process.stderr.close()
    assert process.stdout is not None
    process.stdout.close()


def _running_workers(project: NotesProject, slot: str) -> list[int]:
    processes = project.status()["slots"][slot]["processes"]
    return [item["pid"] for item in processes if item["component"] == "worker" and item["running"]]


@pytest.fixture
def slow_migration_project(tmp_path: Path) -> Iterator[NotesProject]:
    """The notes app whose migration command takes a second before it migrates. Its watch window is
    a second, so that the first deploy of each test is quick; `_watch_long` lengthens it."""
    project = make_project(tmp_path)
    config = project.directory / "lockstep.toml"
    config.write_text(
        config.read_text().replace(
            'migrate = "python3 migrate.py"', "migrate = \"sh -c 'sleep 1.5 && python3 migrate.py'\""
        )
    )
    project.commit("a slow migration")
    project.start_agent()
    try:
        yield project
    finally:
        _stop_everything(project)


def _watch_long(project: NotesProject) -> None:
    """A 30 s watch window from the next deploy on (the next commit takes it), long enough to kill
    the deploy or the agent inside it."""
    config = project.directory / "lockstep.toml"
    config.write_text(config.read_text().replace("watch_seconds = 1.0\n", "watch_seconds = 30\n"))
    assert "watch_seconds = 30\n" in config.read_text()


def test_a_deploy_killed_during_its_migration_says_the_data_may_have_moved(
    slow_migration_project: NotesProject,
) -> None:
    """Killed while the migration ran: the migration went on without it (the database is at 002),
    but the history said no migration had run, and `status` said nothing of the data or of the
    snapshot that holds it as it was before."""
    project = slow_migration_project
    assert project.lockstep("deploy").returncode == 0
    project.apply("v2", "notes 2.0.0")
    _kill_at(project, "migrate", 0.3)
    time.sleep(2.5)  # the orphaned migration finishes

    said = clean_up_said(project)
    record = project.history()[-1]
    assert record["migrations_ran"], record
    snapshot = record["snapshot_id"][:8]
    assert f"lockstep snapshot restore {snapshot}" in said, said
    assert "interrupted in its migrate step" in said, said
    assert record["outcome"] == "interrupted" and record["failed_step"] == "migrate", record
    assert "killed while its migrations ran" in said
    assert record["steps"][-1] == {"step": "migrate", "outcome": "failed", "seconds": 0.0, "detail": "killed"}
    assert [item["step"] for item in record["steps"]] == ["preflight", "lock", "release", "snapshot", "migrate"]
    assert project.version() == "1.0.0"


def test_a_deploy_killed_in_its_watch_window_leaves_one_release_of_workers(
    slow_migration_project: NotesProject,
) -> None:
    """Killed after the switch: the new release serves, and the old slot's worker ran on beside
    the new one for good (two releases' workers on one database); now the clean-up stops it, as
    the retire step would have, and a rollback brings it back."""
    project = slow_migration_project
    assert project.lockstep("deploy").returncode == 0
    _watch_long(project)
    project.apply("v2", "notes 2.0.0")
    _kill_at(project, "watch", 0.5)
    assert project.version() == "2.0.0"

    said = clean_up_said(project)
    assert _running_workers(project, "blue") == []
    assert len(_running_workers(project, "green")) == 1
    assert "without a finished watch window" in said, said
    assert "stopped worker in slot blue" in said, said
    record = project.history()[-1]
    assert (record["outcome"], record["failed_step"]) == ("interrupted", "watch"), record

    rollback = project.lockstep("rollback", "--force")  # code only: 002 adds a column v1 ignores
    assert rollback.returncode == 0, rollback.err
    assert project.version() == "1.0.0"
    assert len(_running_workers(project, "blue")) == 1
    assert _running_workers(project, "green") == []


def test_a_killed_deploy_whose_migration_changed_nothing_does_not_offer_a_restore(
    slow_migration_project: NotesProject,
) -> None:
    """The migration ran but the version did not move (no new migration): the clean-up told the
    operator to restore the pre-deploy snapshot, which would only discard what users wrote since."""
    project = slow_migration_project
    assert project.lockstep("deploy").returncode == 0
    (project.directory / "VERSION").write_text("1.0.1\n")
    project.commit("notes 1.0.1")
    _kill_at(project, "start", 0.3)

    said = clean_up_said(project)
    assert "snapshot restore" not in said, said
    assert "interrupted in its start step" in said, said
    assert project.history()[-1]["failed_step"] == "start"


def test_the_agent_killed_in_the_watch_window_keeps_the_serving_release_and_its_data(
    slow_migration_project: NotesProject,
) -> None:
    """The agent dies (kill -9) while a deploy of v2 watches it: the switch back fails, so v2 keeps
    the traffic. The undo went on to restore 001 under it (v2 needs 002) and to delete v2's release
    directory, from which it serves: its next restart could not start. Both now stay."""
    project = slow_migration_project
    assert project.lockstep("deploy").returncode == 0
    project.add_note("written under v1")
    _watch_long(project)
    project.apply("v2", "notes 2.0.0")
    process = project.deploy_until_step("watch")
    assert project.agent is not None
    project.agent.kill()
    project.agent.wait()
    assert process.stderr is not None
    output = process.stderr.read().decode()
    returncode = process.wait(timeout=120)
    assert project.version() == "2.0.0"  # the proxy outlives the agent
    record = project.history()[-1]
    release = project.directory / ".lockstep" / "state" / "test" / "releases" / record["release_id"]
    assert release.is_dir(), output
    assert not record["data_restored"], output
    assert "the data stays as migrated" in output
    assert returncode == 1, output  # undoing failed too

    project.start_agent()
    web = next(item for item in project.status()["slots"]["green"]["processes"] if item["component"] == "web")
    os.killpg(web["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if project.version() == "2.0.0":
                break
        except (OSError, AssertionError):
            pass
        time.sleep(0.3)
    assert project.version() == "2.0.0"  # restarted from its release directory
    assert project.notes() == ["written under v1"]


def test_a_rollback_killed_while_it_starts_its_release_leaves_nothing_running_beside(
    notes_project: NotesProject,
) -> None:
    """kill -9 of a rollback starting an older release in the idle slot: that release and its
    worker ran on without traffic next to the serving release's worker, shown as a warm slot, and
    the history did not say where the rollback died. The next rollback also took the dead one's
    lock without a word."""
    project = notes_project
    ids = deploy_three_releases(project)
    rollback = project.run_until_step("code", "rollback", "--to", ids[0])
    assert rollback.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _running_workers(project, "green"):
        time.sleep(0.1)
    os.kill(rollback.pid, signal.SIGKILL)
    rollback.wait()
    rollback.stderr.close()
    assert rollback.stdout is not None
    rollback.stdout.close()

    again = project.lockstep("rollback", "--to", ids[0], "--json")
    assert again.returncode == 0, again.err
    assert "recovered a stale lock of rollback" in again.err, again.err
    interrupted = project.history()[-2]
    assert (interrupted["operation"], interrupted["outcome"]) == ("rollback", "interrupted"), interrupted
    assert interrupted["failed_step"] == "code" and interrupted["slot"] == "green", interrupted
    assert project.version() == "1.0.1"


def test_a_killed_rollback_is_cleaned_up_by_status(notes_project: NotesProject) -> None:
    """The same kill, then `lockstep status`: the half-started release stops, its worker too."""
    project = notes_project
    ids = deploy_three_releases(project)
    assert _running_workers(project, "green") == []
    rollback = project.popen_lockstep("rollback", "--to", ids[0], "--log-format", "json")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _running_workers(project, "green"):
        time.sleep(0.1)
    os.kill(rollback.pid, signal.SIGKILL)
    rollback.communicate()

    said = clean_up_said(project)
    assert _running_workers(project, "green") == []
    assert "stopped the interrupted release in slot green" in said, said
    assert len(_running_workers(project, "blue")) == 1
    assert project.version() == "1.0.3"


def test_the_agent_cleans_up_a_killed_deploy_without_waiting_for_the_cli(notes_project: NotesProject) -> None:
    """Until someone ran `lockstep status` or deployed again, a deploy killed while starting its
    release stayed "running" in the history, the dashboard and /metrics, its half-started release
    and worker running beside the serving ones. The agent now cleans it up by itself."""
    project = notes_project
    assert project.lockstep("deploy").returncode == 0
    (project.directory / "VERSION").write_text("1.0.1\n")
    project.commit("notes 1.0.1")
    deploy = project.popen_lockstep("deploy", "--log-format", "json")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _running_workers(project, "green"):
        time.sleep(0.1)
    os.kill(deploy.pid, signal.SIGKILL)
    deploy.communicate()

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and project.history()[-1]["outcome"] == "running":
        time.sleep(0.3)
    record = project.history()[-1]
    assert record["outcome"] == "interrupted", record
    assert record["failed_step"] == "start", record
    status = project.lockstep("status", "--json")
    assert "cleaning up" not in status.err, status.err  # the agent did it already
    assert _running_workers(project, "green") == []
    assert project.version() == "1.0.0"
    assert project.agent_log is not None
    assert "was interrupted in its start step" in project.agent_log.read_text()


def test_a_deploy_killed_mid_snapshot_does_not_leave_its_repository_lock(notes_project: NotesProject) -> None:
    """Killed while its pre-deploy snapshot held a repository lock: the stale lock stayed, and
    every exclusive operation (`snapshot forget --prune`, the agent's scheduled forget) failed
    until someone ran `lockstep repo unlock`. The clean-up removes the dead process's lock."""
    project = notes_project
    assert project.lockstep("deploy").returncode == 0
    (project.directory / "VERSION").write_text("1.0.1\n")
    project.commit("notes 1.0.1")
    locks = project.directory / ".lockstep" / "repository" / "locks"

    def held() -> list[str]:  # not the ".NAME.tmp" a lock is written as before its rename
        return [path.name for path in locks.iterdir() if not path.name.startswith(".")]

    deploy = project.deploy_until_step("snapshot")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not held():
        time.sleep(0.002)
    os.kill(deploy.pid, signal.SIGKILL)
    assert held(), "the deploy held no repository lock when it was killed"

    # Not reaped yet, as under a parent that is slow to: a zombie is gone all the same.
    deadline = time.monotonic() + 30  # the agent cleans up (or `status` would)
    while time.monotonic() < deadline and project.history()[-1]["outcome"] == "running":
        time.sleep(0.3)
    assert project.history()[-1]["outcome"] == "interrupted"
    assert project.agent_log is not None
    assert not held(), project.agent_log.read_text()
    deploy.communicate()
    assert "removed its stale repository lock" in project.agent_log.read_text()
    prune = project.lockstep("snapshot", "forget", "--prune")
    assert prune.returncode == 0, prune.err


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in command_line and state != "Z":
            found.append(int(entry.name))
    return found


def test_the_clean_up_of_a_deploy_killed_during_its_migration_stops_the_migration(
    notes_project: NotesProject,
) -> None:
    """kill -9 of a deploy while its migration runs: the migration (in a process group of its own)
    went on, orphaned, after the clean-up had declared the deploy dead, and changed the data under
    the release that served. The clean-up (here the agent's) now stops it first, and says so."""
    project = notes_project
    assert project.lockstep("deploy").returncode == 0
    # 20 s: the agent's clean-up runs every 5 s and must come first even on a loaded machine (with
    # 8 s it came too late once at a load average of 7).
    marker = _give_a_slow_migration(project, 20)
    _kill_at(project, "migrate", 0.5)
    killed_at = time.monotonic()
    migration = _processes_mentioning(str(marker))
    assert migration, "the migration was not running when the deploy was killed"

    said = _assert_the_clean_up_stopped(project, "migrate", marker, killed_at, command_seconds=20)
    time.sleep(max(0.0, killed_at + 22 - time.monotonic()))  # past when the migration would have ended
    assert not marker.exists(), "the orphaned migration ran on after the clean-up"
    record = project.history()[-1]
    running = record["running_command"]
    assert running["step"] == "migrate" and running["pid"] in migration, record
    assert "its migrate command was still running: the clean-up stopped it before it finished" in record["reason"]
    assert "the migration command was stopped before it finished" in said, said
    assert project.version() == "1.0.0"


def _give_a_slow_migration(project: NotesProject, seconds: int) -> Path:
    """Commit a migration that sleeps `seconds`, then leaves a marker file; the marker's path (it
    exists only if the migration ran to its end)."""
    marker = project.directory.parent / "migration-finished.marker"
    config = project.directory / "lockstep.toml"
    slow = f"migrate = \"sh -c 'sleep {seconds} && touch {marker}'\""
    config.write_text(config.read_text().replace('migrate = "python3 migrate.py"', slow))
    project.commit(f"a migration that takes {seconds} s, then leaves a marker")
    return marker


def _assert_the_clean_up_stopped(
    project: NotesProject, step: str, marker: Path, killed_at: float, command_seconds: float = 30
) -> str:
    """The clean-up of a deploy killed in `step` stopped its command (`sh -c 'sleep SECONDS && touch
    MARKER'`) before it finished, said so, and marked the deploy interrupted there; what it said."""
    said = clean_up_said(project)
    elapsed = time.monotonic() - killed_at
    assert elapsed < command_seconds, f"the clean-up came after the {step} command would have finished"
    assert _processes_mentioning(str(marker)) == [], said
    assert not marker.exists(), f"the orphaned {step} command ran on after the clean-up"
    record = project.history()[-1]
    assert (record["outcome"], record["failed_step"]) == ("interrupted", step), record
    assert record["running_command"]["ended"] == "was still running: the clean-up stopped it before it finished"
    assert f"its {step} command (process group" in said and "was still running: stopped it" in said, said
    return said


def test_a_deploy_killed_as_its_migration_starts_has_the_migration_stopped(notes_project: NotesProject) -> None:
    """kill -9 after the migration started but before its process group was in the history (the
    point LOCKSTEP_TEST_KILL_AT names, lockstep/fault_injection.py): the clean-up knew of no
    command, and the migration ran on, orphaned, changing the data under the serving release. A
    mark saved before the start, in the migration's environment, now finds it."""
    project = notes_project
    assert project.lockstep("deploy").returncode == 0
    marker = _give_a_slow_migration(project, 30)
    killed = run_lockstep(
        ["deploy"], env={**project.env, "LOCKSTEP_TEST_KILL_AT": "command-started migrate"}, cwd=project.directory
    )
    killed_at = time.monotonic()
    assert killed.returncode == -signal.SIGKILL, killed.err
    assert _processes_mentioning(str(marker)), "the migration was not running when the deploy was killed"
    assert "pid" not in project.history()[-1]["running_command"], "killed after its process group was saved"

    _assert_the_clean_up_stopped(project, "migrate", marker, killed_at)
    assert project.version() == "1.0.0"


def test_a_deploy_killed_during_a_smoke_command_has_it_stopped(notes_project: NotesProject) -> None:
    """kill -9 of a deploy while a smoke test's command runs: smoke commands were not recorded at
    all, so the command (in a session of its own) ran on for good, unknown to the clean-up. It is
    recorded as hooks and migrations are, and the clean-up stops it."""
    project = notes_project
    assert project.lockstep("deploy").returncode == 0
    marker = project.directory.parent / "smoke-finished.marker"
    config = project.directory / "lockstep.toml"
    smoke = f"smoke = [{{ command = \"sh -c 'sleep 30 && touch {marker}'\" }}]"
    config.write_text(config.read_text().replace("[deploy]\n", f"[deploy]\n{smoke}\n"))
    (project.directory / "VERSION").write_text("1.0.1\n")
    project.commit("notes 1.0.1, with a smoke test that takes 30 s")
    deploy = project.deploy_until_step("smoke")
    deadline = time.monotonic() + 20
    while not _processes_mentioning(str(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_mentioning(str(marker)), "the smoke command did not start"
    os.kill(deploy.pid, signal.SIGKILL)
    deploy.communicate()
    killed_at = time.monotonic()

    _assert_the_clean_up_stopped(project, "smoke", marker, killed_at)
    assert _running_workers(project, "green") == []
    assert project.version() == "1.0.0"
