"""The SQLite connection that the web app, the worker and the migrations share."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

# How long a statement waits for another process's lock (lockstep's online backup, migrate.py)
# before it fails with "database is locked".
BUSY_TIMEOUT_SECONDS = 10.0


def database_path() -> Path:
    """The SQLite file named by NOTES_DATABASE; it lives in a directory that outlives releases."""
    value = os.environ.get("NOTES_DATABASE")
    if not value:
        raise SystemExit("notes: set NOTES_DATABASE to the SQLite file, e.g. NOTES_DATABASE=/srv/notes/notes.db")
    return Path(value)


def connect(path: Path, create: bool = False) -> sqlite3.Connection:
    """A new connection in autocommit mode, with WAL and a busy timeout.

    Callers open one per request rather than one per process: lockstep restores a database by
    renaming a new file over the old one, and a connection held open would keep reading the old
    file. Without `create`, a missing file is an error instead of a new empty database.
    """
    mode = "rwc" if create else "rw"
    connection = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode={mode}", uri=True, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None
    )
    # WAL lets readers go on while another process writes or backs the database up.
    connection.execute("PRAGMA journal_mode = WAL")
    return connection


def applied_migrations(connection: sqlite3.Connection) -> set[str]:
    """The versions recorded in schema_migrations (the table's name and shape are Rails')."""
    return {str(row[0]) for row in connection.execute("SELECT version FROM schema_migrations")}
