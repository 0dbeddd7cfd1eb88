"""`lockstep deploy`: ship a git ref as a new release, blue-green, with a way back at every step."""

from __future__ import annotations

from pathlib import Path

import click

from lockstep.cli.output import console, print_json
from lockstep.cli.project_options import parse_duration_seconds, project_options, wants_json
from lockstep.cli.reporting import progress_options, progress_reporter


@click.command("deploy")
@click.argument("ref", default="HEAD")
@project_options
@click.option("-m", "--message", help="Why this deploy (shown in history and the lock).")
@click.option("--dry-run", is_flag=True, help="Print the complete plan and change nothing.")
@click.option("--skip-migrations", is_flag=True, help="Do not run the migration command.")
@click.option("--skip-backup", is_flag=True, help="No pre-deploy snapshot (refused where the policy requires one).")
@click.option("--force", is_flag=True, help="Take the environment lock even from a live holder.")
@click.option("--yes", is_flag=True, help="Answer yes to confirmations (for CI).")
@click.option("--lock-wait", metavar="DURATION", default="0", help="Wait this long for the lock (e.g. 30s, 5m).")
@click.option("--allow-dirty", is_flag=True, help="Deploy HEAD although the work tree has uncommitted changes.")
# A host's part of a multi-host deploy, as the orchestrator runs it over SSH (pipeline/multi_host.py):
# not for people, so not in --help.
@click.option("--coordinated", metavar="DEPLOY_ID", hidden=True)
@click.option("--secondary", is_flag=True, hidden=True)
@click.option("--hold-on-unwind", is_flag=True, hidden=True)
@click.option("--hold-only", is_flag=True, hidden=True)
@click.option("--preflight-only", is_flag=True, hidden=True)
@progress_options
@click.option(
    "--json",
    "json_output",
    is_flag=True,
    help="Print the deploy record as JSON on stdout (on failure too, with error, hint and exit_code).",
)
def deploy_command(
    ref: str,
    config_path: Path | None,
    environment: str | None,
    message: str | None,
    dry_run: bool,
    skip_migrations: bool,
    skip_backup: bool,
    force: bool,
    yes: bool,
    lock_wait: str,
    allow_dirty: bool,
    coordinated: str | None,
    secondary: bool,
    hold_on_unwind: bool,
    hold_only: bool,
    preflight_only: bool,
    log_format: str,
    quiet: bool,
    verbose: bool,
    json_output: bool,
) -> None:
    """Deploy REF (default HEAD): preflight, lock, release, snapshot, migrate, start, smoke, switch, watch.

    Exit codes: 0 deployed; 3 failed and rolled back (the previous release serves); 1 failed and
    could not undo everything; 2 refused (preflight, policy, confirmation); 4 locked.

    When the environment lists `hosts`, deploys to every host over SSH, all or none (docs/hosts.md).
    """
    # Imported here: the deploy pipeline and its adapters are for the run, not for `lockstep --help`.
    from lockstep.actions.deploy import deploy, plan_deploy, preflight_host
    from lockstep.pipeline.deploy import DeployRequest

    request = DeployRequest(
        ref=ref,
        message=message,
        dry_run=dry_run,
        skip_migrations=skip_migrations,
        skip_backup=skip_backup,
        force=force,
        yes=yes,
        lock_wait=parse_duration_seconds(lock_wait),
        allow_dirty=allow_dirty,
        coordinated=coordinated,
        secondary=secondary,
        hold_on_unwind=hold_on_unwind,
        hold_only=hold_only,
    )
    if preflight_only:
        print_json(
            preflight_host(Path.cwd(), config_path, environment, request, progress_reporter(log_format, quiet, verbose))
        )
        return
    if dry_run:
        lines = plan_deploy(Path.cwd(), config_path, environment, request)
        if wants_json(json_output):
            print_json({"plan": lines})
        else:
            for line in lines:
                console.print(line, markup=False, highlight=False)
        return
    reporter = progress_reporter(log_format, quiet, verbose)
    record = deploy(Path.cwd(), config_path, environment, request, reporter)
    if wants_json(json_output):
        print_json(record.to_document())
        return
    if record.hosts:
        for host in record.hosts:
            console.print(f"{host['name']}: {host['outcome']} {host.get('detail') or ''}".rstrip(), markup=False)
    console.print(
        f"deployed {record.id} ({(record.commit or '')[:12]}) to {record.environment} in slot {record.slot} "
        f"in {record.duration or 0:.1f} s",
        markup=False,
    )


COMMANDS = [deploy_command]
