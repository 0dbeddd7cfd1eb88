"""`snapshot diff`: what changed in a live database since a snapshot, table by table.

This is what a data rollback would lose, so it has to be cheap enough to run before every one.
The snapshot's dump is restored next to the live database (a scratch database on the same
server; a temporary file for SQLite), then each table is compared on both sides in two rounds,
with the hashing done by the database:

1. per table, rows are hashed (key and row text) and summed into buckets by key hash, about
   one bucket per 16 rows: one scan on each side, and only the bucket sums cross the wire;
2. only for buckets whose count or sum differ, the (key hash, row hash) pairs are fetched and
   compared: a key on one side only is a row added or removed, the same key with another row
   hash is a row changed.

A table without a primary key is compared as a multiset of row hashes (added and removed, no
"changed"). Rows are hashed over the columns both sides share, so an added column does not
make every row look changed; the column change is reported as a schema difference instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from lockstep.databases import adapter_for
from lockstep.databases.base import ServerLocation, redact_url
from lockstep.errors import LockstepError, SourceError, UsageError
from lockstep.pipeline.manifest import Manifest
from lockstep.pipeline.restore import ServerAccess, database_record, dump_source
from lockstep.repository.repository import Repository
from lockstep.repository.restorer import dump_file, find_node
from lockstep.repository.snapshot import Snapshot
from lockstep.wording import counted

# Buckets per table: at least this many, and about one per BUCKET_ROWS rows (a power of two),
# so that sparse changes leave most buckets equal and few rows have to be fetched.
MIN_BUCKETS = 1024
MAX_BUCKETS = 1 << 20
BUCKET_ROWS = 16
Result = TypeVar("Result")
Buckets = dict[int, tuple[int, int]]  # bucket → (rows, sum of the rows' hashes)


@dataclass(frozen=True)
class ColumnChange:
    """A column added, removed or retyped since the snapshot (live compared with the snapshot)."""

    column: str
    change: str  # "added", "removed" or "type"
    snapshot_type: str | None = None
    live_type: str | None = None

    def to_document(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "change": self.change,
            "snapshot_type": self.snapshot_type,
            "live_type": self.live_type,
        }


@dataclass(frozen=True)
class TableDiff:
    """One table: its rows added, removed and changed in the live database since the snapshot."""

    name: str
    status: str  # "unchanged", "changed", "added" (live only) or "removed" (snapshot only)
    rows_added: int = 0
    rows_removed: int = 0
    rows_changed: int = 0
    key: list[str] = field(default_factory=list)  # the primary key compared on; empty: rows as a multiset
    columns: list[ColumnChange] = field(default_factory=list)
    primary_key_changed: bool = False
    # MariaDB: the table's default collation, (snapshot, live), when it changed. A table without
    # text columns converted to another character set changes nothing else a diff can see.
    default_collation: tuple[str, str] | None = None
    # A table the snapshot holds without its rows (exclude_table_data): the live rows, none of
    # which is in the snapshot (a restore gives the table back empty). None: rows were compared.
    rows_not_in_snapshot: int | None = None

    @property
    def changed(self) -> bool:
        return self.status != "unchanged" or bool(self.rows_not_in_snapshot)

    def to_document(self) -> dict[str, Any]:
        return {
            "table": self.name,
            "status": self.status,
            "rows_added": self.rows_added,
            "rows_removed": self.rows_removed,
            "rows_changed": self.rows_changed,
            "key": list(self.key),
            "columns": [column.to_document() for column in self.columns],
            "primary_key_changed": self.primary_key_changed,
            "default_collation": (
                None
                if self.default_collation is None
                else {"snapshot": self.default_collation[0], "live": self.default_collation[1]}
            ),
            **({} if self.rows_not_in_snapshot is None else {"rows_not_in_snapshot": self.rows_not_in_snapshot}),
        }


@dataclass(frozen=True)
class SequenceDiff:
    """A sequence that moved since the snapshot (rows were added, in a table diff may not even
    list), or one only one side has. Values are (last_value, is_called), None on the side
    without it."""

    name: str
    status: str  # "changed", "added" (live only) or "removed" (snapshot only)
    snapshot: tuple[int, bool] | None
    live: tuple[int, bool] | None

    def to_document(self) -> dict[str, Any]:
        def state(value: tuple[int, bool] | None) -> dict[str, Any] | None:
            return None if value is None else {"last_value": value[0], "is_called": value[1]}

        return {
            "sequence": self.name,
            "status": self.status,
            "snapshot": state(self.snapshot),
            "live": state(self.live),
        }


@dataclass(frozen=True)
class LargeObjectsDiff:
    """PostgreSQL's large objects, by OID: added, removed and changed in the live database."""

    added: int = 0
    removed: int = 0
    changed: int = 0

    @property
    def any(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def to_document(self) -> dict[str, Any]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed}


@dataclass(frozen=True)
class DatabaseDiff:
    """Every table of one database, live compared with a snapshot."""

    name: str
    engine: str
    snapshot_id: str
    live: str  # the live database's URL, without a password
    tables: list[TableDiff]
    seconds: float
    # Against a schema-only snapshot: only the schema is compared, rows are not (none stored).
    schema_only: bool = False
    # PostgreSQL: the sequences that moved, and the large objects (None: not compared).
    sequences: list[SequenceDiff] = field(default_factory=list)
    large_objects: LargeObjectsDiff | None = None

    @property
    def changed(self) -> bool:
        large_objects = self.large_objects is not None and self.large_objects.any
        return any(table.changed for table in self.tables) or bool(self.sequences) or large_objects

    @property
    def changed_tables(self) -> list[TableDiff]:
        return [table for table in self.tables if table.changed]

    def to_document(self) -> dict[str, Any]:
        return {
            "database": self.name,
            "engine": self.engine,
            "snapshot": self.snapshot_id,
            "live": self.live,
            "changed": self.changed,
            "rows_added": sum(table.rows_added for table in self.tables),
            "rows_removed": sum(table.rows_removed for table in self.tables),
            "rows_changed": sum(table.rows_changed for table in self.tables),
            "tables": [table.to_document() for table in self.tables],
            "sequences": [sequence.to_document() for sequence in self.sequences],
            **({"large_objects": self.large_objects.to_document()} if self.large_objects is not None else {}),
            "seconds": round(self.seconds, 3),
            **({"schema_only": True, "rows_compared": False} if self.schema_only else {}),
        }


@dataclass(frozen=True)
class TableShape:
    """A table's columns (name → type, in order), primary key columns and estimated rows."""

    columns: dict[str, str]
    key: list[str]
    estimated_rows: int = 0
    # MariaDB: the table's default collation (its character set's name starts it), which new
    # text columns get. Empty where the engine has none or it was not read: never a change.
    default_collation: str = ""


@dataclass(frozen=True)
class TableQuery:
    """What both sides hash for one table: the same columns, key and bucket count."""

    table: str
    key: list[str]  # empty: rows are compared as a multiset
    columns: list[str]
    bucket_count: int  # a power of two


class _Side(Protocol):
    """One side of a comparison (the live database or the restored snapshot) in one engine's SQL."""

    # Differing buckets past this many are not listed in the query; every row is fetched instead.
    max_listed_buckets: int

    def shapes(self) -> dict[str, TableShape]: ...

    def bucket_sums(self, query: TableQuery) -> Buckets: ...

    def keyed_hashes(self, query: TableQuery, buckets: list[int] | None) -> dict[object, object]:
        """key hash → row hash for the rows in `buckets` (all rows when None)."""
        ...

    def row_hash_counts(self, query: TableQuery, buckets: list[int] | None) -> Counter[object]: ...

    def count(self, table: str) -> int: ...


def diff_database(
    repository: Repository, snapshot: Snapshot, manifest: Manifest, name: str, live: ServerAccess
) -> DatabaseDiff:
    """Compare the live database at `live` with database `name` of the snapshot.

    The scratch copy of the snapshot is always removed, also on failure or Ctrl-C. Raises
    SourceError (naming the database) when either side cannot be read.
    """
    started = time.monotonic()
    record = database_record(manifest, snapshot, name)
    adapter = adapter_for(live.url)
    if adapter.engine != record.engine:
        raise UsageError(f"database {name} is a {record.engine} dump; {redact_url(live.url)} is {adapter.engine}")
    node = find_node(repository, snapshot, record.path)
    sequences: list[SequenceDiff] = []
    large_objects: LargeObjectsDiff | None = None
    try:
        with _snapshot_side(repository, node, adapter.engine, live) as (live_side, snapshot_side):
            tables = (
                compare_schemas(live_side, snapshot_side)
                if record.schema_only
                else compare_sides(live_side, snapshot_side, set(record.rows_excluded))
            )
            # A schema-only snapshot holds no sequence values and no large objects to compare.
            if (
                isinstance(live_side, _PostgresqlSide)
                and isinstance(snapshot_side, _PostgresqlSide)
                and not record.schema_only
            ):
                sequences = compare_sequences(live_side.sequences(), snapshot_side.sequences())
                large_objects = compare_large_objects(
                    live_side.large_object_hashes(), snapshot_side.large_object_hashes()
                )
    except SourceError as error:
        raise SourceError(
            f"database {name}: cannot compare with snapshot {snapshot.short_id}: {error.message}"
        ) from error
    return DatabaseDiff(
        name=name,
        engine=record.engine,
        snapshot_id=snapshot.id,
        live=redact_url(live.url),
        tables=tables,
        seconds=time.monotonic() - started,
        schema_only=record.schema_only,
        sequences=sequences,
        large_objects=large_objects,
    )


@contextlib.contextmanager
def _snapshot_side(repository: Repository, node: Any, engine: str, live: ServerAccess) -> Iterator[tuple[_Side, _Side]]:
    adapter = adapter_for(live.url)
    if engine == "sqlite":
        from lockstep.databases.sqlite import database_path

        with tempfile.TemporaryDirectory(prefix="lockstep-diff-") as directory:
            copy = Path(directory) / "snapshot.sqlite3"
            with copy.open("wb") as output:
                dump_file(repository, node, output)
            with _SqliteSide(database_path(live.url)) as live_side, _SqliteSide(copy) as snapshot_side:
                yield live_side, snapshot_side
        return
    scratch = adapter.create_scratch(live.url, live.password)
    try:
        with dump_source(repository, node, adapter) as source:
            adapter.restore(scratch, live.password, source, create=False)
        if engine == "postgresql":
            with (
                _PostgresqlSide(live.url, live.password) as live_side,
                _PostgresqlSide(scratch, live.password) as snapshot_side,
            ):
                yield live_side, snapshot_side
        elif engine == "mysql":
            yield _MysqlSide(live.url, live.password), _MysqlSide(scratch, live.password)
        else:
            raise UsageError(f"diff does not support {engine} databases")
    finally:
        with contextlib.suppress(LockstepError):
            adapter.drop_database(scratch, live.password)


def compare_sides(live: _Side, snapshot: _Side, rows_excluded: set[str] | None = None) -> list[TableDiff]:
    """Every table on either side, compared; sorted by name. A table in `rows_excluded` (the
    snapshot holds it without rows) has its schema compared and its live rows counted."""
    live_shapes, snapshot_shapes = live.shapes(), snapshot.shapes()
    tables: list[TableDiff] = []
    for name in sorted(set(live_shapes) | set(snapshot_shapes)):
        if name not in snapshot_shapes:
            tables.append(TableDiff(name, "added", rows_added=live.count(name), key=live_shapes[name].key))
            continue
        if name not in live_shapes:
            tables.append(TableDiff(name, "removed", rows_removed=snapshot.count(name), key=snapshot_shapes[name].key))
            continue
        if name in (rows_excluded or set()):
            schema = _compare_schema(name, live_shapes[name], snapshot_shapes[name])
            tables.append(replace(schema, rows_not_in_snapshot=live.count(name)))
            continue
        tables.append(_compare_table(name, live, snapshot, live_shapes[name], snapshot_shapes[name]))
    return tables


def describe_rows_not_in_snapshot(live_rows: int) -> str:
    """A table the snapshot holds without its rows (exclude_table_data), in words."""
    return (
        "rows not in the snapshot (exclude_table_data): a restore gives the table back empty, "
        f"discarding its {counted(live_rows, 'live row')} (no snapshot keeps them)"
    )


def compare_sequences(live: dict[str, tuple[int, bool]], snapshot: dict[str, tuple[int, bool]]) -> list[SequenceDiff]:
    """The sequences whose (last_value, is_called) differ, or that one side lacks; by name."""
    found: list[SequenceDiff] = []
    for name in sorted(set(live) | set(snapshot)):
        now, then = live.get(name), snapshot.get(name)
        if now != then:
            status = "added" if then is None else "removed" if now is None else "changed"
            found.append(SequenceDiff(name, status, then, now))
    return found


def compare_large_objects(live: dict[int, int], snapshot: dict[int, int]) -> LargeObjectsDiff:
    """Large objects by OID: only live, only in the snapshot, or with other contents."""
    return LargeObjectsDiff(
        added=sum(1 for oid in live if oid not in snapshot),
        removed=sum(1 for oid in snapshot if oid not in live),
        changed=sum(1 for oid, content in live.items() if snapshot.get(oid, content) != content),
    )


def compare_schemas(live: _Side, snapshot: _Side) -> list[TableDiff]:
    """Against a schema-only snapshot (it holds no rows): tables added and removed, columns and
    primary keys changed; no row is read or counted."""
    live_shapes, snapshot_shapes = live.shapes(), snapshot.shapes()
    tables: list[TableDiff] = []
    for name in sorted(set(live_shapes) | set(snapshot_shapes)):
        if name not in snapshot_shapes:
            tables.append(TableDiff(name, "added", key=live_shapes[name].key))
        elif name not in live_shapes:
            tables.append(TableDiff(name, "removed", key=snapshot_shapes[name].key))
        else:
            tables.append(_compare_schema(name, live_shapes[name], snapshot_shapes[name]))
    return tables


def _compare_schema(name: str, live_shape: TableShape, snapshot_shape: TableShape) -> TableDiff:
    """A table on both sides by its columns, primary key and default collation, no row read."""
    changes = _column_changes(live_shape, snapshot_shape)
    key_changed = live_shape.key != snapshot_shape.key
    collation = _default_collation_change(live_shape, snapshot_shape)
    status = "changed" if changes or key_changed or collation else "unchanged"
    return TableDiff(
        name,
        status,
        key=live_shape.key,
        columns=changes,
        primary_key_changed=key_changed,
        default_collation=collation,
    )


def _column_changes(live: TableShape, snapshot: TableShape) -> list[ColumnChange]:
    changes = [ColumnChange(c, "added", live_type=t) for c, t in live.columns.items() if c not in snapshot.columns]
    changes += [
        ColumnChange(c, "removed", snapshot_type=t) for c, t in snapshot.columns.items() if c not in live.columns
    ]
    changes += [
        ColumnChange(c, "type", snapshot_type=snapshot.columns[c], live_type=t)
        for c, t in live.columns.items()
        if c in snapshot.columns and snapshot.columns[c] != t
    ]
    return changes


def _default_collation_change(live: TableShape, snapshot: TableShape) -> tuple[str, str] | None:
    """(snapshot, live) default collations when both are known and differ; None otherwise, so
    that a side which does not say (another engine, an older reader) is never a change."""
    if live.default_collation and snapshot.default_collation and live.default_collation != snapshot.default_collation:
        return snapshot.default_collation, live.default_collation
    return None


def bucket_count(estimated_rows: int) -> int:
    """About one bucket per BUCKET_ROWS rows, as a power of two between MIN_ and MAX_BUCKETS."""
    wanted = max(MIN_BUCKETS, estimated_rows // BUCKET_ROWS)
    return min(MAX_BUCKETS, 1 << (wanted - 1).bit_length())


def _on_both(work: Callable[[_Side], Result], live: _Side, snapshot: _Side) -> tuple[Result, Result]:
    """Run the same query on both sides at once: each side is its own connection (or process),
    and the database does the work, so the two scans overlap."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="lockstep-diff") as pool:
        on_snapshot = pool.submit(work, snapshot)
        return work(live), on_snapshot.result()


def _compare_table(
    name: str, live: _Side, snapshot: _Side, live_shape: TableShape, snapshot_shape: TableShape
) -> TableDiff:
    columns = [column for column in live_shape.columns if column in snapshot_shape.columns]
    key = live_shape.key if live_shape.key == snapshot_shape.key and set(live_shape.key) <= set(columns) else []
    changes = _column_changes(live_shape, snapshot_shape)
    key_changed = live_shape.key != snapshot_shape.key
    collation = _default_collation_change(live_shape, snapshot_shape)
    query = TableQuery(name, key, columns, bucket_count(max(live_shape.estimated_rows, snapshot_shape.estimated_rows)))
    live_buckets, snapshot_buckets = _on_both(lambda side: side.bucket_sums(query), live, snapshot)
    differing = sorted(
        bucket
        for bucket in set(live_buckets) | set(snapshot_buckets)
        if live_buckets.get(bucket) != snapshot_buckets.get(bucket)
    )
    added = removed = changed = 0
    if differing:
        listed = len(differing) <= min(live.max_listed_buckets, query.bucket_count // 2)
        wanted = differing if listed else None
        if key:
            live_rows, snapshot_rows = _on_both(lambda side: side.keyed_hashes(query, wanted), live, snapshot)
            added = sum(1 for row_key in live_rows if row_key not in snapshot_rows)
            removed = sum(1 for row_key in snapshot_rows if row_key not in live_rows)
            changed = sum(1 for row_key, row in live_rows.items() if snapshot_rows.get(row_key, row) != row)
        else:
            live_counts, snapshot_counts = _on_both(lambda side: side.row_hash_counts(query, wanted), live, snapshot)
            added = sum((live_counts - snapshot_counts).values())
            removed = sum((snapshot_counts - live_counts).values())
    status = "changed" if (added or removed or changed or changes or key_changed or collation) else "unchanged"
    return TableDiff(
        name,
        status,
        rows_added=added,
        rows_removed=removed,
        rows_changed=changed,
        key=key,
        columns=changes,
        primary_key_changed=key_changed,
        default_collation=collation,
    )


# --- SQLite --------------------------------------------------------------------------------


def _hash63(text: str | int | None) -> int:
    """A 63-bit hash of SQL text (SQLite has no hash function; this one is registered in Python)."""
    data = str(text if text is not None else "").encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.md5(data).digest()[:8], "big") >> 1


def _mix40(key_hash: int, row_hash: int) -> int:
    """A 40-bit hash of a row and its key, small enough that SQLite sums millions without overflow."""
    return _hash63(f"{key_hash}:{row_hash}") >> 23


def _sqlite_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _SqliteSide:
    """A SQLite file, read-only, in one read transaction."""

    max_listed_buckets = 100_000

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise SourceError(f"SQLite database {path} does not exist")
        # Used from one thread at a time, though not always the one that opened it (see _on_both).
        self._connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        self._connection.create_function("lockstep_hash", 1, _hash63, deterministic=True)
        self._connection.create_function("lockstep_mix", 2, _mix40, deterministic=True)

    def __enter__(self) -> _SqliteSide:
        self._connection.execute("BEGIN")
        return self

    def __exit__(self, *exception: object) -> None:
        self._connection.rollback()
        self._connection.close()

    def _run(self, query: str) -> list[tuple[Any, ...]]:
        try:
            return self._connection.execute(query).fetchall()
        except sqlite3.Error as error:
            raise SourceError(f"SQLite query failed: {error}") from None

    def shapes(self) -> dict[str, TableShape]:
        names = [
            str(row[0])
            for row in self._run(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
            )
        ]
        shapes: dict[str, TableShape] = {}
        for name in names:
            info = self._run(f"PRAGMA table_info({_sqlite_identifier(name)})")
            columns = {str(row[1]): str(row[2]).upper() for row in info}
            key = [str(row[1]) for row in sorted((row for row in info if row[5]), key=lambda row: int(row[5]))]
            shapes[name] = TableShape(columns, key, self.count(name))
        return shapes

    @staticmethod
    def _text(columns: list[str]) -> str:
        return " || char(31) || ".join(f"quote({_sqlite_identifier(column)})" for column in columns) or "''"

    def _inner(self, query: TableQuery, multiset: bool = False) -> str:
        row = self._text(query.columns)
        key_text = self._text(query.key) if query.key and not multiset else row
        return (
            f"SELECT kh, rh, kh % {query.bucket_count} AS bucket FROM (SELECT lockstep_hash({key_text}) AS kh, "
            f"lockstep_hash({row}) AS rh FROM {_sqlite_identifier(query.table)})"
        )

    @staticmethod
    def _where(buckets: list[int] | None) -> str:
        if buckets is None:
            return ""
        return " WHERE bucket IN (" + ", ".join(str(int(bucket)) for bucket in buckets) + ")"

    def bucket_sums(self, query: TableQuery) -> Buckets:
        rows = self._run(f"SELECT bucket, count(*), sum(lockstep_mix(kh, rh)) FROM ({self._inner(query)}) GROUP BY 1")
        return {int(row[0]): (int(row[1]), int(row[2])) for row in rows}

    def keyed_hashes(self, query: TableQuery, buckets: list[int] | None) -> dict[object, object]:
        rows = self._run(f"SELECT kh, rh FROM ({self._inner(query)}){self._where(buckets)}")
        return {row[0]: row[1] for row in rows}

    def row_hash_counts(self, query: TableQuery, buckets: list[int] | None) -> Counter[object]:
        rows = self._run(f"SELECT rh, count(*) FROM ({self._inner(query, True)}){self._where(buckets)} GROUP BY rh")
        return Counter({row[0]: int(row[1]) for row in rows})

    def count(self, table: str) -> int:
        return int(self._run(f"SELECT count(*) FROM {_sqlite_identifier(table)}")[0][0])


# --- PostgreSQL ----------------------------------------------------------------------------

_POSTGRESQL_COLUMNS = """
SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), greatest(c.reltuples, 0)::bigint
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
ORDER BY n.nspname, c.relname, a.attnum
"""


class _PostgresqlSide:
    """A PostgreSQL database read in one REPEATABLE READ, read-only transaction.

    Rows are hashed with hashtextextended (64 bits, several times faster than md5 here); both
    sides are on the same server, so they hash alike.
    """

    max_listed_buckets = MAX_BUCKETS  # the buckets travel as one array parameter

    def __init__(self, url: str, password: str | None) -> None:
        import psycopg

        from lockstep.databases.postgresql import REG_TEXT_SETTINGS, TEXT_SETTINGS, _connect

        self._location = ServerLocation.parse(url)
        self._connection = _connect(self._location, password, self._location.database)
        self._connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self._connection.read_only = True
        # Rows are compared by their text, which follows TimeZone, DateStyle, search_path (a
        # regclass), ...: the live database's own settings (ALTER DATABASE ... SET) are not the
        # scratch database's, and every timestamptz row looked changed. Pinned as for checksums.
        for name, value in TEXT_SETTINGS + REG_TEXT_SETTINGS:
            self._run("SELECT pg_catalog.set_config(%s, %s, false)", (name, value))
        self._relations: dict[str, tuple[str, str]] = {}

    def __enter__(self) -> _PostgresqlSide:
        return self

    def __exit__(self, *exception: object) -> None:
        self._connection.rollback()
        self._connection.close()

    def _run(self, query: Any, parameters: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        import psycopg

        try:
            return self._connection.execute(query, parameters).fetchall()
        except psycopg.Error as error:
            raise SourceError(f"PostgreSQL at {self._location.display()}: {str(error).strip()}") from None

    def shapes(self) -> dict[str, TableShape]:
        from lockstep.databases.postgresql import TABLES_QUERY, table_name

        columns: dict[str, dict[str, str]] = {}
        estimates: dict[str, int] = {}
        for schema, relation, column, type_name, estimate in self._run(_POSTGRESQL_COLUMNS):
            name = table_name(str(schema), str(relation))
            self._relations[name] = (str(schema), str(relation))
            columns.setdefault(name, {})[str(column)] = str(type_name)
            estimates[name] = int(estimate)
        shapes: dict[str, TableShape] = {}
        for schema, relation, key, *_ in self._run(TABLES_QUERY):
            name = table_name(str(schema), str(relation))
            self._relations[name] = (str(schema), str(relation))
            shapes[name] = TableShape(
                columns.get(name, {}), [str(column) for column in key or []], estimates.get(name, 0)
            )
        return shapes

    def _relation(self, table: str) -> Any:
        """The table, to be read with ONLY: an inheritance parent's rows without its children's,
        which diff reports under the children's own names."""
        from psycopg import sql

        schema, relation = self._relations[table]
        return sql.Identifier(schema, relation)

    @staticmethod
    def _text(columns: list[str]) -> Any:
        from psycopg import sql

        return sql.SQL("ROW({})::text").format(sql.SQL(", ").join(sql.Identifier(column) for column in columns))

    def _inner(self, query: TableQuery, multiset: bool = False) -> Any:
        from psycopg import sql

        row = self._text(query.columns)
        key_text = self._text(query.key) if query.key and not multiset else row
        return sql.SQL(
            "SELECT kh, rh, kh & {mask} AS bucket FROM (SELECT hashtextextended({key}, 0) AS kh, "
            "hashtextextended({row}, 0) AS rh FROM ONLY {relation}) AS hashed_rows"
        ).format(mask=sql.Literal(query.bucket_count - 1), key=key_text, row=row, relation=self._relation(query.table))

    @staticmethod
    def _where(buckets: list[int] | None) -> Any:
        from psycopg import sql

        return sql.SQL("") if buckets is None else sql.SQL(" WHERE bucket = ANY(%s::bigint[])")

    def bucket_sums(self, query: TableQuery) -> Buckets:
        from psycopg import sql

        statement = sql.SQL(
            "SELECT bucket, count(*), sum(hashtextextended(rh::text, kh)) FROM ({inner}) AS hashed GROUP BY 1"
        ).format(inner=self._inner(query))
        return {int(row[0]): (int(row[1]), int(row[2])) for row in self._run(statement)}

    def keyed_hashes(self, query: TableQuery, buckets: list[int] | None) -> dict[object, object]:
        from psycopg import sql

        statement = sql.SQL("SELECT kh, rh FROM ({inner}) AS hashed{where}").format(
            inner=self._inner(query), where=self._where(buckets)
        )
        return {row[0]: row[1] for row in self._run(statement, None if buckets is None else (buckets,))}

    def row_hash_counts(self, query: TableQuery, buckets: list[int] | None) -> Counter[object]:
        from psycopg import sql

        statement = sql.SQL("SELECT rh, count(*) FROM ({inner}) AS hashed{where} GROUP BY rh").format(
            inner=self._inner(query, multiset=True), where=self._where(buckets)
        )
        rows = self._run(statement, None if buckets is None else (buckets,))
        return Counter({row[0]: int(row[1]) for row in rows})

    def sequences(self) -> dict[str, tuple[int, bool]]:
        """Every sequence's (last_value, is_called), in one statement."""
        import psycopg

        from lockstep.databases.postgresql import _sequences

        try:
            return {
                sequence.name: (sequence.last_value, sequence.is_called) for sequence in _sequences(self._connection)
            }
        except psycopg.Error as error:
            raise SourceError(f"PostgreSQL at {self._location.display()}: {str(error).strip()}") from None

    def large_object_hashes(self) -> dict[int, int]:
        """OID → a 64-bit hash of the large object's OID and contents (none when there are none);
        one over 1 GB is read in pieces."""
        import psycopg

        from lockstep.databases.postgresql_large_objects import large_object_hashes

        try:
            return large_object_hashes(self._connection)
        except psycopg.Error as error:
            raise SourceError(f"PostgreSQL at {self._location.display()}: {str(error).strip()}") from None

    def count(self, table: str) -> int:
        from psycopg import sql

        if table not in self._relations:
            self.shapes()
        rows = self._run(sql.SQL("SELECT count(*) FROM ONLY {}").format(self._relation(table)))
        return int(rows[0][0])


# --- MariaDB / MySQL -----------------------------------------------------------------------


class _MysqlSide:
    """A MariaDB/MySQL database through the `mariadb` client (one statement per call)."""

    # Listed buckets go into the statement, which travels in argv (at most 128 KiB an argument).
    max_listed_buckets = 4096

    def __init__(self, url: str, password: str | None) -> None:
        from lockstep.databases.mysql_rows import Column

        self._location = ServerLocation.parse(url)
        self._password = password
        self._columns: dict[str, dict[str, Column]] = {}  # table → column name → column, from shapes()

    def _run(self, statement: str) -> list[list[str]]:
        from lockstep.databases.mysql import _query

        return _query(self._location, self._password, statement)

    def shapes(self) -> dict[str, TableShape]:
        """Tables and system-versioned tables (their current rows, without the period columns)."""
        from lockstep.databases.mysql import TABLE_TYPES, _string
        from lockstep.databases.mysql_rows import COLUMNS_QUERY, Column, column_type_with_charset

        database = _string(self._location.database)
        estimates: dict[str, int] = {}
        collations: dict[str, str] = {}
        for table, estimate, collation in self._run(
            "SELECT table_name, COALESCE(table_rows, 0), COALESCE(table_collation, '') FROM information_schema.tables"
            f" WHERE table_schema = {database} AND table_type IN {TABLE_TYPES}"
        ):
            estimates[table], collations[table] = int(estimate), collation
        columns: dict[str, dict[str, str]] = {}
        for table, column, type_name, data_type, charset, collation in self._run(COLUMNS_QUERY.format(schema=database)):
            if table in estimates:
                # Rows are hashed as utf8mb4 text, the same before and after `ALTER TABLE ...
                # CONVERT TO CHARACTER SET`: the column's type says what changed.
                columns.setdefault(table, {})[column] = column_type_with_charset(type_name, charset, collation)
                self._columns.setdefault(table, {})[column] = Column(column, data_type, charset)
        keys: dict[str, list[str]] = {}
        for table, column in self._run(
            "SELECT table_name, column_name FROM information_schema.key_column_usage"
            f" WHERE table_schema = {database} AND constraint_name = 'PRIMARY' ORDER BY table_name, ordinal_position"
        ):
            # A system-versioned table's key includes ROW END, which is not hashed; the current
            # rows are unique without it.
            if column in columns.get(table, {}):
                keys.setdefault(table, []).append(column)
        return {
            table: TableShape(table_columns, keys.get(table, []), estimates.get(table, 0), collations.get(table, ""))
            for table, table_columns in columns.items()
        }

    def _text(self, table: str, columns: list[str]) -> str:
        from lockstep.databases.mysql_rows import Column, row_text

        known = self._columns.get(table, {})
        return row_text([known.get(column, Column(column)) for column in columns])

    def _inner(self, query: TableQuery, multiset: bool = False) -> str:
        from lockstep.databases.mysql import _identifier

        row = self._text(query.table, query.columns)
        key_text = self._text(query.table, query.key) if query.key and not multiset else row
        return (
            f"SELECT kh, rh, CAST(CONV(SUBSTR(kh, 1, 8), 16, 10) AS UNSIGNED) % {query.bucket_count} AS bucket"
            f" FROM (SELECT MD5({key_text}) AS kh, MD5({row}) AS rh FROM {_identifier(query.table)}) AS hashed_rows"
        )

    @staticmethod
    def _where(buckets: list[int] | None) -> str:
        if buckets is None:
            return ""
        return " WHERE bucket IN (" + ", ".join(str(int(bucket)) for bucket in buckets) + ")"

    def bucket_sums(self, query: TableQuery) -> Buckets:
        rows = self._run(
            "SELECT bucket, COUNT(*), SUM(CAST(CONV(SUBSTR(MD5(CONCAT(kh, rh)), 1, 10), 16, 10) AS UNSIGNED))"
            f" FROM ({self._inner(query)}) AS hashed GROUP BY 1"
        )
        return {int(row[0]): (int(row[1]), int(row[2])) for row in rows}

    def keyed_hashes(self, query: TableQuery, buckets: list[int] | None) -> dict[object, object]:
        rows = self._run(f"SELECT kh, rh FROM ({self._inner(query)}) AS hashed{self._where(buckets)}")
        return {row[0]: row[1] for row in rows}

    def row_hash_counts(self, query: TableQuery, buckets: list[int] | None) -> Counter[object]:
        rows = self._run(
            f"SELECT rh, COUNT(*) FROM ({self._inner(query, True)}) AS hashed{self._where(buckets)} GROUP BY rh"
        )
        return Counter({row[0]: int(row[1]) for row in rows})

    def count(self, table: str) -> int:
        from lockstep.databases.mysql import _identifier

        return int(self._run(f"SELECT COUNT(*) FROM {_identifier(table)}")[0][0])


__all__ = [
    "ColumnChange",
    "DatabaseDiff",
    "LargeObjectsDiff",
    "SequenceDiff",
    "TableDiff",
    "compare_large_objects",
    "compare_sequences",
    "compare_sides",
    "diff_database",
]
