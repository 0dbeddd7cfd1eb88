#!/usr/bin/env python3
"""Apply the pending migrations in migrations/ to NOTES_DATABASE, oldest first.

A migration is a file `NNN_name.sql`; its version is NNN. Each file runs in its own
transaction together with its row in schema_migrations, so a file applies completely or not
at all. When one fails, the files before it stay applied and this exits 1: the database is
then half migrated, which is what lockstep's pre-deploy snapshot is for. Migration files must
not contain BEGIN or COMMIT.
"""

from __future__ import annotations

import re
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

from database import applied_migrations, connect, database_path

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
FILE_NAME = re.compile(r"(\d{3})_\w+\.sql")


def migration_files() -> list[tuple[str, Path]]:
    """(version, file) for every migration, in version order; a misnamed file is an error."""
    files = []
    for path in sorted(MIGRATIONS.glob("*.sql")):
        match = FILE_NAME.fullmatch(path.name)
        if match is None:
            raise SystemExit(f"migrate: {path.name} is not named NNN_name.sql (e.g. 002_add_tags.sql)")
        files.append((match.group(1), path))
    versions = [version for version, _ in files]
    if len(set(versions)) != len(versions):
        raise SystemExit(f"migrate: two migration files share a version: {', '.join(versions)}")
    return files


def main() -> int:
    path = database_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(connect(path, create=True)) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY)")
        applied = applied_migrations(connection)
        pending = [(version, file) for version, file in migration_files() if version not in applied]
        if not pending:
            print(f"nothing to apply: {path} is at schema version {max(applied, default='none')}")
        for version, file in pending:
            try:
                # executescript() runs the whole file; BEGIN IMMEDIATE takes the write lock up front
                # (waiting out the busy timeout) so the file cannot fail half way for a lock.
                connection.executescript("BEGIN IMMEDIATE;\n" + file.read_text(encoding="utf-8"))
                connection.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))
                connection.execute("COMMIT")
            except sqlite3.Error as error:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                print(f"FAILED {file.name}: {error}", file=sys.stderr)
                print("that file was rolled back; the migrations before it stay applied", file=sys.stderr)
                return 1
            print(f"applied {file.name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
