"""MariaDB data that used to slip past a snapshot, its restore check or `snapshot diff`: real
databases on the real MariaDB (127.0.0.1:3306), snapshots made by the real pipeline."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from lockstep.databases.base import DatabaseInfo, TableInfo
from lockstep.databases.mysql import MysqlAdapter
from lockstep.errors import IntegrityError, SourceError
from lockstep.pipeline.restore import ServerAccess, checksums_comparable, compare_with_manifest, restore_database
from lockstep.pipeline.snapshot import load_manifest
from lockstep.pipeline.verification_records import latest_results
from lockstep.pipeline.verify import raise_for_result, verify_snapshot
from tests.databases.test_mysql import TIME_VERSIONED
from tests.pipeline.test_diff import diff_live, tables_of
from tests.pipeline.test_verify import (
    MARIADB_SERVER,
    mariadb_database,
    open_repository,
    require_mariadb,
    run_mariadb,
    take_snapshot,
    unique_name,
)


@contextmanager
def named_database(name: str, statements: str) -> Iterator[str]:
    """A MariaDB database of exactly this name (quoted in a URL path as needed), dropped afterwards."""
    from urllib.parse import quote

    require_mariadb()
    quoted = "`" + name.replace("`", "``") + "`"
    run_mariadb(MARIADB_SERVER, f"CREATE DATABASE {quoted} CHARACTER SET utf8mb4", database="")
    try:
        run_mariadb(MARIADB_SERVER, statements, database=name)
        yield f"mariadb://root@127.0.0.1:3306/{quote(name, safe='')}"
    finally:
        run_mariadb(MARIADB_SERVER, f"DROP DATABASE IF EXISTS {quoted}", database="")


def test_a_restored_checksum_with_fewer_digits_is_still_compared(tmp_path: Path) -> None:
    """CHECKSUM TABLE's numbers have 1 to 10 digits: a manifest that names the algorithm
    compares them exactly, where comparing lengths let about a third of all differences pass."""
    with mariadb_database("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1), (2);") as url:
        snapshot = take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
    repository = open_repository(tmp_path / "repository")
    try:
        record = load_manifest(repository, snapshot).databases["shop"]
    finally:
        repository.close()
    assert record.checksum_algorithm == MysqlAdapter.checksum_algorithm
    (table,) = record.tables
    shorter = DatabaseInfo("mysql", "10.11", [TableInfo("t", table.rows, "1" * (len(table.checksum) - 1))], None, None)
    problems = compare_with_manifest(record.tables, shorter, checksums_comparable(record, MysqlAdapter()))
    assert [name for name, _ in problems] == ["t"]


def test_diff_and_the_manifest_include_system_versioned_tables(tmp_path: Path) -> None:
    """Rows changed in a system-versioned table since the snapshot are a difference."""
    schema = "CREATE TABLE sv (id INT PRIMARY KEY, v INT) WITH SYSTEM VERSIONING; INSERT INTO sv VALUES (1, 1), (2, 2);"
    with mariadb_database(schema) as url:
        snapshot = take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
        assert not diff_live(tmp_path, "shop", url).changed
        run_mariadb(url, "UPDATE sv SET v = 5 WHERE id = 1; INSERT INTO sv VALUES (3, 3)")
        result = diff_live(tmp_path, "shop", url)
    assert tables_of(result) == {"sv": ("changed", 1, 0, 1)}
    assert result.tables[0].key == ["id"]
    repository = open_repository(tmp_path / "repository")
    try:
        tables = load_manifest(repository, snapshot).databases["shop"].tables
    finally:
        repository.close()
    assert [(table.name, table.rows) for table in tables] == [("sv", 2)]


def test_diff_sees_a_float_change_beyond_six_digits(tmp_path: Path) -> None:
    """QUOTE() writes a FLOAT with 6 significant digits, so 0.1 and 0.10000001 hashed alike."""
    schema = "CREATE TABLE m (id INT PRIMARY KEY, f FLOAT, d DOUBLE); INSERT INTO m VALUES (1, 0.1, 0.1), (2, 2, 2);"
    with mariadb_database(schema) as url:
        take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
        run_mariadb(url, "UPDATE m SET f = 0.10000001 WHERE id = 1; UPDATE m SET d = 2.0000000000000004 WHERE id = 2")
        result = diff_live(tmp_path, "shop", url)
    assert tables_of(result) == {"m": ("changed", 0, 0, 2)}


def test_a_float_that_the_dump_rounds_is_named_as_the_likely_cause(tmp_path: Path) -> None:
    """mariadb-dump writes 0.10000001 as 0.1: the restore check fails, and says why."""
    schema = "CREATE TABLE m (id INT PRIMARY KEY, f FLOAT); INSERT INTO m VALUES (1, 0.10000001);"
    with mariadb_database(schema) as url:
        snapshot = take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
        repository = open_repository(tmp_path / "repository")
        target = url.rsplit("/", 1)[0] + "/" + unique_name()
        try:
            result = verify_snapshot(repository, snapshot, "restore", {"shop": ServerAccess(url)}, record=False)
            assert not result.ok
            assert "FLOAT column f" in result.findings[0].message, result.findings
            with pytest.raises(IntegrityError) as verified:  # the hint sent users to look for damage first
                raise_for_result(result)
            assert (verified.value.hint or "").startswith("see the likely cause given for the table; if it is not")
            with pytest.raises(IntegrityError) as raised:
                restore_database(
                    repository, snapshot, load_manifest(repository, snapshot), "shop", ServerAccess(target)
                )
            assert "table m" in raised.value.message and "FLOAT column f" in raised.value.message
            assert "likely cause" in (raised.value.hint or "")
        finally:
            repository.close()
            run_mariadb(MARIADB_SERVER, f"DROP DATABASE IF EXISTS `{target.rsplit('/', 1)[1]}`", database="")


def test_the_history_of_system_versioned_tables_is_in_the_snapshot_and_its_restore_check(tmp_path: Path) -> None:
    """A snapshot kept only the current rows of a system-versioned table, and its restore check
    could not tell. Now the manifest counts every row version, a restore-level verify restores
    and checks them, and a restore that loses the history is a difference."""
    with mariadb_database(TIME_VERSIONED) as url:
        snapshot = take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
        repository = open_repository(tmp_path / "repository")
        try:
            record = load_manifest(repository, snapshot).databases["shop"]
            result = verify_snapshot(repository, snapshot, "restore", {"shop": ServerAccess(url)}, record=False)
        finally:
            repository.close()
    assert record.warnings == []
    assert {table.name: (table.rows, table.history_rows) for table in record.tables} == {
        "hidden_period": (2, 4),
        "visible_period": (2, 4),
    }
    assert result.ok, result.findings
    comparable = checksums_comparable(record, MysqlAdapter())
    found = [
        TableInfo(table.name, table.rows, table.checksum, history_rows=table.history_rows or 0, history_checksum="1")
        for table in record.tables
    ]
    lost = DatabaseInfo("mysql", "10.11", [replace(found[0], history_rows=2), found[1]], None, None)
    problems = compare_with_manifest(record.tables, lost, comparable)
    assert [name for name, _ in problems] == ["hidden_period", "visible_period"]
    assert "2 row versions restored, the manifest says 4" in problems[0][1]
    # A manifest from before recorded no history: nothing to hold a restored one against.
    before = [replace(table, history_rows=None, history_checksum=None) for table in record.tables]
    assert compare_with_manifest(before, lost, comparable) == []


def test_a_database_name_with_a_dot_is_snapshotted_and_verified(tmp_path: Path) -> None:
    """CHECKSUM TABLE and CHECK TABLE name tables "database.table": splitting that at the first
    dot took "dotted.t" for the table and snapshot create failed with a KeyError."""
    name = unique_name() + ".dotted"
    with named_database(
        name, "CREATE TABLE t (id INT PRIMARY KEY); CREATE TABLE `a.b` (id INT); INSERT INTO t VALUES (1);"
    ) as url:
        snapshot = take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
        repository = open_repository(tmp_path / "repository")
        try:
            tables = load_manifest(repository, snapshot).databases["shop"].tables
            assert [(table.name, table.rows) for table in tables] == [("a.b", 0), ("t", 1)]
            result = verify_snapshot(repository, snapshot, "restore", {"shop": ServerAccess(url)}, record=False)
        finally:
            repository.close()
    assert result.ok, result.findings


ESCAPED_NAMES = (
    "CREATE TABLE `back\\slash` (id INT PRIMARY KEY, `ta\tb` INT);"
    "CREATE TABLE `new\nline` (`i\\d` INT PRIMARY KEY, v INT);"
    "INSERT INTO `back\\slash` VALUES (1, 1), (2, 2); INSERT INTO `new\nline` VALUES (1, 1);"
)


def test_names_with_a_backslash_tab_or_newline_are_snapshotted_verified_and_diffed(tmp_path: Path) -> None:
    """`mariadb --batch` writes them as \\\\, \\t and \\n: read as they were, a tab split a
    name into two fields and a newline into two rows."""
    with mariadb_database(ESCAPED_NAMES) as url:
        snapshot = take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
        repository = open_repository(tmp_path / "repository")
        try:
            tables = load_manifest(repository, snapshot).databases["shop"].tables
            result = verify_snapshot(repository, snapshot, "restore", {"shop": ServerAccess(url)}, record=False)
        finally:
            repository.close()
        assert [(table.name, table.rows) for table in tables] == [("back\\slash", 2), ("new\nline", 1)]
        assert result.ok, result.findings
        run_mariadb(url, "UPDATE `back\\slash` SET `ta\tb` = 5 WHERE id = 2; INSERT INTO `new\nline` VALUES (2, 2);")
        diff = diff_live(tmp_path, "shop", url)
    assert tables_of(diff) == {"back\\slash": ("changed", 0, 0, 1), "new\nline": ("changed", 1, 0, 0)}
    assert {table.name: table.key for table in diff.tables} == {"back\\slash": ["id"], "new\nline": ["i\\d"]}


MIXED_CHARSETS = """
SET NAMES utf8mb4;
CREATE TABLE m (id INT PRIMARY KEY, western VARCHAR(20) CHARACTER SET latin1, cyrillic VARCHAR(20) CHARACTER SET cp1251,
  wide VARCHAR(20) CHARACTER SET ucs2, sixteen ENUM('да', 'нет') CHARACTER SET utf16, modern TEXT, raw BLOB);
INSERT INTO m VALUES (1, 'café', 'жук', 'Grüße', 'да', '😀', 0xff00), (2, 'a', 'б', 'c', 'нет', 'd', NULL);
"""


def test_diff_compares_a_table_that_mixes_character_sets(tmp_path: Path) -> None:
    """CONCAT_WS cannot join latin1 and cp1251 (or ucs2 and utf16) text: diff failed with
    "Illegal mix of collations"."""
    with mariadb_database(MIXED_CHARSETS) as url:
        take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
        assert not diff_live(tmp_path, "shop", url).changed
        run_mariadb(
            url, "SET NAMES utf8mb4; UPDATE m SET cyrillic = 'жуки' WHERE id = 1; UPDATE m SET wide = 'ç' WHERE id = 2;"
        )
        result = diff_live(tmp_path, "shop", url)
    assert tables_of(result) == {"m": ("changed", 0, 0, 2)}


def test_a_row_beyond_the_servers_max_allowed_packet_is_named_as_the_cause(tmp_path: Path) -> None:
    """--hex-blob doubles a 9 MB value into an 18 MB statement, over the server's 16 MiB: the
    restore fails, and the error says which setting to raise instead of suggesting damage (and
    verify records no failure for a snapshot that is fine)."""
    limit = int(run_mariadb(MARIADB_SERVER, "SELECT @@global.max_allowed_packet")[0][0])
    if limit > 16 * 1024 * 1024:
        pytest.skip(f"the server's max_allowed_packet is {limit}, the test needs at most 16 MiB")
    schema = (
        "CREATE TABLE files (id INT PRIMARY KEY, body LONGBLOB); INSERT INTO files VALUES (1, REPEAT('x', 9000000));"
    )
    with mariadb_database(schema) as url:
        snapshot = take_snapshot(tmp_path / "repository", tmp_path, {"shop": url})
        repository = open_repository(tmp_path / "repository")
        target = url.rsplit("/", 1)[0] + "/" + unique_name()
        try:
            with pytest.raises(SourceError) as verifying:
                verify_snapshot(repository, snapshot, "restore", {"shop": ServerAccess(url)})
            with pytest.raises(SourceError) as restoring:
                restore_database(
                    repository, snapshot, load_manifest(repository, snapshot), "shop", ServerAccess(target)
                )
            assert latest_results(repository, [snapshot.id]) == {}
        finally:
            repository.close()
            run_mariadb(MARIADB_SERVER, f"DROP DATABASE IF EXISTS `{target.rsplit('/', 1)[1]}`", database="")
    for raised in (verifying.value, restoring.value):
        assert "max_allowed_packet" in raised.message and "16 MiB" in raised.message, raised.message
        assert "SET GLOBAL max_allowed_packet" in (raised.hint or "") and "read-data" not in (raised.hint or "")
