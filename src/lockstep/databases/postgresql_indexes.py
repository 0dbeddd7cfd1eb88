"""Build a restore's indexes on parallel connections, each table's as soon as its rows are in.

`pg_restore --jobs` builds a table's primary key with `ALTER TABLE ... ADD CONSTRAINT`, which
locks the table exclusively, so the table's other indexes wait for it: on the shop database the
`events` table's two indexes were built one after the other while the second core idled. Here
plain `CREATE INDEX` entries and simple primary-key and unique constraints (`PRIMARY KEY (id)`,
nothing more) are built as `CREATE [UNIQUE] INDEX`, which only share-locks the table, on two
connections of their own, starting while later tables still load (the COPY connections leave
the cores idle a third of the time, waiting on WAL writes); once every table is in, the
constraints are attached to their indexes with
`ADD CONSTRAINT ... USING INDEX` (no second build). Anything else (partitioned tables,
tablespaces, options, deferrable constraints, several statements) stays with pg_restore.
"""

from __future__ import annotations

import contextlib
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
SELECT c.oid::regclass::text, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
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


class IndexBuilder:
    """Builds `index_jobs` on plain tables, each table's as soon as its rows are in.

    `table_loaded(schema, table)` is called (from any thread) when a table's COPY has committed on
    every connection; its indexes are then built on `connections` connections of their own while
    later tables still load, which keeps the cores busy while the COPY connections wait on WAL
    writes. `finish()` builds what is left (tables without rows), attaches the constraints to
    their indexes and returns the dump IDs done; `stop()` abandons the builds after a failure."""

    def __init__(
        self,
        entries: list[TocEntry],
        connect: Callable[[], Connection],
        session: bytes,
        connections: int,
        codec: str = "utf-8",
    ):
        self._connect = connect
        self._session = session
        self._codec = codec  # the dump's encoding, which the sessions take (`session`)
        self._waiting: dict[tuple[str, str], list[IndexJob]] = {}
        self._jobs: list[IndexJob] = []
        self._pending: queue.Queue[IndexJob | None] = queue.Queue()
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._running: list[Connection] = []
        # Names with bytes the dump's encoding does not decode stay with pg_restore: they are
        # looked up here before the session takes the dump's encoding.
        jobs = [job for job in index_jobs(entries) if _decodes(job.table)]
        if jobs:
            with connect() as connection:
                # regclass::text prints names as pg_dump does (qualified unless on the search path,
                # which is empty here), so the names match the definitions'.
                connection.execute("SELECT pg_catalog.set_config('search_path', '', false)")
                rows = connection.execute(_PLAIN_TABLES, ([job.table for job in jobs],)).fetchall()
            plain = {str(name): (str(schema), str(table)) for name, schema, table in rows}
            self._jobs = [job for job in jobs if job.table in plain]
            for job in self._jobs:
                self._waiting.setdefault(plain[job.table], []).append(job)
        self._threads = [
            threading.Thread(target=self._work, name="pg-index", daemon=True)
            for _ in range(min(max(1, connections), len(self._jobs)))
        ]
        for thread in self._threads:
            thread.start()

    def table_loaded(self, schema: str, table: str) -> None:
        with self._lock:
            jobs = self._waiting.pop((schema, table), [])
        for job in jobs:
            self._pending.put(job)

    def finish(self) -> set[int]:
        for schema, table in list(self._waiting):
            self.table_loaded(schema, table)
        self._join()
        if self._errors:
            _raise(self._errors[0])
        attachments = [job.attach for job in self._jobs if job.attach is not None]
        if attachments:
            with self._connect() as connection:
                _setup(connection, self._session)
                try:
                    for attach in attachments:
                        connection.execute(attach.encode(self._codec, "surrogateescape"))
                    connection.commit()
                except psycopg.Error as error:
                    _raise(error)
        return {job.dump_id for job in self._jobs}

    def stop(self) -> None:
        """After a failure elsewhere: cancel the builds under way, skip the rest."""
        with self._lock:
            self._errors.append(SourceError("the restore stopped"))
            for connection in self._running:
                with contextlib.suppress(psycopg.Error):
                    connection.cancel()
        self._join()

    def _join(self) -> None:
        for _ in self._threads:
            self._pending.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []

    def _work(self) -> None:
        try:
            with self._connect() as connection:
                connection.autocommit = True
                _setup(connection, self._session)
                with self._lock:
                    self._running.append(connection)
                try:
                    while (job := self._pending.get()) is not None:
                        if not self._errors:  # after a failure the other builds are skipped
                            connection.execute(job.build.encode(self._codec, "surrogateescape"))
                finally:
                    with self._lock:
                        self._running.remove(connection)
        except BaseException as error:
            with self._lock:
                self._errors.append(error)


def _decodes(text: str) -> bool:
    """No byte of `text` was kept as a surrogate (see ArchiveReader.text)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _setup(connection: Connection, session: bytes) -> None:
    if session:
        connection.execute(session)
    connection.execute("SELECT pg_catalog.set_config('search_path', '', false)")


def _raise(error: BaseException) -> None:
    if isinstance(error, psycopg.Error):
        raise SourceError(f"building an index failed: {str(error).strip()}") from None
    raise error
