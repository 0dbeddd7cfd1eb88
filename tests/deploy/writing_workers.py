"""A worker that writes to the database all the time and logs each write once it is committed:
what a data restore must not run under (pipeline/worker_pause.py). The log says when each write
was made and by which release; the database, after a restore, says which ones were kept."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# One row in `jobs` every 0.05 s, named "HOST RELEASE PID SEQUENCE"; logged after its commit.
# It exits at once, as it starts, while the file $JOBS_REFUSE names exists. While the file
# $JOBS_CRASHES names holds a number above 0, it takes one off, and exits a second after its start
# (past the agent's start check), noting the time of its exit in $JOBS_CRASHES.times.
JOBS = """
import os, signal, sqlite3, sys, threading, time
from contextlib import closing
from pathlib import Path
from database import connect, database_path

RELEASE = (Path(__file__).resolve().parent / "VERSION").read_text().strip()
HOST = os.environ["JOBS_HOST"]
if os.environ.get("JOBS_REFUSE") and Path(os.environ["JOBS_REFUSE"]).exists():
    sys.exit("jobs: refusing to start (the test's JOBS_REFUSE file exists)")
CRASHES = Path(os.environ.get("JOBS_CRASHES") or "/nonexistent")
if CRASHES.exists() and int(CRASHES.read_text() or 0) > 0:
    CRASHES.write_text(str(int(CRASHES.read_text()) - 1))
    time.sleep(1)
    with open(f"{CRASHES}.times", "a") as times:
        times.write(f"{time.time()}\\n")
    sys.exit("jobs: exits a second after its start (the test's JOBS_CRASHES file)")
stopping = threading.Event()
signal.signal(signal.SIGTERM, lambda number, frame: stopping.set())
sequence = 0
with open(os.environ["JOBS_LOG"], "a") as log:
    while not stopping.is_set():
        sequence += 1
        name = f"{HOST} {RELEASE} {os.getpid()} {sequence}"
        try:
            with closing(connect(database_path())) as connection:
                connection.execute("INSERT INTO jobs (name, release) VALUES (?, ?)", (name, RELEASE))
            log.write(f"{time.time()} {name}\\n")
            log.flush()
        except sqlite3.Error as error:
            print(f"jobs: {error}", file=sys.stderr, flush=True)
        stopping.wait(0.05)
"""

CREATE_JOBS = "CREATE TABLE jobs (id INTEGER PRIMARY KEY, name TEXT NOT NULL, release TEXT NOT NULL);\n"
SEED = "INSERT INTO notes (text) VALUES ('written by migration 003');\n"


def jobs_component(host: str, log: Path, refuse: Path | None = None, crashes: Path | None = None) -> str:
    """The lockstep.toml table that runs the worker, as `host`, logging to `log`; while `refuse`
    exists, the worker exits as it starts (the agent's start of it fails); while `crashes` holds
    a number above 0, it exits a second after its start (see JOBS)."""
    env = f'JOBS_HOST = "{host}", JOBS_LOG = "{log}"' + (f', JOBS_REFUSE = "{refuse}"' if refuse else "")
    env += f', JOBS_CRASHES = "{crashes}"' if crashes else ""
    return f'[app.components.jobs]\ncommand = "python3 jobs.py"\nenv = {{ {env} }}\n'


@dataclass(frozen=True)
class Write:
    at: float  # time.time() just after its commit
    name: str
    host: str
    release: str


def logged_writes(log: Path) -> list[Write]:
    if not log.exists():
        return []
    writes = []
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 5:  # a line cut short by a stop is not a whole write
            writes.append(Write(float(parts[0]), " ".join(parts[1:]), parts[1], parts[2]))
    return writes


def stored_names(database: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(database, timeout=10)) as connection:
        return {str(name) for (name,) in connection.execute("SELECT name FROM jobs")}


def wait_for_writes(log: Path, host: str, release: str, after: float, timeout: float = 60) -> None:
    """Until a worker of `release` on `host` has logged a write made after `after`: it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(w.host == host and w.release == release and w.at > after for w in logged_writes(log)):
            return
        time.sleep(0.1)
    raise AssertionError(f"no worker of release {release} on {host} writes jobs since {after}")


def writes_between(log: Path, release: str, start: float, end: float) -> list[Write]:
    return [w for w in logged_writes(log) if w.release == release and start <= w.at <= end]


def lost_writes(log: Path, release: str, since: float, database: Path) -> list[str]:
    """The writes of `release` logged (so committed) since `since` that the database does not hold."""
    stored = stored_names(database)
    return [w.name for w in logged_writes(log) if w.release == release and w.at >= since and w.name not in stored]


def wait_for_file(path: Path, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            said = process.stderr.read()[-4000:] if process.stderr is not None else ""  # why, when piped
            raise AssertionError(f"the deploy ended (exit {process.returncode}) before it got to {path.name}: {said}")
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing got to {path.name} within {timeout:.0f} s")
        time.sleep(0.05)


def deploy_a_writing_release(project: Any, log: Path) -> None:
    """Release 1.0.0 with the jobs worker (host "solo") deployed, and seen writing."""
    (project.directory / "jobs.py").write_text(JOBS)
    (project.directory / "migrations" / "002_create_jobs.sql").write_text(CREATE_JOBS)
    project.commit("notes 1.0.0: a worker that writes")
    first = project.lockstep("deploy")
    assert first.returncode == 0, first.err
    wait_for_writes(log, "solo", "1.0.0", after=0)


def commit_a_release_that_fails_smoke(project: Any) -> None:
    """Release 2.0.0: a migration that writes, and a smoke test that fails (its deploy unwinds,
    restoring the data: where the serving release's workers are stopped)."""
    (project.directory / "VERSION").write_text("2.0.0\n")
    (project.directory / "migrations" / "003_seed.sql").write_text(SEED)
    (project.directory / "BREAKS_SMOKE").write_text("yes\n")
    project.commit("notes 2.0.0: a migration that writes, and a smoke test that fails")


def record_once_unpaused(project: Any, timeout: float = 30) -> dict[str, Any]:
    """The last record once its `paused_workers` mark is gone (or at the deadline). Whoever starts
    the workers again saves the record after their start settled, while they already write, so
    the first write alone does not mean the record says so yet."""
    deadline = time.monotonic() + timeout
    while True:
        record: dict[str, Any] = project.history()[-1]
        if record["paused_workers"] is None or time.monotonic() > deadline:
            return record
        time.sleep(0.3)
