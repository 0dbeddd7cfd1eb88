"""A real project to deploy: the notes example in its own git repository, a real agent, the
built-in proxy and real processes on free loopback ports. Every test gets a fresh one.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_PASSWORD, Completed, run_lockstep
from tests.traffic.load import response_retrying_stale

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
NOTES = REPOSITORY_ROOT / "examples" / "notes"


# The ports free_ports handed out in this process, oldest first. A port is only probed, not kept
# bound, until the test's server binds it: without this a later call (make_project after a test's
# own call for the dashboard) could pick the same port, and within a LOCKSTEP_TEST_PORTS range of a
# few hundred ports it did now and then: the agent found its dashboard port "held" by a component.
_HANDED_OUT: dict[int, None] = {}
_HANDED_OUT_LOCK = threading.Lock()


def free_ports(count: int) -> list[int]:
    """Free loopback ports: the kernel's choice, or from LOCKSTEP_TEST_PORTS ("23500-23999") when a
    shared machine gives each run its own range. A port handed out before in this process comes
    again only once the range has no other free one (then the longest-handed-out first)."""
    wanted = os.environ.get("LOCKSTEP_TEST_PORTS")
    with _HANDED_OUT_LOCK:
        if wanted:
            low, high = (int(part) for part in wanted.split("-"))
            fresh = [port for port in random.sample(range(low, high + 1), high - low + 1) if port not in _HANDED_OUT]
            ports = _bindable(fresh + [port for port in _HANDED_OUT if low <= port <= high], count)
        else:
            ports = _bindable([0] * (count + 100), count)  # the kernel may offer a port handed out already
        if len(ports) < count:
            raise RuntimeError(f"no {count} free ports in LOCKSTEP_TEST_PORTS={wanted}")
        for port in ports:
            _HANDED_OUT.pop(port, None)
            _HANDED_OUT[port] = None
        return ports


def _bindable(candidates: list[int], count: int) -> list[int]:
    """The first `count` candidates that can be bound on loopback now, all different."""
    sockets: list[socket.socket] = []
    try:
        for port in candidates:
            if len(sockets) == count:
                break
            probe = socket.socket()
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                probe.close()
                continue
            if port == 0 and probe.getsockname()[1] in _HANDED_OUT:
                probe.close()
                continue
            sockets.append(probe)
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


CONFIG = """
default_environment = "test"

[repository]
url = "local:.lockstep/repository"

[databases.main]
url = "sqlite:///.lockstep/state/test/shared/notes.db"

[app]
migrate = "python3 migrate.py"
env = {{ NOTES_DATABASE = "{{shared}}/notes.db", NOTES_WORKER_INTERVAL = "1", NOTES_CACHE_WARMUP_DELAY = "2" }}

[app.components.web]
command = "python3 app.py"
ports = [{blue}, {green}]
health = {{ http = "/health", body_contains = "ok", passes = 2, interval = 0.2, start_timeout = {start_timeout} }}

[app.components.worker]
command = "python3 worker.py"
depends_on = ["web"]

[traffic]
listen = "127.0.0.1:{listen}"
drain_timeout = 10

[deploy]
watch_seconds = {watch_seconds}
watch_failures = 3
{extra_deploy}

[policy]
data_rollback = "auto"
{extra_config}
"""


@dataclass
class NotesProject:
    """The notes app as a lockstep project, with its agent running."""

    directory: Path
    env: dict[str, str]
    listen_port: int
    web_ports: list[int]
    agent: subprocess.Popen[bytes] | None = None
    agent_log: Path | None = None
    agent_env: dict[str, str] = field(default_factory=dict)  # the agent's alone (fault injection)

    def lockstep(self, *args: str, timeout: float = 300) -> Completed:
        return run_lockstep(list(args), env=self.env, cwd=self.directory, timeout=timeout)

    def popen_lockstep(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "lockstep", *args],
            cwd=self.directory,
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def deploy_until_step(self, step: str) -> subprocess.Popen[bytes]:
        """A deploy with JSON progress, read until `step` has started; the caller stops it
        (a signal, a closed stderr) and waits for it."""
        return self.run_until_step(step, "deploy")

    def run_until_step(self, step: str, *arguments: str, event: str = "step-started") -> subprocess.Popen[bytes]:
        """`lockstep ARGUMENTS` with JSON progress, read until `step` has started (or, with
        event="step-finished", finished); the caller stops it or reads on, and waits for it."""
        process = self.popen_lockstep(*arguments, "--log-format", "json")
        assert process.stderr is not None
        for line in process.stderr:
            said = json.loads(line)
            if said.get("event") == event and said.get("step") == step:
                return process
        process.wait()
        raise AssertionError(f"lockstep {arguments[0]} ended (exit {process.returncode}) before {event} {step}")

    def commit(self, message: str) -> str:
        subprocess.run(["git", "add", "-A"], cwd=self.directory, check=True)
        subprocess.run(
            ["git", "-c", "user.name=Test", "-c", "user.email=test@example.invalid", "commit", "-qm", message],
            cwd=self.directory,
            check=True,
        )
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=self.directory, check=True, capture_output=True, text=True
        ).stdout.strip()

    def apply(self, overlay: str, message: str) -> str:
        """Copy examples/notes/demo/OVERLAY over the work tree and commit it."""
        shutil.copytree(NOTES / "demo" / overlay, self.directory, dirs_exist_ok=True)
        return self.commit(message)

    @property
    def database(self) -> Path:
        return self.directory / ".lockstep" / "state" / "test" / "shared" / "notes.db"

    def request(self, method: str, path: str, body: Any = None, port: int | None = None) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", port or self.listen_port, timeout=10)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload else {}
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    def version(self) -> str:
        status, body = self.request("GET", "/version")
        assert status == 200, body
        return body.strip()

    def add_note(self, text: str) -> None:
        status, body = self.request("POST", "/notes", {"text": text})
        assert status == 201, body

    def notes(self) -> list[str]:
        status, body = self.request("GET", "/api/notes")
        assert status == 200, body
        return [note["text"] for note in json.loads(body)]

    def status(self) -> dict[str, Any]:
        completed = self.lockstep("status", "--json")
        assert completed.returncode == 0, completed.err
        document: dict[str, Any] = json.loads(completed.out)
        return document

    def history(self) -> list[dict[str, Any]]:
        completed = self.lockstep("history", "--json")
        assert completed.returncode == 0, completed.err
        records: list[dict[str, Any]] = json.loads(completed.out)
        return records

    def start_agent(self) -> None:
        self.agent_log = self.directory.parent / f"agent-{time.monotonic_ns()}.log"
        with open(self.agent_log, "wb") as log:
            self.agent = subprocess.Popen(
                [sys.executable, "-m", "lockstep", "agent"],
                cwd=self.directory,
                env={**os.environ, **self.env, **self.agent_env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.lockstep("status", "--json").returncode == 0 and self.status()["agent"]["running"]:
                return
            if self.agent.poll() is not None:
                raise AssertionError(f"the agent exited: {self.agent_log.read_text()}")
            time.sleep(0.2)
        raise AssertionError("the agent did not come up")

    def database_rows(self) -> list[tuple[Any, ...]]:
        """Every row of every table, to compare the data before and after."""
        with contextlib.closing(sqlite3.connect(self.database)) as connection:
            tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            rows: list[tuple[Any, ...]] = []
            for table in sorted(tables):
                columns = [row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')]
                rows.append((table, tuple(columns)))
                rows.extend((table, *row) for row in connection.execute(f'SELECT * FROM "{table}" ORDER BY 1'))
            return rows


def _stop_everything(project: NotesProject) -> None:
    """Stop the app, the proxy and the agent, even when a test killed the agent."""
    if project.agent is not None and project.agent.poll() is None:
        project.lockstep("agent", "stop", "--apps", timeout=60)
        try:
            project.agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            project.agent.kill()
            project.agent.wait()
        return
    # No agent: kill what its state says runs (process groups), and the proxy.
    state = project.directory / ".lockstep" / "state" / "test"
    database = state / "agent.db"
    if database.exists():
        with contextlib.closing(sqlite3.connect(database)) as connection:
            for (record,) in connection.execute("SELECT record FROM processes"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(json.loads(record)["pid"], signal.SIGKILL)
    for pid_file in state.glob("traffic/*/*.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)


def make_project(
    tmp_path: Path,
    watch_seconds: float = 1.0,
    start_timeout: float = 10.0,
    extra_deploy: str = "",
    extra_config: str = "",
) -> NotesProject:
    directory = tmp_path / "notes"
    shutil.copytree(NOTES, directory, ignore=shutil.ignore_patterns("demo", ".lockstep", "__pycache__"))
    listen, blue, green = free_ports(3)
    (directory / "lockstep.toml").write_text(
        CONFIG.format(
            listen=listen,
            blue=blue,
            green=green,
            watch_seconds=watch_seconds,
            start_timeout=start_timeout,
            extra_deploy=extra_deploy,
            extra_config=extra_config,
        )
    )
    subprocess.run(["git", "init", "-q"], cwd=directory, check=True)
    env = {"LOCKSTEP_PASSWORD": TEST_PASSWORD, "LOCKSTEP_SCRYPT_N": "1024", "COLUMNS": "200"}
    project = NotesProject(directory=directory, env=env, listen_port=listen, web_ports=[blue, green])
    project.commit("notes 1.0.0")
    completed = project.lockstep("repo", "init")
    assert completed.returncode == 0, completed.err
    return project


@pytest.fixture
def notes_project(tmp_path: Path) -> Iterator[NotesProject]:
    """The notes app, committed as v1, a repository, and a running agent."""
    project = make_project(tmp_path)
    project.start_agent()
    try:
        yield project
    finally:
        _stop_everything(project)


@dataclass
class TrafficReport:
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)
    seen: list[tuple[float, str]] = field(default_factory=list)  # (time.monotonic(), version) of each GET
    stale_retries: int = 0  # requests retried because the server had closed an idle keep-alive connection

    def first_seen_after(self, moment: float, version: str) -> float | None:
        """When `version` was first served after `moment` (monotonic clock), or None."""
        return next((when for when, seen in self.seen if when >= moment and seen == version), None)


class NotesLoad:
    """Continuous requests through the proxy: keep-alive and fresh connections, GETs and POSTs."""

    def __init__(self, port: int, threads: int = 3) -> None:
        self.port = port
        self.threads = [threading.Thread(target=self._run, args=(number,), daemon=True) for number in range(threads)]
        self.stopping = threading.Event()
        self.report = TrafficReport()
        self.lock = threading.Lock()

    def __enter__(self) -> NotesLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exception: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _record(self, failure: str | None = None, version: str | None = None) -> None:
        with self.lock:
            self.report.requests += 1
            if failure is not None:
                self.report.failures.append(failure)
            if version is not None:
                self.report.versions[version] += 1
                self.report.seen.append((time.monotonic(), version))

    def _exchange(
        self, connection: http.client.HTTPConnection, reused: bool, number: int, count: int
    ) -> tuple[str, int, str, str, http.client.HTTPConnection]:
        """One request: (what, status, body, how the connection ended, the connection used)."""

        is_post = count % 4 == 0
        path, expected = ("POST /notes", 201) if is_post else ("GET /version", 200)

        def send(on: http.client.HTTPConnection) -> None:
            if is_post:
                body = json.dumps({"text": f"load {number}-{count}"}).encode()
                on.request("POST", "/notes", body=body, headers={"Content-Type": "application/json"})
            else:
                on.request("GET", "/version")

        response, connection, retried = response_retrying_stale(connection, reused, send, self._connect)
        if retried:
            # nginx closes idle kept-alive connections on a reload: counted, never hidden.
            with self.lock:
                self.report.stale_retries += 1
        data = response.read().decode()
        if response.status != expected:
            return path, response.status, data, "failed", connection
        return path, response.status, data, response.getheader("Connection", "").lower(), connection

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)

    def _run(self, number: int) -> None:
        keep_alive: http.client.HTTPConnection | None = None
        count = 0
        while not self.stopping.is_set():
            count += 1
            fresh = count % 3 == 0
            reused = not fresh and keep_alive is not None
            connection = keep_alive if reused and keep_alive is not None else self._connect()
            if not fresh:
                keep_alive = connection
            try:
                path, status, data, how, connection = self._exchange(connection, reused, number, count)
                if not fresh:
                    keep_alive = connection  # a retry replaced a stale one
                if how == "failed":
                    self._record(failure=f"{path}: {status} {data[:100]}")
                else:
                    self._record(version=data.strip() if path == "GET /version" else None)
                if how == "close" and connection is keep_alive:
                    keep_alive.close()
                    keep_alive = None
            except (OSError, http.client.HTTPException) as error:
                self._record(failure=f"{type(error).__name__}: {error}")
                if connection is keep_alive:
                    keep_alive = None
                connection.close()
            finally:
                if fresh:
                    connection.close()
            time.sleep(0.005)


def deploy_three_releases(project: NotesProject) -> list[str]:
    """1.0.1, 1.0.2 and 1.0.3 deployed: 1.0.3 serves from blue, 1.0.2 is warm in green."""
    ids = []
    for version in ("1.0.1", "1.0.2", "1.0.3"):
        (project.directory / "VERSION").write_text(version + "\n")
        project.commit(f"notes {version}")
        deployed = project.lockstep("deploy", "--json")
        assert deployed.returncode == 0, deployed.err
        ids.append(json.loads(deployed.out)["id"])
    return ids


def clean_up_said(project: NotesProject) -> str:
    """What the clean-up of a killed operation said: the agent does it within seconds, `status`
    when it comes first; either way `status` then runs, and both outputs are returned."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and project.history()[-1]["outcome"] == "running":
        time.sleep(0.3)
    status = project.lockstep("status")
    assert status.returncode == 0, status.err
    assert project.agent_log is not None
    return status.err + project.agent_log.read_text()
