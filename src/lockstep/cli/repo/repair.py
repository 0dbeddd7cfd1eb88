"""`repo repair index`."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.markup import escape

from lockstep.actions.repo.repair import RepairIndexReport, repair_repository_index
from lockstep.cli.output import console, error_console, print_json
from lockstep.cli.repo.options import access_from, repository_options, wants_json
from lockstep.exit_codes import ExitCode

# Packs named one by one in the summary; --json lists them all.
LISTED_PACKS = 20


@click.group("repair")
def repair_group() -> None:
    """Repair a damaged repository: `index` rebuilds the index from the pack headers."""


@repair_group.command("index")
@click.option(
    "--read-all-packs",
    is_flag=True,
    help="Ignore the old index files and read every pack's header (slower; builds the index from scratch).",
)
@repository_options
def index_command(read_all_packs: bool, **options: Any) -> None:
    """Rebuild the index from the pack headers, as `restic repair index` does.

    Index files that cannot be read are removed; packs that no readable index file lists (or
    whose size differs from what it says) have their header read and are indexed again. The new
    index files are written before any old one is deleted, so an interrupted repair loses nothing:
    run it again (after `lockstep repo unlock` if it was killed). A pack whose header cannot be read
    is reported and left in place, never deleted. Needs the repository to itself (exclusive lock).

    Exits 0 when every pack is in the new index and 12 when some pack could not be read (its
    blobs are then missing from the index: run `lockstep repo check --read-data`).

    \b
    Examples:
      lockstep repo repair index
      lockstep repo repair index --read-all-packs
    """
    json_output = wants_json(options)
    report = repair_repository_index(
        access_from(options), read_all_packs=read_all_packs, progress=None if json_output else _say
    )
    if json_output:
        print_json(report.to_document())
    else:
        print_repair_report(report)
    if not report.ok:
        # Not click's Exit: with standalone_mode=False click returns its code instead of exiting.
        sys.exit(ExitCode.INTEGRITY)


def _say(message: str) -> None:
    error_console.print(f"[dim]{escape(message)}[/dim]", markup=True, soft_wrap=True)


def _listed(names: list[str], line: str) -> None:
    for name in names[:LISTED_PACKS]:
        console.print(line.format(name[:8]), markup=False, soft_wrap=True)
    if len(names) > LISTED_PACKS:
        console.print(f"… and {len(names) - LISTED_PACKS} more (--json lists them all)", markup=False)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def print_repair_report(report: RepairIndexReport) -> None:
    for name, error in sorted(report.damaged_index_files.items()):
        console.print(f"removed damaged index {name[:8]}: {error}", markup=False, soft_wrap=True)
    _listed(sorted(report.added_packs), "added pack {} to the index (no readable index file listed it)")
    _listed(sorted(report.reindexed_packs), "re-indexed pack {} (its size differed from what the index said)")
    _listed(sorted(report.missing_packs), "dropped pack {} from the index (it is not in storage)")
    for _name, error in sorted(report.unreadable_packs.items()):
        error_console.print(f"error: {error}; the pack was left in place", markup=False, soft_wrap=True)
    console.print(
        f"read {_plural(report.packs_read, 'pack header')}; the new index lists "
        f"{_plural(report.blobs_indexed, 'blob')} in {_plural(report.packs, 'pack')}",
        markup=False,
        soft_wrap=True,
    )
    damaged = len(report.damaged_index_files)
    console.print(
        f"wrote {_plural(len(report.index_files_written), 'index file')}, deleted "
        f"{_plural(report.index_files_deleted, 'old index file')}" + (f" ({damaged} damaged)" if damaged else ""),
        markup=False,
        soft_wrap=True,
    )
    if not report.ok:
        count = len(report.unreadable_packs)
        error_console.print(
            f"{_plural(count, 'pack')} could not be read; {'its' if count == 1 else 'their'} blobs are not in the "
            "index: run `lockstep repo check --read-data`",
            markup=False,
            soft_wrap=True,
        )


COMMANDS = [repair_group]
