"""`repo snapshots`, `repo ls`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
from rich.table import Table

from lockstep.actions.repo.browse import list_files, list_snapshots, snapshot_document
from lockstep.cli.output import console, print_json
from lockstep.cli.repo.options import access_from, repository_options, wants_json
from lockstep.repository.gojson import TYPE_MODE_BITS, go_mode_string, parse_time_ns
from lockstep.repository.restorer import link_target_text
from lockstep.repository.tree import Node
from lockstep.wording import counted


def _local_time(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns // 1_000_000_000).strftime("%Y-%m-%d %H:%M:%S")  # truncated, as restic


@click.command("snapshots")
@click.option("--tag", "tags", multiple=True, help="Only snapshots with this tag (a,b = both; repeat = either).")
@repository_options
def snapshots_command(tags: tuple[str, ...], **options: Any) -> None:
    """List snapshots, oldest first."""
    json_output = wants_json(options)
    snapshots = list_snapshots(access_from(options), list(tags))
    if json_output:
        print_json([snapshot_document(snapshot) for snapshot in snapshots])
        return
    table = Table(box=None, header_style="bold")
    for column in ("ID", "Time", "Host", "Tags", "Paths"):
        table.add_column(column)
    for snapshot in snapshots:
        table.add_row(
            snapshot.short_id,
            _local_time(snapshot.time_ns),
            snapshot.hostname,
            ",".join(snapshot.tags),
            "\n".join(snapshot.paths),
        )
    console.print(table)
    console.print(counted(len(snapshots), "snapshot"))


@click.command("ls")
@click.argument("snapshot")
@click.option("-l", "--long", "long_format", is_flag=True, help="Show mode, uid, gid, size and time (as restic).")
@repository_options
def ls_command(snapshot: str, long_format: bool, **options: Any) -> None:
    """List the files in SNAPSHOT (an ID prefix or `latest`)."""
    json_output = wants_json(options)
    found, entries = list_files(access_from(options), snapshot)
    if json_output:
        print_json(
            {
                "snapshot": found.id,
                "nodes": [
                    {
                        "path": entry.path,
                        "type": entry.node.type,
                        "size": entry.node.size,
                        "mode": entry.node.mode,
                        "mtime": entry.node.mtime,
                        **({"linktarget": link_target_text(entry.node)} if entry.node.type == "symlink" else {}),
                    }
                    for entry in entries
                ],
            }
        )
        return
    for entry in entries:
        if long_format:
            console.print(long_line(entry.path, entry.node), markup=False, highlight=False, soft_wrap=True)
        else:
            console.print(entry.path, markup=False)


COMMANDS = [snapshots_command, ls_command]


def long_line(path: str, node: Node) -> str:
    """One `ls -l` line as restic 0.14 prints it: mode, uid, gid, size, local time, path (-> target)."""
    mode = go_mode_string(node.mode | TYPE_MODE_BITS.get(node.type, 0))
    target = f" -> {link_target_text(node)}" if node.type == "symlink" else ""
    when = _local_time(parse_time_ns(node.mtime))
    return f"{mode} {node.uid:5d} {node.gid:5d} {node.size or 0:6d} {when} {path}{target}"
