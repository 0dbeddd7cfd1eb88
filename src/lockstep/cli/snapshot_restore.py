"""`lockstep snapshot restore ID [--database NAME [--table NAME]... [--to URL]] [--code DIR] [--files DIR] [--yes]`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lockstep.cli.output import console, error_console, print_json
from lockstep.cli.project_options import config_and_env_options
from lockstep.cli.project_options import wants_json as _wants_json
from lockstep.cli.reporting import progress_options, progress_reporter
from lockstep.cli.snapshot import snapshot_group
from lockstep.cli.snapshot_diff import print_database_diff
from lockstep.errors import UsageError
from lockstep.wording import counted

if TYPE_CHECKING:
    from lockstep.actions.snapshot_restore import RestoreOutcome, RestorePlan


def _confirm_on_terminal(json_output: bool) -> Any:
    def confirm(plan: RestorePlan) -> bool:
        replaced = _replaced(plan)
        if not sys.stdin.isatty():
            raise UsageError(
                f"restoring {replaced} replaces live data, and there is no terminal to confirm it on",
                "pass --yes to restore without asking (a pre-restore snapshot is still taken)",
            )
        for diff in plan.diffs:  # on stderr with --json, so stdout stays one JSON document
            print_database_diff(diff, error_console if json_output else console)
        for name in plan.schema_only:
            error_console.print(f"schema-only snapshot: every row of database {name} is discarded", markup=False)
        discarded = [diff.name for diff in plan.diffs if diff.changed and diff.name not in plan.schema_only]
        if discarded:
            error_console.print(
                f"restoring snapshot {plan.snapshot.short_id} discards the changes above in {', '.join(discarded)}",
                markup=False,
            )
        if plan.files:  # names only: they may be secrets
            error_console.print(
                f"restoring snapshot {plan.snapshot.short_id} overwrites {_files_phrase(plan)} "
                f"with other content: {', '.join(plan.files)}",
                markup=False,
            )
        return click.confirm(f"replace {replaced} with snapshot {plan.snapshot.short_id}?", default=False, err=True)

    return confirm


def _files_phrase(plan: RestorePlan) -> str:
    return f"{counted(len(plan.files), 'file')} in {plan.files_directory}"


def _replaced(plan: RestorePlan) -> str:
    """What a confirmation names: the databases in place and the files overwritten."""
    parts = [f"{', '.join(plan.databases)} in place"] if plan.databases else []
    if plan.files:
        parts.append(_files_phrase(plan))
    return " and ".join(parts)


def outcome_document(outcome: RestoreOutcome) -> dict[str, Any]:
    return {
        "snapshot": outcome.snapshot.id,
        "pre_restore_snapshot": None if outcome.pre_restore is None else outcome.pre_restore.id,
        "databases": [
            {
                "name": item.name,
                "target": item.target,
                "tables": item.tables,
                "rows": item.rows,
                "verified": True,
                "only_tables": item.only_tables,
                "left_out": item.left_out,
            }
            for item in outcome.databases
        ],
        "discarded": [diff.to_document() for diff in outcome.diffs],
        "code": outcome.code,
        "warnings": outcome.warnings,
        "files": [file.path for file in outcome.files],
        "overwritten_files": outcome.overwritten_files,
        "hints": outcome.hints,
    }


@snapshot_group.command("restore")
@click.argument("reference", metavar="ID")
@click.option("--database", metavar="NAME", help="Only this database of the snapshot.")
@click.option(
    "--to", "to_url", metavar="URL", help="Restore --database into this database instead (created if missing)."
)
@click.option(
    "--table",
    "tables",
    metavar="NAME",
    multiple=True,
    help="Only this table of --database (repeatable; `schema.table` for PostgreSQL), into a missing or empty"
    " --to database, never in place. Foreign keys to tables not restored are left out; views (and"
    " MySQL/MariaDB's routines and events) are not restored.",
)
@click.option("--code", "code_directory", type=click.Path(path_type=Path, file_okay=False), help="Write the code here.")
@click.option(
    "--files",
    "files_directory",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write config and secret files here; existing ones with other content are confirmed and saved first.",
)
@click.option(
    "-y", "--yes", is_flag=True, help="Do not ask; replace live or non-empty target databases and existing files."
)
@config_and_env_options(
    "Environment ([environments.NAME]) whose snapshot ID names, restored into its databases;"
    " default: default_environment from lockstep.toml."
)
@progress_options
@click.option("--json", "json_output", is_flag=True, help="Print what was restored as JSON.")
def restore_command(
    reference: str,
    database: str | None,
    to_url: str | None,
    tables: tuple[str, ...],
    code_directory: Path | None,
    files_directory: Path | None,
    yes: bool,
    config_path: Path | None,
    environment: str | None,
    log_format: str,
    quiet: bool,
    verbose: bool,
    json_output: bool,
) -> None:
    """Restore databases (in place, after a pre-restore snapshot), code or files from a snapshot.

    Without --database, --code or --files every database is restored in place. Live databases
    and files under --files DIR with other content are listed and confirmed (or --yes), then
    saved in a pre-restore snapshot. With --table, only those tables of --database are
    restored, into the --to database (missing or empty), and checked against the manifest.
    """
    # Imported here: the restore pipeline and the database adapters are for the run, not for
    # `snapshot restore --help`.
    from lockstep.actions.snapshot_restore import RestoreRequest, restore

    wants_json = _wants_json(json_output)
    request = RestoreRequest(
        reference=reference,
        database=database,
        to_url=to_url,
        code_directory=code_directory,
        files_directory=files_directory,
        yes=yes,
        tables=tables,
    )
    outcome = restore(
        Path.cwd(),
        request,
        _confirm_on_terminal(wants_json),
        config_path=config_path,
        environment=environment,
        reporter=progress_reporter(log_format, quiet, verbose),
    )
    if wants_json:
        print_json(outcome_document(outcome))
        return
    if yes:  # not shown at a prompt: say what was discarded
        for diff in outcome.diffs:
            print_database_diff(diff)
            if outcome.manifest.databases[diff.name].schema_only:
                console.print(f"schema-only snapshot: every row of database {diff.name} is discarded", markup=False)
    if outcome.pre_restore is not None:
        saved = " and ".join(
            (["the databases"] if outcome.diffs else []) + (["the files"] if outcome.overwritten_files else [])
        )
        console.print(f"pre-restore snapshot {outcome.pre_restore.short_id} saved ({saved} as they were)", markup=False)
    for item in outcome.databases:
        what = f"database {item.name}"
        if item.only_tables is not None:
            what = f"{counted(len(item.only_tables), 'table')} of database {item.name} ({', '.join(item.only_tables)})"
        console.print(
            f"{what} restored into {item.target} and verified: {counted(item.tables, 'table')}, "
            f"{counted(item.rows, 'row')}, {item.seconds:.1f} s",
            markup=False,
        )
        for left_out in item.left_out:
            console.print(f"left out: {left_out}", markup=False)
    if outcome.code is not None:
        console.print(f"code: {outcome.code} written to {code_directory}", markup=False)
    for warning in outcome.warnings:
        console.print(f"warning: {warning}", markup=False)
    if files_directory is not None:
        if outcome.overwritten_files:
            console.print(f"overwritten in {files_directory}: {', '.join(outcome.overwritten_files)}", markup=False)
        written = counted(len(outcome.files), "config and secret file")
        console.print(f"{written} written to {files_directory}", markup=False)
    for hint in outcome.hints:
        console.print(hint, markup=False)


COMMANDS: list[click.Command] = []
