"""PostgreSQL large objects, hashed for the manifest's fingerprint and for `snapshot diff`.

Each object's hash is hash_record_extended(ROW(oid, contents)), read with lo_get and the user's
own rights on it, as pg_dump reads it. lo_get returns a bytea, which holds at most 1 GB: an
object larger than that is read in pieces instead (lo_get(oid, offset, length)), its hash the sum
of its pieces' hash_record_extended(ROW(oid, offset, piece)). Objects up to 1 GB hash as they
always have, so manifests written before still verify; one above it used to leave the whole
checksum out.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from lockstep.databases.base import LargeObjectsInfo

# The longest read lo_get can return: a bytea of MaxAllocSize (1 GB - 1) less its 4-byte header.
LARGEST_WHOLE_READ = 0x3FFF_FFFF - 4
# How much of a larger object one lo_get reads: the server holds one piece at a time.
PIECE_BYTES = 64 * 1024 * 1024
_READ_ONLY = 0x40000  # INV_READ, lo_open's mode for reading
_HASH_BITS = 2**64

# Every object's count and sum of hashes in one query, over an empty catalog when there are none.
_WHOLE_SUM = (
    "SELECT count(*), sum(pg_catalog.hash_record_extended(ROW(m.oid, pg_catalog.lo_get(m.oid)), 0))"
    " FROM pg_catalog.pg_largeobject_metadata m"
)
# Each object's size: the end of it, through a descriptor the transaction's end closes.
_SIZES = sql.SQL(
    "SELECT m.oid, pg_catalog.lo_lseek64(pg_catalog.lo_open(m.oid, {mode}), 0, 2)"
    " FROM pg_catalog.pg_largeobject_metadata m"
).format(mode=sql.Literal(_READ_ONLY))
_WHOLE_HASHES = (
    "SELECT m.oid, pg_catalog.hash_record_extended(ROW(m.oid, pg_catalog.lo_get(m.oid)), 0)"
    " FROM pg_catalog.pg_largeobject_metadata m WHERE m.oid = ANY(%s::pg_catalog.oid[])"
)
_PIECE_SUM = (
    "SELECT sum(pg_catalog.hash_record_extended(ROW(%(oid)s::pg_catalog.oid, piece,"
    " pg_catalog.lo_get(%(oid)s::pg_catalog.oid, piece, %(length)s)), 0))"
    " FROM pg_catalog.generate_series(0::bigint, %(size)s - 1, %(length)s) AS piece"
)


def large_objects_info(connection: psycopg.Connection[Any]) -> LargeObjectsInfo:
    """How many large objects, and the sum of their hashes: one query while every object fits in
    one read, else each one's size first and the larger ones in pieces."""
    try:
        with connection.transaction():
            row = connection.execute(_WHOLE_SUM).fetchone()
    except psycopg.errors.ProgramLimitExceeded:
        with connection.transaction():
            hashes = large_object_hashes(connection)
        return LargeObjectsInfo(len(hashes), f"{sum(hashes.values()) % _HASH_BITS:016x}")
    assert row is not None
    total = 0 if row[1] is None else int(str(row[1]))
    return LargeObjectsInfo(int(str(row[0])), f"{total % _HASH_BITS:016x}")


def large_object_hashes(
    connection: psycopg.Connection[Any], largest_whole: int = LARGEST_WHOLE_READ, piece: int = PIECE_BYTES
) -> dict[int, int]:
    """OID → the object's hash (as an unsigned 64-bit number), each object up to `largest_whole`
    bytes read whole, a larger one in pieces of `piece` bytes (both lower in the tests, which
    cannot write gigabytes). Runs inside the caller's transaction."""
    sizes = {int(oid): int(size) for oid, size in connection.execute(_SIZES).fetchall()}
    whole = [oid for oid, size in sizes.items() if size <= largest_whole]
    rows = connection.execute(_WHOLE_HASHES, (whole,)).fetchall()
    hashes = {int(oid): int(value) % _HASH_BITS for oid, value in rows}
    for oid, size in sizes.items():
        if size > largest_whole:
            row = connection.execute(_PIECE_SUM, {"oid": oid, "size": size, "length": piece}).fetchone()
            hashes[oid] = int(row[0] if row and row[0] is not None else 0) % _HASH_BITS
    return hashes
