"""What a note is: its table, its form, how it is stored and shown.

The releases of the demo (demo/*/notes.py) change this file and leave app.py alone, so
`diff -u notes.py demo/v2/notes.py` shows what a release changes.
"""

from __future__ import annotations

import html
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

from database import connect

# The newest migration this code relies on. Newer ones may be applied too: during a blue-green
# deploy the old release keeps serving while the new one's migrations run.
SCHEMA_VERSION = "001"

FORM_FIELDS = '  <input name="text" placeholder="A new note" required autofocus>'


def list_notes(database: Path) -> list[dict[str, Any]]:
    with closing(connect(database)) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute("SELECT id, text, created_at FROM notes ORDER BY id")]


def add_note(database: Path, fields: dict[str, str]) -> dict[str, Any]:
    with closing(connect(database)) as connection:
        connection.row_factory = sqlite3.Row
        cursor = connection.execute("INSERT INTO notes (text) VALUES (?)", (fields["text"],))
        row = connection.execute("SELECT id, text, created_at FROM notes WHERE id = ?", (cursor.lastrowid,))
        return dict(row.fetchone())


def render_note(note: dict[str, Any]) -> str:
    return f"<li>{html.escape(note['text'])} <small>{html.escape(note['created_at'])}</small></li>"


def after_start(database: Path, stopping: threading.Event) -> None:
    """Work a release does once it serves, on the main thread; none in this one."""
