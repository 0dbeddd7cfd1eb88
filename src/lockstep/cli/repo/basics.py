"""`repo init`, `repo unlock`, `repo stats`."""

from __future__ import annotations

from typing import Any

import click

from lockstep.actions.repo.browse import repository_stats
from lockstep.actions.repo.init import init_repository
from lockstep.actions.repo.unlock import unlock
from lockstep.cli.output import console, human_bytes, print_json
from lockstep.cli.repo.options import (
    access_from,
    repository_options,
    source_access_from,
    source_repository_options,
    wants_json,
)
from lockstep.errors import UsageError


@click.command("init")
@click.option(
    "--copy-chunker-params",
    is_flag=True,
    help="Take the chunker parameters of the --from-repo repository, so that backups here "
    "deduplicate with snapshots `repo copy` brings from there.",
)
@source_repository_options
@repository_options
def init_command(copy_chunker_params: bool, **options: Any) -> None:
    """Create a new repository (restic format v2, zstd, encrypted).

    Where a repository already exists nothing is changed and the exit code is 1 (as restic's):
    use that repository, or choose another location.

    \b
    For a copy destination that is also backed up to directly (restic's init --copy-chunker-params):
      lockstep repo init -r /mnt/usb/repo --from-repo /srv/backups --copy-chunker-params
    """
    json_output = wants_json(options)
    source = source_access_from(options, options["lock_wait"])
    if copy_chunker_params:
        # The source is required; its location may come from $LOCKSTEP_FROM_REPOSITORY.
        source.resolved_location()
    elif source.location or source.password_file or source.password_command:
        raise UsageError(
            "--from-repo and its password options only serve --copy-chunker-params",
            "add --copy-chunker-params to take the source's chunker parameters, or drop the --from-* options",
        )
    result = init_repository(access_from(options), source if copy_chunker_params else None)
    if json_output:
        print_json(
            {
                "message_type": "initialized",
                "id": result.repository_id,
                "repository": result.location,
                "version": result.version,
            }
        )
    else:
        console.print(f"created repository {result.repository_id[:10]} at {result.location}")
        console.print("Keep the password safe: without it nobody, lockstep included, can read the data.")


@click.command("unlock")
@click.option("--remove-all", is_flag=True, help="Remove every lock, not just stale ones.")
@repository_options
def unlock_command(remove_all: bool, **options: Any) -> None:
    """Remove stale locks (a dead process on this host, or no refresh for 30 minutes)."""
    json_output = wants_json(options)
    removed, remaining = unlock(access_from(options), remove_all=remove_all)
    if json_output:
        print_json({"removed": [lock.id for lock in removed], "remaining": [lock.describe() for lock in remaining]})
        return
    for lock in removed:
        console.print(f"removed {lock.describe()}")
    if not removed:
        console.print("no stale locks")
    for lock in remaining:
        console.print(f"still held: {lock.describe()}")


@click.command("stats")
@repository_options
def stats_command(**options: Any) -> None:
    """How much the repository stores, and how well it compresses."""
    json_output = wants_json(options)
    stats = repository_stats(access_from(options))
    if json_output:
        print_json({**stats.__dict__, "compression_ratio": round(stats.compression_ratio, 3)})
        return
    console.print(f"snapshots:          {stats.snapshots}")
    console.print(f"packs:              {stats.packs} ({human_bytes(stats.pack_bytes)})")
    console.print(f"blobs:              {stats.data_blobs} data, {stats.tree_blobs} tree")
    console.print(f"uncompressed size:  {human_bytes(stats.uncompressed_bytes)}")
    console.print(f"compression ratio:  {stats.compression_ratio:.2f}x")


COMMANDS = [init_command, unlock_command, stats_command]
