"""MySQL and MariaDB (`mysql://` and `mariadb://`): dumps with `mariadb-dump`, restores and
queries with the `mariadb` client.

The dump is one database's objects without `--databases`: no `CREATE DATABASE` or `USE`
statements, so the same dump restores into the original database or into a scratch database
for a test-restore (with `--databases` it would silently restore over the original).
`--single-transaction` gives a consistent InnoDB snapshot without locking writers;
`--routines --triggers --events` keep the code that lives in the database; `--hex-blob` keeps
binary data safe from character-set conversion; `--skip-dump-date` keeps two dumps of
unchanged data byte-identical, so they deduplicate completely.

The password goes to the client tools in MYSQL_PWD (the environment), never in argv.

The manifest's row counts and checksums come from the rows the dump holds. Two InnoDB
transactions started while nothing can commit see the same rows, so `dump` takes FLUSH TABLES
WITH READ LOCK on a connection of its own, starts a consistent-snapshot transaction there,
starts mariadb-dump, waits until the server shows the dump's own transaction, and unlocks;
the fingerprint is then computed in our transaction while the dump streams. Writers wait only
for that window (milliseconds: the dump's transaction starts right after it connects), never
for the dump. Since MariaDB 10.4 the lock does not wait for running SELECTs, but it does wait
for running writes, and writers queue behind it, so it gives up after LOCK_WAIT_SECONDS rather
than stall the application behind a long UPDATE. Without the RELOAD privilege (for the lock) or
PROCESS (to see the dump's transaction), or when the lock is not granted in time, the dump
runs unsynchronised and the fingerprint is taken after it; the dump's `inspected` and
`inspected_note` say so, for the manifest. MyISAM, Aria and MEMORY tables are in no
transaction: their fingerprint and the dump read them at different moments, and they are
marked (`TableInfo.consistent`) rather than pretended consistent.

What a dump cannot keep is said when it is made (`DumpPlan.warnings`, recorded in the
manifest), never found out at a restore. mariadb-dump writes FLOAT values with 6 significant
digits, so longer ones come back rounded; no option of it changes that. A system-versioned
table's history is dumped with `--dump-history` (the MariaDB 10.11 client), which the restore
writes back under system_versioning_insert_history (set by the dump itself; MariaDB 10.11
servers, with secure_timestamp = NO). Where that cannot work (a table versioned by
transaction ID makes mariadb-dump refuse --dump-history for the whole dump; an older client or
server) only the current rows are dumped, and the warning names the tables.
"""

from __future__ import annotations

import functools
import io
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lockstep.chunk_stream import ChunkStream
from lockstep.databases.base import (
    DUMP_FAILURE_HINT,
    MIGRATION_TABLES,
    DatabaseAdapter,
    DatabaseInfo,
    DatabaseSummary,
    DumpFormat,
    RestoredTables,
    ServerLocation,
    TableInfo,
    redact,
    require_scratch,
    scratch_name,
    stale_scratch_names,
    with_database,
)
from lockstep.databases.fingerprinted_dump import FingerprintedDump
from lockstep.databases.mysql_dump_stream import database_default, with_prefix, without_database_names
from lockstep.databases.mysql_rows import COLUMNS_QUERY, Column, history_hash_sum, identifier, row_hash_sum
from lockstep.databases.mysql_session import ClientSession, StatementFailed, batch_fields
from lockstep.databases.mysql_tables import Selection, tables_of_dump
from lockstep.databases.table_patterns import (
    ROWS_LEFT_DANGLING,
    TableSelection,
    references_to_emptied,
    select_tables,
)
from lockstep.databases.url_options import check_url_options
from lockstep.errors import ServerLimitExceeded, SourceError, UsageError
from lockstep.process import Command, StreamingProcess, run_capture, run_with_input

CONNECT_TIMEOUT_SECONDS = 10
# Recorded in the manifest, so that a restore compares checksums exactly: CHECKSUM TABLE's
# numbers have 1 to 10 digits, and a manifest without an algorithm only compares checksums of
# the same length.
CHECKSUM_ALGORITHM = "checksum-table"
# CHECKSUM TABLE reads every row: minutes on a big database are normal, hours are not.
QUERY_TIMEOUT_SECONDS = 1800
# Options of the `mariadb` client (mariadb-dump has no --connect-timeout).
# The largest statement or row the client tools send or take (their most; 16 MiB by default):
# with --hex-blob a row's statement is twice its size. The server has its own limit.
MAX_PACKET = "--max-allowed-packet=1G"
CLIENT_OPTIONS = ("--default-character-set=utf8mb4", f"--connect-timeout={CONNECT_TIMEOUT_SECONDS}", MAX_PACKET)
DUMP_OPTIONS = (
    "--single-transaction",
    "--routines",
    "--triggers",
    "--events",
    "--hex-blob",
    "--default-character-set=utf8mb4",
    "--skip-dump-date",
    MAX_PACKET,
)
# What the mariadb client says when the server refuses a statement over max_allowed_packet
# (ER_NET_PACKET_TOO_LARGE), or drops the connection on it (CR_SERVER_GONE_ERROR, CR_SERVER_LOST).
PACKET_REFUSED = re.compile(r"ERROR (1153|2006|2013) ")
# How long FLUSH TABLES WITH READ LOCK may wait for running writes (which, meanwhile, block
# new ones) before the snapshot goes on without it: the application's worst stall.
LOCK_WAIT_SECONDS = 2
# How long the lock is held at most while waiting for mariadb-dump's transaction to appear
# (it takes 15-40 ms on the same machine: starting the tool and connecting).
DUMP_START_SECONDS = 3
POLL_SECONDS = 0.002
# information_schema.tables.table_type of the tables fingerprinted: MariaDB lists
# system-versioned tables apart (their current rows, and their history when it is dumped, are
# fingerprinted).
TABLE_TYPES = "('BASE TABLE', 'SYSTEM VERSIONED')"
# mariadb-dump's option (MariaDB 10.11's client) that dumps system-versioned tables with their
# history: every row version with its period, restored under system_versioning_insert_history=1.
DUMP_HISTORY = "--dump-history"
# mariadb-dump's option (MariaDB's clients since 2020, not MySQL's mysqldump) that dumps a
# table's definition without its rows: exclude_table_data.
IGNORE_TABLE_DATA = "--ignore-table-data"
# The tables _database_info fingerprints, by name only.
TABLES_QUERY = (
    f"SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_type IN {TABLE_TYPES}"
    " ORDER BY table_name"
)
# Foreign keys within the database: (referencing table, referenced table).
FOREIGN_KEYS_QUERY = (
    "SELECT DISTINCT table_name, referenced_table_name FROM information_schema.referential_constraints"
    " WHERE constraint_schema = DATABASE() AND unique_constraint_schema = DATABASE() ORDER BY 1, 2"
)
# A system-versioned table's period columns, each table with its own (or, for one declared
# just WITH SYSTEM VERSIONING, the pseudo-columns ROW_START and ROW_END) and their type:
# bigint when the period holds transaction IDs, timestamp otherwise.
VERSIONED_QUERY = (
    "SELECT t.table_name,"
    " COALESCE(MAX(IF(c.generation_expression = 'ROW START', c.column_name, NULL)), 'ROW_START'),"
    " COALESCE(MAX(IF(c.generation_expression = 'ROW END', c.column_name, NULL)), 'ROW_END'),"
    " COALESCE(MAX(IF(c.generation_expression = 'ROW START', c.data_type, NULL)), 'timestamp')"
    " FROM information_schema.tables t LEFT JOIN information_schema.columns c"
    " ON c.table_schema = t.table_schema AND c.table_name = t.table_name"
    " AND c.generation_expression IN ('ROW START', 'ROW END')"
    " WHERE t.table_schema = DATABASE() AND t.table_type = 'SYSTEM VERSIONED'"
    " GROUP BY t.table_name ORDER BY t.table_name"
)
# FLOAT columns without a scale of their own, whose values mariadb-dump writes with 6
# significant digits (a FLOAT(M,D) is written with its D decimals, which restore it exactly).
# MySQL writes the shortest text that reads back exactly, so only a MariaDB server counts.
INEXACT_FLOAT_QUERY = (
    "SELECT c.table_name, c.column_name FROM information_schema.columns c JOIN information_schema.tables t"
    " ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
    f" WHERE c.table_schema = DATABASE() AND t.table_type IN {TABLE_TYPES}"
    " AND c.data_type = 'float' AND c.numeric_scale IS NULL AND VERSION() LIKE '%MariaDB%'"
    " ORDER BY c.table_name, c.ordinal_position"
)
# The server settings that decide whether history rows can be written back: SHOW never fails
# for a name the server does not have (before 10.11 there is no system_versioning_insert_history).
HISTORY_SETTINGS_QUERY = (
    "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('system_versioning_insert_history', 'secure_timestamp')"
)
# Engines whose tables a consistent-snapshot transaction covers.
SNAPSHOT_ENGINES = frozenset({"innodb"})
# MariaDB error numbers that mean "not allowed" (ER_SPECIFIC_ACCESS_DENIED_ERROR, ER_DBACCESS_DENIED_ERROR,
# ER_ACCESS_DENIED_ERROR) and "lock not granted in time" (ER_LOCK_WAIT_TIMEOUT).
ACCESS_DENIED = frozenset({1227, 1044, 1045})
LOCK_WAIT_TIMEOUT = 1205
# In SHOW ENGINE INNODB STATUS, the connection a transaction belongs to.
THREAD_ID = re.compile(r"(?:MariaDB|MySQL) thread id (\d+),")
READ_VIEW = re.compile(r"Trx read view will not see trx with id (>= \d+, sees < \d+)")

Rows = Callable[[str], list[list[str]]]


@dataclass(frozen=True)
class VersionedTable:
    """A system-versioned table: its period's start and end columns, and whether they hold
    transaction IDs (a table versioned by transaction ID) rather than times."""

    name: str
    start: str
    end: str
    by_transaction: bool


@dataclass(frozen=True)
class DumpPlan:
    """How a dump is made, decided before it starts: with the history of system-versioned
    tables or without, and what it cannot keep (one warning each, for the manifest)."""

    history: bool = False
    warnings: tuple[str, ...] = ()

    @property
    def options(self) -> tuple[str, ...]:
        return (DUMP_HISTORY,) if self.history else ()


class MysqlAdapter:
    """The `mysql://` adapter, which also serves `mariadb://`."""

    engine = "mysql"
    checksum_algorithm = CHECKSUM_ALGORITHM
    dump_format = DumpFormat(name="mysql-sql", extension=".sql", seekable_restore_is_faster=False)

    # What CHECKSUM TABLE (and the row hash sum) gives a table without rows.
    empty_table_checksum = "0"

    def dump(
        self, url: str, password: str | None, schema_only: bool = False, exclude_table_data: Sequence[str] = ()
    ) -> MysqlDump | DumpProcess:
        """mariadb-dump, with the fingerprint from its own snapshot when the server allows it.

        Returns a `MysqlDump` (which offers `consistent_info()`) or, when the snapshots cannot
        be synchronised, a plain `DumpProcess` whose `inspected_note` says why. `schema_only`:
        mariadb-dump --no-data (routines, triggers and events kept), no rows to synchronise.
        `exclude_table_data`: the tables the patterns match go to mariadb-dump's
        --ignore-table-data by name, and their rows are not read by the fingerprint.
        """
        location = ServerLocation.parse(url)
        if schema_only:
            command = _tool_command(location, password, "mariadb-dump", *DUMP_OPTIONS, "--no-data", location.database)
            return DumpProcess(command)
        if exclude_table_data and not client_ignores_table_data():
            raise UsageError(
                "exclude_table_data needs a mariadb-dump that has --ignore-table-data, and this one has not "
                "(MySQL's mysqldump and MariaDB clients before 2020 have none)",
                "install a recent MariaDB client (package mariadb-client), or remove exclude_table_data",
            )
        try:
            session = _session(location, password, location.database)
        except StatementFailed as error:
            if exclude_table_data:
                raise SourceError(
                    f"cannot list the tables of {location.display()} for exclude_table_data: {error.message}",
                    DUMP_FAILURE_HINT,
                ) from None
            # The dump will most likely fail the same way, and say so when finished.
            command = _tool_command(location, password, "mariadb-dump", *DUMP_OPTIONS, location.database)
            return DumpProcess(command, f"no connection for the fingerprint: {error.message}")
        try:
            default = database_default(session.rows("SELECT @@character_set_database, @@collation_database", 10)[0])
            plan = dump_plan(lambda statement: session.rows(statement, QUERY_TIMEOUT_SECONDS))
            selection = TableSelection((), ())
            if exclude_table_data:
                selection = select_tables(exclude_table_data, [row[0] for row in session.rows(TABLES_QUERY, 10)])
            references: tuple[str, ...] = ()
            if selection.tables:
                references = _references_to_emptied(session.rows(FOREIGN_KEYS_QUERY, 10), selection.tables)
            ignored = (f"--ignore-table-data={location.database}.{table}" for table in selection.tables)
            options = (*DUMP_OPTIONS, *plan.options, *ignored)
            command = _tool_command(location, password, "mariadb-dump", *options, location.database)
            dump = _synchronised_dump(session, command, location, plan.history, frozenset(selection.tables))
        except BaseException:
            session.close()
            raise
        dump.stdout = with_prefix(default, dump.stdout)
        dump.warnings = plan.warnings + selection.warnings() + references
        dump.rows_excluded = selection.tables
        return dump

    def inspect(self, url: str, password: str | None) -> DatabaseInfo:
        location = ServerLocation.parse(url)
        session = _session(location, password, location.database)
        try:
            # One transaction for all tables, so InnoDB counts and checksums describe one moment.
            session.rows("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ", CONNECT_TIMEOUT_SECONDS)
            session.rows("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY", CONNECT_TIMEOUT_SECONDS)
            return _database_info(lambda statement: session.rows(statement, QUERY_TIMEOUT_SECONDS), self.engine)
        finally:
            session.close()

    def summarize(self, url: str, password: str | None) -> DatabaseSummary:
        location = ServerLocation.parse(url)
        session = _session(location, password, location.database)
        try:

            def rows(statement: str) -> list[list[str]]:
                return session.rows(statement, QUERY_TIMEOUT_SECONDS)

            version = rows("SELECT VERSION()")[0][0]
            listed = rows(
                "SELECT table_name FROM information_schema.tables"
                f" WHERE table_schema = DATABASE() AND table_type IN {TABLE_TYPES} ORDER BY table_name"
            )
            names = sorted(row[0] for row in listed)
            migration_table, migration_version = _migration(rows, set(names))
        finally:
            session.close()
        return DatabaseSummary(self.engine, version, names, migration_version, migration_table)

    def restore(self, url: str, password: str | None, source: IO[bytes] | Path, create: bool) -> None:
        self._restore(url, password, source, create, lambda stream: stream)

    def restore_tables(
        self, url: str, password: str | None, source: IO[bytes] | Path, create: bool, tables: list[str]
    ) -> RestoredTables:
        """The dump cut to the tables `tables` (mysql_tables.py: the header, their structure and
        data sections with their triggers, the footer), fed to the `mariadb` client as a whole
        restore is; foreign keys to tables not restored are cut out of their CREATE TABLE."""
        selection = Selection(set(tables))

        def cut(stream: IO[bytes]) -> IO[bytes]:
            return io.BufferedReader(ChunkStream(tables_of_dump(stream, selection)), buffer_size=1024 * 1024)

        self._restore(url, password, source, create, cut)
        return RestoredTables(left_out=selection.left_out)

    def _restore(
        self,
        url: str,
        password: str | None,
        source: IO[bytes] | Path,
        create: bool,
        cut: Callable[[IO[bytes]], IO[bytes]],
    ) -> None:
        location = ServerLocation.parse(url)
        if create:
            _administer(location, password, f"CREATE DATABASE IF NOT EXISTS {_identifier(location.database)}")
        # --binary-mode: take the dump's bytes as they are (no \r\n or \0 rewriting); DELIMITER
        # still works, which the dump's routines and triggers need.
        command = _tool_command(location, password, "mariadb", *CLIENT_OPTIONS, "--binary-mode", location.database)
        hint = f"{location.display()} may be partly restored; drop it before trying again"
        try:
            # The dump may name its source database (mysql_dump_stream.py); the restore must not.
            if isinstance(source, Path):
                with source.open("rb") as stream:
                    run_with_input(command, without_database_names(cut(stream)), hint)
            else:
                run_with_input(command, without_database_names(cut(source)), hint)
        except SourceError as error:
            if PACKET_REFUSED.search(error.message):
                raise _packet_refused(location, password, error) from error
            raise

    def likely_causes(self, url: str, password: str | None, tables: list[str]) -> dict[str, str]:
        """Why restored `tables` may differ from their source other than damage: FLOAT columns.

        mariadb-dump writes FLOAT values with 6 significant digits (0.10000001 as 0.1), so
        values with more come back rounded and the table's checksum differs.
        """
        location = ServerLocation.parse(url)
        found = _query(
            location,
            password,
            "SELECT table_name, GROUP_CONCAT(column_name ORDER BY ordinal_position SEPARATOR ', ')"
            " FROM information_schema.columns WHERE table_schema = DATABASE() AND data_type = 'float'"
            " AND numeric_scale IS NULL GROUP BY table_name",
        )
        return {
            table: f"FLOAT column {columns}: mariadb-dump writes FLOAT values with 6 significant digits, "
            "so longer ones are restored rounded; DOUBLE keeps them exactly"
            for table, columns in found
            if table in tables
        }

    def create_scratch(self, url: str, password: str | None) -> str:
        location = ServerLocation.parse(url)
        name = scratch_name()
        _drop_stale_scratch(location, password)
        _administer(location, password, f"CREATE DATABASE {_identifier(name)} CHARACTER SET utf8mb4")
        return with_database(url, name)

    def drop_database(self, url: str, password: str | None) -> None:
        location = ServerLocation.parse(url)
        require_scratch(location.database, location.display())
        _administer(location, password, f"DROP DATABASE IF EXISTS {_identifier(location.database)}")


def _packet_refused(location: ServerLocation, password: str | None, error: SourceError) -> ServerLimitExceeded:
    """The restore's error when the server refused a statement or went away: most likely a row
    whose INSERT (twice the row's size with --hex-blob) is over the server's max_allowed_packet."""
    try:
        limit = f"{int(_query(location, password, 'SELECT @@global.max_allowed_packet', database='')[0][0]) >> 20} MiB"
    except (SourceError, ValueError, IndexError):
        limit = "unknown: the server does not answer"
    remedy = (
        "raise it on that server, up to 1G: SET GLOBAL max_allowed_packet = 1073741824 "
        "(and max_allowed_packet = 1G under [mysqld] in its configuration, to keep it)"
    )
    return ServerLimitExceeded(
        f"{error.message}; most likely a statement of the dump (a large row: binary values are written in hex, "
        f"twice their size) is over the max_allowed_packet of the server at {location.display()} "
        f"(now {limit})",
        remedy,
        f"{remedy}; then drop {location.display()}, which may be partly restored, and try again",
    )


class DumpProcess(StreamingProcess):
    """mariadb-dump on its own: the fingerprint is taken after it (`inspected_note` says why)."""

    inspected = "after-dump"
    failure_hint = DUMP_FAILURE_HINT

    def __init__(self, command: Command, note: str | None = None) -> None:
        super().__init__(command)
        self.inspected_note = note
        self.warnings: tuple[str, ...] = ()  # what the dump cannot keep (DumpPlan)
        self.rows_excluded: tuple[str, ...] = ()  # tables dumped without their rows

    def exited(self) -> bool:
        return self._process.poll() is not None


class MysqlDump(FingerprintedDump):
    """A running mariadb-dump and our transaction that sees the same rows; both end with the dump.

    A caller that asks for `consistent_info()` before reading the dump should not take long:
    the server drops a dump that it cannot send rows to for net_write_timeout (60 s by default).
    """

    def __init__(
        self,
        process: DumpProcess,
        session: ClientSession,
        location: ServerLocation,
        lock_seconds: float,
        history: bool = False,
        rows_excluded: frozenset[str] = frozenset(),
    ):
        self._session = session
        self._location = location
        self._history = history  # the dump holds the history of system-versioned tables
        self.lock_seconds = lock_seconds  # how long writers were held back
        self.warnings: tuple[str, ...] = ()  # what the dump cannot keep (DumpPlan)
        self.rows_excluded: tuple[str, ...] = tuple(sorted(rows_excluded))  # dumped without their rows
        super().__init__(process, thread_name="mariadb-fingerprint")

    @property
    def inspected(self) -> str:
        """`dump` when every table is in the dump's snapshot (known once the fingerprint is)."""
        if self._info is not None and not all(table.consistent for table in self._info.tables):
            return "dump-except-nontransactional"
        return "dump"

    @property
    def inspected_note(self) -> str | None:
        if self._info is None:
            return None
        outside = [table.name for table in self._info.tables if not table.consistent]
        if not outside:
            return None
        return "not in the dump's snapshot (no transactional engine), read at another moment: " + ", ".join(outside)

    def _fingerprint(self) -> DatabaseInfo:
        return _database_info(self._rows, "mysql", history=self._history, rows_excluded=frozenset(self.rows_excluded))

    def _stop_fingerprint(self) -> None:
        self._session.close()  # ends a running CHECKSUM TABLE's connection too
        self._fingerprinting.join()

    def _close_session(self) -> None:
        self._session.close()

    def _rows(self, statement: str) -> list[list[str]]:
        return self._session.rows(statement, QUERY_TIMEOUT_SECONDS)


def _references_to_emptied(foreign_keys: list[list[str]], excluded: tuple[str, ...]) -> tuple[str, ...]:
    """A warning per kept table with a foreign key to a table whose rows are left out: the dump
    restores with FOREIGN_KEY_CHECKS=0, so the restore succeeds and its rows silently refer to
    rows that are not there."""
    return references_to_emptied(((row[0], row[1]) for row in foreign_keys), excluded, ROWS_LEFT_DANGLING)


def _synchronised_dump(
    session: ClientSession,
    command: Command,
    location: ServerLocation,
    history: bool,
    rows_excluded: frozenset[str] = frozenset(),
) -> MysqlDump | DumpProcess:
    """Start mariadb-dump so that its snapshot and our session's transaction see the same rows.

    While FLUSH TABLES WITH READ LOCK is held nothing commits, so our transaction (started
    under the lock) and the dump's (started before the lock ends) see the same committed rows.
    """

    def run(statement: str) -> list[list[str]]:
        return session.rows(statement, CONNECT_TIMEOUT_SECONDS)

    run(f"SET SESSION lock_wait_timeout = {LOCK_WAIT_SECONDS}")
    run("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    try:
        own, user = run("SELECT CONNECTION_ID(), SUBSTRING_INDEX(USER(), '@', 1)")[0]
        # Without PROCESS this is refused, and the dump's transaction cannot be seen.
        _read_views(session)
    except StatementFailed as error:
        return _unsynchronised(session, command, error, "the PROCESS privilege (to see the dump's transaction)")
    locked = time.monotonic()
    try:
        run("FLUSH TABLES WITH READ LOCK")
    except StatementFailed as error:
        return _unsynchronised(session, command, error, "the RELOAD privilege (for FLUSH TABLES WITH READ LOCK)")
    try:
        run("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        # Connection ids only grow: the dump's will be above every id the server has now.
        newest = int(run("SELECT COALESCE(MAX(ID), 0) FROM information_schema.PROCESSLIST")[0][0])
        process = DumpProcess(command)
    except BaseException:
        session.close()  # the disconnect releases the lock
        raise
    try:
        started = _wait_for_dump_transaction(session, process, int(own), newest, user)
        run("UNLOCK TABLES")  # ends the lock, not the transaction
    except BaseException:
        session.close()
        process.kill()
        raise
    lock_seconds = time.monotonic() - locked
    if not started:
        session.close()
        process.inspected_note = (
            f"mariadb-dump's transaction did not appear within {DUMP_START_SECONDS} s, "
            "so the fingerprint was taken after the dump"
        )
        return process
    return MysqlDump(process, session, location, lock_seconds, history, rows_excluded)


def _wait_for_dump_transaction(session: ClientSession, process: DumpProcess, own: int, newest: int, user: str) -> bool:
    """Wait (under the lock) until a connection newer than `newest` reads from our snapshot.

    That connection is mariadb-dump's: it starts its transaction right after connecting. Its
    read view must be open and equal to ours (connection `own`): a transaction is listed a
    moment before its read view exists. A dump that has already exited read everything under
    the lock, which is as good. Another client connecting as the same user within these
    milliseconds and reading could be taken for the dump; the restore check would then show a
    difference, never hide one.

    Transactions come from SHOW ENGINE INNODB STATUS, which is built when asked:
    information_schema.INNODB_TRX is a cache that is refreshed only when nobody has read it for
    0.1 s, so polling it never sees a new transaction.
    """
    newer = f"SELECT ID FROM information_schema.PROCESSLIST WHERE ID > {newest} AND USER = {_string(user)}"
    deadline = time.monotonic() + DUMP_START_SECONDS
    while time.monotonic() < deadline:
        candidates = {int(row[0]) for row in session.rows(newer, CONNECT_TIMEOUT_SECONDS)}
        if candidates:
            views = _read_views(session)
            if own in views and any(views.get(candidate) == views[own] for candidate in candidates):
                return True
        if process.exited():
            return True
        time.sleep(POLL_SECONDS)
    return False


def _read_views(session: ClientSession) -> dict[int, str]:
    """Connection id → read view of each active InnoDB transaction that has one, right now."""
    rows = session.rows("SHOW ENGINE INNODB STATUS", CONNECT_TIMEOUT_SECONDS)
    # Each transaction is a block "---TRANSACTION (0x7f…), ACTIVE 0 sec" naming "MariaDB thread
    # id 142," and, once its snapshot exists, "Trx read view will not see trx with id >= 203,
    # sees < 203".
    status = "\n".join(field for row in rows for field in row)
    views: dict[int, str] = {}
    for block in status.split("---TRANSACTION")[1:]:
        header, _, rest = block.partition("\n")
        thread, view = THREAD_ID.search(rest), READ_VIEW.search(rest)
        if "ACTIVE" in header and thread and view:
            views[int(thread.group(1))] = view.group(1)
    return views


def _unsynchronised(session: ClientSession, command: Command, error: StatementFailed, needed: str) -> DumpProcess:
    """The dump alone, when our session may not lock or look: the manifest will say why."""
    session.close()
    if error.code in ACCESS_DENIED:
        note = f"the fingerprint was taken after the dump: the database user lacks {needed}"
    elif error.code == LOCK_WAIT_TIMEOUT:
        note = (
            f"the fingerprint was taken after the dump: FLUSH TABLES WITH READ LOCK waited more than "
            f"{LOCK_WAIT_SECONDS} s for running writes"
        )
    else:
        note = f"the fingerprint was taken after the dump: {error.message}"
    return DumpProcess(command, note)


def _session(location: ServerLocation, password: str | None, database: str) -> ClientSession:
    command = _tool_command(location, password, "mariadb", *CLIENT_OPTIONS, *([database] if database else []))
    session = ClientSession(command, location.display(), location.password(password))
    try:
        session.rows("SELECT 1", CONNECT_TIMEOUT_SECONDS * 2)  # connected, and the database exists
    except BaseException:
        session.close()
        raise
    return session


def dump_plan(rows: Rows) -> DumpPlan:
    """Whether the dump can hold the history of the database's system-versioned tables, and a
    warning for each kind of data it cannot keep exactly."""
    warnings: list[str] = []
    versioned = _versioned_tables(rows)
    blocker = _history_blocker(rows, versioned) if versioned else None
    if blocker is not None:
        names = ", ".join(table.name for table in versioned)
        warnings.append(
            f"system-versioned {'table' if len(versioned) == 1 else 'tables'} {names}: only the current rows "
            f"are in the snapshot, not the history ({blocker}); a restore starts the history anew"
        )
    floats = [f"{table}.{column}" for table, column in rows(INEXACT_FLOAT_QUERY)]
    if floats:
        warnings.append(
            f"FLOAT {'column' if len(floats) == 1 else 'columns'} {', '.join(floats)}: mariadb-dump writes FLOAT "
            "values with 6 significant digits, so a restore gives longer ones back rounded (and its check "
            "fails); make them DOUBLE, or DECIMAL for exact decimals, to keep every digit"
        )
    return DumpPlan(history=bool(versioned) and blocker is None, warnings=tuple(warnings))


def _versioned_tables(rows: Rows) -> list[VersionedTable]:
    return [
        VersionedTable(name=name, start=start, end=end, by_transaction=data_type.lower() != "timestamp")
        for name, start, end, data_type in rows(VERSIONED_QUERY)
    ]


def _history_blocker(rows: Rows, versioned: list[VersionedTable]) -> str | None:
    """Why the history of `versioned` cannot be dumped and restored; None when it can."""
    by_transaction = [table.name for table in versioned if table.by_transaction]
    if by_transaction:
        return (
            f"mariadb-dump cannot dump the history of a table versioned by transaction ID "
            f"({', '.join(by_transaction)}), and dumps the history of every table or of none"
        )
    if not client_dumps_history():
        return "this mariadb-dump has no --dump-history, which came with the MariaDB 10.11 client"
    settings = {name.lower(): value for name, value in rows(HISTORY_SETTINGS_QUERY)}
    if "system_versioning_insert_history" not in settings:
        return "the server cannot write history rows back: system_versioning_insert_history came with MariaDB 10.11"
    secure_timestamp = settings.get("secure_timestamp", "NO")
    if secure_timestamp.upper() != "NO":
        return f"the server's secure_timestamp = {secure_timestamp} forbids writing history rows back"
    return None


@functools.cache
def client_ignores_table_data() -> bool:
    """Whether the mariadb-dump on PATH has --ignore-table-data (asked once per process)."""
    try:
        return IGNORE_TABLE_DATA in run_capture(Command(("mariadb-dump", "--help")), timeout=CONNECT_TIMEOUT_SECONDS)
    except SourceError:
        return False


@functools.cache
def client_dumps_history() -> bool:
    """Whether the mariadb-dump on PATH has --dump-history (asked once per process)."""
    try:
        return DUMP_HISTORY in run_capture(Command(("mariadb-dump", "--help")), timeout=CONNECT_TIMEOUT_SECONDS)
    except SourceError:
        return False


def _database_info(
    rows: Rows, engine: str, history: bool | None = None, rows_excluded: frozenset[str] = frozenset()
) -> DatabaseInfo:
    """Server version, per-table counts and checksums, migration version, all on one connection.

    With `history` the system-versioned tables' history is fingerprinted too (the dump holds
    it); None decides as `dump_plan` does, for a database restored from such a dump. The tables
    in `rows_excluded` (dumped without their rows) are not read: each is given empty, as its
    restore holds it.
    """
    version, database = rows("SELECT VERSION(), DATABASE()")[0]
    listed = rows(
        "SELECT table_name, COALESCE(engine, ''), table_type FROM information_schema.tables"
        f" WHERE table_schema = DATABASE() AND table_type IN {TABLE_TYPES} ORDER BY table_name"
    )
    empty = {name: TableInfo(name=name, rows=0, checksum="0") for name, _, _ in listed if name in rows_excluded}
    listed = [row for row in listed if row[0] not in empty]
    engines = {row[0]: row[1] for row in listed}
    versioned = [row[0] for row in listed if row[2] == "SYSTEM VERSIONED"]
    names = sorted(engines)
    tables: list[TableInfo] = []
    if names:
        counts = " UNION ALL ".join(f"SELECT {_string(name)}, COUNT(*) FROM {_identifier(name)}" for name in names)
        counted = {row[0]: int(row[1]) for row in rows(counts)}
        checksummed = [name for name in names if name not in versioned]
        periods = [table for table in _versioned_tables(rows) if table.name in versioned] if versioned else []
        if history is None:
            history = bool(periods) and _history_blocker(rows, periods) is None
        sums = {**_checksums(rows, database, checksummed), **_row_sums(rows, versioned)}
        histories = _history_sums(rows, periods) if history else {}
        tables = [
            TableInfo(
                name=name,
                rows=counted[name],
                checksum=sums[name],
                consistent=engines[name].lower() in SNAPSHOT_ENGINES,
                history_rows=histories[name][0] if name in histories else None,
                history_checksum=histories[name][1] if name in histories else None,
            )
            for name in names
        ]
    tables = sorted([*tables, *empty.values()], key=lambda table: table.name)
    migration_table, migration_version = _migration(rows, set(names))  # an emptied one holds no version
    return DatabaseInfo(
        engine=engine,
        server_version=version,
        tables=tables,
        migration_version=migration_version,
        migration_table=migration_table,
    )


def _checksums(rows: Rows, database: str, names: list[str]) -> dict[str, str]:
    """CHECKSUM TABLE of each table: computed live from the rows (the stored one of `CHECKSUM
    TABLE ... QUICK` is MyISAM only), and inside a transaction from the transaction's snapshot."""
    if not names:
        return {}
    found = rows("CHECKSUM TABLE " + ", ".join(_identifier(name) for name in names))
    return {table_name(row[0], database): row[1] for row in found}


def _row_sums(rows: Rows, names: list[str]) -> dict[str, str]:
    """Checksums of system-versioned tables, from their current rows.

    CHECKSUM TABLE includes the hidden ROW START and ROW END columns, which a restore sets to
    the time of the restore, so it never matches the source's; the sum of the rows' hashes
    leaves them (and the history) out.
    """
    if not names:
        return {}
    columns = _columns(rows, names)
    sums = " UNION ALL ".join(
        f"SELECT {_string(name)}, ({row_hash_sum(name, columns.get(name, []))})" for name in names
    )
    return {row[0]: row[1] for row in rows(sums)}


def _history_sums(rows: Rows, tables: list[VersionedTable]) -> dict[str, tuple[int, str]]:
    """Every row version of system-versioned tables whose history is dumped, counted and summed
    with their periods' times, which a restore of the history gives back exactly."""
    if not tables:
        return {}
    columns = _columns(rows, [table.name for table in tables])
    sums: dict[str, tuple[int, str]] = {}
    for table in tables:
        count, checksum = rows(history_hash_sum(table.name, columns.get(table.name, []), table.start, table.end))[0]
        sums[table.name] = (int(count), checksum)
    return sums


def _columns(rows: Rows, names: list[str]) -> dict[str, list[Column]]:
    """The columns of tables `names` that their rows' text is made of (no period columns)."""
    columns: dict[str, list[Column]] = {}
    for table, column, _type, data_type, charset, _collation in rows(COLUMNS_QUERY.format(schema="DATABASE()")):
        if table in names:
            columns.setdefault(table, []).append(Column(column, data_type, charset))
    return columns


# Annotated so that mypy checks the class against the Protocol.
ADAPTER: DatabaseAdapter = MysqlAdapter()


def _tool_command(location: ServerLocation, password: str | None, tool: str, *arguments: str) -> Command:
    """A MariaDB client command: connection in flags, the password only in MYSQL_PWD.

    The password is always set (empty when there is none) so that one from the user's option
    files or environment cannot be used for a URL that names another server.
    """
    argv = [tool]
    socket = _socket(location)
    if socket:
        argv += [f"--socket={socket}", "--protocol=SOCKET"]
    elif location.host:
        argv.append(f"--host={location.host}")
    if location.port and not socket:
        argv.append(f"--port={location.port}")
    if location.user:
        argv.append(f"--user={location.user}")
    return Command((*argv, *arguments), env={"MYSQL_PWD": location.password(password) or ""})


def _socket(location: ServerLocation) -> str | None:
    """The server's unix socket: `?socket=PATH`, or a host that is a path
    (`mysql://root@%2Frun%2Fmysqld%2Fmysqld.sock/shop`). Any other URL option is refused, not dropped."""
    socket = location.host if location.host and location.host.startswith("/") else None
    check_url_options("mysql", location.display(), (name for name, _ in location.options))
    for _, value in location.options:
        socket = value
    return socket


def _query(
    location: ServerLocation, password: str | None, statement: str, database: str | None = None
) -> list[list[str]]:
    """Run one statement in the `mariadb` client and return its rows as tab-separated fields."""
    target = location.database if database is None else database
    command = _tool_command(
        location,
        password,
        "mariadb",
        *CLIENT_OPTIONS,
        "--batch",
        "--skip-column-names",
        "--execute",
        statement,
        *([target] if target else []),
    )
    try:
        output = run_capture(command, timeout=QUERY_TIMEOUT_SECONDS)
    except SourceError as error:
        secret = location.password(password)
        raise SourceError(
            f"MariaDB query on {location.display()} failed: {redact(error.message, secret)}",
            "check the URL, that the server runs and the credentials",
        ) from None
    # Rows end at "\n" only: a carriage return or form feed inside a field is not escaped.
    lines = output.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [batch_fields(line) for line in lines]


def _drop_stale_scratch(location: ServerLocation, password: str | None) -> None:
    """Drop the scratch databases a killed verification or diff left behind (a day old, see
    stale_scratch_names), except one a connection still uses (MariaDB's DROP DATABASE would
    wait for its locks, then drop it from under it). Best effort: a user who may not list or
    drop them still gets the new scratch database."""
    listed = (
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'lockstep\\_verify\\_%'"
        " AND schema_name NOT IN (SELECT db FROM information_schema.processlist WHERE db IS NOT NULL)"
    )
    try:
        names = [row[0] for row in _query(location, password, listed, database="") if row]
        for name in stale_scratch_names(names):
            _administer(location, password, f"DROP DATABASE IF EXISTS {_identifier(name)}")
    except SourceError:
        pass


def _administer(location: ServerLocation, password: str | None, statement: str) -> None:
    """Run a statement that must not select the database (it may not exist yet, or be dropped)."""
    _query(location, password, statement, database="")


def _migration(rows: Rows, tables: set[str]) -> tuple[str | None, str | None]:
    """The first migration table found and its current version."""
    queries = {
        "alembic_version": "SELECT GROUP_CONCAT(version_num ORDER BY version_num SEPARATOR ',') FROM alembic_version",
        "schema_migrations": "SELECT MAX(version) FROM schema_migrations",
        "django_migrations": "SELECT CONCAT(app, '.', name) FROM django_migrations ORDER BY id DESC LIMIT 1",
    }
    for table in MIGRATION_TABLES:
        if table in tables:
            found = rows(queries[table])
            value = found[0][0] if found and found[0] else ""
            return table, None if value in ("", "NULL") else value
    return None, None


def table_name(qualified: str, database: str) -> str:
    """The table in CHECKSUM TABLE's or CHECK TABLE's "database.table": either name may hold a
    dot, so the database's own name is taken off rather than split at a dot."""
    return qualified.removeprefix(database + ".")


def _identifier(name: str) -> str:
    return identifier(name)


def _string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
