"""Fault injection for the tests: a process that SIGKILLs itself at a named point, as `kill -9`
would there. Some windows (a command started, its process group not yet recorded) last
microseconds, and a test that kills from outside cannot hit them; one that names the point can.
Nothing happens unless the variable is set, and only tests set it.
"""

from __future__ import annotations

import os
import signal

KILL_AT_VARIABLE = "LOCKSTEP_TEST_KILL_AT"


def kill_point(name: str) -> None:
    """SIGKILL this process when LOCKSTEP_TEST_KILL_AT names this point."""
    if os.environ.get(KILL_AT_VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGKILL)
