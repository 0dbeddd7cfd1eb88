"""PostgreSQL: dumps with `pg_dump`, restores with `pg_restore`, inspects through psycopg.

Dump format: custom (`--format=custom --compress=0`), not plain SQL. Measured on a generated
160 MB database (four 150k-row tables), then 30 rows updated in one table and one row inserted
in another, dumped again and chunked with the repository's chunker:

    plain SQL            167.9 MB, 25.5 % of the second dump new (the updated table)
    custom, -Z0          170.9 MB, 26.7 % new
    restore  psql (plain) 2.1 s  |  pg_restore -j2 (custom, from a file) 1.7 s

Uncompressed, the custom format deduplicates as well as plain SQL (the repository compresses
with zstd anyway; pg_dump's own compression would defeat deduplication), and it allows a
parallel `pg_restore --jobs` from a file (also when the dump was written to a pipe, as here),
selective restores (`pg_restore --list`), and large objects without client-side quoting.
A restore reads the dump as a stream and loads it with postgresql_loader.py: the schema by
pg_restore from the table of contents alone, the table data on two COPY connections (a big table
is split between them), the indexes on two connections, the rest by `pg_restore --jobs`. On the
1 GB shop database that replaced writing the dump to a temporary file (2.3 s) and
`pg_restore --jobs=2` on it (~10.5 s, the `events` table loading on one core). A dump the loader
does not understand (large objects, another format version) still goes through a temporary
file and `pg_restore --jobs`; such a file written by pg_dump to a pipe has no data offsets in its
table of contents, so every parallel worker would scan it for its table: `fill_in_data_offsets`
writes them in first (pg_restore --jobs=2 on the shop dump: 21.9 s without, 10.4 s with).
"""

from __future__ import annotations

import contextlib
import functools
import io
import mmap
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import psycopg
from psycopg import sql

from lockstep.databases.base import (
    DUMP_FAILURE_HINT,
    MIGRATION_TABLES,
    DatabaseAdapter,
    DatabaseInfo,
    DatabaseSummary,
    DumpFormat,
    LargeObjectsInfo,
    MaterializedViewInfo,
    RestoredTables,
    SequenceInfo,
    ServerLocation,
    TableInfo,
    is_scratch,
    redact,
    require_scratch,
    scratch_name,
    stale_scratch_names,
    with_database,
)
from lockstep.databases.fingerprinted_dump import FingerprintedDump
from lockstep.databases.postgresql_archive import (
    BLOCK_DATA,
    BLOCK_LARGE_OBJECTS,
    OFFSET_NOT_SET,
    OFFSET_SET,
    ArchiveHead,
    ArchiveReader,
    DatabaseCollation,
    IncompleteHead,
    parse_head,
    read_head,
)
from lockstep.databases.postgresql_large_objects import large_objects_info
from lockstep.databases.table_patterns import TableSelection, references_to_emptied, select_tables
from lockstep.databases.url_options import LIBPQ_OPTIONS, check_url_options
from lockstep.errors import SourceError, UsageError
from lockstep.process import Command, StreamingProcess, run_with_input

if TYPE_CHECKING:
    from lockstep.databases.postgresql_roles import RolesLeftOut
    from lockstep.databases.postgresql_tables import TableSelection as TablesSelection

CONNECT_TIMEOUT_SECONDS = 10
# "row-hash-sum": sums of 64-bit row hashes (see _ROW_HASH). "-2": the same, with the settings
# that shape a value's text pinned (TEXT_SETTINGS) for the tables and columns hashed as text.
# "-3": also the OID alias types (regclass, regtype, ...) hashed by their text, with search_path
# pinned too (REG_TEXT_SETTINGS), since a restore gives the objects they name new OIDs; and an
# inheritance child's columns hashed in name order, since a restore may reorder them.
# "-4": an inheritance parent counted and hashed without its children's rows (FROM ONLY), which
# the manifest lists under their own names: a parent's count was its children's too.
CHECKSUM_ALGORITHM = "row-hash-sum-4"
OID_ALIAS_CHECKSUM_ALGORITHM = "row-hash-sum-3"
PINNED_TEXT_CHECKSUM_ALGORITHM = "row-hash-sum-2"
LEGACY_CHECKSUM_ALGORITHM = "row-hash-sum"
# The session settings a value's text depends on, fixed while fingerprinting, so a table hashed
# as text (json, xml, geometric columns; enums inside composites) gets the same checksum
# whatever PGTZ, DateStyle or the role's defaults were when the snapshot or the check ran.
TEXT_SETTINGS = (
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
)
# And since row-hash-sum-3: a regclass's text is its name qualified as search_path requires;
# pinned to pg_catalog alone, every name but the built-in ones is schema-qualified.
REG_TEXT_SETTINGS = (("search_path", "pg_catalog"),)
MAINTENANCE_DATABASE = "postgres"

Connection = psycopg.Connection[tuple[Any, ...]]

# Types whose values hash by OID: enums (hash_enum hashes the label's OID, which a restore
# assigns anew), since row-hash-sum-3 the OID alias types (a regclass is the table's OID, a
# regtype the type's: new ones after a restore), and every type built on one: arrays, domains,
# composites and ranges of them. {by_oid_base} is filled in per algorithm.
#
# The types are found by walking "built on" edges (a type, and one it is built on) from the base
# ones. The edges are listed once, so each step is a hash join: a join condition with an OR per
# kind of type and correlated subqueries took 0.5 s (enums) to 2.2 s (with the OID aliases) on
# every fingerprint, on a database of four tables.
_TABLES_QUERY_TEMPLATE = """
WITH RECURSIVE built_on(type, base) AS MATERIALIZED (
    SELECT oid, typelem FROM pg_type WHERE typcategory = 'A' AND typelem <> 0
    UNION ALL
    SELECT oid, typbasetype FROM pg_type WHERE typtype = 'd'
    UNION ALL
    SELECT t.oid, a.atttypid FROM pg_type t JOIN pg_attribute a ON a.attrelid = t.typrelid
    WHERE t.typtype = 'c' AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT rngtypid, rngsubtype FROM pg_range
), by_oid(oid) AS (
    SELECT oid FROM pg_type WHERE {by_oid_base}
    UNION
    SELECT built_on.type FROM by_oid JOIN built_on ON built_on.base = by_oid.oid
)
SELECT n.nspname, c.relname,
       ARRAY(SELECT a.attname FROM pg_index i
             JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position) ON true
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
             WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.position),
       ARRAY(SELECT a.attname FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum),
       ARRAY(SELECT a.attname FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               AND a.atttypid IN (SELECT oid FROM by_oid) ORDER BY a.attnum),
       NOT c.relispartition AND EXISTS (SELECT FROM pg_inherits i WHERE i.inhrelid = c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
ORDER BY n.nspname, c.relname
"""

_ENUMS = "typtype = 'e'"
_ENUMS_AND_OID_ALIASES = (
    "typtype = 'e' OR (typnamespace = 'pg_catalog'::regnamespace AND typname IN ('regclass', 'regcollation',"
    " 'regconfig', 'regdictionary', 'regnamespace', 'regoper', 'regoperator', 'regproc', 'regprocedure',"
    " 'regrole', 'regtype'))"
)
TABLES_QUERY = _TABLES_QUERY_TEMPLATE.replace("{by_oid_base}", _ENUMS_AND_OID_ALIASES)
# As row-hash-sum and row-hash-sum-2 manifests were made: only enums hashed as text.
_TABLES_QUERY_ENUMS_ONLY = _TABLES_QUERY_TEMPLATE.replace("{by_oid_base}", _ENUMS)


# The materialized views, with what TABLES_QUERY says of a table, and whether each holds rows.
_MATERIALIZED_VIEWS_QUERY = TABLES_QUERY.replace("WHERE c.relkind = 'r'", "WHERE c.relkind = 'm'").replace(
    "NOT c.relispartition AND EXISTS (SELECT FROM pg_inherits i WHERE i.inhrelid = c.oid)", "c.relispopulated"
)

# The sequences a dump sets (pg_dump writes a SEQUENCE SET for each, extensions' own aside).
_SEQUENCES = """
SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
"""

_VIEW_DEFINITION = (
    "SELECT pg_catalog.pg_get_viewdef(pg_catalog.format('%%I.%%I', %s::text, %s::text)::pg_catalog.regclass)"
)
# How pg_dump writes a sequence's value into its SEQUENCE SET entry.
_SETVAL = re.compile(r",\s*(-?\d+),\s*(true|false)\);\s*$")


# The tables TABLES_QUERY fingerprints, by name only.
_TABLE_NAMES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
ORDER BY n.nspname, c.relname
"""


class PostgresqlAdapter:
    """The `postgresql://` adapter (also `postgres://`)."""

    engine = "postgresql"
    # Recorded in the manifest: the table checksums are sums of 64-bit row hashes (see
    # _ROW_HASH); the md5 over rows in key order before it had no name. Manifests of the
    # legacy algorithm are checked by inspecting the way they were made (inspect_as).
    checksum_algorithm = CHECKSUM_ALGORITHM
    comparable_checksum_algorithms = (
        CHECKSUM_ALGORITHM,
        OID_ALIAS_CHECKSUM_ALGORITHM,
        PINNED_TEXT_CHECKSUM_ALGORITHM,
        LEGACY_CHECKSUM_ALGORITHM,
    )
    # A stream: restore() loads the table data from it in parallel (postgresql_loader.py).
    dump_format = DumpFormat(name="postgresql-custom", extension=".dump", seekable_restore_is_faster=False)

    # What _fingerprint gives a table without rows: the manifest of a schema-only dump.
    empty_table_checksum = f"{0:016x}"

    def dump(
        self, url: str, password: str | None, schema_only: bool = False, exclude_table_data: Sequence[str] = ()
    ) -> PostgresqlDump:
        """pg_dump inside a snapshot exported from a transaction we keep open.

        The same snapshot then serves `consistent_info()`, so the manifest's row counts and
        checksums describe exactly the rows in the dump, even while the application writes.
        `schema_only`: pg_dump --schema-only, an archive without TABLE DATA entries.
        `exclude_table_data`: the tables the patterns match in that snapshot are given to pg_dump
        by their exact names (--exclude-table-data), and not read by the fingerprint either.
        """
        location = ServerLocation.parse(url)
        connection = _connect(location, password, location.database)
        try:
            connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            connection.read_only = True
            snapshot = _scalar(connection, "SELECT pg_export_snapshot()")
            selection = TableSelection((), ())
            excluded: list[tuple[str, str]] = []
            partitions: dict[str, list[str]] = {}
            if exclude_table_data and not schema_only:
                tables = {
                    table_name(str(schema), str(table)): (str(schema), str(table))
                    for schema, table in connection.execute(_TABLE_NAMES).fetchall()
                }
                partitions = _partitions(connection)
                selection = select_tables(exclude_table_data, tables, partitions)
                excluded = [tables[name] for name in selection.tables]
            warnings = selection.warnings() + _references_to_emptied(connection, set(selection.tables), partitions)
            process = StreamingProcess(
                _tool_command(
                    location,
                    password,
                    "pg_dump",
                    "--format=custom",
                    "--compress=0",
                    f"--snapshot={snapshot}",
                    *(("--schema-only",) if schema_only else ()),
                    *(f"--exclude-table-data={_exact_pattern(schema, table)}" for schema, table in excluded),
                    _dbname_argument(location.database),
                ),
                DUMP_FAILURE_HINT,
            )
        except BaseException:
            connection.close()
            raise
        dump = PostgresqlDump(process, connection, location, schema_only, frozenset(selection.tables))
        dump.warnings = warnings
        return dump

    def inspect(self, url: str, password: str | None) -> DatabaseInfo:
        return self.inspect_as(url, password, CHECKSUM_ALGORITHM)

    def inspect_as(self, url: str, password: str | None, algorithm: str | None) -> DatabaseInfo:
        """inspect(), with checksums computed as a manifest of `algorithm` recorded them (the
        legacy one in the session's own settings, row-hash-sum-2 with only enums hashed as
        text); any other algorithm gets the current one."""
        location = ServerLocation.parse(url)
        with _connect(location, password, location.database) as connection:
            # One snapshot for all tables, so counts and checksums describe a single moment.
            # Not read-only: the check may lift FORCE ROW LEVEL SECURITY from a table this user
            # owns, inside a savepoint it rolls back (_fingerprint_all_rows); nothing is kept.
            connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            try:
                info = _database_info(connection, location, algorithm)
                return replace(info, **_beyond_tables(connection, with_sequences=True))
            except psycopg.errors.InsufficientPrivilege as error:
                raise SourceError(
                    f"cannot read every row of {location.display()}: {str(error).strip()}",
                    "check it as the tables' owner, a superuser or a role with BYPASSRLS, with SELECT on every "
                    "table (row-level security would hide rows from this role, so its counts would be short)",
                ) from None
            except psycopg.Error as error:
                raise SourceError(f"cannot inspect {location.display()}: {str(error).strip()}") from None
            finally:
                connection.rollback()

    def summarize(self, url: str, password: str | None) -> DatabaseSummary:
        location = ServerLocation.parse(url)
        try:
            with _connect(location, password, location.database) as connection:
                connection.read_only = True
                names = [table_name(schema, table) for schema, table in connection.execute(_TABLE_NAMES).fetchall()]
                migration_table, migration_version = _migration(connection, set(names))
                version = _scalar(connection, "SHOW server_version")
        except psycopg.Error as error:
            raise SourceError(f"cannot inspect {location.display()}: {str(error).strip()}") from None
        return DatabaseSummary(self.engine, version, names, migration_version, migration_table)

    def restore(self, url: str, password: str | None, source: IO[bytes] | Path, create: bool) -> None:
        self._restore(url, password, source, create, None)

    def check_restore(self, url: str, password: str | None, source: IO[bytes]) -> None:
        """Refuse, from the head of the dump alone, a restore that would be refused once begun
        (a policy naming a role the target server lacks and one it has: postgresql_roles.py),
        so that a restore over a database holding data refuses before emptying it."""
        head, _ = read_head(source.read)
        _roles_left_out(ServerLocation.parse(url), password, head)

    def materialized_views_as_defined(self, url: str, password: str | None, names: list[str]) -> set[str]:
        """Those of the materialized views `names` that hold exactly the rows their query gives
        now (see restore.refreshed_views_excused); one that cannot be evaluated is not among them."""
        location = ServerLocation.parse(url)
        wanted, as_defined = set(names), set()
        with _connect(location, password, location.database) as connection:
            connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            for name, value in TEXT_SETTINGS + REG_TEXT_SETTINGS:
                connection.execute("SELECT pg_catalog.set_config(%s, %s, false)", (name, value))
            for schema, view, _key, columns, by_oid, populated in connection.execute(
                _MATERIALIZED_VIEWS_QUERY
            ).fetchall():
                name = table_name(schema, view)
                if name not in wanted or not populated:
                    continue
                column_names, as_text = [str(c) for c in columns], {str(c) for c in by_oid}
                try:
                    with connection.transaction():
                        row = connection.execute(_VIEW_DEFINITION, (schema, view)).fetchone()
                        query = sql.SQL(str(row[0] if row else "").strip().rstrip(";"))
                        stored = _fingerprint(connection, schema, view, column_names, as_text)
                        defined = _fingerprint(connection, schema, view, column_names, as_text, source=query)
                except psycopg.Error:
                    continue
                if (stored.rows, stored.checksum) == (defined.rows, defined.checksum):
                    as_defined.add(name)
            connection.rollback()
        return as_defined

    def restore_and_inspect(
        self, url: str, password: str | None, source: IO[bytes], create: bool, algorithm: str | None = None
    ) -> DatabaseInfo:
        """restore(), then what inspect_as(`algorithm`) would say: the tables while the last
        pg_restore step (foreign keys, triggers, sequence values: no rows change) still runs,
        the sequences, large objects and materialized views (refreshed in that step) after it."""
        location = ServerLocation.parse(url)
        found: list[DatabaseInfo] = []

        def fingerprint() -> None:
            # Autocommit: each table's query holds its lock only while it runs, so it can wait
            # for pg_restore's ALTER TABLE but never hold one up across tables.
            with _connect(location, password, location.database, autocommit=True) as connection:
                try:
                    found.append(_database_info(connection, location, algorithm))
                except psycopg.Error as error:
                    raise SourceError(f"cannot inspect {location.display()}: {str(error).strip()}") from None

        left_out = self._restore(url, password, source, create, fingerprint)
        if not found:
            return replace(self.inspect_as(url, password, algorithm), left_out=left_out)
        try:
            with _connect(location, password, location.database) as connection:
                connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                try:
                    return replace(found[0], **_beyond_tables(connection, with_sequences=True), left_out=left_out)
                finally:
                    connection.rollback()
        except psycopg.Error as error:
            raise SourceError(f"cannot inspect {location.display()}: {str(error).strip()}") from None

    def _restore(
        self,
        url: str,
        password: str | None,
        source: IO[bytes] | Path,
        create: bool,
        alongside_last_step: Callable[[], None] | None,
    ) -> list[str]:
        """The restore; returns what it left out (grants and policies naming roles the target
        server lacks, see postgresql_roles.py), one sentence each."""
        location = ServerLocation.parse(url)
        hint = f"{location.display()} may be partly restored; drop it before trying again"
        if isinstance(source, Path):
            with source.open("rb") as file:
                head, _ = read_head(file.read)
            left = _roles_left_out(location, password, head)
            if create:
                self._create_if_missing(location, password, head)
            if head is not None:
                self._match_encoding(location, password, head)
            # Rewritten in place into what pg_dump writes to a file itself: the same dump.
            fill_in_data_offsets(source)
            self._restore_file(location, password, source, hint, listed=_listed(head, left))
            _grant(location, password, left.statements, hint)
            return left.left_out
        head, first_bytes = read_head(source.read)
        # Before anything is created: a policy naming a missing role refuses the restore.
        left = _roles_left_out(location, password, head)
        if create:
            self._create_if_missing(location, password, head)
        if head is not None:
            self._match_encoding(location, password, head)
        # Imported here: only restores load, and `snapshot create` starts sooner without it.
        from lockstep.databases.postgresql_loader import ParallelLoader, plan_load, restrict

        owners = head is not None and _can_keep_owners(location, password, {entry.owner for entry in head.entries})
        plan = None if head is None else plan_load(head)
        if head is None or plan is None:
            # Not an archive the loader understands (large objects, another version): the whole
            # dump goes to a file for pg_restore --jobs.
            self._restore_stream_through_file(
                location, password, first_bytes, source, hint, owners, _listed(head, left)
            )
            _grant(location, password, left.statements, hint)
            return left.left_out
        if left.dump_ids:
            plan = restrict(plan, [entry.dump_id for entry in head.entries if entry.dump_id not in left.dump_ids])
        loader = ParallelLoader(
            lambda *arguments: self._restore_command(location, password, *arguments, owners=owners),
            lambda: _connect(location, password, location.database, autocommit=True),
            hint,
            _restore_jobs(),
        )
        loader.run(head, plan, first_bytes, source, alongside_last_step)
        _grant(location, password, left.statements, hint)
        return left.left_out

    def restore_tables(
        self, url: str, password: str | None, source: IO[bytes] | Path, create: bool, tables: list[str]
    ) -> RestoredTables:
        """The tables `tables` of the dump, with what belongs to them (postgresql_tables.py).

        A stream goes through the parallel loader restricted to those entries: the other
        tables' data blocks are read past, so no copy of the dump is written (restoring one
        small table of a 100 GB dump wrote all 100 GB to a temporary file). A dump the loader
        cannot plan (large objects, another version) still goes to a file for
        `pg_restore --use-list`, as does a dump that already is a file."""
        location = ServerLocation.parse(url)
        hint = f"{location.display()} may be partly restored; drop it before trying again"
        if isinstance(source, Path):
            return self._restore_tables_from_file(location, password, source, create, tables, hint)
        # Imported here: only restores load, and `snapshot create` starts sooner without it.
        from lockstep.databases.postgresql_loader import ParallelLoader, plan_load, restrict
        from lockstep.databases.postgresql_tables import check_tables

        head, first_bytes = read_head(source.read)
        if head is None:
            raise _not_readable_for_tables()
        check_tables(head, tables)
        plan = plan_load(head)
        if plan is None:
            descriptor, name = tempfile.mkstemp(prefix="lockstep-restore-", suffix=self.dump_format.extension)
            path = Path(name)
            try:
                with os.fdopen(descriptor, "wb") as output:
                    output.write(first_bytes)
                    shutil.copyfileobj(source, output, 1 << 20)
                return self._restore_tables_from_file(location, password, path, create, tables, hint)
            finally:
                path.unlink(missing_ok=True)
        selection, grants = _tables_selection(location, password, head, tables)
        if create:
            self._create_if_missing(location, password, head)
        self._match_encoding(location, password, head)
        wanted = set(selection.dump_ids)
        owners = _can_keep_owners(
            location, password, {entry.owner for entry in head.entries if entry.dump_id in wanted}
        )
        loader = ParallelLoader(
            lambda *arguments: self._restore_command(location, password, *arguments, owners=owners),
            lambda: _connect(location, password, location.database, autocommit=True),
            hint,
            _restore_jobs(),
        )
        loader.run(head, restrict(plan, selection.dump_ids), first_bytes, source)
        _grant(location, password, grants, hint)
        return RestoredTables(left_out=selection.left_out, partitions=selection.partitions)

    def _restore_tables_from_file(
        self, location: ServerLocation, password: str | None, path: Path, create: bool, tables: list[str], hint: str
    ) -> RestoredTables:
        """restore_tables from a dump file, by `pg_restore --use-list`."""
        from lockstep.databases.postgresql_tables import check_tables

        with path.open("rb") as file:
            head, _ = read_head(file.read)
        if head is None:
            raise _not_readable_for_tables()
        check_tables(head, tables)
        selection, grants = _tables_selection(location, password, head, tables)
        if create:
            self._create_if_missing(location, password, head)
        self._match_encoding(location, password, head)
        fill_in_data_offsets(path)
        wanted = set(selection.dump_ids)
        owners = _can_keep_owners(
            location, password, {entry.owner for entry in head.entries if entry.dump_id in wanted}
        )
        with tempfile.TemporaryDirectory(prefix="lockstep-restore-") as folder:
            list_file = Path(folder) / "tables.list"
            list_file.write_text("".join(f"{dump_id};\n" for dump_id in selection.dump_ids))
            command = self._restore_command(
                location, password, f"--jobs={_restore_jobs()}", f"--use-list={list_file}", str(path), owners=owners
            )
            with open(os.devnull, "rb") as nothing:
                run_with_input(command, nothing, hint)
        _grant(location, password, grants, hint)
        return RestoredTables(left_out=selection.left_out, partitions=selection.partitions)

    def _restore_command(
        self, location: ServerLocation, password: str | None, *arguments: str, owners: bool = False
    ) -> Command:
        """pg_restore; `owners` keeps the dump's object owners (see _can_keep_owners)."""
        command = _tool_command(
            location, password, "pg_restore", *(() if owners else ("--no-owner",)), "--exit-on-error"
        )
        if any(argument.startswith("--file") for argument in arguments):
            return Command((*command.argv, *arguments), env=command.env)
        return Command((*command.argv, _dbname_argument(location.database), *arguments), env=command.env)

    def _restore_file(
        self,
        location: ServerLocation,
        password: str | None,
        path: Path,
        hint: str,
        owners: bool = False,
        listed: list[int] | None = None,
    ) -> None:
        """pg_restore --jobs from a file: every entry, or only those `listed` (--use-list)."""
        with tempfile.TemporaryDirectory(prefix="lockstep-restore-") as folder:
            chosen: tuple[str, ...] = ()
            if listed is not None:
                list_file = Path(folder) / "restore.list"
                list_file.write_text("".join(f"{dump_id};\n" for dump_id in listed))
                chosen = (f"--use-list={list_file}",)
            command = self._restore_command(
                location, password, f"--jobs={_restore_jobs()}", *chosen, str(path), owners=owners
            )
            with open(os.devnull, "rb") as nothing:
                run_with_input(command, nothing, hint)

    def _restore_stream_through_file(
        self,
        location: ServerLocation,
        password: str | None,
        first_bytes: bytes,
        rest: IO[bytes],
        hint: str,
        owners: bool = False,
        listed: list[int] | None = None,
    ) -> None:
        descriptor, name = tempfile.mkstemp(prefix="lockstep-restore-", suffix=self.dump_format.extension)
        path = Path(name)
        try:
            with os.fdopen(descriptor, "wb") as output:
                output.write(first_bytes)
                shutil.copyfileobj(rest, output, 1 << 20)
            fill_in_data_offsets(path)
            self._restore_file(location, password, path, hint, owners, listed)
        finally:
            path.unlink(missing_ok=True)

    def create_scratch(self, url: str, password: str | None) -> str:
        location = ServerLocation.parse(url)
        name = scratch_name()
        with _connect(location, password, MAINTENANCE_DATABASE, autocommit=True) as connection:
            _drop_stale_scratch(connection)
            _execute(connection, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)), location)
        return with_database(url, name)

    def drop_database(self, url: str, password: str | None) -> None:
        location = ServerLocation.parse(url)
        require_scratch(location.database, location.display())
        with _connect(location, password, MAINTENANCE_DATABASE, autocommit=True) as connection:
            statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(location.database))
            _execute(connection, statement, location)

    def _create_if_missing(self, location: ServerLocation, password: str | None, head: ArchiveHead | None) -> None:
        with _connect(location, password, MAINTENANCE_DATABASE, autocommit=True) as connection:
            if _encoding_of(connection, location.database) is None:
                _create_database(connection, location, head)

    def _match_encoding(self, location: ServerLocation, password: str | None, head: ArchiveHead) -> None:
        """Make sure the target stores text in the dump's encoding, before anything is restored.

        In another encoding the server would convert every value (a LATIN1 dump into a UTF8
        database), or refuse some, and the restore check would fail on text that is not the
        snapshot's. A scratch database (verify, diff) is lockstep's own and still empty: it is
        made again in the dump's encoding. Any other target is refused, untouched."""
        with _connect(location, password, MAINTENANCE_DATABASE, autocommit=True) as connection:
            encoding = _encoding_of(connection, location.database)
            if encoding is None or encoding == head.server_encoding:
                return
            if is_scratch(location.database):
                drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(location.database))
                _execute(connection, drop, location)
                _create_database(connection, location, head)
                return
        raise UsageError(
            f"{location.display()} stores text as {encoding}, but the snapshot's database was "
            f"{head.server_encoding}: the restored text would not be the snapshot's",
            f"restore into a database that does not exist yet (lockstep creates it as {head.server_encoding}), "
            f"or create it with CREATE DATABASE ... TEMPLATE template0 ENCODING '{head.server_encoding}' "
            "LOCALE 'C'",
        )


class PostgresqlDump(FingerprintedDump):
    """A running pg_dump and the transaction whose snapshot it reads; both end with the dump.

    Large objects and materialized views are read in that snapshot too. Sequence values are
    not transactional (nextval is never rolled back, nor hidden from a snapshot), so no query
    gives the ones pg_dump wrote: they are taken from the dump itself, from the SEQUENCE SET
    entries of its table of contents, which pg_dump writes first."""

    def __init__(
        self,
        process: StreamingProcess,
        connection: Connection,
        location: ServerLocation,
        schema_only: bool = False,
        rows_excluded: frozenset[str] = frozenset(),
    ) -> None:
        self._connection = connection
        self._location = location
        self._schema_only = schema_only
        self.rows_excluded = tuple(sorted(rows_excluded))  # tables dumped without their rows
        self.warnings: tuple[str, ...] = ()  # exclude_table_data: patterns matching nothing, foreign keys
        super().__init__(process, thread_name="pg-fingerprint")
        self._head = _HeadTap(process.stdout)
        self.stdout = cast(IO[bytes], self._head)

    def _fingerprint(self) -> DatabaseInfo:
        if self._schema_only:
            # No row is dumped, so none is read: the tables come from the catalog, each empty as
            # its restore will be (hashing every row only to list the tables took as long as a
            # full snapshot's fingerprint). pg_dump --schema-only leaves out large objects and
            # the materialized views' REFRESH too.
            info = _catalog_info(self._connection)
            views = _materialized_views(self._connection, rows=False)
            return replace(info, large_objects=LargeObjectsInfo(0, _EMPTY_SUM), materialized_views=views)
        info = _database_info(self._connection, self._location, rows_excluded=frozenset(self.rows_excluded))
        return replace(info, **_beyond_tables(self._connection, with_sequences=False))

    def consistent_info(self) -> DatabaseInfo:
        """As the base class says, with the sequence values the dump's table of contents holds
        (None when it was not read yet, or is not one this adapter can parse)."""
        info = super().consistent_info()
        head = self._head.parsed()
        return replace(info, sequences=None if head is None else _sequences_in_head(head))

    def _explain(self, error: BaseException) -> BaseException:
        if isinstance(error, psycopg.Error):
            return SourceError(f"cannot inspect {self._location.display()}: {str(error).strip()}")
        return error

    def _stop_fingerprint(self) -> None:
        if self._fingerprinting.is_alive():
            self._connection.cancel()
        self._fingerprinting.join()

    def _close_session(self) -> None:
        self._connection.close()


class _HeadTap(io.RawIOBase):
    """pg_dump's output passed through unchanged, its first bytes kept until the table of
    contents in them parses (tried at doubling sizes, so a big one is parsed a few times only)."""

    LIMIT = 256 << 20  # a table of contents bigger than this is not looked for

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__()
        self._stream = stream
        self._kept = bytearray()
        self._next_try = 1 << 16
        self._head: ArchiveHead | None = None
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = int(self._stream.readinto(buffer) or 0)  # type: ignore[attr-defined]
        if not self._done:
            if count:
                self._kept += memoryview(buffer)[:count]
            if len(self._kept) >= self._next_try or not count:
                self._try(final=not count)
        return count

    def parsed(self) -> ArchiveHead | None:
        """The table of contents, once the bytes read so far hold it."""
        if not self._done:
            self._try(final=False)
        return self._head

    def _try(self, final: bool) -> None:
        try:
            self._head = parse_head(bytes(self._kept))
        except IncompleteHead:
            self._next_try = 2 * len(self._kept)
            if not (final or len(self._kept) > self.LIMIT):
                return
        except (ValueError, IndexError):
            pass
        self._done = True
        self._kept = bytearray()


def _sequences_in_head(head: ArchiveHead) -> list[SequenceInfo]:
    """The values a restore of the dump gives its sequences: its SEQUENCE SET entries."""
    found: list[SequenceInfo] = []
    for entry in head.entries:
        if entry.description == "SEQUENCE SET" and (value := _SETVAL.search(entry.definition)):
            found.append(SequenceInfo(table_name(entry.namespace, entry.tag), int(value[1]), value[2] == "true"))
    return sorted(found, key=lambda sequence: sequence.name)


def _catalog_info(connection: Connection) -> DatabaseInfo:
    """The tables TABLES_QUERY would fingerprint, from the catalog alone, each as a restore of a
    schema-only dump holds it: no rows, the checksum of none. No table's rows are read (the
    migration table's version aside)."""
    names = [table_name(str(schema), str(table)) for schema, table in connection.execute(_TABLE_NAMES).fetchall()]
    migration_table, migration_version = _migration(connection, set(names))
    return DatabaseInfo(
        engine="postgresql",
        server_version=_scalar(connection, "SHOW server_version"),
        tables=[TableInfo(name=name, rows=0, checksum=_EMPTY_SUM) for name in names],
        migration_version=migration_version,
        migration_table=migration_table,
    )


def _beyond_tables(connection: Connection, with_sequences: bool) -> dict[str, Any]:
    """The sequences (unless the caller has them), large objects and materialized views, for
    DatabaseInfo: one query each, the second of a sequence's only when there are any."""
    for name, value in TEXT_SETTINGS + REG_TEXT_SETTINGS:
        connection.execute("SELECT pg_catalog.set_config(%s, %s, false)", (name, value))
    found: dict[str, Any] = {
        "large_objects": large_objects_info(connection),
        "materialized_views": _materialized_views(connection),
    }
    if with_sequences:
        found["sequences"] = _sequences(connection)
    return found


def _sequences(connection: Connection) -> list[SequenceInfo]:
    """Every sequence's last_value and is_called, read in one statement (pg_sequences hides a
    last_value whose is_called is false)."""
    names = [(str(schema), str(name)) for schema, name in connection.execute(_SEQUENCES).fetchall()]
    if not names:
        return []
    statement = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {}::int, last_value, is_called FROM {}").format(sql.Literal(position), sql.Identifier(*name))
        for position, name in enumerate(names)
    )
    values = {int(row[0]): (int(row[1]), bool(row[2])) for row in connection.execute(statement).fetchall()}
    return [
        SequenceInfo(table_name(*names[position]), last_value, is_called)
        for position, (last_value, is_called) in sorted(values.items())
    ]


_EMPTY_SUM = f"{0:016x}"


def _materialized_views(connection: Connection, rows: bool = True) -> list[MaterializedViewInfo]:
    """Each materialized view: populated or not and, with `rows`, its rows' count and checksum
    as a table's. One made WITH NO DATA cannot be read: it is recorded as unpopulated."""
    views: list[MaterializedViewInfo] = []
    for schema, name, _key, columns, by_oid, populated in connection.execute(_MATERIALIZED_VIEWS_QUERY).fetchall():
        if not (populated and rows):
            views.append(MaterializedViewInfo(table_name(schema, name), False, 0, _EMPTY_SUM))
            continue
        table = _fingerprint(connection, schema, name, [str(c) for c in columns], {str(c) for c in by_oid})
        views.append(MaterializedViewInfo(table.name, True, table.rows, table.checksum))
    return views


def _drop_stale_scratch(connection: Connection) -> None:
    """Drop the scratch databases a killed verification or diff left behind (a day old, see
    stale_scratch_names). Without FORCE: one still in use is left alone. Best effort: a user
    who may not drop them still gets the new scratch database."""
    rows = connection.execute(r"SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE 'lockstep\_verify\_%'")
    for name in stale_scratch_names(str(row[0]) for row in rows.fetchall()):
        with contextlib.suppress(psycopg.Error):
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def _encoding_of(connection: Connection, database: str) -> str | None:
    """The database's encoding (`UTF8`, `LATIN1`, ...); None when it does not exist."""
    row = connection.execute(
        "SELECT pg_catalog.pg_encoding_to_char(encoding) FROM pg_catalog.pg_database WHERE datname = %s", (database,)
    ).fetchone()
    return None if row is None else str(row[0])


def _create_database(connection: Connection, location: ServerLocation, head: ArchiveHead | None) -> None:
    """CREATE DATABASE, in the dump's encoding and collation when they are not template1's.

    A database like template1 is made from it, as before. Otherwise template0, with the dumped
    database's locale provider and locales when this server has them (an ICU database made from
    a libc template1 sorted text another way: ORDER BY name gave B, a where it gave a, B), else
    for another encoding its locale or C, which fits every encoding (the row checksums do not
    depend on the locale)."""
    name = sql.Identifier(location.database)
    plain = sql.SQL("CREATE DATABASE {}").format(name)
    template = _template1(connection)
    collation = None if head is None else head.database_collation()
    same_encoding = head is None or head.server_encoding == template.get("encoding")
    if head is None or (same_encoding and (collation is None or _has_collation(template, collation))):
        _execute(connection, plain, location)
        return
    if collation is not None and collation.collate and collation.ctype:
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            name, sql.Literal(head.server_encoding), sql.Literal(collation.collate), sql.Literal(collation.ctype)
        )
        if collation.provider == "icu" and collation.icu_locale:
            statement = sql.SQL("{} LOCALE_PROVIDER icu ICU_LOCALE {}").format(
                statement, sql.Literal(collation.icu_locale)
            )
        if _try_create(connection, statement, location):
            return
    if same_encoding:
        _execute(connection, plain, location)
        return

    def create(locale: str) -> sql.Composed:
        return sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING {} LOCALE {}").format(
            name, sql.Literal(head.server_encoding), sql.Literal(locale)
        )

    locale = head.database_locale()
    if locale and locale != "C" and _try_create(connection, create(locale), location):
        return
    _execute(connection, create("C"), location)


def _try_create(connection: Connection, statement: sql.Composed, location: ServerLocation) -> bool:
    """Run a CREATE DATABASE; False when this server lacks the locale or it does not fit."""
    try:
        connection.execute(statement)
        return True
    except (psycopg.errors.WrongObjectType, psycopg.errors.InvalidParameterValue, psycopg.errors.FeatureNotSupported):
        return False  # this server has no such locale, or it does not fit the encoding
    except psycopg.Error as error:
        raise SourceError(f"PostgreSQL at {location.display()} refused: {str(error).strip()}") from None


def _template1(connection: Connection) -> dict[str, Any]:
    """template1's encoding and locale columns (datlocprovider and daticulocale since 15)."""
    row = connection.execute(
        "SELECT pg_catalog.pg_encoding_to_char(d.encoding), pg_catalog.to_jsonb(d) - 'datacl'"
        " FROM pg_catalog.pg_database d WHERE d.datname = 'template1'"
    ).fetchone()
    if row is None:
        return {}
    return {**dict(row[1]), "encoding": str(row[0])}


def _has_collation(template: dict[str, Any], collation: DatabaseCollation) -> bool:
    provider = {"c": "libc", "i": "icu"}.get(str(template.get("datlocprovider", "c")), "libc")
    return (provider, template.get("datcollate"), template.get("datctype")) == (
        collation.provider,
        collation.collate,
        collation.ctype,
    ) and (provider != "icu" or template.get("daticulocale") == collation.icu_locale)


def _not_readable_for_tables() -> SourceError:
    return SourceError(
        "the dump is not a custom-format archive whose table of contents lockstep reads,"
        " so its tables cannot be restored one by one",
        "restore the whole database with --to URL and copy the table from there",
    )


def _restore_jobs() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _database_info(
    connection: Connection,
    location: ServerLocation,
    algorithm: str | None = CHECKSUM_ALGORITHM,
    rows_excluded: frozenset[str] = frozenset(),
) -> DatabaseInfo:
    """The fingerprint, with checksums as a manifest of `algorithm` recorded them: the legacy
    one in the session's own settings, row-hash-sum-2 with TEXT_SETTINGS pinned and only enums
    hashed as text, row-hash-sum-3 with an inheritance parent's rows counting its children's,
    anything else (None too) the current way. The tables in `rows_excluded` (dumped without
    their rows) are not read: each is given as its restore holds it, empty."""
    settings: tuple[tuple[str, str], ...] = ()
    tables_query = _TABLES_QUERY_ENUMS_ONLY
    current = algorithm not in (LEGACY_CHECKSUM_ALGORITHM, PINNED_TEXT_CHECKSUM_ALGORITHM)
    only = current and algorithm != OID_ALIAS_CHECKSUM_ALGORITHM
    if algorithm == PINNED_TEXT_CHECKSUM_ALGORITHM:
        settings = TEXT_SETTINGS
    elif current:
        settings, tables_query = TEXT_SETTINGS + REG_TEXT_SETTINGS, TABLES_QUERY
    # Every row or an error, never the rows a policy lets this user see (see _fingerprint_all_rows).
    for name, value in (*settings, ("row_security", "off")):
        connection.execute("SELECT pg_catalog.set_config(%s, %s, false)", (name, value))
    version = _scalar(connection, "SHOW server_version")
    tables: list[TableInfo] = []
    for schema, table, _key_columns, columns, by_oid, inherits in connection.execute(tables_query).fetchall():
        if table_name(schema, table) in rows_excluded:
            tables.append(TableInfo(name=table_name(schema, table), rows=0, checksum=_EMPTY_SUM))
            continue
        as_text = {str(column) for column in by_oid}
        names = [str(column) for column in columns]
        if current and inherits:
            # pg_dump re-creates an inheritance child with INHERITS (parent): the parent's
            # columns first, whatever the order the child had (ALTER TABLE ... INHERIT, a
            # column added to the parent later). Its values are hashed in column name order,
            # which the restore keeps.
            names.sort()
        tables.append(_fingerprint_all_rows(connection, schema, table, names, as_text, only))
    # A migration table dumped without rows holds no version in the snapshot.
    migration_table, migration_version = _migration(connection, {t.name for t in tables} - rows_excluded)
    return DatabaseInfo(
        engine="postgresql",
        server_version=version,
        tables=tables,
        migration_version=migration_version,
        migration_table=migration_table,
    )


# COPY text never holds a NUL byte, so in a table's data block five of them can only be the
# length-0 chunk that ends it (a sign byte and a 4-byte zero).
_END_OF_TABLE_DATA = b"\x00" * 5


def fill_in_data_offsets(path: Path) -> bool:
    """Write the data offsets into a custom-format dump that pg_dump wrote to a pipe.

    pg_dump seeks back and writes them itself when its output is a file; into a pipe it cannot,
    and then every parallel pg_restore worker scans the file from the start for its table. The
    result is the file pg_dump would have written. Anything unexpected (another format version,
    compression, a block the table of contents does not announce) leaves the file untouched:
    pg_restore still works, only slower. Returns whether offsets were written.
    """
    try:
        with open(path, "r+b") as file, mmap.mmap(file.fileno(), 0) as data:
            head = parse_head(data)
            if head is None:
                return False
            unset = [entry for entry in head.entries if entry.offset_flag == OFFSET_NOT_SET]
            fields = {entry.dump_id: entry.offset_flag_position for entry in unset}
            blocks = _data_blocks(data, head, set(fields))
            if not blocks:
                return False
            for dump_id, start in blocks.items():
                field = fields[dump_id]
                data[field] = OFFSET_SET
                data[field + 1 : field + 1 + head.offset_size] = start.to_bytes(head.offset_size, "little")
            return True
    except (OSError, ValueError, IndexError, IncompleteHead):
        return False


def _data_blocks(data: mmap.mmap, head: ArchiveHead, expected: set[int]) -> dict[int, int]:
    """Dump ID -> start of its data block, for the blocks that follow the table of contents;
    empty unless every block is expected and they end exactly at the end of the file."""
    reader = ArchiveReader(data)
    reader.position, reader.int_size = head.end, head.int_size
    blocks: dict[int, int] = {}
    size = len(data)
    while reader.position < size:
        start = reader.position
        kind, dump_id = reader.byte(), reader.integer()
        if dump_id not in expected or dump_id in blocks:
            return {}
        blocks[dump_id] = start
        if kind == BLOCK_DATA:
            end = data.find(_END_OF_TABLE_DATA, reader.position)
            if end < 0:
                return {}
            reader.position = end + len(_END_OF_TABLE_DATA)
        elif kind == BLOCK_LARGE_OBJECTS:
            while reader.integer() != 0:  # each large object: its OID, then chunks to a 0 length
                while (length := reader.integer()) != 0:
                    reader.skip(length)
        else:
            return {}
    return blocks if reader.position == size else {}


# Annotated so that mypy checks the class against the Protocol.
ADAPTER: DatabaseAdapter = PostgresqlAdapter()


def libpq_options(location: ServerLocation) -> dict[str, str]:
    """The libpq parameters for `location`: host, port and user from the URL, then its query
    parameters, checked (one of the same name overrides), and lockstep's connect timeout unless
    the URL sets one."""
    from_url = {"host": location.host, "port": str(location.port) if location.port else None, "user": location.user}
    checked = {name: value for name, value in from_url.items() if value}
    check_url_options("postgresql", location.display(), (name for name, _ in location.options))
    checked.update(location.options)
    checked.setdefault("connect_timeout", str(CONNECT_TIMEOUT_SECONDS))
    return checked


def _can_keep_owners(location: ServerLocation, password: str | None, owners: set[str]) -> bool:
    """Whether the restore can give every object its dumped owner: the connecting user is a
    superuser and each owning role exists on the target server. Otherwise pg_restore runs with
    --no-owner and the connecting user owns everything, as a restore onto another server needs
    (a non-superuser's ALTER ... OWNER TO also needs the new owner to hold CREATE on the schema,
    which an application's roles often do not). Restoring in place as a superuser with
    --no-owner took every table from the application's role, which then could not read its data."""
    names = sorted(owner for owner in owners if owner)
    if not names:
        return False
    with _connect(location, password, location.database, autocommit=True) as connection:
        row = connection.execute(
            "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
            " AND NOT EXISTS (SELECT FROM unnest(%s::text[]) AS o(name)"
            " WHERE NOT EXISTS (SELECT FROM pg_roles r WHERE r.rolname = o.name))",
            (names,),
        ).fetchone()
    return bool(row and row[0])


def _absent_roles(location: ServerLocation, password: str | None, head: ArchiveHead) -> frozenset[str]:
    """The roles the archive's grants, default privileges and policies name that the target
    server lacks: pg_restore would fail on each such entry (and stop, with --exit-on-error), so
    a restore leaves them out and names them instead (postgresql_roles.py). Asked on the
    maintenance database: roles belong to the server, and the target may not exist yet."""
    from lockstep.databases.postgresql_roles import named_roles

    names = sorted(named_roles(head))
    if not names:
        return frozenset()
    with _connect(location, password, MAINTENANCE_DATABASE, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT name FROM unnest(%s::text[]) AS o(name)"
            " WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name)",
            (names,),
        ).fetchall()
    return frozenset(str(row[0]) for row in rows)


def _roles_left_out(location: ServerLocation, password: str | None, head: ArchiveHead | None) -> RolesLeftOut:
    """What a whole restore onto this server leaves out for want of roles (postgresql_roles.py);
    MissingPolicyRoles, before anything is restored, for a policy it cannot leave out. Nothing
    for an archive whose table of contents is not read (`head` None)."""
    # Imported here: postgresql_roles imports postgresql_tables, which imports this module.
    from lockstep.databases.postgresql_roles import RolesLeftOut, leave_out

    return RolesLeftOut() if head is None else leave_out(head, _absent_roles(location, password, head))


def _tables_selection(
    location: ServerLocation, password: str | None, head: ArchiveHead, tables: list[str]
) -> tuple[TablesSelection, list[str]]:
    """The entries restoring `tables` (postgresql_tables.py) onto this server, and the grants to
    run once they are in: grants and policies naming roles it lacks are left out and named in
    `left_out` (postgresql_roles.py: the other grants of the same entry are kept); a policy that
    cannot be left out raises MissingPolicyRoles, before anything is restored."""
    from lockstep.databases.postgresql_roles import leave_out
    from lockstep.databases.postgresql_tables import select_tables

    selection = select_tables(head, tables)
    left = leave_out(head, _absent_roles(location, password, head), selection.dump_ids)
    if not left.dump_ids:
        return selection, []
    kept = replace(
        selection,
        dump_ids=[dump_id for dump_id in selection.dump_ids if dump_id not in left.dump_ids],
        left_out=[*left.left_out, *selection.left_out],
    )
    return kept, left.statements


def _grant(location: ServerLocation, password: str | None, statements: list[str], hint: str) -> None:
    """Run the grants a restore kept of the entries it took from pg_restore (postgresql_roles.py),
    once pg_restore is done, as it would have: each entry's statements in one go."""
    if not statements:
        return
    with _connect(location, password, location.database, autocommit=True) as connection:
        for statement in statements:
            try:
                connection.execute(statement.encode(connection.info.encoding, "surrogateescape"))
            except psycopg.Error as error:
                raise SourceError(
                    f"PostgreSQL at {location.display()} refused a grant: {str(error).strip()}", hint
                ) from None


def _listed(head: ArchiveHead | None, left: RolesLeftOut) -> list[int] | None:
    """The dump IDs for pg_restore --use-list when something is left out; None: all of them."""
    if head is None or not left.dump_ids:
        return None
    return [entry.dump_id for entry in head.entries if entry.dump_id not in left.dump_ids]


def _dbname_argument(database: str) -> str:
    """`--dbname=` for pg_dump and pg_restore as a `dbname=...` connection string (quoted where
    libpq needs it): a bare name with `=` in it, or one that starts with postgresql://, would be
    read as one."""
    return "--dbname=" + psycopg.conninfo.make_conninfo("", dbname=database)


def _tool_command(location: ServerLocation, password: str | None, tool: str, *arguments: str) -> Command:
    """A libpq client command: the connection in libpq's variables, the password only in PGPASSWORD."""
    env = {LIBPQ_OPTIONS[name]: value for name, value in libpq_options(location).items()}
    secret = location.password(password)
    if secret is not None:
        env["PGPASSWORD"] = secret
    return Command((client_program(tool), "--no-password", *arguments), env=env)


# Debian's /usr/bin/pg_dump (and pg_restore, psql) is pg_wrapper, a Perl script that picks a
# version and then runs /usr/lib/postgresql/<version>/bin/pg_dump: 30 ms of start-up each time,
# while the rest of the machine waits for the dump to begin.
_DEBIAN_WRAPPER = Path("/usr/share/postgresql-common/pg_wrapper")
_DEBIAN_VERSIONS = Path("/usr/lib/postgresql")


@functools.cache
def client_program(tool: str) -> str:
    """`tool` as found on PATH, or, when that is Debian's pg_wrapper, the program it would run.

    pg_wrapper runs the newest installed version for a server it does not know as one of this
    machine's clusters, and a newer pg_dump or pg_restore reads and writes every older server's
    data: so the newest installed one. What makes the wrapper choose otherwise (PGCLUSTER,
    ~/.postgresqlrc, /etc/postgresql-common/user_clusters) leaves the choice to it."""
    found = shutil.which(tool)
    if found is None or Path(found).resolve() != _DEBIAN_WRAPPER or _wrapper_configured():
        return tool
    versions = []
    for candidate in _DEBIAN_VERSIONS.glob(f"*/bin/{tool}"):
        version = candidate.parent.parent.name
        if version.isdigit() and os.access(candidate, os.X_OK):
            versions.append((int(version), str(candidate)))
    return max(versions)[1] if versions else tool


def _wrapper_configured() -> bool:
    if os.environ.get("PGCLUSTER"):
        return True
    choices = [Path("/etc/postgresql-common/user_clusters")]
    with contextlib.suppress(RuntimeError):  # no home directory to look in
        choices.append(Path.home() / ".postgresqlrc")
    for path in choices:
        with contextlib.suppress(OSError):
            lines = path.read_text().splitlines()
            if any(line.strip() and not line.lstrip().startswith("#") for line in lines):
                return True
    return False


# Set in every session lockstep opens, as pg_dump and pg_restore do in theirs: an application
# role's statement_timeout (often seconds) cancelled the fingerprint of a big table, so the
# snapshot failed where pg_dump itself went through, and a restore's check, CREATE DATABASE or
# amcheck; an idle_in_transaction_session_timeout could end the session whose snapshot the
# dump reads while it waits for pg_dump.
_SESSION_TIMEOUTS = (
    "SELECT pg_catalog.set_config('statement_timeout', '0', false),"
    " pg_catalog.set_config('idle_in_transaction_session_timeout', '0', false)"
)


def _connect(location: ServerLocation, password: str | None, database: str, autocommit: bool = False) -> Connection:
    options = libpq_options(location)
    secret = location.password(password)
    try:
        conninfo = psycopg.conninfo.make_conninfo("", **options)
        # Autocommit while the timeouts are turned off: in a transaction, the moment between
        # the SET and its COMMIT was idle in transaction, which a role's short
        # idle_in_transaction_session_timeout ended (seen in CI, under load).
        connection = psycopg.connect(conninfo, password=secret, dbname=database, autocommit=True)
    except psycopg.Error as error:
        raise SourceError(
            f"cannot connect to {location.display()}: {redact(str(error).strip(), secret)}",
            "check the URL, that the server runs and the credentials",
        ) from None
    try:
        connection.execute(_SESSION_TIMEOUTS)
        connection.autocommit = autocommit  # the caller may still choose the isolation level
    except psycopg.Error as error:
        connection.close()
        raise SourceError(f"PostgreSQL at {location.display()} refused: {str(error).strip()}") from None
    return connection


def _execute(connection: Connection, statement: sql.Composed, location: ServerLocation) -> None:
    try:
        connection.execute(statement)
    except psycopg.Error as error:
        raise SourceError(f"PostgreSQL at {location.display()} refused: {str(error).strip()}") from None


def _scalar(connection: Connection, query: str | sql.Composed) -> str:
    row = connection.execute(query).fetchone()
    return "" if row is None or row[0] is None else str(row[0])


# Sum, over the rows, of a 64-bit hash of each row: no sort (rows are a multiset, their order is
# not content, and unlike xor a sum still counts duplicate rows), and a parallel aggregate.
# hash_record_extended hashes the values with their types' hash functions (those hash
# partitioning relies on, stable across platforms) and skips the text conversion: on the 1 GB
# shop database 2.3 s against 4.1 s for hashtextextended over the row's text, and 12.6 s for the
# md5 over the rows in key order it replaced. Equal values hash equally, so 1.10 and 1.1 in a
# numeric column do too. A table with a column type that has no hash function (json, xml,
# geometric types) is hashed over its rows' text instead; the choice follows the column types,
# so a dump and its restore make the same one.
#
# The record is built as ROW(column, ...) from the live columns in order, not as the whole-row
# reference `row_data`: the hash is the same (hash_record_extended skips dropped columns and
# never hashes the row type), and PostgreSQL forms the whole row's datum more slowly (the shop
# database's four tables: 1.9 CPU-s against 2.5-2.8, single-threaded).
_ROW_HASH = sql.SQL("SELECT count(*), sum(hash_record_extended({record}, 0)) FROM {relation} AS row_data")
_ROW_TEXT_HASH = sql.SQL("SELECT count(*), sum(hashtextextended({record}::text, 0)) FROM {relation} AS row_data")


_OWNED_WITH_FORCED_ROW_SECURITY = """
SELECT c.relforcerowsecurity AND pg_catalog.pg_has_role(c.relowner, 'USAGE')
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""


def _fingerprint_all_rows(
    connection: Connection, schema: str, table: str, columns: list[str], as_text: set[str], only: bool = False
) -> TableInfo:
    """_fingerprint() over every row of the table, with row_security off: a table whose policies
    apply to this user raises an error instead of being counted short.

    A restore makes one such table itself: run by a role without superuser or BYPASSRLS, it
    owns what it restores, and a table with FORCE ROW LEVEL SECURITY applies its policies to its
    owner too. The check then counted the rows the policies let the role see (often none) and
    reported the restore damaged. As the owner it may lift FORCE: it does so in a transaction
    that is rolled back once the table is fingerprinted, so the table stays as restored."""
    try:
        return _fingerprint(connection, schema, table, columns, as_text, only)
    except psycopg.errors.InsufficientPrivilege:
        row = connection.execute(_OWNED_WITH_FORCED_ROW_SECURITY, (schema, table)).fetchone()
        if not (row and row[0]):
            raise
    name = table_name(schema, table)
    try:
        with connection.transaction():
            statement = sql.SQL("ALTER TABLE {} NO FORCE ROW LEVEL SECURITY").format(sql.Identifier(schema, table))
            connection.execute(statement)
            found = _fingerprint(connection, schema, table, columns, as_text, only)
            raise psycopg.Rollback()
    except psycopg.Error as error:
        raise SourceError(
            f"cannot read every row of {name}: it has FORCE ROW LEVEL SECURITY, and lifting it for the "
            f"check failed: {str(error).strip()}",
            "check it as a superuser or a role with BYPASSRLS",
        ) from None
    return found


def _fingerprint(
    connection: Connection,
    schema: str,
    table: str,
    columns: list[str],
    as_text: set[str] | None = None,
    only: bool = False,
    source: sql.Composable | None = None,
) -> TableInfo:
    """Row count and the sum, modulo 2^64, of a 64-bit hash of each row (see above). Columns in
    `as_text` (enums and types built on them) are hashed by their text, not by OIDs a restore
    renumbers. `only`: an inheritance parent's own rows, without its children's. `source`: the
    rows of that query instead (a materialized view's), hashed as the table's would be."""
    relation: sql.Composable = sql.Identifier(schema, table)
    if only:
        relation = sql.SQL("ONLY {}").format(relation)
    if source is not None:
        relation = sql.SQL("({})").format(source)
    # ROW(row_data.a, ...), never the bare whole-row reference: a column named row_data would win.
    record: sql.Composable = sql.SQL("row_data")
    text: sql.Composable = sql.SQL("row_data")  # the same text as the whole row's
    if columns:
        record = sql.SQL("ROW({})").format(
            sql.SQL(", ").join(_column_value(column, column in (as_text or set())) for column in columns)
        )
        text = sql.SQL("ROW({})").format(sql.SQL(", ").join(_column_value(column, False) for column in columns))
    try:
        with connection.transaction():  # a savepoint: a missing hash function aborts only this
            row = connection.execute(_ROW_HASH.format(record=record, relation=relation)).fetchone()
    except psycopg.errors.UndefinedFunction:
        row = connection.execute(_ROW_TEXT_HASH.format(record=text, relation=relation)).fetchone()
    assert row is not None
    total = 0 if row[1] is None else int(str(row[1]))
    return TableInfo(name=table_name(schema, table), rows=int(str(row[0])), checksum=f"{total % 2**64:016x}")


def table_name(schema: str, table: str) -> str:
    """A table's name in the manifest: `table` in the public schema, else `schema.table`. A part
    with a dot or a double quote in it is quoted as SQL quotes it, so the public table
    "billing.invoices" and the table invoices in the schema billing get names of their own."""

    def part(name: str) -> str:
        return '"' + name.replace('"', '""') + '"' if "." in name or '"' in name else name

    return part(table) if schema == "public" else f"{part(schema)}.{part(table)}"


# Foreign keys as declared: (referencing schema, table, referenced schema, table). One to or
# from a partitioned table is in the catalog once more per partition, a clone not declared there
# (conislocal false), which would name the partitions instead of the table users declared it on.
_FOREIGN_KEYS = """
SELECT cn.nspname, c.relname, rn.nspname, r.relname FROM pg_catalog.pg_constraint k
JOIN pg_catalog.pg_class c ON c.oid = k.conrelid JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
JOIN pg_catalog.pg_class r ON r.oid = k.confrelid JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
WHERE k.contype = 'f' AND k.conislocal ORDER BY 1, 2, 3, 4
"""

# Each partitioned table with the partitions holding its rows, every level down: (schema,
# table, partition's schema, partition), and once with itself as the partition, so that one
# without partitions is listed too. pg_inherits, not pg_partition_tree (PostgreSQL 12+): below
# a partitioned table every child is a partition, never an INHERITS child.
_PARTITIONS = """
WITH RECURSIVE tree (root, relid) AS (
  SELECT c.oid, c.oid FROM pg_catalog.pg_class c WHERE c.relkind = 'p'
  UNION ALL
  SELECT tree.root, i.inhrelid FROM tree JOIN pg_catalog.pg_inherits i ON i.inhparent = tree.relid
)
SELECT pn.nspname, p.relname, n.nspname, c.relname FROM tree
JOIN pg_catalog.pg_class p ON p.oid = tree.root JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
JOIN pg_catalog.pg_class c ON c.oid = tree.relid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE (c.relkind = 'r' OR c.oid = p.oid) AND pn.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1, 2, 3, 4
"""


def _partitions(connection: Connection) -> dict[str, list[str]]:
    """Each partitioned table's manifest name -> those of the partitions holding its rows."""
    partitions: dict[str, list[str]] = {}
    for schema, table, partition_schema, partition in connection.execute(_PARTITIONS).fetchall():
        held = partitions.setdefault(table_name(str(schema), str(table)), [])
        if (partition_schema, partition) != (schema, table):
            held.append(table_name(str(partition_schema), str(partition)))
    return partitions


def _references_to_emptied(
    connection: Connection, excluded: set[str], partitions: dict[str, list[str]]
) -> tuple[str, ...]:
    """A warning per table whose rows are kept with a foreign key to a table whose rows are not:
    its restore cannot add that constraint while rows refer to the emptied table."""
    if not excluded:
        return ()
    foreign_keys = (
        (table_name(str(schema), str(table)), table_name(str(referenced_schema), str(referenced)))
        for schema, table, referenced_schema, referenced in connection.execute(_FOREIGN_KEYS).fetchall()
    )
    consequence = "a restore cannot add it while rows of {table} refer to {referenced}"
    return references_to_emptied(foreign_keys, excluded, consequence, partitions)


def _exact_pattern(schema: str, table: str) -> str:
    """A pg_dump pattern that matches this one table: both parts in double quotes, where no
    character is a pattern character (a double quote itself doubled)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in (schema, table))


def _column_value(column: str, as_text: bool) -> sql.Composable:
    value = sql.Identifier("row_data", column)
    return sql.SQL("{}::text").format(value) if as_text else value


def _migration(connection: Connection, tables: set[str]) -> tuple[str | None, str | None]:
    """The first migration table found and its current version."""
    # Qualified: the fingerprint pins search_path to pg_catalog, and `tables` names the public
    # schema's tables without it.
    queries = {
        "alembic_version": "SELECT string_agg(version_num, ',' ORDER BY version_num) FROM public.alembic_version",
        "schema_migrations": "SELECT max(version)::text FROM public.schema_migrations",
        "django_migrations": "SELECT app || '.' || name FROM public.django_migrations ORDER BY id DESC LIMIT 1",
    }
    for table in MIGRATION_TABLES:
        if table in tables:
            return table, _scalar(connection, queries[table]) or None
    return None, None
