"""How long-running commands (deploy, rollback, backup, snapshot create/verify/restore/forget)
talk to the person, the CI log or cron running them.

On a terminal: one line per step with its duration. Otherwise, or with --log-format json: one
JSON object per event on stderr, so a CI system can parse the progress; stdout stays for the
result (`--json`). --quiet keeps only warnings and failures (in either format), --verbose adds
details.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
from rich.markup import escape

from lockstep.cli.output import error_console
from lockstep.redaction import process_redactor

QUIET = -1  # --quiet: warnings, failed steps and the result
SILENT = -2  # `lockstep backup` under cron: warnings and the result only (the error line names the step)


class ConsoleReporter:
    """Steps and warnings to stderr; questions on the terminal only.

    Everything written passes through a redactor that knows the secrets in lockstep's
    environment (LOCKSTEP_PASSWORD, *_PASSWORD, *_TOKEN, *_SECRET, *_KEY, URL passwords), and
    those a command adds (`add_secret`: database password files, the repository's password file).
    `verbosity` QUIET (-1, --quiet) shows only warnings and failures, SILENT (-2) only warnings;
    1 (--verbose) adds details.
    """

    def __init__(
        self, json_lines: bool | None = None, context: dict[str, Any] | None = None, verbosity: int = 0
    ) -> None:
        self.json_lines = (not sys.stderr.isatty()) if json_lines is None else json_lines
        self.context = context or {}
        self.verbosity = verbosity
        self.redactor = process_redactor()
        self.output_gone = False

    def add_secret(self, value: str | None) -> None:
        """A secret read from somewhere the environment does not show (a password file)."""
        self.redactor.add(value)

    def bind(self, **fields: Any) -> None:
        """Fields every later event carries (deploy_id, env)."""
        self.context.update(fields)

    def _event(self, kind: str, **fields: Any) -> None:
        if self.output_gone:
            return
        document = self.redactor.redact_document(
            {"time": round(time.time(), 3), "event": kind, **self.context, **fields}
        )
        try:
            sys.stderr.write(json.dumps(document) + "\n")
            sys.stderr.flush()
        except OSError:
            self._lose_output()

    def _print(self, text: str, markup: bool = True) -> None:
        if self.output_gone:
            return
        try:
            error_console.print(self.redactor.redact(text), markup=markup, highlight=False)
        except OSError:
            self._lose_output()

    def _lose_output(self) -> None:
        """Whoever read stderr is gone (`| head`, a dead CI log collector, a closed terminal): a
        deploy half-way through must still finish or undo its steps, so reporting goes quiet
        instead of raising out of the step that happened to print."""
        self.output_gone = True

    def step_started(self, step: str, detail: str) -> None:
        if self.verbosity < 0:
            return
        if self.json_lines:
            self._event("step-started", step=step, detail=detail)
        else:
            self._print(f"[bold]→ {escape(step)}[/bold] {escape(detail)}".rstrip())

    def step_finished(self, step: str, seconds: float, detail: str) -> None:
        if self.verbosity < 0:
            return
        if self.json_lines:
            self._event("step-finished", step=step, duration=round(seconds, 3), detail=detail)
        else:
            self._print(f"  [green]✓[/green] {escape(step)} ({seconds:.1f} s) {escape(detail)}".rstrip())

    def step_failed(self, step: str, seconds: float, reason: str) -> None:
        if self.verbosity < QUIET:  # the command's own error line says the same
            return
        if self.json_lines:
            self._event("step-failed", step=step, duration=round(seconds, 3), reason=reason)
        else:
            self._print(f"  [red]✗[/red] {escape(step)} ({seconds:.1f} s) {escape(reason)}")

    def info(self, message: str) -> None:
        if self.verbosity < 0:
            return
        if self.json_lines:
            self._event("info", message=message)
        else:
            self._print(f"  {message}", markup=False)

    def detail(self, message: str) -> None:
        """What only --verbose shows: per-database sizes, row counts, what retention kept."""
        if self.verbosity < 1:
            return
        if self.json_lines:
            self._event("detail", message=message)
        else:
            self._print(f"    [dim]{escape(message)}[/dim]")

    def warn(self, message: str) -> None:
        if self.json_lines:
            self._event("warning", message=message)
        elif self.verbosity < 0:  # no step lines around it: a line that stands alone (cron mails it)
            self._print(f"lockstep: warning: {message}", markup=False)
        else:
            self._print(f"  [yellow]![/yellow] {escape(message)}")

    def confirm(self, question: str, expected_answer: str | None = None) -> bool:
        if not sys.stdin.isatty():
            return False
        if expected_answer is not None:
            answer = click.prompt(f"{question} Type {expected_answer!r} to continue", default="", show_default=False)
            return bool(answer.strip() == expected_answer)
        return click.confirm(question, default=False)


def progress_options(function: Any) -> Any:
    """--log-format, -q/--quiet and -v/--verbose, for the commands that report steps."""
    function = click.option("-v", "--verbose", is_flag=True, help="Everything, with details.")(function)
    function = click.option("-q", "--quiet", is_flag=True, help="Only warnings, failures and the result.")(function)
    return click.option(
        "--log-format",
        type=click.Choice(["auto", "text", "json"]),
        default="auto",
        help="Progress on stderr: text on a terminal, JSON lines otherwise (auto), or as chosen.",
    )(function)


def progress_reporter(
    log_format: str, quiet: bool, verbose: bool, quiet_unless_terminal: bool = False
) -> ConsoleReporter:
    """The reporter those three options ask for.

    `quiet_unless_terminal` is for `lockstep backup`, made for cron: with the automatic format
    and no terminal it stays quiet (cron mails whatever is printed) unless --verbose asks; then
    its warnings are plain `lockstep: warning:` lines rather than JSON."""
    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose exclude each other")
    json_lines = None if log_format == "auto" else log_format == "json"
    verbosity = QUIET if quiet else 1 if verbose else 0
    if quiet_unless_terminal and log_format == "auto" and not sys.stderr.isatty() and not verbose:
        return ConsoleReporter(json_lines=False, verbosity=SILENT)
    return ConsoleReporter(json_lines=json_lines, verbosity=verbosity)
