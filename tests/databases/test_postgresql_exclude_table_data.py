"""pg_dump --exclude-table-data with the exact names lockstep's patterns matched: case, quotes and
dots in names, schemas; the fingerprint reads no row of those tables. Real PostgreSQL."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import pytest

from lockstep.databases.postgresql import PostgresqlAdapter
from tests.databases.test_postgresql import SERVER_URL, adapter, execute, query  # noqa: F401  (the fixture)
from tests.pipeline.test_verify import run_postgresql

AWKWARD_NAMES = """
CREATE TABLE sessions (v text);
CREATE TABLE "Sessions" (v text);
CREATE TABLE "odd""name" (v text);
CREATE TABLE "cache.v2" (v text);
CREATE SCHEMA jobs;
CREATE TABLE jobs.queue (v text);
CREATE TABLE jobs.sessions (v text);
INSERT INTO sessions VALUES ('row-of-sessions');
INSERT INTO "Sessions" VALUES ('row-of-Sessions');
INSERT INTO "odd""name" VALUES ('row-of-odd-name');
INSERT INTO "cache.v2" VALUES ('row-of-cache-v2');
INSERT INTO jobs.queue VALUES ('row-of-jobs-queue');
INSERT INTO jobs.sessions VALUES ('row-of-jobs-sessions');
"""


def server_database(name: str) -> str:
    return SERVER_URL.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def awkward(adapter: PostgresqlAdapter) -> Iterator[tuple[str, str]]:  # noqa: F811
    """A database with awkwardly named tables, and an empty one to restore into."""
    names = [f"exclude_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for name in names:
        run_postgresql(SERVER_URL, f'CREATE DATABASE "{name}"', database="postgres")
    try:
        execute(server_database(names[0]), AWKWARD_NAMES)
        yield server_database(names[0]), server_database(names[1])
    finally:
        for name in names:
            run_postgresql(SERVER_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', database="postgres")


def test_only_the_tables_matched_lose_their_rows_whatever_their_names(
    adapter: PostgresqlAdapter,  # noqa: F811
    awkward: tuple[str, str],
) -> None:
    """Matching is case-sensitive ("Sessions" is not sessions), a quote or a dot in a name is no
    pattern character for pg_dump, `jobs.*` is the schema jobs; the public sessions table keeps
    its row. The fingerprint gives the excluded tables empty, as the restore has them."""
    source, target = awkward
    # As the manifest names them: a name with a quote or a dot in double quotes, quotes doubled.
    patterns = ["Sessions", '"odd""name"', '"cache.v2"', "jobs.*"]
    dump = adapter.dump(source, None, exclude_table_data=patterns)
    data = dump.stdout.read()
    dump.finish()
    assert dump.rows_excluded == ('"cache.v2"', '"odd""name"', "Sessions", "jobs.queue", "jobs.sessions")
    assert dump.warnings == ()
    assert b"row-of-sessions" in data
    for left_out in (b"row-of-Sessions", b"row-of-odd-name", b"row-of-cache-v2", b"row-of-jobs"):
        assert left_out not in data
    fingerprint = {table.name: (table.rows, table.checksum) for table in dump.consistent_info().tables}
    assert fingerprint["sessions"][0] == 1
    for name in dump.rows_excluded:
        assert fingerprint[name] == (0, adapter.empty_table_checksum)

    adapter.restore(target, None, io.BytesIO(data), create=False)
    restored = {table.name: (table.rows, table.checksum) for table in adapter.inspect(target, None).tables}
    assert restored == fingerprint
    assert query(target, 'SELECT v FROM "Sessions"') == []
    assert query(target, "SELECT v FROM sessions") == [("row-of-sessions",)]
