"""`kill -9` at random moments of a backup never damages the repository.

One repository takes backup after backup (a tree of a few hundred files with some multi-MB
ones, and a ~60 MB --stdin stream, alternately, with fresh data each time so packs are always
written), each killed with SIGKILL after a random delay of at most 1.5 s, scaled to how long an
uninterrupted backup takes here: while starting, locking, chunking, uploading packs, writing the
index or the snapshot, or just after it finished. After every kill the stale lock of the dead process must be removable
with `lockstep repo unlock`, `restic check` (and `lockstep repo check`, when it exists) must find
no errors, and `lockstep repo snapshots` must work. At the end a normal backup succeeds,
`restic check --read-data` passes, and every snapshot that exists restores with restic to
exactly the content it was taken from.

SIGTERM and SIGINT, which a process can catch, must instead unwind cleanly: exit 130, no lock,
no packs left behind.

Set LOCKSTEP_FAULT_SEED to replay the kill delays of a failed run (the seed is in the message).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lockstep.repository.repository import Repository
from lockstep.storage.base import FileType
from lockstep.storage.local import LocalBackend
from tests.conftest import TEST_PASSWORD, run_lockstep, run_restic
from tests.faults import is_storage_name, repository_files

MAX_ITERATIONS = 22
TIME_BUDGET_SECONDS = 90.0
MAX_KILL_DELAY_SECONDS = 1.5
MEBIBYTE = 1024 * 1024
TEMPORARY_NAME = re.compile(r"^\..*\.tmp$")  # what LocalBackend.save writes before its rename


@dataclass(frozen=True)
class Expected:
    """What a snapshot with a given tag must restore to."""

    kind: str  # "tree" or "stream"
    manifest: dict[str, str]  # relative path -> SHA-256 of the content


def digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(MEBIBYTE):
            hasher.update(block)
    return hasher.hexdigest()


def manifest_of(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): digest(path) for path in sorted(root.rglob("*")) if path.is_file()}


def build_tree(root: Path, rng: random.Random) -> None:
    """A few hundred small files in nested directories, plus a few multi-MB ones."""
    for number in range(300):
        directory = root / f"dir-{number % 12:02d}" / f"sub-{number % 3}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"file-{number:03d}.txt").write_bytes(rng.randbytes(rng.randint(0, 8192)))
    change_tree(root, rng)


def change_tree(root: Path, rng: random.Random) -> None:
    """New content for the big files and some small ones, so every backup has packs to write."""
    (root / "big").mkdir(exist_ok=True)
    for number in range(3):
        random_part = os.urandom(rng.randint(2, 4) * MEBIBYTE)
        (root / "big" / f"large-{number}.bin").write_bytes(random_part + b"repeat " * 100_000)
    for _ in range(10):
        victim = (
            root / f"dir-{rng.randrange(12):02d}" / f"sub-{rng.randrange(3)}" / f"file-{rng.randrange(300):03d}.txt"
        )
        victim.parent.mkdir(parents=True, exist_ok=True)
        victim.write_bytes(rng.randbytes(rng.randint(1, 8192)))


def write_stream(path: Path, iteration: int) -> None:
    """~60 MB alternating fresh random data (incompressible, new packs) and repetitive text."""
    with open(path, "wb") as handle:
        for block in range(60):
            if block % 3 == 2:
                handle.write((f"iteration {iteration} block {block} ").encode() * (MEBIBYTE // 24))
            else:
                handle.write(os.urandom(MEBIBYTE))


def run_backup(
    arguments: list[str], stdin_path: Path, delay: float | None, environment: dict[str, str]
) -> tuple[int, float, str]:
    """Run a backup; SIGKILL it after `delay` seconds unless it finished. Returns (exit status,
    seconds it ran, stderr); the status is -9 when the kill landed."""
    started = time.monotonic()
    with open(stdin_path, "rb") as source, tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(arguments, stdin=source, stdout=subprocess.DEVNULL, stderr=errors, env=environment)
        try:
            process.wait(timeout=delay if delay is not None else 300)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        seconds = time.monotonic() - started
        errors.seek(0)
        return process.returncode, seconds, errors.read().decode(errors="replace")


def lock_files(repository: Path) -> list[str]:
    return [path.name for path in (repository / "locks").iterdir() if is_storage_name(path.name)]


def assert_only_repository_files(repository: Path, context: str) -> int:
    """Every file restic would read is well named and in place; anything else is a dot-named
    temporary (which restic and lockstep skip). Returns how many temporaries there are."""
    temporaries = 0
    for name in repository_files(repository):
        path = Path(name)
        if name == "config":
            continue
        if TEMPORARY_NAME.match(path.name):
            temporaries += 1
            continue
        assert is_storage_name(path.name), f"{context}: unexpected file {name}"
        directory = path.parts[0]
        assert directory in ("data", "index", "snapshots", "keys", "locks"), f"{context}: {name}"
        if directory == "data":
            assert path.parts[1] == path.name[:2], f"{context}: pack in the wrong directory: {name}"
    return temporaries


def check_everything(repository: Path, environment: dict[str, str], has_check: bool, context: str) -> None:
    """restic check and (when it exists) lockstep check must both find nothing wrong."""
    restic = run_restic(str(repository), ["check"])
    assert restic.returncode == 0, f"{context}: restic check failed:\n{restic.out}\n{restic.err}"
    assert "no errors were found" in restic.out, f"{context}: {restic.out}"
    if has_check:
        lockstep = run_lockstep(["repo", "check"], env=environment)
        assert lockstep.returncode == 0, (
            f"{context}: lockstep repo check exit {lockstep.returncode}:\n{lockstep.out}{lockstep.err}"
        )


def orphaned_packs(repository: Path) -> int:
    """Packs no index names: what a backup killed between a pack upload and its index leaves."""
    opened = Repository.open(LocalBackend(repository), TEST_PASSWORD)
    try:
        opened.load_index()
        on_disk = {bytes.fromhex(name) for name, _ in opened.backend.list(FileType.PACK)}
        return len(on_disk - opened.index.pack_ids())
    finally:
        opened.close()


def list_snapshots(environment: dict[str, str], context: str) -> list[dict[str, Any]]:
    listed = run_lockstep(["repo", "snapshots", "--json"], env=environment)
    assert listed.returncode == 0, f"{context}: lockstep repo snapshots failed: {listed.err}"
    snapshots: list[dict[str, Any]] = json.loads(listed.out)
    return snapshots


def restore_and_compare(repository: Path, snapshot: dict[str, Any], expected: Expected, scratch: Path) -> None:
    target = scratch / "restore"
    shutil.rmtree(target, ignore_errors=True)
    restored = run_restic(str(repository), ["restore", str(snapshot["id"]), "--target", str(target)])
    assert restored.returncode == 0, f"restic restore {snapshot['short_id']}: {restored.err}"
    (path,) = snapshot["paths"]
    root = target / str(path).lstrip("/") if expected.kind == "tree" else target
    assert manifest_of(root) == expected.manifest, f"snapshot {snapshot['short_id']} restored the wrong content"
    shutil.rmtree(target)


@pytest.mark.slow
def test_sigkill_at_random_moments_never_damages_the_repository(tmp_path: Path, restic_binary: str) -> None:
    seed = int(os.environ.get("LOCKSTEP_FAULT_SEED") or secrets.randbits(32))
    rng = random.Random(seed)
    repository = tmp_path / "repository"
    environment = {"LOCKSTEP_REPOSITORY": str(repository), "LOCKSTEP_PASSWORD": TEST_PASSWORD}
    process_environment = {**os.environ, **environment, "LOCKSTEP_SCRYPT_N": "1024"}
    assert run_lockstep(["repo", "init"], env=environment).returncode == 0
    has_check = run_lockstep(["repo", "check", "--help"]).returncode == 0
    tree = tmp_path / "tree"
    build_tree(tree, rng)
    stream = tmp_path / "stream.bin"
    expected: dict[str, Expected] = {}
    outcomes: list[tuple[str, float, int]] = []
    leftover_temporaries = 0

    # The first backup of each kind runs to the end and sets that kind's kill window: random
    # delays up to a bit past its duration (never past 1.5 s) land in every phase of the run.
    windows: dict[str, float] = {}
    deadline = time.monotonic() + TIME_BUDGET_SECONDS
    for iteration in range(MAX_ITERATIONS):
        if time.monotonic() > deadline:
            break
        tag = f"run-{iteration}"
        kind = "tree" if iteration % 2 == 0 else "stream"
        arguments = [sys.executable, "-m", "lockstep", "repo", "backup", "--tag", tag]
        if kind == "tree":
            if iteration:
                change_tree(tree, rng)
            expected[tag] = Expected("tree", manifest_of(tree))
            arguments.append(str(tree))
            stdin_path = Path(os.devnull)
        else:
            write_stream(stream, iteration)
            expected[tag] = Expected("stream", {"stream.bin": digest(stream)})
            arguments += ["--stdin", "--stdin-filename", "stream.bin"]
            stdin_path = stream
        delay = rng.uniform(0, windows[kind]) if kind in windows else None
        context = f"seed {seed}, {tag} ({kind}), killed after {delay or 0:.2f} s"
        returncode, seconds, stderr = run_backup(arguments, stdin_path, delay, process_environment)
        if delay is None:
            assert returncode == 0, f"{context}: the calibration backup failed: {stderr}"
            windows[kind] = min(MAX_KILL_DELAY_SECONDS, seconds * 1.15)
        outcomes.append((tag, delay or seconds, returncode))
        assert returncode in (0, -9), f"{context}: backup exit {returncode}: {stderr}"

        # The dead process's lock is stale: `lockstep repo unlock` must remove it, and only it.
        held = lock_files(repository)
        unlocked = run_lockstep(["repo", "unlock", "--json"], env=environment)
        assert unlocked.returncode == 0, f"{context}: unlock failed: {unlocked.err}"
        report = json.loads(unlocked.out)
        assert sorted(report["removed"]) == sorted(held) and report["remaining"] == [], f"{context}: {report}"
        assert lock_files(repository) == []

        leftover_temporaries = assert_only_repository_files(repository, context)
        check_everything(repository, environment, has_check, context)
        tags = [tag for snapshot in list_snapshots(environment, context) for tag in snapshot.get("tags") or []]
        assert set(tags) <= set(expected), f"{context}: snapshots with unknown tags {tags}"
        assert len(tags) == len(set(tags)), f"{context}: one backup wrote two snapshots: {tags}"
        if returncode == 0:
            assert tag in tags, f"{context}: the backup succeeded but its snapshot is missing"

    killed = [outcome for outcome in outcomes if outcome[2] == -9]
    summary = (
        f"seed {seed}: {len(outcomes)} runs, {len(killed)} killed, {orphaned_packs(repository)} orphaned packs, "
        f"{leftover_temporaries} temporaries left"
    )
    print(summary, [(tag, round(delay, 2), code) for tag, delay, code in outcomes])
    assert len(outcomes) >= 8, f"only {summary}: the machine is too slow for this test"
    assert len(killed) >= 3, f"{summary}: too few backups were actually interrupted"

    # After all that, a normal backup of each kind succeeds ...
    change_tree(tree, rng)
    expected["final-tree"] = Expected("tree", manifest_of(tree))
    final_tree = run_lockstep(["repo", "backup", "--tag", "final-tree", str(tree)], env=environment)
    assert final_tree.returncode == 0, f"{summary}: {final_tree.err}"
    write_stream(stream, 999)
    expected["final-stream"] = Expected("stream", {"stream.bin": digest(stream)})
    final_stream = run_lockstep(
        ["repo", "backup", "--tag", "final-stream", "--stdin", "--stdin-filename", "stream.bin"],
        env=environment,
        input=stream.read_bytes(),
    )
    assert final_stream.returncode == 0, f"{summary}: {final_stream.err}"

    # ... every byte in the repository verifies ...
    read_data = run_restic(str(repository), ["check", "--read-data"])
    assert read_data.returncode == 0 and "no errors were found" in read_data.out, f"{summary}: {read_data.out}"
    if has_check:
        lockstep_read_data = run_lockstep(["repo", "check", "--read-data"], env=environment)
        assert lockstep_read_data.returncode == 0, f"{summary}: {lockstep_read_data.out}{lockstep_read_data.err}"

    # ... and every snapshot restores, with restic, to exactly what it was taken from.
    snapshots = list_snapshots(environment, summary)
    completed = {str(tag) for snapshot in snapshots for tag in snapshot.get("tags") or []}
    assert {"final-tree", "final-stream"} <= completed
    assert {tag for tag, _, code in outcomes if code == 0} <= completed
    for snapshot in snapshots:
        (tag,) = snapshot["tags"]
        restore_and_compare(repository, snapshot, expected[str(tag)], tmp_path)
    shutil.rmtree(repository)  # hundreds of MB: do not keep them in pytest's retained temp dirs


@pytest.mark.parametrize(
    "signal_number", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"]
)
@pytest.mark.usefixtures("hangup_not_ignored")
def test_terminated_backup_exits_130_and_cleans_up(tmp_path: Path, restic_binary: str, signal_number: int) -> None:
    """SIGTERM (systemd, CI cancel), Ctrl-C and SIGHUP (a dropped ssh session) unwind: exit 130,
    the packs written so far are removed, the lock is released, and restic finds the repository
    exactly as before."""
    repository = tmp_path / "repository"
    environment = {"LOCKSTEP_REPOSITORY": str(repository), "LOCKSTEP_PASSWORD": TEST_PASSWORD}
    assert run_lockstep(["repo", "init"], env=environment).returncode == 0
    first = run_lockstep(["repo", "backup", "--stdin", "--stdin-filename", "first.bin"], env=environment, input=b"1\n")
    assert first.returncode == 0, first.err
    before = repository_files(repository)
    process = subprocess.Popen(
        [sys.executable, "-m", "lockstep", "repo", "backup", "--stdin-from-command", "--", "cat", "/dev/urandom"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **environment, "LOCKSTEP_SCRYPT_N": "1024"},
    )

    # Wait until the backup has shipped at least one whole pack (not just a temporary file), then signal it.
    def finished_packs() -> set[str]:
        return {
            name
            for name in repository_files(repository)
            if name.startswith("data/") and is_storage_name(Path(name).name)
        }

    packs_before = finished_packs()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not finished_packs() - packs_before:
        time.sleep(0.01)
    assert process.poll() is None, "the endless backup ended by itself"
    assert [name for name in repository_files(repository) if name.startswith("data/")] != [
        name for name in before if name.startswith("data/")
    ], "no pack was written before the signal"
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr.decode(errors="replace")
    assert b"Traceback" not in stderr
    assert repository_files(repository) == before, "the interrupted backup left files behind"
    checked = run_restic(str(repository), ["check"])
    assert checked.returncode == 0 and "no errors were found" in checked.out, checked.out + checked.err
