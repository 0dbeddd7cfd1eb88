"""The manifest stored as /manifest.json in every coordinated snapshot, and its JSON form.

The manifest says what a snapshot holds (code version, database dumps with table fingerprints,
config and secret files) so `snapshot list/show` and a later restore can decide without reading
the dumps. It never holds file contents: for secrets only path, size and SHA-256 are recorded.
The snapshot ID is not inside: it is the hash of a file that points at the manifest, so it only
exists once the manifest is stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from lockstep.errors import IntegrityError

FORMAT_VERSION = 1
MANIFEST_PATH = "/manifest.json"
FileKind = Literal["config", "secret"]
FILE_KINDS: tuple[FileKind, ...] = ("config", "secret")


@dataclass(frozen=True)
class CodeRecord:
    """The application code's version: a git commit, or a release directory stored whole.

    The checksum fields are None in manifests written before they existed (then a verification
    says the code was not checked), and absent from the document when None."""

    kind: str
    commit: str | None = None
    branch: str | None = None
    author: str | None = None
    dirty: bool = False
    path: str | None = None  # where the snapshot holds the code (release directory) or its diff
    # Bytes stored at `path`: the release directory's files, or the diff. None when the snapshot
    # holds only the commit ID, and in manifests written before the field existed.
    size: int | None = None
    # The uncommitted diff (`--allow-dirty`): SHA-256 of its bytes as stored at `path`.
    sha256: str | None = None
    # A release directory: SHA-256 of the canonical listing of its tree (pipeline/code_listing.py,
    # docs/manifest.md), and where the snapshot holds that listing.
    tree_sha256: str | None = None
    listing: str | None = None
    # The release a `current` symlink pointed to when the snapshot was made: the name of the
    # directory the configured path resolved to (e.g. releases/20240501120000 gives its name).
    release: str | None = None

    def to_document(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "kind": self.kind,
            "commit": self.commit,
            "branch": self.branch,
            "author": self.author,
            "dirty": self.dirty,
            "path": self.path,
        }
        optional = {
            "size": self.size,
            "sha256": self.sha256,
            "tree_sha256": self.tree_sha256,
            "listing": self.listing,
            "release": self.release,
        }
        document.update({key: value for key, value in optional.items() if value is not None})
        return document

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> CodeRecord:
        def text(key: str) -> str | None:
            return None if document.get(key) is None else str(document[key])

        return cls(
            kind=str(document["kind"]),
            commit=document.get("commit"),
            branch=document.get("branch"),
            author=document.get("author"),
            dirty=bool(document.get("dirty", False)),
            path=document.get("path"),
            size=None if document.get("size") is None else int(document["size"]),
            sha256=text("sha256"),
            tree_sha256=text("tree_sha256"),
            listing=text("listing"),
            release=text("release"),
        )


@dataclass(frozen=True)
class TableRecord:
    """One table's fingerprint at snapshot time."""

    name: str
    rows: int
    checksum: str
    # False for a table the dump's consistent snapshot does not cover (MariaDB's MyISAM, Aria
    # and MEMORY tables): its counts may differ from what the dump holds.
    consistent: bool = True
    # A MariaDB system-versioned table whose history the dump holds: its row versions (current
    # ones included) and their checksum. None where the history is not in the snapshot.
    history_rows: int | None = None
    history_checksum: str | None = None

    def to_document(self) -> dict[str, Any]:
        document: dict[str, Any] = {"name": self.name, "rows": self.rows, "checksum": self.checksum}
        if not self.consistent:
            document["consistent"] = False
        if self.history_checksum is not None:
            document["history_rows"] = self.history_rows
            document["history_checksum"] = self.history_checksum
        return document

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> TableRecord:
        return cls(
            name=str(document["name"]),
            rows=int(document["rows"]),
            checksum=str(document["checksum"]),
            consistent=bool(document.get("consistent", True)),
            history_rows=None if document.get("history_rows") is None else int(document["history_rows"]),
            history_checksum=None if document.get("history_checksum") is None else str(document["history_checksum"]),
        )


@dataclass(frozen=True)
class SequenceRecord:
    """A sequence's value as the dump sets it (PostgreSQL: setval(name, last_value, is_called))."""

    name: str
    last_value: int
    is_called: bool

    def to_document(self) -> dict[str, Any]:
        return {"name": self.name, "last_value": self.last_value, "is_called": self.is_called}

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> SequenceRecord:
        return cls(str(document["name"]), int(document["last_value"]), bool(document["is_called"]))


@dataclass(frozen=True)
class LargeObjectsRecord:
    """PostgreSQL's large objects: how many, and the sum of a 64-bit hash of each one's OID and
    contents (None in manifests written when lockstep could not hash one over 1 GB; then
    only the count is checked)."""

    count: int
    checksum: str | None

    def to_document(self) -> dict[str, Any]:
        return {"count": self.count, "checksum": self.checksum}

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> LargeObjectsRecord:
        checksum = document.get("checksum")
        return cls(int(document["count"]), None if checksum is None else str(checksum))


@dataclass(frozen=True)
class MaterializedViewRecord:
    """A materialized view at snapshot time: populated or not (WITH NO DATA), its rows and their
    checksum as a table's (0 and the empty checksum when not populated)."""

    name: str
    populated: bool
    rows: int
    checksum: str

    def to_document(self) -> dict[str, Any]:
        return {"name": self.name, "populated": self.populated, "rows": self.rows, "checksum": self.checksum}

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> MaterializedViewRecord:
        return cls(str(document["name"]), bool(document["populated"]), int(document["rows"]), str(document["checksum"]))


@dataclass(frozen=True)
class DatabaseRecord:
    """One database dump in the snapshot and the fingerprint a restore is checked against."""

    engine: str
    server_version: str
    dump_format: str
    path: str
    size: int
    # SHA-256 of the dump's bytes; only in manifests written before blobs_sha256 replaced it.
    sha256: str | None
    tables: list[TableRecord]
    migration_version: str | None
    migration_table: str | None
    # Counts are taken right after the dump, not inside its transaction: on a database that is
    # being written they can differ from what the dump holds; a restore check must allow that.
    inspected: str = "after-dump"
    # How the table checksums were computed (e.g. PostgreSQL's "row-hash-sum"), so a restore
    # compares checksums only with ones computed the same way. None in manifests written before
    # the field existed (and for engines that do not name theirs): then the checksums' lengths
    # tell the kinds apart.
    checksum_algorithm: str | None = None
    # Why the counts were taken after the dump, or which tables the dump's snapshot left out.
    inspected_note: str | None = None
    # SHA-256 of the dump's blob IDs in order (each the SHA-256 of one piece of the dump): pins
    # every byte without hashing the dump a second time. None in manifests from before.
    blobs_sha256: str | None = None
    # What the dump could not keep exactly (MariaDB: FLOAT columns, system-versioned history),
    # said when the snapshot was made.
    warnings: list[str] = field(default_factory=list)
    # A dump of the structure without rows (`snapshot create --schema-only`): every table is
    # recorded with 0 rows. Absent from the document when False.
    schema_only: bool = False
    # What PostgreSQL dumps besides tables, each checked after a restore: sequence values, large
    # objects, materialized views. None (absent from the document) in manifests written before
    # lockstep recorded them, and for other engines: then they are not checked.
    sequences: list[SequenceRecord] | None = None
    large_objects: LargeObjectsRecord | None = None
    materialized_views: list[MaterializedViewRecord] | None = None
    # The tables dumped without their rows (`exclude_table_data`): each is in `tables` with 0
    # rows and the checksum of an empty table, as a restore gives it back. Absent from the
    # document when empty, as in manifests written before the key existed.
    rows_excluded: list[str] = field(default_factory=list)

    def to_document(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "engine": self.engine,
            "server_version": self.server_version,
            "dump_format": self.dump_format,
            "path": self.path,
            "size": self.size,
            "tables": [table.to_document() for table in self.tables],
            "migration_version": self.migration_version,
            "migration_table": self.migration_table,
            "inspected": self.inspected,
        }
        if self.sha256 is not None:
            document["sha256"] = self.sha256
        if self.blobs_sha256 is not None:
            document["blobs_sha256"] = self.blobs_sha256
        if self.checksum_algorithm is not None:
            document["checksum_algorithm"] = self.checksum_algorithm
        if self.inspected_note is not None:
            document["inspected_note"] = self.inspected_note
        if self.warnings:
            document["warnings"] = list(self.warnings)
        if self.schema_only:
            document["schema_only"] = True
        if self.rows_excluded:
            document["rows_excluded"] = list(self.rows_excluded)
        if self.sequences is not None:
            document["sequences"] = [sequence.to_document() for sequence in self.sequences]
        if self.large_objects is not None:
            document["large_objects"] = self.large_objects.to_document()
        if self.materialized_views is not None:
            document["materialized_views"] = [view.to_document() for view in self.materialized_views]
        return document

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> DatabaseRecord:
        algorithm = document.get("checksum_algorithm")
        sequences, large_objects, views = (
            document.get("sequences"),
            document.get("large_objects"),
            document.get("materialized_views"),
        )
        return cls(
            engine=str(document["engine"]),
            server_version=str(document["server_version"]),
            dump_format=str(document["dump_format"]),
            path=str(document["path"]),
            size=int(document["size"]),
            sha256=None if document.get("sha256") is None else str(document["sha256"]),
            tables=[TableRecord.from_document(table) for table in document.get("tables", [])],
            migration_version=document.get("migration_version"),
            migration_table=document.get("migration_table"),
            inspected=str(document.get("inspected", "after-dump")),
            checksum_algorithm=None if algorithm is None else str(algorithm),
            inspected_note=None if document.get("inspected_note") is None else str(document["inspected_note"]),
            blobs_sha256=None if document.get("blobs_sha256") is None else str(document["blobs_sha256"]),
            warnings=[str(warning) for warning in document.get("warnings") or []],
            schema_only=bool(document.get("schema_only", False)),
            sequences=None if sequences is None else [SequenceRecord.from_document(item) for item in sequences],
            large_objects=None if large_objects is None else LargeObjectsRecord.from_document(large_objects),
            materialized_views=None if views is None else [MaterializedViewRecord.from_document(v) for v in views],
            rows_excluded=[str(name) for name in document.get("rows_excluded") or []],
        )


@dataclass(frozen=True)
class FileRecord:
    """A config or secret file in the snapshot: never its content, only where, how big and its hash."""

    path: str
    kind: FileKind
    size: int
    sha256: str

    def to_document(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> FileRecord:
        kind = document["kind"]
        if kind not in FILE_KINDS:
            raise ValueError(f"unknown file kind {kind!r}")
        return cls(path=str(document["path"]), kind=kind, size=int(document["size"]), sha256=str(document["sha256"]))


@dataclass(frozen=True)
class Manifest:
    """Everything a coordinated snapshot records, as stored in /manifest.json."""

    message: str | None
    author: str
    created: str
    environment: str | None
    tags: list[str]
    lockstep_version: str
    hostname: str
    code: CodeRecord | None
    databases: dict[str, DatabaseRecord] = field(default_factory=dict)
    files: list[FileRecord] = field(default_factory=list)
    kind: str = "manual"
    format_version: int = FORMAT_VERSION
    # `snapshot create --schema-only`: the databases' structure without rows (each database
    # record says so too). Absent from the document when False, so older manifests read unchanged.
    schema_only: bool = False

    @property
    def warnings(self) -> list[str]:
        """What the snapshot could not keep exactly, each naming its database, as recorded when
        the snapshot was made."""
        return [
            f"database {name}: {warning}" for name, database in self.databases.items() for warning in database.warnings
        ]

    @property
    def stored_size(self) -> int:
        """Bytes of the code (a release directory, a diff), dumps and files the snapshot holds
        (before deduplication and compression)."""
        code = self.code.size if self.code is not None and self.code.size is not None else 0
        return code + sum(database.size for database in self.databases.values()) + sum(file.size for file in self.files)

    def to_document(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "format_version": self.format_version,
            "kind": self.kind,
            "message": self.message,
            "author": self.author,
            "created": self.created,
            "environment": self.environment,
            "tags": list(self.tags),
            "lockstep_version": self.lockstep_version,
            "hostname": self.hostname,
            "code": None if self.code is None else self.code.to_document(),
            "databases": {name: database.to_document() for name, database in self.databases.items()},
            "files": [file.to_document() for file in self.files],
        }
        if self.schema_only:
            document["schema_only"] = True
        return document

    def to_json(self) -> bytes:
        """The bytes stored as /manifest.json: indented, so `restic dump` output is readable."""
        return (json.dumps(self.to_document(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Manifest:
        version = document.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"manifest format version {version!r} is not supported (this lockstep reads 1)")
        code = document.get("code")
        return cls(
            message=document.get("message"),
            author=str(document.get("author", "")),
            created=str(document["created"]),
            environment=document.get("environment"),
            tags=[str(tag) for tag in document.get("tags", [])],
            lockstep_version=str(document.get("lockstep_version", "")),
            hostname=str(document.get("hostname", "")),
            code=None if code is None else CodeRecord.from_document(code),
            databases={
                str(name): DatabaseRecord.from_document(database)
                for name, database in (document.get("databases") or {}).items()
            },
            files=[FileRecord.from_document(file) for file in document.get("files", [])],
            kind=str(document.get("kind", "manual")),
            format_version=FORMAT_VERSION,
            schema_only=bool(document.get("schema_only", False)),
        )

    @classmethod
    def from_json(cls, data: bytes, where: str = MANIFEST_PATH) -> Manifest:
        """Parse stored manifest bytes; anything unreadable is an IntegrityError naming `where`."""
        try:
            document = json.loads(data)
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
            return cls.from_document(document)
        except (ValueError, KeyError, TypeError) as error:
            raise IntegrityError(
                f"{where} is not a valid lockstep manifest: {error}", "run `lockstep repo check` on the repository"
            ) from None
