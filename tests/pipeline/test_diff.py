"""diff_database: rows added, removed and changed, and schema changes, on real SQLite,
PostgreSQL and MariaDB databases compared with a real snapshot of them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lockstep.pipeline.diff import DatabaseDiff, diff_database
from lockstep.pipeline.restore import ServerAccess
from lockstep.pipeline.snapshot import load_manifest
from tests.pipeline.test_verify import (
    POSTGRESQL_SERVER,
    make_sqlite,
    mariadb_database,
    open_repository,
    postgresql_database,
    record_scratch_urls,
    run_mariadb,
    run_postgresql,
    scratch_exists,
    take_snapshot,
)


@pytest.fixture
def scratch_urls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every scratch database an adapter creates during the test."""
    return record_scratch_urls(monkeypatch)


def diff_live(tmp_path: Path, name: str, url: str) -> DatabaseDiff:
    """Snapshot is already taken; compare the live database with the latest snapshot."""
    repository = open_repository(tmp_path / "repository")
    try:
        snapshot = repository.list_snapshots()[-1]
        manifest = load_manifest(repository, snapshot)
        return diff_database(repository, snapshot, manifest, name, ServerAccess(url))
    finally:
        repository.close()


def tables_of(result: DatabaseDiff) -> dict[str, tuple[str, int, int, int]]:
    return {
        table.name: (table.status, table.rows_added, table.rows_removed, table.rows_changed) for table in result.tables
    }


def test_an_unchanged_sqlite_database_has_no_differences(tmp_path: Path) -> None:
    """Right after the snapshot every table is unchanged."""
    url = make_sqlite(tmp_path / "app.db")
    take_snapshot(tmp_path / "repository", tmp_path, {"main": url})
    result = diff_live(tmp_path, "main", url)
    assert not result.changed
    assert set(tables_of(result)) == {"customers", "events", "alembic_version"}


def test_sqlite_rows_added_removed_changed_and_schema_changes(tmp_path: Path) -> None:
    """Keyed rows are matched by primary key; the keyless table is a multiset; an added column
    does not make every row look changed; added and dropped tables are reported with their rows."""
    url = make_sqlite(tmp_path / "app.db")
    take_snapshot(tmp_path / "repository", tmp_path, {"main": url})
    with sqlite3.connect(tmp_path / "app.db") as connection:
        connection.executescript(
            """
            INSERT INTO customers (name) VALUES ('new1'), ('new2');
            DELETE FROM customers WHERE id = 5;
            UPDATE customers SET name = 'renamed' WHERE id IN (7, 8, 9);
            INSERT INTO events VALUES ('refund', -3.0);
            DELETE FROM events WHERE rowid IN (1, 2);
            ALTER TABLE customers ADD COLUMN email TEXT;
            CREATE TABLE coupons (code TEXT PRIMARY KEY);
            INSERT INTO coupons VALUES ('A'), ('B');
            DROP TABLE alembic_version;
            """
        )
    connection.close()
    result = diff_live(tmp_path, "main", url)
    assert tables_of(result) == {
        "customers": ("changed", 2, 1, 3),
        "events": ("changed", 1, 2, 0),
        "coupons": ("added", 2, 0, 0),
        "alembic_version": ("removed", 0, 1, 0),
    }
    customers = next(table for table in result.tables if table.name == "customers")
    assert customers.key == ["id"]
    assert [(column.column, column.change) for column in customers.columns] == [("email", "added")]
    document = result.to_document()
    assert document["rows_added"] == 5 and document["rows_removed"] == 4 and document["rows_changed"] == 3


def test_many_changed_rows_are_all_counted(tmp_path: Path) -> None:
    """When most buckets differ, every row is fetched and the counts stay exact."""
    path = tmp_path / "big.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, value INTEGER)")
        connection.executemany("INSERT INTO items VALUES (?, ?)", [(i, i) for i in range(20_000)])
    connection.close()
    url = f"sqlite:///{path}"
    take_snapshot(tmp_path / "repository", tmp_path, {"main": url})
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE items SET value = value + 1 WHERE id % 2 = 0")
        connection.execute("DELETE FROM items WHERE id >= 19000")
    connection.close()
    result = diff_live(tmp_path, "main", url)
    assert tables_of(result)["items"] == ("changed", 0, 1000, 9500)


POSTGRESQL_SHOP = """
CREATE TABLE customers (id integer PRIMARY KEY, name text, photo bytea);
INSERT INTO customers SELECT g, 'c' || g, decode(md5(g::text), 'hex') FROM generate_series(1, 300) g;
CREATE TABLE notes (body text);
INSERT INTO notes VALUES ('a'), ('a'), ('b');
CREATE TABLE untouched (id integer PRIMARY KEY);
INSERT INTO untouched SELECT generate_series(1, 10);
CREATE TABLE legacy (id integer PRIMARY KEY);
INSERT INTO legacy VALUES (1), (2), (3);
"""

POSTGRESQL_CHANGES = """
INSERT INTO customers VALUES (1001, 'new'), (1002, 'new');
DELETE FROM customers WHERE id = 5;
UPDATE customers SET name = 'renamed' WHERE id IN (7, 8, 9);
UPDATE customers SET photo = NULL WHERE id = 10;
INSERT INTO notes VALUES ('c');
DELETE FROM notes WHERE ctid IN (SELECT ctid FROM notes WHERE body = 'a' LIMIT 1);
ALTER TABLE customers ADD COLUMN email text;
ALTER TABLE untouched ALTER COLUMN id TYPE bigint;
CREATE TABLE coupons (code text PRIMARY KEY);
INSERT INTO coupons VALUES ('A'), ('B');
DROP TABLE legacy;
"""

MARIADB_SHOP = """
CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(50), photo BLOB) ENGINE=InnoDB;
INSERT INTO customers SELECT seq, CONCAT('c', seq), UNHEX(MD5(seq)) FROM seq_1_to_300;
CREATE TABLE notes (body TEXT);
INSERT INTO notes VALUES ('a'), ('a'), ('b');
CREATE TABLE untouched (id INT PRIMARY KEY);
INSERT INTO untouched SELECT seq FROM seq_1_to_10;
CREATE TABLE legacy (id INT PRIMARY KEY);
INSERT INTO legacy VALUES (1), (2), (3);
"""

MARIADB_CHANGES = """
INSERT INTO customers (id, name) VALUES (1001, 'new'), (1002, 'new');
DELETE FROM customers WHERE id = 5;
UPDATE customers SET name = 'renamed' WHERE id IN (7, 8, 9);
UPDATE customers SET photo = NULL WHERE id = 10;
INSERT INTO notes VALUES ('c');
DELETE FROM notes WHERE body = 'a' LIMIT 1;
ALTER TABLE customers ADD COLUMN email TEXT;
ALTER TABLE untouched MODIFY id BIGINT;
CREATE TABLE coupons (code VARCHAR(20) PRIMARY KEY);
INSERT INTO coupons VALUES ('A'), ('B');
DROP TABLE legacy;
"""


@pytest.mark.parametrize("engine", ["postgresql", "mariadb"])
def test_server_databases_report_row_and_schema_changes(engine: str, tmp_path: Path, scratch_urls: list[str]) -> None:
    """The same changes give the same report on PostgreSQL and MariaDB; the snapshot's scratch
    copy on the server is dropped afterwards."""
    if engine == "postgresql":
        context, changes, run = postgresql_database(POSTGRESQL_SHOP), POSTGRESQL_CHANGES, run_postgresql
    else:
        context, changes, run = mariadb_database(MARIADB_SHOP), MARIADB_CHANGES, run_mariadb  # type: ignore[assignment]
    with context as url:
        take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
        unchanged = diff_live(tmp_path, "shop", url)
        assert not unchanged.changed, unchanged.to_document()
        run(url, changes)
        result = diff_live(tmp_path, "shop", url)
    assert tables_of(result) == {
        "customers": ("changed", 2, 1, 4),
        "notes": ("changed", 1, 1, 0),
        "untouched": ("changed", 0, 0, 0),
        "coupons": ("added", 2, 0, 0),
        "legacy": ("removed", 0, 3, 0),
    }
    by_name = {table.name: table for table in result.tables}
    assert [(c.column, c.change) for c in by_name["customers"].columns] == [("email", "added")]
    retyped = by_name["untouched"].columns
    assert [(c.column, c.change) for c in retyped] == [("id", "type")]
    assert retyped[0].snapshot_type is not None and "int" in retyped[0].snapshot_type.lower()
    assert retyped[0].live_type is not None and "big" in retyped[0].live_type.lower()
    assert scratch_urls and not any(scratch_exists(scratch) for scratch in scratch_urls)


def test_a_mariadb_charset_conversion_is_a_schema_change(tmp_path: Path) -> None:
    """`ALTER TABLE ... CONVERT TO CHARACTER SET` gave "no changes": rows are hashed as utf8mb4
    text, the same in any character set, and the column type (varchar(50)) stays. Each text
    column now shows as retyped, its character set and collation in the type."""
    shop = """
    CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(50), note TEXT, age INT)
        CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci;
    INSERT INTO customers VALUES (1, 'ann', 'caf\u00e9', 30), (2, 'bob', NULL, 40);
    """
    with mariadb_database(shop) as url:
        take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
        assert not diff_live(tmp_path, "shop", url).changed
        run_mariadb(url, "ALTER TABLE customers CONVERT TO CHARACTER SET latin1 COLLATE latin1_swedish_ci;")
        result = diff_live(tmp_path, "shop", url)
    assert tables_of(result) == {"customers": ("changed", 0, 0, 0)}
    columns = {change.column: change for change in result.tables[0].columns}
    assert sorted(columns) == ["name", "note"] and all(change.change == "type" for change in columns.values())
    assert columns["name"].snapshot_type == "varchar(50) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
    assert columns["name"].live_type == "varchar(50) CHARACTER SET latin1 COLLATE latin1_swedish_ci"


@pytest.mark.parametrize(
    "conversion",
    ["ALTER TABLE ledger CONVERT TO CHARACTER SET latin1", "ALTER TABLE ledger DEFAULT CHARSET = latin1"],
)
def test_a_mariadb_table_without_text_columns_converted_is_a_schema_change(tmp_path: Path, conversion: str) -> None:
    """A table with no text column converted to another character set gave "no changes": no
    column's type carries a character set to differ. Its default collation (which new text
    columns get) is compared too, and shown."""
    import io

    from rich.console import Console

    from lockstep.cli.snapshot_diff import print_database_diff

    shop = """
    CREATE TABLE ledger (id INT PRIMARY KEY, amount DECIMAL(10, 2), booked DATE)
        CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci;
    INSERT INTO ledger VALUES (1, 9.5, '2026-01-02');
    """
    with mariadb_database(shop) as url:
        take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
        assert not diff_live(tmp_path, "shop", url).changed
        run_mariadb(url, conversion + ";")
        result = diff_live(tmp_path, "shop", url)
    assert tables_of(result) == {"ledger": ("changed", 0, 0, 0)}
    assert result.tables[0].columns == []
    assert result.tables[0].default_collation == ("utf8mb4_general_ci", "latin1_swedish_ci")
    assert result.to_document()["tables"][0]["default_collation"] == {
        "snapshot": "utf8mb4_general_ci",
        "live": "latin1_swedish_ci",
    }
    output = io.StringIO()
    print_database_diff(result, Console(file=output, width=200))
    assert "default collation: utf8mb4_general_ci → latin1_swedish_ci" in output.getvalue()
    from lockstep.pipeline.data_rollback import describe_table_change

    assert (
        describe_table_change(result.tables[0])
        == "default collation latin1_swedish_ci (set back to utf8mb4_general_ci)"
    )


def test_a_default_collation_one_side_does_not_know_is_not_a_change() -> None:
    """Only collations known on both sides are compared: a shape without one (another engine,
    or a reader that did not ask) must not make an unchanged table look changed."""
    from lockstep.pipeline.diff import TableShape, compare_schemas

    class Shapes:
        max_listed_buckets = 0

        def __init__(self, collation: str) -> None:
            self.collation = collation

        def shapes(self) -> dict[str, TableShape]:
            return {"ledger": TableShape({"id": "int(11)"}, ["id"], 1, self.collation)}

    def status(live: str, snapshot: str) -> str:
        return compare_schemas(Shapes(live), Shapes(snapshot))[0].status  # type: ignore[arg-type]

    assert status("latin1_swedish_ci", "") == "unchanged"
    assert status("", "utf8mb4_general_ci") == "unchanged"
    assert status("latin1_swedish_ci", "latin1_swedish_ci") == "unchanged"
    assert status("latin1_swedish_ci", "utf8mb4_general_ci") == "changed"


def test_bucket_count_grows_with_the_table_in_powers_of_two() -> None:
    """Small tables get the minimum, big ones about one bucket per 16 rows, capped."""
    from lockstep.pipeline.diff import MAX_BUCKETS, MIN_BUCKETS, bucket_count

    assert bucket_count(0) == MIN_BUCKETS
    assert bucket_count(1_000_000) == 65536
    assert bucket_count(10**12) == MAX_BUCKETS
    assert all(bucket_count(rows) & (bucket_count(rows) - 1) == 0 for rows in (17, 40_000, 3_000_001))


def test_a_latin1_postgresql_database_shows_no_false_changes(tmp_path: Path, scratch_urls: list[str]) -> None:
    """The snapshot's scratch copy was made UTF8, so every accented row of a LATIN1 database
    looked changed; it is now made in the dump's encoding."""
    with postgresql_database() as url:
        name = url.rsplit("/", 1)[1]
        run_postgresql(POSTGRESQL_SERVER, f'DROP DATABASE "{name}"', database="postgres")
        run_postgresql(
            POSTGRESQL_SERVER, f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'LATIN1' LOCALE 'C'", "postgres"
        )
        run_postgresql(
            url,
            "CREATE TABLE people (id int PRIMARY KEY, name text);"
            "INSERT INTO people SELECT g, 'Grüße ' || g FROM generate_series(1, 100) g;",
        )
        take_snapshot(tmp_path / "repository", tmp_path, {"main": url})
        assert not diff_live(tmp_path, "main", url).changed
        run_postgresql(url, "UPDATE people SET name = 'Zürich' WHERE id = 3")
        assert tables_of(diff_live(tmp_path, "main", url)) == {"people": ("changed", 0, 0, 1)}


def test_an_inheritance_parent_is_compared_without_its_childrens_rows(tmp_path: Path) -> None:
    """A row added to a child table was reported twice: under the child and under its parent."""
    with postgresql_database(
        "CREATE TABLE measurements (id int, value int);"
        "CREATE TABLE measurements_2026 () INHERITS (measurements);"
        "INSERT INTO measurements VALUES (1, 1);"
        "INSERT INTO measurements_2026 VALUES (2, 2), (3, 3);"
    ) as url:
        take_snapshot(tmp_path / "repository", tmp_path, {"main": url})
        run_postgresql(url, "INSERT INTO measurements_2026 VALUES (4, 4); DELETE FROM ONLY measurements WHERE id = 1")
        assert tables_of(diff_live(tmp_path, "main", url)) == {
            "measurements": ("changed", 0, 1, 0),
            "measurements_2026": ("changed", 1, 0, 0),
        }


def test_postgresql_database_settings_do_not_make_rows_look_changed(tmp_path: Path, scratch_urls: list[str]) -> None:
    """Rows are compared by their text, and the live database's own TimeZone, IntervalStyle,
    search_path (ALTER DATABASE ... SET) are not the scratch copy's: every row with a
    timestamptz, an interval or a regclass looked changed. The settings are pinned now."""
    with postgresql_database(
        "CREATE SCHEMA app;"
        "CREATE TABLE app.events (id int PRIMARY KEY, at timestamptz, took interval, ratio float8, about regclass);"
        "INSERT INTO app.events SELECT g, '2026-11-23 10:00+00', '1 day 2 hours', 0.1, 'app.events'"
        " FROM generate_series(1, 50) g;"
    ) as url:
        name = url.rsplit("/", 1)[1]
        for setting in ("TimeZone = 'America/New_York'", "IntervalStyle = iso_8601", "search_path = app, public"):
            run_postgresql(POSTGRESQL_SERVER, f'ALTER DATABASE "{name}" SET {setting}', database="postgres")
        take_snapshot(tmp_path / "repository", tmp_path, {"main": url})
        assert not diff_live(tmp_path, "main", url).changed
        run_postgresql(url, "UPDATE app.events SET at = at + interval '1 second' WHERE id = 3")
        assert tables_of(diff_live(tmp_path, "main", url)) == {"app.events": ("changed", 0, 0, 1)}


def test_postgresql_sequences_that_moved_and_large_objects_show_in_the_diff(tmp_path: Path) -> None:
    """A sequence advanced since the snapshot (rows were added somewhere, or numbers handed out)
    and large objects added, removed or rewritten are what a data restore would lose too."""
    with postgresql_database(
        "CREATE TABLE invoices (id serial PRIMARY KEY, scan oid);"
        "INSERT INTO invoices (scan) SELECT lo_from_bytea(0, convert_to('scan ' || g, 'UTF8'))"
        " FROM generate_series(1, 3) g;"
        "CREATE SEQUENCE ticket_numbers;"
    ) as url:
        take_snapshot(tmp_path / "repository", tmp_path, {"main": url})
        unchanged = diff_live(tmp_path, "main", url)
        assert not unchanged.changed, unchanged.to_document()
        assert unchanged.to_document()["large_objects"] == {"added": 0, "removed": 0, "changed": 0}
        run_postgresql(
            url,
            "SELECT nextval('ticket_numbers'), nextval('ticket_numbers');"
            "SELECT lo_put(scan, 0, '\\x41') FROM invoices WHERE id = 1;"
            "SELECT lo_unlink(scan) FROM invoices WHERE id = 2;"
            "SELECT lo_from_bytea(0, 'new');",
        )
        result = diff_live(tmp_path, "main", url)
        assert result.changed and not any(table.changed for table in result.tables)
        document = result.to_document()
        assert document["sequences"] == [
            {
                "sequence": "ticket_numbers",
                "status": "changed",
                "snapshot": {"last_value": 1, "is_called": False},
                "live": {"last_value": 2, "is_called": True},
            }
        ]
        assert document["large_objects"] == {"added": 1, "removed": 1, "changed": 1}


def test_moved_sequences_and_large_objects_are_printed_even_with_no_table_changed() -> None:
    """The text output said "no changes" when only a sequence had moved."""
    import io

    from rich.console import Console

    from lockstep.cli.snapshot_diff import print_database_diff
    from lockstep.pipeline.diff import LargeObjectsDiff, SequenceDiff

    result = DatabaseDiff(
        "main",
        "postgresql",
        "ab" * 32,
        "postgresql://app@db/shop",
        [],
        0.1,
        sequences=[SequenceDiff("ticket_numbers", "changed", (1, False), (2, True))],
        large_objects=LargeObjectsDiff(added=1),
    )
    output = io.StringIO()
    print_database_diff(result, Console(file=output, width=120))
    assert output.getvalue().splitlines()[1:] == [
        "  sequence ticket_numbers: changed, 1 (unused) → 2",
        "  large objects: 1 added, 0 removed, 0 changed",
    ]


def test_a_data_rollback_preview_names_large_objects_and_sequences_it_would_undo() -> None:
    """Before a data rollback the preview said "nothing is lost" when only large objects had
    been written (they are lost too) or a sequence had moved (it is set back)."""
    from lockstep.pipeline.data_rollback import summarize_discarded
    from lockstep.pipeline.diff import LargeObjectsDiff, SequenceDiff

    quiet = DatabaseDiff("main", "postgresql", "ab" * 32, "postgresql://app@db/shop", [], 0.1)
    assert summarize_discarded([quiet]) == ["database main: no changes since the snapshot; nothing is lost"]
    written = DatabaseDiff(
        "main",
        "postgresql",
        "ab" * 32,
        "postgresql://app@db/shop",
        [],
        0.1,
        sequences=[SequenceDiff("invoice_numbers", "changed", (4242, True), (4250, True))],
        large_objects=LargeObjectsDiff(added=2, removed=1),
    )
    assert summarize_discarded([written]) == [
        "database main, large objects: 2 added (lost), 1 deleted (come back)",
        "database main, sequence invoice_numbers: at 4250, at 4242 in the snapshot; a restore sets it back",
    ]


def test_a_data_rollback_preview_says_a_table_without_rows_in_the_snapshot_comes_back_empty() -> None:
    """exclude_table_data: the live rows of such a table are not "added since the snapshot", they
    were never in it; the preview says the restore empties the table, and only when it has rows."""
    from lockstep.pipeline.data_rollback import summarize_discarded
    from lockstep.pipeline.diff import TableDiff

    sessions = TableDiff("sessions", "unchanged", key=["token"], rows_not_in_snapshot=12)
    empty_cache = TableDiff("cache", "unchanged", key=["key"], rows_not_in_snapshot=0)
    diff = DatabaseDiff("main", "postgresql", "ab" * 32, "postgresql://app@db/shop", [sessions, empty_cache], 0.1)
    assert summarize_discarded([diff]) == [
        "database main, table sessions: rows not in the snapshot (exclude_table_data): a restore gives the "
        "table back empty, discarding its 12 live rows (no snapshot keeps them)"
    ]
