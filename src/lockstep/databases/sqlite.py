"""SQLite (`sqlite:///relative.db`, `sqlite:////absolute.db`, as SQLAlchemy spells them).

The dump of a SQLite database is the database file itself, copied with SQLite's online backup
API into a temporary file and streamed from there. The backup runs in one step, under one read
transaction, so the copy is consistent while the application keeps writing (in WAL mode
writers go on; in rollback-journal mode they wait for the copy). A plain file copy would not
be: it can catch a page half-written, or miss what still sits in the `-wal` file. A write lock
held by another process (`BEGIN EXCLUSIVE`) is waited out for BACKUP_LOCK_TIMEOUT_SECONDS, then
the backup fails and names the file.

A restore first writes the dump to a file next to the target and checks it. An existing
database is then overwritten through the backup API, page by page in one write transaction:
a connection the application keeps open (a pool, a warm slot) sees the old database or the new
one, never half of one, and its next writes go into the restored data. Renaming the file into
place would leave such a connection on the replaced file, writing where nobody reads again.
Where SQLite cannot copy into the target (it is no database, or a WAL database with another
page size) and for a new database, the checked file is renamed into place, keeping the old
file's mode and owner; a symlinked database is restored into the file the link points to.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import stat
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO
from urllib.parse import parse_qsl, unquote

from lockstep.databases.base import (
    MIGRATION_TABLES,
    SCRATCH_PREFIX,
    STALE_SCRATCH_SECONDS,
    DatabaseAdapter,
    DatabaseInfo,
    DatabaseSummary,
    DumpFormat,
    RestoredTables,
    TableInfo,
    redact_url,
    require_scratch,
)
from lockstep.databases.table_patterns import (
    ROWS_LEFT_DANGLING,
    TableSelection,
    references_to_emptied,
    select_tables,
)
from lockstep.databases.url_options import check_url_options
from lockstep.errors import SourceError, UsageError

HEADER = b"SQLite format 3\x00"
# A backup waits this long for another process's write lock before it gives up.
BACKUP_LOCK_TIMEOUT_SECONDS = 60.0
# Each backup step waits this long in SQLite's busy handler (C code, where no signal handler
# runs) before the progress callback gets a turn; between steps Python sleeps 0.25 s.
BACKUP_STEP_BUSY_SECONDS = 0.2
COMPANION_SUFFIXES = ("-wal", "-shm", "-journal")


def remove_companions(path: Path) -> None:
    """Delete the -wal/-shm/-journal next to a database file (opening a WAL-mode copy, even
    read-only, creates -wal and -shm that closing it leaves behind)."""
    for suffix in COMPANION_SUFFIXES:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def remove_database_file(path: Path) -> None:
    """Delete a database file and its companions."""
    path.unlink(missing_ok=True)
    remove_companions(path)


def _remove_stale_scratch(folder: Path) -> None:
    """Remove the scratch files a killed verification or diff left in `folder`: those untouched
    for STALE_SCRATCH_SECONDS (a running test-restore writes to its file)."""
    cutoff = time.time() - STALE_SCRATCH_SECONDS
    for path in folder.glob(f"{SCRATCH_PREFIX}*.sqlite3"):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                remove_database_file(path)


class _LockedTooLong(Exception):
    """Raised from the backup's progress callback to give up on a locked database."""


class _LockWait:
    """The backup's progress callback: Python's `Connection.backup()` retries SQLITE_BUSY forever
    (a writer's `BEGIN EXCLUSIVE` held for hours hangs the snapshot). Being Python code run
    between steps, it also lets signal handlers run, so SIGTERM and Ctrl-C stop a waiting backup."""

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline

    def __call__(self, status: int, remaining: int, total: int) -> None:
        if status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) and time.monotonic() > self._deadline:
            raise _LockedTooLong


class FileDump:
    """A finished backup copy, streamed from a temporary file that `finish()` removes."""

    # consistent_info() reads the copy itself: a schema-only copy's fingerprint needs no change.
    fingerprints_stored_copy = True

    def __init__(self, path: Path) -> None:
        self._path = path
        self.stdout: IO[bytes] = path.open("rb")
        self.rows_excluded: tuple[str, ...] = ()  # tables whose rows were deleted from the copy
        self.warnings: tuple[str, ...] = ()  # exclude_table_data: patterns matching nothing, foreign keys

    def consistent_info(self) -> DatabaseInfo:
        """Counts and checksums of the copy itself: exactly what the snapshot stores."""
        return ADAPTER.inspect(f"sqlite:///{self._path}", None)

    def finish(self) -> None:
        self.stdout.close()
        remove_database_file(self._path)  # a WAL-mode copy, once inspected, has -wal and -shm

    def kill(self) -> None:
        self.finish()


class SqliteAdapter:
    """The `sqlite://` adapter; the password is ignored (SQLite has none)."""

    engine = "sqlite"
    dump_format = DumpFormat(name="sqlite-file", extension=".sqlite3", seekable_restore_is_faster=False)

    empty_table_checksum = hashlib.sha256().hexdigest()

    def dump(
        self, url: str, password: str | None, schema_only: bool = False, exclude_table_data: Sequence[str] = ()
    ) -> FileDump:
        """The online backup into a temporary file; with `schema_only` every table's rows are
        then deleted from the copy (triggers set aside meanwhile) and it is vacuumed, with
        `exclude_table_data` those of the tables the patterns match."""
        path = database_path(url)
        descriptor, name = tempfile.mkstemp(prefix="lockstep-sqlite-", suffix=".sqlite3")
        os.close(descriptor)
        copy = Path(name)
        try:
            with (
                contextlib.closing(_open_existing(path, timeout=BACKUP_STEP_BUSY_SECONDS)) as source,
                contextlib.closing(sqlite3.connect(copy)) as target,
            ):
                # pages=-1: the whole database in one step, one snapshot
                source.backup(target, progress=_LockWait(time.monotonic() + BACKUP_LOCK_TIMEOUT_SECONDS))
            selection = TableSelection((), ())
            references: tuple[str, ...] = ()
            if schema_only:
                _delete_rows(copy)  # the copy's connection closed: VACUUM needs it alone
            elif exclude_table_data:
                selection, references = _exclude_rows(copy, exclude_table_data)
        except _LockedTooLong:
            remove_database_file(copy)
            raise SourceError(
                f"cannot back up SQLite database {path}: another process has held a lock on it for "
                f"{BACKUP_LOCK_TIMEOUT_SECONDS:g} s",
                "find it (e.g. `fuser` or `lsof` on the file) and end its transaction, then try again",
            ) from None
        except sqlite3.Error as error:
            remove_database_file(copy)
            raise SourceError(f"cannot back up SQLite database {path}: {error}") from None
        except BaseException:
            remove_database_file(copy)
            raise
        dump = FileDump(copy)
        dump.rows_excluded, dump.warnings = selection.tables, selection.warnings() + references
        return dump

    def summarize(self, url: str, password: str | None) -> DatabaseSummary:
        path = database_path(url)
        try:
            with contextlib.closing(_open_existing(path)) as connection:
                names = _table_names(connection)
                migration_table, migration_version = _migration(connection, set(names))
        except sqlite3.Error as error:
            raise SourceError(f"cannot inspect SQLite database {path}: {error}") from None
        return DatabaseSummary(self.engine, sqlite3.sqlite_version, names, migration_version, migration_table)

    def inspect(self, url: str, password: str | None) -> DatabaseInfo:
        path = database_path(url)
        try:
            with contextlib.closing(_open_existing(path)) as connection:
                connection.execute("BEGIN")  # one read transaction: all tables from one moment
                names = _table_names(connection)
                tables = [_fingerprint(connection, name) for name in names]
                migration_table, migration_version = _migration(connection, set(names))
                connection.rollback()
        except sqlite3.Error as error:
            raise SourceError(f"cannot inspect SQLite database {path}: {error}") from None
        return DatabaseInfo(
            engine=self.engine,
            server_version=sqlite3.sqlite_version,
            tables=tables,
            migration_version=migration_version,
            migration_table=migration_table,
        )

    def restore(self, url: str, password: str | None, source: IO[bytes] | Path, create: bool) -> None:
        path = database_path(url)
        if not create and not path.exists():
            raise SourceError(f"SQLite database {path} does not exist", "restore with create to make it")
        # A symlinked database (e.g. shared/app.db -> /data/app.db) is restored into its target:
        # replacing the link with a file would leave the data where the link pointed untouched.
        # The staged file sits next to the target so that the rename stays atomic.
        path = path.resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".restoring", dir=path.parent)
        staged = Path(name)
        try:
            _keep_mode_and_owner(descriptor, path)
            with os.fdopen(descriptor, "wb") as output:
                _copy_source(source, output)
                output.flush()
                os.fsync(output.fileno())
            _check_copy(staged)
            remove_companions(staged)  # the check's: the staged file itself is complete
            if path.exists() and _copy_into_live_database(staged, path):
                remove_database_file(staged)
                return
            # The old database's -wal/-shm/-journal describe the old file; next to the new one
            # they would be replayed into it and corrupt it.
            remove_companions(path)
            os.replace(staged, path)
        except BaseException:
            remove_database_file(staged)
            raise

    def restore_tables(
        self, url: str, password: str | None, source: IO[bytes] | Path, create: bool, tables: list[str]
    ) -> RestoredTables:
        """The tables `tables` of the dump into a new database file (sqlite_tables.py), written
        next to the target and renamed into place once complete."""
        from lockstep.databases.sqlite_tables import copy_tables

        path = database_path(url)
        if not create and not path.exists():
            raise SourceError(f"SQLite database {path} does not exist", "restore with create to make it")
        path = path.resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(prefix="lockstep-restore-", suffix=self.dump_format.extension)
        dump = Path(name)
        descriptor_staged, staged_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".restoring", dir=path.parent)
        staged = Path(staged_name)
        try:
            with os.fdopen(descriptor, "wb") as output:
                _copy_source(source, output)
            _check_copy(dump)
            _keep_mode_and_owner(descriptor_staged, path)
            os.close(descriptor_staged)
            connection = sqlite3.connect(staged.resolve().as_uri(), uri=True, isolation_level=None)
            try:
                connection.execute("ATTACH DATABASE ? AS source", (f"{dump.resolve().as_uri()}?mode=ro",))
                connection.execute("BEGIN")
                left_out = copy_tables(connection, tables)
                connection.execute("COMMIT")
                connection.execute("DETACH DATABASE source")
            except sqlite3.Error as error:
                raise SourceError(f"cannot copy tables into SQLite database {path}: {error}") from None
            finally:
                connection.close()
            _check_copy(staged)
            remove_companions(staged)
            remove_companions(path)
            os.replace(staged, path)
        except BaseException:
            remove_database_file(staged)
            raise
        finally:
            remove_database_file(dump)
        return RestoredTables(left_out=left_out)

    def create_scratch(self, url: str, password: str | None) -> str:
        _remove_stale_scratch(Path(tempfile.gettempdir()))
        descriptor, name = tempfile.mkstemp(prefix=SCRATCH_PREFIX, suffix=".sqlite3")
        os.close(descriptor)  # an empty file is an empty SQLite database
        return "sqlite:///" + name

    def drop_database(self, url: str, password: str | None) -> None:
        path = database_path(url)
        require_scratch(path.name, str(path))
        remove_database_file(path)


# Annotated so that mypy checks the class against the Protocol.
ADAPTER: DatabaseAdapter = SqliteAdapter()


def anchored_url(url: str, base: Path) -> str:
    """`url` with a relative SQLite path (`sqlite:///copy.db`) made absolute from `base`; any other
    URL as it is. What lockstep shows and records then says where the file is: `sqlite:///tmp/x.db`
    is tmp/x.db below `base`, not /tmp/x.db, which surprises whoever reads it as a file URL."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and len(url) > len(prefix) and not url.startswith(prefix + "/"):
        return prefix + str(base / url[len(prefix) :])
    return url


def database_path(url: str) -> Path:
    """`sqlite:///app.db` is relative, `sqlite:////srv/app.db` absolute (SQLAlchemy's rule)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise UsageError(f"not a SQLite database URL: {url}", "e.g. sqlite:////srv/app/app.db (absolute path)")
    path, _, query = url[len(prefix) :].partition("?")
    check_url_options("sqlite", redact_url(url), (name for name, _ in parse_qsl(query, keep_blank_values=True)))
    return Path(unquote(path))


def _open_existing(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    """Open read-only, so a typo never creates an empty database that then gets backed up."""
    if not path.is_file():
        raise SourceError(f"SQLite database {path} does not exist", "check the path in the database URL")
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)


def _keep_mode_and_owner(descriptor: int, path: Path) -> None:
    """Give the staged file the mode, owner and group of the file it replaces.

    mkstemp makes a 0600 file owned by whoever runs the restore (often root): renamed into
    place as it is, the application that runs as another user, or reads through its group,
    could no longer open its own database. A new database keeps mkstemp's 0600. When the
    owner cannot be given away (not root), the group alone is tried, then left as it is.
    """
    try:
        existing = path.stat()
    except FileNotFoundError:
        return
    if (existing.st_uid, existing.st_gid) != (os.geteuid(), os.getegid()):
        try:
            os.fchown(descriptor, existing.st_uid, existing.st_gid)
        except PermissionError:
            with contextlib.suppress(PermissionError):
                os.fchown(descriptor, -1, existing.st_gid)
    os.fchmod(descriptor, stat.S_IMODE(existing.st_mode))  # after chown, which may clear set-id bits


# Errors that mean SQLite cannot write this file page by page, where renaming a checked copy
# into place still restores it: not a database, damaged, read-only, or a WAL database whose page
# size differs (SQLITE_READONLY). Any other error (a lock, a full disk) fails the restore.
_RENAME_INSTEAD = {sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN}
_LOCK_ERRORS = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_LOCK_RETRY_SECONDS = 0.25


def _copy_into_live_database(staged: Path, path: Path) -> bool:
    """Overwrite the database at `path` with `staged` through the backup API, in one write
    transaction, so that the connections open on it see the restored data. False, with `path`
    untouched, when SQLite cannot copy into it (see _RENAME_INSTEAD): the caller renames `staged`
    into place instead. A lock another process holds longer than BACKUP_LOCK_TIMEOUT_SECONDS
    fails the restore: renaming the file under a writer would lose what it commits next."""
    wait = _LockWait(time.monotonic() + BACKUP_LOCK_TIMEOUT_SECONDS)
    try:
        with (
            contextlib.closing(sqlite3.connect(f"{staged.resolve().as_uri()}?mode=ro", uri=True)) as source,
            contextlib.closing(sqlite3.connect(path, timeout=BACKUP_STEP_BUSY_SECONDS)) as target,
        ):
            _read_schema(target, wait)
            source.backup(target, progress=wait)
            # A WAL database now holds every page in its -wal: put them into the file itself (a
            # reader still in a transaction makes this a no-op; SQLite checkpoints later then).
            with contextlib.suppress(sqlite3.Error):
                target.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return True
    except _LockedTooLong:
        raise SourceError(
            f"cannot restore SQLite database {path}: another process has held a lock on it for "
            f"{BACKUP_LOCK_TIMEOUT_SECONDS:g} s; it was left as it was",
            "find it (e.g. `fuser` or `lsof` on the file) and end its transaction, then try again",
        ) from None
    except sqlite3.Error as error:
        if _primary_code(error) in _RENAME_INSTEAD:
            return False
        raise SourceError(f"cannot restore SQLite database {path}: {error}; it was left as it was") from None
    finally:
        remove_companions(staged)  # a WAL-mode copy, opened even read-only, gets a -wal and -shm


def _read_schema(connection: sqlite3.Connection, wait: _LockWait) -> None:
    """Read the schema (which fails for a file that is no database), waiting out a lock in short
    steps as the backup does, so that signals are handled meanwhile."""
    while True:
        try:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return
        except sqlite3.Error as error:
            if _primary_code(error) not in _LOCK_ERRORS:
                raise
            wait(sqlite3.SQLITE_BUSY, 0, 0)
            time.sleep(_LOCK_RETRY_SECONDS)


def _primary_code(error: sqlite3.Error) -> int:
    return int(getattr(error, "sqlite_errorcode", 0) or 0) & 0xFF


def _copy_source(source: IO[bytes] | Path, output: IO[bytes]) -> None:
    """_copy from a stream, or from a dump that is already a file."""
    if isinstance(source, Path):
        with source.open("rb") as stream:
            _copy(stream, output)
    else:
        _copy(source, output)


def _copy(source: IO[bytes], output: IO[bytes]) -> None:
    while block := source.read(1024 * 1024):
        output.write(block)


def _check_copy(path: Path) -> None:
    """Refuse to put anything but a sound SQLite database in place of the target."""
    with path.open("rb") as handle:
        header = handle.read(len(HEADER))
    if header != HEADER and path.stat().st_size:
        raise SourceError("the dump is not a SQLite database; the target was left as it was")
    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as connection:
        result = connection.execute("PRAGMA quick_check").fetchone()
    if result is None or result[0] != "ok":
        raise SourceError(f"the restored SQLite database fails its check ({result}); the target was left as it was")


def _fingerprint(connection: sqlite3.Connection, table: str) -> TableInfo:
    """Row count and a sha256 over the rows in rowid order (primary key order without rowid)."""
    quoted = '"' + table.replace('"', '""') + '"'
    try:
        cursor = connection.execute(f"SELECT * FROM {quoted} ORDER BY rowid")
    except sqlite3.OperationalError:  # a WITHOUT ROWID table: its primary key orders it
        cursor = connection.execute(f"SELECT * FROM {quoted} LIMIT 0")
        columns = len(cursor.description)
        cursor = connection.execute(
            f"SELECT * FROM {quoted} ORDER BY " + ", ".join(str(n) for n in range(1, columns + 1))
        )
    digest = hashlib.sha256()
    rows = 0
    for row in cursor:
        digest.update(repr(row).encode("utf-8", "surrogatepass") + b"\n")
        rows += 1
    return TableInfo(name=table, rows=rows, checksum=digest.hexdigest())


def _exclude_rows(path: Path, patterns: Sequence[str]) -> tuple[TableSelection, tuple[str, ...]]:
    """Delete the rows of the tables `patterns` match from the copy at `path` (never the live
    file), as _delete_rows does; a virtual table's shadow tables are matched only through it.
    With the selection, a warning per kept table with a foreign key to an emptied one."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        tables = _own_tables(connection)
        selection = select_tables(patterns, tables)
        references = _references_to_emptied(connection, tables, selection.tables) if selection.tables else ()
    if selection.tables:
        _delete_rows(path, selection.tables)
    return selection, references


def _references_to_emptied(
    connection: sqlite3.Connection, tables: list[str], excluded: tuple[str, ...]
) -> tuple[str, ...]:
    """Warnings for the kept tables whose foreign keys refer to emptied ones: the copy restores
    whole, its rows referring to rows that are not there (SQLite checks no foreign key of rows
    already stored, PRAGMA foreign_keys or not). A REFERENCES clause names its table in any case."""
    by_lower_name = {table.lower(): table for table in tables}
    foreign_keys = []
    for table in tables:
        for (referenced,) in connection.execute('SELECT "table" FROM pragma_foreign_key_list(?)', (table,)):
            foreign_keys.append((table, by_lower_name.get(str(referenced).lower(), str(referenced))))
    return references_to_emptied(foreign_keys, excluded, ROWS_LEFT_DANGLING)


def _own_tables(connection: sqlite3.Connection) -> list[str]:
    """The tables, without the shadow tables a virtual table keeps its rows in (fts_content...)."""
    listed = connection.execute(
        "SELECT name, COALESCE(sql, '') FROM sqlite_master WHERE type = 'table'"
        " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
    ).fetchall()
    virtual = [str(name) for name, sql in listed if str(sql).upper().startswith("CREATE VIRTUAL TABLE")]
    return [
        str(name)
        for name, _ in listed
        if str(name) in virtual or not any(str(name).startswith(owner + "_") for owner in virtual)
    ]


def _delete_rows(path: Path, only: Sequence[str] | None = None) -> None:
    """Empty every table of the database at `path` (or those in `only`), keeping its schema: its
    triggers are dropped first (an ON DELETE trigger must not write rows elsewhere) and re-created
    after, virtual tables are emptied through themselves (their shadow tables are theirs to keep),
    and AUTOINCREMENT counters are reset when every table is emptied (kept otherwise, as pg_dump
    keeps a sequence's value). VACUUM leaves no deleted row in the file's free pages."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN")
        triggers = connection.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND sql IS NOT NULL ORDER BY rowid"
        ).fetchall()
        for name, _ in triggers:
            connection.execute('DROP TRIGGER "' + str(name).replace('"', '""') + '"')
        for name in _own_tables(connection):
            if only is None or name in only:
                connection.execute('DELETE FROM "' + name.replace('"', '""') + '"')
        if only is None and connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
            connection.execute("DELETE FROM sqlite_sequence")
        for _, sql in triggers:
            connection.execute(str(sql))
        connection.execute("COMMIT")
        connection.execute("VACUUM")
    finally:
        connection.close()


def _table_names(connection: sqlite3.Connection) -> list[str]:
    listed = connection.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
    )
    return [str(row[0]) for row in listed]


def _migration(connection: sqlite3.Connection, tables: set[str]) -> tuple[str | None, str | None]:
    """The first migration table found and its current version."""
    queries = {
        "alembic_version": "SELECT group_concat(version_num, ',') FROM (SELECT version_num FROM alembic_version"
        " ORDER BY version_num)",
        "schema_migrations": "SELECT max(version) FROM schema_migrations",
        "django_migrations": "SELECT app || '.' || name FROM django_migrations ORDER BY id DESC LIMIT 1",
    }
    for table in MIGRATION_TABLES:
        if table in tables:
            row = connection.execute(queries[table]).fetchone()
            value = None if row is None or row[0] is None else str(row[0])
            return table, value
    return None, None
