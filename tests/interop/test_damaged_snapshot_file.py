"""One damaged snapshot file must not make the other snapshots unrestorable.

restic lists the snapshots it can read and restores any of them by ID; lockstep used to fail
every `repo snapshots`, `restore`, `ls` and `dump` (and `snapshot restore`, rollbacks) because
of a single flipped bit in one snapshot file. Deleting commands must still refuse: data that
an unreadable snapshot needs must never be pruned."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lockstep.exit_codes import ExitCode
from tests.conftest import run_lockstep
from tests.faults import repository_files
from tests.interop import describe_tree, lockstep, restic, restored_copy

pytestmark = pytest.mark.usefixtures("restic_binary")


def flip_bit(path: Path, offset: int) -> None:
    path.chmod(0o600)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    path.chmod(0o400)


def test_a_damaged_snapshot_file_leaves_the_others_listable_and_restorable(
    repository_env: dict[str, str], tmp_path: Path
) -> None:
    environment = repository_env
    repository = Path(environment["LOCKSTEP_REPOSITORY"])
    lockstep(environment, ["repo", "init"])
    source = tmp_path / "source"
    source.mkdir()
    (source / "data.bin").write_bytes(os.urandom(300_000))
    (source / "notes.txt").write_text("first\n")
    restic(environment, ["backup", str(source)])
    (damaged,) = [path.name for path in (repository / "snapshots").iterdir()]
    (source / "notes.txt").write_text("second\n")
    good = json.loads(lockstep(environment, ["repo", "backup", "--json", str(source)]).out.splitlines()[-1])
    good_id = good["snapshot_id"]
    flip_bit(repository / "snapshots" / damaged, 40)

    listed = lockstep(environment, ["repo", "snapshots", "--json"])
    assert [snapshot["id"] for snapshot in json.loads(listed.out)] == [good_id]
    assert damaged[:8] in listed.err and "unreadable" in listed.err

    for reference in (good_id[:8], "latest"):
        target = tmp_path / f"restore-{reference}"
        lockstep(environment, ["repo", "restore", reference, "--target", str(target)])
        assert describe_tree(restored_copy(target, source)) == describe_tree(source)
    dumped = lockstep(environment, ["repo", "dump", good_id[:8], str(source / "notes.txt")])
    assert dumped.stdout == b"second\n"

    asked_for_damaged = run_lockstep(["repo", "ls", damaged[:8]], env=environment)
    assert asked_for_damaged.returncode == ExitCode.INTEGRITY, asked_for_damaged.err
    assert f"snapshot {damaged[:8]} cannot be read" in asked_for_damaged.err

    before = repository_files(repository)
    for arguments in (["repo", "prune"], ["repo", "forget", "--keep-last", "1", "--prune"]):
        refused = run_lockstep(arguments, env=environment)
        assert refused.returncode == ExitCode.INTEGRITY, (arguments, refused.err)
    assert repository_files(repository) == before, "a prune went ahead past an unreadable snapshot"
