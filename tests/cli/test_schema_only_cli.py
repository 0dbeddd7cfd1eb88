"""`lockstep snapshot create --schema-only` end to end: a project with a PostgreSQL, a MariaDB and
a SQLite database holding rows, the real CLI, real servers, and the real restic."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lockstep.config.model import RetentionConfig
from lockstep.pipeline.retention_policy import plan_forget
from lockstep.repository.snapshot import Snapshot
from tests.cli.test_snapshot_cli import Project, project  # noqa: F401  (the fixture)
from tests.conftest import run_restic
from tests.pipeline.test_verify import (
    MARIADB_SERVER,
    POSTGRESQL_SERVER,
    require_mariadb,
    require_postgresql,
    run_mariadb,
    run_postgresql,
)

POSTGRESQL_SCHEMA = """
CREATE TABLE customers (id serial PRIMARY KEY, email text NOT NULL, created date DEFAULT now());
CREATE UNIQUE INDEX customers_email ON customers (email);
CREATE TABLE schema_migrations (version text PRIMARY KEY);
INSERT INTO customers (email) SELECT 'c' || g || '@example.org' FROM generate_series(1, 300) g;
INSERT INTO schema_migrations VALUES ('20260101000000');
"""
MARIADB_SCHEMA = """
CREATE TABLE orders (id int PRIMARY KEY AUTO_INCREMENT, total decimal(10,2), note varchar(40),
    KEY orders_total (total));
CREATE TABLE audit (id int PRIMARY KEY AUTO_INCREMENT, order_id int);
INSERT INTO orders (total, note) VALUES (1.50, 'a'), (2.50, 'b'), (3.50, 'c');
CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW INSERT INTO audit (order_id) VALUES (NEW.id);
CREATE PROCEDURE order_count() SELECT COUNT(*) FROM orders;
"""


def qa_name() -> str:
    return f"qa_schema_{uuid.uuid4().hex[:8]}"


@contextmanager
def postgresql_database(statements: str) -> Iterator[tuple[str, list[str]]]:
    """A PostgreSQL database holding `statements`; extra names appended to the list are dropped too."""
    require_postgresql()
    name = qa_name()
    others: list[str] = []
    run_postgresql(POSTGRESQL_SERVER, f'CREATE DATABASE "{name}"', database="postgres")
    try:
        run_postgresql(f"postgresql://postgres@127.0.0.1:5432/{name}", statements)
        yield f"postgresql://postgres@127.0.0.1:5432/{name}", others
    finally:
        for database in [name, *others]:
            run_postgresql(POSTGRESQL_SERVER, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)', database="postgres")


@contextmanager
def mariadb_database(statements: str) -> Iterator[tuple[str, list[str]]]:
    require_mariadb()
    name = qa_name()
    others: list[str] = []
    run_mariadb(MARIADB_SERVER, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4", database="")
    try:
        run_mariadb(f"mariadb://root@127.0.0.1:3306/{name}", statements)
        yield f"mariadb://root@127.0.0.1:3306/{name}", others
    finally:
        for database in [name, *others]:
            run_mariadb(MARIADB_SERVER, f"DROP DATABASE IF EXISTS `{database}`", database="")


def fill_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.executescript(
            """
            CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT);
            CREATE INDEX notes_body ON notes (body);
            CREATE TABLE log (note_id INTEGER);
            CREATE TRIGGER notes_gone AFTER DELETE ON notes BEGIN INSERT INTO log VALUES (OLD.id); END;
            INSERT INTO notes (body) VALUES ('secret row 1'), ('secret row 2');
            """
        )


@pytest.fixture
def three_databases(project: Project) -> Iterator[tuple[Project, str, str, list[str], list[str]]]:  # noqa: F811
    fill_sqlite(project.root / "notes.db")
    with (
        postgresql_database(POSTGRESQL_SCHEMA) as (pg_url, pg_others),
        mariadb_database(MARIADB_SCHEMA) as (my_url, my_others),
    ):
        project.write_config({"shop": pg_url, "orders": my_url, "notes": "sqlite:///notes.db"})
        yield project, pg_url, my_url, pg_others, my_others


def test_schema_only_snapshot_holds_no_rows_and_verifies(
    three_databases: tuple[Project, str, str, list[str], list[str]], tmp_path: Path
) -> None:
    current, pg_url, my_url, pg_others, my_others = three_databases
    created = current.create("--allow-dirty", "--schema-only", "-m", "structure")
    assert created["schema_only"] is True
    for name in ("shop", "orders", "notes"):
        database = created["databases"][name]
        assert database["schema_only"] is True
        assert database["tables"] and all(table["rows"] == 0 for table in database["tables"]), database
    assert {table["name"] for table in created["databases"]["orders"]["tables"]} == {"orders", "audit"}

    # The stored dumps hold no rows.
    sql = current.repo("dump", created["id"], "/databases/orders.sql").stdout
    assert b"CREATE TABLE `orders`" in sql and b"INSERT INTO" not in sql.replace(b"INSERT INTO audit", b"")
    assert b"orders_audit" in sql and b"order_count" in sql  # triggers and routines kept
    archive = current.repo("dump", created["id"], "/databases/shop.dump").stdout
    assert b"c1@example.org" not in archive and b"20260101000000" not in archive and b"customers_email" in archive
    copy = tmp_path / "notes-copy.sqlite3"
    copy.write_bytes(current.repo("dump", created["id"], "/databases/notes.sqlite3").stdout)
    assert b"secret row" not in copy.read_bytes()
    with sqlite3.connect(copy) as connection:
        assert connection.execute("SELECT count(*) FROM notes").fetchone() == (0,)
        assert connection.execute("SELECT count(*) FROM log").fetchone() == (0,)  # the trigger did not fire
        names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        assert {"notes", "log", "notes_body", "notes_gone"} <= names

    verified = json.loads(current.ok("snapshot", "verify", created["id"], "--level", "restore", "--json").out)
    assert verified["ok"] is True, verified

    # Restore --to new databases: the tables with their columns and indexes, no rows.
    pg_target_name, my_target_name = qa_name(), qa_name()
    pg_others.append(pg_target_name)
    my_others.append(my_target_name)
    pg_target = pg_url.rsplit("/", 1)[0] + "/" + pg_target_name
    my_target = my_url.rsplit("/", 1)[0] + "/" + my_target_name
    current.ok("snapshot", "restore", created["id"], "--database", "shop", "--to", pg_target)
    current.ok("snapshot", "restore", created["id"], "--database", "orders", "--to", my_target)
    assert run_postgresql(pg_target, "SELECT count(*) FROM customers") == [(0,)]
    assert run_postgresql(pg_target, "SELECT count(*) FROM schema_migrations") == [(0,)]
    columns = run_postgresql(
        pg_target, "SELECT column_name FROM information_schema.columns WHERE table_name = 'customers' ORDER BY 1"
    )
    assert [row[0] for row in columns] == ["created", "email", "id"]
    indexes = run_postgresql(pg_target, "SELECT indexname FROM pg_indexes WHERE tablename = 'customers' ORDER BY 1")
    assert [row[0] for row in indexes] == ["customers_email", "customers_pkey"]
    assert run_mariadb(my_target, "SELECT COUNT(*) FROM orders") == [["0"]]
    assert run_mariadb(my_target, "SELECT COUNT(*) FROM audit") == [["0"]]
    keys = run_mariadb(my_target, "SHOW INDEX FROM orders")
    assert {row[2] for row in keys} == {"PRIMARY", "orders_total"}
    assert run_mariadb(my_target, "SHOW TRIGGERS") and run_mariadb(
        my_target, "SHOW PROCEDURE STATUS WHERE Db = DATABASE()"
    )

    # list and show mark it.
    listed = json.loads(current.ok("snapshot", "list", "--json").out)
    assert [item["schema_only"] for item in listed] == [True]
    assert "schema only" in current.ok("snapshot", "list").out
    shown = json.loads(current.ok("snapshot", "show", created["id"], "--json").out)
    assert shown["schema_only"] is True
    assert "schema only" in current.ok("snapshot", "show", created["id"]).out
    tags = json.loads(current.repo("snapshots", "--json").out)[-1]
    assert "schema-only" in tags["tags"] and tags["paths"][0].endswith("/schema-only")


def test_an_ordinary_manifest_has_no_schema_only_key(project: Project) -> None:  # noqa: F811
    schema = project.create("--schema-only", "-m", "structure")
    assert schema["schema_only"] is True and schema["databases"]["main"]["schema_only"] is True
    created = project.create("-m", "full")
    assert "schema_only" not in created
    assert all("schema_only" not in database for database in created["databases"].values())
    assert "schema-only" not in json.loads(project.repo("snapshots", "--json").out)[-1]["tags"]
    assert created["databases"]["main"]["tables"][0]["rows"] != 0


def test_the_schema_only_tag_is_reserved(project: Project) -> None:  # noqa: F811
    refused = project.lockstep("snapshot", "create", "--tag", "schema-only")
    assert refused.returncode != 0 and "reserved" in refused.err


def test_retention_keeps_the_full_snapshot_of_a_day_with_a_later_schema_only_one(
    project: Project,  # noqa: F811
    restic_binary: str,
) -> None:
    full = project.create("-m", "nightly")
    schema = project.create("--schema-only", "-m", "structure")
    snapshots = [
        Snapshot.from_document(item, item["id"]) for item in json.loads(project.repo("snapshots", "--json").out)
    ]
    plan = plan_forget(
        snapshots, RetentionConfig(keep_daily=1, keep_weekly=0, keep_monthly=0), datetime.now(UTC), project="shop"
    )
    kept = {snapshot.id for snapshot in plan.keep}
    assert full["id"] in kept and schema["id"] in kept and not plan.remove
    # restic's own forget groups them apart too (by host and paths).
    dry = run_restic(str(project.repository), ["forget", "--keep-daily", "1", "--dry-run", "--json"])
    assert dry.returncode == 0, dry.err
    groups = json.loads(dry.out)
    assert len(groups) == 2
    assert {item["id"] for group in groups for item in group["keep"]} >= {full["id"], schema["id"]}


def test_restoring_a_schema_only_snapshot_in_place_says_every_row_is_discarded(project: Project) -> None:  # noqa: F811
    full = project.create("-m", "full")
    schema = project.create("--schema-only", "-m", "structure")
    # `latest` is the newest snapshot with data, never a schema-only one.
    assert json.loads(project.ok("snapshot", "show", "latest", "--json").out)["id"] == full["id"]

    diffed = json.loads(project.ok("snapshot", "diff", schema["id"], "--json").out)
    main = diffed["databases"][0] if isinstance(diffed, dict) and "databases" in diffed else diffed[0]
    assert main["schema_only"] is True and main["rows_compared"] is False
    assert main["changed"] is False and main["rows_removed"] == 0  # live rows are no schema change
    human = project.ok("snapshot", "diff", schema["id"]).out
    assert "rows are not compared" in human

    restored = project.ok("snapshot", "restore", schema["id"], "--database", "main", "--yes")
    assert "schema-only snapshot: every row of database main is discarded" in restored.out
    assert "pre-restore snapshot" in restored.out
    with sqlite3.connect(project.root / "app.db") as connection:
        assert connection.execute("SELECT count(*) FROM orders").fetchone() == (0,)
    listed = json.loads(project.ok("snapshot", "list", "--json").out)
    assert listed[-1]["kind"] == "pre-restore"
    assert {table["name"]: table["rows"] for table in listed[-1]["databases"]["main"]["tables"]}["orders"] == 345


def test_a_data_rollback_refuses_a_schema_only_snapshot(
    project: Project,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lockstep.actions.snapshot_create import load_project
    from lockstep.errors import UsageError
    from lockstep.pipeline.data_rollback import restore_snapshot_data

    schema = project.create("--schema-only", "-m", "structure")
    context = load_project(project.root, None, None)
    monkeypatch.setenv("LOCKSTEP_PASSWORD", project.env["LOCKSTEP_PASSWORD"])
    with context.access.session(exclusive=True) as repository:
        snapshot = repository.find_snapshot(schema["id"])
        with pytest.raises(UsageError, match="schema-only snapshot"):
            restore_snapshot_data(repository, snapshot, context.config, project.root, "default")
    with sqlite3.connect(project.root / "app.db") as connection:
        assert connection.execute("SELECT count(*) FROM orders").fetchone() == (345,)


def test_a_schema_only_snapshot_does_not_count_as_a_backup_of_the_data(
    project: Project,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The RPO watch, doctor and the metrics looked at the newest snapshot of any kind: a
    schema-only one made the data's last backup look as recent as itself."""
    from lockstep.actions.environment import load_environment
    from lockstep.agent.rpo_watch import newest_good_snapshot_age

    for name, value in project.env.items():
        monkeypatch.setenv(name, value)
    project.create("--schema-only", "-m", "structure only")
    context = load_environment(project.root, None, None)
    assert newest_good_snapshot_age(context) is None
    doctor = json.loads(project.lockstep("doctor", "--json").out)
    good = next(check for check in doctor if check["name"] == "last good snapshot")
    assert good["status"] == "fail" and "no snapshots yet" in good["detail"]
    project.create("-m", "full")
    age = newest_good_snapshot_age(context)
    assert age is not None and age < 0.1
