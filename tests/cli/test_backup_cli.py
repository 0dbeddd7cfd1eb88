"""`lockstep backup` end to end: the real CLI, real SQLite and PostgreSQL databases, and a real
HTTP server on loopback that records the healthchecks pings (start, success, fail)."""

from __future__ import annotations

import base64
import json
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lockstep.databases import adapter_for
from lockstep.databases.base import DatabaseAdapter
from lockstep.exit_codes import ExitCode
from lockstep.pipeline.verification_records import load_history
from lockstep.repository.locks import locked
from lockstep.repository.repository import Repository
from lockstep.storage.local import LocalBackend
from tests.cli.test_snapshot_cli import POSTGRESQL_SERVER, execute_postgresql
from tests.conftest import TEST_PASSWORD, Completed, missing, require_binary, run_lockstep

SUMMARY = re.compile(
    r"^backup ok: snapshot [0-9a-f]{8}, [0-9.]+ (B|KiB|MiB|GiB) stored \([0-9.]+ (B|KiB|MiB|GiB) added\), [0-9.]+ s$"
)
CHECK_UUID = "5f1c0b7e-backup-check"
DATABASE_SECRET = "db-pass-NEVER-IN-A-PING-93c1"


@dataclass
class Pings:
    """What the healthchecks server received: (path, body) in order."""

    url: str
    received: list[tuple[str, str]] = field(default_factory=list)
    status: int = 200
    tarpit_suffix: str | None = None  # pings to URL + this answer one byte every 0.2 s, for a minute
    required_authorization: str | None = None  # answer 401 to a ping without this Authorization header
    authorizations: list[str | None] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [path.removeprefix(f"/{CHECK_UUID}") or "/" for path, _ in self.received]


@pytest.fixture
def pings() -> Iterator[Pings]:
    """A healthchecks-style server on a free loopback port, in a thread, stopped afterwards."""
    recorded = Pings(url="")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8", "replace")
            recorded.authorizations.append(self.headers.get("Authorization"))
            if recorded.required_authorization not in (None, self.headers.get("Authorization")):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="pings"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            recorded.received.append((self.path, body))
            if recorded.tarpit_suffix is not None and self.path.endswith(recorded.tarpit_suffix):
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not stopping.is_set():
                    self.wfile.write(b".")
                    self.wfile.flush()
                    time.sleep(0.2)
                return
            self.send_response(recorded.status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        do_GET = _answer
        do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            return

    stopping = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    recorded.url = f"http://127.0.0.1:{server.server_address[1]}/{CHECK_UUID}"
    try:
        yield recorded
    finally:
        stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Project:
    """A directory with lockstep.toml (no git: code is not recorded), a SQLite database and a repository."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repository = root / "repository"
        self.env = {"LOCKSTEP_PASSWORD": TEST_PASSWORD, "COLUMNS": "200", "SHOP_DB_PASSWORD": DATABASE_SECRET}

    def write_config(self, databases: dict[str, dict[str, str]], backup: dict[str, Any], extra: str = "") -> None:
        lines = [f'[repository]\nurl = "{self.repository}"\n']
        for name, settings in databases.items():
            lines.append(f"[databases.{name}]")
            lines.extend(f'{key} = "{value}"' for key, value in settings.items())
        lines.append("\n[backup]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in backup.items())
        (self.root / "lockstep.toml").write_text("\n".join(lines) + "\n" + extra)

    def lockstep(self, *arguments: str) -> Completed:
        return run_lockstep(list(arguments), cwd=self.root, env=self.env)

    def snapshots(self) -> list[dict[str, Any]]:
        result = run_lockstep(["repo", "snapshots", "--json", "-r", str(self.repository)], env=self.env)
        assert result.returncode == 0, result.err
        listed: list[dict[str, Any]] = json.loads(result.out)
        return listed

    def packs(self) -> set[str]:
        return {path.name for path in (self.repository / "data").rglob("*") if path.is_file()}


@pytest.fixture
def project(tmp_path: Path) -> Project:
    root = tmp_path / "shop"
    root.mkdir()
    with sqlite3.connect(root / "app.db") as connection:
        connection.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
        connection.executemany("INSERT INTO orders (total) VALUES (?)", [(i * 1.25,) for i in range(500)])
    current = Project(root)
    initialised = run_lockstep(["repo", "init", "-r", str(current.repository)], env=current.env)
    assert initialised.returncode == 0, initialised.err
    return current


def sqlite_only(project: Project) -> dict[str, dict[str, str]]:
    return {"main": {"url": f"sqlite:///{project.root / 'app.db'}"}}


@pytest.fixture
def postgresql_database() -> Iterator[str]:
    """A scratch PostgreSQL database with a table, dropped afterwards."""
    require_binary("pg_dump", "apt-get install postgresql-client")
    require_binary("pg_restore", "apt-get install postgresql-client")
    import psycopg

    try:
        psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", connect_timeout=5).close()
    except psycopg.Error as error:
        missing(f"PostgreSQL is not reachable on 127.0.0.1:5432: {error}")
    adapter: DatabaseAdapter = adapter_for(POSTGRESQL_SERVER)
    url = adapter.create_scratch(POSTGRESQL_SERVER, None)
    try:
        execute_postgresql(
            url,
            "CREATE TABLE customers (id serial PRIMARY KEY, name text);"
            "INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 300) g;",
        )
        yield url
    finally:
        adapter.drop_database(url, None)


def test_backup_of_sqlite_and_postgresql_pings_start_and_success(
    project: Project, pings: Pings, postgresql_database: str
) -> None:
    """One line on stdout, a `scheduled` snapshot holding both databases, and two pings."""
    project.write_config(
        {**sqlite_only(project), "shop": {"url": postgresql_database}},
        {"healthchecks_url": pings.url, "min_free_disk_mb": 1},
    )
    result = project.lockstep("backup", "-m", "nightly")
    assert result.returncode == 0, result.err
    lines = result.out.strip().splitlines()
    assert len(lines) == 1 and SUMMARY.match(lines[0]), result.out
    assert result.err == ""
    assert pings.paths() == ["/start", "/"]
    assert pings.received[-1][1] == lines[0]

    [snapshot] = project.snapshots()
    assert f"snapshot {snapshot['id'][:8]}," in lines[0]
    assert snapshot["tags"][:3] == ["lockstep", "kind:scheduled", "env:default"]
    shown = json.loads(project.lockstep("snapshot", "show", "latest", "--json").out)
    assert shown["kind"] == "scheduled" and shown["message"] == "nightly"
    assert set(shown["databases"]) == {"main", "shop"}
    assert {table["name"]: table["rows"] for table in shown["databases"]["shop"]["tables"]} == {"customers": 300}


def test_backup_json_reports_sizes_preflight_and_retention(project: Project, pings: Pings) -> None:
    """--json is one document; with keep_daily 1 the second backup of the day forgets the first."""
    project.write_config(
        sqlite_only(project),
        {"healthchecks_url": pings.url, "min_free_disk_mb": 1, "verify_level": "data"},
        extra="\n[retention]\nkeep_daily = 1\nkeep_weekly = 0\nkeep_monthly = 0\nkeep_pre_deploy = 0\n",
    )
    first = project.lockstep("backup", "--json")
    assert first.returncode == 0, first.err
    document = json.loads(first.out)
    assert document["ok"] is True and document["kind"] == "scheduled" and document["verify_level"] == "data"
    assert document["stored_bytes"] > 0 and document["added_bytes"] > 0
    assert [check["name"] for check in document["preflight"]] == [
        "free disk space",
        "sqlite client tools",
        "database main",
    ]
    assert document["pings_sent"] == ["/start", "/"]
    second = json.loads(project.lockstep("backup", "--json").out)
    assert second["forgotten"] == [document["snapshot_id"]]
    assert second["added_bytes"] < document["added_bytes"], "an unchanged database must deduplicate"
    assert [snapshot["id"] for snapshot in project.snapshots()] == [second["snapshot_id"]]


def test_unreachable_database_fails_in_preflight_and_pings_fail(project: Project, pings: Pings) -> None:
    """Exit 15 naming the database, a /fail ping without secrets, and no snapshot nor pack written."""
    port = closed_port()
    project.write_config(
        {
            **sqlite_only(project),
            "orders": {"url": f"postgresql://shop@127.0.0.1:{port}/orders", "password_env": "SHOP_DB_PASSWORD"},
        },
        {"healthchecks_url": pings.url, "min_free_disk_mb": 1},
    )
    before = project.packs()
    result = project.lockstep("backup")
    assert result.returncode == ExitCode.SOURCE, result.err
    assert "preflight" in result.err and "database orders" in result.err and f"127.0.0.1:{port}" in result.err
    assert result.out == ""
    assert pings.paths() == ["/fail"]
    body = pings.received[0][1]
    assert "orders" in body and DATABASE_SECRET not in body and TEST_PASSWORD not in body
    assert DATABASE_SECRET not in result.err
    assert project.snapshots() == []
    assert project.packs() == before


def test_backup_tells_the_notification_channels_and_a_dead_one_only_warns(project: Project, tmp_path: Path) -> None:
    """Under cron, `lockstep backup` is the scheduled backup: its outcome reaches [notifications]
    (snapshot.created, backup.failed) as the agent's scheduled runs do. It used to send nothing, so
    a nightly backup failing was only ever seen by whoever read cron's mail. A channel that is down
    warns on stderr and changes neither the exit code nor the one line on stdout."""
    event_log = tmp_path / "events.jsonl"
    channels = (
        "\n[notifications]\ntimeout_seconds = 1\nattempts = 2\nretry_delay_seconds = 0.1\n"
        f'[[notifications.channels]]\nkind = "event-log"\npath = "{event_log}"\n'
        f'[[notifications.channels]]\nkind = "webhook"\nname = "ops-hook"\nurl = "http://127.0.0.1:{closed_port()}/h"\n'
    )
    project.write_config(sqlite_only(project), {"min_free_disk_mb": 1}, extra=channels)
    ok = project.lockstep("backup")
    assert ok.returncode == 0, ok.err
    assert SUMMARY.match(ok.out.strip()) and len(ok.out.splitlines()) == 1
    assert "ops-hook" in ok.err and "snapshot.created not sent" in ok.err
    (created,) = [json.loads(line) for line in event_log.read_text().splitlines()]
    assert created["kind"] == "snapshot.created" and created["severity"] == "info"
    assert created["summary"] == ok.out.strip()
    (snapshot,) = project.snapshots()
    assert created["details"]["snapshot"] == snapshot["id"]

    port = closed_port()
    databases = {
        **sqlite_only(project),
        "orders": {"url": f"postgresql://shop@127.0.0.1:{port}/orders", "password_env": "SHOP_DB_PASSWORD"},
    }
    project.write_config(databases, {"min_free_disk_mb": 1}, extra=channels)
    failed = project.lockstep("backup")
    assert failed.returncode == ExitCode.SOURCE, failed.err
    events = [json.loads(line) for line in event_log.read_text().splitlines()]
    assert [event["kind"] for event in events] == ["snapshot.created", "backup.failed"]
    assert events[1]["severity"] == "error"
    assert "database orders" in events[1]["details"]["error"]
    assert DATABASE_SECRET not in event_log.read_text()


ROUTING_KEY = "R0uting0Key0of0the0integration99"
NTFY_TOKEN = "tk_ntfy0access0token0never0shown"


def test_backup_resolves_and_triggers_pagerduty_and_rings_ntfy_showing_neither_secret(
    project: Project, tmp_path: Path
) -> None:
    """`lockstep backup --json` under cron with a PagerDuty and an ntfy channel: a snapshot resolves
    the project's backup alert and publishes to the topic, a failed backup triggers the alert with
    the error. An ntfy server that refuses the token warns on stderr and changes neither the exit
    code nor the JSON. The routing key and the token appear in no output, only where they belong."""
    from tests.notify import RecordingServer

    ntfy = RecordingServer(statuses=[403])  # the first publish is refused
    pagerduty = RecordingServer()
    try:
        channels = (
            "\n[notifications]\nattempts = 1\n"
            f'[[notifications.channels]]\nkind = "ntfy"\nname = "phone"\nurl = "{ntfy.url}/shop-alerts"\n'
            'secret_env = "NTFY_ACCESS"\n'
            f'[[notifications.channels]]\nkind = "pagerduty"\nurl = "{pagerduty.url}/v2/enqueue"\n'
            'secret_env = "PD_INTEGRATION"\n'
        )
        project.env.update({"NTFY_ACCESS": NTFY_TOKEN, "PD_INTEGRATION": ROUTING_KEY})
        project.write_config(sqlite_only(project), {"min_free_disk_mb": 1}, extra=channels)
        ok = project.lockstep("backup", "--json")
        assert ok.returncode == 0, ok.err
        assert json.loads(ok.out)["ok"] is True
        assert "phone" in ok.err and "HTTP 403" in ok.err and "snapshot.created not sent" in ok.err

        port = closed_port()
        databases = {
            **sqlite_only(project),
            "orders": {"url": f"postgresql://shop@127.0.0.1:{port}/orders", "password_env": "SHOP_DB_PASSWORD"},
        }
        project.write_config(databases, {"min_free_disk_mb": 1}, extra=channels)
        failed = project.lockstep("backup", "--json")
        assert failed.returncode == ExitCode.SOURCE, failed.err

        published = ntfy.wait_for(2)
        assert [request.headers["authorization"] for request in published] == [f"Bearer {NTFY_TOKEN}"] * 2
        assert [request.headers["priority"] for request in published] == ["default", "high"]
        events = [json.loads(request.body) for request in pagerduty.wait_for(2)]
        key = "lockstep/shop/default/backup"
        assert [(event["event_action"], event["dedup_key"]) for event in events] == [("resolve", key), ("trigger", key)]
        assert all(event.pop("routing_key") == ROUTING_KEY for event in events)
        assert "database orders" in events[1]["payload"]["custom_details"]["error"]
        texts = [ok.out, ok.err, failed.out, failed.err, *(json.dumps(event) for event in events)]
        texts += [request.body.decode() for request in published]
        for text in texts:
            for secret in (ROUTING_KEY, NTFY_TOKEN, DATABASE_SECRET):
                assert secret not in text
    finally:
        ntfy.stop()
        pagerduty.stop()


def test_too_little_disk_space_fails_with_exit_14(project: Project, pings: Pings) -> None:
    project.write_config(sqlite_only(project), {"healthchecks_url": pings.url, "min_free_disk_mb": 1 << 40})
    result = project.lockstep("backup")
    assert result.returncode == ExitCode.STORAGE, result.err
    assert "free disk space" in result.err and "min_free_disk_mb" in result.err
    assert pings.paths() == ["/fail"]
    assert project.snapshots() == []


def test_a_failing_ping_only_warns(project: Project, pings: Pings) -> None:
    """A server that answers 500 and one that refuses connections: the backup still succeeds."""
    pings.status = 500
    project.write_config(sqlite_only(project), {"healthchecks_url": pings.url, "min_free_disk_mb": 1})
    result = project.lockstep("backup")
    assert result.returncode == 0, result.err
    assert SUMMARY.match(result.out.strip())
    assert "warning" in result.err and "start ping" in result.err and "HTTP 500" in result.err
    assert CHECK_UUID not in result.err, "the check's UUID is as good as a password"
    assert pings.paths().count("/start") == 3, "a 5xx answer is retried"

    closed = closed_port()
    project.write_config(
        sqlite_only(project), {"healthchecks_url": f"http://127.0.0.1:{closed}/x", "min_free_disk_mb": 1}
    )
    refused = project.lockstep("backup")
    assert refused.returncode == 0, refused.err
    assert "success ping" in refused.err
    assert f"http://127.0.0.1:{closed}" in refused.err, "the warning names the port (it said http://127.0.0.1)"
    assert len(project.snapshots()) == 2
    # --json: a script reads the warnings from the document (they said [] while stderr had two)
    as_json = project.lockstep("backup", "--json")
    assert as_json.returncode == 0, as_json.err
    document = json.loads(as_json.out)
    assert document["pings_sent"] == []
    assert [line.split(" ping ")[0] for line in document["warnings"]] == ["the start", "the success"]
    assert all(f"http://127.0.0.1:{closed}" in line for line in document["warnings"])


def test_a_ping_url_that_answers_one_byte_at_a_time_does_not_hold_the_backup(project: Project, pings: Pings) -> None:
    """A /start ping answered one byte every 0.2 s: no single read times out, so the backup used to
    wait for ever (and SIGTERM only moved it on to a /fail ping that waited too). Each attempt now
    ends at the ping's timeout: the backup finishes, warns once, and sends its success ping."""
    pings.tarpit_suffix = "/start"
    project.write_config(sqlite_only(project), {"healthchecks_url": pings.url, "min_free_disk_mb": 1})
    started = time.monotonic()
    result = run_lockstep(["backup"], cwd=project.root, env=project.env, timeout=120)
    assert result.returncode == 0, result.err
    assert time.monotonic() - started < 60
    assert SUMMARY.match(result.out.strip())
    assert "start ping" in result.err and "no complete answer within 5 s" in result.err
    assert pings.paths()[-1] == "/"


def test_a_ping_url_that_does_not_speak_http_only_warns(project: Project) -> None:
    """healthchecks_url pointing at the wrong service (an SMTP greeting instead of HTTP): the ping's
    BadStatusLine used to escape as an internal error and fail the backup with exit 1."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stopping = threading.Event()

    def greet() -> None:
        while not stopping.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.sendall(b"220 mail.example ESMTP ready\r\n")

    thread = threading.Thread(target=greet, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        project.write_config(
            sqlite_only(project), {"healthchecks_url": f"http://127.0.0.1:{port}/{CHECK_UUID}", "min_free_disk_mb": 1}
        )
        result = project.lockstep("backup")
    finally:
        stopping.set()
        thread.join(timeout=5)
        listener.close()
    assert result.returncode == 0, result.err
    assert SUMMARY.match(result.out.strip())
    assert "start ping" in result.err and "success ping" in result.err and "not a valid HTTP answer" in result.err
    assert CHECK_UUID not in result.err


def test_restore_level_test_restores_and_records_the_verification(project: Project, pings: Pings) -> None:
    """verify_level "restore" test-restores the new snapshot's databases (`snapshot verify`) and
    records the passed verification in the repository."""
    project.write_config(
        sqlite_only(project), {"healthchecks_url": pings.url, "min_free_disk_mb": 1, "verify_level": "restore"}
    )
    result = project.lockstep("backup", "--json")
    assert result.returncode == 0, result.err
    document = json.loads(result.out)
    assert document["verify_level"] == "restore"
    repository = Repository.open(LocalBackend(project.repository), TEST_PASSWORD)
    try:
        history = load_history(repository, document["snapshot_id"])
    finally:
        repository.close()
    assert [(item.level, item.ok) for item in history] == [("restore", True)]
    assert pings.paths() == ["/start", "/"]


def test_retention_is_postponed_while_another_process_holds_the_repository(project: Project, pings: Pings) -> None:
    """A shared lock held elsewhere (e.g. a verify) blocks forget's exclusive lock: the backup still
    succeeds with a warning, and the next backup applies the retention."""
    project.write_config(
        sqlite_only(project),
        {"healthchecks_url": pings.url, "min_free_disk_mb": 1, "verify_level": "none"},
        extra="\n[retention]\nkeep_daily = 1\nkeep_weekly = 0\nkeep_monthly = 0\nkeep_pre_deploy = 0\n",
    )
    assert project.lockstep("backup").returncode == 0
    repository = Repository.open(LocalBackend(project.repository), TEST_PASSWORD)
    try:
        with locked(repository, exclusive=False):
            held = project.lockstep("backup")
    finally:
        repository.close()
    assert held.returncode == 0, held.err
    assert "retention skipped" in held.err and SUMMARY.match(held.out.strip())
    assert len(project.snapshots()) == 2
    assert project.lockstep("backup").returncode == 0
    assert len(project.snapshots()) == 1


def test_a_dirty_work_tree_is_refused_with_a_hint_that_backup_can_follow(project: Project) -> None:
    """The refusal named --commit and --allow-dirty, which `lockstep backup` does not take; it
    names [code] allow_dirty, which backup reads, and with it set the backup stores the diff."""
    from tests.cli.test_snapshot_cli import git

    require_binary("git", "apt-get install git")
    project.write_config(sqlite_only(project), {"verify_level": "none"})
    git(project.root, "init", "-q", "-b", "main")
    (project.root / ".gitignore").write_text("app.db\nrepository/\n")
    (project.root / "app.py").write_text("print('v1')\n")
    git(project.root, "add", "-A")
    git(project.root, "commit", "-q", "-m", "first")
    (project.root / "app.py").write_text("print('v2')\n")

    refused = project.lockstep("backup")
    assert refused.returncode == ExitCode.USAGE, refused.err
    assert "uncommitted changes" in refused.err
    assert "allow_dirty = true under [code]" in refused.err
    assert "--commit" not in refused.err and "pass --allow-dirty" not in refused.err
    assert project.snapshots() == []

    with (project.root / "lockstep.toml").open("a") as config:
        config.write("\n[code]\nallow_dirty = true\n")
    backed_up = project.lockstep("backup", "--json")
    assert backed_up.returncode == 0, backed_up.err
    listed = project.lockstep("snapshot", "show", "latest", "--json")
    assert json.loads(listed.out)["code"]["dirty"] is True


PING_USER = "hc-user"
PING_PASSWORD = "hc-Pa55%word@home"  # "%" and "@" written percent-encoded in the URL, as curl reads them
PING_PASSWORD_WRITTEN = "hc-Pa55%25word%40home"


def test_a_ping_url_with_credentials_pings_with_basic_auth_and_never_shows_them(project: Project, pings: Pings) -> None:
    """`https://user:password@host/uuid`: urllib took `user:password@host` for the host name and
    every ping failed ("Name or service not known"). The credentials now go as basic auth, as curl
    sends them, and neither form of the password shows in the output, the logs or --json."""
    pings.required_authorization = "Basic " + base64.b64encode(f"{PING_USER}:{PING_PASSWORD}".encode()).decode()
    with_credentials = pings.url.replace("http://", f"http://{PING_USER}:{PING_PASSWORD_WRITTEN}@")
    project.write_config(sqlite_only(project), {"healthchecks_url": with_credentials, "min_free_disk_mb": 1})
    result = project.lockstep("backup", "--json", "--verbose", "--log-format", "json")
    assert result.returncode == 0, result.err
    document = json.loads(result.out)
    assert document["pings_sent"] == ["/start", "/"] and document["warnings"] == []
    assert pings.paths() == ["/start", "/"]
    assert pings.authorizations == [pings.required_authorization] * 2
    for shown in (result.out, result.err):
        assert PING_PASSWORD not in shown and PING_PASSWORD_WRITTEN not in shown

    wrong = with_credentials.replace(PING_PASSWORD_WRITTEN, "wrong-Pa55word")
    project.write_config(sqlite_only(project), {"healthchecks_url": wrong, "min_free_disk_mb": 1})
    refused = project.lockstep("backup", "--json", "--verbose", "--log-format", "json")
    assert refused.returncode == 0, refused.err  # a ping never decides the backup
    warnings = json.loads(refused.out)["warnings"]
    assert len(warnings) == 2 and all("HTTP 401" in line for line in warnings), warnings
    assert all(f"http://127.0.0.1:{pings.url.split(':')[2].split('/')[0]} " in line for line in warnings), warnings
    for shown in (refused.out, refused.err):
        assert "wrong-Pa55word" not in shown and PING_USER not in shown and CHECK_UUID not in shown

    project.write_config(sqlite_only(project), {"healthchecks_url": wrong, "min_free_disk_mb": 1 << 40})
    failed = project.lockstep("--json", "backup")  # an error (no disk space): the /fail ping and --json
    assert failed.returncode == ExitCode.STORAGE, failed.err
    assert "wrong-Pa55word" not in failed.out + failed.err and json.loads(failed.out)["exit_code"] == ExitCode.STORAGE
