"""`lockstep rollback`: back to the previous release (or STEPS back, or --to ID), with its data if asked."""

from __future__ import annotations

from pathlib import Path

import click

from lockstep.cli.output import console, print_json
from lockstep.cli.project_options import parse_duration_seconds, project_options, wants_json
from lockstep.cli.reporting import progress_options, progress_reporter


@click.command("rollback")
@click.argument("steps", type=click.IntRange(min=1), default=1)
@project_options
@click.option("--to", "to", metavar="ID", help="Release to go back to: deploy ID, release ID or commit prefix.")
@click.option(
    "--component", metavar="NAME", help="Roll back only this component (e.g. worker); the others keep their release."
)
@click.option("--with-data", is_flag=True, help="Also restore the databases as they were under that release.")
@click.option("--code-only", is_flag=True, help="Only the code (the default); refused onto a newer schema.")
@click.option("--yes", is_flag=True, help="Answer yes to the data-loss confirmation (for CI).")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan (target, warm or cold slot, steps, with --with-data what the restore discards); "
    "change nothing.",
)
@click.option("--force", is_flag=True, help="Roll back code onto a newer schema; take a live lock.")
@click.option("--lock-wait", metavar="DURATION", default="0", help="Wait this long for the lock (e.g. 30s, 5m).")
# A host's part of a rollback of several hosts, as the orchestrator runs it over SSH: not for people.
@click.option("--coordinated", metavar="ID", hidden=True)
@click.option("--secondary", is_flag=True, hidden=True)
@progress_options
@click.option(
    "--json",
    "json_output",
    is_flag=True,
    help="Print the rollback record (with --dry-run the plan) as JSON on stdout (on failure too, with error, "
    "hint and exit_code).",
)
def rollback_command(
    steps: int,
    config_path: Path | None,
    environment: str | None,
    to: str | None,
    component: str | None,
    with_data: bool,
    code_only: bool,
    yes: bool,
    dry_run: bool,
    force: bool,
    lock_wait: str,
    coordinated: str | None,
    secondary: bool,
    log_format: str,
    quiet: bool,
    verbose: bool,
    json_output: bool,
) -> None:
    """Roll back to the previous successful release (STEPS back, or --to ID).

    A warm previous slot takes the traffic back in well under a second. With --with-data the
    databases are restored from the snapshot taken before that release was replaced, after
    showing what it discards and asking (type the environment name in production; --yes for CI).
    Meanwhile traffic is held: new requests wait (at most [traffic] hold_timeout, then 503 with
    Retry-After) and go to the older release once its data is back.

    Exit codes: 0 rolled back; 3 failed and undone (the release that served before still serves);
    1 failed and could not undo everything; 2 refused (a newer schema, confirmation, the release
    already serving); 4 locked; 13 nothing to roll back to (nothing deployed, only the first
    deploy, fewer releases than STEPS) or no release matches --to.

    --dry-run says which release it would go back to (and from), whether that slot is warm
    (instant switch) or must be started, each step, and with --with-data which snapshot it would
    restore and what that discards. It takes no lock and touches no process, traffic or data, and
    refuses with the exit code the rollback would end with.

    When the environment lists `hosts`, rolls back every host over SSH, all or none. There
    --dry-run contacts no host: it names the target and the release it leaves as this machine's
    history has them, the hosts (the primary marked), the steps, and with --with-data the
    snapshot the primary restores (the rollback shows the primary's `snapshot diff` first).
    """
    if with_data and code_only:
        raise click.UsageError("--with-data and --code-only exclude each other")
    # Imported here: the rollback pipeline and its adapters are for the run, not for `lockstep --help`.
    from lockstep.actions.rollback import plan, rollback
    from lockstep.pipeline.rollback import RollbackRequest

    request = RollbackRequest(
        steps=steps,
        to=to,
        with_data=with_data,
        code_only=code_only,
        yes=yes,
        force=force,
        lock_wait=parse_duration_seconds(lock_wait),
        component=component,
        coordinated=coordinated,
        secondary=secondary,
        dry_run=dry_run,
    )
    if dry_run:
        planned = plan(Path.cwd(), config_path, environment, request)
        if wants_json(json_output):
            print_json(planned.document)
        else:
            for line in planned.lines:
                console.print(line, markup=False, highlight=False)
        return
    record = rollback(Path.cwd(), config_path, environment, request, progress_reporter(log_format, quiet, verbose))
    if wants_json(json_output):
        print_json(record.to_document())
        return
    data = " with its data" if record.data_restored else ""
    what = f"{record.component} of {record.environment}" if record.component else record.environment
    held = "" if record.traffic_held_seconds is None else f"; traffic held {record.traffic_held_seconds:.1f} s"
    console.print(
        f"rolled back {what} to {record.release_id} ({(record.commit or '')[:12]}){data} "
        f"in {record.duration or 0:.1f} s{held}",
        markup=False,
    )


COMMANDS = [rollback_command]
