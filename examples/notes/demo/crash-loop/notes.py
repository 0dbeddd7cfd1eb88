"""What a note is: its table, its form, how it is stored and shown.

The releases of the demo (demo/*/notes.py) change this file and leave app.py alone, so
`diff -u notes.py demo/v2/notes.py` shows what a release changes.
"""

from __future__ import annotations

import html
import json
import os
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

from database import connect

# The newest migration this code relies on. Newer ones may be applied too: during a blue-green
# deploy the old release keeps serving while the new one's migrations run.
SCHEMA_VERSION = "002"  # 002_add_tags.sql
CACHE_WARMUP_DELAY_SECONDS = float(os.environ.get("NOTES_CACHE_WARMUP_DELAY", "5"))

FORM_FIELDS = """\
  <input name="text" placeholder="A new note" required autofocus>
  <input name="tags" placeholder="tags, comma separated">"""


def note_from_row(row: sqlite3.Row) -> dict[str, Any]:
    """The stored "work,ideas" becomes ["work", "ideas"]."""
    return {**dict(row), "tags": [tag for tag in row["tags"].split(",") if tag]}


def list_notes(database: Path) -> list[dict[str, Any]]:
    with closing(connect(database)) as connection:
        connection.row_factory = sqlite3.Row
        rows = connection.execute("SELECT id, text, tags, created_at FROM notes ORDER BY id")
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


def warm_search_cache(database: Path) -> None:
    """New in 3.1.0: write every note's words to NOTES_CACHE_DIR/search.json, for search to come.

    The bug this release demonstrates: NOTES_CACHE_DIR is set on the developer's machine but not
    in production. The KeyError escapes main(), so the process exits 1 with a traceback
    NOTES_CACHE_WARMUP_DELAY seconds (5) after it starts, when /health has already passed: only a
    watch window after the traffic switch catches it.
    """
    cache = Path(os.environ["NOTES_CACHE_DIR"]) / "search.json"
    words = {note["id"]: note["text"].lower().split() for note in list_notes(database)}
    cache.write_text(json.dumps(words), encoding="utf-8")


def after_start(database: Path, stopping: threading.Event) -> None:
    """Warm the search cache once the release has served for a moment."""
    if not stopping.wait(CACHE_WARMUP_DELAY_SECONDS):
        warm_search_cache(database)
