"""`lockstep rollback --dry-run` in an environment with `hosts`: the plan of the rollback of every
host, from the orchestrator's history, with no host contacted and nothing changed.

No sshd: the history is written as the orchestrator writes it (MultiHostDeployment's records),
and each "host" is a listening socket that nobody answers: a connection the dry run made would
wait in its backlog. The real rollback, pointed at them, does connect (and fails its preflight),
which shows the sockets would have seen one. tests/deploy/test_multi_host.py checks over real
SSH that the plan names the target the rollback goes to."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lockstep.actions.environment import load_environment
from lockstep.pipeline.environment_lock import EnvironmentLock, LockHolder
from lockstep.pipeline.history import History, OperationRecord
from lockstep.pipeline.releases import new_deploy_id
from lockstep.repository.documents import DocumentStore
from lockstep.repository.repository import Repository
from lockstep.storage.location import open_backend
from tests.conftest import TEST_PASSWORD, Completed, run_lockstep

ORCHESTRATOR_CONFIG = """
default_environment = "test"
hosts = [
  {{ address = "127.0.0.1:{first}", project_dir = "/srv/notes-a" }},
  {{ address = "127.0.0.1:{second}", project_dir = "/srv/notes-b" }},
]

[repository]
url = "local:{repository}"
password_file = "{password_file}"

[ssh]
known_hosts = "{known_hosts}"
connect_timeout = 1
"""

FIRST_COMMIT = "1" * 40
SECOND_COMMIT = "2" * 40
SNAPSHOT = "5" * 64  # the primary's pre-deploy snapshot of the second deploy


@dataclass
class Orchestrator:
    directory: Path
    hosts: list[socket.socket]
    history: History
    repository: Path

    def lockstep(self, *args: str) -> Completed:
        return run_lockstep(list(args), cwd=self.directory, timeout=60)

    def host_names(self) -> list[str]:
        return [f"127.0.0.1:{host.getsockname()[1]}" for host in self.hosts]

    def connections(self) -> int:
        """Connections the hosts got (and take off their backlog)."""
        count = 0
        for host in self.hosts:
            while True:
                try:
                    connection, _ = host.accept()
                except BlockingIOError:
                    break
                connection.close()
                count += 1
        return count

    def deployed(self, commit: str, started_at: float, snapshot_id: str | None) -> OperationRecord:
        """A multi-host deploy as MultiHostDeployment records it once every host succeeded."""
        record = OperationRecord.started_now(
            new_deploy_id(commit, datetime.fromtimestamp(started_at, UTC)),
            "deploy",
            "test",
            ref="main",
            commit=commit,
            message=f"notes {commit[:1]}",
            release_id=None,
            hosts=[
                {"name": name, "role": "primary" if index == 0 else "secondary", "outcome": "succeeded"}
                for index, name in enumerate(self.host_names())
            ],
        )
        record.started_at = started_at
        record.release_id = record.id
        record.snapshot_id = snapshot_id
        record.outcome = "succeeded"
        record.finished_at = started_at + 5
        self.history.save(record)
        return record


@pytest.fixture
def orchestrator(tmp_path: Path) -> Iterator[Orchestrator]:
    hosts = []
    for _ in range(2):
        host = socket.socket()
        host.bind(("127.0.0.1", 0))
        host.listen(8)
        host.setblocking(False)
        hosts.append(host)
    password_file = tmp_path / "password"
    password_file.write_text(TEST_PASSWORD + "\n")
    password_file.chmod(0o600)
    (tmp_path / "known_hosts").write_text("")  # the real rollback connects, then finds no key
    directory = tmp_path / "orchestrator"
    directory.mkdir()
    (directory / "lockstep.toml").write_text(
        ORCHESTRATOR_CONFIG.format(
            first=hosts[0].getsockname()[1],
            second=hosts[1].getsockname()[1],
            repository=tmp_path / "repository",
            password_file=password_file,
            known_hosts=tmp_path / "known_hosts",
        )
    )
    initialized = run_lockstep(["repo", "init"], cwd=directory)
    assert initialized.returncode == 0, initialized.err
    history = History(load_environment(directory, None, "test").layout.history_database)
    try:
        yield Orchestrator(directory, hosts, history, tmp_path / "repository")
    finally:
        for host in hosts:
            host.close()


def _plan(orchestrator: Orchestrator, *arguments: str) -> dict[str, Any]:
    planned = orchestrator.lockstep("rollback", "--dry-run", "--json", *arguments)
    assert planned.returncode == 0, planned.err + planned.out
    document: dict[str, Any] = json.loads(planned.out)
    return document


def test_a_dry_run_of_several_hosts_plans_from_the_orchestrator_s_history(orchestrator: Orchestrator) -> None:
    now = time.time()
    first = orchestrator.deployed(FIRST_COMMIT, now - 100, snapshot_id="4" * 64)
    second = orchestrator.deployed(SECOND_COMMIT, now - 50, snapshot_id=SNAPSHOT)
    history_before = [record.to_document() for record in orchestrator.history.all()]
    primary, other = orchestrator.host_names()

    planned = orchestrator.lockstep("rollback", "--dry-run")
    assert planned.returncode == 0, planned.err + planned.out
    lines = planned.out.splitlines()
    assert lines[0].startswith(f"rollback test on 2 hosts over SSH, all or none, from release {second.id} "), (
        planned.out
    )
    assert f"to release {first.id} ({FIRST_COMMIT[:12]}, deploy {first.id})" in lines[0], planned.out
    assert lines[1] == f"hosts: {primary} (/srv/notes-a, primary), {other} (/srv/notes-b)", planned.out
    assert lines[2].startswith("1. preflight: reach every host over SSH (host keys checked against "), planned.out
    assert "2. lock environment test in the repository, once for every host (free now)" in lines, planned.out
    assert any(
        line.startswith(f"3. hosts: every host runs `lockstep rollback --to {first.id} --coordinated ID` at once")
        for line in lines
    ), planned.out
    assert any(line.startswith("4. switch: every host at its switch barrier -> go") for line in lines), planned.out
    assert any(
        line.startswith("5. retire: every host at its retire barrier -> go") and "keeps release" in line
        for line in lines
    ), planned.out
    assert lines[-1].startswith("on failure on any host before the retire go"), planned.out

    document = _plan(orchestrator)
    assert document["from"] == {"release_id": second.id, "commit": SECOND_COMMIT}
    assert document["to"] == {"release_id": first.id, "commit": FIRST_COMMIT, "operation_id": first.id}
    assert (document["environment"], document["component"], document["with_data"], document["data"]) == (
        "test",
        None,
        False,
        None,
    )
    assert document["hosts"] == [
        {"name": primary, "project_dir": "/srv/notes-a", "role": "primary"},
        {"name": other, "project_dir": "/srv/notes-b", "role": "secondary"},
    ]
    assert document["plan"] == lines
    assert len(document["steps"]) == 5

    # With the data: the snapshot the primary restores, and its `snapshot diff` shown before asking.
    with_data = orchestrator.lockstep("rollback", "--dry-run", "--with-data")
    assert with_data.returncode == 0, with_data.err + with_data.out
    assert (
        f"2. show what the restore discards: the primary {primary}'s `lockstep snapshot diff {SNAPSHOT[:8]}` over SSH"
        in with_data.out
    ), with_data.out
    assert f"the primary {primary} restores the shared databases from snapshot {SNAPSHOT[:8]} " in with_data.out
    assert "asks first (y)" in with_data.out
    assert f"4. hold: every host runs `lockstep rollback --to {first.id} --with-data --coordinated ID`" in with_data.out
    assert "holds its traffic" in with_data.out
    data = _plan(orchestrator, "--with-data", "--yes")
    assert (data["with_data"], data["data"]) == (True, {"snapshot_id": SNAPSHOT, "restored_by": primary})
    assert any("no question (--yes)" in step for step in data["steps"]), data["steps"]

    assert _plan(orchestrator, "--to", FIRST_COMMIT[:8])["to"]["release_id"] == first.id

    # The environment lock held by someone else: said, and not taken over.
    repository = Repository.open(open_backend(str(orchestrator.repository)), TEST_PASSWORD)
    lock = EnvironmentLock(DocumentStore(repository), "orchestrator", "test")
    lock.acquire(LockHolder.for_this_process("holding-for-the-test", "test", operation="deploy"))
    try:
        held = orchestrator.lockstep("rollback", "--dry-run")
        assert held.returncode == 0, held.err
        assert "(HELD NOW by " in held.out and "exits 4 unless --force" in held.out, held.out
    finally:
        lock.release()
        repository.close()

    # Nothing contacted, nothing written, no lock left.
    assert orchestrator.connections() == 0
    assert [record.to_document() for record in orchestrator.history.all()] == history_before
    status = orchestrator.lockstep("lock", "status", "--json")
    assert status.returncode == 0, status.err
    assert not any(item["locked"] for item in json.loads(status.out)), status.out

    # The real rollback, where the dry run did not go: it contacts the hosts (and fails there).
    real = orchestrator.lockstep("rollback", "--yes")
    assert real.returncode == 2, real.err
    assert "preflight failed" in real.err, real.err
    assert orchestrator.connections() >= 1


def test_a_dry_run_of_several_hosts_refuses_where_the_rollback_would(orchestrator: Orchestrator) -> None:
    now = time.time()
    nothing = orchestrator.lockstep("rollback", "--dry-run")
    assert nothing.returncode == 13, nothing.err  # no release at all, let alone one before the current
    assert "nothing is deployed in test, so there is no release to roll back to" in nothing.err, nothing.err
    # The rollback itself refuses alike, before contacting any host (it failed the hosts' preflight, exit 2).
    never = orchestrator.lockstep("rollback", "--yes")
    assert never.returncode == 13, never.err
    assert "nothing is deployed in test, so there is no release to roll back to" in never.err, never.err
    assert orchestrator.connections() == 0
    first = orchestrator.deployed(FIRST_COMMIT, now - 100, snapshot_id=None)
    first_only = orchestrator.lockstep("rollback", "--dry-run")
    assert first_only.returncode == 13, first_only.err  # the first deploy: nothing before it
    assert f"release {first.id} is the first release deployed in test, so there is no release" in first_only.err
    orchestrator.deployed(SECOND_COMMIT, now - 50, snapshot_id=None)  # deployed with --skip-backup

    # Refused before any host is contacted, by the rollback too: the same exit code.
    dry = orchestrator.lockstep("rollback", "--dry-run", "--component", "worker")
    real = orchestrator.lockstep("rollback", "--component", "worker")
    assert (dry.returncode, real.returncode) == (2, 2), dry.err + real.err
    assert "rolls back every component (no --component)" in dry.err
    assert orchestrator.connections() == 0

    assert orchestrator.lockstep("rollback", "--dry-run", "--to", "nothing-like-this").returncode == 13
    assert orchestrator.lockstep("rollback", "--dry-run", "3").returncode == 13
    assert orchestrator.lockstep("rollback", "--dry-run", "--to", SECOND_COMMIT[:8]).returncode == 2  # serving
    no_snapshot = orchestrator.lockstep("rollback", "--dry-run", "--with-data")
    assert no_snapshot.returncode == 2, no_snapshot.err
    assert f"there is no snapshot of the data as it was under {first.id}" in no_snapshot.err
    assert _plan(orchestrator)["to"]["release_id"] == first.id  # the code alone goes back
    assert orchestrator.connections() == 0


def test_a_dry_run_of_several_hosts_of_workers_only_holds_no_traffic(orchestrator: Orchestrator) -> None:
    """The app is workers only (no component with a port): each host's rollback --with-data stops
    its workers and holds no traffic, so the plan promised a hold that would not happen. An
    orchestrator's lockstep.toml without components says nothing of the app: the hold stays."""
    now = time.time()
    first = orchestrator.deployed(FIRST_COMMIT, now - 100, snapshot_id="4" * 64)
    orchestrator.deployed(SECOND_COMMIT, now - 50, snapshot_id=SNAPSHOT)
    config = orchestrator.directory / "lockstep.toml"
    config.write_text(config.read_text() + '\n[app.components.worker]\ncommand = "python3 jobs.py"\n')

    with_data = orchestrator.lockstep("rollback", "--dry-run", "--with-data", "--yes")

    assert with_data.returncode == 0, with_data.err + with_data.out
    for held in ("hold:", "holds its traffic", "the holds end", "holding"):
        assert held not in with_data.out, with_data.out
    lines = with_data.out.splitlines()
    assert any(
        line.startswith(
            f"4. stop workers: every host runs `lockstep rollback --to {first.id} --with-data --coordinated"
        )
        and "stops its workers (workers only: no traffic to hold)" in line
        for line in lines
    ), with_data.out
    assert "once every other host stopped its workers, the primary" in with_data.out, with_data.out
    assert "makes that slot the active one (workers only: no traffic to switch)" in with_data.out, with_data.out
    assert any(line.startswith("7. retire: every host at its retire barrier -> go: each retires") for line in lines)
    assert "the others keep their workers stopped while the primary puts the data back" in lines[-1], lines[-1]
    assert len(_plan(orchestrator, "--with-data", "--yes")["steps"]) == 7
    # Retire stops a slot's workers: no slot is warm, with or without data.
    code_only = orchestrator.lockstep("rollback", "--dry-run")
    assert code_only.returncode == 0, code_only.err + code_only.out
    for plan in (with_data.out, code_only.out):
        assert "warm or cold" not in plan and "(a cold start: a slot of workers only is never kept warm;" in plan, plan

    # A component with a port: the hold is back.
    config.write_text(config.read_text() + "ports = [9101, 9102]\n")
    web = orchestrator.lockstep("rollback", "--dry-run", "--with-data", "--yes")
    assert web.returncode == 0, web.err + web.out
    assert "holds its traffic" in web.out and "the holds end" in web.out, web.out
    assert "(its warm or cold slot;" in web.out, web.out
