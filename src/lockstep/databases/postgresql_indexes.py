"""Build a restore's indexes on parallel connections, two on one table at a time if need be.

`pg_restore --jobs` builds a table's primary key with `ALTER TABLE ... ADD CONSTRAINT`, which
locks the table exclusively, so the table's other indexes wait for it: on the shop database the
`events` table's two indexes were built one after the other while the second core idled. Here
plain `CREATE INDEX` entries and simple primary-key and unique constraints (`PRIMARY KEY (id)`,
nothing more) are built as `CREATE [UNIQUE] INDEX`, which only share-locks the table, largest
table first, on two connections; the constraints are then attached to their indexes with
`ADD CONSTRAINT ... USING INDEX` (no second build). Anything else (partitioned tables,
tablespaces, options, deferrable constraints, several statements) stays with pg_restore.
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from lockstep.databases.postgresql_archive import SECTION_POST_DATA, TocEntry
from lockstep.errors import SourceError

Connection = psycopg.Connection[tuple[Any, ...]]

_INDEX = re.compile(r"CREATE (?:UNIQUE )?INDEX [^\s;]+ ON (?P<table>[^\s;]+) USING [^;]+;\n?")
_KEY = re.compile(
    r"ALTER TABLE ONLY (?P<table>[^\s;]+)\n    ADD CONSTRAINT (?P<name>[^\s;]+)"
    r" (?P<kind>PRIMARY KEY|UNIQUE) (?P<columns>\([^();]*\));\n?"
)
_PLAIN_TABLES = """
SELECT c.oid::regclass::text, pg_relation_size(c.oid) FROM pg_class c
WHERE c.oid = ANY(%s::regclass[]) AND c.relkind = 'r' AND NOT c.relispartition
"""


@dataclass(frozen=True)
class IndexJob:
    dump_id: int
    table: str
    build: str  # CREATE [UNIQUE] INDEX ...
    attach: str | None  # ALTER TABLE ... ADD CONSTRAINT ... USING INDEX, for constraints


def index_jobs(entries: list[TocEntry]) -> list[IndexJob]:
    """The post-data entries this module can build, before checking their tables."""
    jobs: list[IndexJob] = []
    for entry in entries:
        if entry.section != SECTION_POST_DATA or entry.tablespace or entry.definition.count(";") != 1:
            continue
        if entry.description == "INDEX" and (match := _INDEX.fullmatch(entry.definition)):
            jobs.append(IndexJob(entry.dump_id, match["table"], entry.definition, None))
        elif entry.description == "CONSTRAINT" and (match := _KEY.fullmatch(entry.definition)):
            table, name = match["table"], match["name"]
            jobs.append(
                IndexJob(
                    entry.dump_id,
                    table,
                    f"CREATE UNIQUE INDEX {name} ON {table} USING btree {match['columns']}",
                    f"ALTER TABLE ONLY {table} ADD CONSTRAINT {name} {match['kind']} USING INDEX {name}",
                )
            )
    return jobs


def build_indexes(
    entries: list[TocEntry], connect: Callable[[], Connection], session: bytes, connections: int
) -> set[int]:
    """Build what `index_jobs` finds on plain tables; returns the dump IDs done."""
    jobs = index_jobs(entries)
    if not jobs:
        return set()
    # Names that are not UTF-8 (a dump in another encoding) stay with pg_restore: they are
    # looked up here before the session takes the dump's encoding.
    jobs = [job for job in jobs if _is_utf8(job.table)]
    with connect() as connection:
        # regclass::text prints names as pg_dump does (qualified unless on the search path, which
        # is empty here), so the names match the definitions'.
        connection.execute("SELECT pg_catalog.set_config('search_path', '', false)")
        sizes = {
            str(name): int(size)
            for name, size in connection.execute(_PLAIN_TABLES, ([job.table for job in jobs],)).fetchall()
        }
        jobs = sorted((job for job in jobs if job.table in sizes), key=lambda job: -sizes[job.table])
        if not jobs:
            return set()
        _setup(connection, session)
        pending: queue.Queue[IndexJob] = queue.Queue()
        for job in jobs:
            pending.put(job)
        errors: list[BaseException] = []
        workers = [
            threading.Thread(target=_work, args=(connect, session, pending, errors), name="pg-index", daemon=True)
            for _ in range(max(1, min(connections, len(jobs))))
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if errors:
            _raise(errors[0])
        try:
            for job in jobs:
                if job.attach is not None:
                    connection.execute(_in_dump_encoding(job.attach))
            connection.commit()
        except psycopg.Error as error:
            _raise(error)
    return {job.dump_id for job in jobs}


def _work(
    connect: Callable[[], Connection], session: bytes, pending: queue.Queue[IndexJob], errors: list[BaseException]
) -> None:
    try:
        with connect() as connection:
            connection.autocommit = True
            _setup(connection, session)
            while not errors:
                try:
                    job = pending.get_nowait()
                except queue.Empty:
                    return
                connection.execute(_in_dump_encoding(job.build))
    except BaseException as error:
        errors.append(error)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _in_dump_encoding(statement: str) -> bytes:
    """The statement's bytes as pg_dump wrote them (the session's client_encoding is the dump's)."""
    return statement.encode("utf-8", "surrogateescape")


def _setup(connection: Connection, session: bytes) -> None:
    if session:
        connection.execute(session)
    connection.execute("SELECT pg_catalog.set_config('search_path', '', false)")


def _raise(error: BaseException) -> None:
    if isinstance(error, psycopg.Error):
        raise SourceError(f"building an index failed: {str(error).strip()}") from None
    raise error
