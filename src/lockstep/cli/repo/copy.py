"""`repo copy`: restic's copy, for a second copy of the repository elsewhere (3-2-1)."""

from __future__ import annotations

from typing import Any

import click

from lockstep.actions.repo.copy import CopyRequest, copy_snapshots
from lockstep.cli.output import byte_progress, console, error_console, human_bytes, print_json
from lockstep.cli.repo.options import (
    access_from,
    repository_options,
    snapshot_filter_from,
    snapshot_filter_options,
    source_access_from,
    source_repository_options,
    wants_json,
)
from lockstep.repository.copier import CopyReport
from lockstep.wording import counted


@click.command("copy")
@click.argument("snapshot_ids", nargs=-1, metavar="[SNAPSHOT]...")
@source_repository_options
@snapshot_filter_options
@repository_options
def copy_command(snapshot_ids: tuple[str, ...], **options: Any) -> None:
    """Copy snapshots from the --from-repo repository into this one (-r), as restic's copy.

    Without SNAPSHOTs (ID prefixes or `latest`), every snapshot that passes --host/--tag/--path
    is copied. A snapshot already copied (one with the same time, tree, host, user, paths,
    excludes and tags) is skipped, so the command can run after every backup. Each copy is
    re-encrypted with this repository's key and records the source snapshot's ID as `original`;
    only blobs this repository does not have yet are sent.

    \b
    Examples:
      lockstep repo copy -r s3:s3.amazonaws.com/offsite --from-repo /srv/backups
      lockstep repo copy -r /mnt/usb/repo --from-repo /srv/backups --from-password-file ~/.src-pw latest
    """
    json_output = wants_json(options)
    source = source_access_from(options, options["lock_wait"])
    request = CopyRequest(references=snapshot_ids, snapshot_filter=snapshot_filter_from(options))
    destination = access_from(options)
    with byte_progress("copy", None, enabled=not json_output) as progress:
        report = copy_snapshots(destination, source, request, progress, None if json_output else _say)
    if json_output:
        print_json(copy_document(report))
        return
    console.print(
        f"{counted(len(report.copied), 'snapshot')} copied, {len(report.skipped)} already there; "
        f"{counted(report.blobs_added, 'blob')} ({human_bytes(report.bytes_added)}) added"
    )


def _say(message: str) -> None:
    error_console.print(message, markup=False)


def copy_document(report: CopyReport) -> dict[str, Any]:
    """What `repo copy --json` prints: source -> new IDs, what was skipped, what was added."""
    return {
        "message_type": "summary",
        "copied": [
            {
                "source": item.source_id,
                "snapshot_id": item.destination_id,
                "blobs_added": item.blobs_added,
                "bytes_added": item.bytes_added,
            }
            for item in report.copied
        ],
        "skipped": [{"source": item.source_id, "existing": item.existing_id} for item in report.skipped],
        "blobs_added": report.blobs_added,
        "bytes_added": report.bytes_added,
    }


COMMANDS = [copy_command]
