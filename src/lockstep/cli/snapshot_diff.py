"""`lockstep snapshot diff ID [--database NAME]`: what a data restore would discard."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from lockstep.cli.output import console, print_json
from lockstep.cli.project_options import config_and_env_options
from lockstep.cli.project_options import wants_json as _wants_json
from lockstep.cli.snapshot import snapshot_group

if TYPE_CHECKING:
    from lockstep.pipeline.diff import DatabaseDiff, TableDiff


def diff_document(
    snapshot_id: str, databases: list[DatabaseDiff], skipped: list[str], not_in_snapshot: list[str] | None = None
) -> dict[str, object]:
    return {
        "snapshot": snapshot_id,
        "changed": any(database.changed for database in databases),
        "databases": [database.to_document() for database in databases],
        "skipped": skipped,
        "not_in_snapshot": not_in_snapshot or [],
    }


def _schema_text(table: TableDiff) -> str:
    if table.status == "added":
        return "table added"
    if table.status == "removed":
        return "table removed"
    parts = []
    for column in table.columns:
        if column.change == "added":
            parts.append(f"+{column.column} {column.live_type}")
        elif column.change == "removed":
            parts.append(f"-{column.column} {column.snapshot_type}")
        else:
            parts.append(f"{column.column}: {column.snapshot_type} → {column.live_type}")
    if table.primary_key_changed:
        parts.append("primary key changed")
    if table.default_collation:
        parts.append(f"default collation: {table.default_collation[0]} → {table.default_collation[1]}")
    return ", ".join(parts)


def print_database_diff(database: DatabaseDiff, to: Console = console) -> None:
    """One database's changes as a table; unchanged tables are left out."""
    changed = database.changed_tables
    header = f"database {database.name} ({database.engine}, {database.live}) since snapshot {database.snapshot_id[:8]}"
    if database.schema_only:
        header += " (schema-only snapshot: schema changes only, rows are not compared)"
    if not database.changed:
        to.print(f"{header}: no changes", markup=False)
        return
    to.print(f"{header}:", markup=False)
    _print_beyond_tables(database, to)
    if not changed:
        return
    if database.schema_only:
        for item in changed:
            to.print(f"  {item.name}: {item.status}; {_schema_text(item) or 'table ' + item.status}", markup=False)
        return
    table = Table()
    table.add_column("Table", no_wrap=True)
    for title in ("Added", "Removed", "Changed"):
        table.add_column(title, justify="right")
    table.add_column("Schema")
    for item in changed:
        compared = item.rows_not_in_snapshot is None
        table.add_row(
            item.name,
            str(item.rows_added) if compared else "-",
            str(item.rows_removed) if compared else "-",
            str(item.rows_changed) if item.key and compared else "-",
            _schema_text(item),
        )
    to.print(table)
    # Imported here: `snapshot diff | restore --help` need no pipeline; a diff being printed has loaded it.
    from lockstep.pipeline.diff import describe_rows_not_in_snapshot

    for item in database.tables:
        if item.rows_not_in_snapshot is not None:
            to.print(f"  {item.name}: {describe_rows_not_in_snapshot(item.rows_not_in_snapshot)}", markup=False)


def _sequence_value(value: tuple[int, bool] | None) -> str:
    if value is None:
        return "absent"
    return str(value[0]) if value[1] else f"{value[0]} (unused)"


def _print_beyond_tables(database: DatabaseDiff, to: Console) -> None:
    """The sequences that moved and the large objects changed (PostgreSQL), one line each."""
    for sequence in database.sequences:
        to.print(
            f"  sequence {sequence.name}: {sequence.status}, "
            f"{_sequence_value(sequence.snapshot)} → {_sequence_value(sequence.live)}",
            markup=False,
        )
    objects = database.large_objects
    if objects is not None and objects.any:
        to.print(
            f"  large objects: {objects.added} added, {objects.removed} removed, {objects.changed} changed",
            markup=False,
        )


@snapshot_group.command("diff")
@click.argument("reference", metavar="ID")
@click.option("--database", metavar="NAME", help="Only this database (a [databases.NAME] of lockstep.toml).")
@config_and_env_options(
    "Environment ([environments.NAME]) whose snapshot ID names, compared with its live databases;"
    " default: default_environment from lockstep.toml."
)
@click.option("--json", "json_output", is_flag=True, help="Print the differences as JSON.")
def diff_command(
    reference: str, database: str | None, config_path: Path | None, environment: str | None, json_output: bool
) -> None:
    """Per table, the rows added, removed and changed in the live databases since the snapshot."""
    from lockstep.actions.snapshot_diff import diff  # here: the adapters are not for `--help`

    result = diff(Path.cwd(), reference, database=database, config_path=config_path, environment=environment)
    if _wants_json(json_output):
        print_json(diff_document(result.snapshot.id, result.databases, result.skipped, result.not_in_snapshot))
        return
    for item in result.databases:
        print_database_diff(item)
    for name in result.skipped:
        console.print(f"database {name}: not in lockstep.toml any more, not compared", markup=False)
    for name in result.not_in_snapshot:
        console.print(
            f"database {name}: not in snapshot {result.snapshot.short_id}, not compared"
            " (give a snapshot that holds it: `lockstep snapshot list`)",
            markup=False,
        )


COMMANDS: list[click.Command] = []
