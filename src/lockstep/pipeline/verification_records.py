"""Verification results kept in the repository, one document per snapshot.

`lockstep/verifications/<snapshot-id>` holds the last few results for that snapshot, newest
last, sealed like every lockstep document. One document per snapshot (not one per run) keeps
`snapshot list` at one read per verified snapshot, and a forgotten snapshot leaves one small
file behind at most.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lockstep.errors import IntegrityError
from lockstep.repository.documents import DocumentStore
from lockstep.repository.repository import Repository

DIRECTORY = "verifications"
KEPT_RESULTS = 10
LEVELS = ("structure", "data", "restore")


@dataclass(frozen=True)
class Finding:
    """One problem a verification found, naming what it is about (a database, table or file)."""

    subject: str
    message: str

    def to_document(self) -> dict[str, str]:
        return {"subject": self.subject, "message": self.message}

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Finding:
        return cls(subject=str(document.get("subject", "")), message=str(document.get("message", "")))


@dataclass(frozen=True)
class DatabaseCheck:
    """What the restore level learned about one database's test-restore."""

    name: str
    engine: str
    ok: bool
    tables: int = 0
    rows: int = 0
    integrity: str = ""  # the engine's own check, e.g. "PRAGMA integrity_check: ok"
    seconds: float = 0.0

    def to_document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "engine": self.engine,
            "ok": self.ok,
            "tables": self.tables,
            "rows": self.rows,
            "integrity": self.integrity,
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> DatabaseCheck:
        return cls(
            name=str(document.get("name", "")),
            engine=str(document.get("engine", "")),
            ok=bool(document.get("ok", False)),
            tables=int(document.get("tables", 0)),
            rows=int(document.get("rows", 0)),
            integrity=str(document.get("integrity", "")),
            seconds=float(document.get("seconds", 0.0)),
        )


@dataclass(frozen=True)
class VerificationResult:
    """One verification of one snapshot at one level."""

    snapshot_id: str
    level: str
    ok: bool
    started: str  # UTC, ISO 8601
    seconds: float
    findings: list[Finding] = field(default_factory=list)
    databases: list[DatabaseCheck] = field(default_factory=list)
    blobs_read: int = 0
    bytes_read: int = 0
    # What was not checked, and why (a manifest written before lockstep recorded a checksum):
    # not a problem, but a verification must not pass for more than it checked.
    notes: list[str] = field(default_factory=list)

    def to_document(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot_id,
            "level": self.level,
            "ok": self.ok,
            "started": self.started,
            "seconds": round(self.seconds, 3),
            "findings": [finding.to_document() for finding in self.findings],
            "databases": [database.to_document() for database in self.databases],
            "blobs_read": self.blobs_read,
            "bytes_read": self.bytes_read,
            "notes": list(self.notes),
        }

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> VerificationResult:
        return cls(
            snapshot_id=str(document.get("snapshot", "")),
            level=str(document.get("level", "")),
            ok=bool(document.get("ok", False)),
            started=str(document.get("started", "")),
            seconds=float(document.get("seconds", 0.0)),
            findings=[Finding.from_document(item) for item in document.get("findings") or []],
            databases=[DatabaseCheck.from_document(item) for item in document.get("databases") or []],
            blobs_read=int(document.get("blobs_read", 0)),
            bytes_read=int(document.get("bytes_read", 0)),
            notes=[str(note) for note in document.get("notes") or []],
        )


def record_path(snapshot_id: str) -> str:
    return f"{DIRECTORY}/{snapshot_id}"


def load_history(repository: Repository, snapshot_id: str) -> list[VerificationResult]:
    """Every kept result for a snapshot, oldest first; empty when it was never verified."""
    document = DocumentStore(repository).load(record_path(snapshot_id))
    if document is None:
        return []
    try:
        return [VerificationResult.from_document(item) for item in document.get("results") or []]
    except (TypeError, ValueError, AttributeError) as error:
        raise IntegrityError(
            f"the verification record of snapshot {snapshot_id[:8]} is unreadable ({error})",
            f"remove lockstep/{record_path(snapshot_id)} from the repository; the next verify writes it anew",
        ) from error


def record_result(repository: Repository, result: VerificationResult) -> None:
    """Append a result to its snapshot's history, keeping the last KEPT_RESULTS.

    Two verifications finishing at the same moment may each keep only their own result; a
    verification record is a convenience, not evidence, so last-writer-wins is acceptable.
    """
    try:
        history = load_history(repository, result.snapshot_id)
    except IntegrityError:
        history = []  # a damaged record is replaced rather than blocking every later verify
    history = [*history, result][-KEPT_RESULTS:]
    DocumentStore(repository).save(
        record_path(result.snapshot_id),
        {"snapshot": result.snapshot_id, "results": [item.to_document() for item in history]},
    )


def latest_results(repository: Repository, snapshot_ids: list[str]) -> dict[str, VerificationResult]:
    """The newest result per snapshot: one listing, then one read per snapshot that has a record."""
    store = DocumentStore(repository)
    wanted = set(snapshot_ids)
    latest: dict[str, VerificationResult] = {}
    for path in store.list(DIRECTORY):
        snapshot_id = path.rsplit("/", 1)[-1]
        if snapshot_id not in wanted:
            continue
        try:
            history = load_history(repository, snapshot_id)
        except IntegrityError:
            continue  # shown as never verified; `snapshot verify` replaces the record
        if history:
            latest[snapshot_id] = history[-1]
    return latest


def describe_state(result: VerificationResult | None) -> str:
    """The "verified" column: `never`, `FAILED (data, 2026-11-22 05:40)` or `restore, 2026-11-22 05:40`."""
    if result is None:
        return "never"
    try:  # local time, like the list's Time column
        when = datetime.fromisoformat(result.started.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        when = result.started[:16].replace("T", " ")
    if not result.ok:
        return f"FAILED ({result.level}, {when})"
    return f"{result.level}, {when}"
