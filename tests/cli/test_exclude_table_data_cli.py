"""`databases.NAME.exclude_table_data` end to end: the real CLI, a PostgreSQL, a MariaDB and a
SQLite database, real dumps. The tables stay in the snapshot, their rows do not."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.cli.test_snapshot_cli import Project, project  # noqa: F401  (the fixture)
from tests.cli.test_snapshot_restore_cli import run_on_terminal
from tests.pipeline.test_verify import (
    MARIADB_SERVER,
    POSTGRESQL_SERVER,
    require_mariadb,
    require_postgresql,
    run_mariadb,
    run_postgresql,
)

POSTGRESQL_SCHEMA = """
CREATE TABLE customers (id serial PRIMARY KEY, email text NOT NULL);
CREATE TABLE sessions (token text PRIMARY KEY, customer_id int REFERENCES customers (id), seen timestamptz);
CREATE INDEX sessions_seen ON sessions (seen);
CREATE TABLE cache_pages (path text PRIMARY KEY, body text);
CREATE TABLE page_views (path text REFERENCES cache_pages (path));
CREATE SCHEMA audit;
CREATE TABLE audit.log (id serial PRIMARY KEY, line text);
INSERT INTO customers (email) SELECT 'c' || g || '@example.org' FROM generate_series(1, 20) g;
INSERT INTO sessions SELECT 'token-' || g, g, now() FROM generate_series(1, 20) g;
INSERT INTO cache_pages VALUES ('/', 'cached-page-body');
INSERT INTO audit.log (line) VALUES ('audit-line-1'), ('audit-line-2');
"""
MARIADB_SCHEMA = """
CREATE TABLE orders (id int PRIMARY KEY AUTO_INCREMENT, total decimal(10,2));
CREATE TABLE sessions (token varchar(40) PRIMARY KEY, KEY sessions_token_prefix (token(8)));
INSERT INTO orders (total) VALUES (1.50), (2.50);
INSERT INTO sessions VALUES ('maria-session-1'), ('maria-session-2'), ('maria-session-3');
"""


def exclude_name() -> str:
    return f"exclude_{uuid.uuid4().hex[:8]}"


@contextmanager
def server_databases() -> Iterator[tuple[str, str]]:
    require_postgresql()
    require_mariadb()
    pg_name, my_name = exclude_name(), exclude_name()
    run_postgresql(POSTGRESQL_SERVER, f'CREATE DATABASE "{pg_name}"', database="postgres")
    run_mariadb(MARIADB_SERVER, f"CREATE DATABASE `{my_name}` CHARACTER SET utf8mb4", database="")
    try:
        pg_url, my_url = f"postgresql://postgres@127.0.0.1:5432/{pg_name}", f"mariadb://root@127.0.0.1:3306/{my_name}"
        run_postgresql(pg_url, POSTGRESQL_SCHEMA)
        run_mariadb(my_url, MARIADB_SCHEMA)
        yield pg_url, my_url
    finally:
        run_postgresql(POSTGRESQL_SERVER, f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)', database="postgres")
        run_mariadb(MARIADB_SERVER, f"DROP DATABASE IF EXISTS `{my_name}`", database="")


def fill_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.executescript(
            """
            CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
            CREATE TABLE cache_entries (key TEXT PRIMARY KEY, value TEXT);
            CREATE INDEX cache_value ON cache_entries (value);
            CREATE TABLE log (key TEXT);
            CREATE TRIGGER cache_gone AFTER DELETE ON cache_entries BEGIN INSERT INTO log VALUES (OLD.key); END;
            INSERT INTO notes (body) VALUES ('kept note');
            INSERT INTO cache_entries VALUES ('k1', 'sqlite-cache-value'), ('k2', 'sqlite-cache-value');
            """
        )
    connection.close()


def write_config(target: Project, databases: dict[str, tuple[str, list[str]]]) -> None:
    lines = [f'[repository]\nurl = "{target.repository}"\n']
    for name, (url, patterns) in databases.items():
        lines.append(f'[databases.{name}]\nurl = "{url}"\nexclude_table_data = {json.dumps(patterns)}\n')
    (target.root / "lockstep.toml").write_text("\n".join(lines))


def test_excluded_tables_keep_their_definition_but_not_their_rows(project: Project, tmp_path: Path) -> None:  # noqa: F811
    """Each engine's dump holds the excluded tables' definitions and indexes but none of their
    rows; the manifest lists them with 0 rows; a pattern matching nothing is a warning naming it,
    and so is a kept table's foreign key to an emptied one;
    the live databases keep every row; verify --level restore passes; show, diff and an
    in-place restore say the rows are not in the snapshot."""
    fill_sqlite(project.root / "notes.db")
    with server_databases() as (pg_url, my_url):
        write_config(
            project,
            {
                "shop": (pg_url, ["sessions", "cache_*", "audit.*", "nosuch_*"]),
                "orders": (my_url, ["sessions"]),
                "notes": ("sqlite:///notes.db", ["cache_*"]),
            },
        )
        created = project.create("--allow-dirty", "-m", "without sessions")
        shop, orders, notes = (created["databases"][name] for name in ("shop", "orders", "notes"))
        assert shop["rows_excluded"] == ["audit.log", "cache_pages", "sessions"]
        assert orders["rows_excluded"] == ["sessions"]
        assert notes["rows_excluded"] == ["cache_entries"]
        rows = {table["name"]: table["rows"] for table in shop["tables"]}
        assert rows == {"customers": 20, "sessions": 0, "cache_pages": 0, "audit.log": 0, "page_views": 0}
        assert {table["name"]: table["rows"] for table in orders["tables"]} == {"orders": 2, "sessions": 0}
        assert any("'nosuch_*' matches no table" in warning for warning in shop["warnings"]), shop
        # A kept table referring to an emptied one could not get its foreign key back with rows.
        assert any("page_views has a foreign key to cache_pages" in warning for warning in shop["warnings"]), shop
        assert not any("table sessions has" in warning for warning in shop["warnings"]), shop
        assert "warnings" not in orders

        archive = project.repo("dump", created["id"], "/databases/shop.dump").stdout
        assert b"token-1" not in archive and b"cached-page-body" not in archive and b"audit-line" not in archive
        assert b"c1@example.org" in archive and b"sessions_seen" in archive
        sql = project.repo("dump", created["id"], "/databases/orders.sql").stdout
        assert b"maria-session" not in sql and b"CREATE TABLE `sessions`" in sql and b"sessions_token_prefix" in sql
        copy = tmp_path / "notes-copy.sqlite3"
        copy.write_bytes(project.repo("dump", created["id"], "/databases/notes.sqlite3").stdout)
        assert b"sqlite-cache-value" not in copy.read_bytes()
        with sqlite3.connect(copy) as connection:
            assert connection.execute("SELECT count(*) FROM cache_entries").fetchone() == (0,)
            assert connection.execute("SELECT count(*) FROM log").fetchone() == (0,)  # the trigger did not fire
            assert connection.execute("SELECT count(*) FROM notes").fetchone() == (1,)
            names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
            assert {"cache_entries", "cache_value", "cache_gone"} <= names
        connection.close()

        # The live databases are untouched.
        assert run_postgresql(pg_url, "SELECT count(*) FROM sessions") == [(20,)]
        assert run_mariadb(my_url, "SELECT COUNT(*) FROM sessions") == [["3"]]
        with sqlite3.connect(project.root / "notes.db") as connection:
            assert connection.execute("SELECT count(*) FROM cache_entries").fetchone() == (2,)
            assert connection.execute("SELECT count(*) FROM log").fetchone() == (0,)
        connection.close()

        verified = json.loads(project.ok("snapshot", "verify", created["id"], "--level", "restore", "--json").out)
        assert verified["ok"] is True, verified

        shown = project.ok("snapshot", "show", created["id"]).out
        assert "sessions: rows not in the snapshot (exclude_table_data)" in shown
        assert json.loads(project.ok("snapshot", "show", created["id"], "--json").out)["databases"]["orders"][
            "rows_excluded"
        ] == ["sessions"]

        diffed = json.loads(project.ok("snapshot", "diff", created["id"], "--database", "shop", "--json").out)
        tables = {table["table"]: table for table in diffed["databases"][0]["tables"]}
        assert tables["sessions"]["rows_not_in_snapshot"] == 20 and tables["sessions"]["rows_added"] == 0
        assert tables["customers"]["status"] == "unchanged" and "rows_not_in_snapshot" not in tables["customers"]
        assert "rows not in the snapshot" in project.ok("snapshot", "diff", created["id"], "--database", "orders").out

        # Before the confirmation: the tables come back empty, their live rows discarded.
        declined = run_on_terminal(project, b"n\n", "snapshot", "restore", created["id"], "--database", "orders")
        assert declined.returncode == 1, declined.err
        assert "sessions: rows not in the snapshot (exclude_table_data)" in declined.out
        assert "discarding its 3 live rows" in declined.out
        assert run_mariadb(my_url, "SELECT COUNT(*) FROM sessions") == [["3"]]

        restored = project.ok("snapshot", "restore", created["id"], "--database", "shop", "--yes")
        assert "discarding its 20 live rows" in restored.out
        assert run_postgresql(pg_url, "SELECT count(*) FROM sessions") == [(0,)]
        assert run_postgresql(pg_url, "SELECT count(*) FROM customers") == [(20,)]
        assert run_postgresql(pg_url, "SELECT indexname FROM pg_indexes WHERE indexname = 'sessions_seen'")


def test_a_partitioned_table_and_a_dangling_foreign_key_end_to_end(project: Project) -> None:  # noqa: F811
    """`events`, a partitioned table, leaves its partitions' rows out: the manifest lists them, no
    warning says the pattern matched nothing, verify restores them empty. MariaDB's logins,
    kept, refers to the emptied sessions: the snapshot warns, as a PostgreSQL one would."""
    with server_databases() as (pg_url, my_url):
        run_postgresql(
            pg_url,
            "CREATE TABLE events (at date, body text) PARTITION BY RANGE (at);"
            "CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');"
            "CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');"
            "INSERT INTO events VALUES ('2024-03-01', 'event-body-2024'), ('2025-03-01', 'event-body-2025')",
        )
        run_mariadb(
            my_url,
            "CREATE TABLE logins (token varchar(40), FOREIGN KEY (token) REFERENCES sessions (token));"
            "INSERT INTO logins VALUES ('maria-session-1')",
        )
        write_config(project, {"shop": (pg_url, ["events"]), "orders": (my_url, ["sessions"])})
        created = project.create("--allow-dirty", "-m", "without events")
        shop, orders = created["databases"]["shop"], created["databases"]["orders"]
        assert shop["rows_excluded"] == ["events_2024", "events_2025"]
        assert "warnings" not in shop, shop
        assert orders["warnings"] == [
            "exclude_table_data: table logins has a foreign key to sessions, whose rows are left out: a restore "
            "keeps the rows of logins that refer to rows of sessions, which are not there; leave out logins's "
            "rows too, or keep sessions's"
        ]
        archive = project.repo("dump", created["id"], "/databases/shop.dump").stdout
        assert b"event-body" not in archive
        verified = json.loads(project.ok("snapshot", "verify", created["id"], "--level", "restore", "--json").out)
        assert verified["ok"] is True, verified
        assert (
            "events_2025: rows not in the snapshot (exclude_table_data)"
            in project.ok("snapshot", "show", created["id"]).out
        )
        assert run_postgresql(pg_url, "SELECT count(*) FROM events") == [(2,)]


@pytest.mark.parametrize(
    ("url", "pattern", "said"),
    [
        ("sqlite:///app.db", "cache_[0-9]", "only * (any characters) and ? (one character)"),
        ("sqlite:///app.db", "", "a pattern is empty"),
        ("sqlite:///app.db", "main.sessions", "has a dot"),
        ("mariadb://root@127.0.0.1:3306/shop", "shop.sessions", "has a dot"),
        ("postgresql://postgres@127.0.0.1:5432/shop", "shop.public.sessions", "is not TABLE or SCHEMA.TABLE"),
        ("postgresql://postgres@127.0.0.1:5432/shop", "audit.", "is not TABLE or SCHEMA.TABLE"),
    ],
)
def test_a_pattern_that_is_not_valid_is_a_config_error_naming_the_key(
    project: Project,  # noqa: F811
    url: str,
    pattern: str,
    said: str,
) -> None:
    write_config(project, {"main": (url, [pattern])})
    refused = project.lockstep("snapshot", "create", "-m", "x")
    assert refused.returncode == 2, refused.err
    assert "exclude_table_data" in refused.err and said in refused.err, refused.err
