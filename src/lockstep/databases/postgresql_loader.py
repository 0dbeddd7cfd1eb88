"""Restore a custom-format dump from a stream, loading the table data on parallel connections.

`pg_restore --jobs` needs a seekable file (writing the 1 GB shop dump to one took 2.3 s) and
still loads each table on one connection: the shop database's `events` table, most of its
rows, loaded on one core while the other idled. Here a restore is four steps:

1. the schema (pre-data entries), by pg_restore from the head of the archive alone: the table
   of contents, written to a small temporary file;
2. the table data, streamed: pg_restore turns the archive into COPY text (it strips the custom
   format's per-row framing at C speed; a Python loop over 4.6M rows took 3.7 s), and each
   table's rows, cut at line boundaries (a row ends with a newline, embedded ones are escaped),
   go to two `COPY ... FROM STDIN` connections, so even one big table loads on both cores;
3. the indexes and simple primary keys and unique constraints, on two connections, largest
   table first (postgresql_indexes.py);
4. everything else (sequence values, foreign keys, triggers, comments, grants), by
   `pg_restore --jobs` from the same table-of-contents file: none of it has a data block. No
   rows change any more, so the caller's check of the restored rows can run alongside.

The plan needs every data block to be table data in COPY form; an archive with large objects
(or anything else) gets `plan_load` None and the caller restores it with plain pg_restore.
"""

from __future__ import annotations

import contextlib
import os
import queue
import tempfile
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg

from lockstep.databases.postgresql_archive import SECTION_PRE_DATA, ArchiveHead, TocEntry
from lockstep.databases.postgresql_indexes import build_indexes
from lockstep.errors import SourceError
from lockstep.process import Command, enlarge_pipe, run_with_input, start_piped

Connection = psycopg.Connection[tuple[Any, ...]]
# Rows are sent in pieces of about this size, alternately to the connections with less queued.
PIECE_BYTES = 1 << 20
QUEUED_PIECES = 4
LOADER_CONNECTIONS = 2  # at least; as many as pg_restore --jobs would use on a bigger machine
_COPY_END = b" FROM stdin;\n"
_TERMINATOR = b"\\.\n"


@dataclass(frozen=True)
class LoadPlan:
    """Which entries each step restores (dump IDs, in table-of-contents order)."""

    schema: list[int]
    data: list[int]
    rest: list[int]


def plan_load(head: ArchiveHead) -> LoadPlan | None:
    """The three steps for this archive, or None when it holds data this loader does not load."""
    schema: list[int] = []
    data: list[int] = []
    rest: list[int] = []
    for entry in head.entries:
        if entry.had_data:
            if not _is_copy_data(entry):
                return None
            data.append(entry.dump_id)
        elif entry.section == SECTION_PRE_DATA:
            schema.append(entry.dump_id)
        else:
            rest.append(entry.dump_id)
    return LoadPlan(schema=schema, data=data, rest=rest)


def _table_name(entry: TocEntry) -> str:
    return entry.tag if entry.namespace == "public" else f"{entry.namespace}.{entry.tag}"


def _is_copy_data(entry: TocEntry) -> bool:
    return entry.description == "TABLE DATA" and entry.copy_statement.upper().startswith("COPY ")


@dataclass
class LoadResult:
    """Rows COPY reported loaded, per table (named as the manifest names it: `schema.table`,
    or `table` in the public schema)."""

    rows: dict[str, int] = field(default_factory=dict)
    session: bytes = b""  # the session settings pg_restore wrote first (client_encoding, ...)


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
            result = self._load_data(Path(folder) / "data.list", head, plan, first_bytes, rest)
            after_data = set(plan.rest)
            built = build_indexes(
                [entry for entry in head.entries if entry.dump_id in after_data],
                self._connect,
                result.session,
                self._jobs,
            )
            remaining = [dump_id for dump_id in plan.rest if dump_id not in built]
            alongside = _Alongside(alongside_last_step)
            try:
                self._pg_restore(Path(folder) / "rest.list", remaining, contents, f"--jobs={self._jobs}")
            finally:
                alongside.join()
            alongside.raise_error()
        return result

    def _pg_restore(self, list_file: Path, dump_ids: list[int], archive: Path, *options: str) -> None:
        if not dump_ids:
            return
        list_file.write_text("".join(f"{dump_id};\n" for dump_id in dump_ids))
        command = self._restore_command(*options, f"--use-list={list_file}", str(archive))
        with open(os.devnull, "rb") as nothing:
            run_with_input(command, nothing, self._hint)

    def _load_data(
        self, list_file: Path, head: ArchiveHead, plan: LoadPlan, first_bytes: bytes, rest: IO[bytes]
    ) -> LoadResult:
        result = LoadResult()
        dump_ids = plan.data
        if not dump_ids:
            return result
        tables = {
            entry.copy_statement.rstrip().removesuffix(";"): _table_name(entry)
            for entry in head.entries
            if entry.dump_id in set(dump_ids)
        }
        list_file.write_text("".join(f"{dump_id};\n" for dump_id in dump_ids))
        # Without connection options pg_restore writes SQL: COPY statements and their rows.
        command = self._restore_command("--file=-", f"--use-list={list_file}")
        process = start_piped(command, "install the PostgreSQL client tools", buffered=False)
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        for pipe in (process.stdin, process.stdout):
            enlarge_pipe(pipe, PIECE_BYTES)  # fewer, larger reads and writes
        feeder = _Feeder(process.stdin, first_bytes, rest, process.kill)
        errors = _StderrTail(process.stderr)
        with ExitStack() as stack:
            count = max(LOADER_CONNECTIONS, self._jobs)
            workers = [stack.enter_context(_CopyWorker(self._connect())) for _ in range(count)]
            try:
                splitter = _CopyTextSplitter(workers)
                splitter.run(process.stdout)
                result.session = splitter.session
                for worker in workers:
                    worker.finish()
                    for statement, rows in worker.rows.items():
                        table = tables.get(statement, statement)
                        result.rows[table] = result.rows.get(table, 0) + rows
            except BaseException as error:
                process.kill()
                feeder.join()
                process.wait()
                if feeder.error is not None:  # the cause: reading the dump failed
                    raise feeder.error from error
                raise
            feeder.join()
            code = process.wait()
            errors.join()
        if feeder.error is not None:
            raise feeder.error
        if code != 0:
            raise SourceError(f"pg_restore exited with code {code}: {errors.text()}", self._hint)
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


class _Feeder(threading.Thread):
    """Writes the archive (the bytes already read, then the rest of the stream) to pg_restore."""

    def __init__(self, stdin: IO[bytes], first_bytes: bytes, rest: IO[bytes], stop: Callable[[], None]) -> None:
        super().__init__(name="pg-restore-feed", daemon=True)
        self._stdin = stdin
        self._stop = stop
        self._first = first_bytes
        self._rest = rest
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._stdin.write(self._first)
            while data := self._rest.read(PIECE_BYTES):
                self._stdin.write(data)
            self._stdin.close()
        except BrokenPipeError:
            pass  # pg_restore ended early: its exit code says why
        except BaseException as error:
            # Killed, not shown an end of input: a truncated dump must not look like a whole one.
            self.error = error
            self._stop()


class _StderrTail(threading.Thread):
    def __init__(self, stderr: IO[bytes]) -> None:
        super().__init__(name="pg-restore-stderr", daemon=True)
        self._stderr = stderr
        self._tail = b""
        self.start()

    def run(self) -> None:
        for line in self._stderr:
            self._tail = (self._tail + line)[-4096:]

    def text(self) -> str:
        return " ".join(self._tail.decode("utf-8", "replace").strip().splitlines()[-3:])


class _CopyWorker:
    """One connection, fed from a queue: SQL to run, COPY statements to start, rows to send."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._queue: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=QUEUED_PIECES)
        self._error: BaseException | None = None
        self.rows: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="pg-copy", daemon=True)

    def __enter__(self) -> _CopyWorker:
        self._thread.start()
        return self

    def __exit__(self, *exception: object) -> None:
        if self._thread.is_alive():  # something failed: stop a running COPY, then the thread
            self._connection.cancel()
            with contextlib.suppress(queue.Full):
                self._queue.put(("stop", b""), timeout=10)
            self._thread.join(timeout=10)
        self._connection.close()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def execute(self, statement: bytes) -> None:
        self._send("sql", statement)

    def begin(self, statement: bytes) -> None:
        self._send("begin", statement)

    def rows_piece(self, data: bytes) -> None:
        self._send("data", data)

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

    def _send(self, kind: str, data: bytes) -> None:
        self.raise_error()
        while True:
            try:
                self._queue.put((kind, data), timeout=1.0)
                return
            except queue.Full:
                self.raise_error()

    def _run(self) -> None:
        statement = b""
        copy: ExitStack | None = None
        writer: Any = None
        cursor = self._connection.cursor()
        while True:
            kind, data = self._queue.get()
            if self._error is not None:
                if kind == "stop":
                    return
                continue  # drained, so the splitter never blocks on a failed worker
            try:
                if kind == "sql":
                    cursor.execute(data)
                elif kind == "begin":
                    statement = data
                elif kind == "data":
                    if copy is None:
                        copy = ExitStack()
                        writer = copy.enter_context(cursor.copy(statement))
                    writer.write(data)
                elif kind == "end" and copy is not None:
                    copy.close()
                    copy = None
                    key = statement.decode("utf-8", "replace")
                    self.rows[key] = self.rows.get(key, 0) + max(cursor.rowcount, 0)
                elif kind == "stop":
                    return
            except BaseException as error:
                self._error = error
                if kind == "stop":
                    return


class _CopyTextSplitter:
    """Reads pg_restore's SQL output and hands it to the workers: statements outside COPY
    blocks to every worker (session settings such as client_encoding), each COPY block's rows
    in pieces cut after a newline."""

    def __init__(self, workers: list[_CopyWorker]) -> None:
        self._workers = workers
        self._parts: list[bytes] = []
        self._size = 0
        self.session = b""

    def run(self, output: IO[bytes]) -> None:
        read = output.read  # unbuffered: one read of what the pipe holds
        outside = b""  # text outside COPY blocks not yet handled
        leftover = b""  # inside a COPY block: the start of a row whose end has not arrived
        inside = False
        while True:
            chunk = read(PIECE_BYTES)
            if not chunk:
                break
            if not inside:
                outside += chunk
                chunk = b""
            while True:
                if not inside:
                    start = 0 if outside.startswith(b"COPY ") else outside.find(b"\nCOPY ") + 1
                    end = outside.find(_COPY_END, start) if start > 0 or outside.startswith(b"COPY ") else -1
                    if end < 0:
                        break
                    self._statements(outside[:start])
                    statement = outside[start : end + len(_COPY_END) - 2]  # without ";\n"
                    for worker in self._workers:
                        worker.begin(statement)
                    chunk, outside, inside = outside[end + len(_COPY_END) :], b"", True
                data = leftover + chunk if leftover else chunk
                leftover = chunk = b""
                if data.startswith(_TERMINATOR):
                    terminator = -1
                else:
                    terminator = data.find(b"\n" + _TERMINATOR)
                    if terminator < 0:
                        cut = data.rfind(b"\n") + 1
                        self._add(data[:cut] if cut < len(data) else data)
                        leftover = data[cut:]
                        break
                self._add(data[: terminator + 1])
                self._end()
                outside, inside = data[terminator + 1 + len(_TERMINATOR) :], False
        if inside:
            raise SourceError("the dump ends inside a table's data")
        # What follows the last table is comments; if pg_restore stopped early its exit code says so.

    def _add(self, rows: bytes) -> None:
        if rows:
            self._parts.append(rows)
            self._size += len(rows)
            if self._size >= PIECE_BYTES:
                self._send()

    def _send(self) -> None:
        if self._parts:
            piece = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
            self._parts, self._size = [], 0
            min(self._workers, key=lambda worker: worker.backlog).rows_piece(piece)

    def _end(self) -> None:
        self._send()
        for worker in self._workers:
            worker.end()

    def _statements(self, text: bytes) -> None:
        """Run what pg_restore wrote between COPY blocks, less comments and psql's meta-commands."""
        lines = [line for line in text.split(b"\n") if line.strip() and not line.startswith((b"--", b"\\"))]
        if lines:
            statement = b"\n".join(lines)
            self.session = self.session or statement
            for worker in self._workers:
                worker.execute(statement)
