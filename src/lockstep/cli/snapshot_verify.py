"""`lockstep snapshot verify ID [--level structure|data|restore]`."""

from __future__ import annotations

from pathlib import Path

import click

from lockstep.actions.snapshot_verify import verify
from lockstep.cli.output import byte_progress, console, human_bytes, print_json
from lockstep.cli.project_options import wants_json as _wants_json
from lockstep.cli.reporting import progress_options, progress_reporter
from lockstep.cli.snapshot import _config_option, snapshot_group
from lockstep.exit_codes import ExitCode
from lockstep.pipeline.verification_records import VerificationResult
from lockstep.pipeline.verify import VERIFY_LEVELS, VerifyLevel, raise_for_result
from lockstep.wording import counted


def _print_result(result: VerificationResult) -> None:
    state = "ok" if result.ok else "FAILED"
    console.print(
        f"snapshot {result.snapshot_id[:8]}: {result.level} verification {state} in {result.seconds:.1f} s"
        + (f" ({human_bytes(result.bytes_read)} read)" if result.bytes_read else ""),
        markup=False,
    )
    for database in result.databases:
        console.print(
            f"  database {database.name} ({database.engine}): test-restored, {counted(database.tables, 'table')}, "
            f"{counted(database.rows, 'row')}{', ' + database.integrity if database.integrity else ''}",
            markup=False,
        )
    for finding in result.findings:
        console.print(f"  problem: {finding.message}", markup=False)
    for note in result.notes:
        console.print(f"  note: {note}", markup=False)


@snapshot_group.command("verify")
@click.argument("reference", metavar="ID")
@click.option(
    "--level",
    type=click.Choice(VERIFY_LEVELS),
    default="restore",
    show_default=True,
    help="structure: everything is indexed and each dump's blob list matches the manifest; "
    "data: every blob read and every checksum compared; "
    "restore: also test-restore every database into a scratch database.",
)
@_config_option
@progress_options
@click.option("--json", "json_output", is_flag=True, help="Print the result as JSON.")
def verify_command(
    reference: str,
    level: VerifyLevel,
    config_path: Path | None,
    environment: str | None,
    log_format: str,
    quiet: bool,
    verbose: bool,
    json_output: bool,
) -> None:
    """Verify a snapshot and record the result; exit 12 when it finds a problem."""
    wants_json = _wants_json(json_output)
    reporter = progress_reporter(log_format, quiet, verbose)
    bar = not wants_json and not reporter.json_lines and reporter.verbosity >= 0 and level != "structure"
    with byte_progress("verifying", None, enabled=bar) as progress:
        result = verify(
            Path.cwd(),
            reference,
            level,
            config_path=config_path,
            environment=environment,
            progress=progress,
            reporter=reporter,
        )
    if wants_json:
        print_json(result.to_document())
        if not result.ok:
            raise click.exceptions.Exit(ExitCode.INTEGRITY)
        return
    _print_result(result)
    raise_for_result(result)


COMMANDS: list[click.Command] = []
