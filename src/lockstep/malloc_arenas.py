"""One glibc heap for all of lockstep's threads, not one per thread.

glibc gives each thread that allocates its own heap (arena), up to 8 per core, and memory freed
in one heap is reused only by the threads of that heap and seldom returned to the system. A copy
reads runs of packs of up to 16 MiB and handles blobs of about 1 MiB on 4 reader threads, 8 tree
walkers and 2 uploaders: each heap grew to what its own threads held at their busiest, and the
process held the sum of those peaks. `repo copy` of a 110 MB repository peaked at 155-200 MiB of
RSS for about 80 MiB of live buffers, twice restic; with one heap, 130-145 MiB. Backups and the
agent's long-lived threads gain the same way.

Separate heaps only speed up threads that allocate at the same moment, and in lockstep nearly
every allocation is made holding the GIL, so they bought nothing measurable: the CPU time of a
copy and of a backup stayed the same (bench/repo_copy.py, `repo backup`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os

# mallopt's parameter number for the arena limit (malloc.h: M_ARENA_MAX).
M_ARENA_MAX = -8
ARENAS = 1


def is_glibc() -> bool:
    with contextlib.suppress(ValueError, OSError):
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    return False


def share_one_heap() -> bool:
    """Limit glibc to ARENAS heaps; whether it took. Call it before any thread starts: threads
    that allocated already keep theirs. Elsewhere than glibc (musl, macOS) nothing happens, and
    MALLOC_ARENA_MAX in the environment, a deliberate choice, is left as it is."""
    if not is_glibc() or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, ARENAS) == 1)
