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
# 3.0.0 shows pinned notes first, which needs migrations/003_add_pinned.sql. That file was
# written on the developer's machine and never committed, so no release ships it: migrate.py
# has nothing to apply, /health keeps answering 503 ("needs schema version 003, the database is
# at 002") and lockstep never switches traffic to this release. It is the bug this demo shows.
SCHEMA_VERSION = "003"  # 003_add_pinned.sql

FORM_FIELDS = """\
  <input name="text" placeholder="A new note" required autofocus>
  <input name="tags" placeholder="tags, comma separated">"""


def note_from_row(row: sqlite3.Row) -> dict[str, Any]:
    """The stored "work,ideas" becomes ["work", "ideas"]."""
    return {**dict(row), "tags": [tag for tag in row["tags"].split(",") if tag]}


def list_notes(database: Path) -> list[dict[str, Any]]:
    with closing(connect(database)) as connection:
        connection.row_factory = sqlite3.Row
        rows = connection.execute("SELECT id, text, tags, created_at FROM notes ORDER BY pinned DESC, id")
        return [note_from_row(row) for row in rows]


def add_note(database: Path, fields: dict[str, str]) -> dict[str, Any]:
    """`tags` is comma-separated text, in a form and in JSON alike ("work, ideas")."""
    tags = ",".join(tag.strip() for tag in fields.get("tags", "").split(",") if tag.strip())
    with closing(connect(database)) as connection:
        connection.row_factory = sqlite3.Row
        cursor = connection.execute("INSERT INTO notes (text, tags) VALUES (?, ?)", (fields["text"], tags))
        row = connection.execute("SELECT id, text, tags, created_at FROM notes WHERE id = ?", (cursor.lastrowid,))
        return note_from_row(row.fetchone())


def render_note(note: dict[str, Any]) -> str:
    tags = "".join(f" <mark>#{html.escape(tag)}</mark>" for tag in note["tags"])
    return f"<li>{html.escape(note['text'])}{tags} <small>{html.escape(note['created_at'])}</small></li>"


def after_start(database: Path, stopping: threading.Event) -> None:
    """Work a release does once it serves, on the main thread; none in this one."""
