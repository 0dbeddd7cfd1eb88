"""One `mariadb` client kept open, for statements that must share a connection.

A lock (FLUSH TABLES WITH READ LOCK) and a transaction live as long as their connection, and
lockstep has no MariaDB driver: the `mariadb` client the adapter needs anyway holds them just
as well when it reads statements from a pipe. Each statement is followed by a SELECT of a
marker that no row can equal, so the end of its rows is known without parsing the output. In
batch mode the client stops at the first error; its connection, and with it any lock or
transaction, ends with it.
"""

from __future__ import annotations

import contextlib
import queue
import re
import secrets
import threading
import time
from dataclasses import replace

from lockstep.databases.base import redact
from lockstep.errors import SourceError
from lockstep.process import Command, start_piped

# Options that make the client a statement pipe: rows as tab-separated lines, no headers,
# output flushed after every statement, and never a silent reconnect (which would drop the
# lock or the transaction and carry on as if nothing happened).
SESSION_OPTIONS = ("--batch", "--skip-column-names", "--unbuffered", "--skip-reconnect")
ERROR_CODE = re.compile(r"ERROR (\d+)")
# What batch mode writes for a backslash, tab, newline and NUL inside a field.
ESCAPE = re.compile(r"\\([\\tn0])")
UNESCAPED = {"\\": "\\", "t": "\t", "n": "\n", "0": "\0"}


def batch_fields(line: str) -> list[str]:
    r"""One line of `mariadb --batch` output as its fields.

    Batch mode writes a backslash, tab, newline or NUL inside a field as \\, \t, \n or \0
    (so that tabs and newlines only ever separate fields and rows): a table named `back\slash`
    is listed as "back\\slash". A NULL is written as NULL, like the string 'NULL': queries whose
    fields may be NULL say what they mean with COALESCE.
    """
    return [ESCAPE.sub(_unescaped, field) if "\\" in field else field for field in line.split("\t")]


def _unescaped(match: re.Match[str]) -> str:
    return UNESCAPED[match.group(1)]


class StatementFailed(SourceError):
    """A statement the server refused (or a session that ended); `code` is MariaDB's error number."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message, "check the URL, that the server runs and the credentials")
        self.code = code


class ClientSession:
    """A running `mariadb` client: `rows(statement)` runs one statement on its connection."""

    def __init__(self, command: Command, display: str, secret: str | None) -> None:
        self._display = display
        self._secret = secret
        self._marker = "lockstep-end-" + secrets.token_hex(8)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr = ""
        self._process = start_piped(replace(command, argv=(*command.argv, *SESSION_OPTIONS)))
        threading.Thread(target=self._read_stdout, name="mariadb-session-out", daemon=True).start()
        self._stderr_reader = threading.Thread(target=self._read_stderr, name="mariadb-session-err", daemon=True)
        self._stderr_reader.start()

    @property
    def process_id(self) -> int:
        return self._process.pid

    def rows(self, statement: str, timeout: float) -> list[list[str]]:
        """The statement's rows as tab-separated fields; StatementFailed if it fails."""
        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write(f"{statement};\nSELECT '{self._marker}';\n".encode())
            stdin.flush()
        except (OSError, ValueError):  # the client has ended (or was closed)
            raise self._failure() from None
        deadline = time.monotonic() + timeout
        rows: list[list[str]] = []
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.close()
                raise StatementFailed(
                    f"MariaDB statement on {self._display} did not finish within {timeout:.0f} s", None
                ) from None
            if line is None:
                raise self._failure()
            if line == self._marker:
                return rows
            rows.append(batch_fields(line))

    def close(self) -> None:
        """End the client, and so the connection with its lock and transaction (never committed)."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()

    def _failure(self) -> StatementFailed:
        self._process.wait()
        self._stderr_reader.join(timeout=5)
        text = redact(self._stderr.strip(), self._secret)
        # The client echoes the failed statement between dashed lines before the error itself.
        lines = [line for line in text.splitlines() if line.startswith("ERROR")] or text.splitlines()[-1:]
        reason = lines[-1] if lines else f"mariadb exited with code {self._process.returncode}"
        found = ERROR_CODE.search(reason)
        return StatementFailed(
            f"MariaDB query on {self._display} failed: {reason}", int(found.group(1)) if found else None
        )

    def _read_stdout(self) -> None:
        assert self._process.stdout is not None
        with self._process.stdout as stdout:
            for raw in stdout:
                self._lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self._lines.put(None)

    def _read_stderr(self) -> None:
        assert self._process.stderr is not None
        with self._process.stderr as stderr:
            for raw in stderr:
                self._stderr = (self._stderr + raw.decode("utf-8", "replace"))[-4096:]
