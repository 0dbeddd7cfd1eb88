"""The example application of the README demo (examples/notes), run as real processes.

Every process runs with `python -S` (no site-packages), which proves the app needs nothing but
the standard library. Releases are temporary copies of the app with the demo overlays applied by
`cp -a demo/NAME/. TREE/`, exactly as the demo applies them.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from lockstep.databases.sqlite import ADAPTER as SQLITE

NOTES = Path(__file__).resolve().parents[2] / "examples" / "notes"
START_TIMEOUT = 30.0


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    text: str


@dataclass
class App:
    process: subprocess.Popen[bytes]
    port: int
    stdout: Path
    stderr: Path

    def request(
        self, method: str, path: str, body: str | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        """One request on a new connection."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            return send(connection, method, path, body, headers)
        finally:
            connection.close()

    def post_json(self, value: object) -> Response:
        return self.request("POST", "/notes", json.dumps(value), {"Content-Type": "application/json"})


@dataclass
class Release:
    tree: Path
    database: Path

    def environment(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "NOTES_DATABASE": str(self.database), **extra}

    def migrate(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-S", "migrate.py"],
            cwd=self.tree,
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def send(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    body: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return Response(response.status, response.headers, response.read().decode("utf-8"))


def free_port() -> int:
    """A free loopback port from this worker's LOCKSTEP_TEST_PORTS block, never the kernel's
    ephemeral range, where an outgoing connection could take it before the server binds it."""
    from tests.deploy.conftest import free_ports

    return free_ports(1)[0]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def accepts_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def rows(database: Path, query: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(database)) as connection:
        return connection.execute(query).fetchall()


@pytest.fixture
def make_release(tmp_path: Path) -> Callable[..., Release]:
    """Copies of the app (without demo/) with overlays applied, all sharing one database file."""
    database = tmp_path / "shared" / "notes.db"

    def make(name: str, *overlays: str) -> Release:
        tree = tmp_path / name
        shutil.copytree(NOTES, tree, ignore=shutil.ignore_patterns("demo", "__pycache__"))
        for overlay in overlays:
            subprocess.run(["cp", "-a", f"{NOTES / 'demo' / overlay}/.", f"{tree}/"], check=True, timeout=30)
        return Release(tree, database)

    return make


@pytest.fixture
def start() -> Iterator[Callable[..., App]]:
    """Starts app.py (or another script) of a release; kills whatever is left at the end."""
    processes: list[subprocess.Popen[bytes]] = []

    def run(release: Release, script: str = "app.py", wait: bool = True, **extra: str) -> App:
        port = free_port()
        name = f"{script}.{len(processes)}"
        stdout, stderr = release.tree / f"{name}.out", release.tree / f"{name}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-S", script],
                cwd=release.tree,
                env=release.environment(PORT=str(port), **extra),
                stdout=out,
                stderr=err,
            )
        processes.append(process)
        app = App(process, port, stdout, stderr)
        if wait:
            wait_for(lambda: accepts_connections(port) or process.poll() is not None, f"{script} to listen")
            assert process.poll() is None, stderr.read_text()
        return app

    try:
        yield run
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


def stop(app: App) -> int:
    app.process.send_signal(signal.SIGTERM)
    return app.process.wait(timeout=30)


def test_health_is_503_until_migrated_and_migrate_runs_once(
    make_release: Callable[..., Release], start: Callable[..., App]
) -> None:
    """/health says why it fails (no database, then no schema) until migrate.py has run."""
    release = make_release("v1")
    app = start(release)
    missing = app.request("GET", "/health")
    assert missing.status == 503
    assert "does not exist: run migrate.py" in missing.text
    assert not release.database.exists(), "the app must not create an empty database"

    release.database.parent.mkdir()
    sqlite3.connect(release.database).close()
    unmigrated = app.request("GET", "/health")
    assert unmigrated.status == 503
    assert "has no schema_migrations table: run migrate.py" in unmigrated.text

    first = release.migrate()
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["applied 001_create_notes.sql"]
    assert app.request("GET", "/health").text == "ok\n"
    assert app.request("GET", "/health").status == 200
    assert rows(release.database, "PRAGMA journal_mode") == [("wal",)]

    second = release.migrate()
    assert second.returncode == 0, second.stderr
    assert "nothing to apply" in second.stdout
    assert "schema version 001" in second.stdout
    assert rows(release.database, "SELECT version FROM schema_migrations") == [("001",)]


def test_missing_settings_are_named(make_release: Callable[..., Release]) -> None:
    """Without PORT or NOTES_DATABASE the scripts exit non-zero and say which variable to set."""
    release = make_release("v1")
    environment = {name: value for name, value in os.environ.items() if name not in ("PORT", "NOTES_DATABASE")}
    for script, variable in (("app.py", "PORT"), ("migrate.py", "NOTES_DATABASE"), ("worker.py", "NOTES_DATABASE")):
        completed = subprocess.run(
            [sys.executable, "-S", script],
            cwd=release.tree,
            env={**environment, "PORT": "0"} if variable == "NOTES_DATABASE" else environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert completed.returncode != 0
        assert f"set {variable}" in completed.stderr


def test_notes_are_added_by_form_and_json_and_listed(
    make_release: Callable[..., Release], start: Callable[..., App]
) -> None:
    """A form post redirects to the page, a JSON post answers 201 with the note; both are listed."""
    release = make_release("v1")
    assert release.migrate().returncode == 0
    app = start(release)

    form = app.request(
        "POST", "/notes", "text=hello+%3Cb%3Eworld%3C%2Fb%3E", {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert (form.status, form.headers["Location"], form.text) == (303, "/", "")
    created = app.post_json({"text": "  from json  "})
    assert created.status == 201
    note = json.loads(created.text)
    assert (note["id"], note["text"]) == (2, "from json")
    assert note["created_at"].endswith("Z")

    assert app.post_json({"text": " "}).status == 400
    assert app.request("POST", "/notes", "{not json", {"Content-Type": "application/json"}).status == 400
    # Announced, not sent: the app answers before reading a body that large.
    assert app.request("POST", "/notes", headers={"Content-Length": "70000"}).status == 413
    assert app.request("GET", "/nowhere").status == 404

    listed = json.loads(app.request("GET", "/api/notes").text)
    assert [item["text"] for item in listed] == ["hello <b>world</b>", "from json"]
    page = app.request("GET", "/")
    assert page.status == 200
    assert page.headers.get_content_type() == "text/html"
    assert "<li>hello &lt;b&gt;world&lt;/b&gt; <small>" in page.text
    assert "from json" in page.text
    assert app.request("GET", "/version").text == "1.0.0\n"


def test_keep_alive_serves_many_requests_on_one_connection(
    make_release: Callable[..., Release], start: Callable[..., App]
) -> None:
    """HTTP/1.1 with correct Content-Length: 60 mixed requests share a single TCP connection."""
    release = make_release("v1")
    assert release.migrate().returncode == 0
    app = start(release)
    connection = http.client.HTTPConnection("127.0.0.1", app.port, timeout=30)
    try:
        assert send(connection, "GET", "/health").status == 200
        first_socket = connection.sock
        assert first_socket is not None, "the server closed the connection after one request"
        for number in range(20):
            posted = send(
                connection,
                "POST",
                "/notes",
                json.dumps({"text": f"note {number}"}),
                {"Content-Type": "application/json"},
            )
            listed = send(connection, "GET", "/api/notes")
            page = send(connection, "GET", "/")
            assert (posted.status, listed.status, page.status) == (201, 200, 200)
            assert len(json.loads(listed.text)) == number + 1
            assert page.headers.get("Connection") != "close"
            assert connection.sock is first_socket, "the server closed the keep-alive connection"
    finally:
        connection.close()


def test_keep_alive_responses_are_not_held_back(
    make_release: Callable[..., Release], start: Callable[..., App]
) -> None:
    """100 requests on one connection take well under 4 s: Nagle plus delayed ACKs would add 40 ms to each."""
    release = make_release("v1")
    assert release.migrate().returncode == 0
    app = start(release)
    connection = http.client.HTTPConnection("127.0.0.1", app.port, timeout=30)
    try:
        began = time.monotonic()
        for _ in range(100):
            assert send(connection, "GET", "/version").status == 200
        elapsed = time.monotonic() - began
    finally:
        connection.close()
    assert elapsed < 3.5, f"100 keep-alive requests took {elapsed:.1f} s"


def test_sigterm_finishes_the_request_in_flight_and_exits_0(
    make_release: Callable[..., Release], start: Callable[..., App]
) -> None:
    """SIGTERM: stop accepting, answer the running request (Connection: close), exit 0, idle keep-alive or not."""
    release = make_release("v1")
    assert release.migrate().returncode == 0
    app = start(release)
    idle = http.client.HTTPConnection("127.0.0.1", app.port, timeout=30)
    assert send(idle, "GET", "/health").status == 200  # stays open, idle, while the app stops

    answers: list[Response] = []
    busy = http.client.HTTPConnection("127.0.0.1", app.port, timeout=30)
    slow = threading.Thread(target=lambda: answers.append(send(busy, "GET", "/slow?ms=1500")))
    slow.start()
    try:
        wait_for(lambda: "slow request" in app.stderr.read_text(), "the slow request to start")
        app.process.send_signal(signal.SIGTERM)
        slow.join(timeout=30)
        assert app.process.wait(timeout=30) == 0, app.stderr.read_text()
    finally:
        slow.join(timeout=30)
        busy.close()
        idle.close()
    assert len(answers) == 1
    assert (answers[0].status, answers[0].text) == (200, "slept 1500 ms\n")
    assert answers[0].headers["Connection"] == "close"
    assert "notes stopped" in app.stdout.read_text()
    assert not accepts_connections(app.port)


def test_worker_logs_the_note_count_and_stops_on_sigterm(
    make_release: Callable[..., Release], start: Callable[..., App]
) -> None:
    """worker.py has no port: it logs the number of notes as it changes and exits 0 on SIGTERM."""
    release = make_release("v1")
    assert release.migrate().returncode == 0
    worker = start(release, "worker.py", wait=False, NOTES_WORKER_INTERVAL="0.1")
    wait_for(lambda: "notes: 0" in worker.stdout.read_text(), "the worker to count 0 notes")
    with closing(sqlite3.connect(release.database)) as connection, connection:
        connection.executemany("INSERT INTO notes (text) VALUES (?)", [("one",), ("two",)])
    wait_for(lambda: "notes: 2" in worker.stdout.read_text(), "the worker to count 2 notes")
    assert stop(worker) == 0
    assert "notes worker stopped" in worker.stdout.read_text()


def test_v2_overlay_adds_tags_and_keeps_old_notes(
    make_release: Callable[..., Release], start: Callable[..., App]
) -> None:
    """v2 applies only 002, shows tags, keeps v1's notes; v1 still runs on the migrated schema."""
    v1 = make_release("v1")
    assert v1.migrate().returncode == 0
    old = start(v1)
    assert old.post_json({"text": "written by v1"}).status == 201
    assert stop(old) == 0

    v2 = make_release("v2", "v2")
    migrated = v2.migrate()
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.splitlines() == ["applied 002_add_tags.sql"]
    new = start(v2)
    assert new.request("GET", "/health").status == 200
    assert new.request("GET", "/version").text == "2.0.0\n"
    tagged = json.loads(new.post_json({"text": "written by v2", "tags": "work, ideas,"}).text)
    assert tagged["tags"] == ["work", "ideas"]
    listed = json.loads(new.request("GET", "/api/notes").text)
    assert [(note["id"], note["text"], note["tags"]) for note in listed] == [
        (1, "written by v1", []),
        (2, "written by v2", ["work", "ideas"]),
    ]
    page = new.request("GET", "/").text
    assert '<input name="tags"' in page
    assert "<mark>#work</mark>" in page

    # Blue-green: the old release keeps serving once the new release has migrated.
    again = start(v1)
    assert again.request("GET", "/health").status == 200
    assert [note["text"] for note in json.loads(again.request("GET", "/api/notes").text)] == [
        "written by v1",
        "written by v2",
    ]
    assert SQLITE.inspect(f"sqlite:///{v2.database}", None).migration_version == "002"


def test_v3_broken_overlay_never_becomes_healthy(
    make_release: Callable[..., Release], start: Callable[..., App]
) -> None:
    """v3-broken needs schema 003 that no migration provides: migrate succeeds, /health stays 503."""
    release = make_release("v3", "v2", "v3-broken")
    migrated = release.migrate()
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.splitlines() == ["applied 001_create_notes.sql", "applied 002_add_tags.sql"]
    assert release.migrate().stdout.strip().endswith("is at schema version 002")
    app = start(release)
    assert app.request("GET", "/version").text == "3.0.0\n"
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        health = app.request("GET", "/health")
        assert health.status == 503
        assert "needs schema version 003, the database is at 002" in health.text
        time.sleep(0.2)
    assert app.process.poll() is None


def test_broken_migration_overlay_fails_half_way_and_leaves_the_database_changed(
    make_release: Callable[..., Release],
) -> None:
    """003 applies and rewrites rows, 004 fails part way and is rolled back: migrate exits 1, data changed."""
    v2 = make_release("v2", "v2")
    assert v2.migrate().returncode == 0
    with closing(sqlite3.connect(v2.database)) as connection, connection:
        connection.executemany("INSERT INTO notes (text) VALUES (?)", [("buy milk",), ("Plans\nship v3",)])

    broken = make_release("broken", "v2", "broken-migration")
    failed = broken.migrate()
    assert failed.returncode == 1
    assert failed.stdout.splitlines() == ["applied 003_split_titles.sql"]
    assert "FAILED 004_index_titles.sql" in failed.stderr
    assert "no such column: titel" in failed.stderr

    assert rows(broken.database, "SELECT version FROM schema_migrations ORDER BY version") == [
        ("001",),
        ("002",),
        ("003",),
    ]
    assert rows(broken.database, "SELECT title, text FROM notes ORDER BY id") == [
        ("buy milk", ""),
        ("Plans", "ship v3"),
    ]
    assert rows(broken.database, "SELECT name FROM sqlite_master WHERE name = 'notes_title'") == []
    assert SQLITE.inspect(f"sqlite:///{broken.database}", None).migration_version == "003"


def test_crash_loop_overlay_is_healthy_then_exits_with_an_error(
    make_release: Callable[..., Release], start: Callable[..., App]
) -> None:
    """crash-loop passes /health, then dies (exit 1) NOTES_CACHE_WARMUP_DELAY seconds after start."""
    release = make_release("crash", "v2", "crash-loop")
    assert release.migrate().returncode == 0
    started = time.monotonic()
    app = start(release, NOTES_CACHE_WARMUP_DELAY="2")
    assert app.request("GET", "/health").status == 200
    assert app.request("GET", "/version").text == "3.1.0\n"
    assert app.process.wait(timeout=60) == 1
    assert time.monotonic() - started >= 2
    assert "KeyError: 'NOTES_CACHE_DIR'" in app.stderr.read_text()
