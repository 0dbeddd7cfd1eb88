"""`rollback --with-data` holds traffic while the data goes back: the notes app, a real agent, the
built-in proxy and real processes. Requests sent during the hold are answered by the older
release against the restored data; a hold past its deadline answers 503 + Retry-After; a killed
rollback does not leave the site paused."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lockstep.agent.client import AgentClient, AgentRequestFailed
from lockstep.fault_injection import WAIT_AT_VARIABLE, WAIT_FOR_VARIABLE
from lockstep.layout import EnvironmentLayout
from lockstep.traffic.builtin import BuiltinProxy
from lockstep.traffic.builtin_proxy.hold_file import read_hold_file
from tests.conftest import Completed, run_lockstep
from tests.deploy.conftest import NotesProject, _stop_everything, make_project

pytestmark = pytest.mark.slow

PROXY_STATE = Path(".lockstep/state/test/traffic/builtin")


@dataclass
class Exchange:
    method: str
    sent_at: float  # wall clock, comparable with the agent's event times
    answered_at: float
    status: int
    body: str
    retry_after: str | None
    text: str = ""  # the note a POST wrote


@dataclass
class WallClockLoad:
    """GET /version and POST /notes on fresh connections, each timed on the wall clock."""

    port: int
    threads: int = 3
    exchanges: list[Exchange] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)  # (sent at, what happened)

    def __post_init__(self) -> None:
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._unanswered: dict[int, float] = {}  # thread number -> when its request was sent
        self._workers = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.threads)]

    def __enter__(self) -> WallClockLoad:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exception: object) -> None:
        self._stopping.set()
        for worker in list(self._workers):
            worker.join(timeout=90)

    def add_senders(self, count: int) -> None:
        """More threads, sending from now on: requests surely sent after a moment already past."""
        with self._lock:
            added = [
                threading.Thread(target=self._run, args=(n,), daemon=True)
                for n in range(len(self._workers), len(self._workers) + count)
            ]
            self._workers.extend(added)
        for worker in added:
            worker.start()

    def unanswered(self, since: float) -> tuple[int, int]:
        """Requests still waiting for their answer: all of them, and those sent at or after `since`."""
        with self._lock:
            return len(self._unanswered), sum(1 for sent_at in self._unanswered.values() if sent_at >= since)

    def wait_for(self, wanted: Callable[[list[Exchange]], bool], what: str, timeout: float = 60) -> None:
        """Keep the load going until the exchanges so far show `wanted`, not for a time that
        assumes a fast machine."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if wanted(list(self.exchanges)):
                    return
            assert time.monotonic() < deadline, f"the load never saw {what}"
            time.sleep(0.05)

    def _run(self, number: int) -> None:
        count = 0
        while not self._stopping.is_set():
            count += 1
            is_post = count % 3 == 0
            text = f"held {number}-{count}"
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            sent_at = time.time()
            with self._lock:
                self._unanswered[number] = sent_at
            try:
                if is_post:
                    payload = json.dumps({"text": text}).encode()
                    connection.request("POST", "/notes", body=payload, headers={"Content-Type": "application/json"})
                else:
                    connection.request("GET", "/version")
                response = connection.getresponse()
                body = response.read().decode()
                exchange = Exchange(
                    "POST" if is_post else "GET",
                    sent_at,
                    time.time(),
                    response.status,
                    body.strip(),
                    response.getheader("Retry-After"),
                    text if is_post else "",
                )
                with self._lock:
                    self.exchanges.append(exchange)
            except (OSError, http.client.HTTPException) as error:
                with self._lock:
                    self.failures.append((sent_at, f"{type(error).__name__}: {error}"))
            finally:
                connection.close()
                with self._lock:
                    del self._unanswered[number]
            time.sleep(0.01)


def agent_events(project: NotesProject, kind: str) -> list[float]:
    """When the agent recorded events of `kind` (wall clock)."""
    database = project.directory / ".lockstep" / "state" / "test" / "agent.db"
    with contextlib.closing(sqlite3.connect(database)) as connection:
        return [at for (at,) in connection.execute("SELECT at FROM events WHERE kind = ? ORDER BY id", (kind,))]


@dataclass
class CuedRestore:
    """`lockstep ARGS` run in the background, its data restore waiting at its fault-injection point
    (lockstep/fault_injection.py) until `go_ahead_once` lets it go. A hold otherwise lasts as long as
    the restore, which on an idle machine is a fraction of a second and on a loaded one may see
    no request arrive at all; so the test, not the machine's speed, decides what the hold sees."""

    project: NotesProject
    arguments: tuple[str, ...]

    def __post_init__(self) -> None:
        self.go = self.project.directory.parent / f"restore-go-{time.monotonic_ns()}"
        env = {**self.project.env, WAIT_AT_VARIABLE: "restore data", WAIT_FOR_VARIABLE: str(self.go)}
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._running = self._pool.submit(run_lockstep, list(self.arguments), env=env, cwd=self.project.directory)
        self.hold_started_at: float | None = None  # wall clock, as the proxy recorded it (its hold file)

    def go_ahead_once(self, ready: Callable[[dict[str, Any]], bool], what: str) -> None:
        """Once the proxy holds and its hold state (waiting, refused...) is `ready`, let the restore go."""
        proxy = BuiltinProxy(f"127.0.0.1:{self.project.listen_port}", self.project.directory / PROXY_STATE)
        deadline = time.monotonic() + 120
        try:
            while True:
                if self._running.done():
                    completed = self._running.result()
                    raise AssertionError(f"lockstep ended (exit {completed.returncode}) before {what}: {completed.err}")
                assert time.monotonic() < deadline, f"no {what} after 120 s: {proxy.hold_state()}"
                hold = proxy.hold_state()
                persisted = read_hold_file(self.project.directory / PROXY_STATE)
                if hold is not None and persisted is not None and ready(hold):
                    self.hold_started_at = persisted.started_at
                    return
                time.sleep(0.05)
        finally:
            self.go.touch()  # failed or not: the command must not wait for a go-ahead that never comes

    def result(self) -> Completed:
        completed = self._running.result(timeout=300)
        self._pool.shutdown()
        return completed


def held_requests_are_waiting(project: NotesProject, load: WallClockLoad) -> Callable[[dict[str, Any]], bool]:
    """Every unanswered request of the load waits at the proxy, two or more of them sent after the
    agent recorded the hold: requests sent during the hold, waiting through the whole restore.
    Two senders join once the hold is seen: on a loaded machine every thread of the load may be
    stuck with a request sent just before the hold, then none would be sent inside it."""
    joined = False

    def ready(hold: dict[str, Any]) -> bool:
        nonlocal joined
        held = agent_events(project, "traffic-held")
        if not held:
            return False
        if not joined:
            load.add_senders(2)
            joined = True
        # Read after the proxy's count, which only grows during the hold: equal means every
        # request the load still waits for is one the proxy holds.
        waiting, sent_inside = load.unanswered(since=held[-1])
        return waiting == hold["waiting"] and sent_inside >= 2

    return ready


def deploy_v1_then_v2(project: NotesProject) -> None:
    assert project.lockstep("deploy").returncode == 0
    project.add_note("from v1")
    project.apply("v2", "notes 2.0.0")
    assert project.lockstep("deploy").returncode == 0
    project.add_note("from v2 #lost")
    assert project.version() == "2.0.0"


def set_hold_timeout(project: NotesProject, seconds: float) -> None:
    config = project.directory / "lockstep.toml"
    config.write_text(
        config.read_text().replace("drain_timeout = 10\n", f"drain_timeout = 10\nhold_timeout = {seconds}\n")
    )
    project.commit(f"hold_timeout {seconds}")


def test_requests_during_a_data_rollback_wait_and_reach_the_older_release_on_the_restored_data(
    notes_project: NotesProject,
) -> None:
    deploy_v1_then_v2(notes_project)
    with WallClockLoad(notes_project.listen_port, threads=6) as load:
        time.sleep(1.0)
        rollback = CuedRestore(notes_project, ("rollback", "--with-data", "--yes", "--json", "--log-format", "json"))
        rollback.go_ahead_once(held_requests_are_waiting(notes_project, load), "requests waiting in the hold")
        completed = rollback.result()
        assert completed.returncode == 0, completed.err
        events = [json.loads(line) for line in completed.err.splitlines() if line.startswith("{")]
        restore_started = next(
            e["time"] for e in events if e.get("event") == "step-started" and e["step"] == "restore data"
        )
        load.wait_for(
            lambda exchanges: any(e.method == "POST" and e.sent_at >= restore_started for e in exchanges),
            "a write sent once the restore began answered",
        )
    record = json.loads(completed.out)

    assert load.failures == [], load.failures[:5]
    # Nothing sent once the restore started reached the newer release: only 1.0.0 answered them,
    # and the writes among them landed in the restored database, not in the one replaced.
    after = [e for e in load.exchanges if e.sent_at >= restore_started]
    assert {e.body for e in after if e.method == "GET"} == {"1.0.0"}
    assert [e for e in after if e.status not in (200, 201)] == []
    notes = notes_project.notes()
    assert "from v2 #lost" not in notes and "from v1" in notes
    written = [e.text for e in after if e.method == "POST"]
    assert written and set(written) <= set(notes)

    held_at = agent_events(notes_project, "traffic-held")[-1]
    assert [e for e in load.exchanges if e.status not in (200, 201)] == []  # held, not refused
    # The hold as the proxy measured it: begun per its hold file, ended that many seconds later.
    assert rollback.hold_started_at is not None
    released_at = rollback.hold_started_at + record["traffic_held_seconds"]
    sent_during_hold = [e for e in load.exchanges if held_at <= e.sent_at <= released_at]
    assert len(sent_during_hold) >= 2, "the load sent (almost) nothing during the hold"
    # Those sent during the hold were answered only once it was released.
    assert all(e.answered_at >= released_at - 0.01 for e in sent_during_hold)
    # 2.0.0 answered only requests sent before the hold (in flight ones drained before the restore).
    assert all(e.sent_at < held_at for e in load.exchanges if e.method == "GET" and e.body == "2.0.0")
    steps = [step["step"] for step in record["steps"]]
    assert steps.index("hold traffic") < steps.index("stop workers") < steps.index("restore data")
    stopped = next(step for step in record["steps"] if step["step"] == "stop workers")
    assert stopped["detail"] == "stopped worker"
    assert 0 < record["traffic_held_seconds"] < 30
    assert any(f"traffic held {record['traffic_held_seconds']:.1f} s" in json.dumps(e) for e in events)

    human = notes_project.lockstep("history", "--json")
    assert json.loads(human.out)[-1]["traffic_held_seconds"] == record["traffic_held_seconds"]


def test_a_hold_past_its_deadline_answers_503_with_retry_after(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    set_hold_timeout(project, 0.05)  # the restore waits until a request has outlasted it
    project.start_agent()
    try:
        deploy_v1_then_v2(project)
        with WallClockLoad(project.listen_port) as load:
            time.sleep(0.5)
            rollback = CuedRestore(project, ("rollback", "--with-data", "--yes", "--json"))
            rollback.go_ahead_once(lambda hold: hold["refused"] >= 1, "request refused past the deadline")
            completed = rollback.result()
            assert completed.returncode == 0, completed.err
            released_at = agent_events(project, "traffic-released")[-1]
            load.wait_for(
                lambda exchanges: any(e.method == "GET" and e.sent_at > released_at for e in exchanges),
                "a read sent after the release answered",
            )
        refused = [e for e in load.exchanges if e.status == 503]
        assert refused, "the restore outlasted a 0.05 s deadline, so some requests must have got 503"
        assert {e.retry_after for e in refused} == {"5"}
        assert all("paused for maintenance" in e.body for e in refused)
        assert [e for e in load.exchanges if e.status not in (200, 201, 503)] == []
        assert {e.body for e in load.exchanges if e.sent_at > released_at and e.method == "GET"} == {"1.0.0"}
        assert "got 503 with Retry-After" in completed.err
        assert project.version() == "1.0.0"
    finally:
        _stop_everything(project)


def test_a_killed_rollback_does_not_leave_the_traffic_held(tmp_path: Path) -> None:
    """kill -9 of `lockstep rollback` while it holds: the proxy sees its owner gone and lets the
    requests through, well before the (here 120 s) deadline."""
    project = make_project(tmp_path)
    set_hold_timeout(project, 120)
    project.start_agent()
    try:
        deploy_v1_then_v2(project)
        process = project.run_until_step("hold traffic", "rollback", "--with-data", "--yes", event="step-finished")
        assert process.stderr is not None
        process.send_signal(signal.SIGSTOP)  # frozen while holding: no release can come from it
        proxy = BuiltinProxy(f"127.0.0.1:{project.listen_port}", project.directory / PROXY_STATE)
        hold = proxy.hold_state()
        assert hold is not None and hold["owner"]["pid"] == process.pid
        status = project.status()["traffic"]["hold"]
        assert status["owner"]["pid"] == process.pid and status["expired"] is False
        human = project.lockstep("status")
        assert f"HELD for a data rollback (pid {process.pid})" in human.out, human.out
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            held = pool.submit(project.request, "GET", "/version")
            time.sleep(1.0)
            assert not held.done(), "a request got through while the rollback held the traffic"
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed = time.monotonic()
            status, body = held.result(timeout=10)
        assert status == 200 and body.strip() in ("1.0.0", "2.0.0")
        assert time.monotonic() - killed < 3.0  # the owner's death ended it, not the 120 s deadline
        assert proxy.hold_state() is None
        assert project.status()["traffic"]["hold"] is None
        assert agent_events(project, "traffic-held")
    finally:
        _stop_everything(project)


def test_an_interrupted_rollback_releases_the_hold(notes_project: NotesProject) -> None:
    """Ctrl-C while traffic is held: the unwind releases it, and the newer release serves again."""
    deploy_v1_then_v2(notes_project)
    process = notes_project.popen_lockstep("rollback", "--with-data", "--yes", "--log-format", "json")
    assert process.stderr is not None
    for line in process.stderr:
        event = json.loads(line)
        if event.get("event") == "step-finished" and event.get("step") == "hold traffic":
            process.send_signal(signal.SIGINT)
            break
    else:
        raise AssertionError(f"the rollback ended (exit {process.wait()}) before it held the traffic")
    remaining = process.stderr.read().decode()
    assert process.wait(timeout=120) != 0, remaining
    proxy = BuiltinProxy(f"127.0.0.1:{notes_project.listen_port}", notes_project.directory / PROXY_STATE)
    assert proxy.hold_state() is None
    assert '"undo hold"' in remaining
    assert notes_project.history()[-1]["outcome"] == "failed" or notes_project.history()[-1]["outcome"] == "rolled-back"
    started = time.monotonic()
    assert notes_project.request("GET", "/version")[0] == 200
    assert time.monotonic() - started < 2.0
    # A hold asked for without a usable owner is refused, saying why (not an agent failure).
    layout = EnvironmentLayout(notes_project.directory / ".lockstep" / "state" / "test", "test")
    with pytest.raises(AgentRequestFailed, match="needs an owner"):
        AgentClient(layout.agent_socket, "test").request("POST", "/v1/traffic/hold", {"owner": {"pid": "1"}})


def test_a_failed_deploy_holds_traffic_while_its_data_comes_back(notes_project: NotesProject) -> None:
    """A migration fails half-way: the data comes back under a hold, so requests sent during the
    restore wait, then reach the serving release (2.0.0) on the restored data."""
    deploy_v1_then_v2(notes_project)
    notes_project.apply("broken-migration", "notes 3.2.0")
    with WallClockLoad(notes_project.listen_port, threads=6) as load:
        time.sleep(1.0)
        deploy = CuedRestore(notes_project, ("deploy", "--json", "--log-format", "json"))
        deploy.go_ahead_once(held_requests_are_waiting(notes_project, load), "requests waiting in the hold")
        completed = deploy.result()
        assert completed.returncode == 3, completed.err
        events = [json.loads(line) for line in completed.err.splitlines() if line.startswith("{")]
        undo_started = next(
            e["time"] for e in events if e.get("event") == "step-started" and e["step"] == "undo migrate"
        )
        load.wait_for(
            lambda exchanges: any(
                e.method == "POST" and e.status == 201 and e.sent_at >= undo_started for e in exchanges
            ),
            "a write sent once the undo began answered",
        )
    record = json.loads(completed.out)
    assert record["failed_step"] == "migrate" and record["data_restored"] is True
    # Every write sent once the undo began is in the restored database: none went into the
    # database being replaced (without a hold, those answered 201 during the restore are lost).
    after_undo = [e for e in load.exchanges if e.sent_at >= undo_started]
    written = [e.text for e in after_undo if e.method == "POST" and e.status == 201]
    assert written and set(written) <= set(notes_project.notes())

    held_at = agent_events(notes_project, "traffic-held")[-1]
    assert held_at <= undo_started <= agent_events(notes_project, "traffic-released")[-1]
    after = [e for e in load.exchanges if e.sent_at >= held_at]
    assert [failure for failure in load.failures if failure[0] >= held_at] == []
    assert [e for e in after if e.status not in (200, 201)] == []  # held, not refused
    assert {e.body for e in after if e.method == "GET"} == {"2.0.0"}
    # The hold as the proxy measured it: begun per its hold file, ended that many seconds later.
    assert deploy.hold_started_at is not None
    released_at = deploy.hold_started_at + record["traffic_held_seconds"]
    sent_during_hold = [e for e in after if e.sent_at <= released_at]
    assert len(sent_during_hold) >= 2
    assert all(e.answered_at >= released_at - 0.01 for e in sent_during_hold)
    assert 0 < record["traffic_held_seconds"] < 30
    assert any("traffic held" in json.dumps(e) for e in events)


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
def test_a_data_rollback_through_nginx_and_haproxy_holds_traffic_too(tmp_path: Path, kind: str) -> None:
    """nginx and HAProxy hold through the relay: the same guarantees as the built-in proxy."""
    from tests.conftest import require_binary

    require_binary(kind, f"apt-get install {kind}")
    project = make_project(tmp_path)
    config = project.directory / "lockstep.toml"
    config.write_text(config.read_text().replace("[traffic]\n", f'[traffic]\nkind = "{kind}"\n'))
    project.commit("use a real proxy")
    project.start_agent()
    try:
        deploy_v1_then_v2(project)
        with WallClockLoad(project.listen_port, threads=6) as load:
            time.sleep(1.0)
            completed = project.lockstep("rollback", "--with-data", "--yes", "--json", "--log-format", "json")
            assert completed.returncode == 0, completed.err
            events = [json.loads(line) for line in completed.err.splitlines() if line.startswith("{")]
            restore_started = next(
                e["time"] for e in events if e.get("event") == "step-started" and e["step"] == "restore data"
            )
            load.wait_for(
                lambda exchanges: any(e.sent_at >= restore_started for e in exchanges),
                "a request sent once the restore began answered",
            )
        record = json.loads(completed.out)
        assert load.failures == [], load.failures[:5]
        after = [e for e in load.exchanges if e.sent_at >= restore_started]
        assert after and {e.body for e in after if e.method == "GET"} <= {"1.0.0"}
        assert [e for e in after if e.status not in (200, 201)] == []
        written = [e.text for e in after if e.method == "POST"]
        assert set(written) <= set(project.notes())
        assert 0 < record["traffic_held_seconds"] < 30
        assert project.status()["traffic"]["kind"] == kind
        traffic = project.directory / ".lockstep" / "state" / "test" / "traffic" / kind
        assert not (traffic / "hold.json").exists()
    finally:
        _stop_everything(project)


def test_a_proxy_killed_during_a_data_rollback_comes_back_still_holding(notes_project: NotesProject) -> None:
    """kill -9 of the built-in proxy while `rollback --with-data` holds the traffic: the agent
    starts it again, and a request sent then waits until the rollback releases it, then is
    answered by the older release on the restored data (not by the newer one meanwhile)."""
    project = notes_project
    deploy_v1_then_v2(project)
    process = project.run_until_step("hold traffic", "rollback", "--with-data", "--yes", event="step-finished")
    assert process.stderr is not None
    process.send_signal(signal.SIGSTOP)  # frozen while holding, before the restore
    try:
        proxy = BuiltinProxy(f"127.0.0.1:{project.listen_port}", project.directory / PROXY_STATE)
        killed = proxy.pid()
        assert killed is not None
        restarts = len(agent_events(project, "proxy-restarted"))
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(agent_events(project, "proxy-restarted")) == restarts:
            assert time.monotonic() < deadline, "the agent did not start the proxy again"
            time.sleep(0.1)
        assert proxy.pid() not in (None, killed)
        hold = proxy.hold_state()
        assert hold is not None and hold["owner"]["pid"] == process.pid and hold["resumed"] is True
        human = project.lockstep("status").out
        assert f"HELD for a data rollback (pid {process.pid})" in human and "resumed by the restarted proxy" in human
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            held = pool.submit(project.request, "GET", "/version")
            time.sleep(1.5)
            assert not held.done(), f"the restarted proxy served during the hold: {held.result()}"
            process.send_signal(signal.SIGCONT)
            status, body = held.result(timeout=60)
        assert (status, body.strip()) == (200, "1.0.0")
    finally:
        process.send_signal(signal.SIGCONT)
    remaining = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0, remaining
    assert proxy.hold_state() is None
    assert "from v2 #lost" not in project.notes()
