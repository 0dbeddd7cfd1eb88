"""Every deploy and rollback of an environment, in SQLite beside the agent's state.

A record is written when the operation starts (outcome "running", with the PID), so a deploy
that was killed leaves a trace: the next `status` or `deploy` sees a running record whose process
is gone and marks it "interrupted" after cleaning up.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lockstep.pipeline.environment_lock import current_process_space
from lockstep.process import process_alive
from lockstep.redaction import Redactor, process_redactor
from lockstep.repository.identity import current_user

OUTCOMES = ("running", "succeeded", "failed", "rolled-back", "interrupted")
# How long a clean-up waits for another one to finish (stopping a slot takes seconds).
CLEAN_UP_LOCK_WAIT = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY,
    document TEXT NOT NULL,
    started_at REAL NOT NULL
);
"""


def performer() -> str:
    """Who deploys: $LOCKSTEP_PERFORMER (CI sets it to the person behind the pipeline) or the user."""
    return os.environ.get("LOCKSTEP_PERFORMER") or current_user()


@dataclass
class OperationRecord:
    """One deploy or rollback: what was asked, what happened, and where it stopped."""

    id: str
    operation: str  # "deploy" | "rollback"
    environment: str
    started_at: float
    performer: str
    host: str
    pid: int
    outcome: str = "running"
    finished_at: float | None = None
    ref: str | None = None
    commit: str | None = None
    message: str | None = None
    release_id: str | None = None
    component: str | None = None  # a rollback of one component only
    slot: str | None = None
    previous_release_id: str | None = None
    snapshot_id: str | None = None
    migration_before: str | None = None
    migration_after: str | None = None
    migrations_ran: bool = False
    data_restored: bool = False
    # A data rollback's snapshot of the databases just before it restored them: how to undo it.
    pre_restore_snapshot_id: str | None = None
    # The user's command (migration, build, hook, smoke test) running now, in a process group of
    # its own: {"step", "mark"} from before it starts (the mark is in its environment), then with
    # "pid" and "start_ticks". A killed deploy's clean-up stops it and adds "ended".
    running_command: dict[str, Any] | None = None
    traffic_held_seconds: float | None = None  # how long requests were held for a data restore
    failed_step: str | None = None
    reason: str | None = None
    # A multi-host operation this host kept past its retire "go" without finishing its retire:
    # {"slot", "release_id", "whole_slot"} of the slot it left (pipeline/unfinished_retire.py).
    retire_left: dict[str, Any] | None = None
    # The serving release's workers this operation stopped for a data restore and has not started
    # again: {"slot", "release_id", "components"} (pipeline/worker_pause.py). A killed operation
    # leaves it set, and its clean-up starts them again (or says why it does not).
    paused_workers: dict[str, Any] | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    process_space: str = ""  # boot and PID namespace where `pid` means something ("" unknown)
    # A multi-host deploy's hosts, as its orchestrator recorded them: name, role, outcome, why.
    hosts: list[dict[str, Any]] = field(default_factory=list)
    # This host's part of a multi-host operation: the orchestrator's ID (None on one machine), and
    # whether it was told "go" at its retire barrier. Killed before that "go", its clean-up undoes
    # the switch as the other hosts do; after it, it keeps the release every host keeps.
    coordinated: str | None = None
    retire_go: bool = False

    @classmethod
    def started_now(cls, id: str, operation: str, environment: str, **fields: Any) -> OperationRecord:
        """The record of an operation this process starts now: who runs it, on which host, as
        which process (what a clean-up checks before it declares the operation dead)."""
        return cls(
            id=id,
            operation=operation,
            environment=environment,
            started_at=time.time(),
            performer=performer(),
            host=socket.gethostname(),
            pid=os.getpid(),
            process_space=current_process_space(),
            **fields,
        )

    @property
    def duration(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started_at

    def to_document(self) -> dict[str, Any]:
        return {**asdict(self), "duration": self.duration}

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> OperationRecord:
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in document.items() if key in known})


@dataclass
class RedactedRecord:
    """A record as a failed command's --json prints it: through the operation's redactor, which
    knows the secrets read from files (its steps' details quote command output)."""

    record: OperationRecord
    redactor: Redactor

    def to_document(self) -> dict[str, Any]:
        document: dict[str, Any] = self.redactor.redact_document(self.record.to_document())
        return document


def still_ending(record: OperationRecord) -> bool:
    """Whether the operation's own process still runs here: it saves its record once more as it
    ends, so a clean-up acting on a finished record waits until it is gone (else that last save
    would undo what the clean-up wrote)."""
    return record.host == socket.gethostname() and process_alive(record.pid)


class History:
    """The operations of one environment; every call opens its own connection (cheap, safe)."""

    def __init__(self, path: Path, redactor: Redactor | None = None) -> None:
        self.path = path
        self.redactor = redactor  # what is saved passes through it: failure reasons quote command output
        self._created = False

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # Created by the first use, not on opening: `deploy --dry-run`, `status` and `history`
        # read it, and must not leave an environment's state directory behind (see _read).
        if not self._created:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            if not self._created:
                connection.executescript(_SCHEMA)
                self._created = True
            yield connection

    def _exists(self) -> bool:
        """Whether there is anything to read: no file means no operation was recorded yet."""
        return self._created or self.path.exists()

    def save(self, record: OperationRecord) -> None:
        """Store `record`, redacted: a failed migration's output in the reason or a step's detail
        must not reach `history`, `status` or the dashboard with a secret in it. The process's
        redactor knows the secrets the command learned; `redactor` those of this operation."""
        document = process_redactor().redact_document(record.to_document())
        if self.redactor is not None:
            document = self.redactor.redact_document(document)
        with self._connect() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO operations VALUES (?, ?, ?)",
                (record.id, json.dumps(document), record.started_at),
            )

    def unused_id(self, wanted: str) -> str:
        """`wanted`, or `wanted_2`, `wanted_3`, ... if taken: a rollback takes half a second, so
        two in one second would share a second-precision ID and the second would replace the
        first's record (INSERT OR REPLACE)."""
        candidate, number = wanted, 1
        while self.get(candidate) is not None:
            number += 1
            candidate = f"{wanted}_{number}"
        return candidate

    def get(self, operation_id: str) -> OperationRecord | None:
        if not self._exists():
            return None
        with self._connect() as connection:
            row = connection.execute("SELECT document FROM operations WHERE id = ?", (operation_id,)).fetchone()
        return None if row is None else OperationRecord.from_document(json.loads(row[0]))

    def all(self) -> list[OperationRecord]:
        """Oldest first."""
        if not self._exists():
            return []
        with self._connect() as connection:
            rows = connection.execute("SELECT document FROM operations ORDER BY started_at, id").fetchall()
        return [OperationRecord.from_document(json.loads(row[0])) for row in rows]

    def successful_deploys(self) -> list[OperationRecord]:
        """Deploys and rollbacks that left a release serving, oldest first."""
        return [record for record in self.all() if record.outcome == "succeeded" and record.release_id]

    @contextmanager
    def clean_up_lock(self, wait: float = CLEAN_UP_LOCK_WAIT) -> Iterator[bool]:
        """Held while a dead operation's record is cleaned up or its unfinished retire finished.
        The agent's watch, `lockstep status` and the next deploy all do both, and two at once
        would each act on the record as they read it: the second, finding the slot already
        stopped, would save the record again without the first's note. Whoever holds it reads
        the records afresh. Yields False when another holder kept it `wait` seconds (it does
        the work); released when the holder's process dies."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".clean-up.lock"), "a+b") as handle:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.05)
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def abandoned(self) -> list[OperationRecord]:
        """Records still "running" whose process on this host is gone (a kill -9, a crash)."""
        import socket

        from lockstep.pipeline.environment_lock import current_process_space

        host = socket.gethostname()
        space = current_process_space()
        return [
            record
            for record in self.all()
            if record.outcome == "running"
            and record.host == host
            # A process in another PID namespace (a container) cannot be seen from here: alive.
            and not (record.process_space and space and record.process_space != space)
            and not process_alive(record.pid)
        ]
