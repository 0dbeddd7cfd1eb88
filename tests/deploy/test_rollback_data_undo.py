"""A `rollback --with-data` that fails after its data restore puts the data back: the notes app,
a real agent, the built-in proxy and real processes.

Before, the unwind stopped the older release and restarted the newer one's workers, and the
newer release went on serving on the older release's data (here: without the rows written
under it, on a schema without its column)."""

from __future__ import annotations

import subprocess
import time

import pytest

from lockstep.agent.client import AgentClient
from lockstep.exit_codes import ExitCode
from lockstep.fault_injection import KILL_AT_VARIABLE
from lockstep.layout import EnvironmentLayout
from tests.deploy.conftest import NotesProject

pytestmark = pytest.mark.slow


def _layout(project: NotesProject) -> EnvironmentLayout:
    return EnvironmentLayout(project.directory / ".lockstep" / "state" / "test", "test")


def _agent(project: NotesProject) -> AgentClient:
    return AgentClient(_layout(project).agent_socket, "test")


def _running(project: NotesProject, slot: str, component: str) -> bool:
    processes = project.status()["slots"][slot]["processes"]
    return any(item["component"] == component and item["running"] for item in processes)


def _data_rollback_stuck_starting_a_cold_broken_release(project: NotesProject) -> subprocess.Popen[bytes]:
    """1.0.0 and 2.0.0 deployed, 1.0.0's warm slot stopped and its app made to never listen; a
    `rollback --with-data`, read until its code step (after the data restore) has started."""
    assert project.lockstep("deploy").returncode == 0
    project.apply("v2", "notes 2.0.0")
    assert project.lockstep("deploy").returncode == 0
    blue = project.status()["slots"]["blue"]
    _agent(project).stop_slot("blue")
    (_layout(project).release_directory(blue["release"]) / "app.py").write_text("import time\ntime.sleep(3600)\n")
    rollback = project.run_until_step("code", "rollback", "--with-data", "--yes")
    assert rollback.stderr is not None
    return rollback


def test_a_data_rollback_whose_older_release_fails_cold_puts_the_data_back(notes_project: NotesProject) -> None:
    project = notes_project
    assert project.lockstep("deploy").returncode == 0
    project.add_note("from v1")
    project.apply("v2", "notes 2.0.0")  # migration 002 adds a column
    assert project.lockstep("deploy").returncode == 0
    project.add_note("from v2, must survive the failed rollback")
    rows_before = project.database_rows()
    # 1.0.0 is cold (its warm web stopped) and fails its health gate when it starts again.
    blue = project.status()["slots"]["blue"]
    assert blue["release"] is not None and project.version() == "2.0.0"
    _agent(project).stop_slot("blue")
    # It runs but never listens: a release whose dependency went away, say.
    broken = "import time\ntime.sleep(3600)\n"
    (_layout(project).release_directory(blue["release"]) / "app.py").write_text(broken)

    completed = project.lockstep("rollback", "--with-data", "--yes")

    assert completed.returncode == ExitCode.ROLLED_BACK, completed.err
    # The release that served before serves again, on its own data: the row written under it,
    # over HTTP through the proxy, and the database exactly as it was.
    assert project.version() == "2.0.0"
    notes = project.notes()
    assert "from v2, must survive the failed rollback" in notes and "from v1" in notes
    assert project.database_rows() == rows_before
    said = " ".join(completed.err.split())
    assert "rollback to" in said and "failed" in said, said
    assert "web in slot blue is not healthy" in said, said
    assert "the data was put back as it was before the rollback" in said, said
    assert _running(project, "green", "worker") and not _running(project, "blue", "web")
    record = project.history()[-1]
    assert record["operation"] == "rollback" and record["outcome"] == "failed", record
    assert "the data was put back" in record["reason"], record
    assert record["data_restored"] is False and record["pre_restore_snapshot_id"], record
    assert record["pre_restore_snapshot_id"][:8] in record["reason"]
    undone = [step["step"] for step in record["steps"] if step["outcome"] == "undone"]
    assert undone == ["undo code", "undo restore data", "undo stop workers", "undo hold"], record["steps"]


def test_a_data_rollback_killed_before_its_switch_says_how_to_put_the_data_back(notes_project: NotesProject) -> None:
    """kill -9 between the data restore and the switch: no unwind runs, the hold ends with the
    process, and the newer release serves on the older data. The clean-up cannot restore under
    live traffic, but it says so and names the pre-restore snapshot (the history too)."""
    project = notes_project
    rollback = _data_rollback_stuck_starting_a_cold_broken_release(project)
    rollback.kill()
    rollback.communicate()

    deadline = time.monotonic() + 30  # the agent cleans up
    while time.monotonic() < deadline and project.history()[-1]["outcome"] == "running":
        time.sleep(0.3)
    record = project.history()[-1]
    assert (record["operation"], record["outcome"]) == ("rollback", "interrupted"), record
    pre_restore = record["pre_restore_snapshot_id"][:8]
    assert f"lockstep snapshot restore {pre_restore}" in record["reason"], record
    assert "never got the traffic" in record["reason"], record
    assert project.agent_log is not None
    assert f"lockstep snapshot restore {pre_restore}" in project.agent_log.read_text()


def test_when_putting_the_data_back_fails_too_the_rollback_says_exactly_what_is_left(
    notes_project: NotesProject,
) -> None:
    """The pre-restore snapshot is gone when the unwind needs it: the failure says so loudly, with
    the snapshot to restore by hand, and the newer release's workers stay stopped (they would
    write to the older release's data)."""
    project = notes_project
    rollback = _data_rollback_stuck_starting_a_cold_broken_release(project)
    pre_restore = project.history()[-1]["pre_restore_snapshot_id"]
    (project.directory / ".lockstep" / "repository" / "snapshots" / pre_restore).unlink()
    said = " ".join(rollback.stderr.read().decode().split())
    assert rollback.wait(timeout=120) == ExitCode.FAILED, said

    assert "PUTTING THE DATA BACK FAILED" in said, said
    assert f"lockstep snapshot restore {pre_restore[:8]}" in said, said
    assert "of the newer release stay stopped" in said, said
    record = project.history()[-1]
    assert "PUTTING THE DATA BACK FAILED" in record["reason"] and record["data_restored"] is True, record
    failed = [step["step"] for step in record["steps"] if step["outcome"] == "undo-failed"]
    assert failed == ["undo restore data", "undo stop workers"], record["steps"]
    assert not _running(project, "green", "worker")
    assert project.request("GET", "/version")[0] == 200  # the hold was released all the same


def test_a_data_rollback_killed_after_its_switch_stops_the_whole_slot_it_left(notes_project: NotesProject) -> None:
    """kill -9 right after the switch to 1.0.0, on its restored data, before the retire: the
    clean-up keeps 1.0.0 (past undoing), and must stop all of 2.0.0's slot, as the retire would
    have. It stopped only its workers: 2.0.0's web stayed warm on data whose schema it does not
    fit (answering errors), a slot a rollback to 2.0.0 would have switched to at once."""
    project = notes_project
    assert project.lockstep("deploy").returncode == 0
    project.add_note("from v1")
    project.apply("v2", "notes 2.0.0")  # migration 002 adds a column
    assert project.lockstep("deploy").returncode == 0
    project.add_note("from v2, lost by the rollback with data")
    project.env[KILL_AT_VARIABLE] = "rollback switched"

    completed = project.lockstep("rollback", "--with-data", "--yes")

    assert completed.returncode == -9, completed.err
    del project.env[KILL_AT_VARIABLE]
    deadline = time.monotonic() + 30  # the agent cleans up and finishes the retire
    while time.monotonic() < deadline and (_running(project, "green", "web") or project.history()[-1]["retire_left"]):
        time.sleep(0.3)
    assert not _running(project, "green", "web") and not _running(project, "green", "worker")
    record = project.history()[-1]
    assert (record["operation"], record["outcome"], record["retire_left"]) == ("rollback", "interrupted", None)
    assert project.version() == "1.0.0"
    notes = project.notes()
    assert "from v1" in notes and "from v2, lost by the rollback with data" not in notes, notes
