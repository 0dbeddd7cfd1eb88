"""`snapshot verify`: prove a coordinated snapshot can be brought back, at three depths.

- structure: the snapshot, every tree, the manifest and every blob it refers to are indexed
  and their packs exist, and each dump's list of blob IDs hashes to the manifest's
  `blobs_sha256`: cheap, catches a lost pack or index file, or a dump swapped for another;
- data: additionally every blob is read, authenticated and hashed (its ID is the SHA-256 of
  its bytes, so with the blob list this checks every byte of a dump), and every config and
  secret file is checked against the SHA-256 its manifest recorded;
- restore: additionally every database is restored into a scratch database created for the
  purpose (and always dropped, also on failure or Ctrl-C), its per-table row counts and
  checksums compared with the manifest, and the engine's own integrity check run on it.

Only a test-restore proves a dump restores: a dump can be byte-perfect and still fail to load.
Findings name the database, table or file, so a failure says what is lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal

from lockstep.databases import adapter_for
from lockstep.databases.base import DatabaseAdapter, DatabaseInfo, ServerLocation
from lockstep.errors import IntegrityError, LockstepError, ServerLimitExceeded, SourceError, UsageError
from lockstep.pipeline.code_listing import listing_bytes, listing_sha256, mismatch_problem, tree_entries
from lockstep.pipeline.manifest import DatabaseRecord, Manifest
from lockstep.pipeline.restore import (
    LIKELY_CAUSE,
    ServerAccess,
    checksums_comparable,
    compare_beyond_tables,
    compare_with_manifest,
    dump_source,
    refreshed_views_excused,
    restore_and_inspect,
    scratch_server_url,
    with_likely_causes,
)
from lockstep.pipeline.snapshot import load_manifest
from lockstep.pipeline.verification_records import DatabaseCheck, Finding, VerificationResult, record_result
from lockstep.repository.blobs import BlobType
from lockstep.repository.builder import blob_list_sha256
from lockstep.repository.repository import Repository
from lockstep.repository.restorer import dump_file, find_node, read_blobs
from lockstep.repository.snapshot import Snapshot
from lockstep.repository.tree import Node
from lockstep.storage.base import FileType

VerifyLevel = Literal["structure", "data", "restore"]
VERIFY_LEVELS: tuple[VerifyLevel, ...] = ("structure", "data", "restore")
ProgressCallback = Callable[[int], None]


@dataclass
class _Walk:
    """What the structure pass learned, reused by the deeper levels."""

    files: dict[str, Node] = field(default_factory=dict)  # snapshot path → file node
    findings: list[Finding] = field(default_factory=list)
    manifest: Manifest | None = None


def verify_snapshot(
    repository: Repository,
    snapshot: Snapshot,
    level: VerifyLevel,
    servers: Mapping[str, ServerAccess] | None = None,
    record: bool = True,
    progress: ProgressCallback | None = None,
) -> VerificationResult:
    """Verify `snapshot` at `level` and (with `record`) keep the result in the repository.

    `servers` maps a database name to where its scratch database may be created (the live
    database's URL and password, from lockstep.toml); SQLite needs none. Damage is never raised:
    problems are findings in the result, whose `ok` is False. What says nothing about the
    snapshot is raised and not recorded: UsageError when a database has no server to
    test-restore on, SourceError when its scratch database cannot be created or the server
    refuses the restore for a limit of its own (max_allowed_packet).
    """
    if level not in VERIFY_LEVELS:
        raise UsageError(f"unknown verification level {level!r}", "use structure, data or restore")
    started_at = datetime.now(UTC)
    started = time.monotonic()
    walk = _check_structure(repository, snapshot)
    findings = list(walk.findings)
    checks: list[DatabaseCheck] = []
    blobs_read = bytes_read = 0
    damaged: set[str] = set()
    notes: list[str] = []
    if level in ("data", "restore"):
        digests: dict[bytes, str] = {}
        data_findings, blobs_read, bytes_read, damaged = _check_data(repository, walk, progress, digests)
        findings.extend(data_findings)
        code_findings, notes = _check_code(repository, snapshot, walk, digests, damaged)
        findings.extend(code_findings)
    if level == "restore" and walk.manifest is not None:
        # Where each scratch database goes, before any is made: a missing server is a
        # configuration problem (exit 2), not damage to the snapshot, so it is not recorded.
        urls = {
            name: scratch_server_url(database.engine, (servers or {}).get(name), name)
            for name, database in walk.manifest.databases.items()
        }
        for name, database in walk.manifest.databases.items():
            if database.path in damaged or database.path not in walk.files:
                continue  # already reported: a dump that cannot be read cannot be test-restored
            check, database_findings, left_out = _test_restore(
                repository, snapshot, name, database, walk.files[database.path], urls[name], (servers or {}).get(name)
            )
            checks.append(check)
            findings.extend(database_findings)
            notes.extend(f"database {name}: the test-restore left out {sentence}" for sentence in left_out)
    result = VerificationResult(
        snapshot_id=snapshot.id,
        level=level,
        ok=not findings,
        started=started_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        seconds=time.monotonic() - started,
        findings=findings,
        databases=checks,
        blobs_read=blobs_read,
        bytes_read=bytes_read,
        notes=notes,
    )
    if record:
        record_result(repository, result)
    return result


# --- structure ---------------------------------------------------------------------------


def _check_structure(repository: Repository, snapshot: Snapshot) -> _Walk:
    walk = _Walk()
    needed_packs: dict[bytes, str] = {}  # pack → first path that needs it
    _walk_tree(repository, snapshot.tree, "", walk, needed_packs)
    stored = {name for name, _ in repository.backend.list(FileType.PACK)}
    for pack_id, path in sorted(needed_packs.items()):
        if pack_id.hex() not in stored:
            walk.findings.append(Finding(path, f"{path}: pack {pack_id.hex()[:8]} is missing from the repository"))
    try:
        walk.manifest = load_manifest(repository, snapshot)
    except LockstepError as error:
        walk.findings.append(Finding("/manifest.json", f"the manifest is unreadable: {error.message}"))
        return walk
    for name, database in walk.manifest.databases.items():
        _check_recorded(walk, database.path, database.size, f"database {name}", database.blobs_sha256)
    for file in walk.manifest.files:
        _check_recorded(walk, file.path, file.size, f"{file.kind} file")
    code = walk.manifest.code
    if code is not None and code.commit is not None and code.path is not None and code.size is not None:
        _check_recorded(walk, code.path, code.size, "code")
    if code is not None and code.listing is not None and code.listing not in walk.files:
        walk.findings.append(Finding("code", f"code: {code.listing} is in the manifest but not in the snapshot"))
    return walk


def _walk_tree(repository: Repository, tree_id: bytes, prefix: str, walk: _Walk, packs: dict[bytes, str]) -> None:
    where = prefix or "/"
    location = repository.index.lookup(BlobType.TREE, tree_id)
    if location is None:
        walk.findings.append(Finding(where, f"the tree of {where} ({tree_id.hex()[:8]}) is not in the index"))
        return
    packs.setdefault(location.pack_id, where)
    try:
        tree = repository.load_tree(tree_id)
    except LockstepError as error:
        walk.findings.append(Finding(where, f"the tree of {where} is unreadable: {error.message}"))
        return
    for node in tree.nodes:
        path = f"{prefix}/{node.display_name}"
        if node.type == "dir" and node.subtree is not None:
            _walk_tree(repository, node.subtree, path, walk, packs)
        elif node.type == "file":
            walk.files[path] = node
            missing = 0
            for blob_id in node.content or []:
                blob = repository.index.lookup(BlobType.DATA, blob_id)
                if blob is None:
                    missing += 1
                else:
                    packs.setdefault(blob.pack_id, path)
            if missing:
                walk.findings.append(
                    Finding(path, f"{path}: {missing} of its {len(node.content or [])} data blobs are not in the index")
                )


def _check_recorded(walk: _Walk, path: str, size: int, what: str, blobs_sha256: str | None = None) -> None:
    node = walk.files.get(path)
    if node is None:
        walk.findings.append(Finding(path, f"{what}: {path} is in the manifest but not in the snapshot"))
    elif node.size != size:
        walk.findings.append(Finding(path, f"{what}: {path} holds {node.size} bytes, the manifest says {size}"))
    elif blobs_sha256 is not None and blob_list_sha256(node.content or []) != blobs_sha256:
        walk.findings.append(
            Finding(path, f"{what}: the SHA-256 of {path}'s blob list differs from the manifest's blobs_sha256")
        )


# --- data --------------------------------------------------------------------------------


def _check_data(
    repository: Repository, walk: _Walk, progress: ProgressCallback | None, digests: dict[bytes, str]
) -> tuple[list[Finding], int, int, set[str]]:
    """Read every file's blobs (each checked against its ID, the SHA-256 of its bytes); compare
    the SHA-256 of the files the manifest recorded one for (config and secret files, the
    uncommitted diff, and dumps in manifests from before blobs_sha256). The SHA-256 of each file
    of several blobs in a release directory goes into `digests`, by its blob IDs joined, for its
    listing (_check_code): one read serves both."""
    expected: dict[str, tuple[str, str]] = {}  # path → (what, sha256)
    release_prefix = None
    if walk.manifest is not None:
        for name, database in walk.manifest.databases.items():
            # A dump recorded by its blob list (checked by the structure pass) is checked here
            # by reading every blob, each against its own SHA-256.
            expected[database.path] = (f"database {name}", database.sha256 or "")
        for file in walk.manifest.files:
            expected[file.path] = (f"{file.kind} file", file.sha256)
        code = walk.manifest.code
        if code is not None and code.path is not None:
            if code.commit is not None and code.sha256 is not None:
                expected[code.path] = ("code", code.sha256)
            elif code.commit is None and code.tree_sha256 is not None:
                release_prefix = code.path.rstrip("/") + "/"
    findings: list[Finding] = []
    damaged: set[str] = set()
    blobs = size = 0
    for path, node in sorted(walk.files.items()):
        what, recorded_sha256 = expected.get(path, ("file", ""))
        in_release = release_prefix is not None and path.startswith(release_prefix) and len(node.content or []) > 1
        digest = hashlib.sha256() if recorded_sha256 or in_release else None
        try:
            for data in read_blobs(repository, node.content or []):
                if digest is not None:
                    digest.update(data)
                blobs += 1
                size += len(data)
                if progress is not None:
                    progress(len(data))
        except LockstepError as error:
            damaged.add(path)
            findings.append(Finding(path, f"{what}: {path} cannot be read: {error.message}"))
            continue
        if digest is not None and in_release:
            digests[b"".join(node.content or [])] = digest.hexdigest()
        if digest is not None and recorded_sha256 and digest.hexdigest() != recorded_sha256:
            damaged.add(path)
            actual, recorded = digest.hexdigest()[:16], recorded_sha256[:16]
            findings.append(Finding(path, f"{what}: {path} has SHA-256 {actual}…, the manifest says {recorded}…"))
    return findings, blobs, size, damaged


# --- code --------------------------------------------------------------------------------

UNCHECKED_DIFF_NOTE = (
    "code: the manifest records no SHA-256 of the uncommitted diff (it was written before lockstep recorded "
    "one), so the diff was checked blob by blob only"
)
UNCHECKED_RELEASE_NOTE = (
    "code: the manifest records no tree_sha256 of the release directory (it was written before lockstep "
    "recorded one), so its files were checked blob by blob only"
)


def _check_code(
    repository: Repository, snapshot: Snapshot, walk: _Walk, digests: dict[bytes, str], damaged: set[str]
) -> tuple[list[Finding], list[str]]:
    """(findings, notes) for the code: a release directory's listing, made from the stored tree
    with the SHA-256s the data pass computed, against the manifest's tree_sha256. The diff was
    compared by the data pass. A manifest without the checksum is a note, not a finding."""
    code = walk.manifest.code if walk.manifest is not None else None
    if code is None or code.path is None:
        return [], []
    if code.commit is not None:
        notes = [UNCHECKED_DIFF_NOTE] if code.sha256 is None else []
        return [], notes
    if code.tree_sha256 is None:
        return [], [UNCHECKED_RELEASE_NOTE]
    prefix = code.path.rstrip("/") + "/"
    if any(path.startswith(prefix) for path in damaged):
        return [], []  # already reported: a file that cannot be read has no checksum
    try:
        node = find_node(repository, snapshot, code.path)
        if node.subtree is None:
            return [Finding("code", f"code: {code.path} in the snapshot is not a directory")], []
        entries = []
        for entry, stored in tree_entries(repository, node.subtree):
            if entry.type == "file" and entry.sha256 is None:
                entry = replace(entry, sha256=digests.get(b"".join(stored.content or []), ""))
            entries.append(entry)
    except LockstepError as error:
        return [Finding("code", f"code: {code.path} cannot be read: {error.message}")], []
    listing = listing_bytes(entries)
    if listing_sha256(listing) == code.tree_sha256:
        return [], []
    stored_listing = _stored_listing(repository, walk, code.listing, damaged)
    return [Finding("code", "code: " + mismatch_problem(code.path, code.tree_sha256, stored_listing, listing))], []


def _stored_listing(repository: Repository, walk: _Walk, path: str | None, damaged: set[str]) -> bytes | None:
    if path is None or path not in walk.files or path in damaged:
        return None
    buffer = io.BytesIO()
    try:
        dump_file(repository, walk.files[path], buffer)
    except LockstepError:
        return None
    return buffer.getvalue()


# --- restore -----------------------------------------------------------------------------


def _test_restore(
    repository: Repository,
    snapshot: Snapshot,
    name: str,
    database: DatabaseRecord,
    node: Node,
    url: str,
    server: ServerAccess | None,
) -> tuple[DatabaseCheck, list[Finding], list[str]]:
    """Restore one dump into a scratch database, fingerprint it, check it, drop it. Also
    returns what the restore left out (PostgreSQL: grants and policies naming roles the scratch
    database's server lacks), which a restore onto that server would leave out too.

    A scratch database that cannot be created (server down, no CREATE privilege), or a server
    that refuses the restore for a limit of its own (ServerLimitExceeded), raises SourceError:
    that says nothing about the snapshot. What goes wrong otherwise is a finding.
    """
    started = time.monotonic()
    subject = f"database {name}"
    adapter = adapter_for(url)
    password = server.password if server is not None else None
    findings: list[Finding] = []
    info: DatabaseInfo | None = None
    integrity = ""
    try:
        scratch = adapter.create_scratch(url, password)
    except LockstepError as error:
        raise SourceError(
            f"{subject}: cannot create a scratch database to test-restore into: {error.message}",
            "check that the server runs and lets this user create databases, or verify with --level data",
        ) from error
    try:
        with dump_source(repository, node, adapter) as source:
            info = restore_and_inspect(adapter, scratch, password, source, False, database.checksum_algorithm)
        differences = compare_with_manifest(
            database.tables, info, checksums_comparable(database, adapter), database.inspected
        )
        findings.extend(
            Finding(f"{subject}, table {table}", f"{subject}: {problem}")
            for table, problem in with_likely_causes(adapter, ServerAccess(scratch, password), differences)
        )
        beyond = refreshed_views_excused(
            adapter, ServerAccess(scratch, password), compare_beyond_tables(database, info)
        )
        findings.extend(Finding(f"{subject}, {what}", f"{subject}: {problem}") for what, problem in beyond)
        integrity, problems = integrity_check(adapter, scratch, password, info)
        findings.extend(Finding(subject, f"{subject}: {problem}") for problem in problems)
    except ServerLimitExceeded as error:
        raise SourceError(
            f"{subject}: the test-restore failed: {error.message}", f"{error.remedy}; then verify again"
        ) from error
    except LockstepError as error:
        findings.append(Finding(subject, f"{subject}: the test-restore failed: {error.message}"))
    finally:
        with contextlib.suppress(LockstepError):
            adapter.drop_database(scratch, password)
    rows = sum(table.rows for table in info.tables) if info is not None else 0
    tables = len(info.tables) if info is not None else 0
    check = DatabaseCheck(
        name=name,
        engine=database.engine,
        ok=not findings,
        tables=tables,
        rows=rows,
        integrity=integrity,
        seconds=time.monotonic() - started,
    )
    return check, findings, [] if info is None else info.left_out


def integrity_check(
    adapter: DatabaseAdapter, url: str, password: str | None, info: DatabaseInfo
) -> tuple[str, list[str]]:
    """The engine's own consistency check on a (restored) database: (what ran, problems)."""
    if adapter.engine == "sqlite":
        return _sqlite_integrity(url)
    if adapter.engine == "mysql":
        return _mysql_integrity(url, password, [table.name for table in info.tables])
    if adapter.engine == "postgresql":
        return _postgresql_integrity(url, password)
    return "none", []


def _sqlite_integrity(url: str) -> tuple[str, list[str]]:
    from lockstep.databases.sqlite import database_path

    path = database_path(url)
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as connection:
            rows = [str(row[0]) for row in connection.execute("PRAGMA integrity_check")]
    except sqlite3.Error as error:
        return "PRAGMA integrity_check", [f"PRAGMA integrity_check failed: {error}"]
    if rows == ["ok"]:
        return "PRAGMA integrity_check: ok", []
    return "PRAGMA integrity_check", [f"PRAGMA integrity_check: {row}" for row in rows[:10]]


def _mysql_integrity(url: str, password: str | None, tables: list[str]) -> tuple[str, list[str]]:
    """CHECK TABLE on every table (cheap on a freshly restored scratch copy)."""
    from lockstep.databases.mysql import _identifier, _query, table_name

    if not tables:
        return "CHECK TABLE: no tables", []
    location = ServerLocation.parse(url)
    rows = _query(location, password, "CHECK TABLE " + ", ".join(_identifier(table) for table in tables))
    problems = [
        f"CHECK TABLE {table_name(row[0], location.database)}: {row[3]}"
        for row in rows
        if len(row) >= 4 and (row[2].lower() == "error" or (row[2].lower() == "status" and row[3] != "OK"))
    ]
    return "CHECK TABLE: " + ("ok" if not problems else "failed"), problems


def _postgresql_integrity(url: str, password: str | None) -> tuple[str, list[str]]:
    """Every index valid, and with amcheck (when the server has it) every B-tree index checked."""
    import psycopg

    from lockstep.databases.postgresql import _connect

    location = ServerLocation.parse(url)
    problems: list[str] = []
    with _connect(location, password, location.database, autocommit=True) as connection:
        invalid = connection.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE NOT i.indisvalid OR NOT i.indisready"
        ).fetchall()
        problems.extend(f"index {row[0]} is not valid after the restore" for row in invalid)
        try:
            connection.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        except psycopg.Error:
            return "index validity: " + ("ok" if not problems else "failed"), problems
        indexes = connection.execute(
            "SELECT c.oid, c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_am a ON a.oid = c.relam JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE a.amname = 'btree' AND c.relkind = 'i' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg\\_toast%' AND i.indisvalid"
        ).fetchall()
        for oid, name in indexes:
            try:
                connection.execute("SELECT bt_index_check(%s::regclass, true)", (oid,))
            except psycopg.Error as error:
                problems.append(f"amcheck on index {name}: {str(error).strip()}")
    return "amcheck bt_index_check: " + ("ok" if not problems else "failed"), problems


def first_problem(result: VerificationResult) -> str:
    """The first finding, for a one-line error."""
    return result.findings[0].message if result.findings else "no problem found"


def raise_for_result(result: VerificationResult) -> None:
    """IntegrityError (exit 12) naming the first problem when the verification failed."""
    if result.ok:
        return
    more = f" (and {len(result.findings) - 1} more problems)" if len(result.findings) > 1 else ""
    damage = "run `lockstep repo check --read-data`, and do not rely on this snapshot for a restore"
    # A cause that is no damage (MariaDB's FLOAT columns, dumped rounded: with_likely_causes) is
    # what to fix; sending the user to check the repository first would hunt for damage there is not.
    explained = bool(result.findings) and all(LIKELY_CAUSE in finding.message for finding in result.findings)
    raise IntegrityError(
        f"snapshot {result.snapshot_id[:8]} failed verification ({result.level}): {first_problem(result)}{more}",
        f"see the likely cause given for the table; if it is not that, {damage}" if explained else damage,
    )


__all__ = ["VERIFY_LEVELS", "VerifyLevel", "integrity_check", "raise_for_result", "verify_snapshot"]
