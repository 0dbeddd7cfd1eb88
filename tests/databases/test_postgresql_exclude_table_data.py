"""pg_dump --exclude-table-data with the exact names lockstep's patterns matched: case, quotes and
dots in names, schemas; the fingerprint reads no row of those tables. Real PostgreSQL."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import pytest

from lockstep.databases.postgresql import PostgresqlAdapter, PostgresqlDump
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


# events is partitioned by range, its 2025 partition again by range, one partition in another
# schema; events refers to users, tickets to events; logs is a plain inheritance parent (INHERITS).
PARTITIONED = """
CREATE SCHEMA archive;
CREATE TABLE users (id int PRIMARY KEY);
INSERT INTO users VALUES (7);
CREATE TABLE events (id int, at date, body text, user_id int REFERENCES users, PRIMARY KEY (id, at))
  PARTITION BY RANGE (at);
CREATE TABLE archive.events_2023 PARTITION OF events FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')
  PARTITION BY RANGE (at);
CREATE TABLE events_2025_h1 PARTITION OF events_2025 FOR VALUES FROM ('2025-01-01') TO ('2025-07-01');
CREATE TABLE events_2025_h2 PARTITION OF events_2025 FOR VALUES FROM ('2025-07-01') TO ('2026-01-01');
INSERT INTO events VALUES (1, '2023-05-01', 'event-of-2023', 7), (2, '2024-05-01', 'event-of-2024', 7),
  (3, '2025-02-01', 'event-of-2025-h1', 7), (4, '2025-09-01', 'event-of-2025-h2', 7);
CREATE TABLE upcoming (at date) PARTITION BY RANGE (at);
CREATE TABLE tickets (event_id int, at date, FOREIGN KEY (event_id, at) REFERENCES events (id, at));
CREATE TABLE logs (line text);
CREATE TABLE logs_old () INHERITS (logs);
INSERT INTO logs VALUES ('line-of-logs');
INSERT INTO logs_old VALUES ('line-of-logs-old');
"""


def dumped(adapter: PostgresqlAdapter, url: str, patterns: list[str]) -> tuple[bytes, PostgresqlDump]:  # noqa: F811
    dump = adapter.dump(url, None, exclude_table_data=patterns)
    data = dump.stdout.read()
    dump.finish()
    return data, dump


@pytest.fixture
def partitioned(adapter: PostgresqlAdapter) -> Iterator[tuple[str, str]]:  # noqa: F811
    """A database with partitioned tables and an inheritance parent, and an empty one."""
    names = [f"exclfollow_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for name in names:
        run_postgresql(SERVER_URL, f'CREATE DATABASE "{name}"', database="postgres")
    try:
        execute(server_database(names[0]), PARTITIONED)
        yield server_database(names[0]), server_database(names[1])
    finally:
        for name in names:
            run_postgresql(SERVER_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', database="postgres")


def test_a_partitioned_table_named_leaves_out_the_rows_of_all_its_partitions(
    adapter: PostgresqlAdapter,  # noqa: F811
    partitioned: tuple[str, str],
) -> None:
    """`events` (partitioned, no rows of its own, not in the manifest) stands for every partition
    below it, in any schema and at any level; the manifest lists the partitions; no warning says
    it (or upcoming, partitioned but without partitions yet) matched nothing. The kept tickets
    table's foreign key is named as declared, to events."""
    source, target = partitioned
    data, dump = dumped(adapter, source, ["events", "upcoming", "nosuch"])
    assert dump.rows_excluded == ("archive.events_2023", "events_2024", "events_2025_h1", "events_2025_h2")
    assert b"event-of-" not in data and b"line-of-logs" in data
    assert dump.warnings == (
        "exclude_table_data: the pattern 'nosuch' matches no table; nothing was left out for it",
        "exclude_table_data: table tickets has a foreign key to events, whose rows are left out: a restore cannot "
        "add it while rows of tickets refer to events; leave out tickets's rows too, or keep events's",
    )
    fingerprint = {table.name: (table.rows, table.checksum) for table in dump.consistent_info().tables}
    for name in dump.rows_excluded:
        assert fingerprint[name] == (0, adapter.empty_table_checksum)

    adapter.restore(target, None, io.BytesIO(data), create=False)
    restored = {table.name: (table.rows, table.checksum) for table in adapter.inspect(target, None).tables}
    assert restored == fingerprint
    assert query(target, "SELECT count(*) FROM events") == [(0,)]


def test_a_partitioned_partition_named_leaves_out_only_its_own_partitions(
    adapter: PostgresqlAdapter,  # noqa: F811
    partitioned: tuple[str, str],
) -> None:
    source, _ = partitioned
    data, dump = dumped(adapter, source, ["events_2025"])
    assert dump.rows_excluded == ("events_2025_h1", "events_2025_h2")
    assert b"event-of-2025" not in data and b"event-of-2024" in data and b"event-of-2023" in data
    # Some of the rows tickets refers to are gone.
    said = [warning.split(": ")[1] for warning in dump.warnings]
    assert said == ["table tickets has a foreign key to events, whose rows are left out"]


def test_a_partitioned_table_referring_to_an_emptied_one_is_named_once(
    adapter: PostgresqlAdapter,  # noqa: F811
    partitioned: tuple[str, str],
) -> None:
    """The foreign key declared on events is cloned on each partition: it is named once, as
    declared; with the events' rows left out too, there is nothing to warn about."""
    source, _ = partitioned
    _, dump = dumped(adapter, source, ["users"])
    said = [warning.split(": ")[1] for warning in dump.warnings]
    assert said == ["table events has a foreign key to users, whose rows are left out"]
    _, dump = dumped(adapter, source, ["users", "events", "tickets"])
    assert dump.warnings == ()


def test_an_inheritance_parent_named_leaves_out_its_own_rows_only_as_pg_dump_does(
    adapter: PostgresqlAdapter,  # noqa: F811
    partitioned: tuple[str, str],
) -> None:
    """An INHERITS child is a table of its own, with its own name to match (`logs*`); pg_dump
    --exclude-table-data=logs keeps logs_old's rows too."""
    source, _ = partitioned
    data, dump = dumped(adapter, source, ["logs"])
    assert dump.rows_excluded == ("logs",) and dump.warnings == ()
    assert b"line-of-logs-old" in data and b"line-of-logs" not in data.replace(b"line-of-logs-old", b"")


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
