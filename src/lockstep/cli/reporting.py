"""How deploys and rollbacks talk to the person (or the CI log) running them.

On a terminal: one line per step with its duration. Otherwise, or with --log-format json: one
JSON object per event on stderr, so a CI system can parse the progress; stdout stays for the
result (`--json`).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
from rich.markup import escape

from lockstep.cli.output import error_console


class ConsoleReporter:
    """Steps and warnings to stderr; questions on the terminal only."""

    def __init__(self, json_lines: bool | None = None, context: dict[str, Any] | None = None) -> None:
        self.json_lines = (not sys.stderr.isatty()) if json_lines is None else json_lines
        self.context = context or {}

    def _event(self, kind: str, **fields: Any) -> None:
        document = {"time": round(time.time(), 3), "event": kind, **self.context, **fields}
        sys.stderr.write(json.dumps(document) + "\n")
        sys.stderr.flush()

    def step_started(self, step: str, detail: str) -> None:
        if self.json_lines:
            self._event("step-started", step=step, detail=detail)
        else:
            error_console.print(f"[bold]→ {escape(step)}[/bold] {escape(detail)}".rstrip(), highlight=False)

    def step_finished(self, step: str, seconds: float, detail: str) -> None:
        if self.json_lines:
            self._event("step-finished", step=step, duration=round(seconds, 3), detail=detail)
        else:
            error_console.print(f"  [green]✓[/green] {escape(step)} ({seconds:.1f} s) {escape(detail)}".rstrip(), highlight=False)

    def step_failed(self, step: str, seconds: float, reason: str) -> None:
        if self.json_lines:
            self._event("step-failed", step=step, duration=round(seconds, 3), reason=reason)
        else:
            error_console.print(f"  [red]✗[/red] {escape(step)} ({seconds:.1f} s) {escape(reason)}", markup=True, highlight=False)

    def info(self, message: str) -> None:
        if self.json_lines:
            self._event("info", message=message)
        else:
            error_console.print(f"  {message}", markup=False, highlight=False)

    def warn(self, message: str) -> None:
        if self.json_lines:
            self._event("warning", message=message)
        else:
            error_console.print(f"  [yellow]![/yellow] {escape(message)}", highlight=False)

    def confirm(self, question: str, expected_answer: str | None = None) -> bool:
        if not sys.stdin.isatty():
            return False
        if expected_answer is not None:
            answer = click.prompt(f"{question} Type {expected_answer!r} to continue", default="", show_default=False)
            return bool(answer.strip() == expected_answer)
        return click.confirm(question, default=False)
