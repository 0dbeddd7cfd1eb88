"""The agent's memory, in SQLite: what runs in each slot, which slot has traffic, what happened.

It is on disk so that a restarted (or upgraded) agent re-adopts the processes it started before:
they outlive it, and their records here say which PID is which component of which release.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SLOTS = ("blue", "green")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS slots (
    slot TEXT PRIMARY KEY,
    release_id TEXT NOT NULL,
    release_directory TEXT NOT NULL,
    version TEXT,
    started_at REAL NOT NULL,
    components TEXT NOT NULL          -- JSON: the component specs the slot was started with
);
CREATE TABLE IF NOT EXISTS processes (
    name TEXT PRIMARY KEY,             -- component@slot
    slot TEXT NOT NULL,
    component TEXT NOT NULL,
    record TEXT NOT NULL               -- JSON: RunningProcess.to_record()
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dashboard_sessions (
    digest TEXT PRIMARY KEY,           -- HMAC of the cookie value under the dashboard token, never the value
    expires REAL NOT NULL              -- seconds since the epoch
);
"""


def other_slot(slot: str) -> str:
    """blue <-> green."""
    return "green" if slot == "blue" else "blue"


@dataclass(frozen=True)
class SlotRecord:
    """One slot's release as the agent started it."""

    slot: str
    release_id: str
    release_directory: str
    version: str | None
    started_at: float
    components: list[dict[str, Any]]

    def to_document(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "release_id": self.release_id,
            "release_directory": self.release_directory,
            "version": self.version,
            "started_at": self.started_at,
            "components": self.components,
        }


@dataclass(frozen=True)
class AgentEvent:
    """Something the agent saw: a crash, a restart, a crash loop, a switch."""

    id: int
    at: float
    kind: str
    name: str
    detail: str

    def to_document(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at, "kind": self.kind, "name": self.name, "detail": self.detail}


class AgentState:
    """Thread-safe access to agent.db (WAL, so the CLI can read while the agent writes)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def slot(self, slot: str) -> SlotRecord | None:
        with self._lock:
            row = self._connection.execute(
                "SELECT slot, release_id, release_directory, version, started_at, components FROM slots WHERE slot = ?",
                (slot,),
            ).fetchone()
        if row is None:
            return None
        return SlotRecord(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]))

    def save_slot(self, record: SlotRecord) -> None:
        with self._transaction() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO slots VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.slot,
                    record.release_id,
                    record.release_directory,
                    record.version,
                    record.started_at,
                    json.dumps(record.components),
                ),
            )

    def clear_slot(self, slot: str) -> None:
        with self._transaction() as connection:
            connection.execute("DELETE FROM slots WHERE slot = ?", (slot,))
            connection.execute("DELETE FROM processes WHERE slot = ?", (slot,))

    def process_records(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._connection.execute("SELECT record FROM processes ORDER BY name").fetchall()
        return [json.loads(row[0]) for row in rows]

    def save_processes(self, records: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Replace every process record with (slot, component, record) triples."""
        with self._transaction() as connection:
            connection.execute("DELETE FROM processes")
            connection.executemany(
                "INSERT INTO processes VALUES (?, ?, ?, ?)",
                [(record["name"], slot, component, json.dumps(record)) for slot, component, record in records],
            )

    def setting(self, key: str) -> str | None:
        with self._lock:
            row = self._connection.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, key: str, value: str | None) -> None:
        with self._transaction() as connection:
            if value is None:
                connection.execute("DELETE FROM settings WHERE key = ?", (key,))
            else:
                connection.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, value))

    @property
    def active_slot(self) -> str | None:
        return self.setting("active_slot")

    def add_event(self, kind: str, name: str, detail: str, at: float | None = None) -> None:
        with self._transaction() as connection:
            connection.execute(
                "INSERT INTO events (at, kind, name, detail) VALUES (?, ?, ?, ?)",
                (time.time() if at is None else at, kind, name, detail),
            )
            # Keep the table small: the history of deploys lives elsewhere.
            connection.execute("DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - 1000")

    def events(self, since_id: int = 0, limit: int = 200) -> list[AgentEvent]:
        with self._lock:
            rows = self._connection.execute(
                "SELECT id, at, kind, name, detail FROM events WHERE id > ? ORDER BY id LIMIT ?", (since_id, limit)
            ).fetchall()
        return [AgentEvent(*row) for row in rows]

    def save_dashboard_session(self, digest: str, expires: float) -> None:
        """Remember a dashboard session (by its digest) and forget the expired ones."""
        with self._transaction() as connection:
            connection.execute("DELETE FROM dashboard_sessions WHERE expires <= ?", (time.time(),))
            connection.execute("INSERT OR REPLACE INTO dashboard_sessions VALUES (?, ?)", (digest, expires))

    def dashboard_session_expiry(self, digest: str) -> float | None:
        """When the session with this digest expires; None when there is no such session."""
        with self._lock:
            row = self._connection.execute(
                "SELECT expires FROM dashboard_sessions WHERE digest = ?", (digest,)
            ).fetchone()
        return None if row is None else float(row[0])

    def delete_dashboard_session(self, digest: str) -> None:
        with self._transaction() as connection:
            connection.execute("DELETE FROM dashboard_sessions WHERE digest = ?", (digest,))

    def last_event_id(self) -> int:
        with self._lock:
            row = self._connection.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        return int(row[0])
