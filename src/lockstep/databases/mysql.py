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
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

from lockstep.databases.base import (
    MIGRATION_TABLES,
    DatabaseAdapter,
    DatabaseInfo,
    DumpFormat,
    ServerLocation,
    TableInfo,
    redact,
    require_scratch,
    scratch_name,
    with_database,
)
from lockstep.errors import SourceError
from lockstep.process import Command, StreamingProcess, run_capture, run_with_input

CONNECT_TIMEOUT_SECONDS = 10
# CHECKSUM TABLE reads every row: minutes on a big database are normal, hours are not.
QUERY_TIMEOUT_SECONDS = 1800
# Options of the `mariadb` client (mariadb-dump has no --connect-timeout).
CLIENT_OPTIONS = ("--default-character-set=utf8mb4", f"--connect-timeout={CONNECT_TIMEOUT_SECONDS}")
DUMP_OPTIONS = (
    "--single-transaction",
    "--routines",
    "--triggers",
    "--events",
    "--hex-blob",
    "--default-character-set=utf8mb4",
    "--skip-dump-date",
)


class MysqlAdapter:
    """The `mysql://` adapter, which also serves `mariadb://`."""

    engine = "mysql"
    dump_format = DumpFormat(name="mysql-sql", extension=".sql", seekable_restore_is_faster=False)

    def dump(self, url: str, password: str | None) -> StreamingProcess:
        location = ServerLocation.parse(url)
        return StreamingProcess(_tool_command(location, password, "mariadb-dump", *DUMP_OPTIONS, location.database))

    def inspect(self, url: str, password: str | None) -> DatabaseInfo:
        location = ServerLocation.parse(url)
        version = _query(location, password, "SELECT VERSION()")[0][0]
        names = [
            row[0]
            for row in _query(
                location,
                password,
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' ORDER BY table_name",
            )
        ]
        tables: list[TableInfo] = []
        if names:
            counts = " UNION ALL ".join(f"SELECT {_string(name)}, COUNT(*) FROM {_identifier(name)}" for name in names)
            checksums = "CHECKSUM TABLE " + ", ".join(_identifier(name) for name in names)
            rows = {row[0]: int(row[1]) for row in _query(location, password, counts)}
            # CHECKSUM TABLE names tables "database.table"; it computes the checksum live from
            # the rows (the stored one of `CHECKSUM TABLE ... QUICK` is MyISAM only).
            sums = {row[0].split(".", 1)[1]: row[1] for row in _query(location, password, checksums)}
            tables = [TableInfo(name=name, rows=rows[name], checksum=sums[name]) for name in names]
        migration_table, migration_version = _migration(location, password, set(names))
        return DatabaseInfo(
            engine=self.engine,
            server_version=version,
            tables=tables,
            migration_version=migration_version,
            migration_table=migration_table,
        )

    def restore(self, url: str, password: str | None, source: IO[bytes] | Path, create: bool) -> None:
        location = ServerLocation.parse(url)
        if create:
            _administer(location, password, f"CREATE DATABASE IF NOT EXISTS {_identifier(location.database)}")
        # --binary-mode: take the dump's bytes as they are (no \r\n or \0 rewriting); DELIMITER
        # still works, which the dump's routines and triggers need.
        command = _tool_command(location, password, "mariadb", *CLIENT_OPTIONS, "--binary-mode", location.database)
        hint = f"{location.display()} may be partly restored; drop it before trying again"
        if isinstance(source, Path):
            with source.open("rb") as stream:
                run_with_input(command, stream, hint)
        else:
            run_with_input(command, source, hint)

    def create_scratch(self, url: str, password: str | None) -> str:
        location = ServerLocation.parse(url)
        name = scratch_name()
        _administer(location, password, f"CREATE DATABASE {_identifier(name)} CHARACTER SET utf8mb4")
        return with_database(url, name)

    def drop_database(self, url: str, password: str | None) -> None:
        location = ServerLocation.parse(url)
        require_scratch(location.database, location.display())
        _administer(location, password, f"DROP DATABASE IF EXISTS {_identifier(location.database)}")


# Annotated so that mypy checks the class against the Protocol.
ADAPTER: DatabaseAdapter = MysqlAdapter()


def _tool_command(location: ServerLocation, password: str | None, tool: str, *arguments: str) -> Command:
    """A MariaDB client command: connection in flags, the password only in MYSQL_PWD.

    The password is always set (empty when there is none) so that one from the user's option
    files or environment cannot be used for a URL that names another server.
    """
    argv = [tool]
    if location.host:
        argv.append(f"--host={location.host}")
    if location.port:
        argv.append(f"--port={location.port}")
    if location.user:
        argv.append(f"--user={location.user}")
    return Command((*argv, *arguments), env={"MYSQL_PWD": location.password(password) or ""})


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
    return [line.split("\t") for line in output.splitlines()]


def _administer(location: ServerLocation, password: str | None, statement: str) -> None:
    """Run a statement that must not select the database (it may not exist yet, or be dropped)."""
    _query(location, password, statement, database="")


def _migration(location: ServerLocation, password: str | None, tables: set[str]) -> tuple[str | None, str | None]:
    """The first migration table found and its current version."""
    queries = {
        "alembic_version": "SELECT GROUP_CONCAT(version_num ORDER BY version_num SEPARATOR ',') FROM alembic_version",
        "schema_migrations": "SELECT MAX(version) FROM schema_migrations",
        "django_migrations": "SELECT CONCAT(app, '.', name) FROM django_migrations ORDER BY id DESC LIMIT 1",
    }
    for table in MIGRATION_TABLES:
        if table in tables:
            rows = _query(location, password, queries[table])
            value = rows[0][0] if rows and rows[0] else ""
            return table, None if value in ("", "NULL") else value
    return None, None


def _identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
