"""Large objects over 1 GB, which lo_get cannot return in one bytea, in the fingerprint and the
diff, against the real server on 127.0.0.1:5432.

The object over 1 GB is sparse (one byte written past 1.1 GB): the server stores two pages and
reads the rest as zeros, so the test writes nothing big yet reads every piece (~8 s here).
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from lockstep.databases.base import ServerLocation
from lockstep.databases.postgresql import PostgresqlAdapter
from lockstep.databases.postgresql_large_objects import LARGEST_WHOLE_READ, large_object_hashes
from lockstep.pipeline.diff import _PostgresqlSide
from tests.databases.test_postgresql import (
    SERVER_URL,
    adapter,  # noqa: F401 - a fixture
    execute,
)


@pytest.fixture
def database(adapter: PostgresqlAdapter) -> Iterator[str]:  # noqa: F811
    url = adapter.create_scratch(SERVER_URL, None)
    yield url
    adapter.drop_database(url, None)


def connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(host="127.0.0.1", user="postgres", dbname=ServerLocation.parse(url).database)


def test_a_large_object_over_1_gb_is_checksummed(adapter: PostgresqlAdapter, database: str) -> None:  # noqa: F811
    """lo_get fails on an object over 1 GB ("large object read request is too large"), so the
    manifest recorded only the count and `snapshot diff` failed. It is read in pieces: the
    checksum is there, and a byte changed in the middle changes it."""
    size = LARGEST_WHOLE_READ + 30_000_000
    execute(database, f"SELECT lo_create(4242); SELECT lo_put(4242, {size - 1}, 'x')")
    execute(database, "SELECT lo_from_bytea(77, 'small')")
    before = adapter.inspect(database, None).large_objects
    assert before is not None and before.count == 2 and before.checksum is not None
    with _PostgresqlSide(database, None) as side:
        hashes = side.large_object_hashes()
    assert sorted(hashes) == [77, 4242]
    assert f"{sum(hashes.values()) % 2**64:016x}" == before.checksum  # one hash per object, two uses

    execute(database, "SELECT lo_put(4242, 700000000, 'y')")
    after = adapter.inspect(database, None).large_objects
    assert after is not None and after.count == 2 and after.checksum not in (None, before.checksum)


def test_objects_up_to_the_limit_hash_as_before_and_larger_ones_by_piece(database: str) -> None:
    """The piece-wise path, with limits small enough to test: an object up to the limit hashes
    as the one-query fingerprint (and every manifest written before) hashes it; a larger one is
    read in pieces, each of them counted."""
    execute(
        database,
        "SELECT lo_from_bytea(11, 'ten bytes!'); SELECT lo_from_bytea(12, decode(repeat('ab', 1250), 'hex'))",
    )
    with connect(database) as connection:
        whole = large_object_hashes(connection)
        pieces = large_object_hashes(connection, largest_whole=1000, piece=300)
        recorded = connection.execute(
            "SELECT sum(hash_record_extended(ROW(m.oid, lo_get(m.oid)), 0)) FROM pg_largeobject_metadata m"
        ).fetchone()
    assert recorded is not None and sum(whole.values()) % 2**64 == int(str(recorded[0])) % 2**64
    assert pieces[11] == whole[11] and pieces[12] != whole[12]
    for offset in (0, 299, 300, 1249):  # the first and last byte of a piece, the object's last
        execute(database, f"SELECT lo_put(12, {offset}, '\\x00'::bytea)")
        with connect(database) as connection:
            changed = large_object_hashes(connection, largest_whole=1000, piece=300)
        assert changed[12] != pieces[12], offset
        pieces = changed
