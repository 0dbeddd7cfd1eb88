"""`kill -9` in the middle of `lockstep repo repair index` loses nothing: run it again.

The repair SIGKILLs itself at a named step (LOCKSTEP_TEST_KILL_AT, lockstep/fault_injection.py;
the steps are in repository/repair.py), so the test hits the exact moments that matter: right
after the first new index file is stored (old files all still there, the damaged one included),
and right after the first old one, the damaged one, is deleted (the repository is usable again,
packs listed twice)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from lockstep.exit_codes import ExitCode
from tests.conftest import run_lockstep
from tests.interop import describe_tree, lockstep, restic, restored_copy

pytestmark = pytest.mark.usefixtures("restic_binary")


def flip_bit(path: Path, offset: int = 40) -> None:
    path.chmod(0o600)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("step", ["wrote-index-1", "deleted-index-1"])
def test_a_repair_killed_half_way_is_finished_by_the_next_one(
    repository_env: dict[str, str], tmp_path: Path, step: str
) -> None:
    environment = repository_env
    repository = Path(environment["LOCKSTEP_REPOSITORY"])
    lockstep(environment, ["repo", "init"])
    sources = []
    for number in range(2):
        source = tmp_path / f"source-{number}"
        source.mkdir()
        (source / "data.bin").write_bytes(os.urandom(200_000))
        (source / "notes.txt").write_text(f"backup {number}\n")
        lockstep(environment, ["repo", "backup", str(source)])
        sources.append(source)
    index_before = sorted(path.name for path in (repository / "index").iterdir())
    damaged = index_before[0]
    flip_bit(repository / "index" / damaged)

    killed = run_lockstep(["repo", "repair", "index"], env={**environment, "LOCKSTEP_TEST_KILL_AT": step})
    assert killed.returncode == -signal.SIGKILL, killed.err
    index_now = {path.name for path in (repository / "index").iterdir()}
    assert len(index_now - set(index_before)) == 1, "the new index file was written before the kill"
    assert (damaged in index_now) == (step == "wrote-index-1")

    # The killed process left its exclusive lock; it is stale (the process is gone).
    assert run_lockstep(["repo", "repair", "index"], env=environment).returncode == ExitCode.LOCKED
    lockstep(environment, ["repo", "unlock"])

    latest = tmp_path / "restore-after-kill"
    restore = run_lockstep(["repo", "restore", "latest", "--target", str(latest)], env=environment)
    if step == "wrote-index-1":
        # The damaged file is still there: commands still stop at it and say what to run.
        assert restore.returncode == ExitCode.INTEGRITY and "lockstep repo repair index" in restore.err
    else:
        # Old and new index files side by side: both tools read the repository as it was.
        assert restore.returncode == 0, restore.err
        assert describe_tree(restored_copy(latest, sources[1])) == describe_tree(sources[1])
        assert "no errors were found" in restic(environment, ["check", "--read-data"]).out

    lockstep(environment, ["repo", "repair", "index"])
    assert len(list((repository / "index").iterdir())) == 1
    assert "no errors were found" in restic(environment, ["check", "--read-data"]).out
    snapshots = sorted(path.name for path in (repository / "snapshots").iterdir())
    for snapshot_id in snapshots:
        target = tmp_path / f"restore-{snapshot_id[:8]}"
        lockstep(environment, ["repo", "restore", snapshot_id[:8], "--target", str(target)])
        restored = [source for source in sources if restored_copy(target, source).exists()]
        assert len(restored) == 1
        assert describe_tree(restored_copy(target, restored[0])) == describe_tree(restored[0])
