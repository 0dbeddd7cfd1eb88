"""Bring parts of a coordinated snapshot back: a database, the code, the config and secret files.

A database restore always ends with a check: the restored database is fingerprinted and
compared, table by table, with the row counts and checksums the manifest recorded, so success
means "the data is back", not "the restore tool exited 0". Restoring over a database that has
data first empties it (its schemas for PostgreSQL; the database re-created with its character
set for MariaDB; SQLite files are replaced atomically by the adapter); the caller decides when
that is allowed (a pre-restore snapshot and a confirmation, or --yes).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import os
import secrets
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from lockstep.chunk_stream import ChunkStream
from lockstep.databases import adapter_for
from lockstep.databases.base import (
    DatabaseAdapter,
    DatabaseInfo,
    LargeObjectsInfo,
    MaterializedViewInfo,
    SequenceInfo,
    ServerLocation,
    TableInfo,
    TableNotInDump,
    TableRestoring,
    redact_url,
)
from lockstep.errors import IntegrityError, LockstepError, NotFound, SourceError, UsageError
from lockstep.pipeline.code import git_command
from lockstep.pipeline.code_listing import (
    DEVICE_TYPES,
    ListedEntry,
    entries_on_disk,
    listing_bytes,
    listing_sha256,
    mismatch_problem,
    tree_entries,
)
from lockstep.pipeline.manifest import (
    CodeRecord,
    DatabaseRecord,
    FileRecord,
    LargeObjectsRecord,
    Manifest,
    MaterializedViewRecord,
    SequenceRecord,
    TableRecord,
)
from lockstep.process import Command, StreamingProcess, run_capture
from lockstep.repository.gojson import unix_permissions
from lockstep.repository.repository import Repository
from lockstep.repository.restore_warnings import ONLY_ROOT_CREATES_DEVICES, summarise_warnings
from lockstep.repository.restorer import Restorer, dump_file, find_node, read_blobs
from lockstep.repository.snapshot import Snapshot
from lockstep.repository.tree import Node
from lockstep.wording import counted

TargetState = Literal["missing", "empty", "non-empty"]
GIT_TIMEOUT_SECONDS = 600.0
# A restore in place waits this long for the application's locks before giving up.
LOCK_TIMEOUT = "30s"
CHECKSUM_DIFFERS = "the restored rows' checksum differs from the manifest"
# The end of a problem with a materialized view's rows: one that holds exactly what its query
# gives over the restored tables was only stale at snapshot time (see refreshed_views_excused).
VIEW_ROWS_DIFFER = "rows differ from the manifest's"


@dataclass(frozen=True)
class ServerAccess:
    """A database URL and its password (kept apart, so the URL can be shown)."""

    url: str
    password: str | None = None


@dataclass(frozen=True)
class RestoredDatabase:
    """A database restored and checked against its manifest."""

    name: str
    target: str  # the target URL, without a password
    tables: int
    rows: int
    seconds: float
    # For a restore of some tables (--table): their names. What was left out (foreign keys to
    # tables not restored; grants and policies naming roles the target server lacks), one
    # sentence each.
    only_tables: list[str] | None = None
    left_out: list[str] = field(default_factory=list)


# --- reading a stored file ---------------------------------------------------------------


class SnapshotFileReader(ChunkStream):
    """A file of a snapshot as a readable stream: blobs are fetched (a few ahead) as it is read."""

    def __init__(self, repository: Repository, node: Node) -> None:
        super().__init__(read_blobs(repository, node.content or []))


@contextlib.contextmanager
def dump_source(repository: Repository, node: Node, adapter: DatabaseAdapter) -> Iterator[IO[bytes] | Path]:
    """The stored dump as the adapter restores it best: a temporary file when the engine restores
    faster from a seekable file (pg_restore --jobs), a stream otherwise."""
    if not adapter.dump_format.seekable_restore_is_faster:
        with io.BufferedReader(SnapshotFileReader(repository, node), buffer_size=1024 * 1024) as stream:
            yield stream
        return
    descriptor, name = tempfile.mkstemp(prefix="lockstep-restore-", suffix=adapter.dump_format.extension)
    path = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as output:
            dump_file(repository, node, output)
        yield path
    finally:
        path.unlink(missing_ok=True)


def restore_and_inspect(
    adapter: DatabaseAdapter,
    url: str,
    password: str | None,
    source: IO[bytes] | Path,
    create: bool,
    algorithm: str | None = None,
) -> DatabaseInfo:
    """Restore, then fingerprint the restored database, with checksums computed as the
    manifest's `algorithm` says where the adapter can (see inspect_as). An adapter that can
    fingerprint while its restore finishes (PostgreSQL: during the foreign keys) does both."""
    overlapping = getattr(adapter, "restore_and_inspect", None)
    if overlapping is not None and not isinstance(source, Path):
        info: DatabaseInfo = overlapping(url, password, source, create, algorithm)
        return info
    adapter.restore(url, password, source, create)
    return inspect_as(adapter, url, password, algorithm)


def inspect_as(adapter: DatabaseAdapter, url: str, password: str | None, algorithm: str | None) -> DatabaseInfo:
    """adapter.inspect(), computing checksums the way a manifest of `algorithm` did, for an
    adapter that keeps an older algorithm checkable (PostgreSQL's `inspect_as`)."""
    as_recorded = getattr(adapter, "inspect_as", None)
    if as_recorded is not None:
        info: DatabaseInfo = as_recorded(url, password, algorithm)
        return info
    return adapter.inspect(url, password)


def scratch_server_url(engine: str, server: ServerAccess | None, name: str) -> str:
    """Where a scratch database for `engine` can be made: SQLite anywhere, others next to `server`."""
    if engine == "sqlite":
        return "sqlite:///lockstep-scratch.sqlite3"
    if server is None:
        raise UsageError(
            f"database {name}: there is no {engine} server to test-restore it on (it is not in lockstep.toml)",
            f"add [databases.{name}] back to lockstep.toml, or verify with --level data",
        )
    if adapter_for(server.url).engine != engine:
        raise UsageError(
            f"database {name}: lockstep.toml names a {adapter_for(server.url).engine} server, "
            f"the dump was made by {engine}"
        )
    return server.url


def checksums_comparable(record: DatabaseRecord, adapter: DatabaseAdapter) -> bool | None:
    """Whether the manifest's checksums and `adapter`'s are computed the same way; None when
    the manifest (written before it named its algorithm) or the adapter does not say."""
    current = getattr(adapter, "checksum_algorithm", None)
    if record.checksum_algorithm is None or current is None:
        return None
    return record.checksum_algorithm in getattr(adapter, "comparable_checksum_algorithms", (current,))


def _same_checksum_kind(first: str, second: str) -> bool:
    """For manifests that do not name their checksum algorithm: PostgreSQL's changed from md5
    (32 hex digits) to a sum of 64-bit row hashes (16). Across that change only row counts can
    be compared."""
    return len(first) == len(second)


def compare_with_manifest(
    recorded: list[TableRecord], info: DatabaseInfo, comparable: bool | None = None, inspected: str = "dump"
) -> list[tuple[str, str]]:
    """(table, problem) for every table whose rows or checksum differ from the manifest.

    `comparable` says whether the checksums were computed the same way (`checksums_comparable`);
    None (an older manifest that does not say) leaves it to the checksums' lengths. Counts taken
    outside the dump's snapshot (the record's `inspected` is "after-dump", or a table is not
    `consistent`) may differ from what the dump holds when the application wrote meanwhile, so
    only the table's presence is checked.
    """
    problems: list[tuple[str, str]] = []
    actual = {table.name: table for table in info.tables}
    for table in recorded:
        found = actual.pop(table.name, None)
        if found is None:
            problems.append((table.name, f"table {table.name} is in the manifest but was not restored"))
        elif inspected == "after-dump" or not table.consistent:
            continue
        elif found.rows != table.rows:
            problems.append(
                (
                    table.name,
                    f"table {table.name} has {counted(found.rows, 'row')} restored, the manifest says {table.rows}",
                )
            )
        elif found.checksum != table.checksum and (
            comparable if comparable is not None else _same_checksum_kind(found.checksum, table.checksum)
        ):
            problems.append((table.name, f"table {table.name}: {CHECKSUM_DIFFERS}"))
        elif _history_differs(table, found):
            problems.append(
                (
                    table.name,
                    f"table {table.name}: its history differs from the manifest's "
                    f"({found.history_rows} row versions restored, the manifest says {table.history_rows})",
                )
            )
    if comparable is None:
        # A manifest from before checksums named their algorithm: its fingerprint left out some
        # tables the dump holds (MariaDB's system-versioned ones), so extra tables are no sign of
        # a bad restore there.
        return problems
    for name in sorted(actual):
        problems.append((name, f"table {name} was restored but is not in the manifest"))
    return problems


def compare_beyond_tables(record: DatabaseRecord, info: DatabaseInfo) -> list[tuple[str, str]]:
    """(what, problem) for every sequence, the large objects and every materialized view that
    differ from the manifest. A manifest written before they were recorded, or a fingerprint
    taken outside the dump's snapshot, checks none of them."""
    if record.inspected == "after-dump":
        return []
    problems: list[tuple[str, str]] = []
    if record.sequences is not None and info.sequences is not None:
        problems += _sequence_problems(record.sequences, info.sequences)
    if record.large_objects is not None and info.large_objects is not None:
        problems += _large_object_problems(record.large_objects, info.large_objects)
    if record.materialized_views is not None and info.materialized_views is not None:
        problems += _view_problems(record.materialized_views, info.materialized_views)
    return problems


def _sequence_problems(recorded: list[SequenceRecord], restored: list[SequenceInfo]) -> list[tuple[str, str]]:
    def state(last_value: int, is_called: bool) -> str:
        return f"last_value {last_value}, is_called {str(is_called).lower()}"

    problems: list[tuple[str, str]] = []
    found = {sequence.name: sequence for sequence in restored}
    for sequence in recorded:
        what = f"sequence {sequence.name}"
        there = found.get(sequence.name)
        if there is None:
            problems.append((what, f"{what} is in the manifest but was not restored"))
        elif (there.last_value, there.is_called) != (sequence.last_value, sequence.is_called):
            problems.append(
                (
                    what,
                    f"{what} has {state(there.last_value, there.is_called)} after the restore, the manifest says "
                    f"{state(sequence.last_value, sequence.is_called)}",
                )
            )
    return problems


def _large_object_problems(recorded: LargeObjectsRecord, restored: LargeObjectsInfo) -> list[tuple[str, str]]:
    if restored.count != recorded.count:
        return [("large objects", f"{restored.count} large objects were restored, the manifest says {recorded.count}")]
    if recorded.checksum is not None and restored.checksum is not None and restored.checksum != recorded.checksum:
        return [("large objects", "the restored large objects' checksum (OIDs and contents) differs from the manifest")]
    return []


def _view_problems(
    recorded: list[MaterializedViewRecord], restored: list[MaterializedViewInfo]
) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    found = {view.name: view for view in restored}
    for view in recorded:
        what = f"materialized view {view.name}"
        there = found.get(view.name)
        if there is None:
            problems.append((what, f"{what} is in the manifest but was not restored"))
        elif there.populated != view.populated and view.populated:
            problems.append(
                (what, f"{what} is not populated after the restore (no REFRESH), the manifest says it held rows")
            )
        elif there.populated != view.populated:
            problems.append(
                (what, f"{what} holds rows after the restore, but was not populated (WITH NO DATA) in the snapshot")
            )
        elif (there.rows, there.checksum) != (view.rows, view.checksum):
            problems.append(
                (
                    what,
                    f"{what} has {counted(there.rows, 'row')} after the restore ({view.rows} in the manifest): "
                    f"its {VIEW_ROWS_DIFFER}",
                )
            )
    return problems


def refreshed_views_excused(
    adapter: DatabaseAdapter, target: ServerAccess, problems: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """`problems` without the materialized views that hold exactly what their query gives over
    the restored tables. pg_dump stores a materialized view's query, not its rows, and the
    restore refreshes it: one not refreshed since its tables last changed (a nightly REFRESH)
    held other rows at snapshot time, and the restore is right to differ. Asked only for views
    whose rows differ, so a fresh one costs nothing more."""
    check = getattr(adapter, "materialized_views_as_defined", None)
    names = [
        what.removeprefix("materialized view ") for what, problem in problems if problem.endswith(VIEW_ROWS_DIFFER)
    ]
    if check is None or not names:
        return problems
    as_defined: set[str] = check(target.url, target.password, names)
    return [
        (what, problem)
        for what, problem in problems
        if not (problem.endswith(VIEW_ROWS_DIFFER) and what.removeprefix("materialized view ") in as_defined)
    ]


def _history_differs(recorded: TableRecord, found: TableInfo) -> bool:
    """Whether a system-versioned table's restored history differs from the one the snapshot
    recorded. Only a snapshot whose dump holds the history records one; a restore fingerprinted
    where the history cannot be read back (an older client) says nothing about it."""
    if recorded.history_checksum is None or found.history_checksum is None:
        return False
    return (found.history_rows, found.history_checksum) != (recorded.history_rows, recorded.history_checksum)


LIKELY_CAUSE = "likely cause:"


def with_likely_causes(
    adapter: DatabaseAdapter, target: ServerAccess, problems: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """`problems`, a differing checksum followed by its likely cause when the adapter knows one
    that is not damage (MariaDB: FLOAT columns, which mariadb-dump writes rounded)."""
    likely_causes = getattr(adapter, "likely_causes", None)
    tables = sorted({table for table, problem in problems if problem.endswith(CHECKSUM_DIFFERS)})
    if likely_causes is None or not tables:
        return problems
    try:
        causes: dict[str, str] = likely_causes(target.url, target.password, tables)
    except LockstepError:
        return problems  # only an explanation: the problems stand without it
    return [
        (table, f"{problem} ({LIKELY_CAUSE} {causes[table]})" if table in causes else problem)
        if problem.endswith(CHECKSUM_DIFFERS)
        else (table, problem)
        for table, problem in problems
    ]


# --- databases ---------------------------------------------------------------------------


def database_record(manifest: Manifest, snapshot: Snapshot, name: str) -> DatabaseRecord:
    record = manifest.databases.get(name)
    if record is None:
        known = ", ".join(manifest.databases) or "none"
        # `latest` right after a restore of one database is its pre-restore snapshot, of that one only.
        raise NotFound(
            f"snapshot {snapshot.short_id} has no database {name!r} (it has: {known})",
            "give the ID of a snapshot that holds it (`lockstep snapshot list`); a pre-restore snapshot "
            "holds only the databases its restore replaced",
        )
    return record


def restore_database(
    repository: Repository,
    snapshot: Snapshot,
    manifest: Manifest,
    name: str,
    target: ServerAccess,
    replace: bool = False,
) -> RestoredDatabase:
    """Restore database `name` of the snapshot into `target` and check it against the manifest.

    A missing target is created. A target holding data is refused unless `replace`, which
    empties it first. Raises SourceError when the restore fails and IntegrityError when the
    restored data does not match the manifest; both name the database.
    """
    started = time.monotonic()
    record = database_record(manifest, snapshot, name)
    adapter = adapter_for(target.url)
    shown = redact_url(target.url)
    if adapter.engine != record.engine:
        raise UsageError(f"database {name} is a {record.engine} dump; {shown} is {adapter.engine}")
    node = find_node(repository, snapshot, record.path)
    state = target_state(adapter, target)
    if state == "non-empty":
        if not replace:
            raise UsageError(f"the target database {shown} is not empty", "pass --yes to replace what it holds")
        _check_restore(adapter, repository, node, target)
        empty_database(adapter, target)
    try:
        with dump_source(repository, node, adapter) as source:
            info = restore_and_inspect(
                adapter, target.url, target.password, source, state == "missing", record.checksum_algorithm
            )
    except SourceError as error:
        raise SourceError(f"database {name}: restoring into {shown} failed: {error.message}", error.hint) from error
    problems = compare_with_manifest(record.tables, info, checksums_comparable(record, adapter), record.inspected)
    problems += refreshed_views_excused(adapter, target, compare_beyond_tables(record, info))
    if problems:
        explained = with_likely_causes(adapter, target, problems)
        raise IntegrityError(
            f"database {name} ({shown}) does not match the snapshot after the restore: "
            + "; ".join(problem for _, problem in explained[:5]),
            "see the likely cause given for the table; otherwise the dump or the restore is damaged: "
            "run `lockstep snapshot verify --level restore`"
            if explained != problems
            else "the dump or the restore is damaged: run `lockstep snapshot verify --level restore`",
        )
    return RestoredDatabase(
        name=name,
        target=shown,
        tables=len(info.tables),
        rows=sum(table.rows for table in info.tables),
        seconds=time.monotonic() - started,
        left_out=info.left_out,
    )


def _check_restore(adapter: DatabaseAdapter, repository: Repository, node: Node, target: ServerAccess) -> None:
    """What the adapter can refuse from the head of the dump (PostgreSQL: a policy naming a role
    the target server lacks), refused before the target is emptied: refused after, a target
    without a pre-restore snapshot (--to --yes) would have lost what it held."""
    check = getattr(adapter, "check_restore", None)
    if check is None:
        return
    with io.BufferedReader(SnapshotFileReader(repository, node), buffer_size=1024 * 1024) as stream:
        check(target.url, target.password, stream)


def restore_tables(
    repository: Repository,
    snapshot: Snapshot,
    manifest: Manifest,
    name: str,
    target: ServerAccess,
    tables: list[str],
) -> RestoredDatabase:
    """Restore the tables `tables` (as the user named them) of database `name` into `target`, a
    missing or empty database, and check them against the manifest as restore_database checks a
    whole database. Each table comes with its rows, indexes, own constraints and what else
    belongs to it (a PostgreSQL partitioned table with its partitions, which the check covers);
    a foreign key to a table not restored is left out and named in the result."""
    started = time.monotonic()
    record = database_record(manifest, snapshot, name)
    adapter = adapter_for(target.url)
    shown = redact_url(target.url)
    if adapter.engine != record.engine:
        raise UsageError(f"database {name} is a {record.engine} dump; {shown} is {adapter.engine}")
    if not isinstance(adapter, TableRestoring):
        raise UsageError(
            f"--table is not supported for {_ENGINE_NAMES.get(adapter.engine, adapter.engine)} yet",
            f"restore the whole database with --database {name} --to URL and copy the table from there",
        )
    chosen = resolve_tables(record, snapshot, name, tables, unrecorded=record.engine == "postgresql")
    node = find_node(repository, snapshot, record.path)
    state = target_state(adapter, target)
    if state == "non-empty":
        raise UsageError(
            f"the target database {shown} is not empty: --table restores only into a missing or empty database",
            "give --to a database that does not exist yet (lockstep creates it)",
        )
    try:
        with dump_source(repository, node, adapter) as source:
            restored = adapter.restore_tables(target.url, target.password, source, state == "missing", chosen)
    except TableNotInDump as error:
        raise _missing_table([table.name for table in record.tables], snapshot, name, error.name) from None
    except SourceError as error:
        raise SourceError(f"database {name}: restoring into {shown} failed: {error.message}", error.hint) from error
    info = inspect_as(adapter, target.url, target.password, record.checksum_algorithm)
    wanted = {*chosen, *restored.partitions}
    recorded = [table for table in record.tables if table.name in wanted]
    problems = compare_with_manifest(recorded, info, checksums_comparable(record, adapter), record.inspected)
    if record.sequences is not None and info.sequences is not None and record.inspected != "after-dump":
        # Only the sequences that came with the tables (those of their serial and identity columns).
        there = {sequence.name for sequence in info.sequences}
        problems += _sequence_problems([seq for seq in record.sequences if seq.name in there], info.sequences)
    if problems:
        explained = with_likely_causes(adapter, target, problems)
        raise IntegrityError(
            f"database {name} ({shown}): the restored tables do not match the snapshot: "
            + "; ".join(problem for _, problem in explained[:5]),
            "the dump or the restore is damaged: run `lockstep snapshot verify --level restore`",
        )
    found = [table for table in info.tables if table.name in wanted]
    return RestoredDatabase(
        name=name,
        target=shown,
        tables=len(found),
        rows=sum(table.rows for table in found),
        seconds=time.monotonic() - started,
        only_tables=chosen,
        left_out=restored.left_out,
    )


_ENGINE_NAMES = {"mysql": "MySQL/MariaDB", "postgresql": "PostgreSQL", "sqlite": "SQLite"}
# Up to this many tables, a table the snapshot lacks is answered with all of them.
_TABLES_LISTED = 20


def resolve_tables(
    record: DatabaseRecord, snapshot: Snapshot, database: str, asked: list[str], unrecorded: bool = False
) -> list[str]:
    """The manifest's names of the tables the user asked for, in the order asked, each once.

    PostgreSQL names are `table` in the public schema and `schema.table` elsewhere (quoted where
    a part holds a dot); `public.orders` is `orders`, and a bare `orders` is the table of that
    name in whichever schema holds one, refused when several do. A table the snapshot lacks is
    NotFound, naming the tables it has (or the closest ones); with `unrecorded` (PostgreSQL,
    whose manifest records a partitioned table's partitions, not the table) a PostgreSQL name
    the manifest lacks is returned as the manifest would write it, for the dump to settle
    (the adapter raises TableNotInDump if it lacks it too)."""
    recorded = [table.name for table in record.tables]
    chosen: list[str] = []
    for given in asked:
        name = _resolve_table(recorded, record.engine, snapshot, database, given, unrecorded)
        if name not in chosen:
            chosen.append(name)
    return chosen


def _missing_table(recorded: list[str], snapshot: Snapshot, database: str, given: str) -> NotFound:
    """The error for a table the snapshot lacks, naming the tables it has (or the closest ones)."""
    if len(recorded) <= _TABLES_LISTED:
        has = f"it has: {', '.join(recorded) or 'no table'}"
    else:
        closest = difflib.get_close_matches(given, recorded, n=5, cutoff=0.5)
        has = f"the closest it has: {', '.join(closest)}" if closest else f"it has {len(recorded)} tables"
    return NotFound(
        f"snapshot {snapshot.short_id}: database {database} has no table {given!r} ({has})",
        f"see them with `lockstep snapshot show {snapshot.short_id}`",
    )


def _resolve_table(
    recorded: list[str], engine: str, snapshot: Snapshot, database: str, given: str, unrecorded: bool
) -> str:
    parts = _name_parts(given)
    if engine != "postgresql" or parts is None:
        if given in recorded:
            return given
    else:
        from lockstep.databases.postgresql import table_name

        if len(parts) == 2 and table_name(*parts) in recorded:
            return table_name(*parts)
        if len(parts) == 1:
            candidates = [name for name in recorded if (found := _name_parts(name)) and found[-1] == parts[0]]
            if len(candidates) == 1:
                return candidates[0]
            if candidates:
                shown = sorted(_shown_table(name) for name in candidates)
                raise UsageError(
                    f"database {database}: table {given!r} is in several schemas: {', '.join(shown)}",
                    f"name one with its schema, e.g. --table {shown[0]}",
                )
        if unrecorded:
            return table_name(*parts) if len(parts) == 2 else table_name("public", parts[0])
    raise _missing_table(recorded, snapshot, database, given)


def _shown_table(name: str) -> str:
    """A PostgreSQL manifest name with its schema: `orders` is `public.orders`."""
    parts = _name_parts(name)
    return f"public.{name}" if parts is not None and len(parts) == 1 else name


def _name_parts(name: str) -> tuple[str, ...] | None:
    """`schema.table` or `table` split as SQL reads it (double quotes around a part with a dot,
    "" for a quote inside); None when it is not such a name."""
    parts: list[str] = []
    position = 0
    while True:
        if name.startswith('"', position):
            end = position + 1
            text = ""
            while True:
                quote = name.find('"', end)
                if quote < 0:
                    return None
                text += name[end:quote]
                if name.startswith('""', quote):
                    text += '"'
                    end = quote + 2
                    continue
                position = quote + 1
                break
            parts.append(text)
        else:
            dot = name.find(".", position)
            part = name[position:] if dot < 0 else name[position:dot]
            if not part or '"' in part:
                return None
            parts.append(part)
            position = len(name) if dot < 0 else dot
        if position == len(name):
            return tuple(parts) if len(parts) <= 2 else None
        if name[position] != ".":
            return None
        position += 1


def target_state(adapter: DatabaseAdapter, target: ServerAccess) -> TargetState:
    """Whether the target database exists, and whether it holds any table, view or sequence."""
    if adapter.engine == "sqlite":
        from lockstep.databases.sqlite import database_path

        path = database_path(target.url)
        if not path.exists():
            return "missing"
        if path.stat().st_size == 0:
            return "empty"
        return "non-empty" if adapter.summarize(target.url, target.password).tables else _sqlite_objects(path)
    location = ServerLocation.parse(target.url)
    if adapter.engine == "mysql":
        from lockstep.databases.mysql import _query, _string

        database = _string(location.database)
        exists = _query(
            location,
            target.password,
            f"SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = {database}",
            database="",  # asked without selecting the target, which may not exist
        )
        if exists[0][0] == "0":
            return "missing"
        objects = _query(
            location,
            target.password,
            f"SELECT (SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = {database})"
            f" + (SELECT COUNT(*) FROM information_schema.routines WHERE routine_schema = {database})",
            database="",
        )
        return "empty" if objects[0][0] == "0" else "non-empty"
    if adapter.engine == "postgresql":
        from lockstep.databases.postgresql import MAINTENANCE_DATABASE, _connect

        with _connect(location, target.password, MAINTENANCE_DATABASE, autocommit=True) as connection:
            row = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (location.database,)).fetchone()
        if row is None:
            return "missing"
        with _connect(location, target.password, location.database, autocommit=True) as connection:
            count = connection.execute(_POSTGRESQL_OBJECTS).fetchone()
        return "empty" if count is None or int(count[0]) == 0 else "non-empty"
    raise UsageError(f"restoring {adapter.engine} databases is not supported")


def _sqlite_objects(path: Path) -> TargetState:
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as connection:
        row = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return "empty" if row is None or row[0] == 0 else "non-empty"


def empty_database(adapter: DatabaseAdapter, target: ServerAccess) -> None:
    """Remove everything a dump would bring back, keeping the database itself (its owner, grants
    and settings). SQLite needs nothing: its restore replaces the content in one transaction."""
    if adapter.engine == "sqlite":
        return
    location = ServerLocation.parse(target.url)
    if adapter.engine == "mysql":
        _empty_mysql_database(location, target.password)
        return
    if adapter.engine == "postgresql":
        import psycopg
        from psycopg import sql

        from lockstep.databases.postgresql import _connect

        with _connect(location, target.password, location.database) as connection:
            try:
                connection.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
                schemas = [
                    str(row[0])
                    for row in connection.execute(
                        "SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema')"
                        " AND nspname NOT LIKE 'pg\\_%'"
                    ).fetchall()
                ]
                # pg_dump leaves out the public schema's default owner and grants, so a plain
                # CREATE SCHEMA public (owned by whoever runs the restore, no USAGE for anyone
                # else) locked the application's role out: it is re-created as it was.
                public = connection.execute(_PUBLIC_SCHEMA_AS_IT_IS).fetchall()
                for schema in schemas:
                    connection.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
                connection.execute("CREATE SCHEMA public")
                for (statement,) in public:
                    connection.execute(str(statement))
                connection.execute("SELECT lo_unlink(oid) FROM pg_largeobject_metadata")
                # Publications belong to the database, not a schema; the dump re-creates them.
                for (publication,) in connection.execute("SELECT pubname FROM pg_publication").fetchall():
                    connection.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(str(publication))))
                connection.commit()
            except psycopg.Error as error:
                raise SourceError(
                    f"cannot empty {location.display()} before the restore: {str(error).strip()}",
                    "stop the application that uses it (it holds locks), then try again",
                ) from None
        return
    raise UsageError(f"restoring {adapter.engine} databases is not supported")


DROP_BATCH_BYTES = 64 * 1024
# What a dump would bring back and pg_restore could not create over: relations, but also types,
# functions, schemas besides public and publications (a restore killed during its schema step
# leaves some of those and no table). Extensions' own objects do not count.
_POSTGRESQL_OBJECTS = """
WITH user_schemas AS (
    SELECT oid, nspname FROM pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg\\_%'
), extension_members AS (
    SELECT objid FROM pg_depend WHERE deptype = 'e'
)
SELECT (SELECT count(*) FROM pg_class c JOIN user_schemas n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND c.oid NOT IN (SELECT objid FROM extension_members))
     + (SELECT count(*) FROM pg_type t JOIN user_schemas n ON n.oid = t.typnamespace
        WHERE t.typcategory <> 'A' AND t.oid NOT IN (SELECT objid FROM extension_members)
          AND (t.typtype <> 'c' OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c'))
     + (SELECT count(*) FROM pg_proc p JOIN user_schemas n ON n.oid = p.pronamespace
        WHERE p.oid NOT IN (SELECT objid FROM extension_members))
     + (SELECT count(*) FROM user_schemas WHERE nspname <> 'public')
     + (SELECT count(*) FROM pg_publication)
"""
# The statements that give a new public schema the current one's owner, grants and comment.
_PUBLIC_SCHEMA_AS_IT_IS = """
SELECT statement FROM (
    SELECT 1, format('ALTER SCHEMA public OWNER TO %I', pg_get_userbyid(n.nspowner))
    FROM pg_namespace n WHERE n.nspname = 'public'
    UNION ALL
    SELECT 2, format('GRANT %s ON SCHEMA public TO %s%s', a.privilege_type,
                     CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
                     CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
    FROM pg_namespace n, aclexplode(n.nspacl) a WHERE n.nspname = 'public'
    UNION ALL
    SELECT 3, format('COMMENT ON SCHEMA public IS %L', obj_description(n.oid, 'pg_namespace'))
    FROM pg_namespace n WHERE n.nspname = 'public' AND obj_description(n.oid, 'pg_namespace') IS NOT NULL
) AS steps(position, statement) ORDER BY position
"""


def _empty_mysql_database(location: ServerLocation, password: str | None) -> None:
    """Drop what the database holds, object by object, and keep the database: dropping and
    re-creating it would lose it for good when the user may drop but not create databases (a
    `--to` target has no pre-restore snapshot), and it would drop its character set too."""
    from lockstep.databases.mysql import _identifier, _query, _string

    _check_can_create_tables(location, password)
    database = _string(location.database)
    found = _query(
        location,
        password,
        f"SELECT 'TABLE', table_type, table_name FROM information_schema.tables WHERE table_schema = {database}"
        f" UNION ALL SELECT 'ROUTINE', routine_type, routine_name FROM information_schema.routines"
        f" WHERE routine_schema = {database}"
        f" UNION ALL SELECT 'EVENT', 'EVENT', event_name FROM information_schema.events"
        f" WHERE event_schema = {database}",
    )
    drops: dict[str, list[str]] = {
        "VIEW": [],
        "SEQUENCE": [],
        "TABLE": [],
        "PROCEDURE": [],
        "FUNCTION": [],
        "EVENT": [],
    }
    for kind, subtype, name in found:
        if kind == "TABLE":
            drops["VIEW" if subtype == "VIEW" else "SEQUENCE" if subtype == "SEQUENCE" else "TABLE"].append(name)
        elif subtype in drops:
            drops[subtype].append(name)
    statements = [f"DROP {kind} IF EXISTS {_identifier(name)}" for kind, names in drops.items() for name in names]
    # In batches: the client takes the statements as one argument, which Linux caps at 128 KiB.
    batches: list[list[str]] = [[]]
    size = 0
    for statement in statements:
        if batches[-1] and size + len(statement) > DROP_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(statement)
        size += len(statement)
    for batch in batches:
        if batch:
            _query(location, password, ";\n".join(["SET FOREIGN_KEY_CHECKS = 0", *batch]))


def _check_can_create_tables(location: ServerLocation, password: str | None) -> None:
    """Refuse before anything is dropped when the user may not create tables there: the restore
    could not bring anything back."""
    from lockstep.databases.mysql import _query

    probe = f"lockstep_probe_{secrets.token_hex(6)}"
    try:
        _query(location, password, f"CREATE TABLE {probe} (id INT PRIMARY KEY); DROP TABLE {probe}")
    except SourceError as error:
        raise SourceError(
            f"cannot restore into {location.display()}: creating a table there failed, so nothing was"
            f" dropped ({error.message})",
            "grant the user ALL on that database (a restore re-creates its tables, views, routines"
            " and events), then try again",
        ) from None


# --- code and files ----------------------------------------------------------------------


@dataclass(frozen=True)
class RestoredCode:
    """What a code restore wrote (for the report) and what it could not restore as stored: one
    line per distinct problem (no owner, no extended attribute, a skipped socket), so the user
    restoring learns what differs from the snapshot."""

    description: str
    warnings: list[str] = field(default_factory=list)


def restore_code(
    repository: Repository, snapshot: Snapshot, manifest: Manifest, work_tree: Path | None, target: Path
) -> RestoredCode:
    """Write the snapshot's code into `target`, a new or empty directory; returns what was
    written and the restore's warnings, for the report.

    git: the recorded commit as a tree (`git archive` from the project's repository), plus the
    stored uncommitted diff applied on top; a release directory: the stored tree. On a failure
    what was written is removed again, so `target` is left as it was found.
    """
    code = manifest.code
    if code is None:
        raise NotFound(f"snapshot {snapshot.short_id} records no code")
    check_code_target(target)
    created = not target.exists()
    _make_code_directory(target)
    try:
        return _write_code(repository, snapshot, code, work_tree, target)
    except BaseException:
        _remove_written(target, created)
        raise


def check_code_target(target: Path) -> None:
    """Refuse a code target that is not a new or empty directory (before anything is restored).

    Extracting over existing files overwrote them without a word, and a file where the tree has
    a directory stopped the extraction half-way with NotADirectoryError."""
    if not target.exists():
        if target.is_symlink():
            raise UsageError(f"the code directory {target} is a dangling symlink", "give a new or empty directory")
        return
    if not target.is_dir():
        raise UsageError(f"the code directory {target} is not a directory", "give a new or empty directory")
    with os.scandir(target) as entries:
        if next(entries, None) is not None:
            raise UsageError(
                f"the code directory {target} is not empty: restoring into it would overwrite its files",
                "give a new or empty directory",
            )


def _make_code_directory(target: Path) -> None:
    try:
        target.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        raise UsageError(
            f"cannot create the code directory {target}: {error.filename or target} is a file, not a directory",
            "give a new or empty directory",
        ) from error


def _remove_written(target: Path, created: bool) -> None:
    """Undo a failed code restore: `target` was new (remove it) or empty (empty it again)."""
    if created:
        shutil.rmtree(target, ignore_errors=True)
        return
    for entry in list(target.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _write_code(
    repository: Repository, snapshot: Snapshot, code: CodeRecord, work_tree: Path | None, target: Path
) -> RestoredCode:
    """The code into an existing empty `target`: the stored release tree, or the commit plus its diff."""
    if code.commit is None:
        return _write_release(repository, snapshot, code, target)
    return RestoredCode(_write_commit(repository, snapshot, code, work_tree, target))


def _write_release(repository: Repository, snapshot: Snapshot, code: CodeRecord, target: Path) -> RestoredCode:
    node = find_node(repository, snapshot, code.path or "/code/release")
    if node.subtree is None:
        raise IntegrityError(f"{code.path} in snapshot {snapshot.short_id} is not a directory")
    subtree = Snapshot(time=snapshot.time, tree=node.subtree, paths=[str(target)], id=snapshot.id)
    warnings = Restorer(repository, subtree, target).run().warnings
    written = f"the release directory of snapshot {snapshot.short_id}"
    if code.tree_sha256 is None:
        return RestoredCode(
            f"{written} (not checked: its manifest records no tree_sha256)", summarise_warnings(warnings)
        )
    skipped = _check_restored_release(repository, snapshot, code, node.subtree, target)
    if skipped:
        # The description names the skipped devices already, with what that means for the check.
        others = [warning for warning in warnings if warning.problem != ONLY_ROOT_CREATES_DEVICES]
        note = _skipped_devices_note(skipped)
        return RestoredCode(f"{written} (checked against its tree_sha256; {note})", summarise_warnings(others))
    return RestoredCode(f"{written} (checked against its tree_sha256)", summarise_warnings(warnings))


def _write_commit(
    repository: Repository, snapshot: Snapshot, code: CodeRecord, work_tree: Path | None, target: Path
) -> str:
    """The recorded commit (`git archive`) plus the stored uncommitted diff."""
    assert code.commit is not None
    if work_tree is None:
        raise UsageError("the code is a git commit, but no git work tree is configured", "set [code] path")
    try:
        run_capture(git_command(work_tree, "cat-file", "-e", f"{code.commit}^{{commit}}"), timeout=GIT_TIMEOUT_SECONDS)
    except SourceError as error:
        raise NotFound(
            f"commit {code.commit[:12]} is not in the git repository at {work_tree}",
            "fetch it (git fetch --all) and try again",
        ) from error
    archive = StreamingProcess(git_command(work_tree, "archive", "--format=tar", code.commit))
    try:
        with tarfile.open(fileobj=archive.stdout, mode="r|") as tar:
            tar.extractall(target, filter="data")
    except BaseException:
        archive.kill()
        raise
    archive.finish()
    written = f"commit {code.commit[:12]}"
    if code.dirty and code.path:
        _apply_diff(repository, snapshot, code, target)
        written += " with its uncommitted changes"
        if code.sha256 is None:
            written += " (the diff not checked: its manifest records no SHA-256)"
    return written


def _check_restored_release(
    repository: Repository, snapshot: Snapshot, code: CodeRecord, tree: bytes, target: Path
) -> list[bytes]:
    """The restored tree, read back from disk, against the manifest's tree_sha256; a mismatch
    names the entries that differ from the listing stored beside the tree.

    Only root can create device nodes: restored by another user (as restic does) they are
    skipped with a warning, and the check would fail on every release that holds one. Then
    their entries are taken from the stored tree (`tree`), everything else from disk; the
    paths of those devices are returned, for the report to name."""
    assert code.tree_sha256 is not None
    try:
        entries = list(entries_on_disk(target))
    except OSError as error:
        raise IntegrityError(
            f"the restored release directory cannot be read back to check it: {error.filename}: {error.strerror}",
            "restore it into a directory this user can read",
        ) from error
    listing = listing_bytes(entries)
    if listing_sha256(listing) == code.tree_sha256:
        return []
    skipped: list[ListedEntry] = []
    if os.geteuid() != 0:
        on_disk = {entry.path for entry in entries}
        skipped = [
            entry
            for entry, _ in tree_entries(repository, tree)
            if entry.type in DEVICE_TYPES and entry.path not in on_disk
        ]
        listing = listing_bytes([*entries, *skipped])
        if skipped and listing_sha256(listing) == code.tree_sha256:
            return [entry.path for entry in skipped]
    stored_listing = None
    if code.listing is not None:
        with contextlib.suppress(LockstepError):
            buffer = io.BytesIO()
            dump_file(repository, find_node(repository, snapshot, code.listing), buffer)
            stored_listing = buffer.getvalue()
    where = f"the release directory restored into {target}"
    problem = mismatch_problem(where, code.tree_sha256, stored_listing, listing)
    raise IntegrityError(
        f"snapshot {snapshot.short_id}: {problem}; it was removed again",
        "run `lockstep snapshot verify --level data` on the snapshot and `lockstep repo check --read-data`",
    )


def _skipped_devices_note(paths: list[bytes], shown: int = 5) -> str:
    names = ", ".join(path.decode("utf-8", "backslashreplace") for path in paths[:shown])
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return f"device nodes not restored, since only root can create them, and so not checked: {names}{more}"


def _apply_diff(repository: Repository, snapshot: Snapshot, code: CodeRecord, target: Path) -> None:
    assert code.path is not None
    node = find_node(repository, snapshot, code.path)
    if not node.size:
        return
    descriptor, name = tempfile.mkstemp(prefix="lockstep-", suffix=".diff")
    try:
        digest = _HashingWriter()
        with os.fdopen(descriptor, "wb") as output:
            digest.output = output
            dump_file(repository, node, digest)  # type: ignore[arg-type]
        if code.sha256 is not None and digest.hexdigest() != code.sha256:
            raise IntegrityError(
                f"the uncommitted diff {code.path} in snapshot {snapshot.short_id} has SHA-256 "
                f"{digest.hexdigest()[:16]}…, the manifest says {code.sha256[:16]}…; it was not applied",
                "run `lockstep snapshot verify --level data` on the snapshot and `lockstep repo check --read-data`",
            )
        # The ceiling keeps git from finding a repository above `target` and applying there.
        command = Command(
            ("git", "apply", "--binary", "--whitespace=nowarn", name),
            env={"GIT_CEILING_DIRECTORIES": str(target.resolve().parent)},
            cwd=str(target),
        )
        try:
            run_capture(command, timeout=GIT_TIMEOUT_SECONDS)
        except SourceError as error:
            raise SourceError(f"the stored uncommitted diff does not apply in {target}: {error.message}") from error
    finally:
        Path(name).unlink(missing_ok=True)


@dataclass(frozen=True)
class OverwrittenFile:
    """A file under the --files directory that the restore replaces with other content."""

    record: FileRecord
    relative: str  # its name under the directory, the only thing ever shown
    path: Path  # where it is now, under the resolved directory


def overwritten_files(manifest: Manifest, snapshot: Snapshot, target: Path) -> list[OverwrittenFile]:
    """The snapshot's files that already exist under `target` with other content: a restore
    would discard them, so they are shown (by name) and saved before it writes."""
    if not target.is_dir():
        return []
    root = target.resolve()
    found: list[OverwrittenFile] = []
    for record in manifest.files:
        relative = _file_relative(record)
        destination = _file_destination(record, target, root, snapshot)
        if not destination.is_file():
            continue
        if _file_sha256(destination) != record.sha256:
            found.append(OverwrittenFile(record, relative, root / relative))
    return found


def _file_relative(record: FileRecord) -> str:
    folder = "/files/config/" if record.kind == "config" else "/files/secrets/"
    return record.path.removeprefix(folder)


def _file_destination(record: FileRecord, target: Path, root: Path, snapshot: Snapshot) -> Path:
    destination = (target / _file_relative(record)).resolve()
    if not destination.is_relative_to(root) or destination == root:
        raise IntegrityError(f"{record.path} in snapshot {snapshot.short_id} would be written outside {target}")
    return destination


def _file_sha256(path: Path) -> str | None:
    """The file's SHA-256; None when it cannot be read (then it counts as different)."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def restore_files(repository: Repository, snapshot: Snapshot, manifest: Manifest, target: Path) -> list[FileRecord]:
    """Write the config and secret files under `target` at their paths relative to the project
    (secret files with mode 0600), each checked against the manifest's SHA-256."""
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    for record in manifest.files:
        destination = _file_destination(record, target, root, snapshot)
        node = find_node(repository, snapshot, record.path)
        mode = 0o600 if record.kind == "secret" else (unix_permissions(node.mode) or 0o644)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.unlink(missing_ok=True)
        descriptor = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        digest = _HashingWriter()
        try:
            with os.fdopen(descriptor, "wb") as output:
                os.fchmod(output.fileno(), mode)
                digest.output = output
                dump_file(repository, node, digest)  # type: ignore[arg-type]
        except BaseException:
            destination.unlink(missing_ok=True)
            raise
        if digest.hexdigest() != record.sha256:
            destination.unlink(missing_ok=True)
            raise IntegrityError(f"{record.path} does not match the manifest's SHA-256; it was not written")
    return list(manifest.files)


class _HashingWriter:
    """Passes writes through and hashes them."""

    def __init__(self) -> None:
        self.output: IO[bytes] | None = None
        self._digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        assert self.output is not None
        self._digest.update(data)
        return self.output.write(data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


__all__ = [
    "OverwrittenFile",
    "RestoredCode",
    "RestoredDatabase",
    "ServerAccess",
    "check_code_target",
    "checksums_comparable",
    "compare_beyond_tables",
    "compare_with_manifest",
    "dump_source",
    "overwritten_files",
    "refreshed_views_excused",
    "restore_and_inspect",
    "restore_code",
    "restore_database",
    "restore_files",
    "restore_tables",
    "target_state",
    "with_likely_causes",
]
