"""A copy's memory is bounded by the index, not by the data: `repo copy` of 160 MiB of blobs in
a child process, its peak RSS measured (what users of small machines copying off-site meet).

Before the copy read its runs of blobs streamed and grew each pack in one buffer, this copy
peaked at 150-170 MiB (four runs of up to 16 MiB held whole, each pack being finished held
twice, glibc's heap holes). (On bench/repo_copy.py's data: ~145 MiB before, ~80 now, restic
~90.) The destination is on tmpfs (/dev/shm): on a disk that other work keeps busy, fsync decides how
many finished packs wait for their upload (at most three), which made the peak vary by 25 MiB.
There the new code peaks at 79-85 MiB, the old at 161-165 MiB; the bound sits between."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import lockstep
from tests.conftest import run_lockstep

SHARED_MEMORY = Path("/dev/shm")
pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or not SHARED_MEMORY.is_dir(), reason="Linux's wait4 and /dev/shm"
)

DATA_MIB = 160
PEAK_RSS_BOUND_MIB = 120
SOURCE_PASSWORD = "source password"
DESTINATION_PASSWORD = "destination password"


# Runs the command and prints its exit code and peak RSS. A small process of its own: Linux hands
# a child the peak RSS of the process that exec'd it (kept across exec), and the test's own
# process grows to some hundreds of MiB over a test run.
LAUNCHER = """
import os, sys
child = os.posix_spawn(
    sys.argv[1], sys.argv[1:], os.environ, file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]
)
_, status, usage = os.wait4(child, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def peak_rss_mib(argv: list[str], env: dict[str, str]) -> int:
    """Run a command; its own peak RSS in MiB."""
    completed = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *argv], env=env, capture_output=True, text=True, timeout=300, check=True
    )
    exit_code, peak_kib = (int(field) for field in completed.stdout.split())
    assert exit_code == 0, completed.stderr
    return peak_kib // 1024


def test_a_copy_holds_far_less_than_the_data_it_copies(tmp_path: Path) -> None:
    """160 MiB of incompressible blobs go through a copy whose peak RSS stays under 120 MiB."""
    tree = tmp_path / "tree"
    tree.mkdir()
    generator = random.Random(11)
    for number in range(DATA_MIB // 16):  # incompressible: every byte goes through the packs
        (tree / f"file-{number}.bin").write_bytes(generator.randbytes(16 * 1024 * 1024))
    source = tmp_path / "source"
    destination = Path(tempfile.mkdtemp(prefix="lockstep-test-copy-", dir=SHARED_MEMORY)) / "destination"
    try:
        copy_and_check_peak(tree, source, destination)
    finally:
        shutil.rmtree(destination.parent)


def copy_and_check_peak(tree: Path, source: Path, destination: Path) -> None:
    for repository, password in ((source, SOURCE_PASSWORD), (destination, DESTINATION_PASSWORD)):
        assert (
            run_lockstep(["repo", "init", "-r", str(repository)], env={"LOCKSTEP_PASSWORD": password}).returncode == 0
        )
    backup = run_lockstep(["repo", "backup", "-r", str(source), str(tree)], env={"LOCKSTEP_PASSWORD": SOURCE_PASSWORD})
    assert backup.returncode == 0, backup.stderr.decode()
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")
    }  # lockstep's own malloc settings, not the caller's
    environment.update(
        PYTHONPATH=str(Path(lockstep.__file__).resolve().parents[1]),
        LOCKSTEP_PASSWORD=DESTINATION_PASSWORD,
        LOCKSTEP_FROM_PASSWORD=SOURCE_PASSWORD,
    )

    peak = peak_rss_mib(
        [sys.executable, "-m", "lockstep", "repo", "copy", "-r", str(destination), "--from-repo", str(source)],
        environment,
    )

    assert peak <= PEAK_RSS_BOUND_MIB, f"repo copy of {DATA_MIB} MiB peaked at {peak} MiB"
    copied = sum(path.stat().st_size for path in (destination / "data").rglob("*") if path.is_file())
    assert copied > DATA_MIB * 1024 * 1024  # the bound is far below what went through
