"""Snapshot files: the root tree of one backup plus who, when, what and tags (§10)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lockstep.repository.gojson import parse_time_ns


@dataclass
class Snapshot:
    """One snapshot. `id` is the storage ID of its file (set once it is saved or loaded)."""

    time: str
    tree: bytes
    paths: list[str]
    hostname: str = ""
    username: str = ""
    uid: int = 0
    gid: int = 0
    excludes: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    parent: bytes | None = None
    original: bytes | None = None
    program_version: str = ""
    summary: dict[str, Any] | None = None
    id: str = ""

    @property
    def time_ns(self) -> int:
        return parse_time_ns(self.time)

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def to_document(self) -> dict[str, Any]:
        """The JSON document, in Go struct order, omitting empty fields as restic does."""
        document: dict[str, Any] = {"time": self.time}
        if self.parent:
            document["parent"] = self.parent.hex()
        document["tree"] = self.tree.hex()
        document["paths"] = self.paths
        if self.hostname:
            document["hostname"] = self.hostname
        if self.username:
            document["username"] = self.username
        if self.uid:
            document["uid"] = self.uid
        if self.gid:
            document["gid"] = self.gid
        if self.excludes:
            document["excludes"] = self.excludes
        if self.tags:
            document["tags"] = self.tags
        if self.original:
            document["original"] = self.original.hex()
        if self.program_version:
            document["program_version"] = self.program_version
        if self.summary:
            document["summary"] = self.summary
        return document

    @classmethod
    def from_document(cls, document: dict[str, Any], snapshot_id: str = "") -> Snapshot:
        parent = document.get("parent")
        original = document.get("original")
        return cls(
            time=document["time"],
            tree=bytes.fromhex(document["tree"]) if document.get("tree") else b"",
            paths=list(document.get("paths") or []),
            hostname=document.get("hostname") or "",
            username=document.get("username") or "",
            uid=int(document.get("uid") or 0),
            gid=int(document.get("gid") or 0),
            excludes=list(document.get("excludes") or []),
            tags=list(document.get("tags") or []),
            parent=bytes.fromhex(parent) if parent else None,
            original=bytes.fromhex(original) if original else None,
            program_version=document.get("program_version") or "",
            summary=document.get("summary"),
            id=snapshot_id,
        )
