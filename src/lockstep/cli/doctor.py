"""`lockstep doctor`: one line per check, pass/warn/fail, with the fix; exit 1 when anything failed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table
from rich.text import Text

from lockstep.cli.output import console, print_json
from lockstep.cli.project_options import project_options, wants_json
from lockstep.exit_codes import ExitCode
from lockstep.wording import counted

if TYPE_CHECKING:
    from lockstep.pipeline.doctor import DoctorCheck

_STYLES = {"pass": "green", "warn": "yellow", "fail": "bold red"}


def _print_table(checks: list[DoctorCheck]) -> None:
    table = Table()
    table.add_column("Status", no_wrap=True)
    table.add_column("Check", no_wrap=True)
    # fold, never truncate: a path or a command cut short by "…" cannot be copied
    table.add_column("Detail", overflow="fold")
    table.add_column("Fix", overflow="fold")
    for check in checks:
        # Text, not markup: details hold paths and SQL that may contain [brackets].
        table.add_row(
            Text(check.status.upper(), style=_STYLES[check.status]),
            Text(check.name),
            Text(check.detail),
            Text(check.fix or ""),
        )
    console.print(table)


def _print_lines(checks: list[DoctorCheck]) -> None:
    """Plain lines for logs and pipes: `STATUS  name: detail`, then `      fix: ...`."""
    for check in checks:
        console.print(f"{check.status.upper():<4}  {check.name}: {check.detail}", markup=False)
        if check.fix and check.status != "pass":
            console.print(f"      fix: {check.fix}", markup=False)


@click.command("doctor")
@project_options
@click.option("--json", "json_output", is_flag=True, help="Print a JSON list of {name, status, detail, fix}.")
def doctor_command(config_path: Path | None, environment: str | None, json_output: bool) -> None:
    """Check that deploys, backups and restores of an environment will work, and say how to fix what won't.

    Checks the tools and their versions, the config, the repository and its password, every
    database and the rights a dump and a test-restore need, free disk space, permissions of
    secret files and of the repository, the agent, traffic and the proxy config, schedules,
    and the age of the newest good and verified snapshots against agent.rpo_hours.

    Exit code: 0 when no check failed (warnings allowed), 1 when any check failed.
    """
    # Imported here: every check's adapter is for the run, not for `lockstep --help`.
    from lockstep.actions.doctor import run_doctor

    report = run_doctor(Path.cwd(), config_path, environment)
    if wants_json(json_output):
        print_json([check.to_document() for check in report.checks])
    elif sys.stdout.isatty():
        _print_table(report.checks)
    else:
        _print_lines(report.checks)
    if not wants_json(json_output):
        counts = {status: sum(check.status == status for check in report.checks) for status in ("fail", "warn", "pass")}
        console.print(
            f"{counts['fail']} failed, {counted(counts['warn'], 'warning')}, {counts['pass']} passed", markup=False
        )
    if report.failed:
        # Not click's Exit: with standalone_mode=False click returns its code instead of exiting.
        sys.exit(ExitCode.FAILED)


COMMANDS = [doctor_command]
