"""Human output on a terminal, JSON for scripts, progress bars on long work."""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.table import Table


def _width_when_not_a_terminal() -> int | None:
    """Tables piped to a file or a CI log would be squeezed to 80 columns; give them room."""
    if sys.stdout.isatty():
        return None
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() else 160


_UNLIMITED_WIDTH = 1_000_000  # to measure the width a table needs, not what it gets

# No emoji codes and no markup: a message that happens to contain ":name:" (a path, a URL) or
# "[...]" (a snapshot message "[WIP] fix", a tag list, a path) prints as written; "[/]" in one
# made `snapshot list` fail with rich's MarkupError. Styled lines pass markup=True themselves.
console = Console(highlight=False, soft_wrap=True, emoji=False, markup=False, width=_width_when_not_a_terminal())


class _StderrConsole(Console):
    """stderr whose reader may go away (`2>&1 | head`, a dead CI log collector) mid-deploy.

    rich's default answer to a broken pipe is to point stdout (not stderr) at /dev/null and raise
    SystemExit(1), which no `except Exception` sees: a deploy printing a step would stop right
    there, without undoing anything, and clobber the --json document on stdout. Here the console
    goes quiet and raises BrokenPipeError (an OSError), which the progress reporter absorbs so the
    deploy finishes or unwinds, and which the error line ignores.
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, "the reader of stderr has gone away")


error_console: Console = _StderrConsole(stderr=True, highlight=False, soft_wrap=True, emoji=False, markup=False)


def print_table(table: Table, rows: Sequence[Sequence[str]], lead: Sequence[int]) -> None:
    """`table` when the terminal is wide enough for it; otherwise each row as a block: the cells
    at `lead` on one line, then `header: value` for each other non-empty cell.

    rich fits a table that is too wide by cutting cells short with "…" and dropping columns, so
    on an 80-column terminal `history` showed "20261123_071425_1d…" for the ID `rollback --to`
    needs and `snapshot list` lost its messages; the blocks keep every value whole.
    """
    from rich.measure import Measurement

    unlimited = console.options.update_width(_UNLIMITED_WIDTH)
    # rich measures a no_wrap cell by its longest word, so a table wider than the terminal
    # measured as fitting and its wrapping column was squeezed to "ho…": a no_wrap column's
    # minimum is its widest cell, whole.
    for column in table.columns:
        if column.no_wrap and column.min_width is None:
            cells = (column.header, *column.cells)
            column.min_width = max(Measurement.get(console, unlimited, cell).maximum for cell in cells)
    needed = Measurement.get(console, unlimited, table).minimum
    if needed <= console.width:
        console.print(table)
        return
    headers = [str(column.header) for column in table.columns]
    for row in rows:
        console.print("  ".join(row[index] for index in lead if row[index]), markup=False)
        for index, (header, cell) in enumerate(zip(headers, row, strict=True)):
            if index not in lead and cell:
                console.print(f"  {header.lower()}: {cell}", markup=False)


def print_json(document: Any) -> None:
    """One JSON document on stdout, nothing else."""
    sys.stdout.write(json.dumps(document, indent=None, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1024
    return f"{count:.2f} TiB"


@contextmanager
def byte_progress(description: str, total: int | None, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr when it is a terminal; a no-op callback otherwise."""
    if not enabled or not error_console.is_terminal:
        yield lambda _: None
        return
    # Imported here: 10 ms that commands run from cron or scripts need not pay.
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=error_console,
        transient=True,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda advance: progress.advance(task, advance)
