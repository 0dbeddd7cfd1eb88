"""A coordinated snapshot: code version, database dumps and config/secret files under one ID.

Order matters. The code is checked first (a dirty tree is refused before anything is written),
then each database is dumped straight into the repository, then the files, and the manifest
last, because it describes everything before it. Any failure leaves the builder's `with` block,
which removes the packs written so far: there is a whole snapshot or none. A --commit is made
off the branch first and moved onto it only after the snapshot is written, so a failed snapshot
leaves no commit behind either.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from lockstep import __version__
from lockstep.config.model import DEFAULT_ENVIRONMENT as DEFAULT_ENVIRONMENT  # re-exported
from lockstep.config.model import DEFAULT_PROJECT, CodeConfig, DatabaseConfig, ProjectConfig
from lockstep.databases import adapter_for
from lockstep.databases.base import DatabaseAdapter, DatabaseInfo, DatabaseSummary, DumpStream, TableInfo, redact_url
from lockstep.errors import NotFound, SourceError, UsageError
from lockstep.pipeline.code import (
    GitState,
    NoCommitsYet,
    PendingCommit,
    build_commit,
    current_branch,
    head_commit,
    publish_commit,
    read_git_state,
    snapshot_author,
    uncommitted_diff,
    uncommitted_paths,
)
from lockstep.pipeline.code_listing import LISTING_SUFFIX, listing_sha256, stored_listing
from lockstep.pipeline.manifest import (
    MANIFEST_PATH,
    CodeRecord,
    DatabaseRecord,
    FileKind,
    FileRecord,
    LargeObjectsRecord,
    Manifest,
    MaterializedViewRecord,
    SequenceRecord,
    TableRecord,
)
from lockstep.repository.builder import SnapshotBuilder, StoredFile
from lockstep.repository.repository import Repository
from lockstep.repository.restorer import dump_file, find_node
from lockstep.repository.snapshot import Snapshot

LOCKSTEP_TAG = "lockstep"
COMMIT_TAG_PREFIX = "commit:"
ENVIRONMENT_TAG_PREFIX = "env:"
KIND_TAG_PREFIX = "kind:"
# A deploy's snapshots: retention counts them as one deploy.
DEPLOY_TAG_PREFIX = "deploy:"
# The release directory a pre-deploy snapshot holds: a rollback restores it from there.
RELEASE_TAG_PREFIX = "release:"
# The snapshot a pre-restore snapshot was taken before restoring (`snapshot restore`, a rollback
# --with-data).
RESTORE_OF_TAG_PREFIX = "restore-of:"
RESTORES_TAG_PREFIX = "restores:"
# A snapshot of the databases' structure without rows (`snapshot create --schema-only`): never
# a backup of the data, so never taken for one (a user's tag of that name is refused too).
SCHEMA_ONLY_TAG = "schema-only"
# Its restic path's last part: restic's own `forget` (grouped by host and paths) and lockstep's
# retention keep schema-only snapshots in a group of their own, apart from the full ones.
SCHEMA_ONLY_PATH_SUFFIX = "/schema-only"
# A snapshot's restic path names its project: /lockstep/NAME (NAME: the config's `project`).
PROJECT_PATH_PREFIX = "/lockstep/"
# Where a snapshot holds the code: a release directory (and its listing), or a commit's diff.
RELEASE_PATH = "/code/release"
DIFF_PATH = "/code/uncommitted.diff"
# Every prefix of a tag lockstep writes: a user's `--tag release:7` would make a rollback take
# that snapshot for the one holding release 7, a `deploy:` one would join a deploy's snapshots.
RESERVED_TAG_PREFIXES = (
    COMMIT_TAG_PREFIX,
    ENVIRONMENT_TAG_PREFIX,
    KIND_TAG_PREFIX,
    DEPLOY_TAG_PREFIX,
    RELEASE_TAG_PREFIX,
    RESTORE_OF_TAG_PREFIX,
    RESTORES_TAG_PREFIX,
)


@dataclass(frozen=True)
class SnapshotRequest:
    """What the user asked for on the command line."""

    project_directory: Path
    environment: str | None = None
    message: str | None = None
    tags: tuple[str, ...] = ()
    commit: bool = False
    allow_dirty: bool = False
    kind: str = "manual"
    schema_only: bool = False  # the databases' structure without rows
    # What [files] names are stored relative to; default project_directory. A pre-restore
    # snapshot saves files under `snapshot restore --files DIR` relative to DIR.
    files_directory: Path | None = None


@dataclass(frozen=True)
class PreparedCode:
    """The code's state once checked, before anything is written to the repository."""

    kind: str
    git: GitState | None = None
    release_directory: Path | None = None
    work_tree: Path | None = None
    left_out: tuple[Path, ...] = ()  # kept out of the uncommitted diff or the release: see StoredApart
    pending_commit: PendingCommit | None = None  # --commit's commit, put on the branch once written
    # The release a `current -> releases/X` symlink pointed to (X), recorded in the manifest.
    release: str | None = None


@dataclass(frozen=True)
class StoredApart:
    """Files a snapshot stores on their own, so never in its code: not in a --commit, not in the
    uncommitted diff. A secret in git history cannot be taken back; a live SQLite file or the
    repository itself in the diff would be stored twice, or half-written."""

    secrets: tuple[Path, ...] = ()
    # SQLite database files and their companions, a local repository, lockstep's state directory
    # (releases, logs, agent.db): what lockstep writes itself is neither code nor a change to it.
    others: tuple[Path, ...] = ()

    @property
    def paths(self) -> tuple[Path, ...]:
        return self.secrets + self.others


def stored_apart(config: ProjectConfig, project_directory: Path | None = None) -> StoredApart:
    """The files [files] secrets matches, the SQLite databases, a local repository and, given the
    project's directory, the state directory (app.state_directory is relative to it)."""
    from lockstep.databases.sqlite import COMPANION_SUFFIXES, database_path  # sqlite3 only when needed

    secrets = tuple(path for pattern in config.files.secrets for path in _matching_files(pattern))
    others: list[Path] = []
    for database in config.databases.values():
        if database.engine == "sqlite":
            path = database_path(database.url)
            others.extend([path, *(Path(f"{path}{suffix}") for suffix in COMPANION_SUFFIXES)])
    if not config.repository.url.startswith("s3:"):
        others.append(Path(config.repository.url.removeprefix("local:")))
    if project_directory is not None:
        state = Path(config.app.state_directory)
        others.append(state if state.is_absolute() else project_directory / state)
    return StoredApart(secrets=secrets, others=tuple(others))


@dataclass(frozen=True)
class CreatedSnapshot:
    snapshot: Snapshot
    manifest: Manifest
    seconds: float


@dataclass
class _Collected:
    databases: dict[str, DatabaseRecord] = field(default_factory=dict)
    files: list[FileRecord] = field(default_factory=list)


# How to snapshot a dirty work tree, for a command that has no --commit or --allow-dirty
# (`lockstep backup`, the agent's schedules): [code] allow_dirty is what they read.
DIRTY_TREE_CONFIG_HINT = (
    "commit them, or set allow_dirty = true under [code] in lockstep.toml to store their diff with "
    "every snapshot (`lockstep snapshot create --allow-dirty` does that for one snapshot)"
)
DIRTY_TREE_FLAGS_HINT = (
    "commit them (or pass --commit -m MESSAGE), or pass --allow-dirty to store the diff with the snapshot"
)


def prepare_code(
    code: CodeConfig, request: SnapshotRequest, apart: StoredApart, flags: bool = True
) -> PreparedCode | None:
    """Check the code (with --commit, commit it, off the branch until the snapshot is written);
    refuse a dirty git tree unless allowed. `flags`: whether the command takes --commit and
    --allow-dirty, which the refusal's hint names (otherwise it names [code] allow_dirty)."""
    if code.kind is None or code.path is None:
        if request.commit:
            raise UsageError("--commit needs git code", 'set [code] kind = "git" and its path in lockstep.toml')
        return None
    if code.kind == "release-directory":
        if request.commit:
            raise UsageError('--commit only works with [code] kind = "git"')
        if not code.path.is_dir():
            raise SourceError(f"the release directory {code.path} does not exist", "fix [code] path in lockstep.toml")
        # `current` -> releases/<timestamp> (Capistrano): store the release it points at, not the
        # link, which would leave the snapshot without code, and record which release that was.
        resolved = code.path.resolve()
        release = resolved.name if code.path.is_symlink() else None
        return PreparedCode(kind=code.kind, release_directory=resolved, left_out=apart.paths, release=release)
    if request.commit:
        if not request.message:
            raise UsageError("--commit needs a commit message", "pass -m MESSAGE")
        # A new repository without commits: --commit makes the first one.
        if head_commit(code.path) is None or read_git_state(code.path).dirty:
            return _prepare_commit(code.path, request.message, apart)
    # What the snapshot stores apart (secrets, SQLite files, the repository, the state directory)
    # is not in the uncommitted diff either: it does not make the tree dirty.
    try:
        state = read_git_state(code.path, apart.paths)
    except NoCommitsYet as error:
        if not flags:
            raise
        raise NoCommitsYet(
            error.message, "make a first commit (git add -A && git commit -m MESSAGE), or pass --commit -m MESSAGE"
        ) from None
    if state.dirty and not (request.allow_dirty or code.allow_dirty):
        raise UsageError(
            f"the git work tree {code.path} has uncommitted changes",
            DIRTY_TREE_FLAGS_HINT if flags else DIRTY_TREE_CONFIG_HINT,
        )
    return PreparedCode(kind="git", git=state, work_tree=code.path, left_out=apart.paths)


def _prepare_commit(work_tree: Path, message: str, apart: StoredApart) -> PreparedCode:
    """--commit: refuse to put a secret into git history (it could never be taken out), then
    commit every other change except what the snapshot stores apart. The branch is moved by
    create_snapshot once the snapshot is written: a failure before leaves no commit behind."""
    secrets = uncommitted_paths(work_tree, apart.secrets)
    if secrets:
        raise UsageError(
            f"--commit would commit secret files listed under [files] secrets: {', '.join(secrets)}",
            "add them to .gitignore (and `git rm --cached` one that is tracked); the snapshot stores them encrypted",
        )
    pending = build_commit(work_tree, message, apart.paths)
    if pending is None:  # only what the snapshot stores apart has changed: HEAD is the code
        state = read_git_state(work_tree)
        return PreparedCode(kind="git", git=replace(state, dirty=False), work_tree=work_tree, left_out=apart.paths)
    git = GitState(commit=pending.commit, branch=current_branch(work_tree), author=pending.author, dirty=False)
    return PreparedCode(kind="git", git=git, work_tree=work_tree, left_out=apart.paths, pending_commit=pending)


def database_password(name: str, database: DatabaseConfig) -> str | None:
    """The database password from password_env or password_file; None when neither is set."""
    if database.password_env is not None:
        password = os.environ.get(database.password_env)
        if password is None:
            raise UsageError(
                f"databases.{name}: the environment variable {database.password_env} is not set",
                "set it to the database password, or change password_env in lockstep.toml",
            )
        return password
    if database.password_file is not None:
        try:
            return database.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as error:
            raise UsageError(
                f"databases.{name}: cannot read the password file {database.password_file}: {error.strerror}",
                "fix password_file in lockstep.toml",
            ) from error
    return None


def snapshot_tags(request: SnapshotRequest, code: PreparedCode | None) -> list[str]:
    """Tags that let `snapshot list` filter without reading manifests."""
    tags = [
        LOCKSTEP_TAG,
        KIND_TAG_PREFIX + request.kind,
        ENVIRONMENT_TAG_PREFIX + environment_name(request.environment),
    ]
    if request.schema_only:
        tags.append(SCHEMA_ONLY_TAG)
    if code is not None and code.git is not None:
        tags.append(COMMIT_TAG_PREFIX + code.git.short_commit)
    tags.extend(tag for tag in request.tags if tag not in tags)
    return tags


def check_user_tags(tags: Iterable[str]) -> None:
    """Refuse a user's tag that lockstep sets itself: `--tag commit:deadbeef` would make
    `snapshot show deadbeef` find a snapshot of other code, `env:`/`kind:` would put it under
    another environment or kind for list, forget and retention, `release:` would have a
    rollback restore a release directory from it (RESERVED_TAG_PREFIXES)."""
    for tag in tags:
        if tag in (LOCKSTEP_TAG, SCHEMA_ONLY_TAG) or tag.startswith(RESERVED_TAG_PREFIXES):
            raise UsageError(
                f"the tag {tag!r} is reserved: lockstep sets the tags {LOCKSTEP_TAG}, {SCHEMA_ONLY_TAG}, "
                + ", ".join(f"{prefix}..." for prefix in RESERVED_TAG_PREFIXES)
                + " itself",
                "choose a tag without these prefixes",
            )


def environment_name(environment: str | None) -> str:
    return environment or DEFAULT_ENVIRONMENT


def load_database_adapters(config: ProjectConfig) -> None:
    """Import each configured database's adapter (PostgreSQL's driver alone is ~70 ms): work to
    do while the repository opens (RepositoryAccess.session's `meanwhile`)."""
    for database in config.databases.values():
        adapter_for(database.url)


def create_snapshot(
    repository: Repository,
    config: ProjectConfig,
    request: SnapshotRequest,
    code: PreparedCode | None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> CreatedSnapshot:
    """Write one coordinated snapshot into an open, locked repository; all of it or nothing."""
    started = time.monotonic()
    created = now().isoformat(timespec="seconds").replace("+00:00", "Z")
    hostname = socket.gethostname()
    collected = _Collected()
    with SnapshotBuilder(repository) as builder:
        code_record = _store_code(builder, code)
        for name, database in config.databases.items():
            collected.databases[name] = _store_database(builder, name, database, request.schema_only)
        base = request.project_directory
        files_base = request.files_directory or base
        collected.files.extend(_store_files(builder, config.files.config, "config", files_base))
        collected.files.extend(_store_files(builder, config.files.secrets, "secret", files_base))
        manifest = Manifest(
            message=request.message,
            author=snapshot_author(code.work_tree if code is not None else None),
            created=created,
            environment=request.environment,
            tags=list(request.tags),
            lockstep_version=__version__,
            hostname=hostname,
            code=code_record,
            databases=collected.databases,
            files=collected.files,
            kind=request.kind,
            schema_only=request.schema_only,
        )
        builder.add_bytes(MANIFEST_PATH, manifest.to_json())
        path = project_path(project_name(config, base), request.schema_only)
        snapshot = builder.commit(paths=[path], tags=snapshot_tags(request, code), hostname=hostname)
    if code is not None and code.pending_commit is not None and code.work_tree is not None:
        _publish_commit(code.work_tree, code.pending_commit, snapshot)
    return CreatedSnapshot(snapshot=snapshot, manifest=manifest, seconds=time.monotonic() - started)


def _publish_commit(work_tree: Path, pending: PendingCommit, snapshot: Snapshot) -> None:
    """--commit: the snapshot is written, so its commit goes onto the branch."""
    try:
        publish_commit(work_tree, pending)
    except SourceError as error:
        raise SourceError(f"snapshot {snapshot.short_id} was written; {error.message}", error.hint) from error


def _add_release(builder: SnapshotBuilder, target: str, source: Path, left_out: set[Path]) -> int:
    """Store the release directory `source` at `target` without what lies in `left_out` (the
    repository, the state directory, SQLite files, secrets: a project directory holds them all);
    the bytes stored. Only the directories on the way to a left-out path are walked here; one
    that holds nothing else is left out too."""
    if not any(source in path.parents for path in left_out):
        return builder.add_path(target, source)
    size = 0
    stored = False
    for child in sorted(source.iterdir()):
        resolved = child.resolve() if child.is_symlink() else child
        if child in left_out or resolved in left_out:
            continue
        if child.is_dir() and not child.is_symlink():
            size += _add_release(builder, f"{target}/{child.name}", child, left_out)
        else:
            size += builder.add_path(f"{target}/{child.name}", child)
        stored = True
    if stored:  # its own mode, owner and times, as add_path keeps them; one left empty is left out
        builder.add_directory(target, source)
    elif target == RELEASE_PATH:
        raise SourceError(
            f"the release directory {source} holds nothing but what the snapshot stores apart",
            "fix [code] path in lockstep.toml",
        )
    return size


def _store_code(builder: SnapshotBuilder, code: PreparedCode | None) -> CodeRecord | None:
    if code is None:
        return None
    if code.release_directory is not None:
        left_out = {path.resolve() for path in code.left_out}
        builder.describe_paths()
        size = _add_release(builder, RELEASE_PATH, code.release_directory, left_out)
        listing = stored_listing(builder, RELEASE_PATH)
        builder.add_bytes(RELEASE_PATH + LISTING_SUFFIX, listing, mode=0o644)
        return CodeRecord(
            kind=code.kind,
            path=RELEASE_PATH,
            size=size,
            tree_sha256=listing_sha256(listing),
            listing=RELEASE_PATH + LISTING_SUFFIX,
            release=code.release,
        )
    assert code.git is not None and code.work_tree is not None
    builder.add_bytes("/code/commit", (code.git.commit + "\n").encode("ascii"))
    diff_path: str | None = None
    diff_size: int | None = None
    diff_sha256: str | None = None
    if code.git.dirty:
        diff = uncommitted_diff(code.work_tree, code.left_out)
        # Hashed as it streams in: a diff is code-sized, and restoring one checks it before
        # `git apply` takes it.
        stored = _store_stream(builder, DIFF_PATH, diff, allow_empty=True, hash_bytes=True)
        diff_path, diff_size, diff_sha256 = DIFF_PATH, stored.size, stored.sha256
    return CodeRecord(
        kind=code.kind,
        commit=code.git.commit,
        branch=code.git.branch,
        author=code.git.author,
        dirty=code.git.dirty,
        path=diff_path,
        size=diff_size,
        sha256=diff_sha256,
    )


def _store_stream(
    builder: SnapshotBuilder, path: str, stream: DumpStream, allow_empty: bool = False, hash_bytes: bool = False
) -> StoredFile:
    """Stream a producer into the snapshot; a failure stops the producer and fails the snapshot.

    A dump is not hashed a second time as a whole (`hash_bytes`): the SHA-256 of its blob IDs
    pins it (see StoredFile)."""
    try:
        return builder.add_stream(
            path, stream.stdout, finished_cleanly=stream.finish, allow_empty=allow_empty, hash_bytes=hash_bytes
        )
    except BaseException:
        stream.kill()
        raise


def _store_database(
    builder: SnapshotBuilder, name: str, database: DatabaseConfig, schema_only: bool = False
) -> DatabaseRecord:
    adapter: DatabaseAdapter = adapter_for(database.url)
    password = database_password(name, database)
    path = f"/databases/{name}{adapter.dump_format.extension}"
    inspected = "after-dump"
    try:
        dump = (
            adapter.dump(database.url, password, schema_only=True)
            if schema_only
            else adapter.dump(database.url, password, exclude_table_data=database.exclude_table_data)
        )
        info = None
        consistent_info = getattr(dump, "consistent_info", None)
        # A dump that fingerprints its snapshot on a thread of its own is stored first and asked
        # afterwards: the checksums (1.3-2.3 s on the 1 GB shop database) overlap the dump
        # instead of holding it back.
        fingerprints_while_dumping = bool(getattr(dump, "fingerprints_while_dumping", False))
        if consistent_info is not None and not fingerprints_while_dumping:
            # The dump's own snapshot (SQLite's backup copy, PostgreSQL's exported snapshot):
            # the fingerprint is exactly what is stored, so a restore can be checked strictly
            # even while the application keeps writing.
            try:
                info = consistent_info()
                inspected = str(getattr(dump, "inspected", "dump"))
            except BaseException:
                dump.kill()
                raise
        stored = _store_stream(builder, path, dump)
        size, blobs_sha256 = stored.size, stored.blobs_sha256
        if consistent_info is not None and info is None:
            info = consistent_info()
            inspected = str(getattr(dump, "inspected", "dump"))
        inspected_note = getattr(dump, "inspected_note", None)
        warnings = [str(warning) for warning in getattr(dump, "warnings", ())]
        rows_excluded = [str(table) for table in getattr(dump, "rows_excluded", ())]
        if info is None:
            # A schema-only dump holds no row: its tables are listed, not fingerprinted (a
            # fingerprint reads every row, for counts that would all be replaced by 0).
            info = (
                _listed(adapter.summarize(database.url, password))
                if schema_only
                else adapter.inspect(database.url, password)
            )
    except SourceError as error:
        message = f"database {name} ({redact_url(database.url)}): {error.message}"
        if "no snapshot was written" not in message:
            message += "; no snapshot was written"
        raise SourceError(message, error.hint) from error
    tables = [
        TableRecord(
            name=table.name,
            rows=table.rows,
            checksum=table.checksum,
            consistent=table.consistent,
            history_rows=table.history_rows,
            history_checksum=table.history_checksum,
        )
        for table in info.tables
    ]
    if schema_only:
        tables, inspected, inspected_note = _schema_only_tables(adapter, dump, tables), "dump", None
    elif rows_excluded:
        tables = _without_rows(adapter, tables, set(rows_excluded))
    return DatabaseRecord(
        engine=info.engine,
        server_version=info.server_version,
        dump_format=adapter.dump_format.name,
        path=path,
        size=size,
        sha256=None,
        blobs_sha256=blobs_sha256,
        tables=tables,
        migration_version=info.migration_version,
        migration_table=info.migration_table,
        inspected=inspected,
        inspected_note=None if inspected_note is None else str(inspected_note),
        checksum_algorithm=getattr(adapter, "checksum_algorithm", None),
        warnings=warnings,
        schema_only=schema_only,
        rows_excluded=rows_excluded,
        sequences=None
        if info.sequences is None
        else [SequenceRecord(sequence.name, sequence.last_value, sequence.is_called) for sequence in info.sequences],
        large_objects=None
        if info.large_objects is None
        else LargeObjectsRecord(info.large_objects.count, info.large_objects.checksum),
        materialized_views=None
        if info.materialized_views is None
        else [
            MaterializedViewRecord(view.name, view.populated, view.rows, view.checksum)
            for view in info.materialized_views
        ],
    )


def _listed(summary: DatabaseSummary) -> DatabaseInfo:
    """A database's tables as a summary lists them (no row read), each without rows: what a
    schema-only dump's restore holds (_schema_only_tables gives them the engine's empty checksum)."""
    return DatabaseInfo(
        engine=summary.engine,
        server_version=summary.server_version,
        tables=[TableInfo(name=name, rows=0, checksum="") for name in summary.tables],
        migration_version=summary.migration_version,
        migration_table=summary.migration_table,
    )


def _schema_only_tables(adapter: DatabaseAdapter, dump: object, tables: list[TableRecord]) -> list[TableRecord]:
    """A schema-only dump's tables: each with what a restore of it holds, no rows and the
    checksum of an empty table. SQLite's fingerprint is of the emptied copy itself already."""
    if getattr(dump, "fingerprints_stored_copy", False):
        return tables
    empty = getattr(adapter, "empty_table_checksum", None)
    assert empty is not None, f"the {adapter.engine} adapter names no checksum of an empty table"
    return [TableRecord(name=table.name, rows=0, checksum=str(empty)) for table in tables]


def _without_rows(adapter: DatabaseAdapter, tables: list[TableRecord], excluded: set[str]) -> list[TableRecord]:
    """The tables dumped without their rows (exclude_table_data) as a restore holds them: empty.
    A fingerprint taken after the dump (no consistent one) has read their live rows."""
    empty = str(getattr(adapter, "empty_table_checksum", ""))
    return [
        TableRecord(name=table.name, rows=0, checksum=empty) if table.name in excluded else table for table in tables
    ]


def is_schema_only(snapshot: Snapshot) -> bool:
    """Whether a snapshot holds the databases' structure only (`snapshot create --schema-only`)."""
    return SCHEMA_ONLY_TAG in snapshot.tags


def _matching_files(pattern: str) -> list[Path]:
    """Regular files a pattern names; a matched directory contributes every file beneath it."""
    found: list[Path] = []
    for match in sorted(glob.glob(pattern, recursive=True)):
        path = Path(match)
        if path.is_dir():
            found.extend(sorted(child for child in path.rglob("*") if child.is_file()))
        elif path.is_file():
            found.append(path)
    return found


def _shown_pattern(pattern: str, base: Path) -> str:
    """A pattern as lockstep.toml has it: relative ones were anchored at the escaped project path."""
    anchor = os.path.join(glob.escape(str(base)), "")
    return pattern.removeprefix(anchor) if pattern.startswith(anchor) else pattern


def _relative_name(path: Path, base: Path) -> str:
    """Where a matched file is recorded and restored: its own path relative to the project (an
    absolute one outside it). A symlink keeps the link's name and stores the target's content;
    resolving it would record conf.d/link.yml -> /elsewhere/shared.yml as elsewhere/shared.yml,
    and drop it when it points to another matched file. Only the directories above it are
    resolved, and only when the path as written is not inside the project."""
    absolute = Path(os.path.abspath(path))
    root = base.resolve()
    for candidate in (absolute, absolute.parent.resolve() / absolute.name):
        with contextlib.suppress(ValueError):
            return candidate.relative_to(root).as_posix()
    return absolute.as_posix().lstrip("/")


def _store_files(builder: SnapshotBuilder, patterns: list[str], kind: FileKind, base: Path) -> list[FileRecord]:
    """Store files under /files/config/ or /files/secrets/; the manifest gets path, size and hash only."""
    folder = "config" if kind == "config" else "secrets"
    section = "files.config" if kind == "config" else "files.secrets"
    records: list[FileRecord] = []
    seen: set[str] = set()
    for pattern in patterns:
        paths = _matching_files(pattern)
        if not paths:
            raise SourceError(
                f"{section}: the pattern {_shown_pattern(pattern, base)} matches no file",
                "create the file or fix the pattern in lockstep.toml",
            )
        for source in paths:
            relative = _relative_name(source, base)
            if relative in seen:
                continue
            seen.add(relative)
            target = f"/files/{folder}/{relative}"
            try:
                with source.open("rb") as stream:
                    mode = os.fstat(stream.fileno()).st_mode & 0o7777
                    stored = builder.add_stream(target, stream, allow_empty=True, mode=mode)
            except OSError as error:
                raise SourceError(f"cannot read {source}: {error.strerror}", "check its permissions") from error
            assert stored.sha256 is not None  # add_stream hashes the bytes unless told not to
            records.append(FileRecord(path=stored.path, kind=kind, size=stored.size, sha256=stored.sha256))
    return records


def load_manifest(repository: Repository, snapshot: Snapshot) -> Manifest:
    """Read /manifest.json out of a snapshot."""
    try:
        node = find_node(repository, snapshot, MANIFEST_PATH)
    except NotFound as error:
        raise NotFound(
            f"snapshot {snapshot.short_id} has no {MANIFEST_PATH}", "it was not made by `lockstep snapshot create`"
        ) from error
    buffer = io.BytesIO()
    dump_file(repository, node, buffer)
    return Manifest.from_json(buffer.getvalue(), f"{MANIFEST_PATH} of snapshot {snapshot.short_id}")


def is_lockstep_snapshot(snapshot: Snapshot) -> bool:
    return LOCKSTEP_TAG in snapshot.tags


def project_name(config: ProjectConfig, directory: Path) -> str:
    """The project's name in the repository: the config's `project`, else the name of the
    directory lockstep.toml is in (what every snapshot was stored under before the key existed)."""
    return config.project or directory.name or DEFAULT_PROJECT


def project_path(project: str, schema_only: bool = False) -> str:
    """The restic path a snapshot of `project` is stored under; a schema-only one's ends in
    /schema-only, so that restic's `forget` (grouped by host and paths) keeps it apart."""
    return PROJECT_PATH_PREFIX + project + (SCHEMA_ONLY_PATH_SUFFIX if schema_only else "")


def snapshot_project(snapshot: Snapshot) -> str | None:
    """The project a lockstep snapshot belongs to, read from its one path (project_path); None
    for a snapshot of another shape (another tool's, or paths changed by hand)."""
    if len(snapshot.paths) != 1 or not snapshot.paths[0].startswith(PROJECT_PATH_PREFIX):
        return None
    name = snapshot.paths[0].removeprefix(PROJECT_PATH_PREFIX)
    if name.endswith(SCHEMA_ONLY_PATH_SUFFIX):
        name = name.removesuffix(SCHEMA_ONLY_PATH_SUFFIX)
    return name or None


def is_of_project(snapshot: Snapshot, project: str) -> bool:
    """Whether `snapshot` is a lockstep snapshot of `project`: projects sharing a repository must
    never list, restore or forget each other's snapshots."""
    return is_lockstep_snapshot(snapshot) and snapshot_project(snapshot) == project


def tag_value(snapshot: Snapshot, prefix: str) -> str | None:
    """The value of the first `prefix…` tag, e.g. the short commit of `commit:…`."""
    for tag in snapshot.tags:
        if tag.startswith(prefix):
            return tag[len(prefix) :]
    return None
