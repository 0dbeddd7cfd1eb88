"""Multi-host deploys and rollbacks of an app made only of workers, over real SSH: two sshd
servers on loopback, each host with its own checkout, agent and worker processes, all writing to
one SQLite database (the shared data the primary alone snapshots and restores).

A workers-only app has no traffic to switch or hold: its slot becomes the active one, and what
keeps a data restore safe is that every host's newer workers are stopped before the primary
restores, and the older ones start only on the restored data."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lockstep.fault_injection import KILL_AT_VARIABLE
from lockstep.layout import EnvironmentLayout
from tests.deploy.conftest import NotesProject, _stop_everything
from tests.deploy.test_multi_host import Fleet, _make_fleet

pytestmark = pytest.mark.slow

WORKERS_CONFIG = """
# One name for the project in every checkout (orchestrator, host-0, host-1): its lock and snapshots.
project = "notes"
default_environment = "test"

[repository]
url = "local:{repository}"
password_file = "{password_file}"

[databases.main]
url = "sqlite:///{database}"

[app]
migrate = "python3 migrate.py"
env = {{ NOTES_DATABASE = "{database}", NOTES_HOST = "{host}", CRASH_FLAG = "{crash_flag}" }}

[app.components.worker]
command = "python3 jobs.py"

[traffic]
listen = "127.0.0.1:{listen}"
drain_timeout = 5

[deploy]
watch_seconds = {watch_seconds}
watch_failures = 2

[policy]
data_rollback = "auto"
"""

# A job worker: a row in `jobs` every 0.1 s naming its release and host. A release that has a
# CRASHES file dies once the test creates its host's crash flag (that release only: the older
# one runs on beside it until the retire, and must survive).
JOBS = """
import os, signal, sqlite3, sys, threading
from contextlib import closing
from pathlib import Path
from database import connect, database_path

HERE = Path(__file__).resolve().parent
RELEASE = (HERE / "VERSION").read_text().strip()
HOST = os.environ["NOTES_HOST"]
CRASHES = (HERE / "CRASHES").exists()
stopping = threading.Event()
signal.signal(signal.SIGTERM, lambda number, frame: stopping.set())
while not stopping.is_set():
    if CRASHES and Path(os.environ["CRASH_FLAG"]).exists():
        raise SystemExit("jobs: crashed on purpose")
    try:
        with closing(connect(database_path())) as connection:
            connection.execute("INSERT INTO jobs (release, host) VALUES (?, ?)", (RELEASE, HOST))
    except sqlite3.Error as error:
        print(f"jobs: {error}", file=sys.stderr, flush=True)
    stopping.wait(0.1)
"""

CREATE_JOBS = "CREATE TABLE jobs (id INTEGER PRIMARY KEY, release TEXT NOT NULL, host TEXT NOT NULL);\n"
MIGRATION_ROW = "written by migration 003"
BEFORE_ROW = "written before release 2.0.0"
HOSTS = ("host-0", "host-1")


@dataclass
class WorkersFleet:
    fleet: Fleet
    database: Path
    crash_flags: list[Path]

    @property
    def hosts(self) -> list[NotesProject]:
        return self.fleet.hosts

    def names(self) -> list[str]:
        return [f"127.0.0.1:{server.port}" for server in self.fleet.servers]

    def deploy(self) -> dict[str, Any]:
        deployed = self.fleet.lockstep("deploy", "--json")
        assert deployed.returncode == 0, deployed.stderr + deployed.stdout
        document: dict[str, Any] = json.loads(deployed.stdout)
        return document

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.database, timeout=10)) as connection:
            return connection.execute(sql).fetchall()

    def write(self, sql: str, *values: str) -> None:
        with contextlib.closing(sqlite3.connect(self.database, timeout=10, isolation_level=None)) as connection:
            connection.execute(sql, values)

    def jobs(self, release: str, host: str) -> int:
        return int(self.query(f"SELECT count(*) FROM jobs WHERE release = '{release}' AND host = '{host}'")[0][0])

    def notes(self) -> list[str]:
        return [row[0] for row in self.query("SELECT text FROM notes ORDER BY id")]

    def wait_for_jobs(self, release: str) -> None:
        """Until a worker of `release` on every host has written a row more than now."""
        before = {host: self.jobs(release, host) for host in HOSTS}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all(self.jobs(release, host) > count for host, count in before.items()):
                return
            time.sleep(0.1)
        raise AssertionError(f"not every host runs a worker of release {release} that writes jobs")


def _running(status: dict[str, Any], slot: str) -> list[dict[str, Any]]:
    return [item for item in status["slots"][slot]["processes"] if item["running"]]


def _running_anywhere(status: dict[str, Any]) -> list[dict[str, Any]]:
    return _running(status, "blue") + _running(status, "green")


def _only_worker(host: NotesProject, slot: str, release: str) -> dict[str, Any]:
    """The one worker running on `host`: in `slot`, the active one, of `release`; nothing else runs."""
    status = host.status()
    assert status["active_slot"] == slot, status
    running = _running(status, slot)
    assert [item["release"] for item in running] == [release], (host.directory.name, status["slots"])
    assert _running_anywhere(status) == running, (host.directory.name, status["slots"])
    return running[0]


def _make_workers_fleet(tmp_path: Path, watch_seconds: float, ssh_command_env: str = "") -> WorkersFleet:
    fleet = _make_fleet(tmp_path, watch_seconds=watch_seconds)
    repository = tmp_path / "repository"
    database = tmp_path / "shared-db" / "notes.db"
    flags = [tmp_path / f"crash-{name}" for name in HOSTS]
    for index, host in enumerate(fleet.hosts):
        (host.directory / "lockstep.toml").write_text(
            WORKERS_CONFIG.format(
                repository=repository,
                password_file=tmp_path / "password",
                database=database,
                host=HOSTS[index],
                crash_flag=flags[index],
                listen=host.listen_port,
                watch_seconds=watch_seconds,
            )
        )
    if ssh_command_env:
        config = fleet.orchestrator / "lockstep.toml"
        command = f'command = "{sys.executable} -m lockstep"'
        assert command in config.read_text()
        config.write_text(
            config.read_text().replace(command, f'command = "env {ssh_command_env} {sys.executable} -m lockstep"')
        )
    (fleet.orchestrator / "migrations" / "002_create_jobs.sql").write_text(CREATE_JOBS)
    fleet.commit_version("1.0.0", {"jobs.py": JOBS})
    return WorkersFleet(fleet=fleet, database=database, crash_flags=flags)


@dataclass
class FleetMaker:
    tmp_path: Path
    made: list[WorkersFleet]

    def __call__(
        self, watch_seconds: float = 1.0, ssh_command_env: str = "", agent_env: dict[int, dict[str, str]] | None = None
    ) -> WorkersFleet:
        workers = _make_workers_fleet(self.tmp_path, watch_seconds, ssh_command_env)
        self.made.append(workers)
        for index, host in enumerate(workers.hosts):
            host.env.update((agent_env or {}).get(index, {}))
            host.start_agent()
        return workers


@pytest.fixture
def make_workers_fleet(tmp_path: Path) -> Iterator[FleetMaker]:
    maker = FleetMaker(tmp_path, [])
    try:
        yield maker
    finally:
        for workers in maker.made:
            for host in workers.hosts:
                _stop_everything(host)
            for server in workers.fleet.servers:
                server.stop()


def test_deploy_and_rollback_of_workers_only_reach_every_host(make_workers_fleet: FleetMaker) -> None:
    workers = make_workers_fleet()
    first = workers.deploy()
    for host in workers.hosts:
        _only_worker(host, "blue", first["id"])
    workers.wait_for_jobs("1.0.0")

    workers.fleet.commit_version("2.0.0")
    second = workers.deploy()
    assert [(host["role"], host["outcome"]) for host in second["hosts"]] == [
        ("primary", "succeeded"),
        ("secondary", "succeeded"),
    ]
    # Each host: 2.0.0's worker runs in green, the active slot; 1.0.0's stopped with the retire.
    for host in workers.hosts:
        _only_worker(host, "green", second["id"])
    workers.wait_for_jobs("2.0.0")

    rolled = workers.fleet.lockstep("rollback", "--json")
    assert rolled.returncode == 0, rolled.stderr + rolled.stdout
    document = json.loads(rolled.stdout)
    assert document["release_id"] == first["id"], document
    assert [host["outcome"] for host in document["hosts"]] == ["succeeded", "succeeded"], document
    for host in workers.hosts:
        _only_worker(host, "blue", first["id"])
        record = host.history()[-1]
        assert (record["id"], record["operation"], record["outcome"]) == (document["id"], "rollback", "succeeded")
    workers.wait_for_jobs("1.0.0")
    assert workers.fleet.history()[-1]["outcome"] == "succeeded"


def _deploy_two_releases(workers: WorkersFleet) -> tuple[dict[str, Any], dict[str, Any]]:
    """1.0.0 (creates `jobs`), a row written under it, then 2.0.0, whose migration writes a row."""
    first = workers.deploy()
    workers.wait_for_jobs("1.0.0")
    workers.write("INSERT INTO notes (text) VALUES (?)", BEFORE_ROW)
    (workers.fleet.orchestrator / "migrations" / "003_seed.sql").write_text(
        f"INSERT INTO notes (text) VALUES ('{MIGRATION_ROW}');\n"
    )
    workers.fleet.commit_version("2.0.0")
    second = workers.deploy()
    workers.wait_for_jobs("2.0.0")
    return first, second


def _assert_older_workers_on_the_snapshot_s_data(workers: WorkersFleet, first: dict[str, Any]) -> None:
    """1.0.0's worker runs alone on every host, on the data of the snapshot: the migration's row
    is gone, and no job of 2.0.0 survived (its workers were stopped on every host before the
    restore, and none wrote after it)."""
    for host in workers.hosts:
        _only_worker(host, "blue", first["id"])
    workers.wait_for_jobs("1.0.0")
    notes = workers.notes()
    assert BEFORE_ROW in notes and MIGRATION_ROW not in notes, notes
    assert workers.query("SELECT max(version) FROM schema_migrations") == [("002",)]
    assert [workers.jobs("2.0.0", host) for host in HOSTS] == [0, 0]


def test_a_data_rollback_of_workers_only_stops_every_host_s_workers_before_the_restore(
    make_workers_fleet: FleetMaker,
) -> None:
    workers = make_workers_fleet()
    first, _ = _deploy_two_releases(workers)

    rolled = workers.fleet.lockstep("rollback", "--with-data", "--yes", "--json")

    assert rolled.returncode == 0, rolled.stderr + rolled.stdout
    document = json.loads(rolled.stdout)
    assert (document["release_id"], document["data_restored"]) == (first["id"], True), document
    assert [(host["outcome"], host["data_restored"]) for host in document["hosts"]] == [
        ("succeeded", True),
        ("succeeded", False),
    ], document
    for host in workers.hosts:
        record = host.history()[-1]
        steps = {step["step"]: step for step in record["steps"]}
        assert steps["stop workers"]["detail"] == "stopped worker", record["steps"]
        assert "hold traffic" not in steps, record["steps"]
    _assert_older_workers_on_the_snapshot_s_data(workers, first)
    assert workers.fleet.history()[-1]["data_restored"] is True


def _deploy_until_both_switched(workers: WorkersFleet) -> subprocess.Popen[str]:
    """A deploy with JSON progress, read until both hosts said they switched (in their watch)."""
    fleet = workers.fleet
    process = subprocess.Popen(
        [sys.executable, "-m", "lockstep", "deploy", "--json", "--log-format", "json"],
        cwd=fleet.orchestrator,
        env={**os.environ, **fleet.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    switched: set[str] = set()
    for line in process.stderr:
        message = str(json.loads(line).get("message", ""))
        if ": switch ok" in message:
            switched.add(message.split(": switch ok")[0])
            if len(switched) == 2:
                return process
    process.wait()
    raise AssertionError(f"the deploy ended (exit {process.returncode}) before both hosts switched")


def test_a_worker_crashing_in_one_host_s_watch_puts_every_host_back_on_the_older_workers(
    make_workers_fleet: FleetMaker,
) -> None:
    workers = make_workers_fleet(watch_seconds=8.0)
    first = workers.deploy()
    workers.wait_for_jobs("1.0.0")
    old_workers = [_only_worker(host, "blue", first["id"]) for host in workers.hosts]
    workers.fleet.commit_version("2.0.0", {"CRASHES": "yes\n"})

    deploy = _deploy_until_both_switched(workers)
    workers.crash_flags[1].write_text("now\n")  # 2.0.0's worker on the second host dies, in its watch
    stdout, stderr = deploy.communicate(timeout=120)

    assert deploy.returncode == 3, stderr + stdout
    document = json.loads(stdout)
    name = workers.names()[1]
    assert name in document["error"] and "watch" in document["error"], document["error"]
    assert [host["outcome"] for host in document["hosts"]] == ["rolled back", "rolled back"], document
    assert workers.hosts[1].history()[-1]["failed_step"] == "watch"
    # Every host: 1.0.0's worker is the very process that ran before, and nothing of 2.0.0 runs.
    for host, old in zip(workers.hosts, old_workers, strict=True):
        assert _only_worker(host, "blue", first["id"])["pid"] == old["pid"]
        assert host.history()[-1]["outcome"] == "rolled-back"
    workers.wait_for_jobs("1.0.0")
    record = workers.fleet.history()[-1]
    assert record["outcome"] == "rolled-back" and name in str(record["reason"]), record


def test_a_data_rollback_of_workers_only_failing_after_the_retire_go_keeps_the_restored_data(
    make_workers_fleet: FleetMaker,
) -> None:
    """The second host's agent dies (kill -9) as that host retires the newer slot, after every
    host switched and was told "go": past the point of no return. Nothing is undone anywhere."""
    workers = make_workers_fleet(
        ssh_command_env="LOCKSTEP_AGENT_WAIT=0",  # the host's rollback does not wait for its agent to come back
        agent_env={1: {KILL_AT_VARIABLE: "drain green"}},
    )
    first, second_release = _deploy_two_releases(workers)

    rolled = workers.fleet.lockstep("rollback", "--with-data", "--yes", "--json")

    assert rolled.returncode == 1, rolled.stderr + rolled.stdout
    second = workers.hosts[1]
    assert second.agent is not None and second.agent.wait(timeout=30) == -signal.SIGKILL
    document = json.loads(rolled.stdout)
    name = workers.names()[1]
    error = document["error"]
    assert "serves on every host, but did not finish everywhere" in error, error
    assert f"{name} serves it, but its retire did not finish" in error, error
    assert "nothing was undone" in error, error
    # Its agent is dead: the hint does not promise that it finishes the retire in seconds.
    assert f"{name} serves it, but its retire did not finish" in error and "ITS AGENT IS NOT RUNNING" in error
    assert document["hint"].startswith(f"start the agent on {name} (`lockstep agent --env test` there"), document
    assert [host["outcome"] for host in document["hosts"]] == ["succeeded", "kept, retire unfinished"], document
    # Forward only: the primary's restore stands, and the orchestrator's record says so.
    assert document["data_restored"] is True, document
    record = workers.fleet.history()[-1]
    assert (record["operation"], record["outcome"], record["failed_step"]) == ("rollback", "succeeded", "retire")
    assert record["data_restored"] is True and record["release_id"] == first["id"], record
    kept = second.history()[-1]
    assert (kept["id"], kept["outcome"]) == (document["id"], "succeeded"), kept
    assert kept["retire_left"] == {"slot": "green", "release_id": second_release["id"], "whole_slot": True}, kept
    # 1.0.0's workers write on every host (the second host's outlived its agent), on the restored data.
    workers.wait_for_jobs("1.0.0")
    notes = workers.notes()
    assert BEFORE_ROW in notes and MIGRATION_ROW not in notes, notes

    # Once the second host's agent runs again, it finishes the retire the rollback left.
    del second.env[KILL_AT_VARIABLE]
    second.start_agent()
    deadline = time.monotonic() + 20
    while second.history()[-1]["retire_left"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert second.history()[-1]["retire_left"] is None, second.history()[-1]
    _assert_older_workers_on_the_snapshot_s_data(workers, first)


def test_a_data_rollback_of_workers_only_failing_on_the_primary_puts_back_the_data_without_older_writes(
    make_workers_fleet: FleetMaker,
) -> None:
    """The primary's 1.0.0 worker dies in its health gate, after the restore, while the second
    host's 1.0.0 worker already writes on the restored data. The primary puts the data back as it
    was before the rollback; the second host's 1.0.0 worker must be stopped before that, or what
    it writes lands in the data 2.0.0 goes on with."""
    workers = make_workers_fleet()
    first, second = _deploy_two_releases(workers)
    primary = workers.hosts[0]
    layout = EnvironmentLayout(primary.directory / ".lockstep" / "state" / "test", "test")
    (layout.release_directory(first["id"]) / "jobs.py").write_text("import time\ntime.sleep(1)\nraise SystemExit(1)\n")
    older_jobs = {host: workers.jobs("1.0.0", host) for host in HOSTS}

    rolled = workers.fleet.lockstep("rollback", "--with-data", "--yes", "--json")

    assert rolled.returncode == 3, rolled.stderr + rolled.stdout
    document = json.loads(rolled.stdout)
    assert [host["outcome"] for host in document["hosts"]] == ["rolled back", "rolled back"], document
    assert document["data_restored"] is False, document
    for host in workers.hosts:
        _only_worker(host, "green", second["id"])
    workers.wait_for_jobs("2.0.0")
    assert MIGRATION_ROW in workers.notes()
    assert workers.query("SELECT max(version) FROM schema_migrations") == [("003",)]
    assert {host: workers.jobs("1.0.0", host) for host in HOSTS} == older_jobs


def test_a_host_whose_newer_workers_do_not_start_again_after_a_failed_data_rollback_says_so(
    make_workers_fleet: FleetMaker,
) -> None:
    """A live rollback --with-data that unwinds (the primary's older worker dies in its health
    gate, as above) and on the second host the newer release's worker, stopped for the restore,
    does not start again (it exits at once). The orchestrator's report names that host's stopped
    workers and says its agent tries again; that host's `status --json` has `paused_workers`."""
    workers = make_workers_fleet()
    first, second = _deploy_two_releases(workers)
    primary, other = workers.hosts
    older = EnvironmentLayout(primary.directory / ".lockstep" / "state" / "test", "test")
    (older.release_directory(first["id"]) / "jobs.py").write_text("import time\ntime.sleep(1)\nraise SystemExit(1)\n")
    newer = EnvironmentLayout(other.directory / ".lockstep" / "state" / "test", "test")
    (newer.release_directory(second["id"]) / "jobs.py").write_text("raise SystemExit('jobs: refuses to start')\n")

    rolled = workers.fleet.lockstep("rollback", "--with-data", "--yes", "--json")

    assert rolled.returncode == 1, rolled.stderr + rolled.stdout
    document = json.loads(rolled.stdout)
    name = workers.names()[1]
    assert f"{name}: ITS WORKERS worker OF SLOT green ARE STOPPED: they did not start again" in document["error"]
    assert "its agent tries again" in document["error"], document["error"]
    summary = {host["name"]: host for host in document["hosts"]}
    assert summary[name]["paused_workers"]["components"] == ["worker"], summary
    assert summary[workers.names()[0]]["paused_workers"] is None, summary
    # That host says so too, and its agent tries again (and fails: the worker still refuses).
    (paused,) = other.status()["paused_workers"]
    assert (paused["slot"], paused["release_id"], paused["components"]) == ("green", second["id"], ["worker"])
    assert "jobs: refuses to start" in paused["restart_failed"], paused
    assert paused["kept_stopped"] is None, paused
    deadline = time.monotonic() + 30
    while not (mark := other.history()[-1]["paused_workers"]).get("attempts"):
        assert time.monotonic() < deadline, mark
        time.sleep(0.3)
    # The primary's newer worker runs again, on the data as it was before the rollback.
    assert [item["release"] for item in _running(primary.status(), "green")] == [second["id"]]
    assert workers.fleet.history()[-1]["outcome"] == "failed"
