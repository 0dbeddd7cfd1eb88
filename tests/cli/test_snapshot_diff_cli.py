"""`lockstep snapshot diff` end to end: the real CLI against a real SQLite database (and MariaDB)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.cli.test_snapshot_cli import Project
from tests.cli.test_snapshot_verify_cli import make_project
from tests.pipeline.test_verify import mariadb_database, run_mariadb


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A fresh project with a SQLite database and an initialised repository."""
    return make_project(tmp_path)


def test_diff_reports_rows_and_schema_changes_per_table(project: Project) -> None:
    """Right after the snapshot: no changes. After writes: per table rows added, removed and
    changed, a new column and a new table, in the table and in --json."""
    project.create("-m", "before")
    assert "no changes" in project.ok("snapshot", "diff", "latest").out
    with sqlite3.connect(project.root / "app.db") as connection:
        connection.executescript(
            """
            INSERT INTO customers (name) VALUES ('late customer');
            DELETE FROM orders WHERE id <= 3;
            UPDATE orders SET total = 0 WHERE id BETWEEN 10 AND 14;
            ALTER TABLE customers ADD COLUMN email TEXT;
            CREATE TABLE coupons (code TEXT PRIMARY KEY);
            """
        )
    connection.close()
    human = project.ok("snapshot", "diff", "latest").out
    assert "database main" in human
    assert "+email TEXT" in human and "table added" in human
    document = json.loads(project.ok("snapshot", "diff", "latest", "--database", "main", "--json").out)
    assert document["changed"] is True
    tables = {table["table"]: table for table in document["databases"][0]["tables"]}
    assert (tables["orders"]["rows_added"], tables["orders"]["rows_removed"], tables["orders"]["rows_changed"]) == (
        0,
        3,
        5,
    )
    assert tables["customers"]["rows_added"] == 1 and tables["customers"]["columns"][0]["column"] == "email"
    assert tables["coupons"]["status"] == "added"
    assert tables["alembic_version"]["status"] == "unchanged"


def test_a_configured_database_the_snapshot_lacks_is_named_not_left_out(project: Project) -> None:
    """A database added to lockstep.toml after the snapshot, or any database but the one a
    pre-restore snapshot replaced, has nothing to compare with: diff said nothing about it, so
    its absence read as "unchanged". It is named in the text and under not_in_snapshot."""
    created = project.create("-m", "before the second database")
    with sqlite3.connect(project.root / "extra.db") as connection:
        connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    connection.close()
    project.write_config({"main": "sqlite:///app.db", "extra": "sqlite:///extra.db"})
    human = project.ok("snapshot", "diff", "latest").out
    assert f"database extra: not in snapshot {created['short_id']}, not compared" in human, human
    document = json.loads(project.ok("snapshot", "diff", "latest", "--json").out)
    assert document["not_in_snapshot"] == ["extra"] and document["skipped"] == []
    assert [database["database"] for database in document["databases"]] == ["main"]
    only_main = json.loads(project.ok("snapshot", "diff", "latest", "--database", "main", "--json").out)
    assert only_main["not_in_snapshot"] == []


def test_a_database_the_snapshot_lacks_gets_a_hint_to_name_one_that_holds_it(project: Project) -> None:
    """Right after a restore of one database, `latest` is its pre-restore snapshot, which holds
    only that one: `restore latest --database other` said only "has no database 'other'"."""
    with sqlite3.connect(project.root / "extra.db") as connection:
        connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    connection.close()
    project.write_config({"main": "sqlite:///app.db", "extra": "sqlite:///extra.db"})
    (project.root / ".gitignore").write_text("app.db\nextra.db\n.env\n")
    project.create("--allow-dirty", "-m", "both")
    project.ok("snapshot", "restore", "latest", "--database", "extra", "--yes")
    for command in (["restore", "latest", "--database", "main", "--yes"], ["diff", "latest", "--database", "main"]):
        result = project.lockstep("snapshot", *command)
        assert result.returncode == 13, result.err
        line = result.err.strip().splitlines()[-1]
        assert "has no database 'main' (it has: extra)" in line, line
        assert "give the ID of a snapshot that holds it (`lockstep snapshot list`)" in line, line


def test_an_unknown_database_is_a_usage_error(project: Project) -> None:
    """--database must name a database of lockstep.toml."""
    project.create("-m", "one")
    result = project.lockstep("snapshot", "diff", "latest", "--database", "nope")
    assert result.returncode == 2 and "nope" in result.err


def test_mariadb_diff_through_the_cli(project: Project) -> None:
    """On MariaDB the snapshot is restored into a scratch database on the same server and compared."""
    with mariadb_database(
        "CREATE TABLE items (id INT PRIMARY KEY, label VARCHAR(40));"
        "INSERT INTO items SELECT seq, CONCAT('item ', seq) FROM seq_1_to_100;"
    ) as url:
        project.write_config({"shop": url})
        project.create("--allow-dirty", "-m", "mariadb")
        run_mariadb(url, "DELETE FROM items WHERE id > 90; UPDATE items SET label = 'x' WHERE id = 1;")
        document = json.loads(project.ok("snapshot", "diff", "latest", "--json").out)
    items = document["databases"][0]["tables"][0]
    assert (items["table"], items["rows_removed"], items["rows_changed"]) == ("items", 10, 1)
    assert document["databases"][0]["engine"] == "mysql"
