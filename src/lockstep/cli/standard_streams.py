"""Standard streams that a caller closed (`lockstep backup >&-` in a crontab, `2>&-`).

Python then starts with sys.stdout or sys.stderr set to None, and lockstep failed on its first
line of output, before the backup, its pings and its error message: the job did nothing and
said nothing. Worse, the first file lockstep opened would get the free descriptor 1 or 2, and
every print, and every child inheriting that descriptor, would write into it (a pack file, a
dump). Each closed one of 0, 1 and 2 is reopened on /dev/null before anything else runs, which
is what cron does for a job whose output is discarded.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

_NAMES = {0: "stdin", 1: "stdout", 2: "stderr"}


def reopen_closed_standard_streams() -> None:
    """Point every closed standard descriptor at /dev/null, and its sys stream at that."""
    for descriptor, name in _NAMES.items():
        try:
            os.fstat(descriptor)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != descriptor:
                os.dup2(null, descriptor)
                os.close(null)
        if getattr(sys, name) is None:
            stream: TextIO = open(  # noqa: SIM115 (lives as long as the process)
                descriptor, "r" if descriptor == 0 else "w", encoding="utf-8", errors="backslashreplace", closefd=False
            )
            setattr(sys, name, stream)
