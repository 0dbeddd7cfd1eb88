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

# mallopt's parameter numbers (malloc.h: M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD).
M_ARENA_MAX = -8
ARENAS = 1
M_MMAP_THRESHOLD = -3
M_TRIM_THRESHOLD = -1
# Allocations from this size up get pages of their own, returned to the system when freed.
MMAP_THRESHOLD = 1024 * 1024
# Free memory at the top of the heap kept for the next blobs rather than given back at once.
TRIM_THRESHOLD = 8 * 1024 * 1024


def is_glibc() -> bool:
    with contextlib.suppress(ValueError, OSError):
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    return False


def share_one_heap() -> bool:
    """Limit glibc to ARENAS heaps; whether it took. Call it before any thread starts: threads
    that allocated already keep theirs. Elsewhere than glibc (musl, macOS) nothing happens, and
    MALLOC_ARENA_MAX in the environment, a deliberate choice, is left as it is."""
    return _set_malloc_option("MALLOC_ARENA_MAX", M_ARENA_MAX, ARENAS)


def map_large_buffers() -> bool:
    """Keep glibc's mmap threshold at MMAP_THRESHOLD (and its trim threshold at TRIM_THRESHOLD);
    whether it took. glibc raises the mmap threshold to the size of each large buffer freed (up
    to 32 MiB), after which packs of 16 MiB and blobs of some MiB come from the heap, whose freed
    holes are seldom the right size again nor given back: `repo copy` peaked at 105 MiB instead
    of 80 (restic: 90). A fixed mmap threshold leaves the trim threshold at 128 KiB, and giving
    the heap's top back after every blob cost a copy 0.3 s more system time; at 8 MiB, none.
    MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ in the environment, deliberate choices,
    are left as they are."""
    trimming = _set_malloc_option("MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return _set_malloc_option("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, MMAP_THRESHOLD) and trimming


def _set_malloc_option(environment_variable: str, parameter: int, value: int) -> bool:
    if not is_glibc() or environment_variable in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(parameter, value) == 1)
