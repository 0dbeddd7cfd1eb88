"""Multi-host deploys over real SSH: two "hosts" are two sshd servers on loopback, each with its
own checkout, lockstep.toml, agent, proxy and app processes; one repository path shared by all,
as an S3 bucket would be. The orchestrator is a third checkout, the one commits are made in: the
hosts never see its git history except through the bundle it sends."""

from __future__ import annotations

import contextlib
import getpass
import http.client
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from lockstep.agent.client import AgentClient
from lockstep.fault_injection import KILL_AT_VARIABLE, WAIT_AT_VARIABLE, WAIT_FOR_VARIABLE, WAITING_SUFFIX
from lockstep.layout import EnvironmentLayout
from lockstep.traffic.hold import HoldOwner
from tests.conftest import TEST_PASSWORD
from tests.deploy.conftest import NOTES, NotesProject, _stop_everything, free_ports
from tests.deploy.sshd import SshServer, client_key, require_sshd, start_sshd
from tests.deploy.writing_workers import (
    CREATE_JOBS,
    JOBS,
    SEED,
    jobs_component,
    lost_writes,
    record_once_unpaused,
    wait_for_file,
    wait_for_writes,
    writes_between,
)

HOST_CONFIG = """
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
env = {{ NOTES_DATABASE = "{database}", NOTES_WORKER_INTERVAL = "1", NOTES_CACHE_WARMUP_DELAY = "0" }}

[app.components.web]
command = "python3 app.py"
ports = [{blue}, {green}]
health = {{ http = "/health", body_contains = "ok", passes = 2, interval = 0.2, start_timeout = 10 }}

[app.components.worker]
command = "python3 worker.py"
depends_on = ["web"]

[traffic]
listen = "127.0.0.1:{listen}"
drain_timeout = 5

[deploy]
watch_seconds = {watch_seconds}
watch_failures = 3
{smoke}

[policy]
data_rollback = "auto"
"""

ORCHESTRATOR_CONFIG = """
# One name for the project in every checkout (orchestrator, host-0, host-1): its lock and snapshots.
project = "notes"
default_environment = "test"
hosts = [
{hosts}
]

[repository]
url = "local:{repository}"
password_file = "{password_file}"

[ssh]
user = "{user}"
identity_file = "{identity}"
known_hosts = "{known_hosts}"
connect_timeout = 10
command = "{python} -m lockstep"
"""


@dataclass
class Fleet:
    orchestrator: Path
    hosts: list[NotesProject]
    servers: list[SshServer]
    known_hosts: Path
    env: dict[str, str]

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=Test", "-c", "user.email=test@example.invalid", *args],
            cwd=self.orchestrator,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def commit_version(self, version: str, extra: dict[str, str] | None = None) -> str:
        (self.orchestrator / "VERSION").write_text(version + "\n")
        for name, text in (extra or {}).items():
            (self.orchestrator / name).write_text(text)
        self.git("add", "-A")
        self.git("commit", "-qm", f"notes {version}")
        return self.git("rev-parse", "HEAD")

    def lockstep(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lockstep", *args],
            cwd=self.orchestrator,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def history(self) -> list[dict[str, object]]:
        completed = self.lockstep("history", "--json")
        assert completed.returncode == 0, completed.stderr
        records: list[dict[str, object]] = json.loads(completed.stdout)
        return records


def _make_fleet(
    tmp_path: Path,
    smoke_on_second: str = "",
    watch_seconds: float = 1.0,
    session_environment: dict[int, dict[str, str]] | None = None,
) -> Fleet:
    """The fleet; `session_environment` adds variables to the SSH sessions of the host of that index."""
    require_sshd()
    repository = tmp_path / "repository"
    password_file = tmp_path / "password"
    password_file.write_text(TEST_PASSWORD + "\n")
    password_file.chmod(0o600)
    database = tmp_path / "shared-db" / "notes.db"
    database.parent.mkdir()
    orchestrator = tmp_path / "orchestrator"
    shutil.copytree(NOTES, orchestrator, ignore=shutil.ignore_patterns("demo", ".lockstep", "__pycache__"))
    env = {"LOCKSTEP_SCRYPT_N": "1024", "COLUMNS": "200"}
    key = client_key(tmp_path)
    ports = free_ports(2 + 3 * 2)
    servers = [
        start_sshd(tmp_path / f"sshd-{index}", ports[index], key, (session_environment or {}).get(index))
        for index in range(2)
    ]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("".join(server.known_hosts_line() for server in servers))
    subprocess.run(["git", "init", "-q"], cwd=orchestrator, check=True)
    fleet = Fleet(orchestrator=orchestrator, hosts=[], servers=servers, known_hosts=known_hosts, env=env)
    (orchestrator / "lockstep.toml").write_text(
        ORCHESTRATOR_CONFIG.format(
            hosts="\n".join(
                f'  {{ address = "127.0.0.1:{server.port}", project_dir = "{tmp_path / f"host-{index}"}" }},'
                for index, server in enumerate(servers)
            ),
            repository=repository,
            password_file=password_file,
            user=getpass.getuser(),
            identity=key,
            known_hosts=known_hosts,
            python=sys.executable,
        )
    )
    fleet.commit_version("1.0.0")
    initialized = fleet.lockstep("repo", "init")
    assert initialized.returncode == 0, initialized.stderr
    for index in range(2):
        directory = tmp_path / f"host-{index}"
        subprocess.run(["git", "clone", "-q", str(orchestrator), str(directory)], check=True)
        listen, blue, green = ports[2 + 3 * index : 5 + 3 * index]
        (directory / "lockstep.toml").write_text(
            HOST_CONFIG.format(
                repository=repository,
                password_file=password_file,
                database=database,
                blue=blue,
                green=green,
                listen=listen,
                watch_seconds=watch_seconds,
                smoke=smoke_on_second if index == 1 else "",
            )
        )
        host = NotesProject(directory=directory, env=dict(env), listen_port=listen, web_ports=[blue, green])
        fleet.hosts.append(host)
    return fleet


FleetFactory = Callable[..., Fleet]


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator[FleetFactory]:
    """Makes the fleet (smoke_on_second, watch_seconds, session_environment, agent_environment:
    variables of the agent of the host of that index), its agents running; stops it all after."""
    made: list[Fleet] = []

    def make(
        smoke_on_second: str = "",
        watch_seconds: float = 1.0,
        session_environment: dict[int, dict[str, str]] | None = None,
        agent_environment: dict[int, dict[str, str]] | None = None,
    ) -> Fleet:
        fleet = _make_fleet(tmp_path, smoke_on_second, watch_seconds, session_environment)
        made.append(fleet)
        for index, host in enumerate(fleet.hosts):
            host.agent_env = (agent_environment or {}).get(index, {})
            host.start_agent()
        return fleet

    try:
        yield make
    finally:
        for fleet in made:
            for host in fleet.hosts:
                _stop_everything(host)
            for server in fleet.servers:
                server.stop()


def _deploy_ok(fleet: Fleet) -> dict[str, object]:
    deployed = fleet.lockstep("deploy", "--json")
    assert deployed.returncode == 0, deployed.stderr + deployed.stdout
    document: dict[str, object] = json.loads(deployed.stdout)
    return document


def test_a_deploy_reaches_every_host_and_both_serve_it(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory()
    first = _deploy_ok(fleet)
    assert [host.version() for host in fleet.hosts] == ["1.0.0", "1.0.0"]
    commit = fleet.commit_version("1.0.1")  # only the orchestrator has it: it goes over as a bundle
    second = _deploy_ok(fleet)
    assert second["commit"] == commit and second["id"] != first["id"]
    assert [host.version() for host in fleet.hosts] == ["1.0.1", "1.0.1"]
    hosts = second["hosts"]
    assert isinstance(hosts, list)
    assert [(host["role"], host["outcome"]) for host in hosts] == [("primary", "succeeded"), ("secondary", "succeeded")]
    # The primary alone took the pre-deploy snapshot and ran the migrations.
    primary, secondary = (host.history()[-1] for host in fleet.hosts)
    assert primary["id"] == secondary["id"] == second["id"]
    assert primary["snapshot_id"] and primary["migrations_ran"]
    assert not secondary["snapshot_id"] and not secondary["migrations_ran"]
    assert fleet.history()[-1]["outcome"] == "succeeded"
    # `lockstep status` here asks every host over SSH.
    status = fleet.lockstep("status", "--json")
    assert status.returncode == 0, status.stderr
    hosts_status = json.loads(status.stdout)["hosts"]
    assert [(host["release"], host["commit"]) for host in hosts_status] == [(second["id"], commit)] * 2
    text = fleet.lockstep("status").stdout
    assert text.count(f"release {second['id']}") == 2, text


def _deploy_saying(fleet: Fleet) -> list[str]:
    """A deploy that succeeds; the info lines of its progress (JSON lines on stderr)."""
    deployed = fleet.lockstep("deploy", "--json", "--log-format", "json")
    assert deployed.returncode == 0, deployed.stderr + deployed.stdout
    events = [json.loads(line) for line in deployed.stderr.splitlines() if line.startswith("{")]
    return [str(event["message"]) for event in events if event.get("event") == "info"]


def _sent(said: list[str], fleet: Fleet, index: int) -> str:
    """What the deploy's progress says it sent to that host."""
    prefix = f"host 127.0.0.1:{fleet.servers[index].port}: sent commit "
    lines = [line for line in said if line.startswith(prefix)]
    assert len(lines) == 1, said
    return lines[0][len(prefix) :]


def test_a_host_with_an_earlier_commit_is_sent_only_what_is_new(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory()
    checked_out = fleet.git("rev-parse", "HEAD")  # each host's checkout has it (its HEAD)
    first = fleet.commit_version("1.0.1")
    said = _deploy_saying(fleet)
    for index in range(2):
        assert _sent(said, fleet, index).startswith(f"{first[:12]} ("), said
        assert _sent(said, fleet, index).endswith(f", only what is new since {checked_out[:12]})"), said
    assert [host.version() for host in fleet.hosts] == ["1.0.1", "1.0.1"]
    # Next time, since what the last deploy fetched (refs/lockstep/deployed; HEAD is older still).
    second = fleet.commit_version("1.0.2", {"CHANGES": "1.0.2: a new file\n"})
    said = _deploy_saying(fleet)
    for index in range(2):
        assert _sent(said, fleet, index).startswith(f"{second[:12]} ("), said
        assert _sent(said, fleet, index).endswith(f", only what is new since {first[:12]})"), said
    assert [host.version() for host in fleet.hosts] == ["1.0.2", "1.0.2"]
    for host in fleet.hosts:
        assert (host.directory / ".lockstep" / "incoming").is_dir()
        assert not list((host.directory / ".lockstep" / "incoming").iterdir())  # no bundle left behind


def _host_git(host: NotesProject, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=Host", "-c", "user.email=host@example.invalid", "-C", str(host.directory), *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_a_host_without_a_usable_earlier_commit_gets_the_whole_history(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory()
    first, second = fleet.hosts
    # The first host's checkout went its own way, and its deployed ref points there: commits this
    # machine does not have, so nothing to send only what is new since.
    _host_git(first, "commit", "--allow-empty", "-qm", "made on the host")
    _host_git(first, "update-ref", "refs/lockstep/deployed", "HEAD")
    # The second host is a shallow clone (`--depth 1`) of 1.0.1, and the deploy brings the merge of
    # a branch forked before it: what is new since 1.0.1 needs the fork point, which it lacks.
    fork = fleet.git("rev-parse", "HEAD")
    fleet.git("checkout", "-qb", "feature")
    (fleet.orchestrator / "FEATURE").write_text("a feature\n")
    fleet.git("add", "-A")
    fleet.git("commit", "-qm", "a feature")
    fleet.git("checkout", "-q", "-")
    shallow_at = fleet.commit_version("1.0.1")
    clone = second.directory.parent / "shallow-clone"
    subprocess.run(
        ["git", "clone", "-q", "--depth", "1", "--no-checkout", f"file://{fleet.orchestrator}", str(clone)], check=True
    )
    shutil.rmtree(second.directory / ".git")
    (clone / ".git").rename(second.directory / ".git")
    _host_git(second, "reset", "-q")
    assert _host_git(second, "rev-parse", "HEAD") == shallow_at
    assert subprocess.run(["git", "-C", str(second.directory), "cat-file", "-e", fork]).returncode != 0
    fleet.git("merge", "-q", "--no-ff", "feature", "-m", "merge the feature")
    shipped = fleet.commit_version("1.0.2")
    said = _deploy_saying(fleet)
    assert [host.version() for host in fleet.hosts] == ["1.0.2", "1.0.2"]
    assert _sent(said, fleet, 0).startswith(f"{shipped[:12]} (the whole history, "), said
    assert _sent(said, fleet, 0).endswith(")") and "only what is new" not in _sent(said, fleet, 0), said
    fallback = _sent(said, fleet, 1)
    assert fallback.startswith(f"{shipped[:12]} (the whole history, "), said
    assert f"only what is new since {shallow_at[:12]} did not fetch" in fallback, said
    assert "prerequisite" in fallback, said  # git's own reason
    for host in fleet.hosts:
        assert _host_git(host, "rev-parse", "refs/lockstep/deployed") == shipped


def test_a_release_failing_smoke_on_one_host_switches_neither(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(smoke_on_second='smoke = [{ command = "test ! -e BREAKS_SECOND_HOST" }]')
    _deploy_ok(fleet)
    fleet.commit_version("1.0.1", {"BREAKS_SECOND_HOST": "yes\n"})
    failed = fleet.lockstep("deploy", "--json")
    assert failed.returncode == 3, failed.stderr + failed.stdout
    document = json.loads(failed.stdout)
    second = fleet.hosts[1]
    assert f"127.0.0.1:{fleet.servers[1].port}" in document["error"] and "smoke" in document["error"]
    # Neither host switched: both serve the old release, over HTTP.
    assert [host.version() for host in fleet.hosts] == ["1.0.0", "1.0.0"]
    outcomes = {host["name"]: host["outcome"] for host in document["hosts"]}
    assert outcomes == {
        f"127.0.0.1:{fleet.servers[0].port}": "rolled back",
        f"127.0.0.1:{fleet.servers[1].port}": "rolled back",
    }
    record = fleet.history()[-1]
    assert record["outcome"] == "rolled-back"
    assert "smoke" in str(record["reason"]) and f"127.0.0.1:{fleet.servers[1].port}" in str(record["reason"])
    primary_record = fleet.hosts[0].history()[-1]
    assert primary_record["outcome"] == "rolled-back" and primary_record["failed_step"] == "switch barrier"
    assert second.history()[-1]["failed_step"] == "smoke"


def _deploy_until_both_switched(fleet: Fleet, *options: str) -> subprocess.Popen[str]:
    """A deploy of a new commit, read until both hosts said they switched (in their watch window)."""
    fleet.commit_version("1.0.1")
    process = subprocess.Popen(
        [sys.executable, "-m", "lockstep", "deploy", "--log-format", "json", *options],
        cwd=fleet.orchestrator,
        env={**os.environ, **fleet.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    switched: set[str] = set()
    for line in process.stderr:
        event = json.loads(line)
        message = str(event.get("message", ""))
        if event.get("event") == "info" and ": switch ok" in message:
            switched.add(message.split(": switch ok")[0])
            if len(switched) == 2:
                break
    else:
        process.wait()
        raise AssertionError(f"the deploy ended (exit {process.returncode}) before both hosts switched")
    assert [host.version() for host in fleet.hosts] == ["1.0.1", "1.0.1"]
    return process


def _finished_records(fleet: Fleet) -> list[dict[str, object]]:
    """Each host's record of the last deploy, once each host finished it (unwinding on its own)."""
    deadline = time.monotonic() + 90
    while True:
        records = [host.history()[-1] for host in fleet.hosts]
        if all(record["outcome"] != "running" for record in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def test_an_orchestrator_killed_mid_deploy_leaves_no_host_switched(fleet_factory: FleetFactory) -> None:
    """SIGKILL: no abort is ever sent; each host reads the end of its SSH session at its retire
    barrier, and undoes its deploy on its own."""
    fleet = fleet_factory(watch_seconds=4.0)
    _deploy_ok(fleet)
    process = _deploy_until_both_switched(fleet)
    process.send_signal(signal.SIGKILL)
    process.wait()
    records = _finished_records(fleet)
    assert [record["outcome"] for record in records] == ["rolled-back", "rolled-back"], records
    assert all(record["failed_step"] == "retire barrier" for record in records)
    assert [host.version() for host in fleet.hosts] == ["1.0.0", "1.0.0"]


def _host_deploy_pid(directory: Path) -> int:
    """The PID of the host's part of a coordinated deploy (its `lockstep deploy --coordinated`)."""
    listed = subprocess.run(["pgrep", "-f", "lockstep deploy .*--coordinated"], capture_output=True, text=True)
    for pid in listed.stdout.split():
        with contextlib.suppress(OSError):
            if Path(os.readlink(f"/proc/{pid}/cwd")) == directory:
                return int(pid)
    raise AssertionError(f"no coordinated deploy runs in {directory}")


def _parked_clean_up(go_ahead: Path) -> dict[str, str]:
    """The agent's variables that park its watch for dead operations until `go_ahead` exists: the
    clean-up of a killed host's part is left to whoever else runs it (the orchestrator)."""
    return {WAIT_AT_VARIABLE: "abandoned watch", WAIT_FOR_VARIABLE: str(go_ahead)}


def _undone_by_the_orchestrator(fleet: Fleet, document: dict[str, Any], go_ahead: Path, release: object) -> None:
    """The second host's lockstep was killed before its retire go, its agent's watch parked: the
    orchestrator ran its clean-up (`lockstep status` there) before saying every host undid its part,
    and said so; the host serves `release` again as the first does, its record done when the
    orchestrator ended (nobody else cleaned it up)."""
    assert go_ahead.with_name(go_ahead.name + WAITING_SUFFIX).is_file()  # the watch is parked
    name = f"127.0.0.1:{fleet.servers[1].port}"
    error = str(document["error"])
    assert "killed by SIGKILL" in error and "every host undid its part" in error, error
    assert f"{name}'s clean-up, run from here, confirmed its undo" in error, error
    assert f"it serves release {release} (its clean-up switched it back)" in error, error
    undo = document["hosts"][1]["undo"]
    assert (undo["state"], undo["release"]) == ("undone", release), undo
    assert document["hosts"][0]["undo"] is None  # it undid its part itself, and said so
    killed = fleet.hosts[1].history()[-1]
    assert killed["id"] == document["id"], killed
    assert killed["outcome"] == "interrupted" and "switched back to release" in str(killed["reason"]), killed
    versions = [host.version() for host in fleet.hosts]
    assert versions[0] == versions[1], versions
    assert fleet.hosts[1].status()["release"] == fleet.hosts[0].status()["release"] == release


def test_a_host_killed_after_its_switch_before_the_go_switches_back_with_the_others(
    fleet_factory: FleetFactory, tmp_path: Path
) -> None:
    """kill -9 of the second host's lockstep in its watch window, both hosts switched: the
    orchestrator has the first undo its part. The second's agent cleaned up by keeping the new
    release (it had the traffic), so the hosts served different releases; it switches back. And
    the orchestrator said every host undid its part before the second's clean-up ran (its agent's,
    seconds later; with the agent down, none): it runs that clean-up itself (its agent's watch
    parked here), and says so only once it confirmed it."""
    go_ahead = tmp_path / "agent-clean-up-go"
    fleet = fleet_factory(watch_seconds=6.0, agent_environment={1: _parked_clean_up(go_ahead)})
    try:
        first = _deploy_ok(fleet)
        process = _deploy_until_both_switched(fleet, "--json")
        os.kill(_host_deploy_pid(fleet.hosts[1].directory), signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=180)
        assert process.returncode == 3, stderr
        _undone_by_the_orchestrator(fleet, json.loads(stdout), go_ahead, first["id"])
        assert [host.version() for host in fleet.hosts] == ["1.0.0", "1.0.0"]
    finally:
        go_ahead.touch()


def test_a_rollback_host_killed_after_its_switch_before_the_go_switches_back_with_the_others(
    fleet_factory: FleetFactory, tmp_path: Path
) -> None:
    """The same for a rollback: the second host's `lockstep rollback` kills itself once switched
    to 1.0.0, before its retire go; the first switches back to 1.0.1, and the orchestrator's
    clean-up on the second (its agent's watch parked) switches it back too."""
    go_ahead = tmp_path / "agent-clean-up-go"
    fleet = fleet_factory(
        session_environment={1: {KILL_AT_VARIABLE: "rollback before the retire go"}},
        agent_environment={1: _parked_clean_up(go_ahead)},
    )
    try:
        _deploy_ok(fleet)
        fleet.commit_version("1.0.1")
        second = _deploy_ok(fleet)
        rolled = fleet.lockstep("rollback", "--json")
        assert rolled.returncode == 3, rolled.stderr + rolled.stdout
        document = json.loads(rolled.stdout)
        assert document["operation"] == "rollback" and document["outcome"] == "failed"
        _undone_by_the_orchestrator(fleet, document, go_ahead, second["id"])
        assert [host.version() for host in fleet.hosts] == ["1.0.1", "1.0.1"]
    finally:
        go_ahead.touch()


def test_a_killed_host_whose_agent_is_down_may_still_serve_the_new_release(
    fleet_factory: FleetFactory, tmp_path: Path
) -> None:
    """The second host's lockstep and then its agent killed in its watch window: nothing there can
    undo its part (the clean-up needs the agent), so the orchestrator must not say every host
    undid its part: it says that host may still serve the new release and what to run there
    (exit 1). Once its agent runs again, its clean-up switches it back."""
    go_ahead = tmp_path / "agent-clean-up-go"
    fleet = fleet_factory(watch_seconds=6.0, agent_environment={1: _parked_clean_up(go_ahead)})
    second = fleet.hosts[1]
    try:
        first = _deploy_ok(fleet)
        process = _deploy_until_both_switched(fleet, "--json")
        os.kill(_host_deploy_pid(second.directory), signal.SIGKILL)
        assert second.agent is not None
        second.agent.kill()
        second.agent.wait(timeout=30)
        stdout, stderr = process.communicate(timeout=240)
        assert process.returncode == 1, stderr
        document = json.loads(stdout)
        name = f"127.0.0.1:{fleet.servers[1].port}"
        error = str(document["error"])
        assert "not every host confirmed its undo" in error and "every host undid its part" not in error, error
        assert f"{name}: its agent is not running" in error, error
        assert f"HOST {name} MAY STILL SERVE release {document['id']}: run `lockstep status --env test` there" in error
        assert document["hosts"][1]["undo"]["state"] == "unconfirmed", document["hosts"]
        assert fleet.history()[-1]["outcome"] == "failed"
    finally:
        go_ahead.touch()
    second.agent_env = {}
    second.start_agent()  # its watch cleans up the dead deploy within seconds
    deadline = time.monotonic() + 60
    while second.history()[-1]["outcome"] == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "switched back to release" in str(second.history()[-1]["reason"])
    assert [host.version() for host in fleet.hosts] == ["1.0.0", "1.0.0"]
    assert second.status()["release"] == first["id"]


def test_one_host_s_dropped_connection_unwinds_every_host(fleet_factory: FleetFactory) -> None:
    """The second host's SSH session dies (its sshd connection process killed): the orchestrator
    aborts the first; the second, cut off, undoes its own deploy at its retire barrier."""
    fleet = fleet_factory(watch_seconds=4.0)
    _deploy_ok(fleet)
    process = _deploy_until_both_switched(fleet, "--json")
    sessions = subprocess.run(
        ["pgrep", "-P", str(fleet.servers[1].process.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert sessions, "no SSH session to the second host"
    for pid in sessions:
        os.kill(int(pid), signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=120)
    # Cut off, it could not say it undid its part: asked again over a new connection, it did.
    assert process.returncode == 3, stderr
    document = json.loads(stdout)
    second = f"127.0.0.1:{fleet.servers[1].port}"
    assert second in document["error"] and "SSH connection was lost" in document["error"]
    assert f"{second}'s clean-up, run from here, confirmed its undo" in document["error"]
    assert [host["outcome"] for host in document["hosts"]] == ["rolled back", "lost"]
    assert document["hosts"][1]["undo"]["state"] == "undone"
    records = _finished_records(fleet)
    assert [record["outcome"] for record in records] == ["rolled-back", "rolled-back"], records
    assert [host.version() for host in fleet.hosts] == ["1.0.0", "1.0.0"]


def test_a_host_failing_after_the_retire_go_keeps_the_release_every_host_serves(fleet_factory: FleetFactory) -> None:
    """Past the retire "go" the first host retires its old slot: the second host, whose last lock
    check fails (its path to the shared repository vanished), must not undo its part alone,
    which would leave the hosts on different releases. It keeps the new release, and the
    orchestrator says the deploy serves everywhere but did not finish on it (exit 1)."""
    fleet = fleet_factory(watch_seconds=4.0)
    second = fleet.hosts[1]
    repository = fleet.orchestrator.parent / "repository"
    link = fleet.orchestrator.parent / "repository-of-second-host"
    link.symlink_to(repository)
    config = second.directory / "lockstep.toml"
    config.write_text(config.read_text().replace(f"local:{repository}", f"local:{link}"))
    first = _deploy_ok(fleet)
    process = _deploy_until_both_switched(fleet, "--json")
    link.unlink()  # in the watch window: the second host's lock check after the retire go fails
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    document = json.loads(stdout)
    name = f"127.0.0.1:{fleet.servers[1].port}"
    assert "serves on every host, but did not finish everywhere" in document["error"], document["error"]
    assert f"{name} serves it, but its retire did not finish" in document["error"]
    assert [host["outcome"] for host in document["hosts"]] == ["succeeded", "kept, retire unfinished"]
    assert [host.version() for host in fleet.hosts] == ["1.0.1", "1.0.1"]
    record = fleet.history()[-1]
    assert (record["outcome"], record["failed_step"], record["release_id"]) == ("succeeded", "retire", record["id"])
    assert record["id"] != first["id"]
    kept = second.history()[-1]
    assert kept["id"] == record["id"] and kept["outcome"] == "succeeded"
    assert kept["failed_step"] == "retire barrier" and "nothing was undone" in str(kept["reason"])
    _retire_finished_by_the_agent(second)


def _retire_finished_by_the_agent(host: NotesProject) -> None:
    """The host kept its last operation's release without finishing its retire: its agent stops
    the workers of the slot it left within seconds, keeps its web warm, and says so in the record."""
    kept = host.history()[-1]
    left = "green" if kept["slot"] == "blue" else "blue"
    agent = AgentClient(EnvironmentLayout(host.directory / ".lockstep" / "state" / "test", "test").agent_socket, "test")

    def running() -> set[str]:
        processes = agent.status()["slots"][left]["processes"]
        return {str(process["component"]) for process in processes if process["running"]}

    deadline = time.monotonic() + 30
    while (host.history()[-1]["retire_left"] or "worker" in running()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert running() == {"web"}
    finished = host.history()[-1]
    assert finished["retire_left"] is None, finished
    assert f"its retire was finished afterwards (stopped worker in slot {left})" in str(finished["reason"])
    assert host.status()["active_slot"] == kept["slot"]  # `status` there finds nothing more to do


def test_an_orchestrator_interrupted_after_the_retire_go_undoes_nothing(fleet_factory: FleetFactory) -> None:
    """Ctrl-C once the hosts heard the retire "go": they finish forward on their own, so the
    orchestrator must not report that every host undid its part. It waits for them, and the
    deploy stands, as a one-machine deploy interrupted once finished does."""
    fleet = fleet_factory(watch_seconds=2.0)
    _deploy_ok(fleet)
    process = _deploy_until_both_switched(fleet, "--json")
    assert process.stderr is not None
    for line in process.stderr:
        if ": retire barrier ok" in str(json.loads(line).get("message", "")):
            process.send_signal(signal.SIGINT)  # a host heard the go: the orchestrator sent it to every host
            break
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "nothing is undone; waiting for the hosts to finish" in stderr
    document = json.loads(stdout)
    assert [host["outcome"] for host in document["hosts"]] == ["succeeded", "succeeded"]
    assert [host.version() for host in fleet.hosts] == ["1.0.1", "1.0.1"]
    assert fleet.history()[-1]["outcome"] == "succeeded"
    assert [record["outcome"] for record in _finished_records(fleet)] == ["succeeded", "succeeded"]


def test_an_unknown_host_key_is_refused(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory()
    fleet.known_hosts.write_text(fleet.servers[0].known_hosts_line())  # the second host's key is not there
    refused = fleet.lockstep("deploy", "--json")
    assert refused.returncode == 2, refused.stderr
    error = json.loads(refused.stdout)["error"]
    assert f"host 127.0.0.1:{fleet.servers[1].port}" in error and "host key is not trusted" in error
    assert "refusing to connect" in error
    assert all(host.history() == [] for host in fleet.hosts)  # nothing started anywhere
    planned = fleet.lockstep("deploy", "--dry-run")  # contacts nobody
    assert planned.returncode == 0, planned.stderr
    assert "on 2 hosts over SSH, all or none" in planned.stdout
    # It tells that every host holds its traffic and stops its workers while the primary restores the data.
    plan = json.loads(fleet.lockstep("deploy", "--dry-run", "--json").stdout)["plan"]
    holds = [line for line in plan if line.startswith("data on unwind:")]
    assert len(holds) == 1 and "EVERY HOST HOLDS ITS TRAFFIC" in holds[0] and "hold_timeout" in holds[0], plan
    assert "AND STOPS THE OLD RELEASE'S WORKERS" in holds[0] and "starts those workers again" in holds[0]
    assert "a host that cannot hold or stop its workers stops the restore" in holds[0]
    assert "THE DATA WAS NOT RESTORED" in holds[0]
    skipping = fleet.lockstep("deploy", "--dry-run", "--skip-migrations").stdout
    assert "data on unwind: no restore (--skip-migrations), so no host holds its traffic or stops" in skipping


def _name_project(host: NotesProject, line: str) -> None:
    """Put `line` (a `project = ...` line, or "" for none) in place of the host's `project` line."""
    config = host.directory / "lockstep.toml"
    kept = [kept for kept in config.read_text().splitlines(keepends=True) if not kept.startswith("project = ")]
    config.write_text(line + "".join(kept))


def test_a_host_with_another_project_name_is_refused_before_anything_changes(fleet_factory: FleetFactory) -> None:
    """The hosts find the orchestrator's lock (and the primary's snapshots) by the project's name.
    A host whose name differs, here its directory's (host-1) for want of a `project` key, is
    refused in the preflight of a deploy and of a rollback, naming both names and the fix."""
    fleet = fleet_factory()
    second = fleet.hosts[1]
    _name_project(second, "")
    refused = fleet.lockstep("deploy", "--json")
    assert refused.returncode == 2, refused.stderr + refused.stdout
    error = json.loads(refused.stdout)["error"]
    assert f"host 127.0.0.1:{fleet.servers[1].port} uses project name 'host-1', this machine 'notes'" in error
    assert 'set the same `project = "notes"` at the top of lockstep.toml on every host and here' in error
    assert f"127.0.0.1:{fleet.servers[0].port}" not in error  # the first host agrees
    # Nothing changed anywhere: no operation on a host, nothing served, no snapshot, the lock free.
    assert all(host.history() == [] for host in fleet.hosts)
    assert not any(host.status().get("active_slot") for host in fleet.hosts)
    snapshots = fleet.lockstep("repo", "snapshots", "--json")
    assert snapshots.returncode == 0 and json.loads(snapshots.stdout) == [], snapshots.stderr
    locks = fleet.lockstep("lock", "status", "--json")
    assert locks.returncode == 0 and not any(lock["locked"] for lock in json.loads(locks.stdout)), locks.stdout
    # A rollback asks the same of every host before it takes the lock.
    _name_project(second, 'project = "notes"\n')
    _deploy_ok(fleet)
    fleet.commit_version("1.0.1")
    second_deploy = _deploy_ok(fleet)
    _name_project(second, 'project = "shop"\n')
    refused = fleet.lockstep("rollback", "--json")
    assert refused.returncode == 2, refused.stderr + refused.stdout
    error = json.loads(refused.stdout)["error"]
    assert f"host 127.0.0.1:{fleet.servers[1].port} uses project name 'shop', this machine 'notes'" in error
    assert [host.version() for host in fleet.hosts] == ["1.0.1", "1.0.1"]
    assert [host.history()[-1]["id"] for host in fleet.hosts] == [second_deploy["id"]] * 2


def test_a_rollback_goes_back_on_every_host_or_is_refused(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory()
    first = _deploy_ok(fleet)
    fleet.commit_version("1.0.1")
    second = _deploy_ok(fleet)
    planned = fleet.lockstep("rollback", "--dry-run", "--json")  # from this history, no host contacted
    assert planned.returncode == 0, planned.stderr + planned.stdout
    plan = json.loads(planned.stdout)
    assert (plan["from"]["release_id"], plan["to"]["release_id"]) == (second["id"], first["id"])
    rolled = fleet.lockstep("rollback", "--json")
    assert rolled.returncode == 0, rolled.stderr + rolled.stdout
    document = json.loads(rolled.stdout)
    assert document["release_id"] == first["id"]  # where the plan said
    assert [host["outcome"] for host in document["hosts"]] == ["succeeded", "succeeded"]
    assert [host.version() for host in fleet.hosts] == ["1.0.0", "1.0.0"]
    assert [host.history()[-1]["id"] for host in fleet.hosts] == [document["id"]] * 2
    # One host moved on its own: the fleet is not rolled back as one until it agrees again.
    moved = fleet.hosts[0].lockstep("deploy", "refs/lockstep/deployed", "--json")  # 1.0.1, as sent
    assert moved.returncode == 0, moved.err
    refused = fleet.lockstep("rollback", "--json")
    assert refused.returncode == 2, refused.stderr
    assert "the hosts serve different releases" in json.loads(refused.stdout)["error"]
    assert [host.version() for host in fleet.hosts] == ["1.0.1", "1.0.0"]


def test_a_rollback_host_failing_after_the_retire_go_keeps_the_release_every_host_serves(
    fleet_factory: FleetFactory,
) -> None:
    """The second host switches back to the warm 1.0.0 with the first, is told "go" at its retire
    barrier, and then cannot restart 1.0.0's worker. Undoing its part alone would put it back on
    1.0.1 while the first serves 1.0.0: it keeps 1.0.0 like the first, and the orchestrator says
    the rollback serves everywhere but did not finish on it (exit 1), as for a deploy."""
    fleet = fleet_factory()
    first = _deploy_ok(fleet)
    fleet.commit_version("1.0.1")
    _deploy_ok(fleet)
    second = fleet.hosts[1]
    layout = EnvironmentLayout(second.directory / ".lockstep" / "state" / "test", "test")
    (layout.release_directory(first["id"]) / "worker.py").write_text("raise SystemExit('no worker today')\n")
    rolled = fleet.lockstep("rollback", "--json")
    assert rolled.returncode == 1, rolled.stderr + rolled.stdout
    document = json.loads(rolled.stdout)
    name = f"127.0.0.1:{fleet.servers[1].port}"
    assert "serves on every host, but did not finish everywhere" in document["error"], document["error"]
    assert f"{name} serves it, but its retire did not finish" in document["error"]
    assert [host["outcome"] for host in document["hosts"]] == ["succeeded", "kept, retire unfinished"]
    assert [host.version() for host in fleet.hosts] == ["1.0.0", "1.0.0"]
    record = fleet.history()[-1]
    assert (record["operation"], record["outcome"], record["failed_step"]) == ("rollback", "succeeded", "retire")
    assert record["release_id"] == first["id"]
    kept = second.history()[-1]
    assert kept["id"] == record["id"] and kept["outcome"] == "succeeded" and kept["failed_step"] == "code"
    assert "nothing was undone" in str(kept["reason"])
    assert "agent finishes its retire within seconds" in document["hint"]
    _retire_finished_by_the_agent(second)


def test_a_coordinated_deploy_runs_only_under_its_orchestrator_s_lock(notes_project: NotesProject) -> None:
    """A host told to join a deploy whose lock is not in its repository changes nothing."""
    refused = notes_project.lockstep("deploy", "HEAD", "--coordinated", "20261123_000000_abc", "--yes", "--json")
    assert refused.returncode == 4, refused.err
    error = json.loads(refused.out)["error"]
    assert "is not the coordinating deploy 20261123_000000_abc's: it is free" in error
    assert notes_project.status()["agent"]["running"] and not notes_project.status().get("active_slot")


@dataclass
class Post:
    text: str
    sent_at: float  # wall clock, comparable with the agents' event times and snapshot times
    answered_at: float
    status: int


class NoteWriter:
    """POST /notes to one host every `interval` seconds, each in a thread and on a connection of its
    own, without waiting for the earlier ones: held requests do not stop new ones being sent."""

    def __init__(self, port: int, interval: float = 0.1) -> None:
        self.port = port
        self.interval = interval
        self.posts: list[Post] = []
        self.failures: list[str] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sender = threading.Thread(target=self._send_all, daemon=True)

    def __enter__(self) -> NoteWriter:
        self._sender.start()
        return self

    def __exit__(self, *exception: object) -> None:
        self._stopping.set()
        self._sender.join(timeout=10)
        for thread in self._threads:
            thread.join(timeout=150)

    def _send_all(self) -> None:
        count = 0
        while not self._stopping.wait(self.interval):
            count += 1
            thread = threading.Thread(target=self._post, args=(f"secondary {count}",), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _post(self, text: str) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        sent_at = time.time()
        try:
            payload = json.dumps({"text": text}).encode()
            connection.request("POST", "/notes", body=payload, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            with self._lock:
                self.posts.append(Post(text, sent_at, time.time(), response.status))
        except (OSError, http.client.HTTPException) as error:
            with self._lock:
                self.failures.append(f"{type(error).__name__}: {error}")
        finally:
            connection.close()


def _agent_events(host: NotesProject, kind: str) -> list[float]:
    database = host.directory / ".lockstep" / "state" / "test" / "agent.db"
    with contextlib.closing(sqlite3.connect(database)) as connection:
        return [at for (at,) in connection.execute("SELECT at FROM events WHERE kind = ? ORDER BY id", (kind,))]


def _snapshot_times(host: NotesProject, kind: str) -> list[float]:
    listed = host.lockstep("snapshot", "list", "--json")
    assert listed.returncode == 0, listed.err
    return [
        datetime.fromisoformat(item["created"].replace("Z", "+00:00")).timestamp()
        for item in json.loads(listed.out)
        if item["kind"] == kind
    ]


def _add_ballast(database: Path, megabytes: int) -> None:
    """A table of random bytes, so that snapshotting and restoring the database take a while."""
    with contextlib.closing(sqlite3.connect(database)) as connection:
        connection.execute("CREATE TABLE ballast (chunk BLOB)")
        connection.executemany("INSERT INTO ballast VALUES (randomblob(65536))", [()] * (megabytes * 16))
        connection.commit()


def test_no_host_serves_while_the_primary_restores_the_data(fleet_factory: FleetFactory) -> None:
    """The second host fails its smoke test after the primary migrated: the primary restores the
    data, and meanwhile the second host, whose old release never stopped serving, holds its
    traffic. Writes sent to it during the restore wait and land in the restored database; none is
    acknowledged and then thrown away by the restore (without the hold, those are lost)."""
    fleet = fleet_factory(smoke_on_second='smoke = [{ command = "test ! -e BREAKS_SECOND_HOST" }]')
    for host in fleet.hosts:  # the restore runs for seconds: the held requests must not time out
        config = host.directory / "lockstep.toml"
        config.write_text(config.read_text().replace("drain_timeout = 5\n", "drain_timeout = 5\nhold_timeout = 120\n"))
    _deploy_ok(fleet)
    database = fleet.orchestrator.parent / "shared-db" / "notes.db"
    _add_ballast(database, 48)
    shutil.copytree(NOTES / "demo" / "v2", fleet.orchestrator, dirs_exist_ok=True)  # migration 002
    fleet.commit_version("2.0.0", {"BREAKS_SECOND_HOST": "yes\n"})
    primary, second = fleet.hosts
    with NoteWriter(second.listen_port) as writer:
        failed = fleet.lockstep("deploy", "--json")
    assert failed.returncode == 3, failed.stderr + failed.stdout
    document = json.loads(failed.stdout)
    assert [host["outcome"] for host in document["hosts"]] == ["rolled back", "rolled back"], document
    assert document["hosts"][0]["data_restored"] is True and document["data_restored"] is True
    assert [host.version() for host in fleet.hosts] == ["1.0.0", "1.0.0"]

    restore_started = _snapshot_times(primary, "pre-restore")[-1]
    restore_ended = _agent_events(primary, "traffic-released")[-1]
    assert writer.failures == [] and {post.status for post in writer.posts} == {201}
    notes = set(primary.notes())
    acknowledged_since = [post for post in writer.posts if post.answered_at >= restore_started]
    assert acknowledged_since, "no write to the second host was acknowledged after the restore began"
    lost = [post.text for post in acknowledged_since if post.text not in notes]
    assert lost == [], f"{len(lost)} acknowledged writes were lost by the restore"
    sent_during = [post for post in writer.posts if restore_started <= post.sent_at <= restore_ended]
    assert sent_during, "the writer sent nothing to the second host during the restore"
    assert all(post.answered_at >= restore_ended for post in sent_during)
    held, released = _agent_events(second, "traffic-held")[-1], _agent_events(second, "traffic-released")[-1]
    assert held < restore_started and restore_ended <= released  # the second host held all along
    assert second.history()[-1]["outcome"] == "rolled-back"


def test_a_host_that_cannot_hold_its_traffic_keeps_the_data_as_migrated(fleet_factory: FleetFactory) -> None:
    """The second host fails its smoke test after the primary migrated, and its traffic cannot be
    held: another process holds it already, so its switch refuses a second hold. The primary must
    not restore the data while that host's old release serves (its writes would be thrown away):
    it keeps the migrated data and says so loudly, with the snapshot to restore by hand."""
    fleet = fleet_factory(smoke_on_second='smoke = [{ command = "test ! -e BREAKS_SECOND_HOST" }]')
    _deploy_ok(fleet)
    shutil.copytree(NOTES / "demo" / "v2", fleet.orchestrator, dirs_exist_ok=True)  # migration 002: a column
    fleet.commit_version("2.0.0", {"BREAKS_SECOND_HOST": "yes\n"})
    primary, second = fleet.hosts
    layout = EnvironmentLayout(second.directory / ".lockstep" / "state" / "test", "test")
    agent = AgentClient(layout.agent_socket, "test")
    assert agent.hold(HoldOwner.this_process(), 300, 5)["held"]
    try:
        failed = fleet.lockstep("deploy", "--json")
    finally:
        agent.release()
    assert failed.returncode == 3, failed.stderr + failed.stdout
    document = json.loads(failed.stdout)
    name = f"127.0.0.1:{fleet.servers[1].port}"
    assert "THE DATA WAS NOT RESTORED: not every host held its traffic" in document["error"], document["error"]
    assert f"{name} (its traffic could not be held: " in document["error"]
    assert "the traffic is already held by pid" in document["error"]
    assert [(host["outcome"], host["data_restored"]) for host in document["hosts"]] == [
        ("rolled back", False),
        ("rolled back", False),
    ]
    assert document["data_restored"] is False
    # The primary said why, and how to restore once no host serves: its pre-deploy snapshot.
    snapshot = primary.history()[-1]["snapshot_id"]
    assert isinstance(snapshot, str) and snapshot
    assert "THE DATA WAS NOT RESTORED" in failed.stderr
    assert f"lockstep snapshot restore {snapshot[:8]}" in failed.stderr
    # The old release serves on every host, on the migrated data (migration 002's column stays).
    assert [host.version() for host in fleet.hosts] == ["1.0.0", "1.0.0"]
    columns = [str(row[1]) for row in _shared_rows(fleet) if row[0] == "notes" and isinstance(row[1], tuple)]
    assert columns and "tags" in columns[0], columns
    assert [host.history()[-1]["data_restored"] for host in fleet.hosts] == [False, False]


def _writing_workers_fleet(fleet_factory: FleetFactory, wait_at: str) -> tuple[Fleet, list[Path], Path]:
    """Two hosts whose release 1.0.0 runs a worker writing to the shared database (each its own
    log), then a commit 2.0.0 whose migration writes and whose smoke test fails on the second host;
    the hosts' lockstep wait at `wait_at` for the go-ahead file returned."""
    fleet = fleet_factory(smoke_on_second='smoke = [{ command = "test ! -e BREAKS_SECOND_HOST" }]')
    logs = [fleet.orchestrator.parent / f"jobs-{index}.log" for index in range(2)]
    for index, host in enumerate(fleet.hosts):
        config = host.directory / "lockstep.toml"
        jobs = jobs_component(f"host-{index}", logs[index])
        config.write_text(config.read_text().replace("[traffic]", jobs + "\n[traffic]"))
    fleet.commit_version("1.0.0", {"jobs.py": JOBS, "migrations/002_create_jobs.sql": CREATE_JOBS})
    _deploy_ok(fleet)
    for index, log in enumerate(logs):
        wait_for_writes(log, f"host-{index}", "1.0.0", after=0)
    go = fleet.orchestrator.parent / "go-ahead"
    orchestrator_config = fleet.orchestrator / "lockstep.toml"
    orchestrator_config.write_text(
        orchestrator_config.read_text().replace(
            f'command = "{sys.executable} -m lockstep"',
            f"command = \"env {WAIT_AT_VARIABLE}='{wait_at}' {WAIT_FOR_VARIABLE}={go} LOCKSTEP_AGENT_WAIT=0 "
            f'{sys.executable} -m lockstep"',
        )
    )
    fleet.commit_version("2.0.0", {"BREAKS_SECOND_HOST": "yes\n", "migrations/003_seed.sql": SEED})
    return fleet, logs, go


def _start_failing_deploy(fleet: Fleet) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lockstep", "deploy", "--json", "--log-format", "json"],
        cwd=fleet.orchestrator,
        env={**os.environ, **fleet.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_no_host_s_workers_write_while_the_primary_restores_the_data(fleet_factory: FleetFactory) -> None:
    """The second host fails its smoke test after the primary migrated: the primary restores the
    data. The old release's workers, which ran on both hosts all through the deploy and take no
    requests (a traffic hold does not stop them), write a row every 0.05 s: they must be stopped on
    every host before the restore, and started again after it. The primary waits inside its
    restore (a fault-injection wait point) while the test looks at what they write."""
    fleet, logs, go = _writing_workers_fleet(fleet_factory, "restore data")
    process = _start_failing_deploy(fleet)
    try:
        wait_for_file(go.with_name(go.name + WAITING_SUFFIX), process)  # the primary, in its restore
        window_start = time.time()
        time.sleep(2)  # 40 writes' worth on each host
        window_end = time.time()
        go.touch()
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    for index, log in enumerate(logs):
        written = writes_between(log, "1.0.0", window_start, window_end)
        assert written == [], f"host-{index}: {len(written)} writes of the old workers during the data restore: {err}"
    assert process.returncode == 3, err + out
    document = json.loads(out)
    assert [(host["outcome"], host["data_restored"]) for host in document["hosts"]] == [
        ("rolled back", True),
        ("rolled back", False),
    ], document
    assert "every host holds its traffic and has stopped its workers; restoring the data" in err, err
    database = fleet.orchestrator.parent / "shared-db" / "notes.db"
    ended = time.time()
    for index, (host, log) in enumerate(zip(fleet.hosts, logs, strict=True)):
        wait_for_writes(log, f"host-{index}", "1.0.0", after=ended)  # they run again, on the restored data
        assert lost_writes(log, "1.0.0", window_start, database) == [], f"host-{index}"
        slot = host.status()["slots"]["blue"]
        assert {item["component"] for item in slot["processes"] if item["running"]} == {"web", "worker", "jobs"}
    assert [host.version() for host in fleet.hosts] == ["1.0.0", "1.0.0"]


def test_a_host_whose_workers_cannot_be_stopped_keeps_the_data_as_migrated(fleet_factory: FleetFactory) -> None:
    """The second host fails its smoke test after the primary migrated, and its agent dies just
    before it stops its workers for the primary's restore: those workers (no longer supervised)
    may write on. As for a host that cannot hold its traffic, the primary does not restore: it
    keeps the migrated data, says so loudly, and starts its own workers again."""
    fleet, logs, go = _writing_workers_fleet(fleet_factory, "stop workers")
    primary, second = fleet.hosts
    name = f"127.0.0.1:{fleet.servers[1].port}"
    process = _start_failing_deploy(fleet)
    assert process.stderr is not None
    said: list[str] = []
    try:
        for line in process.stderr:  # the second host unwound its part: it is at its wait point
            said.append(line)
            if f"{name}: undo release ok" in line:
                break
        assert second.agent is not None
        second.agent.kill()
        second.agent.wait()
        go.touch()
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    err = "".join(said) + err
    assert process.returncode == 3, err + out
    document = json.loads(out)
    assert "THE DATA WAS NOT RESTORED: not every host held its traffic and stopped its workers" in document["error"]
    assert f"{name} (ITS WORKERS MAY STILL RUN: stopping them failed: " in document["error"], document["error"]
    assert [host["data_restored"] for host in document["hosts"]] == [False, False]
    assert "THE WORKERS OF THE PREVIOUS RELEASE MAY STILL RUN" in err
    snapshot = primary.history()[-1]["snapshot_id"]
    assert isinstance(snapshot, str) and f"lockstep snapshot restore {snapshot[:8]}" in err
    database = fleet.orchestrator.parent / "shared-db" / "notes.db"
    with contextlib.closing(sqlite3.connect(database)) as connection:  # migration 003's row stays
        seeded = connection.execute("SELECT count(*) FROM notes WHERE text = 'written by migration 003'").fetchone()
    assert seeded == (1,)
    # The primary stopped its own workers for a restore that did not come, and started them again.
    wait_for_writes(logs[0], "host-0", "1.0.0", after=time.time())
    assert primary.version() == "1.0.0"


def _fail_the_primary_s_smoke_test_too(fleet: Fleet) -> None:
    """2.0.0 has BREAKS_SECOND_HOST: the primary fails its smoke test, before the second host was started."""
    config = fleet.hosts[0].directory / "lockstep.toml"
    smoke = 'smoke = [{ command = "test ! -e BREAKS_SECOND_HOST" }]'
    config.write_text(config.read_text().replace("watch_failures = 3\n", f"watch_failures = 3\n{smoke}\n"))


def test_a_primary_failing_before_the_other_hosts_start_restores_the_data_while_they_hold(
    fleet_factory: FleetFactory,
) -> None:
    """The primary migrates, then fails its own smoke test (a broken release), before the second
    host was started. The orchestrator starts that host only to hold its traffic and stop its
    workers, and the primary restores the data meanwhile, as on one machine: none of the second
    host's writes lands during the restore (it once restored under that host's writing workers,
    then kept the migrated data instead). The primary waits inside its restore (a fault-injection
    wait point) while the test looks at what the workers write."""
    fleet, logs, go = _writing_workers_fleet(fleet_factory, "restore data")
    _fail_the_primary_s_smoke_test_too(fleet)
    process = _start_failing_deploy(fleet)
    try:
        wait_for_file(go.with_name(go.name + WAITING_SUFFIX), process)  # the primary, in its restore
        window_start = time.time()
        time.sleep(2)  # 40 writes' worth on each host
        window_end = time.time()
        go.touch()
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    for index, log in enumerate(logs):
        written = writes_between(log, "1.0.0", window_start, window_end)
        assert written == [], f"host-{index}: {len(written)} writes of the old workers during the data restore: {err}"
    assert process.returncode == 3, err + out
    document = json.loads(out)
    assert "THE DATA WAS NOT RESTORED" not in document["error"], document["error"]
    assert [(host["outcome"], host["data_restored"]) for host in document["hosts"]] == [
        ("rolled back", True),
        ("not deployed (held for the data restore)", False),
    ], document
    assert "every host holds its traffic and has stopped its workers; restoring the data" in err, err
    database = fleet.orchestrator.parent / "shared-db" / "notes.db"
    with contextlib.closing(sqlite3.connect(database)) as connection:  # migration 003's row is gone
        seeded = connection.execute("SELECT count(*) FROM notes WHERE text = 'written by migration 003'").fetchone()
    assert seeded == (0,)
    ended = time.time()
    for index, log in enumerate(logs):
        wait_for_writes(log, f"host-{index}", "1.0.0", after=ended)  # they run again, on the restored data
        assert lost_writes(log, "1.0.0", window_start, database) == [], f"host-{index}"
    second = fleet.hosts[1]
    held, released = _agent_events(second, "traffic-held")[-1], _agent_events(second, "traffic-released")[-1]
    assert held < window_start and window_end <= released  # the second host held all through the restore
    assert second.history()[-1]["outcome"] == "rolled-back"
    assert second.history()[-1]["paused_workers"] is None  # its workers run again
    assert [host.version() for host in fleet.hosts] == ["1.0.0", "1.0.0"]


def test_a_host_never_started_that_cannot_hold_keeps_the_data_as_migrated(fleet_factory: FleetFactory) -> None:
    """As above, but the second host's traffic cannot be held (another process holds it already):
    its old release would serve during the restore, so the data stays as migrated, loudly."""
    fleet, logs, _ = _writing_workers_fleet(fleet_factory, "no such point")
    _fail_the_primary_s_smoke_test_too(fleet)
    second = fleet.hosts[1]
    layout = EnvironmentLayout(second.directory / ".lockstep" / "state" / "test", "test")
    agent = AgentClient(layout.agent_socket, "test")
    assert agent.hold(HoldOwner.this_process(), 300, 5)["held"]
    try:
        failed = fleet.lockstep("deploy", "--json")
    finally:
        agent.release()
    assert failed.returncode == 3, failed.stderr + failed.stdout
    document = json.loads(failed.stdout)
    name = f"127.0.0.1:{fleet.servers[1].port}"
    assert "THE DATA WAS NOT RESTORED: not every host held its traffic and stopped its workers" in document["error"]
    assert f"{name} (its traffic could not be held: " in document["error"], document["error"]
    assert [(host["outcome"], host["data_restored"]) for host in document["hosts"]] == [
        ("rolled back", False),
        ("not deployed (held for the data restore)", False),
    ], document
    database = fleet.orchestrator.parent / "shared-db" / "notes.db"
    with contextlib.closing(sqlite3.connect(database)) as connection:  # migration 003's row stays
        seeded = connection.execute("SELECT count(*) FROM notes WHERE text = 'written by migration 003'").fetchone()
    assert seeded == (1,)
    wait_for_writes(logs[1], "host-1", "1.0.0", after=time.time())  # its workers run again
    assert [host.version() for host in fleet.hosts] == ["1.0.0", "1.0.0"]


def _shared_rows(fleet: Fleet) -> list[tuple[object, ...]]:
    """Every row of every table of the database the hosts share, with each table's columns."""
    database = fleet.orchestrator.parent / "shared-db" / "notes.db"
    with contextlib.closing(sqlite3.connect(database)) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows: list[tuple[object, ...]] = []
        for table in sorted(tables):
            rows.append((table, tuple(row[1] for row in connection.execute(f'PRAGMA table_info("{table}")'))))
            rows.extend((table, *row) for row in connection.execute(f'SELECT * FROM "{table}" ORDER BY 1'))
        return rows


def test_a_rollback_with_data_brings_back_code_and_data_on_every_host_or_on_none(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory()
    primary, second = fleet.hosts
    first = _deploy_ok(fleet)
    primary.add_note("from v1")
    rows_v1 = _shared_rows(fleet)
    shutil.copytree(NOTES / "demo" / "v2", fleet.orchestrator, dirs_exist_ok=True)  # migration 002: a column
    fleet.commit_version("2.0.0")
    _deploy_ok(fleet)
    second.add_note("from v2, lost by the rollback with data")
    rows_v2 = _shared_rows(fleet)

    # The second host's 1.0.0 is cold and never listens: it fails after the primary restored the
    # data, before any host switched. Every host stays on 2.0.0, on its data, put back.
    layout = EnvironmentLayout(second.directory / ".lockstep" / "state" / "test", "test")
    agent = AgentClient(layout.agent_socket, "test")
    idle = next(slot for slot, state in second.status()["slots"].items() if slot != second.status()["active_slot"])
    app = layout.release_directory(first["id"]) / "app.py"
    working = app.read_text()
    agent.stop_slot(idle)
    app.write_text("import time\ntime.sleep(3600)\n")
    failed = fleet.lockstep("rollback", "--with-data", "--yes", "--json")
    assert failed.returncode == 3, failed.stderr + failed.stdout
    document = json.loads(failed.stdout)
    assert "is not healthy" in document["error"], document
    assert [host.version() for host in fleet.hosts] == ["2.0.0", "2.0.0"]
    assert _shared_rows(fleet) == rows_v2
    primary_record = primary.history()[-1]
    assert primary_record["pre_restore_snapshot_id"] and "the data was put back" in primary_record["reason"]
    assert second.history()[-1]["failed_step"] == "code"
    # The orchestrator's record says what the primary's does: restored, then put back.
    assert (document["data_restored"], document["pre_restore_snapshot_id"]) == (
        False,
        primary_record["pre_restore_snapshot_id"],
    )

    # Once the release can start, the rollback brings back 1.0.0 and its data on every host.
    app.write_text(working)
    rolled = fleet.lockstep("rollback", "--with-data", "--yes", "--json")
    assert rolled.returncode == 0, rolled.stderr + rolled.stdout
    assert "discards" in rolled.stderr and "notes" in rolled.stderr  # the primary's snapshot diff, shown
    document = json.loads(rolled.stdout)
    assert document["release_id"] == first["id"] and document["data_restored"] is True
    assert fleet.history()[-1]["data_restored"] is True
    assert "succeeded +data" in fleet.lockstep("history").stdout  # as for a one-machine rollback
    assert [(host["outcome"], host["data_restored"]) for host in document["hosts"]] == [
        ("succeeded", True),
        ("succeeded", False),
    ]
    assert [host.version() for host in fleet.hosts] == ["1.0.0", "1.0.0"]
    assert _shared_rows(fleet) == rows_v1
    assert "from v2, lost by the rollback with data" not in second.notes()
    assert all(host.history()[-1]["traffic_held_seconds"] for host in fleet.hosts)


def test_a_data_rollback_host_failing_after_the_retire_go_keeps_the_restored_data(
    fleet_factory: FleetFactory,
) -> None:
    """A rollback --with-data whose second host, told "go" at its retire barrier, cannot restart
    1.0.0's worker: past the point of no return, on the data the primary restored. Nothing is
    undone anywhere (putting the data back would lose what 1.0.0 wrote on every host since, and
    leave this host's 2.0.0 on the older data): the restored data stays, every host serves 1.0.0,
    the held traffic is let go, and the orchestrator says what is left (exit 1)."""
    fleet = fleet_factory()
    primary, second = fleet.hosts
    first = _deploy_ok(fleet)
    primary.add_note("from v1")
    rows_v1 = _shared_rows(fleet)
    shutil.copytree(NOTES / "demo" / "v2", fleet.orchestrator, dirs_exist_ok=True)  # migration 002: a column
    fleet.commit_version("2.0.0")
    _deploy_ok(fleet)
    second.add_note("from v2, lost by the rollback with data")
    layout = EnvironmentLayout(second.directory / ".lockstep" / "state" / "test", "test")
    (layout.release_directory(first["id"]) / "worker.py").write_text("raise SystemExit('no worker today')\n")

    rolled = fleet.lockstep("rollback", "--with-data", "--yes", "--json")

    assert rolled.returncode == 1, rolled.stderr + rolled.stdout
    document = json.loads(rolled.stdout)
    name = f"127.0.0.1:{fleet.servers[1].port}"
    assert "serves on every host, but did not finish everywhere" in document["error"], document["error"]
    assert f"{name} serves it, but its retire did not finish" in document["error"], document["error"]
    assert "PUT BACK" not in document["error"] and "put back" not in document["error"], document["error"]
    assert [(host["outcome"], host["data_restored"]) for host in document["hosts"]] == [
        ("succeeded", True),
        ("kept, retire unfinished", False),
    ], document
    assert document["data_restored"] is True
    # Every host serves 1.0.0 (the second host's hold was let go: it answers at once), on the
    # data of the snapshot: what 2.0.0 wrote is gone, and no put-back brought it back.
    assert [host.version() for host in fleet.hosts] == ["1.0.0", "1.0.0"]
    assert _shared_rows(fleet) == rows_v1
    record = fleet.history()[-1]
    assert (record["operation"], record["outcome"], record["failed_step"]) == ("rollback", "succeeded", "retire")
    assert record["data_restored"] is True and record["release_id"] == first["id"], record
    primary_record = primary.history()[-1]
    assert (primary_record["outcome"], primary_record["data_restored"]) == ("succeeded", True), primary_record
    kept = second.history()[-1]
    assert (kept["id"], kept["outcome"], kept["failed_step"]) == (record["id"], "succeeded", "code"), kept
    assert "nothing was undone" in str(kept["reason"]), kept
    # Its agent finishes the retire within seconds: the whole slot it left stops (2.0.0 expects
    # the newer schema, nothing of it stays warm); 1.0.0's worker that did not start stays for
    # the user to fix, its web serves.
    deadline = time.monotonic() + 30
    while second.history()[-1]["retire_left"] and time.monotonic() < deadline:
        time.sleep(0.5)
    finished = second.history()[-1]
    assert finished["retire_left"] is None and "its retire was finished afterwards (stopped slot" in str(
        finished["reason"]
    ), finished
    slots = second.status()["slots"]
    running = {slot: {item["component"] for item in slots[slot]["processes"] if item["running"]} for slot in slots}
    assert running == {kept["slot"]: {"web"}, "green" if kept["slot"] == "blue" else "blue": set()}, running


@pytest.mark.parametrize("killed_host", [1, 0], ids=["second", "primary"])
def test_a_data_rollback_host_killed_after_the_retire_go_serves_the_release_with_the_others(
    fleet_factory: FleetFactory, killed_host: int
) -> None:
    """A host's `lockstep rollback --with-data` (the second's, then the primary's) is killed
    (kill -9) right after it heard the retire "go": past the point of no return, switched to 1.0.0
    on the restored data. Asked again, it serves 1.0.0 (its part cleaned up: interrupted, the
    release with the traffic kept): every host serves the release, so the orchestrator must not
    say THE HOSTS MAY SERVE DIFFERENT RELEASES (it did), and its record is the rollback that
    stands, with its restored data, even when the primary that restored it is the one killed
    (it said not restored). The slot it left stops whole, as its retire would have done (its web
    stayed warm)."""
    fleet = fleet_factory(session_environment={killed_host: {KILL_AT_VARIABLE: "rollback past the retire go"}})
    primary, second = fleet.hosts
    first = _deploy_ok(fleet)
    primary.add_note("from v1")
    rows_v1 = _shared_rows(fleet)
    shutil.copytree(NOTES / "demo" / "v2", fleet.orchestrator, dirs_exist_ok=True)  # migration 002: a column
    fleet.commit_version("2.0.0")
    _deploy_ok(fleet)
    second.add_note("from v2, lost by the rollback with data")

    rolled = fleet.lockstep("rollback", "--with-data", "--yes", "--json")

    assert rolled.returncode == 1, rolled.stderr + rolled.stdout
    document = json.loads(rolled.stdout)
    name = f"127.0.0.1:{fleet.servers[killed_host].port}"
    error = document["error"]
    assert "MAY SERVE DIFFERENT RELEASES" not in error, error
    assert "serves on every host, but did not finish everywhere" in error, error
    # Killed in its code step (it waited at the retire barrier inside it), which the orchestrator
    # said as "exit code -1" at the pre-switch check, a step inside the code step that had ended.
    died = "its lockstep process was killed by SIGKILL during its code step"
    assert f"{name} did not confirm ({died})" in error, error
    assert "it serves this release (its part of this rollback: interrupted)" in error, error
    # The primary's part, killed or not, says it restored the data: the restore stands.
    assert document["data_restored"] is True and document["hosts"][0]["data_restored"] is True, document
    assert [host.version() for host in fleet.hosts] == ["1.0.0", "1.0.0"]
    assert _shared_rows(fleet) == rows_v1
    record = fleet.history()[-1]
    assert (record["operation"], record["outcome"], record["failed_step"]) == ("rollback", "succeeded", "retire")
    assert record["data_restored"] is True and record["release_id"] == first["id"], record
    assert f"{name} did not confirm ({died})" in record["reason"], record
    for said in (document, record):
        host_said = said["hosts"][killed_host]
        assert (host_said["exit_signal"], host_said["failed_step"], host_said["detail"]) == ("SIGKILL", "code", died)
    assert "succeeded +data" in fleet.lockstep("history").stdout
    host = fleet.hosts[killed_host]
    killed = host.history()[-1]
    assert killed["outcome"] == "interrupted" and killed["failed_step"] == "code", killed
    # The whole slot it left stops, as the rollback's retire would have stopped it: 2.0.0 expects
    # the newer schema (its web stayed warm, answering errors, and a rollback to it would have
    # switched to it at once).
    left = "green" if killed["slot"] == "blue" else "blue"

    def running_left() -> list[str]:
        return [item["component"] for item in host.status()["slots"][left]["processes"] if item["running"]]

    deadline = time.monotonic() + 30
    while running_left() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert running_left() == []
    assert host.history()[-1]["retire_left"] is None, host.history()[-1]


def test_a_host_killed_with_its_workers_stopped_for_the_restore_gets_them_back(fleet_factory: FleetFactory) -> None:
    """The second host's lockstep is killed (kill -9) while it keeps its old workers stopped for
    the primary's data restore: no `finally` started them again, and they stayed stopped until
    the next deploy, said nowhere. Its agent's clean-up of the killed deploy starts them again."""
    fleet, logs, go = _writing_workers_fleet(fleet_factory, "restore data")
    second = fleet.hosts[1]
    process = _start_failing_deploy(fleet)
    try:
        wait_for_file(go.with_name(go.name + WAITING_SUFFIX), process)  # every host stopped its workers
        record = second.history()[-1]
        assert record["outcome"] == "running", record
        os.kill(int(str(record["pid"])), signal.SIGKILL)
        killed = time.time()
        go.touch()
        out, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # The orchestrator says where it was killed, after what failed (it said "exit code -1").
    document = json.loads(out)
    died = "then its lockstep process was killed by SIGKILL while it waited at its held barrier"
    said = document["hosts"][1]
    assert (said["exit_signal"], said["failed_step"]) == ("SIGKILL", "smoke"), said
    assert said["detail"].startswith("failed at smoke: smoke tests failed") and said["detail"].endswith(died), said
    assert died in document["error"] and fleet.history()[-1]["hosts"][1] == said, document
    wait_for_writes(logs[1], "host-1", "1.0.0", after=killed, timeout=30)  # its agent started them again
    assert second.agent_log is not None
    # Its clean-up, or (when the orchestrator still held the lock then) the retry once it was gone.
    started = ("for a data restore: started them again", "started again the workers jobs, worker of slot blue")
    deadline = time.monotonic() + 20  # the log line follows the start
    while not any(line in second.agent_log.read_text() for line in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    said = second.agent_log.read_text()
    assert any(line in said for line in started), said
    slot = second.status()["slots"]["blue"]
    assert {item["component"] for item in slot["processes"] if item["running"]} == {"web", "worker", "jobs"}


def test_a_host_killed_in_its_unwind_keeps_its_workers_stopped_until_the_primary_restored(
    fleet_factory: FleetFactory,
) -> None:
    """The second host's lockstep is killed (kill -9) while it keeps its old workers stopped and
    the primary is inside its data restore: its agent's clean-up started them within seconds, and
    they wrote into data being replaced. Now they wait while the orchestrator still holds the
    environment's lock for that deploy (the clean-up and `status` say so), and start once it is
    released."""
    fleet, logs, go = _writing_workers_fleet(fleet_factory, "restore data")
    second = fleet.hosts[1]
    process = _start_failing_deploy(fleet)
    try:
        wait_for_file(go.with_name(go.name + WAITING_SUFFIX), process)  # the primary, in its restore
        record = second.history()[-1]
        assert record["outcome"] == "running", record
        os.kill(int(str(record["pid"])), signal.SIGKILL)
        killed = time.time()
        deadline = time.monotonic() + 30
        while second.history()[-1]["outcome"] == "running" and time.monotonic() < deadline:
            time.sleep(0.3)
        time.sleep(6)  # the agent's watch looks every 5 s: it would have started them by now
        assert writes_between(logs[1], "1.0.0", killed, time.time()) == [], "its workers write during the restore"
        record = second.history()[-1]
        assert record["outcome"] == "interrupted", record
        assert "stay stopped while the coordinated deploy it was part of goes on" in str(record["reason"]), record
        status = second.lockstep("status")  # it tries too, and holds them as well
        assert "STOPPED in slot blue: jobs, worker" in status.out, status.out
        assert "they stay stopped while the coordinated deploy goes on" in status.out, status.out
        assert writes_between(logs[1], "1.0.0", killed, time.time()) == [], "its workers write during the restore"
        go.touch()
        process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    ended = time.time()
    wait_for_writes(logs[1], "host-1", "1.0.0", after=ended, timeout=30)  # the lock is gone: its agent starts them
    record = record_once_unpaused(second)
    assert record["paused_workers"] is None, record
    assert "its workers jobs, worker were started again afterwards" in str(record["reason"]), record
    slot = second.status()["slots"]["blue"]
    assert {item["component"] for item in slot["processes"] if item["running"]} == {"web", "worker", "jobs"}
