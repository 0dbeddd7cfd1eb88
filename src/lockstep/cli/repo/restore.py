"""`repo restore`, `repo dump`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from lockstep.actions.repo.restore import RestoreResult, dump, restore
from lockstep.cli.output import byte_progress, console, human_bytes, print_json
from lockstep.cli.repo.options import access_from, repository_options, wants_json
from lockstep.repository.restore_warnings import summarise_warnings
from lockstep.wording import counted


@click.command("restore")
@click.argument("snapshot")
# Not file_okay=False: a target that is a file is a storage problem (exit 14), which the restorer reports.
@click.option(
    "-t",
    "--target",
    required=True,
    metavar="DIRECTORY",
    type=click.Path(path_type=Path),
    help="Directory to restore into.",
)
@click.option(
    "-i",
    "--include",
    "includes",
    multiple=True,
    metavar="PATH",
    help="Restore only this path, from / as `repo ls` prints it (repeatable). A path not in the snapshot "
    "restores nothing and exits 13, naming it.",
)
@repository_options
def restore_command(snapshot: str, target: Path, includes: tuple[str, ...], **options: Any) -> None:
    """Restore SNAPSHOT (an ID prefix or `latest`) into --target."""
    json_output = wants_json(options)
    with byte_progress("restore", None, enabled=not json_output) as progress:
        snapshot_id, summary = restore(access_from(options), snapshot, target, list(includes), progress)
    if json_output:
        print_json(RestoreResult(snapshot_id, summary).to_document())
        return
    for warning in summarise_warnings(summary.warnings):
        console.print(f"warning: {warning}", markup=False)
    console.print(
        f"restored snapshot {snapshot_id[:8]} to {target}: {counted(summary.files, 'file')}, "
        f"{human_bytes(summary.bytes_written)}"
    )


@click.command("dump")
@click.argument("snapshot")
@click.argument("path")
@repository_options
def dump_command(snapshot: str, path: str, **options: Any) -> None:
    """Write the file at PATH in SNAPSHOT to stdout (a directory comes out as a tar stream).

    The tar stream is the one `restic dump` writes, byte for byte: entries named by their path in
    the snapshot, owner, mode, the modification time rounded to the second, extended attributes
    and ACLs as PAX records (`tar --xattrs --acls -x` restores them), no access or change times.
    One difference: named pipes and devices come out as what they are (restic 0.14 writes the
    top-level ones as empty files and leaves deeper ones out).
    """
    options.pop("json_output", None)
    if sys.stdout.isatty():
        raise click.UsageError("refusing to write binary data to a terminal; redirect stdout to a file or a pipe")
    dump(access_from(options), snapshot, path, sys.stdout.buffer)
    sys.stdout.buffer.flush()


COMMANDS = [restore_command, dump_command]
