#!/usr/bin/env python3
"""Notes: the small web app that lockstep's demo deploys, breaks and rolls back.

Environment: PORT (it listens on 127.0.0.1:PORT) and NOTES_DATABASE (the SQLite file, kept in
a directory that outlives releases). Run `python3 migrate.py` first: /health answers 503 until
the schema this code needs is there.
"""

from __future__ import annotations

import html
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import notes
from database import applied_migrations, connect, database_path

VERSION = (Path(__file__).resolve().parent / "VERSION").read_text(encoding="utf-8").strip()
MAX_BODY_BYTES = 64 * 1024
STOP_TIMEOUT_SECONDS = 30.0

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Notes</title></head>
<body>
<h1>Notes</h1>
<form method="post" action="/notes">
{form_fields}
  <button>Add</button>
</form>
<ul>
{items}
</ul>
<p><small>notes {version}</small></p>
</body></html>
"""


def health_problem(database: Path) -> str | None:
    """Why this release cannot serve yet, or None when the database is reachable and migrated."""
    if not database.exists():
        return f"database {database} does not exist: run migrate.py"
    with closing(connect(database)) as connection:
        try:
            applied = applied_migrations(connection)
        except sqlite3.OperationalError:
            return f"database {database} has no schema_migrations table: run migrate.py"
    if notes.SCHEMA_VERSION not in applied:
        newest = max(applied, default="none")
        return f"this code needs schema version {notes.SCHEMA_VERSION}, the database is at {newest}: run migrate.py"
    return None


class NotesServer(ThreadingHTTPServer):
    """Counts the requests in flight, so that stopping can wait for them (and not for idle connections)."""

    request_queue_size = 128

    def __init__(self, port: int, database: Path) -> None:
        super().__init__(("127.0.0.1", port), NotesHandler)
        self.database = database
        self.stopping = threading.Event()
        self._in_flight = 0
        self._changed = threading.Condition()

    @contextmanager
    def request_in_flight(self) -> Iterator[None]:
        with self._changed:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()

    def wait_for_requests(self, timeout: float) -> bool:
        """True once no request is in flight; False if some are still running after `timeout`."""
        with self._changed:
            return self._changed.wait_for(lambda: self._in_flight == 0, timeout)


class NotesHandler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections open between requests, so every response needs a Content-Length.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm the second one waits for
    # the client's delayed ACK (40 ms), which would cap each connection at 25 requests/s.
    disable_nagle_algorithm = True
    server: NotesServer
    query: dict[str, list[str]]  # of the request being handled
    body: bytes

    def do_GET(self) -> None:
        self.dispatch(
            {
                "/": self.index,
                "/api/notes": self.api_notes,
                "/health": self.health,
                "/version": self.version,
                "/slow": self.slow,
            }
        )

    def do_POST(self) -> None:
        self.dispatch({"/notes": self.create_note})

    def dispatch(self, routes: dict[str, Callable[[], None]]) -> None:
        with self.server.request_in_flight():
            url = urlsplit(self.path)
            body = self.read_body()
            if body is None:
                return
            self.query, self.body = parse_qs(url.query), body
            route = routes.get(url.path)
            if route is None:
                self.respond(404, "not found\n")
                return
            try:
                route()
            except sqlite3.Error as error:
                self.respond(503, f"database error: {error}\n")

    def read_body(self) -> bytes | None:
        """The request body; None after answering 413 for one too large (or unknown) to read."""
        length = self.headers.get("Content-Length", "0")
        if "Transfer-Encoding" in self.headers or not length.isdigit() or int(length) > MAX_BODY_BYTES:
            self.close_connection = True  # the unread body would be taken for the next request
            self.respond(413, f"send a Content-Length of at most {MAX_BODY_BYTES} bytes\n")
            return None
        return self.rfile.read(int(length))

    def respond(
        self, status: int, body: str, content_type: str = "text/plain", headers: dict[str, str] | None = None
    ) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.server.stopping.is_set():
            self.send_header("Connection", "close")  # also ends this connection's keep-alive loop
        self.end_headers()
        self.wfile.write(data)

    def respond_json(self, status: int, value: object) -> None:
        self.respond(status, json.dumps(value) + "\n", "application/json")

    def index(self) -> None:
        items = "\n".join(notes.render_note(note) for note in notes.list_notes(self.server.database))
        page = PAGE.format(form_fields=notes.FORM_FIELDS, items=items, version=html.escape(VERSION))
        self.respond(200, page, "text/html")

    def api_notes(self) -> None:
        self.respond_json(200, notes.list_notes(self.server.database))

    def create_note(self) -> None:
        """JSON in, 201 and JSON out; a form post is sent back to the page (303)."""
        is_json = self.headers.get_content_type() == "application/json"
        try:
            if is_json:
                fields = json.loads(self.body)
                if not isinstance(fields, dict):
                    raise ValueError("expected a JSON object")
            else:
                fields = {name: values[0] for name, values in parse_qs(self.body.decode("utf-8")).items()}
        except ValueError as error:  # also bad JSON and bad UTF-8
            self.respond(400, f"cannot read the note: {error}\n")
            return
        fields = {name: str(value).strip() for name, value in fields.items()}
        if not fields.get("text"):
            self.respond(400, "text is required\n")
            return
        note = notes.add_note(self.server.database, fields)
        if is_json:
            self.respond_json(201, note)
        else:
            self.respond(303, "", headers={"Location": "/"})

    def health(self) -> None:
        problem = health_problem(self.server.database)
        self.respond(503 if problem else 200, (problem or "ok") + "\n")

    def version(self) -> None:
        self.respond(200, VERSION + "\n")

    def slow(self) -> None:
        """GET /slow?ms=N answers after N ms (at most 10 s): a request in flight, for stop tests."""
        milliseconds = min(max(int(self.query.get("ms", ["1000"])[0]), 0), 10_000)
        print(f"slow request: answering in {milliseconds} ms", file=sys.stderr, flush=True)
        time.sleep(milliseconds / 1000)
        self.respond(200, f"slept {milliseconds} ms\n")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access log: load tests send thousands of requests. Errors are still logged."""


def main() -> int:
    if not os.environ.get("PORT", "").isdigit():
        raise SystemExit("notes: set PORT to the port to listen on (127.0.0.1:PORT)")
    server = NotesServer(int(os.environ["PORT"]), database_path())
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda number, frame: server.stopping.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"notes {VERSION} listening on http://127.0.0.1:{server.server_port}", flush=True)

    notes.after_start(server.database, server.stopping)
    server.stopping.wait()
    server.shutdown()  # stop accepting; connections not yet accepted are refused
    server.server_close()
    # Requests already running finish and say "Connection: close". Idle keep-alive connections
    # are simply closed when the process ends.
    if not server.wait_for_requests(STOP_TIMEOUT_SECONDS):
        print(f"notes: requests still running after {STOP_TIMEOUT_SECONDS} s; stopping anyway", file=sys.stderr)
        return 1
    print("notes stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
