"""Bring databases back to a snapshot, after saying what that discards.

Used by a deploy that fails after its migrations ran, and by `lockstep rollback --with-data`.
Before a live database is replaced, a `pre-restore` snapshot of it is taken, so the restore
itself can be undone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lockstep.config import ProjectConfig
from lockstep.errors import UsageError
from lockstep.fault_injection import wait_point
from lockstep.pipeline.diff import (
    DatabaseDiff,
    LargeObjectsDiff,
    SequenceDiff,
    TableDiff,
    describe_rows_not_in_snapshot,
    diff_database,
)
from lockstep.pipeline.restore import RestoredDatabase, ServerAccess, restore_database
from lockstep.pipeline.retention_policy import PRE_RESTORE_KIND
from lockstep.pipeline.snapshot import (
    RESTORES_TAG_PREFIX,
    CreatedSnapshot,
    SnapshotRequest,
    create_snapshot,
    database_password,
    load_manifest,
)
from lockstep.repository.repository import Repository
from lockstep.repository.snapshot import Snapshot
from lockstep.wording import counted


@dataclass(frozen=True)
class DataRollbackResult:
    pre_restore_snapshot_id: str | None
    restored: list[RestoredDatabase]


def live_access(config: ProjectConfig, name: str) -> ServerAccess:
    database = config.databases[name]
    return ServerAccess(url=database.url, password=database_password(name, database))


def snapshot_databases(repository: Repository, snapshot: Snapshot, config: ProjectConfig) -> list[str]:
    """The databases both in the snapshot and in the config, in the config's order. A
    schema-only snapshot is refused: it holds no rows, so bringing data back from it would
    empty every table."""
    manifest = load_manifest(repository, snapshot)
    if manifest.schema_only:
        raise UsageError(
            f"snapshot {snapshot.short_id} is a schema-only snapshot: it holds no rows, so its data cannot be "
            "brought back (every row of the databases would be discarded)",
            "restore data from a full snapshot; `lockstep snapshot restore` restores a schema-only one explicitly",
        )
    return [name for name in config.databases if name in manifest.databases]


def describe_discarded(repository: Repository, snapshot: Snapshot, config: ProjectConfig) -> list[DatabaseDiff]:
    """Per database, what the live data has that a restore of `snapshot` would throw away."""
    manifest = load_manifest(repository, snapshot)
    return [
        diff_database(repository, snapshot, manifest, name, live_access(config, name))
        for name in snapshot_databases(repository, snapshot, config)
    ]


def summarize_discarded(diffs: list[DatabaseDiff]) -> list[str]:
    """Lines a person reads before agreeing: one per changed table, the large objects and each
    sequence that moved (PostgreSQL), or that nothing changed."""
    lines = []
    for diff in diffs:
        if not diff.changed:
            lines.append(f"database {diff.name}: no changes since the snapshot; nothing is lost")
            continue
        for table in diff.changed_tables:
            lines.append(f"database {diff.name}, table {table.name}: {describe_table_change(table)}")
        if diff.large_objects is not None and diff.large_objects.any:
            lines.append(f"database {diff.name}, large objects: {describe_large_objects(diff.large_objects)}")
        for sequence in diff.sequences:
            lines.append(f"database {diff.name}, sequence {sequence.name}: {describe_sequence(sequence)}")
    return lines


def _losses(noun: str | None, added: int, changed: int, removed: int) -> list[str]:
    """What a restore does to what was written since the snapshot: "3 rows added (lost)"..."""
    losses = ((added, "added (lost)"), (changed, "changed (changes lost)"), (removed, "deleted (come back)"))
    return [f"{counted(number, noun) if noun else number} {what}" for number, what in losses if number]


def describe_large_objects(objects: LargeObjectsDiff) -> str:
    """The large objects written since the snapshot, as describe_table_change says rows."""
    return ", ".join(_losses(None, objects.added, objects.changed, objects.removed))


def describe_sequence(sequence: SequenceDiff) -> str:
    """A sequence that moved: a restore sets it back, so numbers handed out since come again."""
    if sequence.live is None:
        return "dropped after the snapshot; a restore brings it back"
    if sequence.snapshot is None:
        return "created after the snapshot; a restore drops it"
    return f"at {sequence.live[0]}, at {sequence.snapshot[0]} in the snapshot; a restore sets it back"


def describe_table_change(table: TableDiff) -> str:
    """What the live table has beyond the snapshot, in words: these are the writes a restore loses."""
    if table.status == "added":
        return "created after the snapshot; a restore drops it"
    if table.status == "removed":
        return "dropped after the snapshot; a restore brings it back"
    parts = _losses("row", table.rows_added, table.rows_changed, table.rows_removed)
    if table.rows_not_in_snapshot is not None:
        parts.append(describe_rows_not_in_snapshot(table.rows_not_in_snapshot))
    if table.columns:
        parts.append(f"{counted(len(table.columns), 'column change')} (undone)")
    if table.default_collation:
        parts.append(f"default collation {table.default_collation[1]} (set back to {table.default_collation[0]})")
    return ", ".join(parts) or "changed"


def restore_snapshot_data(
    repository: Repository,
    snapshot: Snapshot,
    config: ProjectConfig,
    project_directory: Path,
    environment: str,
    pre_restore: bool = True,
    on_pre_restore: Callable[[str], None] | None = None,
) -> DataRollbackResult:
    """Snapshot the live databases (kind pre-restore), then restore each from `snapshot`, verified.

    `on_pre_restore` gets the pre-restore snapshot's ID before the first database is replaced:
    a caller that must be able to put the data back learns how even if a restore fails half-way.
    """
    wait_point("restore data")  # tests: requests arrive during a hold, however loaded the machine
    manifest = load_manifest(repository, snapshot)
    names = snapshot_databases(repository, snapshot, config)
    pre_restore_id = None
    if pre_restore and names:
        no_files = config.files.model_copy(update={"config": [], "secrets": []})
        databases = {name: config.databases[name] for name in names}
        only_databases = config.model_copy(update={"databases": databases, "files": no_files})
        created: CreatedSnapshot = create_snapshot(
            repository,
            only_databases,
            SnapshotRequest(
                project_directory=project_directory,
                environment=environment,
                message=f"before restoring snapshot {snapshot.short_id}",
                tags=(RESTORES_TAG_PREFIX + snapshot.short_id,),
                kind=PRE_RESTORE_KIND,
            ),
            code=None,
        )
        pre_restore_id = created.snapshot.id
        if on_pre_restore is not None:
            on_pre_restore(pre_restore_id)
    restored = [
        restore_database(repository, snapshot, manifest, name, live_access(config, name), replace=True)
        for name in names
    ]
    return DataRollbackResult(pre_restore_snapshot_id=pre_restore_id, restored=restored)
