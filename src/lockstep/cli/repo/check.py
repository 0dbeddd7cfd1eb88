"""`repo check`."""

from __future__ import annotations

import sys
from typing import Any

import click

from lockstep.actions.repo.check import run_check
from lockstep.cli.output import byte_progress, console, error_console, human_bytes, print_json
from lockstep.cli.repo.options import access_from, repository_options, wants_json
from lockstep.exit_codes import ExitCode
from lockstep.wording import counted


@click.command("check")
@click.option("--read-data", is_flag=True, help="Also read every pack and verify every blob in it.")
@click.option(
    "--read-data-subset",
    "subset",
    metavar="n/t|x%",
    help="Read only part of the data: group n of t (by pack ID), or a random x percent of the packs.",
)
@repository_options
def check_command(read_data: bool, subset: str | None, **options: Any) -> None:
    """Verify the repository: index, packs, snapshots and every tree they reach.

    Exits 0 when nothing is wrong and 12 when damage was found. Holds only a shared lock, so
    backups can run at the same time.

    \b
    Examples:
      lockstep repo check
      lockstep repo check --read-data
      lockstep repo check --read-data-subset=1/7    # day 1 of a weekly rotation
      lockstep repo check --read-data-subset=10%
    """
    json_output = wants_json(options)
    reading = read_data or subset is not None
    with byte_progress("check --read-data", None, enabled=reading and not json_output) as progress:
        report = run_check(access_from(options), read_data=read_data, subset=subset, progress=progress)
    if json_output:
        print_json(report.to_document())
    else:
        for hint in report.hints:
            console.print(f"hint: {hint}", markup=False, soft_wrap=True)
        for error in report.errors:
            error_console.print(f"error: {error}", markup=False, soft_wrap=True)
        summary = (
            f"checked {counted(report.snapshots, 'snapshot')}, {counted(report.trees, 'tree')}, "
            f"{counted(report.packs, 'pack')} "
            f"in {counted(report.index_files, 'index file')}"
        )
        if reading:
            read = counted(report.packs_read, "pack")
            summary += f"; read {read} ({human_bytes(report.bytes_read)}, {counted(report.blobs_read, 'blob')})"
        console.print(summary, markup=False, soft_wrap=True)
        if report.ok:
            console.print("no errors were found", soft_wrap=True)
        else:
            count = len(report.errors)
            error_console.print(f"{count} error{'s' if count != 1 else ''} found", markup=False, soft_wrap=True)
    if not report.ok:
        # Not click's Exit: with standalone_mode=False click returns its code instead of exiting.
        sys.exit(ExitCode.INTEGRITY)


COMMANDS = [check_command]
