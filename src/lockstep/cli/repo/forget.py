"""`repo forget` and `repo prune`: retention policies and freeing space, with restic's flags."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click
from rich.markup import escape
from rich.table import Table

from lockstep.actions.repo.browse import snapshot_document
from lockstep.actions.repo.forget import ForgetGroup, ForgetRequest, ForgetResult, forget
from lockstep.actions.repo.prune import prune_repository
from lockstep.cli.output import console, error_console, human_bytes, print_json
from lockstep.cli.repo.options import (
    access_from,
    repository_options,
    snapshot_filter_from,
    snapshot_filter_options,
    wants_json,
)
from lockstep.errors import UsageError
from lockstep.repository.pruner import DEFAULT_MAX_UNUSED, PruneOptions, PruneReport, UnusedLimit, parse_size
from lockstep.repository.retention import (
    UNLIMITED,
    Duration,
    GroupBy,
    GroupKey,
    RetentionPolicy,
    parse_tag_list,
)
from lockstep.repository.snapshot import Snapshot
from lockstep.wording import counted

F = TypeVar("F", bound=Callable[..., Any])


def _keep_count(context: click.Context, parameter: click.Parameter, value: str | None) -> int:
    """A `--keep-*` count: 0 or more, or -1 / `unlimited` for one per period without limit."""
    if value is None:
        return 0
    if value.strip() == "unlimited":
        return UNLIMITED
    try:
        count = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a count (a number, or 'unlimited')") from None
    if count < UNLIMITED:
        raise click.BadParameter(f"{count} is not allowed: use 0 or more, or -1 / 'unlimited'")
    return count


def _duration(context: click.Context, parameter: click.Parameter, value: str | None) -> Duration:
    """A restic duration such as `1y5m7d2h`; absent means the rule is off."""
    if value is None:
        return Duration()
    try:
        return Duration.parse(value)
    except UsageError as error:
        raise click.BadParameter(error.message) from None


def prune_options(function: F) -> F:
    """--max-unused and --max-repack-size, shared by prune and forget --prune."""
    decorators = [
        click.option(
            "--max-unused",
            default=DEFAULT_MAX_UNUSED,
            show_default=True,
            metavar="LIMIT",
            help="Unused space to tolerate after pruning: a percentage, a size (k/M/G/T) or 'unlimited'.",
        ),
        click.option("--max-repack-size", metavar="SIZE", help="Repack at most this much (k/M/G/T)."),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def _prune_options_from(max_unused: str, max_repack_size: str | None, dry_run: bool) -> PruneOptions:
    return PruneOptions(
        max_unused=UnusedLimit.parse(max_unused),
        max_repack_bytes=parse_size(max_repack_size) if max_repack_size else None,
        dry_run=dry_run,
    )


def _keep_option(name: str, short: str, period: str) -> Callable[[F], F]:
    return click.option(
        f"--keep-{name}",
        f"-{short}",
        name.replace("-", "_"),
        callback=_keep_count,
        metavar="N",
        help=f"Keep the newest snapshot of each of the last N {period} that have one (-1 or 'unlimited': all).",
    )


def _window_option(name: str, period: str) -> Callable[[F], F]:
    return click.option(
        f"--keep-within-{name}",
        f"within_{name}",
        callback=_duration,
        metavar="DURATION",
        help=f"Keep one snapshot per {period} among those newer than DURATION before the newest.",
    )


@click.command("forget")
@click.argument("snapshot_ids", nargs=-1, metavar="[SNAPSHOT]...")
@click.option("--keep-last", "-l", "last", callback=_keep_count, metavar="N", help="Keep the N newest snapshots.")
@_keep_option("hourly", "H", "hours")
@_keep_option("daily", "d", "days")
@_keep_option("weekly", "w", "weeks")
@_keep_option("monthly", "m", "months")
@_keep_option("yearly", "y", "years")
@click.option(
    "--keep-within",
    "within",
    callback=_duration,
    metavar="DURATION",
    help="Keep every snapshot newer than DURATION (e.g. 1y5m7d2h) before the newest snapshot.",
)
@_window_option("hourly", "hour")
@_window_option("daily", "day")
@_window_option("weekly", "week")
@_window_option("monthly", "month")
@_window_option("yearly", "year")
@click.option(
    "--keep-tag",
    "keep_tags",
    multiple=True,
    metavar="TAGS",
    help="Keep snapshots with all these tags (a,b); repeatable.",
)
@snapshot_filter_options
@click.option(
    "--group-by",
    "-g",
    default="host,paths",
    show_default=True,
    help="Apply the policy per group of host, paths and/or tags ('' = all snapshots form one group).",
)
@click.option("--dry-run", "-n", is_flag=True, help="Show what would be removed; change nothing.")
@click.option(
    "--prune", "run_prune", is_flag=True, help="Prune afterwards, under the same lock, if snapshots were removed."
)
@prune_options
@repository_options
def forget_command(**options: Any) -> None:
    """Remove snapshots by a retention policy (restic's --keep-* rules), or the SNAPSHOTs given.

    Snapshots are grouped (--group-by) and each group keeps what any rule keeps. The data stays
    in the repository until `prune` (or --prune) frees it. With --json the result is restic's
    list of groups; when --prune ran, a second JSON line holds its report."""
    json_output = wants_json(options)
    access = access_from(options)
    policy = RetentionPolicy(
        last=options["last"],
        hourly=options["hourly"],
        daily=options["daily"],
        weekly=options["weekly"],
        monthly=options["monthly"],
        yearly=options["yearly"],
        within=options["within"],
        within_hourly=options["within_hourly"],
        within_daily=options["within_daily"],
        within_weekly=options["within_weekly"],
        within_monthly=options["within_monthly"],
        within_yearly=options["within_yearly"],
        keep_tags=tuple(parse_tag_list(text) for text in options["keep_tags"]),
    )
    request = ForgetRequest(
        policy=policy,
        snapshot_filter=snapshot_filter_from(options),
        group_by=GroupBy.parse(options["group_by"]),
        snapshot_ids=tuple(options["snapshot_ids"]),
        dry_run=options["dry_run"],
        prune=(
            _prune_options_from(options["max_unused"], options["max_repack_size"], options["dry_run"])
            if options["run_prune"]
            else None
        ),
    )
    result = forget(access, request, progress=None if json_output else _say)
    if json_output:
        print_json([_group_document(group) for group in result.groups])
        if result.prune is not None:
            print_json(prune_document(result.prune))
        return
    _print_forget(result)
    if result.prune is not None:
        console.print()
        print_prune_report(result.prune)


@click.command("prune")
@click.option("--dry-run", "-n", is_flag=True, help="Show what would be deleted and repacked; change nothing.")
@prune_options
@repository_options
def prune_command(dry_run: bool, max_unused: str, max_repack_size: str | None, **options: Any) -> None:
    """Delete data no snapshot needs: unused packs go, partly used packs are repacked.

    Needs the repository to itself (exclusive lock). Safe to interrupt at any moment: the new
    index is written before the old one is deleted, and obsolete packs are deleted last."""
    json_output = wants_json(options)
    prune_options_value = _prune_options_from(max_unused, max_repack_size, dry_run)
    report = prune_repository(access_from(options), prune_options_value, None if json_output else _say)
    if json_output:
        print_json(prune_document(report))
        return
    print_prune_report(report)


# --- rendering ------------------------------------------------------------------------------


def _say(message: str) -> None:
    error_console.print(f"[dim]{escape(message)}[/dim]", markup=True)


def _local_time(snapshot: Snapshot) -> str:
    return datetime.fromtimestamp(snapshot.time_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def _group_document(group: ForgetGroup) -> dict[str, Any]:
    """restic's ForgetGroup JSON: tags/paths are null when not grouped by them."""
    key = group.key
    reasons_by_id = {reason.snapshot.id: reason for reason in group.reasons}
    return {
        "tags": None if key.tags is None else list(key.tags),
        "host": key.hostname or "",
        "paths": None if key.paths is None else list(key.paths),
        "keep": [snapshot_document(snapshot) for snapshot in group.keep],
        "remove": [snapshot_document(snapshot) for snapshot in group.remove],
        "reasons": [
            {
                "snapshot": snapshot_document(snapshot),
                "matches": list(reasons_by_id[snapshot.id].matches),
                "counters": reasons_by_id[snapshot.id].counters,
            }
            for snapshot in group.keep
        ],
    }


def _snapshot_table(snapshots: list[Snapshot], reasons: dict[str, tuple[str, ...]] | None) -> Table:
    table = Table(box=None, header_style="bold")
    columns = ["ID", "Time", "Host", "Tags", *(["Reasons"] if reasons is not None else []), "Paths"]
    for column in columns:
        table.add_column(column)
    for snapshot in sorted(snapshots, key=lambda item: item.time_ns):  # oldest first, as restic prints
        row = [snapshot.short_id, _local_time(snapshot), snapshot.hostname, ",".join(snapshot.tags)]
        if reasons is not None:
            row.append("\n".join(reasons.get(snapshot.id, ())))
        row.append("\n".join(snapshot.paths))
        table.add_row(*row)
    return table


def _print_forget(result: ForgetResult) -> None:
    if result.policy:
        console.print(f"Applying policy: {result.policy}", markup=False)
    for group in result.groups:
        if result.policy and group.key != GroupKey(None, None, None):
            console.print(f"snapshots for {group.key.describe()}:", markup=False)
        if group.keep:
            console.print(f"keep {counted(len(group.keep), 'snapshot')}:")
            reasons = {reason.snapshot.id: reason.matches for reason in group.reasons}
            console.print(_snapshot_table(group.keep, reasons))
        if group.remove:
            console.print(f"remove {counted(len(group.remove), 'snapshot')}:")
            console.print(_snapshot_table(group.remove, None))
        console.print()
    if result.dry_run:
        console.print(f"would remove {counted(len(result.removed), 'snapshot')} (dry run: nothing was changed)")
    else:
        console.print(f"removed {counted(len(result.removed), 'snapshot')}")


def prune_document(report: PruneReport) -> dict[str, Any]:
    """The prune report as JSON: the outcome plus restic's statistics."""
    document = {key: value for key, value in dataclasses.asdict(report).items() if key != "stats"}
    stats = report.stats
    document["message_type"] = "prune"
    document["stats"] = {
        **dataclasses.asdict(stats),
        "total_blobs": stats.total_blobs,
        "total_bytes": stats.total_bytes,
        "prune_blobs": stats.prune_blobs,
        "prune_bytes": stats.prune_bytes,
        "unused_after_bytes": stats.unused_after_bytes,
    }
    return document


def _percent(part: int, whole: int) -> str:
    return f"{min(100.0, 100.0 * part / whole):.3f}%" if whole else "0.000%"


def print_prune_report(report: PruneReport) -> None:
    """restic's summary lines, then what was actually done."""
    stats = report.stats
    lines = [
        f"used:         {stats.used_blobs:>10} blobs / {human_bytes(stats.used_bytes)}",
    ]
    if stats.duplicate_blobs:
        lines.append(f"duplicates:   {stats.duplicate_blobs:>10} blobs / {human_bytes(stats.duplicate_bytes)}")
    lines.append(f"unused:       {stats.unused_blobs:>10} blobs / {human_bytes(stats.unused_bytes)}")
    if stats.unreferenced_bytes:
        lines.append(f"unreferenced:                    {human_bytes(stats.unreferenced_bytes)}")
    lines += [
        f"total:        {stats.total_blobs:>10} blobs / {human_bytes(stats.total_bytes)}",
        "",
        f"to repack:    {stats.repack_blobs:>10} blobs / {human_bytes(stats.repack_bytes)}",
        f"this removes: {stats.repack_removed_blobs:>10} blobs / {human_bytes(stats.repack_removed_bytes)}",
        f"to delete:    {stats.remove_blobs:>10} blobs / {human_bytes(stats.remove_bytes + stats.unreferenced_bytes)}",
        f"total prune:  {stats.prune_blobs:>10} blobs / {human_bytes(stats.prune_bytes)}",
        f"remaining:    {stats.total_blobs - stats.prune_blobs:>10} blobs / "
        f"{human_bytes(stats.total_bytes - stats.prune_bytes)}",
        f"unused size after prune: {human_bytes(stats.unused_after_bytes)} "
        f"({_percent(stats.unused_after_bytes, stats.total_bytes - stats.prune_bytes)} of remaining size)",
        "",
        f"packs: {stats.packs_keep} kept, {stats.packs_repack} to repack, {stats.packs_remove} unused, "
        f"{stats.packs_unreferenced} unreferenced",
    ]
    for line in lines:
        console.print(line, markup=False)
    if report.dry_run:
        console.print(
            f"dry run: would delete {counted(report.packs_deleted, 'pack')} and repack {report.packs_repacked}, "
            f"freeing about {human_bytes(report.bytes_freed)}; nothing was changed"
        )
        return
    console.print(
        f"deleted {counted(report.packs_deleted, 'pack')}, "
        f"repacked {report.packs_repacked} into {report.packs_written} new; "
        f"freed {human_bytes(report.bytes_freed)}, {human_bytes(report.bytes_remaining)} remain"
    )
    if report.temporary_files_removed:
        console.print(f"deleted {report.temporary_files_removed} temporary files left by interrupted writes")


COMMANDS = [forget_command, prune_command]
