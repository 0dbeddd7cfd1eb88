"""verify_snapshot against real snapshots of real SQLite, PostgreSQL and MariaDB databases.

The helpers at the top (repository, snapshots, uniquely named test databases on the real
servers) are shared with test_diff.py and test_restore.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lockstep.config.model import ProjectConfig
from lockstep.databases.base import DatabaseAdapter, ServerLocation
from lockstep.databases.mysql import MysqlAdapter
from lockstep.databases.postgresql import PostgresqlAdapter
from lockstep.databases.sqlite import SqliteAdapter
from lockstep.errors import IntegrityError, LockstepError, UsageError
from lockstep.pipeline.manifest import MANIFEST_PATH, Manifest
from lockstep.pipeline.restore import ServerAccess
from lockstep.pipeline.snapshot import SnapshotRequest, create_snapshot, load_manifest
from lockstep.pipeline.verification_records import Finding, VerificationResult, latest_results, load_history
from lockstep.pipeline.verify import raise_for_result, verify_snapshot
from lockstep.repository.blobs import BlobType
from lockstep.repository.builder import SnapshotBuilder
from lockstep.repository.repository import Repository
from lockstep.repository.restorer import dump_file, find_node
from lockstep.repository.snapshot import Snapshot
from lockstep.storage.local import LocalBackend
from tests.conftest import TEST_PASSWORD, missing, require_binary

POSTGRESQL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
MARIADB_SERVER = "mariadb://root@127.0.0.1:3306/mysql"


# --- shared helpers ------------------------------------------------------------------------


def unique_name() -> str:
    return f"lockstep_test_{uuid.uuid4().hex[:8]}"


def require_postgresql() -> None:
    require_binary("pg_dump", "apt-get install postgresql-client")
    require_binary("pg_restore", "apt-get install postgresql-client")
    import psycopg

    try:
        psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=5).close()
    except psycopg.Error as error:
        missing(f"PostgreSQL is not reachable on 127.0.0.1:5432: {error}")


def require_mariadb() -> None:
    require_binary("mariadb", "apt-get install mariadb-client")
    require_binary("mariadb-dump", "apt-get install mariadb-client")
    probe = subprocess.run(
        ["mariadb", "--host=127.0.0.1", "--port=3306", "--user=root", "--connect-timeout=5", "-e", "SELECT 1"],
        capture_output=True,
        env={"MYSQL_PWD": "", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    if probe.returncode != 0:
        missing(f"MariaDB is not reachable on 127.0.0.1:3306: {probe.stderr.decode().strip()}")


def run_postgresql(url: str, statements: str, database: str | None = None) -> list[tuple[Any, ...]]:
    """Run SQL outside the code under test; returns the last statement's rows (if any)."""
    import psycopg

    name = database or ServerLocation.parse(url).database
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=name, autocommit=True) as connection:
        cursor = connection.execute(statements)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def run_mariadb(url: str, statements: str, database: str | None = None) -> list[list[str]]:
    name = ServerLocation.parse(url).database if database is None else database
    completed = subprocess.run(
        ["mariadb", "--host=127.0.0.1", "--port=3306", "--user=root", "--batch", "--skip-column-names"]
        + ([name] if name else []),
        input=statements.encode(),
        capture_output=True,
        env={"MYSQL_PWD": "", "PATH": "/usr/bin:/bin"},
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode()
    return [line.split("\t") for line in completed.stdout.decode().splitlines()]


@contextmanager
def postgresql_database(statements: str = "") -> Iterator[str]:
    """A uniquely named PostgreSQL database holding `statements`, dropped afterwards."""
    require_postgresql()
    name = unique_name()
    run_postgresql(POSTGRESQL_SERVER, f'CREATE DATABASE "{name}"', database="postgres")
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        if statements:
            run_postgresql(url, statements)
        yield url
    finally:
        run_postgresql(POSTGRESQL_SERVER, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', database="postgres")


@contextmanager
def mariadb_database(statements: str = "") -> Iterator[str]:
    """A uniquely named MariaDB database holding `statements`, dropped afterwards."""
    require_mariadb()
    name = unique_name()
    run_mariadb(MARIADB_SERVER, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4", database="")
    url = f"mariadb://root@127.0.0.1:3306/{name}"
    try:
        if statements:
            run_mariadb(url, statements)
        yield url
    finally:
        run_mariadb(MARIADB_SERVER, f"DROP DATABASE IF EXISTS `{name}`", database="")


def make_sqlite(path: Path) -> str:
    """A SQLite database with a keyed table, a keyless table and a migration table; its URL."""
    with sqlite3.connect(path) as connection:
        connection.executescript(
            """
            CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, photo BLOB);
            CREATE TABLE events (kind TEXT, amount REAL);
            CREATE TABLE alembic_version (version_num TEXT NOT NULL);
            INSERT INTO alembic_version VALUES ('3f2a9c');
            """
        )
        connection.executemany(
            "INSERT INTO customers (name, photo) VALUES (?, ?)", [(f"c{i}", bytes([i % 256]) * 40) for i in range(200)]
        )
        connection.executemany("INSERT INTO events VALUES (?, ?)", [("sale", i * 1.5) for i in range(50)])
    connection.close()
    return f"sqlite:///{path}"


def open_repository(path: Path) -> Repository:
    """A repository at `path` (created when missing), opened afresh with its index loaded."""
    if not (path / "config").exists():
        Repository.init(LocalBackend(path), TEST_PASSWORD).close()
    repository = Repository.open(LocalBackend(path), TEST_PASSWORD)
    repository.load_index()
    return repository


def take_snapshot(
    repository_path: Path, directory: Path, databases: dict[str, str], schema_only: bool = False, **files: list[str]
) -> Snapshot:
    """A coordinated snapshot of `databases` (and config/secret file patterns) made by the real pipeline."""
    source: dict[str, Any] = {"repository": {"url": str(repository_path)}, "databases": {}}
    for name, url in databases.items():
        source["databases"][name] = {"url": url}
    if files:
        source["files"] = files
    config = ProjectConfig.from_source(source, directory).resolve(None)
    repository = open_repository(repository_path)
    try:
        request = SnapshotRequest(project_directory=directory, message="test", schema_only=schema_only)
        return create_snapshot(repository, config, request, code=None).snapshot
    finally:
        repository.close()


@contextmanager
def sqlite_snapshot(tmp_path: Path) -> Iterator[tuple[Repository, Snapshot]]:
    """A snapshot of make_sqlite's database in a fresh repository, opened with its index."""
    url = make_sqlite(tmp_path / "app.db")
    snapshot = take_snapshot(tmp_path / "repository", tmp_path, {"main": url})
    repository = open_repository(tmp_path / "repository")
    try:
        yield repository, snapshot
    finally:
        repository.close()


def rewrite_manifest(repository: Repository, snapshot: Snapshot, change: Callable[[dict[str, Any]], None]) -> Snapshot:
    """A new snapshot holding the same dumps and files, with the manifest edited by `change`."""
    manifest = load_manifest(repository, snapshot)
    document = manifest.to_document()
    change(document)
    paths = [database.path for database in manifest.databases.values()] + [file.path for file in manifest.files]
    with SnapshotBuilder(repository) as builder:
        for path in paths:
            buffer = io.BytesIO()
            dump_file(repository, find_node(repository, snapshot, path), buffer)
            builder.add_bytes(path, buffer.getvalue())
        builder.add_bytes(MANIFEST_PATH, (json.dumps(document, indent=2) + "\n").encode())
        return builder.commit(paths=snapshot.paths, tags=snapshot.tags)


def flip_bit_in_dump(repository_path: Path, repository: Repository, snapshot: Snapshot, database: str) -> None:
    """Flip one bit inside the sealed data blob of a database dump, in its pack file on disk."""
    manifest = load_manifest(repository, snapshot)
    node = find_node(repository, snapshot, manifest.databases[database].path)
    assert node.content
    location = repository.lookup_blob(BlobType.DATA, node.content[0])
    pack = repository_path / "data" / location.pack_id.hex()[:2] / location.pack_id.hex()
    data = bytearray(pack.read_bytes())
    data[location.offset + location.length // 2] ^= 0x01
    pack.chmod(0o644)
    pack.write_bytes(bytes(data))


def record_scratch_urls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every scratch database an adapter creates from now on, to check they are all dropped."""
    created: list[str] = []
    for adapter_class in (SqliteAdapter, PostgresqlAdapter, MysqlAdapter):
        original = adapter_class.create_scratch

        def recording(
            self: DatabaseAdapter,
            url: str,
            password: str | None,
            original: Callable[[Any, str, str | None], str] = original,
        ) -> str:
            scratch = original(self, url, password)
            created.append(scratch)
            return scratch

        monkeypatch.setattr(adapter_class, "create_scratch", recording)
    return created


@pytest.fixture
def scratch_urls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every scratch database an adapter creates during the test."""
    return record_scratch_urls(monkeypatch)


def scratch_exists(url: str) -> bool:
    location = ServerLocation.parse(url)
    if url.startswith("sqlite:"):
        return Path(location.database if location.database.startswith("/") else "/" + location.database).exists()
    if url.startswith("postgresql:"):
        rows = run_postgresql(
            POSTGRESQL_SERVER, f"SELECT 1 FROM pg_database WHERE datname = '{location.database}'", database="postgres"
        )
        return bool(rows)
    rows = run_mariadb(
        MARIADB_SERVER, f"SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = '{location.database}'"
    )
    return rows[0][0] != "0"


# --- tests -----------------------------------------------------------------------------------


def test_every_level_passes_on_a_good_sqlite_snapshot_and_is_recorded(tmp_path: Path, scratch_urls: list[str]) -> None:
    """structure, data and restore all pass; each result is kept in the repository's history,
    and the scratch database of the test-restore is gone afterwards."""
    with sqlite_snapshot(tmp_path) as (repository, snapshot):
        for level in ("structure", "data", "restore"):
            result = verify_snapshot(repository, snapshot, level)  # type: ignore[arg-type]
            assert result.ok, result.findings
            assert result.level == level
        assert result.databases[0].name == "main"
        assert result.databases[0].rows == 251
        assert result.databases[0].integrity == "PRAGMA integrity_check: ok"
        assert result.bytes_read > 0
        history = load_history(repository, snapshot.id)
        assert [item.level for item in history] == ["structure", "data", "restore"]
        assert latest_results(repository, [snapshot.id])[snapshot.id].level == "restore"
    assert len(scratch_urls) == 1
    assert not scratch_exists(scratch_urls[0])


def test_history_keeps_the_last_ten_results(tmp_path: Path) -> None:
    """Eleven verifications leave ten results in the one document of that snapshot."""
    with sqlite_snapshot(tmp_path) as (repository, snapshot):
        for _ in range(11):
            verify_snapshot(repository, snapshot, "structure")
        assert len(load_history(repository, snapshot.id)) == 10
        assert list((tmp_path / "repository" / "lockstep" / "verifications").iterdir()) == [
            tmp_path / "repository" / "lockstep" / "verifications" / snapshot.id
        ]


def test_a_flipped_bit_in_a_pack_fails_data_and_restore_naming_the_database(
    tmp_path: Path, scratch_urls: list[str]
) -> None:
    """The damaged dump is named; structure (which reads no data) still passes."""
    with sqlite_snapshot(tmp_path) as (repository, snapshot):
        flip_bit_in_dump(tmp_path / "repository", repository, snapshot, "main")
        assert verify_snapshot(repository, snapshot, "structure").ok
        for level in ("data", "restore"):
            result = verify_snapshot(repository, snapshot, level)  # type: ignore[arg-type]
            assert not result.ok
            assert any("database main" in finding.message for finding in result.findings), result.findings
            assert any("/databases/main.sqlite3" in finding.message for finding in result.findings)
        assert latest_results(repository, [snapshot.id])[snapshot.id].ok is False
    assert scratch_urls == []  # a dump that cannot be read is not test-restored


def test_a_missing_pack_fails_structure(tmp_path: Path) -> None:
    """Structure checks that every pack the snapshot needs exists."""
    with sqlite_snapshot(tmp_path) as (repository, snapshot):
        node = find_node(repository, snapshot, "/databases/main.sqlite3")
        assert node.content
        pack_id = repository.lookup_blob(BlobType.DATA, node.content[0]).pack_id.hex()
        (tmp_path / "repository" / "data" / pack_id[:2] / pack_id).unlink()
        result = verify_snapshot(repository, snapshot, "structure")
        assert not result.ok
        assert any(pack_id[:8] in finding.message for finding in result.findings)


def test_a_dump_whose_blob_list_differs_from_the_manifest_fails_structure(tmp_path: Path) -> None:
    """The manifest pins each dump by the SHA-256 of its blob IDs, checked without reading data."""
    with sqlite_snapshot(tmp_path) as (repository, good):
        record = load_manifest(repository, good).databases["main"]
        assert record.sha256 is None and record.blobs_sha256 is not None

        def wrong_checksum(document: dict[str, Any]) -> None:
            document["databases"]["main"]["blobs_sha256"] = "0" * 64

        bad = rewrite_manifest(repository, good, wrong_checksum)
        assert verify_snapshot(repository, good, "structure").ok
        result = verify_snapshot(repository, bad, "structure")
        assert not result.ok
        assert "database main" in result.findings[0].message and "blobs_sha256" in result.findings[0].message


def test_an_older_manifest_with_the_dumps_sha256_is_checked_at_the_data_level(tmp_path: Path) -> None:
    """Manifests from before blobs_sha256 recorded the SHA-256 of the dump's bytes: still checked."""
    with sqlite_snapshot(tmp_path) as (repository, good):
        node = find_node(repository, good, "/databases/main.sqlite3")
        output = io.BytesIO()
        dump_file(repository, node, output)
        actual = hashlib.sha256(output.getvalue()).hexdigest()

        def as_before(sha256: str) -> Callable[[dict[str, Any]], None]:
            def rewrite(document: dict[str, Any]) -> None:
                del document["databases"]["main"]["blobs_sha256"]
                document["databases"]["main"]["sha256"] = sha256

            return rewrite

        older = rewrite_manifest(repository, good, as_before(actual))
        assert verify_snapshot(repository, older, "data").ok
        bad = rewrite_manifest(repository, good, as_before("0" * 64))
        assert verify_snapshot(repository, bad, "structure").ok
        result = verify_snapshot(repository, bad, "data")
        assert not result.ok
        assert "database main" in result.findings[0].message and "SHA-256" in result.findings[0].message


def test_restore_level_finds_a_table_that_differs_from_the_manifest(tmp_path: Path, scratch_urls: list[str]) -> None:
    """Row counts recorded in the manifest are compared with the test-restore, naming the table."""
    with sqlite_snapshot(tmp_path) as (repository, good):

        def wrong_rows(document: dict[str, Any]) -> None:
            for table in document["databases"]["main"]["tables"]:
                if table["name"] == "events":
                    table["rows"] = 49

        bad = rewrite_manifest(repository, good, wrong_rows)
        assert verify_snapshot(repository, bad, "data").ok
        result = verify_snapshot(repository, bad, "restore")
        assert not result.ok
        assert "table events" in result.findings[0].message and "49" in result.findings[0].message
    assert scratch_urls and not any(scratch_exists(url) for url in scratch_urls)


POSTGRESQL_SHOP = """
CREATE TABLE customers (id serial PRIMARY KEY, name text, photo bytea);
INSERT INTO customers (name, photo) SELECT 'c' || g, decode(md5(g::text), 'hex') FROM generate_series(1, 300) g;
CREATE INDEX customers_name ON customers (name);
CREATE TABLE schema_migrations (version text PRIMARY KEY);
INSERT INTO schema_migrations VALUES ('20260101000000');
"""

MARIADB_SHOP = """
CREATE TABLE customers (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(50), photo BLOB) ENGINE=InnoDB;
INSERT INTO customers (name, photo) SELECT CONCAT('c', seq), UNHEX(MD5(seq)) FROM seq_1_to_300;
CREATE TABLE notes (body TEXT);
INSERT INTO notes VALUES ('a'), ('a'), ('b');
"""


@pytest.mark.parametrize("engine", ["postgresql", "mariadb"])
def test_server_databases_verify_at_restore_level_and_scratch_is_dropped(
    engine: str, tmp_path: Path, scratch_urls: list[str]
) -> None:
    """A test-restore on the real server passes with the engine's own check, and after a failing
    one (manifest rows edited) the scratch database is dropped too."""
    context = postgresql_database(POSTGRESQL_SHOP) if engine == "postgresql" else mariadb_database(MARIADB_SHOP)
    with context as url:
        snapshot = take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
        repository = open_repository(tmp_path / "repository")
        try:
            servers = {"shop": ServerAccess(url)}
            result = verify_snapshot(repository, snapshot, "restore", servers)
            assert result.ok, result.findings
            check = result.databases[0]
            assert check.rows >= 300
            assert check.integrity.endswith("ok"), check.integrity

            def wrong_rows(document: dict[str, Any]) -> None:
                document["databases"]["shop"]["tables"][0]["rows"] += 1

            bad = rewrite_manifest(repository, snapshot, wrong_rows)
            failed = verify_snapshot(repository, bad, "restore", servers)
            assert not failed.ok
            assert "database shop" in failed.findings[0].message and "table" in failed.findings[0].message
            with pytest.raises(UsageError, match="database shop: there is no"):
                verify_snapshot(repository, snapshot, "restore", {})
        finally:
            repository.close()
    assert len(scratch_urls) == 2
    assert not any(scratch_exists(scratch) for scratch in scratch_urls)


def test_postgresql_partitioned_tables_pass_the_restore_level(tmp_path: Path, scratch_urls: list[str]) -> None:
    """amcheck ran bt_index_check on partitioned indexes too, which have no pages ("is not a
    B-Tree index"), so any database with a partitioned table failed verify."""
    partitioned = """
    CREATE TABLE regions (id int, name text, PRIMARY KEY (id)) PARTITION BY RANGE (id);
    CREATE TABLE regions_low PARTITION OF regions FOR VALUES FROM (0) TO (100);
    CREATE TABLE regions_rest PARTITION OF regions DEFAULT;
    INSERT INTO regions SELECT g, 'r' || g FROM generate_series(1, 300) g;
    """
    with postgresql_database(partitioned) as url:
        snapshot = take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
        repository = open_repository(tmp_path / "repository")
        try:
            result = verify_snapshot(repository, snapshot, "restore", {"shop": ServerAccess(url)})
        finally:
            repository.close()
    assert result.ok, result.findings
    assert result.databases[0].integrity == "amcheck bt_index_check: ok"


def test_manifest_round_trip_is_unchanged_by_rewrite(tmp_path: Path) -> None:
    """The rewrite helper itself keeps an unedited manifest equal (so the other tests test verify)."""
    with sqlite_snapshot(tmp_path) as (repository, good):
        copy = rewrite_manifest(repository, good, lambda document: None)
        assert load_manifest(repository, copy) == load_manifest(repository, good)
        assert isinstance(load_manifest(repository, copy), Manifest)
        assert verify_snapshot(repository, copy, "restore").ok


def test_an_interrupted_test_restore_still_drops_the_scratch_database(
    tmp_path: Path, scratch_urls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (KeyboardInterrupt) in the middle of a test-restore propagates, and the scratch
    database is removed on the way out."""
    url = make_sqlite(tmp_path / "app.db")
    snapshot = take_snapshot(tmp_path / "repository", tmp_path, {"main": url})

    def interrupted(self: SqliteAdapter, url: str, password: str | None) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(SqliteAdapter, "inspect", interrupted)
    repository = open_repository(tmp_path / "repository")
    try:
        with pytest.raises(KeyboardInterrupt):
            verify_snapshot(repository, snapshot, "restore")
    finally:
        repository.close()
    assert len(scratch_urls) == 1
    assert not scratch_exists(scratch_urls[0])


POSTGRESQL_BEYOND_TABLES = """
CREATE TABLE orders (id serial PRIMARY KEY, total int, scan oid);
INSERT INTO orders (total) SELECT g FROM generate_series(1, 60) g;
UPDATE orders SET scan = lo_from_bytea(0, convert_to('scan of order ' || id, 'UTF8')) WHERE id <= 3;
CREATE SEQUENCE invoice_numbers START 1000;
SELECT setval('invoice_numbers', 4242);
CREATE MATERIALIZED VIEW big_orders AS SELECT id, total FROM orders WHERE total > 50;
CREATE MATERIALIZED VIEW order_report AS SELECT count(*) AS orders FROM orders WITH NO DATA;
"""


def test_postgresql_sequences_large_objects_and_materialized_views_are_checked_at_restore_level(
    tmp_path: Path, scratch_urls: list[str]
) -> None:
    """The manifest records sequence values, the large objects and materialized views, and the
    test-restore is checked against them: a wrong value fails with a finding naming the
    sequence, the large objects or the view. A view not refreshed since its table changed (it
    is restored refreshed) and an older manifest without these fields still pass."""
    with postgresql_database(POSTGRESQL_BEYOND_TABLES) as url:
        # Stale: the restore refreshes big_orders, so it will hold 11 rows, not the 10 recorded.
        run_postgresql(url, "INSERT INTO orders (total) VALUES (100)")
        snapshot = take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
        repository = open_repository(tmp_path / "repository")
        servers = {"shop": ServerAccess(url)}
        try:
            record = load_manifest(repository, snapshot).databases["shop"]
            assert record.checksum_algorithm == "row-hash-sum-4"
            assert [(s.name, s.last_value, s.is_called) for s in record.sequences or []] == [
                ("invoice_numbers", 4242, True),
                ("orders_id_seq", 61, True),
            ]
            assert record.large_objects is not None and record.large_objects.count == 3
            views = {view.name: (view.populated, view.rows) for view in record.materialized_views or []}
            assert views == {"big_orders": (True, 10), "order_report": (False, 0)}
            result = verify_snapshot(repository, snapshot, "restore", servers)
            assert result.ok, result.findings

            def edit(change: Callable[[dict[str, Any]], None]) -> list[str]:
                bad = rewrite_manifest(repository, snapshot, lambda document: change(document["databases"]["shop"]))
                failed = verify_snapshot(repository, bad, "restore", servers)
                assert not failed.ok
                return [finding.message for finding in failed.findings]

            def wrong_sequence(database: dict[str, Any]) -> None:
                database["sequences"][0]["last_value"] = 4241

            assert edit(wrong_sequence) == [
                "database shop: sequence invoice_numbers has last_value 4242, is_called true after the restore, "
                "the manifest says last_value 4241, is_called true"
            ]

            def wrong_large_objects(database: dict[str, Any]) -> None:
                database["large_objects"]["checksum"] = "0" * 16

            assert edit(wrong_large_objects) == [
                "database shop: the restored large objects' checksum (OIDs and contents) differs from the manifest"
            ]

            def one_more_large_object(database: dict[str, Any]) -> None:
                database["large_objects"]["count"] = 4

            assert edit(one_more_large_object) == ["database shop: 3 large objects were restored, the manifest says 4"]

            def populated(database: dict[str, Any]) -> None:
                database["materialized_views"][1].update(populated=True, rows=1)

            assert edit(populated) == [
                "database shop: materialized view order_report is not populated after the restore (no REFRESH), "
                "the manifest says it held rows"
            ]

            def older(document: dict[str, Any]) -> None:
                for field_name in ("sequences", "large_objects", "materialized_views"):
                    del document["databases"]["shop"][field_name]
                document["databases"]["shop"]["checksum_algorithm"] = "row-hash-sum-3"

            old = rewrite_manifest(repository, snapshot, older)
            assert load_manifest(repository, old).databases["shop"].sequences is None
            assert verify_snapshot(repository, old, "restore", servers).ok
        finally:
            repository.close()
    assert scratch_urls and not any(scratch_exists(scratch) for scratch in scratch_urls)


def test_a_mariadb_schema_only_snapshot_lists_the_tables_without_reading_a_row(tmp_path: Path) -> None:
    """A schema-only snapshot of MariaDB counted and checksummed every table (the whole
    fingerprint) only to record each with 0 rows. It lists them from the catalog now: a table
    whose rows cannot be read at all (its InnoDB tablespace discarded) no longer fails it."""
    with mariadb_database(MARIADB_SHOP + "CREATE TABLE archive (id INT PRIMARY KEY) ENGINE=InnoDB;") as url:
        run_mariadb(url, "ALTER TABLE archive DISCARD TABLESPACE")
        with pytest.raises(LockstepError, match="discarded"):
            MysqlAdapter().inspect(url, None)  # its rows cannot be read
        snapshot = take_snapshot(tmp_path / "repository", tmp_path, {"shop": url}, schema_only=True)
        repository = open_repository(tmp_path / "repository")
        try:
            record = load_manifest(repository, snapshot).databases["shop"]
        finally:
            repository.close()
    assert record.schema_only
    assert [(table.name, table.rows) for table in record.tables] == [("archive", 0), ("customers", 0), ("notes", 0)]


def test_a_failed_verification_with_a_known_cause_points_at_it_before_damage() -> None:
    """A FLOAT column that mariadb-dump rounds fails the restore check with its likely cause
    given, and the error's hint still said to run `repo check --read-data`, as for damage."""
    explained = "database maria: table f: the restored rows' checksum differs (likely cause: FLOAT column x: ...)"
    damaged = "database main: /databases/main.dump cannot be read: the pack is damaged"
    for findings, expected in (
        ([explained], "see the likely cause given for the table; if it is not that, run `lockstep repo check"),
        ([explained, damaged], "run `lockstep repo check --read-data`"),
        ([damaged], "run `lockstep repo check --read-data`"),
    ):
        result = VerificationResult(
            "ab" * 32, "restore", False, "2026-01-01T00:00:00Z", 1.0, [Finding("x", text) for text in findings]
        )
        with pytest.raises(IntegrityError) as raised:
            raise_for_result(result)
        assert (raised.value.hint or "").startswith(expected), raised.value.hint
