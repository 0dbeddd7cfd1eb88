"""`lockstep snapshot create | list | show`: take a snapshot, list them, show one."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from lockstep.actions.snapshot_create import chosen_environment, create, load_project
from lockstep.actions.snapshot_list import ListedSnapshot, list_snapshots, other_projects
from lockstep.actions.snapshot_show import reference_environments, show_snapshot
from lockstep.cli.output import console, human_bytes, print_json, print_table
from lockstep.cli.project_options import config_and_env_options, wants_json
from lockstep.cli.reporting import progress_options, progress_reporter
from lockstep.cli.snapshot import ALL_SNAPSHOTS_ENV_HELP, _config_option, snapshot_group
from lockstep.pipeline.code import SHORT_COMMIT_LENGTH
from lockstep.pipeline.manifest import DatabaseRecord, Manifest
from lockstep.pipeline.snapshot import RESERVED_TAG_PREFIXES, environment_name
from lockstep.pipeline.verification_records import describe_state
from lockstep.repository.snapshot import Snapshot
from lockstep.repository.tag_lists import flatten_tag_lists
from lockstep.wording import counted


def manifest_document(snapshot: Snapshot, manifest: Manifest) -> dict[str, Any]:
    """The manifest as `--json` prints it: the stored manifest plus the snapshot's ID. A snapshot
    taken without an environment says "default", as the text output, `backup --json` and
    `snapshot forget --json` do (the stored manifest keeps null)."""
    document = {"id": snapshot.id, "short_id": snapshot.short_id, **manifest.to_document()}
    document["environment"] = environment_name(manifest.environment)
    return document


@snapshot_group.command("create")
@config_and_env_options(
    "Environment ([environments.NAME]) whose databases and files to snapshot, into its repository;"
    " default: default_environment from lockstep.toml."
)
@click.option("-m", "--message", help="Describe the snapshot (and the commit, with --commit).")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="TAGS",
    help="Add tags to the snapshot: a,b adds two, as restic's --tag does (repeatable). Not lockstep, nor one"
    " starting with " + ", ".join(RESERVED_TAG_PREFIXES) + " (lockstep sets those), nor schema-only.",
)
@click.option(
    "--commit",
    is_flag=True,
    help="First commit every change in the git work tree (needs -m; refuses secret files, and moves the branch"
    " only once the snapshot is written).",
)
@click.option(
    "--allow-dirty",
    is_flag=True,
    help="Allow uncommitted changes; their diff, untracked files included, is stored too.",
)
@click.option(
    "--schema-only",
    is_flag=True,
    help="Dump every database's structure (tables, indexes, routines, triggers) without its rows; the code and"
    " files as usual. Tagged schema-only and kept apart by retention: never taken for a backup of the data.",
)
@progress_options
@click.option("--json", "json_output", is_flag=True, help="Print the manifest and the snapshot ID as JSON.")
def create_command(
    config_path: Path | None,
    environment: str | None,
    message: str | None,
    tags: tuple[str, ...],
    commit: bool,
    allow_dirty: bool,
    schema_only: bool,
    log_format: str,
    quiet: bool,
    verbose: bool,
    json_output: bool,
) -> None:
    """Snapshot the code version, every database and the config and secret files."""
    if commit and not message:
        raise click.UsageError("--commit needs a commit message: pass -m MESSAGE")
    result = create(
        Path.cwd(),
        config_path=config_path,
        environment=environment,
        message=message,
        tags=flatten_tag_lists(tags),
        commit=commit,
        allow_dirty=allow_dirty,
        schema_only=schema_only,
        reporter=progress_reporter(log_format, quiet, verbose),
    )
    if wants_json(json_output):
        print_json(manifest_document(result.snapshot, result.manifest))
        return
    manifest = result.manifest
    databases = (
        ", ".join(f"{name} ({human_bytes(database.size)})" for name, database in manifest.databases.items())
        or "no databases"
    )
    code = manifest.code
    commit_text = f", commit {code.commit[:SHORT_COMMIT_LENGTH]}" if code and code.commit else ""
    code_text = f"code ({human_bytes(code.size)}); " if code is not None and code.size is not None else ""
    schema = " (schema only: no rows)" if manifest.schema_only else ""
    # Named unless it is the top-level config's (label default): without --env it may be
    # default_environment's own, and the reader must see whose databases were saved.
    of = f" of environment {manifest.environment}" if manifest.environment is not None else ""
    console.print(f"snapshot {result.snapshot.short_id}{of} saved{schema}", markup=False)
    console.print(
        f"{code_text}{databases}; {counted(len(manifest.files), 'file')}; {human_bytes(manifest.stored_size)} in total"
        f"{commit_text}; {result.seconds:.1f} s",
        markup=False,
    )


def _local_time(snapshot: Snapshot) -> str:
    return datetime.fromtimestamp(snapshot.time_ns / 1e9).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _short_commit(manifest: Manifest) -> str:
    return manifest.code.commit[:SHORT_COMMIT_LENGTH] if manifest.code and manifest.code.commit else ""


@snapshot_group.command("list")
@config_and_env_options(ALL_SNAPSHOTS_ENV_HELP)
@click.option("--json", "json_output", is_flag=True, help="Print JSON on stdout.")
def list_command(config_path: Path | None, environment: str | None, json_output: bool) -> None:
    """List this project's snapshots, oldest first: all in default_environment's repository, or only --env's.

    Only the snapshots of this project (`project` in lockstep.toml, default: its directory's
    name) are listed; `lockstep repo snapshots` lists every snapshot in the repository. The
    snapshots listed as default (taken with the top-level config) count as the default
    environment's when it has no [environments.NAME] table: the same databases, as show, restore
    and doctor see them."""
    project = load_project(Path.cwd(), config_path, chosen_environment(Path.cwd(), config_path, environment))
    among = None if environment is None else reference_environments(Path.cwd(), config_path, environment)
    listed = list_snapshots(project.access, project.name, among)
    if wants_json(json_output):
        print_json([_listed_document(item) for item in listed])
        return
    table = Table()
    for title in ("ID", "Time", "Commit"):
        table.add_column(title, no_wrap=True)
    table.add_column("Message")
    for title in ("Kind", "Environment"):
        table.add_column(title)
    table.add_column("Size", justify="right", no_wrap=True)
    table.add_column("Verified", no_wrap=True)
    rows = [
        [
            item.snapshot.short_id,
            _local_time(item.snapshot),
            _short_commit(item.manifest),
            item.manifest.message or "",
            shown_kind(item.manifest),
            environment_name(item.manifest.environment),
            human_bytes(item.manifest.stored_size),
            describe_state(item.verification),
        ]
        for item in listed
    ]
    for row in rows:
        table.add_row(*row)
    print_table(table, rows, lead=(0, 1, 4, 5, 6))  # ID, time, kind, environment, size
    console.print(counted(len(listed), "snapshot"))
    if not listed and (others := other_projects(project.access, project.name)):
        shown = ", ".join(repr(name) for name in others)
        console.print(
            f"no snapshot of project {project.name!r}; the repository holds snapshots of other projects: {shown} "
            "(`project` in lockstep.toml names this one; -c another project's lockstep.toml lists its snapshots)"
        )


def server_name(engine: str, server_version: str) -> str:
    """What the server is: the manifest's engine `mysql` covers MySQL and MariaDB (one adapter,
    one dump format), which only the server's VERSION() ("10.11.6-MariaDB-...") tells apart."""
    if engine != "mysql":
        return engine
    return "MariaDB" if "mariadb" in server_version.lower() else "MySQL"


def shown_kind(manifest: Manifest) -> str:
    """The kind as list and show print it: a schema-only snapshot says so."""
    return f"{manifest.kind}, schema only" if manifest.schema_only else manifest.kind


def _listed_document(item: ListedSnapshot) -> dict[str, Any]:
    """A `list --json` entry: the manifest document plus the last verification (or None)."""
    verification = item.verification
    return {
        **manifest_document(item.snapshot, item.manifest),
        "verification": None
        if verification is None
        else {
            "level": verification.level,
            "ok": verification.ok,
            "started": verification.started,
            "seconds": round(verification.seconds, 3),
            "state": describe_state(verification),
        },
    }


def _print_manifest(item: ListedSnapshot) -> None:
    snapshot, manifest = item.snapshot, item.manifest
    lines = [
        f"snapshot     {snapshot.id}",
        f"time         {_local_time(snapshot)}",
        f"kind         {shown_kind(manifest)}",
        f"environment  {environment_name(manifest.environment)}",
        f"message      {manifest.message or ''}",
        f"author       {manifest.author}",
        f"host         {manifest.hostname}",
        f"tags         {', '.join(snapshot.tags)}",
    ]
    if manifest.schema_only:
        lines.append("schema only  the databases' structure without rows: not a backup of the data")
    code = manifest.code
    if code is None:
        lines.append("code         not recorded")
    elif code.commit:
        branch = f" on {code.branch}" if code.branch else ""
        dirty = " (with uncommitted changes, diff stored)" if code.dirty else ""
        lines.append(f"code         git {code.commit}{branch}{dirty}")
    else:
        size = "" if code.size is None else f", {human_bytes(code.size)}"
        release = "" if code.release is None else f", release {code.release}"
        lines.append(f"code         {code.kind} at {code.path}{size}{release}")
    for name, database in manifest.databases.items():
        rows = sum(table.rows for table in database.tables)
        migration = f", migration {database.migration_version}" if database.migration_version else ""
        server = f"{server_name(database.engine, database.server_version)} {database.server_version}"
        lines.append(
            f"database     {name}: {server}, {human_bytes(database.size)} "
            f"at {database.path}, {counted(len(database.tables), 'table')}, {counted(rows, 'row')}{migration}"
        )
        if database.schema_only:
            lines.append("               schema only  structure without rows")
        else:
            lines.append(f"               counts       {_fingerprint_origin(database)}")
        lines.extend(
            f"               {table.name}: "
            + (
                "rows not in the snapshot (exclude_table_data): restored empty"
                if table.name in database.rows_excluded
                else counted(table.rows, "row")
            )
            + ("" if table.history_rows is None else f", history of {table.history_rows} row versions")
            + ("" if table.consistent else " (outside the snapshot)")
            for table in database.tables
        )
    for file in manifest.files:
        lines.append(f"file         {file.path} ({file.kind}, {human_bytes(file.size)})")
    lines.extend(f"warning      {warning}" for warning in manifest.warnings)
    for line in lines:
        console.print(line, markup=False)


def _fingerprint_origin(database: DatabaseRecord) -> str:
    """Where the row counts and checksums a restore is checked against come from."""
    if database.inspected == "after-dump":
        reason = f" ({database.inspected_note})" if database.inspected_note else ""
        return f"taken after the dump{reason}: writes during the snapshot may differ"
    if database.inspected_note:
        return f"from the dump's own snapshot, except: {database.inspected_note}"
    return "from the dump's own snapshot"


@snapshot_group.command("show")
@click.argument("reference", metavar="ID")
@_config_option
@click.option("--json", "json_output", is_flag=True, help="Print the manifest as JSON.")
def show_command(reference: str, config_path: Path | None, environment: str | None, json_output: bool) -> None:
    """Show one snapshot: ID is a snapshot ID prefix, a git commit prefix, or `latest`."""
    environment = chosen_environment(Path.cwd(), config_path, environment)
    project = load_project(Path.cwd(), config_path, environment)
    among = reference_environments(Path.cwd(), config_path, environment)
    item = show_snapshot(project.access, reference, among, project.config.default_environment, project=project.name)
    if wants_json(json_output):
        print_json(manifest_document(item.snapshot, item.manifest))
        return
    _print_manifest(item)
