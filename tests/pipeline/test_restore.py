"""restore_database and restore_files against real databases and a real snapshot."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from lockstep.databases import adapter_for
from lockstep.errors import IntegrityError, SourceError, UsageError
from lockstep.pipeline.restore import RestoredDatabase, ServerAccess, restore_database, restore_files, target_state
from lockstep.pipeline.snapshot import load_manifest
from lockstep.repository.repository import Repository
from lockstep.repository.snapshot import Snapshot
from tests.pipeline.test_verify import (
    POSTGRESQL_SERVER,
    make_sqlite,
    mariadb_database,
    open_repository,
    postgresql_database,
    rewrite_manifest,
    run_mariadb,
    run_postgresql,
    take_snapshot,
    unique_name,
)

POSTGRESQL_SHOP = """
CREATE TABLE customers (id serial PRIMARY KEY, name text, photo bytea);
INSERT INTO customers (name, photo) SELECT 'c' || g, decode(md5(g::text), 'hex') FROM generate_series(1, 200) g;
CREATE VIEW customer_names AS SELECT name FROM customers;
"""

MARIADB_SHOP = """
CREATE TABLE customers (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(50), photo BLOB) ENGINE=InnoDB;
INSERT INTO customers (name, photo) SELECT CONCAT('c', seq), UNHEX(MD5(seq)) FROM seq_1_to_200;
"""


def fingerprint(url: str) -> dict[str, tuple[int, str]]:
    return {table.name: (table.rows, table.checksum) for table in adapter_for(url).inspect(url, None).tables}


def latest(repository: Repository) -> Snapshot:
    return repository.list_snapshots()[-1]


def restore_latest_in_place(repository_path: Path, url: str) -> RestoredDatabase:
    """The newest snapshot's database "shop" restored over `url` (replace=True)."""
    repository = open_repository(repository_path)
    try:
        snapshot = latest(repository)
        manifest = load_manifest(repository, snapshot)
        return restore_database(repository, snapshot, manifest, "shop", ServerAccess(url), replace=True)
    finally:
        repository.close()


@pytest.mark.parametrize("engine", ["postgresql", "mariadb"])
def test_restore_in_place_replaces_changed_data_and_extra_tables(engine: str, tmp_path: Path) -> None:
    """After writes, a new table and a dropped one, replacing in place brings back exactly the
    snapshot: the fingerprint equals the manifest's, the new table is gone."""
    if engine == "postgresql":
        context, run = postgresql_database(POSTGRESQL_SHOP), run_postgresql
        changes = "DELETE FROM customers WHERE id < 50; CREATE TABLE added (id int); DROP VIEW customer_names;"
    else:
        context, run = mariadb_database(MARIADB_SHOP), run_mariadb  # type: ignore[assignment]
        changes = "DELETE FROM customers WHERE id < 50; CREATE TABLE added (id INT);"
    with context as url:
        take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
        before = fingerprint(url)
        run(url, changes)
        assert fingerprint(url) != before
        repository = open_repository(tmp_path / "repository")
        try:
            snapshot = latest(repository)
            manifest = load_manifest(repository, snapshot)
            with pytest.raises(UsageError, match="not empty"):
                restore_database(repository, snapshot, manifest, "shop", ServerAccess(url), replace=False)
            assert "added" in fingerprint(url)  # refused: untouched
            restored = restore_database(repository, snapshot, manifest, "shop", ServerAccess(url), replace=True)
        finally:
            repository.close()
        assert fingerprint(url) == before
        assert restored.rows == 200
        if engine == "postgresql":
            assert run(url, "SELECT count(*) FROM customer_names") == [(200,)]


def test_restore_into_a_missing_postgresql_database_creates_it(tmp_path: Path) -> None:
    """--to a database that does not exist yet: created, restored, checked."""
    with postgresql_database(POSTGRESQL_SHOP) as url:
        take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
        target = f"postgresql://postgres@127.0.0.1:5432/{unique_name()}"
        adapter = adapter_for(target)
        assert target_state(adapter, ServerAccess(target)) == "missing"
        repository = open_repository(tmp_path / "repository")
        try:
            snapshot = latest(repository)
            restore_database(repository, snapshot, load_manifest(repository, snapshot), "shop", ServerAccess(target))
            assert fingerprint(target) == fingerprint(url)
        finally:
            repository.close()
            name = target.rsplit("/", 1)[1]
            run_postgresql(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', database="postgres")


def test_a_restore_that_does_not_match_the_manifest_is_an_integrity_error(tmp_path: Path) -> None:
    """The check after the restore compares with the manifest and names the database and table."""
    url = make_sqlite(tmp_path / "app.db")
    take_snapshot(tmp_path / "repository", tmp_path, {"main": url})
    repository = open_repository(tmp_path / "repository")
    try:

        def wrong(document: dict[str, object]) -> None:
            document["databases"]["main"]["tables"][0]["rows"] = 7  # type: ignore[index]

        bad = rewrite_manifest(repository, latest(repository), wrong)
        target = f"sqlite:///{tmp_path / 'copy.db'}"
        with pytest.raises(IntegrityError, match=r"database main .* table alembic_version"):
            restore_database(repository, bad, load_manifest(repository, bad), "main", ServerAccess(target))
    finally:
        repository.close()


def test_restore_files_writes_config_and_secrets_with_mode_0600(tmp_path: Path) -> None:
    """Files go to their project-relative paths; secrets are 0600 whatever mode they had."""
    project = tmp_path / "project"
    (project / "config").mkdir(parents=True)
    (project / "config" / "app.yml").write_text("currency: EUR\n")
    (project / ".env").write_text("KEY=secret\n")
    (project / ".env").chmod(0o644)
    url = make_sqlite(project / "app.db")
    take_snapshot(tmp_path / "repository", project, {"main": url}, config=["config/*.yml"], secrets=[".env"])
    target = tmp_path / "restored"
    repository = open_repository(tmp_path / "repository")
    try:
        snapshot = latest(repository)
        written = restore_files(repository, snapshot, load_manifest(repository, snapshot), target)
    finally:
        repository.close()
    assert sorted(file.path for file in written) == ["/files/config/config/app.yml", "/files/secrets/.env"]
    assert (target / "config" / "app.yml").read_text() == "currency: EUR\n"
    assert (target / ".env").read_text() == "KEY=secret\n"
    assert stat.S_IMODE(os.stat(target / ".env").st_mode) == 0o600
    with sqlite3.connect(project / "app.db") as connection:
        assert connection.execute("SELECT count(*) FROM customers").fetchone() == (200,)
    connection.close()


def test_checksums_of_another_algorithm_are_not_compared_but_row_counts_are() -> None:
    """A snapshot from before PostgreSQL's checksum changed (md5, 32 hex) still restores; rows still count."""
    from lockstep.databases.base import DatabaseInfo, TableInfo
    from lockstep.pipeline.manifest import TableRecord
    from lockstep.pipeline.restore import compare_with_manifest

    recorded = [TableRecord(name="orders", rows=10, checksum="0" * 32)]
    same_rows = DatabaseInfo("postgresql", "15", [TableInfo("orders", 10, "1" * 16)], None, None)
    fewer_rows = DatabaseInfo("postgresql", "15", [TableInfo("orders", 9, "1" * 16)], None, None)
    other_sum = DatabaseInfo("postgresql", "15", [TableInfo("orders", 10, "1" * 32)], None, None)
    assert compare_with_manifest(recorded, same_rows) == []
    assert compare_with_manifest(recorded, fewer_rows)
    assert compare_with_manifest(recorded, other_sum)


def test_extra_tables_count_against_a_manifest_only_when_it_names_its_algorithm() -> None:
    """Older MariaDB manifests (no algorithm named) left system-versioned tables out: restoring
    such a snapshot brings back a table they do not list, which is not a failed restore."""
    from lockstep.databases.base import DatabaseInfo, TableInfo
    from lockstep.pipeline.manifest import TableRecord
    from lockstep.pipeline.restore import compare_with_manifest

    recorded = [TableRecord(name="orders", rows=10, checksum="12345")]
    restored = DatabaseInfo(
        "mysql", "10.11", [TableInfo("orders", 10, "12345"), TableInfo("prices", 3, "9")], None, None
    )
    assert compare_with_manifest(recorded, restored) == []
    assert compare_with_manifest(recorded, restored, comparable=True) == [
        ("prices", "table prices was restored but is not in the manifest")
    ]


def test_a_named_checksum_algorithm_decides_whether_checksums_are_compared() -> None:
    """With the algorithm in the manifest, the checksums' lengths no longer matter."""
    from lockstep.databases.base import DatabaseInfo, TableInfo
    from lockstep.databases.postgresql import PostgresqlAdapter
    from lockstep.pipeline.manifest import DatabaseRecord, TableRecord
    from lockstep.pipeline.restore import checksums_comparable, compare_with_manifest

    recorded = [TableRecord(name="orders", rows=10, checksum="0" * 16)]
    other_sum = DatabaseInfo("postgresql", "15", [TableInfo("orders", 10, "1" * 16)], None, None)
    assert compare_with_manifest(recorded, other_sum, comparable=True)
    assert compare_with_manifest(recorded, other_sum, comparable=False) == []
    assert compare_with_manifest(recorded, other_sum)  # not named: same length, so compared

    def record(algorithm: str | None) -> DatabaseRecord:
        return DatabaseRecord(
            "postgresql",
            "15",
            "postgresql-custom",
            "/databases/main.dump",
            1,
            "a" * 64,
            recorded,
            None,
            None,
            checksum_algorithm=algorithm,
        )

    adapter = PostgresqlAdapter()
    assert checksums_comparable(record("row-hash-sum-4"), adapter) is True
    assert checksums_comparable(record("row-hash-sum-3"), adapter) is True  # checked as made: inspect_as
    assert checksums_comparable(record("row-hash-sum-2"), adapter) is True  # checked as made: inspect_as
    assert checksums_comparable(record("row-hash-sum"), adapter) is True  # checked as made: inspect_as
    assert checksums_comparable(record("md5-in-key-order"), adapter) is False
    assert checksums_comparable(record(None), adapter) is None


def test_counts_taken_outside_the_dump_snapshot_are_not_held_against_a_restore() -> None:
    """A MyISAM table (not `consistent`) or an after-dump fingerprint may differ from the dump
    when the application wrote during the snapshot; a missing table is still a problem."""
    from lockstep.databases.base import DatabaseInfo, TableInfo
    from lockstep.pipeline.manifest import TableRecord
    from lockstep.pipeline.restore import compare_with_manifest

    recorded = [
        TableRecord(name="orders", rows=10, checksum="a" * 16),
        TableRecord(name="sessions", rows=5, checksum="b" * 16, consistent=False),
    ]
    drifted = DatabaseInfo(
        "mariadb", "10.11", [TableInfo("orders", 10, "a" * 16), TableInfo("sessions", 7, "c" * 16)], None, None
    )
    assert compare_with_manifest(recorded, drifted) == []
    both_drifted = DatabaseInfo(
        "mariadb", "10.11", [TableInfo("orders", 11, "d" * 16), TableInfo("sessions", 7, "c" * 16)], None, None
    )
    assert [table for table, _ in compare_with_manifest(recorded, both_drifted)] == ["orders"]
    assert compare_with_manifest(recorded, both_drifted, inspected="after-dump") == []
    missing = DatabaseInfo("mariadb", "10.11", [TableInfo("orders", 10, "a" * 16)], None, None)
    assert [table for table, _ in compare_with_manifest(recorded, missing, inspected="after-dump")] == ["sessions"]


MARIADB_OBJECTS = """
CREATE TABLE parents (id INT PRIMARY KEY) ENGINE=InnoDB;
CREATE TABLE children (id INT PRIMARY KEY, parent_id INT, FOREIGN KEY (parent_id) REFERENCES parents (id));
INSERT INTO parents VALUES (1), (2); INSERT INTO children VALUES (10, 1), (20, 2);
CREATE VIEW child_count AS SELECT COUNT(*) AS n FROM children;
CREATE SEQUENCE invoice_numbers;
CREATE PROCEDURE touch() SELECT 1;
CREATE FUNCTION answer() RETURNS INT DETERMINISTIC RETURN 42;
CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY DISABLE DO SELECT 1;
"""


def test_mariadb_restore_in_place_keeps_the_database_and_its_character_set(tmp_path: Path) -> None:
    """The target is emptied object by object (foreign keys, views, sequences, routines,
    events), not dropped and re-created: its character set and the database stay."""
    with mariadb_database(MARIADB_OBJECTS) as url:
        name = url.rsplit("/", 1)[1]
        run_mariadb(url, f"ALTER DATABASE `{name}` CHARACTER SET latin1 COLLATE latin1_german1_ci")
        take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
        before = fingerprint(url)
        run_mariadb(url, "DELETE FROM children; DROP PROCEDURE touch; CREATE TABLE added (id INT)")
        restore_latest_in_place(tmp_path / "repository", url)
        assert fingerprint(url) == before
        assert run_mariadb(url, "SELECT n FROM child_count; SELECT answer()") == [["2"], ["42"]]
        assert run_mariadb(url, "SELECT COUNT(*) FROM information_schema.routines WHERE routine_name = 'touch'") == [
            ["1"]
        ]
        charset = f"SELECT default_collation_name FROM information_schema.schemata WHERE schema_name = '{name}'"
        assert run_mariadb(url, charset, database="") == [["latin1_german1_ci"]]


def test_mariadb_restore_refuses_a_target_it_could_not_fill_and_drops_nothing(tmp_path: Path) -> None:
    """A user that may drop but not create tables: before, the database was dropped and then
    could not be re-created. Now nothing is touched and the error says which grant is missing."""
    with mariadb_database(MARIADB_SHOP) as url:
        name = url.rsplit("/", 1)[1]
        user = unique_name()
        run_mariadb(
            url,
            f"CREATE USER '{user}'@'%' IDENTIFIED BY ''; CREATE USER '{user}'@'localhost' IDENTIFIED BY '';"
            f" GRANT SELECT, INSERT, UPDATE, DELETE, DROP, ALTER, INDEX, LOCK TABLES ON `{name}`.* TO '{user}'@'%';"
            f" GRANT SELECT, INSERT, UPDATE, DELETE, DROP, ALTER, INDEX, LOCK TABLES ON `{name}`.*"
            f" TO '{user}'@'localhost'",
        )
        try:
            take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
            target = ServerAccess(f"mariadb://{user}@127.0.0.1:3306/{name}")
            repository = open_repository(tmp_path / "repository")
            try:
                snapshot = latest(repository)
                manifest = load_manifest(repository, snapshot)
                with pytest.raises(
                    SourceError, match="creating a table there failed, so nothing was dropped"
                ) as raised:
                    restore_database(repository, snapshot, manifest, "shop", target, replace=True)
                assert raised.value.hint is not None and "ALL on that database" in raised.value.hint
            finally:
                repository.close()
            assert run_mariadb(url, "SELECT COUNT(*) FROM customers") == [["200"]]
        finally:
            run_mariadb(url, f"DROP USER IF EXISTS '{user}'@'%'; DROP USER IF EXISTS '{user}'@'localhost'")


def test_postgresql_restore_in_place_keeps_owners_and_the_public_schema_grants(tmp_path: Path) -> None:
    """The application's role owns its database and tables; lockstep restores as postgres. The
    role must still own and read its tables afterwards, and public keeps its owner and USAGE
    for everyone (pg_dump leaves the defaults out, and --no-owner gave everything to postgres)."""
    import psycopg

    role = unique_name()
    run_postgresql(POSTGRESQL_SERVER, f'CREATE ROLE "{role}" LOGIN', database="postgres")
    try:
        with postgresql_database() as url:
            name = url.rsplit("/", 1)[1]
            run_postgresql(url, f'ALTER DATABASE "{name}" OWNER TO "{role}"', database="postgres")

            def as_role(statement: str) -> list[tuple[object, ...]]:
                with psycopg.connect(host="127.0.0.1", user=role, dbname=name, autocommit=True) as connection:
                    cursor = connection.execute(statement)  # type: ignore[arg-type]
                    return cursor.fetchall() if cursor.description else []

            as_role("CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'kept')")
            public_before = run_postgresql(
                url, "SELECT nspowner::regrole::text, nspacl::text FROM pg_namespace WHERE nspname = 'public'"
            )
            take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
            as_role("DELETE FROM notes")
            restore_latest_in_place(tmp_path / "repository", url)
            assert as_role("SELECT body FROM notes") == [("kept",)]
            assert run_postgresql(url, "SELECT tableowner FROM pg_tables WHERE tablename = 'notes'") == [(role,)]
            assert (
                run_postgresql(
                    url, "SELECT nspowner::regrole::text, nspacl::text FROM pg_namespace WHERE nspname = 'public'"
                )
                == public_before
            )
            # The application's own role (no superuser) restoring its database: --no-owner, and
            # what it restores is its own again; public keeps its grants here too.
            as_role("DELETE FROM notes")
            restore_latest_in_place(tmp_path / "repository", f"postgresql://{role}@127.0.0.1:5432/{name}")
            assert as_role("SELECT body FROM notes") == [("kept",)]
            assert run_postgresql(url, "SELECT tableowner FROM pg_tables WHERE tablename = 'notes'") == [(role,)]
            public_now = "SELECT nspowner::regrole::text, nspacl::text FROM pg_namespace WHERE nspname = 'public'"
            assert run_postgresql(url, public_now) == public_before
    finally:
        run_postgresql(POSTGRESQL_SERVER, f'DROP ROLE IF EXISTS "{role}"', database="postgres")


def test_postgresql_target_state_counts_types_functions_and_schemas_not_extensions() -> None:
    """A restore killed during its schema step can leave types or functions and no table; such a
    target is not empty (pg_restore would fail on "already exists"). An extension's objects are
    the database's setup, not data: that target still is."""
    with postgresql_database("CREATE EXTENSION IF NOT EXISTS citext") as url:
        adapter = adapter_for(url)
        assert target_state(adapter, ServerAccess(url)) == "empty"
        for leftover, undo in [
            ("CREATE TYPE mood AS ENUM ('x')", "DROP TYPE mood"),
            ("CREATE FUNCTION one() RETURNS int LANGUAGE sql AS 'SELECT 1'", "DROP FUNCTION one()"),
            ("CREATE SCHEMA billing", "DROP SCHEMA billing"),
            ("CREATE PUBLICATION everything FOR ALL TABLES", "DROP PUBLICATION everything"),
        ]:
            run_postgresql(url, leftover)
            assert target_state(adapter, ServerAccess(url)) == "non-empty", leftover
            run_postgresql(url, undo)


def test_postgresql_restore_in_place_with_a_publication(tmp_path: Path) -> None:
    """Publications live outside the schemas that are dropped: the restore failed on "publication
    already exists" after emptying the database."""
    shop = POSTGRESQL_SHOP + "CREATE PUBLICATION shop_changes FOR TABLE customers;"
    with postgresql_database(shop) as url:
        take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
        run_postgresql(url, "DELETE FROM customers WHERE id < 10")
        restored = restore_latest_in_place(tmp_path / "repository", url)
        assert restored.rows == 200
        assert run_postgresql(url, "SELECT pubname, tablename FROM pg_publication_tables") == [
            ("shop_changes", "customers")
        ]


def test_a_restore_whose_sequence_differs_from_the_manifest_is_an_integrity_error(tmp_path: Path) -> None:
    """`snapshot restore` checks sequence values too: a restore that left a sequence at another
    value (here: the manifest says otherwise) fails, naming it; the right one passes."""
    with postgresql_database(
        POSTGRESQL_SHOP + "CREATE SEQUENCE invoice_numbers; SELECT setval('invoice_numbers', 500);"
    ) as url:
        take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
        repository = open_repository(tmp_path / "repository")
        targets = [f"postgresql://postgres@127.0.0.1:5432/{unique_name()}" for _ in range(2)]
        try:
            good = latest(repository)

            def wrong(document: dict[str, Any]) -> None:
                for sequence in document["databases"]["shop"]["sequences"]:
                    if sequence["name"] == "invoice_numbers":
                        sequence["is_called"] = False

            bad = rewrite_manifest(repository, good, wrong)
            with pytest.raises(IntegrityError, match=r"database shop .*sequence invoice_numbers has last_value 500"):
                restore_database(repository, bad, load_manifest(repository, bad), "shop", ServerAccess(targets[0]))
            restored = restore_database(
                repository, good, load_manifest(repository, good), "shop", ServerAccess(targets[1])
            )
            assert restored.rows == 200
            assert run_postgresql(targets[1], "SELECT last_value, is_called FROM invoice_numbers") == [(500, True)]
        finally:
            repository.close()
            for target in targets:
                name = target.rsplit("/", 1)[1]
                run_postgresql(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', database="postgres")


def test_table_names_resolve_as_postgresql_names_them_and_a_missing_one_names_the_closest() -> None:
    """resolve_tables: `public.orders` is the manifest's `orders`; a bare name is found in any
    schema when unique and refused (UsageError, both named) when not; a quoted name with a dot
    is one name; a name the snapshot lacks is NotFound naming every table, or, among many, the
    closest ones, unless `unrecorded` (PostgreSQL) leaves it to the dump."""
    from lockstep.errors import NotFound
    from lockstep.pipeline.manifest import DatabaseRecord, TableRecord
    from lockstep.pipeline.restore import resolve_tables

    def record(names: list[str], engine: str = "postgresql") -> DatabaseRecord:
        tables = [TableRecord(name=name, rows=1, checksum="0") for name in names]
        return DatabaseRecord(engine, "15", "postgresql-custom", "/databases/shop.dump", 1, None, tables, None, None)

    snapshot = Snapshot(time="2026-11-24T00:00:00Z", tree=b"", paths=[], id=b"\x01" * 32)
    shop = record(["orders", "customers", "archive.old_orders", 'sales."q.1"', "sales.items", "items"])
    assert resolve_tables(shop, snapshot, "shop", ["public.orders", "orders", "old_orders", "archive.old_orders"]) == [
        "orders",
        "archive.old_orders",
    ]
    assert resolve_tables(shop, snapshot, "shop", ['"q.1"', 'sales."q.1"']) == ['sales."q.1"']
    with pytest.raises(UsageError, match=r"public\.items, sales\.items"):
        resolve_tables(shop, snapshot, "shop", ["items"])
    with pytest.raises(NotFound, match=r"has no table 'order' \(it has: orders, customers"):
        resolve_tables(shop, snapshot, "shop", ["order"])
    many = record([f"table_{number}" for number in range(30)] + ["invoices"])
    with pytest.raises(NotFound, match=r"the closest it has: invoices\)"):
        resolve_tables(many, snapshot, "shop", ["invoice"])
    assert resolve_tables(record(["a.b"], engine="sqlite"), snapshot, "main", ["a.b"]) == ["a.b"]
    # A partitioned table is not in the manifest (its partitions are): with `unrecorded`, a name
    # the manifest lacks is passed on as the manifest would write it, for the dump to settle.
    assert resolve_tables(
        shop, snapshot, "shop", ["public.measurements", "archive.events", '"a.b"', "orders"], unrecorded=True
    ) == ["measurements", "archive.events", '"a.b"', "orders"]
    with pytest.raises(UsageError, match=r"public\.items, sales\.items"):
        resolve_tables(shop, snapshot, "shop", ["items"], unrecorded=True)
