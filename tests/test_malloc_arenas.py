"""malloc_arenas: a lockstep process keeps one glibc heap for all its threads.

Measured in a child process (the setting is process-wide and must come before threads start):
eight threads, alive together, take turns to hold 24 MiB in blobs of 1 MiB, as a copy's readers
and uploaders hold runs and blobs. With a heap per thread each heap keeps what its thread held,
and the process the sum (192 MiB); with one heap the next thread reuses what the last freed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def is_glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


pytestmark = pytest.mark.skipif(not is_glibc(), reason="the per-thread heaps are glibc's")

PROBE = """
import sys, threading

def rss_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 // 2**20

if sys.argv[1] == "cli":
    from lockstep.cli.main import main
    sys.argv = ["lockstep", "--version"]
    try:
        main()
    except SystemExit:
        pass
big = b"y" * (16 << 20)  # a copy's first 16 MiB read: glibc's mmap threshold rises to its size
del big
ready = threading.Event()
turn = threading.Lock()

def work():
    attach = b"z" * 4096  # this thread's first allocation: glibc gives it a heap
    ready.wait()
    with turn:
        held = [b"x" * (1 << 20) for _ in range(24)]
        del held
    del attach

threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads:
    thread.start()
before = rss_mib()
ready.set()
for thread in threads:
    thread.join()
print(rss_mib() - before)
"""


def kept_mib(mode: str) -> int:
    """MiB the probe process still holds after its threads freed everything."""
    environment = {key: value for key, value in os.environ.items() if key != "MALLOC_ARENA_MAX"}
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=environment, check=True, timeout=60
    )
    return int(completed.stdout.splitlines()[-1])


def test_the_cli_shares_one_heap_between_threads() -> None:
    """The real CLI entry point sets it: the probe keeps about one thread's 24 MiB, not eight's.
    Before, `repo copy` kept each reader's busiest moment, twice restic's peak memory."""
    per_thread = kept_mib("plain")
    assert per_thread >= 8 * 24 * 3 // 4, per_thread  # the behaviour this guards against is real here
    assert kept_mib("cli") <= 2 * 24, per_thread
