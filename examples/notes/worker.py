#!/usr/bin/env python3
"""A process without a port: logs how many notes there are every NOTES_WORKER_INTERVAL seconds.

It stands for the background jobs a real application runs next to its web processes (queues,
mailers). It exits 0 on SIGTERM, and a database it cannot read is logged, not fatal.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import threading
from contextlib import closing
from pathlib import Path

from database import connect, database_path

VERSION = (Path(__file__).resolve().parent / "VERSION").read_text(encoding="utf-8").strip()


def main() -> int:
    database = database_path()
    interval = float(os.environ.get("NOTES_WORKER_INTERVAL", "5"))
    stopping = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda number, frame: stopping.set())
    print(f"notes worker {VERSION} started", flush=True)
    while not stopping.is_set():
        try:
            with closing(connect(database)) as connection:
                (count,) = connection.execute("SELECT count(*) FROM notes").fetchone()
            print(f"notes: {count}", flush=True)
        except sqlite3.Error as error:
            print(f"notes worker: cannot count notes: {error}", file=sys.stderr, flush=True)
        stopping.wait(interval)
    print("notes worker stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
