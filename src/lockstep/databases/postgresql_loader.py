"""Restore a custom-format dump from a stream, loading the table data on parallel connections.

`pg_restore --jobs` needs a seekable file (writing the 1 GB shop dump to one took 2.3 s) and
still loads each table on one connection: the shop database's `events` table, most of its
rows, loaded on one core while the other idled. Here a restore is four steps:

1. the schema (pre-data entries), by pg_restore from the head of the archive alone: the table
   of contents, written to a small temporary file;
2. the table data, streamed: each data block's COPY text is read straight out of the archive
   (copy_frames.py strips the custom format's per-row framing; pg_restore did this before, for
   about a CPU-second more and two trips of the dump through pipes), and each table's rows, cut
   at line boundaries (a row ends with a newline, embedded ones are escaped), go to two
   `COPY ... FROM STDIN` connections, so even one big table loads on both cores; a table whose
   column types copy_binary.py knows goes as binary COPY rows, which the server reads in about
   half the time it takes to parse the text;
3. the indexes and simple primary keys and unique constraints, on two connections of their
   own, each table's as soon as its rows are in, while later tables still load
   (postgresql_indexes.py);
4. everything else (sequence values, foreign keys, triggers, comments, grants), by
   `pg_restore --jobs` from the same table-of-contents file: none of it has a data block. No
   rows change any more, so the caller's check of the restored rows can run alongside.

The plan needs every data block to be table data in COPY form, and the entry that names the
dump's encoding; an archive with large objects (or anything else) gets `plan_load` None and
the caller restores it with plain pg_restore.

A plan restricted to some entries (`restrict`, for `--table`) runs the same four steps on them
alone: the data blocks of the other tables are read past, nothing kept, so restoring a small
table of a big dump needs no copy of the dump on disk.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg

from lockstep.databases import copy_binary
from lockstep.databases.copy_frames import data_blocks
from lockstep.databases.postgresql import table_name
from lockstep.databases.postgresql_archive import SECTION_PRE_DATA, ArchiveHead, TocEntry
from lockstep.databases.postgresql_indexes import IndexBuilder
from lockstep.errors import SourceError
from lockstep.process import Command, run_with_input

Connection = psycopg.Connection[tuple[Any, ...]]
# Rows are sent in pieces of about this size, alternately to the connections with less queued.
PIECE_BYTES = 1 << 20
QUEUED_PIECES = 4
# How long a worker that met a row it cannot read waits for the others to count the rows of the
# table's earlier pieces, to number that row within the table.
ROW_COUNT_WAIT_SECONDS = 60.0
LOADER_CONNECTIONS = 2  # at least; as many as pg_restore --jobs would use on a bigger machine
# How pg_dump ends a table's COPY text (pg_dump.c, dumpTableData_copy).
_END_OF_DATA_LINE = b"\\.\n"
_END_OF_DATA = _END_OF_DATA_LINE + b"\n\n"
# What pg_restore sets first in every session (pg_backup_archiver.c, _doSetFixedOutputState),
# with the three settings the dump names in entries of their own in between.
_SESSION_BEFORE = (
    "SET statement_timeout = 0;",
    "SET lock_timeout = 0;",
    "SET idle_in_transaction_session_timeout = 0;",
)
_SESSION_FROM_DUMP = ("ENCODING", "STDSTRINGS", "SEARCHPATH")
_SESSION_AFTER = (
    "SET check_function_bodies = false;",
    "SET xmloption = content;",
    "SET client_min_messages = warning;",
    "SET row_security = off;",
)


@dataclass(frozen=True)
class LoadPlan:
    """Which entries each step restores (dump IDs, in table-of-contents order), and the
    session settings every connection starts with (client_encoding, ...). `skipped` are the
    data blocks the archive holds that are read past, not loaded (see `restrict`)."""

    schema: list[int]
    data: list[int]
    rest: list[int]
    session: bytes
    skipped: frozenset[int] = frozenset()


def plan_load(head: ArchiveHead) -> LoadPlan | None:
    """The three steps for this archive, or None when it holds data this loader does not load."""
    schema: list[int] = []
    data: list[int] = []
    rest: list[int] = []
    settings = {entry.description: entry.definition.strip() for entry in head.entries if not entry.had_data}
    if "ENCODING" not in settings:
        return None  # pg_restore would fall back to the server's encoding; leave that to it
    session = [*_SESSION_BEFORE, *(settings[name] for name in _SESSION_FROM_DUMP if name in settings), *_SESSION_AFTER]
    for entry in head.entries:
        if entry.had_data:
            if not _is_copy_data(entry):
                return None
            data.append(entry.dump_id)
        elif entry.section == SECTION_PRE_DATA:
            schema.append(entry.dump_id)
        else:
            rest.append(entry.dump_id)
    return LoadPlan(schema=schema, data=data, rest=rest, session=head.encode("\n".join(session)))


def restrict(plan: LoadPlan, dump_ids: Iterable[int]) -> LoadPlan:
    """The plan restoring only the entries `dump_ids`: each step keeps its own of them, and the
    other data blocks are read past."""
    wanted = set(dump_ids)
    return LoadPlan(
        schema=[dump_id for dump_id in plan.schema if dump_id in wanted],
        data=[dump_id for dump_id in plan.data if dump_id in wanted],
        rest=[dump_id for dump_id in plan.rest if dump_id in wanted],
        session=plan.session,
        skipped=plan.skipped | {dump_id for dump_id in plan.data if dump_id not in wanted},
    )


def _table_name(entry: TocEntry) -> str:
    return table_name(entry.namespace, entry.tag)


def _is_copy_data(entry: TocEntry) -> bool:
    return entry.description == "TABLE DATA" and entry.copy_statement.upper().startswith("COPY ")


@dataclass
class LoadResult:
    """Rows COPY reported loaded, per table (named as the manifest names it: `schema.table`,
    or `table` in the public schema)."""

    rows: dict[str, int] = field(default_factory=dict)


class ParallelLoader:
    """Runs the three steps. `restore_command(*arguments)` is pg_restore with the connection
    options for the target database; `connect()` opens a connection to it."""

    def __init__(
        self,
        restore_command: Callable[..., Command],
        connect: Callable[[], Connection],
        hint: str,
        jobs: int,
    ) -> None:
        self._restore_command = restore_command
        self._connect = connect
        self._hint = hint
        self._jobs = jobs

    def run(
        self,
        head: ArchiveHead,
        plan: LoadPlan,
        first_bytes: bytes,
        rest: IO[bytes],
        alongside_last_step: Callable[[], None] | None = None,
    ) -> LoadResult:
        """Restore the archive. `alongside_last_step` runs on a thread during the last pg_restore
        (once every row and index is in: what is left changes no rows), e.g. the check."""
        with tempfile.TemporaryDirectory(prefix="lockstep-restore-") as folder:
            contents = Path(folder) / "toc.dump"
            contents.write_bytes(first_bytes[: head.end])
            self._pg_restore(Path(folder) / "schema.list", plan.schema, contents)
            after_data = set(plan.rest)
            post_data = [entry for entry in head.entries if entry.dump_id in after_data]
            indexes = IndexBuilder(post_data, self._connect, plan.session, self._jobs, head.codec)
            try:
                result = self._load_data(head, plan, first_bytes, rest, indexes.table_loaded)
            except SourceError as error:
                indexes.stop()
                raise self._hinted(error) from None
            except BaseException:
                indexes.stop()
                raise
            try:
                built = indexes.finish()
            except SourceError as error:
                raise self._hinted(error) from None
            remaining = [dump_id for dump_id in plan.rest if dump_id not in built]
            alongside = _Alongside(alongside_last_step)
            try:
                self._pg_restore(Path(folder) / "rest.list", remaining, contents, f"--jobs={self._jobs}")
            finally:
                alongside.join()
            alongside.raise_error()
        return result

    def _hinted(self, error: SourceError) -> SourceError:
        """A failure while rows or indexes went in leaves the database partly restored: say so."""
        return error if error.hint else SourceError(error.message, self._hint)

    def _pg_restore(self, list_file: Path, dump_ids: list[int], archive: Path, *options: str) -> None:
        if not dump_ids:
            return
        list_file.write_text("".join(f"{dump_id};\n" for dump_id in dump_ids))
        command = self._restore_command(*options, f"--use-list={list_file}", str(archive))
        with open(os.devnull, "rb") as nothing:
            run_with_input(command, nothing, self._hint)

    def _load_data(
        self,
        head: ArchiveHead,
        plan: LoadPlan,
        first_bytes: bytes,
        rest: IO[bytes],
        table_loaded: Callable[[str, str], None],
    ) -> LoadResult:
        """Load the rows; `table_loaded(schema, table)` is called once a table's COPY has
        committed on every connection."""
        result = LoadResult()
        if not plan.data:
            return result
        data_ids = set(plan.data)
        entries = {entry.dump_id: entry for entry in head.entries if entry.dump_id in data_ids}
        statements = {
            dump_id: head.encode(entry.copy_statement.rstrip().removesuffix(";")) for dump_id, entry in entries.items()
        }
        entry_by_statement = {statements[dump_id]: entry for dump_id, entry in entries.items()}
        count = max(LOADER_CONNECTIONS, self._jobs)
        ends: dict[bytes, int] = {}
        ends_lock = threading.Lock()

        def committed(statement: bytes) -> None:
            with ends_lock:
                ends[statement] = ends.get(statement, 0) + 1
                done = ends[statement] == count
            if done:
                entry = entry_by_statement[statement]
                table_loaded(entry.namespace, entry.tag)

        with ExitStack() as stack:
            workers = [stack.enter_context(_CopyWorker(self._connect(), committed)) for _ in range(count)]
            for worker in workers:
                worker.execute(plan.session)
            splitter = _RowSplitter(workers)
            loaded: set[int] = set()
            current: int | None = None
            skipping = False  # the current block is one of plan.skipped: read past, not kept
            for dump_id, text, ended in data_blocks(first_bytes[head.end :], rest.read, head.int_size, PIECE_BYTES):
                if current is None:
                    skipping = dump_id in plan.skipped
                    if (dump_id not in statements and not skipping) or dump_id in loaded:
                        raise SourceError(f"the dump holds data (entry {dump_id}) its table of contents does not list")
                    if not skipping:
                        splitter.begin(statements[dump_id])
                    current = dump_id
                if not skipping:
                    splitter.add(text)
                if ended:
                    if not skipping:
                        splitter.end()
                    loaded.add(dump_id)
                    current = None
            if missing := data_ids - loaded:
                names = sorted(_table_name(entries[dump_id]) for dump_id in missing)
                raise SourceError(f"the dump ends before the data of {', '.join(names)}")
            for worker in workers:
                worker.finish()
                for statement, rows in worker.rows.items():
                    table = _table_name(entry_by_statement[statement])
                    result.rows[table] = result.rows.get(table, 0) + rows
        return result


class _Alongside:
    """A callable run on a thread; its exception is raised in the caller's thread."""

    def __init__(self, work: Callable[[], None] | None) -> None:
        self._work = work
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pg-alongside", daemon=True)
        if work is not None:
            self._thread.start()

    def _run(self) -> None:
        assert self._work is not None
        try:
            self._work()
        except BaseException as error:
            self._error = error

    def join(self) -> None:
        if self._work is not None:
            self._thread.join()

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error


class _RowCounts:
    """How many rows each piece of one table's COPY text held, recorded by the workers as they
    convert them, so that a row the converter cannot read is numbered within the table.

    The pieces before the damaged one went to any of the workers, so its number waits for theirs.
    The splitter counting newlines as it cuts the text would cost a pass over every byte (~0.7 ms
    a MiB on the loading thread, more than converting `events` costs); this costs nothing until
    a row is damaged."""

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self._uncountable = False
        self._changed = threading.Condition()

    def counted(self, piece: int, rows: int) -> None:
        with self._changed:
            self._counts[piece] = rows
            self._changed.notify_all()

    def uncountable(self) -> None:
        """A worker sends this table as text or has failed: some pieces will never be counted."""
        with self._changed:
            self._uncountable = True
            self._changed.notify_all()

    def before(self, piece: int) -> int | None:
        """The rows in the pieces before `piece`, once all are counted; None if they cannot be."""
        with self._changed:
            if not self._changed.wait_for(
                lambda: self._uncountable or all(earlier in self._counts for earlier in range(piece)),
                timeout=ROW_COUNT_WAIT_SECONDS,
            ):
                return None
            if any(earlier not in self._counts for earlier in range(piece)):
                return None
            return sum(self._counts[earlier] for earlier in range(piece))


@dataclass(frozen=True)
class _Piece:
    """Where a piece of COPY text sits in its table's: the table's counts, its place (from 0)."""

    counts: _RowCounts
    number: int


class _CopyWorker:
    """One connection, fed from a queue: SQL to run, COPY statements to start, rows to send."""

    def __init__(self, connection: Connection, ended: Callable[[bytes], None]) -> None:
        self._connection = connection
        self._ended = ended  # called with the COPY statement when this worker's part is in
        self._queue: queue.Queue[tuple[str, bytes, _Piece | None]] = queue.Queue(maxsize=QUEUED_PIECES)
        self._error: BaseException | None = None
        self.rows: dict[bytes, int] = {}  # COPY statement: rows loaded
        self._thread = threading.Thread(target=self._run, name="pg-copy", daemon=True)

    def __enter__(self) -> _CopyWorker:
        self._thread.start()
        return self

    def __exit__(self, *exception: object) -> None:
        if self._thread.is_alive():  # something failed: stop a running COPY, then the thread
            self._connection.cancel()
            with contextlib.suppress(queue.Full):
                self._queue.put(("stop", b"", None), timeout=10)
            self._thread.join(timeout=10)
        self._connection.close()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def execute(self, statement: bytes) -> None:
        self._send("sql", statement)

    def begin(self, statement: bytes) -> None:
        self._send("begin", statement)

    def rows_piece(self, data: bytes, piece: _Piece) -> None:
        self._send("data", data, piece)

    def end(self) -> None:
        self._send("end", b"")

    def finish(self) -> None:
        self._send("stop", b"")
        self._thread.join()
        self.raise_error()

    def raise_error(self) -> None:
        if isinstance(self._error, psycopg.Error):
            raise SourceError(f"COPY failed: {str(self._error).strip()}") from None
        if self._error is not None:
            raise self._error

    def _send(self, kind: str, data: bytes, piece: _Piece | None = None) -> None:
        self.raise_error()
        while True:
            try:
                self._queue.put((kind, data, piece), timeout=1.0)
                return
            except queue.Full:
                self.raise_error()

    def _run(self) -> None:
        statement = b""
        binary: tuple[bytes, bytes] | None = None  # the binary COPY statement, the column kinds
        copy: ExitStack | None = None
        writer: Any = None
        cursor = self._connection.cursor()
        counts: _RowCounts | None = None  # of the table being loaded
        while True:
            kind, data, piece = self._queue.get()
            if self._error is not None:
                if kind == "stop":
                    return
                if piece is not None:
                    piece.counts.uncountable()
                continue  # drained, so the splitter never blocks on a failed worker
            try:
                if kind == "sql":
                    cursor.execute(data)
                elif kind == "begin":
                    statement = data
                    binary = copy_binary.binary_statement(cursor, statement)
                elif kind == "data":
                    assert piece is not None
                    counts = piece.counts
                    if copy is None:
                        copy = ExitStack()
                        writer = copy.enter_context(cursor.copy(binary[0] if binary else statement))
                        if binary:
                            writer.write(copy_binary.HEADER)
                    if binary:
                        before = functools.partial(piece.counts.before, piece.number)
                        converted, rows = copy_binary.rows(data, binary[1], statement, before)
                        piece.counts.counted(piece.number, rows)
                        writer.write(converted)
                    else:
                        piece.counts.uncountable()
                        writer.write(memoryview(data))  # psycopg sends it in slices: views, not copies
                elif kind == "end":
                    if copy is not None:
                        if binary:
                            writer.write(copy_binary.TRAILER)
                        copy.close()
                        copy = None
                        self.rows[statement] = self.rows.get(statement, 0) + max(cursor.rowcount, 0)
                    counts = None
                    self._ended(statement)
                elif kind == "stop":
                    return
            except BaseException as error:
                self._error = error
                if counts is not None:  # a worker waiting to number a damaged row waits no more
                    counts.uncountable()
                if kind == "stop":
                    return


class _RowSplitter:
    """Hands one table's COPY text to the workers in pieces of whole rows (cut after a newline:
    a row ends with one, embedded ones are escaped), each piece to the worker with least queued.

    pg_dump ends each table's text with the end-of-data line `\\.` and two empty lines, which
    COPY over the protocol does not take; the last bytes are held back until the table ends, so
    that the marker can be left out whichever pieces it arrived in."""

    def __init__(self, workers: list[_CopyWorker]) -> None:
        self._workers = workers
        self._parts: list[bytes] = []
        self._size = 0
        self._leftover = b""  # the start of a row whose end has not arrived, and the last bytes
        self._counts = _RowCounts()  # of the table's pieces
        self._pieces = 0  # sent of the table

    def begin(self, statement: bytes) -> None:
        self._counts, self._pieces = _RowCounts(), 0
        for worker in self._workers:
            worker.begin(statement)

    def add(self, text: bytes) -> None:
        if self._leftover:
            text, self._leftover = self._leftover + text, b""
        cut = text.rfind(b"\n", 0, max(0, len(text) - len(_END_OF_DATA))) + 1
        if cut < len(text):
            self._leftover = text[cut:]
            text = text[:cut]
        if text:
            self._parts.append(text)
            self._size += len(text)
            if self._size >= PIECE_BYTES:
                self._send()

    def end(self) -> None:
        tail = self._leftover
        self._leftover = b""
        marker = tail.rfind(_END_OF_DATA_LINE)
        if marker >= 0 and (marker == 0 or tail[marker - 1 : marker] == b"\n") and not tail[marker + 3 :].strip(b"\n"):
            tail = tail[:marker]
        if tail:  # a last row without its newline: COPY takes it as it is
            self._parts.append(tail)
        self._send()
        for worker in self._workers:
            worker.end()

    def _send(self) -> None:
        if self._parts:
            piece = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
            self._parts, self._size = [], 0
            worker = min(self._workers, key=lambda worker: worker.backlog)
            worker.rows_piece(piece, _Piece(self._counts, self._pieces))
            self._pieces += 1
