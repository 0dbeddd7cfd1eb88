"""What every database adapter offers, and the small value types they share.

A coordinated snapshot needs five things from a database, whatever the engine: a consistent
dump as a byte stream (so the repository can chunk and deduplicate it without a temporary
copy), a restore from such a stream, a cheap fingerprint (`inspect`) to prove a restore
matches its source, and a scratch database on the same server to test-restore into. Keeping
the Protocol that small is what lets one module per engine stay readable.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol, runtime_checkable
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from lockstep.errors import UsageError

# Scratch databases carry this prefix, and `drop_database` refuses any other name: an adapter
# inside a deploy tool must never be one typo away from dropping a production database.
# A dump tool that fails (mariadb-dump, pg_dump) most often could not log in or find the database.
DUMP_FAILURE_HINT = "check the URL, that the server runs and the credentials (`lockstep doctor` checks them)"

SCRATCH_PREFIX = "lockstep_verify_"
# A scratch database's name carries the time it was made; one this old was left by a
# verification or diff that was killed (kill -9, OOM, a reboot) and is dropped by the next.
STALE_SCRATCH_SECONDS = 24 * 3600
_DATED_SCRATCH = re.compile(re.escape(SCRATCH_PREFIX) + r"([0-9a-f]{8})_[0-9a-f]{12}")

# The migration tables lockstep recognises, in the order it looks for them.
MIGRATION_TABLES = ("alembic_version", "schema_migrations", "django_migrations")


@dataclass(frozen=True)
class DumpFormat:
    """How an adapter's dump is stored, so a restore (or a human) knows what the bytes are."""

    name: str  # e.g. "postgresql-custom": stable, recorded next to the dump
    extension: str  # the file name suffix a user would give the dump, e.g. ".dump"
    seekable_restore_is_faster: bool  # True when restoring from a file beats restoring from a pipe


@dataclass(frozen=True)
class TableInfo:
    """One table's fingerprint: equal row counts and checksums mean equal contents."""

    name: str
    rows: int
    checksum: str
    # False when the table's engine has no transactional snapshot (MariaDB's MyISAM, Aria,
    # MEMORY): its fingerprint and the dump read it at different moments, so they may differ.
    consistent: bool = True
    # A MariaDB system-versioned table whose history the dump holds: every row version (current
    # ones included) and its checksum, period times included. None where no history is dumped.
    history_rows: int | None = None
    history_checksum: str | None = None


@dataclass(frozen=True)
class SequenceInfo:
    """A sequence's state as a restore sets it (PostgreSQL's setval(name, last_value, is_called)):
    rows added anywhere since move it, and a restore that lost it would hand out used numbers."""

    name: str
    last_value: int
    is_called: bool


@dataclass(frozen=True)
class LargeObjectsInfo:
    """PostgreSQL's large objects (pg_largeobject), which no table lists: how many, and the sum
    of a 64-bit hash of each one's OID and contents (one over 1 GB read in pieces, see
    postgresql_large_objects). `checksum` is None only in what older manifests recorded."""

    count: int
    checksum: str | None


@dataclass(frozen=True)
class MaterializedViewInfo:
    """A materialized view: whether it holds rows (one made WITH NO DATA does not, and stays so
    after a restore), and if so their count and checksum, as for a table."""

    name: str
    populated: bool
    rows: int
    checksum: str


@dataclass(frozen=True)
class DatabaseInfo:
    """A database's fingerprint, compared between a source and its test-restore."""

    engine: str
    server_version: str
    tables: list[TableInfo]
    migration_version: str | None
    migration_table: str | None
    # What the engine carries besides tables (PostgreSQL); None where it was not looked at.
    sequences: list[SequenceInfo] | None = None
    large_objects: LargeObjectsInfo | None = None
    materialized_views: list[MaterializedViewInfo] | None = None
    # Set by a restore_and_inspect: what the restore left out, one sentence each (PostgreSQL:
    # grants and policies naming roles the target server lacks). Empty for an inspection.
    left_out: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DatabaseSummary:
    """A glance at a database that reads no rows: its tables and migration version, for health
    checks, the dashboard and the versions a deploy records (inspect() hashes every row)."""

    engine: str
    server_version: str
    tables: list[str]
    migration_version: str | None
    migration_table: str | None


class DumpStream(Protocol):
    """A dump being produced: read `stdout` to its end, then `finish()` (which raises
    `SourceError` when the dump failed). `kill()` abandons it."""

    @property
    def stdout(self) -> IO[bytes]: ...

    def finish(self) -> None: ...

    def kill(self) -> None: ...


@runtime_checkable
class DatabaseAdapter(Protocol):
    """One database engine. `url` names a database (`postgresql://user@host:5432/shop`); the
    password travels separately so it never lands in a URL that gets logged."""

    engine: str
    dump_format: DumpFormat

    def dump(
        self, url: str, password: str | None, schema_only: bool = False, exclude_table_data: Sequence[str] = ()
    ) -> DumpStream:
        """Start a consistent dump of the database; the caller streams it and calls finish().
        `schema_only`: the structure (tables, indexes, routines...) without any row.
        `exclude_table_data`: patterns (table_patterns.py) of tables dumped without their rows;
        the stream's `rows_excluded` names the tables they matched, its `warnings` the patterns
        that matched none and the kept tables with a foreign key to one of them."""
        ...

    def inspect(self, url: str, password: str | None) -> DatabaseInfo:
        """Server version, per-table row counts and checksums, and the migration version."""
        ...

    def summarize(self, url: str, password: str | None) -> DatabaseSummary:
        """Server version, table names and the migration version, without reading the rows."""
        ...

    def restore(self, url: str, password: str | None, source: IO[bytes] | Path, create: bool) -> None:
        """Load a dump made by `dump` into the (empty) database at `url`, creating it if `create`.

        `source` is a stream, or a Path to a file holding the dump when the engine can restore
        faster from a seekable file (see `DumpFormat.seekable_restore_is_faster`).
        """
        ...

    def create_scratch(self, url: str, password: str | None) -> str:
        """Create an empty database on the same server as `url`; return its URL."""
        ...

    def drop_database(self, url: str, password: str | None) -> None:
        """Drop a scratch database made by `create_scratch` (any other name is refused)."""
        ...


@dataclass(frozen=True)
class RestoredTables:
    """What a restore of some tables left out, one sentence each (a foreign key to a table not
    restored, named with that table), and the partitions that came with a partitioned table
    (the manifest's names: it records those, not the partitioned table)."""

    left_out: list[str]
    partitions: list[str] = field(default_factory=list)


class TableNotInDump(LookupError):
    """A table asked for that the dump does not hold (`name`, as the manifest would name it)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@runtime_checkable
class TableRestoring(Protocol):
    """An adapter that can restore some tables of a dump (`snapshot restore --table`)."""

    def restore_tables(
        self, url: str, password: str | None, source: IO[bytes] | Path, create: bool, tables: list[str]
    ) -> RestoredTables:
        """Load the tables `tables` (the manifest's names) of a dump made by `dump` into the
        missing or empty database at `url`, creating it if `create`: each table's definition,
        rows, indexes and own constraints (and the sequences of its serial or identity columns);
        what refers to a table not restored (a foreign key) is left out and named. A name the
        dump lacks raises TableNotInDump before anything is created."""
        ...


@dataclass(frozen=True)
class ServerLocation:
    """The parts of a database URL the client tools need, with the password kept apart.

    `host` is percent-decoded with its case kept, so `postgresql://app@%2Frun%2Fpostgresql/shop`
    names the socket directory /run/postgresql, as libpq reads it. `options` are the URL's
    query parameters (`?sslmode=require`), in order; each engine's adapter says which it takes."""

    scheme: str
    host: str | None
    port: int | None
    user: str | None
    url_password: str | None
    database: str
    options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, url: str) -> ServerLocation:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError as error:
            raise UsageError(f"the database URL has an invalid port: {redact_url(url)}") from error
        database = unquote(parts.path.lstrip("/"))
        if not database:
            raise UsageError(
                f"the database URL names no database: {redact_url(url)}", "e.g. postgresql://app@db:5432/shop"
            )
        return cls(
            scheme=parts.scheme,
            host=_host(parts.netloc),
            port=port,
            user=unquote(parts.username) if parts.username else None,
            url_password=unquote(parts.password) if parts.password is not None else None,
            database=database,
            options=tuple(parse_qsl(parts.query, keep_blank_values=True)),
        )

    def password(self, given: str | None) -> str | None:
        """The password passed separately wins over one embedded in the URL."""
        return given if given is not None else self.url_password

    def display(self) -> str:
        """The location for messages: never with a password."""
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        query = "?" + _shown_options(self.options) if self.options else ""
        return f"{self.scheme}://{user}{self.host or ''}{port}/{self.database}{query}"


def _shown_options(options: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> str:
    """URL options for messages: the value of any *password* option replaced."""
    return "&".join(f"{name}={'***' if 'password' in name else value}" for name, value in options)


def _host(netloc: str) -> str | None:
    """The host part of a URL's netloc, percent-decoded: `[::1]` gives ::1, `%2Ftmp` gives /tmp."""
    address = netloc.rpartition("@")[2]
    if address.startswith("["):
        host = address[1 : address.find("]")] if "]" in address else address[1:]
    else:
        host = address.partition(":")[0]
    return unquote(host) or None


def redact_url(url: str) -> str:
    """`url` with any embedded password (`user:PASSWORD@`, `?password=`, `?sslpassword=`)
    replaced, for error messages."""
    parts = urlsplit(url)
    options = parse_qsl(parts.query, keep_blank_values=True)
    secret_options = any("password" in name for name, _ in options)
    if parts.password is None and not secret_options:
        return url
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1))
    if secret_options:
        parts = parts._replace(query=_shown_options(options))
    return urlunsplit(parts)


def with_database(url: str, database: str) -> str:
    """`url` pointing at another database on the same server (user, host and options kept)."""
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


def scratch_name() -> str:
    """A fresh scratch database name: dated (see stale_scratch_names) and unguessable, so
    parallel verifications never collide."""
    return f"{SCRATCH_PREFIX}{int(time.time()):08x}_{secrets.token_hex(6)}"


def stale_scratch_names(names: Iterable[str], now: float | None = None) -> list[str]:
    """The scratch names among `names` made more than STALE_SCRATCH_SECONDS ago. Names without a
    date (made before lockstep dated them) are never taken for stale: nothing tells their age."""
    cutoff = (time.time() if now is None else now) - STALE_SCRATCH_SECONDS
    return [name for name in names if (dated := _DATED_SCRATCH.fullmatch(name)) and int(dated[1], 16) < cutoff]


def is_scratch(database: str) -> bool:
    """Whether `database` has a name `create_scratch` gives (lockstep's own, to drop)."""
    return Path(database).name.startswith(SCRATCH_PREFIX)


def require_scratch(database: str, location: str) -> None:
    """Refuse to drop anything that `create_scratch` did not name."""
    if not is_scratch(database):
        raise UsageError(
            f"refusing to drop {location}: only scratch databases named {SCRATCH_PREFIX}* are dropped",
            "drop other databases with the database's own tools",
        )


def redact(text: str, password: str | None) -> str:
    """`text` without the password, for messages built from a tool's or driver's output."""
    if password:
        return text.replace(password, "***")
    return text
