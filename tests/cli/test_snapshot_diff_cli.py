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
