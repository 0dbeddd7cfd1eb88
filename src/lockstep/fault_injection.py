"""Fault injection for the tests: a process that SIGKILLs itself at a named point, as `kill -9`
would there, or waits there. Some windows (a command started, its process group not yet
recorded) last microseconds, and a test that kills from outside cannot hit them; one that names
the point can. Others (a traffic hold around a data restore) last as long as the machine is
fast: a test that must see requests arrive inside one makes it wait at a named point until it
has seen them, rather than hoping a loaded machine is quick enough.
Nothing happens unless the variables are set, and only tests set them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

KILL_AT_VARIABLE = "LOCKSTEP_TEST_KILL_AT"
WAIT_AT_VARIABLE = "LOCKSTEP_TEST_WAIT_AT"
WAIT_FOR_VARIABLE = "LOCKSTEP_TEST_WAIT_FOR"
WAITING_SUFFIX = ".waiting"  # wait_point's sign that it got there: the go-ahead's name plus this
WAIT_LIMIT = 300.0  # a test that never lets go does not leave the process waiting for ever


def kill_point(name: str) -> None:
    """SIGKILL this process when LOCKSTEP_TEST_KILL_AT names this point."""
    if os.environ.get(KILL_AT_VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def wait_point(name: str) -> None:
    """When LOCKSTEP_TEST_WAIT_AT names this point, wait here until the file LOCKSTEP_TEST_WAIT_FOR
    names exists (the test's go-ahead), at most WAIT_LIMIT seconds. On arrival it creates that
    name with WAITING_SUFFIX added, so a test can see the process got here."""
    go_ahead = os.environ.get(WAIT_FOR_VARIABLE)
    if os.environ.get(WAIT_AT_VARIABLE) != name or not go_ahead:
        return
    go = Path(go_ahead)
    with contextlib.suppress(OSError):
        go.with_name(go.name + WAITING_SUFFIX).touch()
    deadline = time.monotonic() + WAIT_LIMIT
    while not go.is_file() and time.monotonic() < deadline:
        time.sleep(0.02)
