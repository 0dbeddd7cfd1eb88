"""`rollback --with-data` of an app made only of workers: a real agent, real worker processes
and a real SQLite database they write to.

There is no traffic to hold: what keeps the restore safe is that the newer release's workers are
stopped before it (they write too) and the older release's start only on the restored data. A
failure between the restore and the switch puts the data back and restarts the newer workers,
as for a web app."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from lockstep.agent.client import AGENT_WAIT_VARIABLE
from lockstep.exit_codes import ExitCode
from lockstep.fault_injection import KILL_AT_VARIABLE
from lockstep.layout import EnvironmentLayout
from tests.deploy.conftest import NotesProject, _stop_everything, free_ports, make_project

pytestmark = pytest.mark.slow

WORKERS_ONLY = """
default_environment = "test"

[repository]
url = "local:.lockstep/repository"

[databases.main]
url = "sqlite:///.lockstep/state/test/shared/notes.db"

[app]
migrate = "python3 migrate.py"
env = {{ NOTES_DATABASE = "{{shared}}/notes.db" }}

[app.components.worker]
command = "python3 jobs.py"

[traffic]
listen = "127.0.0.1:{listen}"
drain_timeout = 5

[deploy]
watch_seconds = 1

[policy]
data_rollback = "auto"
"""

# A job worker: one row in `jobs` every 0.1 s, naming the release that wrote it.
JOBS = """
import signal, sqlite3, sys, threading
from contextlib import closing
from pathlib import Path
from database import connect, database_path

RELEASE = (Path(__file__).resolve().parent / "VERSION").read_text().strip()
stopping = threading.Event()
signal.signal(signal.SIGTERM, lambda number, frame: stopping.set())
while not stopping.is_set():
    try:
        with closing(connect(database_path())) as connection:
            connection.execute("INSERT INTO jobs (release) VALUES (?)", (RELEASE,))
    except sqlite3.Error as error:
        print(f"jobs: {error}", file=sys.stderr, flush=True)
    stopping.wait(0.1)
"""

MIGRATION_ROW = "written by migration 003"
BEFORE_ROW = "written before release 2.0.0"


def _deploy_two_releases(project: NotesProject) -> None:
    """1.0.0 (creates `jobs`), a row written under it, then 2.0.0, whose migration writes a row."""
    (listen,) = free_ports(1)
    (project.directory / "lockstep.toml").write_text(WORKERS_ONLY.format(listen=listen))
    (project.directory / "jobs.py").write_text(JOBS)
    (project.directory / "migrations" / "002_create_jobs.sql").write_text(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY, release TEXT NOT NULL);\n"
    )
    project.commit("notes 1.0.0: workers only")
    project.start_agent()
    first = project.lockstep("deploy")
    assert first.returncode == 0, first.err
    _wait_for_jobs(project, "1.0.0")
    _write(project, "INSERT INTO notes (text) VALUES (?)", BEFORE_ROW)

    (project.directory / "VERSION").write_text("2.0.0\n")
    (project.directory / "migrations" / "003_seed.sql").write_text(
        f"INSERT INTO notes (text) VALUES ('{MIGRATION_ROW}');\n"
    )
    project.commit("notes 2.0.0: a migration that writes")
    second = project.lockstep("deploy")
    assert second.returncode == 0, second.err
    _wait_for_jobs(project, "2.0.0")


def _query(project: NotesProject, sql: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(project.database, timeout=10)) as connection:
        return connection.execute(sql).fetchall()


def _write(project: NotesProject, sql: str, *values: str) -> None:
    with contextlib.closing(sqlite3.connect(project.database, timeout=10, isolation_level=None)) as connection:
        connection.execute(sql, values)


def _jobs(project: NotesProject, release: str) -> int:
    return int(_query(project, f"SELECT count(*) FROM jobs WHERE release = '{release}'")[0][0])


def _notes(project: NotesProject) -> list[str]:
    return [row[0] for row in _query(project, "SELECT text FROM notes ORDER BY id")]


def _wait_for_jobs(project: NotesProject, release: str) -> None:
    """Until a worker of `release` has written more rows than now: it runs, on this database."""
    before = _jobs(project, release)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _jobs(project, release) > before:
            return
        time.sleep(0.1)
    raise AssertionError(f"no worker of release {release} writes jobs")


def _running(status: dict[str, Any], slot: str) -> list[dict[str, Any]]:
    return [item for item in status["slots"][slot]["processes"] if item["running"]]


@pytest.fixture
def project(tmp_path: Path) -> Any:
    project = make_project(tmp_path)
    try:
        _deploy_two_releases(project)
        yield project
    finally:
        _stop_everything(project)


def test_a_data_rollback_of_workers_only_stops_the_newer_workers_restores_and_starts_the_older(
    project: NotesProject,
) -> None:
    assert project.status()["active_slot"] == "green"
    completed = project.lockstep("rollback", "--with-data", "--yes", "--log-format", "json")

    assert completed.returncode == 0, completed.err
    events = [json.loads(line) for line in completed.err.splitlines() if line.startswith("{")]
    said = " ".join(str(event.get("message", "")) for event in events)
    # What the restore discards was shown: the migration's row and the jobs written since.
    assert "database main, table notes: 1 row added (lost)" in said, said
    assert "database main, table jobs:" in said, said
    # No warning about a hold that cannot be: there is no traffic to hold.
    assert not [event for event in events if event.get("event") == "warning"], events
    finished = [(event["step"], event.get("detail", "")) for event in events if event.get("event") == "step-finished"]
    steps = [step for step, _ in finished]
    assert steps.index("stop workers") < steps.index("restore data") < steps.index("code"), steps
    assert "hold traffic" not in steps, finished
    assert dict(finished)["stop workers"] == "stopped worker", finished

    # The older release's worker runs in blue, the active slot; the newer one's is gone.
    status = project.status()
    assert status["active_slot"] == "blue", status
    (worker,) = _running(status, "blue")
    assert worker["release"] == project.history()[0]["release_id"], worker
    assert _running(status, "green") == [], status
    # The data as in the snapshot: the row written before 2.0.0 is there, the migration's is gone,
    # and no job of 2.0.0 survived (its worker was stopped before the restore, and wrote nothing
    # after it); 1.0.0's worker writes on the restored data.
    _wait_for_jobs(project, "1.0.0")
    notes = _notes(project)
    assert BEFORE_ROW in notes and MIGRATION_ROW not in notes, notes
    assert _jobs(project, "2.0.0") == 0
    assert _query(project, "SELECT max(version) FROM schema_migrations") == [("002",)]
    record = project.history()[-1]
    assert (record["operation"], record["outcome"], record["data_restored"]) == ("rollback", "succeeded", True)
    assert record["traffic_held_seconds"] is None, record


def test_a_data_rollback_of_workers_only_whose_older_release_fails_puts_the_data_back(project: NotesProject) -> None:
    """The older release's worker dies in its health gate, after the restore: the data goes back
    as it was just before the rollback, and the newer release's worker runs on it again."""
    first_release = project.history()[0]["release_id"]
    layout = EnvironmentLayout(project.directory / ".lockstep" / "state" / "test", "test")
    dies = "import time\ntime.sleep(1)\nraise SystemExit(1)\n"
    (layout.release_directory(first_release) / "jobs.py").write_text(dies)
    _write(project, "INSERT INTO notes (text) VALUES (?)", "written under 2.0.0, must survive")
    notes_before = _notes(project)

    completed = project.lockstep("rollback", "--with-data", "--yes")

    assert completed.returncode == ExitCode.ROLLED_BACK, completed.err
    said = " ".join(completed.err.split())
    assert "the data was put back as it was before the rollback" in said, said
    status = project.status()
    assert status["active_slot"] == "green", status
    (worker,) = _running(status, "green")
    assert worker["release"] == project.history()[1]["release_id"], worker
    assert _running(status, "blue") == [], status
    _wait_for_jobs(project, "2.0.0")  # the newer worker writes again, on its own data
    assert _notes(project) == notes_before
    assert _query(project, "SELECT max(version) FROM schema_migrations") == [("003",)]
    record = project.history()[-1]
    assert (record["outcome"], record["data_restored"]) == ("failed", False), record
    undone = [step["step"] for step in record["steps"] if step["outcome"] == "undone"]
    assert undone == ["undo code", "undo restore data", "undo stop workers"], json.dumps(record["steps"], indent=1)


def test_the_dry_run_of_a_data_rollback_of_workers_only_holds_no_traffic(project: NotesProject) -> None:
    planned = project.lockstep("rollback", "--dry-run", "--with-data", "--yes", "--json")

    assert planned.returncode == 0, planned.err
    steps = json.loads(planned.out)["steps"]
    text = "\n".join(steps)
    assert "hold traffic" not in text and "held" not in text, text
    assert "stop workers of slot green: worker" in steps, steps
    assert any(step.startswith("restore data from snapshot") for step in steps), steps
    assert "slot blue becomes the active one (workers only: no traffic to switch)" in steps, steps
    assert "retire slot green: stop all of it (its release expects the data the restore replaces)" in steps, steps
    human = project.lockstep("rollback", "--dry-run", "--with-data", "--yes")
    assert human.returncode == 0, human.err
    assert "traffic is still held" not in human.out and "while no worker runs" in human.out, human.out


def test_a_data_rollback_of_workers_only_whose_restore_fails_leaves_the_newer_release_on_its_data(
    project: NotesProject,
) -> None:
    """Another process holds a write transaction on the database (a forgotten `sqlite3` shell, say)
    longer than the restore waits for it (60 s): the restore fails without having replaced the
    data. Once it ends, the unwind puts back the pre-restore snapshot and restarts the newer
    release's worker, which writes on the data it had."""
    _write(project, "INSERT INTO notes (text) VALUES (?)", "written under 2.0.0, must survive")
    holder = sqlite3.connect(project.database, timeout=10, isolation_level=None)
    try:
        rollback = project.run_until_step("stop workers", "rollback", "--with-data", "--yes", event="step-finished")
        notes_before = _notes(project)  # the worker is stopped: nothing writes from here on
        jobs_before = _jobs(project, "2.0.0")
        holder.execute("BEGIN IMMEDIATE")
        assert rollback.stderr is not None
        for line in rollback.stderr:
            event = json.loads(line)
            if event.get("event") == "step-failed" and event.get("step") == "restore data":
                break
        else:
            raise AssertionError(f"the restore did not fail (exit {rollback.wait()})")
    finally:
        holder.close()  # ends the transaction: the put-back gets the lock
    assert rollback.stderr is not None
    said = " ".join(rollback.stderr.read().decode().split())
    assert rollback.wait(timeout=180) == ExitCode.ROLLED_BACK, said

    assert "the data is back as it was before the rollback" in said, said
    status = project.status()
    assert status["active_slot"] == "green", status
    (worker,) = _running(status, "green")
    assert worker["release"] == project.history()[1]["release_id"], worker
    assert _running(status, "blue") == [], status
    assert _notes(project) == notes_before
    _wait_for_jobs(project, "2.0.0")
    assert _jobs(project, "2.0.0") > jobs_before
    record = project.history()[-1]
    assert (record["outcome"], record["failed_step"]) == ("failed", "restore data"), record
    undone = [step["step"] for step in record["steps"] if step["outcome"] == "undone"]
    assert undone == ["undo restore data", "undo stop workers"], json.dumps(record["steps"], indent=1)


def test_a_data_rollback_of_workers_only_failing_after_its_switch_keeps_the_older_release_and_its_data(
    project: NotesProject,
) -> None:
    """The agent dies (kill -9) as the rollback starts to retire the newer slot, after the older
    one became the active slot: the older release's worker already writes on the restored data,
    so putting the pre-restore data back (as the unwind did) lost those writes and left that
    worker on the newer release's data. Past its switch the rollback keeps both and says so."""
    assert project.lockstep("agent", "stop").returncode == 0  # the app keeps running
    assert project.agent is not None
    project.agent.wait(timeout=30)
    project.env[KILL_AT_VARIABLE] = "drain green"  # the agent dies in the retire of slot green
    project.env[AGENT_WAIT_VARIABLE] = "0"  # and the rollback does not wait for it to come back
    project.start_agent()
    _wait_for_jobs(project, "2.0.0")

    completed = project.lockstep("rollback", "--with-data", "--yes")

    assert project.agent.wait(timeout=30) == -signal.SIGKILL, completed.err
    said = " ".join(completed.err.split())
    assert completed.returncode == ExitCode.FAILED, said
    assert "it serves on its restored data, but then the rollback failed" in said, said
    assert "put back" not in said, said
    assert "the agent stops slot green it left, all of it, within seconds" in said, said
    # The restored data stays, and the older release's worker goes on writing on it.
    notes = _notes(project)
    assert BEFORE_ROW in notes and MIGRATION_ROW not in notes, notes
    assert _query(project, "SELECT max(version) FROM schema_migrations") == [("002",)]
    _wait_for_jobs(project, "1.0.0")
    assert _jobs(project, "2.0.0") == 0
    record = project.history()[-1]
    assert (record["outcome"], record["data_restored"]) == ("failed", True), record
    assert not [step for step in record["steps"] if step["step"].startswith("undo ")], record["steps"]

    del project.env[KILL_AT_VARIABLE]
    project.start_agent()
    status = project.status()
    assert status["active_slot"] == "blue", status
    (worker,) = _running(status, "blue")
    assert worker["release"] == project.history()[0]["release_id"], worker
    assert _running(status, "green") == [], status
