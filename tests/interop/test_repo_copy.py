"""`lockstep repo copy` (restic's copy): a second copy of the repository elsewhere, checked by the
real restic binary in the destination, between repositories with different passwords and keys."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from lockstep.fault_injection import WAIT_AT_VARIABLE, WAIT_FOR_VARIABLE, WAITING_SUFFIX
from tests.conftest import Completed, run_lockstep, run_restic
from tests.interop import describe_tree, mixed_data, restored_copy

pytestmark = pytest.mark.usefixtures("restic_binary")

SOURCE_PASSWORD = "source-password-for-copy"
DESTINATION_PASSWORD = "destination-password-for-copy"


def repository(location: str | Path, password: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"LOCKSTEP_REPOSITORY": str(location), "LOCKSTEP_PASSWORD": password, **(extra or {})}


def restic_in(environment: dict[str, str], args: list[str]) -> Completed:
    """restic against the repository of `environment`, with its password; fails loudly."""
    extra = {key: value for key, value in environment.items() if not key.startswith("LOCKSTEP_")}
    completed = run_restic(
        environment["LOCKSTEP_REPOSITORY"], args, password=environment["LOCKSTEP_PASSWORD"], env=extra
    )
    assert completed.returncode == 0, f"restic {' '.join(args)} failed ({completed.returncode}):\n{completed.err}"
    return completed


def lockstep_in(environment: dict[str, str], args: list[str]) -> Completed:
    completed = run_lockstep(args, env=environment)
    assert completed.returncode == 0, f"lockstep {' '.join(args)} failed ({completed.returncode}):\n{completed.err}"
    return completed


def copy(
    destination: dict[str, str],
    source: dict[str, str],
    args: Sequence[str] = (),
    password_file: Path | None = None,
) -> dict[str, Any]:
    """`repo copy --json` from `source` into `destination`: the source's password through
    --from-password-file when given, else $LOCKSTEP_FROM_PASSWORD."""
    arguments = ["repo", "copy", "--json", "--from-repo", source["LOCKSTEP_REPOSITORY"], *args]
    environment = dict(destination)
    if password_file is not None:
        arguments += ["--from-password-file", str(password_file)]
    else:
        environment["LOCKSTEP_FROM_PASSWORD"] = source["LOCKSTEP_PASSWORD"]
    result: dict[str, Any] = json.loads(lockstep_in(environment, arguments).out)
    return result


def backup(environment: dict[str, str], path: Path, *options: str) -> str:
    summary = json.loads(lockstep_in(environment, ["repo", "backup", "--json", *options, str(path)]).out)
    return str(summary["snapshot_id"])


def restic_backup(environment: dict[str, str], path: Path, *options: str) -> str:
    """restic's own backup; its full ID (0.14's summary gives the short one)."""
    summary = json.loads(restic_in(environment, ["backup", "--json", *options, str(path)]).out.splitlines()[-1])
    listed = json.loads(restic_in(environment, ["snapshots", "--json"]).out)
    (found,) = [item["id"] for item in listed if item["id"].startswith(summary["snapshot_id"])]
    return str(found)


def restic_snapshot(environment: dict[str, str], snapshot_id: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(restic_in(environment, ["cat", "snapshot", snapshot_id]).out)
    return document


def pack_files(location: Path) -> set[str]:
    """The packs stored (not the temporary files a write in progress, or killed, leaves)."""
    return {path.name for path in (location / "data").rglob("*") if path.is_file() and not path.name.startswith(".")}


def all_files(location: Path) -> dict[str, bytes]:
    return {str(path.relative_to(location)): path.read_bytes() for path in location.rglob("*") if path.is_file()}


@pytest.fixture
def source(tmp_path: Path) -> dict[str, str]:
    environment = repository(tmp_path / "source-repository", SOURCE_PASSWORD)
    lockstep_in(environment, ["repo", "init"])
    return environment


@pytest.fixture
def destination(tmp_path: Path) -> dict[str, str]:
    environment = repository(tmp_path / "destination-repository", DESTINATION_PASSWORD)
    lockstep_in(environment, ["repo", "init"])
    return environment


def test_a_copy_is_checked_and_restored_by_restic_and_not_made_twice(
    source: dict[str, str], destination: dict[str, str], awkward_tree: Path, tmp_path: Path
) -> None:
    """A lockstep backup copied to a repository with another password: restic's check reads
    every byte, its restore gives the same tree, `original` names the source snapshot, and a
    second copy finds it already there and writes nothing."""
    first = backup(source, awkward_tree, "--tag", "nightly")
    # restic's backup records the first as its parent (lockstep's sets none).
    second = restic_backup(source, awkward_tree, "--tag", "nightly")
    assert restic_snapshot(source, second)["parent"] == first
    password_file = tmp_path / "source-password"
    password_file.write_text(SOURCE_PASSWORD + "\n")

    result = copy(destination, source, password_file=password_file)
    assert [item["source"] for item in result["copied"]] == [first, second] and result["skipped"] == []
    assert result["blobs_added"] > 0 and result["bytes_added"] > 0
    new_ids = [item["snapshot_id"] for item in result["copied"]]

    assert "no errors were found" in restic_in(destination, ["check", "--read-data"]).out
    for source_id, new_id in zip([first, second], new_ids, strict=True):
        copied = restic_snapshot(destination, new_id)
        original = restic_snapshot(source, source_id)
        assert copied["original"] == source_id
        assert "parent" not in copied  # the parent named a snapshot of the source
        for field in ("time", "tree", "paths", "hostname", "username", "tags"):
            assert copied[field] == original[field], field
    target = tmp_path / "restored-by-restic"
    restic_in(destination, ["restore", new_ids[1], "--target", str(target)])
    assert describe_tree(restored_copy(target, awkward_tree)) == describe_tree(awkward_tree)

    destination_location = Path(destination["LOCKSTEP_REPOSITORY"])
    packs = pack_files(destination_location)
    again = copy(destination, source, password_file=password_file)
    assert again["copied"] == [] and again["blobs_added"] == 0
    assert {(item["source"], item["existing"]) for item in again["skipped"]} == set(
        zip([first, second], new_ids, strict=True)
    )
    assert pack_files(destination_location) == packs
    assert len(json.loads(restic_in(destination, ["snapshots", "--json"]).out)) == 2


def test_a_restic_snapshot_copied_by_lockstep_is_read_by_restic(
    source: dict[str, str], destination: dict[str, str], awkward_tree: Path, tmp_path: Path
) -> None:
    """Written by restic in the source, copied by lockstep, restored by restic in the destination;
    a snapshot that is itself a copy keeps its `original` through the next copy."""
    restic_id = restic_backup(source, awkward_tree)

    result = copy(destination, source, ["latest"])
    (copied,) = result["copied"]
    assert copied["source"] == restic_id
    assert "no errors were found" in restic_in(destination, ["check", "--read-data"]).out
    target = tmp_path / "restored"
    restic_in(destination, ["restore", copied["snapshot_id"], "--target", str(target)])
    assert describe_tree(restored_copy(target, awkward_tree)) == describe_tree(awkward_tree)

    third = repository(tmp_path / "third", "third-password")
    lockstep_in(third, ["repo", "init"])
    onward = copy(third, destination)
    assert restic_snapshot(third, onward["copied"][0]["snapshot_id"])["original"] == restic_id
    # And the copy of the copy counts as the same snapshot as the source's original.
    assert copy(third, source)["skipped"][0]["existing"] == onward["copied"][0]["snapshot_id"]


def test_a_copy_onto_s3(source: dict[str, str], s3_env: dict[str, str], awkward_tree: Path, tmp_path: Path) -> None:
    """The off-site case: a local repository copied to S3 (the loopback server), checked there by restic."""
    destination = {**s3_env, "LOCKSTEP_PASSWORD": DESTINATION_PASSWORD}
    lockstep_in(destination, ["repo", "init"])
    source_id = backup(source, awkward_tree)

    result = copy(destination, source)
    (copied,) = result["copied"]
    assert copied["source"] == source_id
    assert "no errors were found" in restic_in(destination, ["check", "--read-data"]).out
    target = tmp_path / "restored"
    lockstep_in(destination, ["repo", "restore", copied["snapshot_id"], "--target", str(target)])
    assert describe_tree(restored_copy(target, awkward_tree)) == describe_tree(awkward_tree)
    assert copy(destination, source)["copied"] == []


def test_a_wrong_source_password_names_the_source_and_leaves_the_destination_alone(
    source: dict[str, str], destination: dict[str, str], awkward_tree: Path
) -> None:
    backup(source, awkward_tree)
    destination_location = Path(destination["LOCKSTEP_REPOSITORY"])
    before = all_files(destination_location)
    wrong = run_lockstep(
        ["repo", "copy", "--from-repo", source["LOCKSTEP_REPOSITORY"]],
        env={**destination, "LOCKSTEP_FROM_PASSWORD": "not-the-source-password"},
    )
    assert wrong.returncode == 11, wrong.err
    assert f"wrong password for the source repository at local:{source['LOCKSTEP_REPOSITORY']}" in wrong.err
    assert "--from-password-file" in wrong.err
    assert all_files(destination_location) == before

    missing = run_lockstep(
        ["repo", "copy", "--from-repo", str(destination_location.parent / "nowhere")],
        env={**destination, "LOCKSTEP_FROM_PASSWORD": SOURCE_PASSWORD},
    )
    assert missing.returncode == 10, missing.err
    assert "no source repository at" in missing.err
    unknown = run_lockstep(
        ["repo", "copy", "--from-repo", source["LOCKSTEP_REPOSITORY"], "feedface"],
        env={**destination, "LOCKSTEP_FROM_PASSWORD": SOURCE_PASSWORD},
    )
    assert unknown.returncode == 13, unknown.err
    assert "source repository" in unknown.err and "feedface" in unknown.err
    assert all_files(destination_location) == before


def test_a_second_snapshot_adds_only_its_new_blobs(
    source: dict[str, str], destination: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "dump.sql").write_bytes(mixed_data(6 * 1024 * 1024, seed=3))
    first = backup(source, data)
    (data / "new.txt").write_bytes(os.urandom(50_000))
    second = backup(source, data)
    destination_location = Path(destination["LOCKSTEP_REPOSITORY"])

    one = copy(destination, source, [first])
    assert [item["source"] for item in one["copied"]] == [first]
    packs = pack_files(destination_location)
    two = copy(destination, source)
    assert [item["source"] for item in two["copied"]] == [second]
    assert [item["source"] for item in two["skipped"]] == [first]
    # The 50 kB file and the changed trees: the file's directory and each one above it.
    assert two["blobs_added"] <= 1 + len(data.parts), two
    assert two["bytes_added"] < 100_000 < one["bytes_added"] // 10, (one, two)
    assert len(pack_files(destination_location) - packs) <= 2  # one data pack, one tree pack
    assert "no errors were found" in restic_in(destination, ["check", "--read-data"]).out


def test_filters_choose_what_is_copied(source: dict[str, str], destination: dict[str, str], tmp_path: Path) -> None:
    """--tag/--host/--path as `repo forget` takes them; `latest` is the newest that passes them."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "file").write_text("one\n")
    web = backup(source, data, "--tag", "web", "--host", "alpha")
    (data / "file").write_text("two\n")
    database = backup(source, data, "--tag", "db", "--host", "alpha")
    (data / "file").write_text("three\n")
    backup(source, data, "--tag", "web", "--host", "beta")

    assert [item["source"] for item in copy(destination, source, ["--host", "alpha", "--tag", "web"])["copied"]] == [
        web
    ]
    assert [item["source"] for item in copy(destination, source, ["--host", "alpha", "latest"])["copied"]] == [database]
    assert copy(destination, source, ["--path", "/nowhere"])["copied"] == []


def test_a_copy_killed_midway_leaves_the_destination_consistent(
    source: dict[str, str], destination: dict[str, str], tmp_path: Path
) -> None:
    """kill -9 while packs are being written: no snapshot refers to anything missing (restic's
    check passes), and the next copy finishes the job."""
    data = tmp_path / "data"
    data.mkdir()
    for number in range(4):
        (data / f"part-{number}.bin").write_bytes(os.urandom(12 * 1024 * 1024))
    source_id = backup(source, data)
    destination_location = Path(destination["LOCKSTEP_REPOSITORY"])
    go_ahead = tmp_path / "never"  # the copy waits before its last pack and its snapshot until killed
    environment = {
        **os.environ,
        **destination,
        "LOCKSTEP_FROM_PASSWORD": SOURCE_PASSWORD,
        "LOCKSTEP_SCRYPT_N": "1024",
        WAIT_AT_VARIABLE: "copy flush",
        WAIT_FOR_VARIABLE: str(go_ahead),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "lockstep", "repo", "copy", "--from-repo", source["LOCKSTEP_REPOSITORY"]],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        waiting = go_ahead.with_name(go_ahead.name + WAITING_SUFFIX)
        deadline = time.monotonic() + 60
        while not (waiting.exists() and pack_files(destination_location)) and time.monotonic() < deadline:
            assert process.poll() is None, "the copy ended before its wait point"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert pack_files(destination_location), "no pack was written before the kill"
    assert not list((destination_location / "snapshots").iterdir())
    restic_in(destination, ["unlock"])
    check = run_restic(destination["LOCKSTEP_REPOSITORY"], ["check"], password=DESTINATION_PASSWORD)
    assert check.returncode == 0, check.err
    lockstep_in(destination, ["repo", "prune"])  # what the killed copy left behind goes
    assert not pack_files(destination_location)

    result = copy(destination, source)
    assert [item["source"] for item in result["copied"]] == [source_id]
    assert "no errors were found" in restic_in(destination, ["check", "--read-data"]).out


def test_init_with_the_source_chunker_params_makes_backups_deduplicate_with_copies(
    source: dict[str, str], tmp_path: Path
) -> None:
    """restic's `init --from-repo SRC --copy-chunker-params`: the same polynomial cuts the same
    data into the same chunks, so a backup straight into the copy destination adds no data."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "dump.sql").write_bytes(mixed_data(6 * 1024 * 1024, seed=5))
    (data / "other.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    backup(source, data)
    destination = repository(tmp_path / "destination-repository", DESTINATION_PASSWORD)
    source_password = {"LOCKSTEP_FROM_PASSWORD": SOURCE_PASSWORD}
    init = ["repo", "init", "--from-repo", source["LOCKSTEP_REPOSITORY"], "--copy-chunker-params"]
    lockstep_in({**destination, **source_password}, init)

    source_config = json.loads(restic_in(source, ["cat", "config"]).out)
    destination_config = json.loads(restic_in(destination, ["cat", "config"]).out)
    assert destination_config["chunker_polynomial"] == source_config["chunker_polynomial"]
    assert destination_config["id"] != source_config["id"]
    copied = copy(destination, source)
    assert copied["bytes_added"] > 9 * 1024 * 1024 // 2
    (data / "new.txt").write_bytes(os.urandom(20_000))
    again = json.loads(lockstep_in(destination, ["repo", "backup", "--json", str(data)]).out)
    # The new 20 kB file and the trees above it: nothing of the 9 MB copied over.
    assert again["bytes_added"] < 60_000, again
    assert "no errors were found" in restic_in(destination, ["check", "--read-data"]).out


def test_init_from_repo_needs_copy_chunker_params_and_a_source(source: dict[str, str], tmp_path: Path) -> None:
    """As restic: the --from-* options only serve --copy-chunker-params, which needs them; a
    wrong source password creates nothing."""
    location = tmp_path / "destination-repository"
    destination = repository(location, DESTINATION_PASSWORD)
    without_flag = run_lockstep(["repo", "init", "--from-repo", source["LOCKSTEP_REPOSITORY"]], env=destination)
    assert without_flag.returncode == 2, without_flag.err
    assert "--copy-chunker-params" in without_flag.err
    without_source = run_lockstep(["repo", "init", "--copy-chunker-params"], env=destination)
    assert without_source.returncode == 2, without_source.err
    assert "--from-repo" in without_source.err
    wrong = run_lockstep(
        ["repo", "init", "--from-repo", source["LOCKSTEP_REPOSITORY"], "--copy-chunker-params"],
        env={**destination, "LOCKSTEP_FROM_PASSWORD": "not-the-source-password"},
    )
    assert wrong.returncode != 0
    assert "source" in wrong.err
    assert not location.exists()


def test_prune_removes_the_temporary_pack_file_a_killed_copy_left(
    source: dict[str, str], destination: dict[str, str], tmp_path: Path
) -> None:
    """kill -9 between writing a pack's temporary file and renaming it leaves the file in data/,
    which no list shows and restic never removes. Prune (under its exclusive lock, so no writer
    runs) removes such files once they are an hour old; fresh ones, and any in locks/ (where a
    process writes its lock before it knows it may), stay."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "part.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    backup(source, data)
    location = Path(destination["LOCKSTEP_REPOSITORY"])
    killed = run_lockstep(
        ["repo", "copy", "--from-repo", source["LOCKSTEP_REPOSITORY"]],
        env={
            **destination,
            "LOCKSTEP_FROM_PASSWORD": SOURCE_PASSWORD,
            "LOCKSTEP_TEST_KILL_AT": "local-write-before-rename:data",
        },
    )
    assert killed.returncode == -signal.SIGKILL, killed.err
    # One, or two when the tree pack's upload had begun too when the data pack's hit the kill.
    left = list((location / "data").rglob("*.tmp"))
    assert 1 <= len(left) <= 2, left
    restic_in(destination, ["unlock"])
    old = time.time() - 2 * 3600
    restic_left = left[0].parent / f"{'ab' * 32}-tmp-123456"  # what a killed restic leaves
    restic_left.write_bytes(b"partial")
    in_locks = location / "locks" / ".0123456789abcdef-x.tmp"
    in_locks.write_bytes(b"partial")
    fresh = location / "index" / ".fedcba9876543210-y.tmp"
    fresh.write_bytes(b"partial")
    for path in (restic_left, in_locks):
        os.utime(path, (old, old))

    young = json.loads(lockstep_in(destination, ["repo", "prune", "--json"]).out)
    assert young["temporary_files_removed"] == 1 and not restic_left.exists()
    assert all(path.exists() for path in left)
    for path in left:
        os.utime(path, (old, old))
    aged = json.loads(lockstep_in(destination, ["repo", "prune", "--json"]).out)
    assert aged["temporary_files_removed"] == len(left)
    assert not any(path.exists() for path in left)
    assert in_locks.exists() and fresh.exists()
    in_locks.unlink()
    fresh.unlink()
    copy(destination, source)
    assert "no errors were found" in restic_in(destination, ["check", "--read-data"]).out


def test_a_damaged_source_is_named_as_the_source_and_a_failing_destination_as_the_destination(
    source: dict[str, str], destination: dict[str, str], tmp_path: Path
) -> None:
    """A pack of the source missing, then damaged, mid-copy: exit 12 (damaged data; 14 when the
    source's storage fails), and the error
    says the source, which pack and which snapshot, and to check the source; it once read
    `pack … is missing: run lockstep repo check`, which checks the destination. The destination
    keeps what was copied before and nothing of the failed snapshot. A destination that cannot be
    written still fails as itself (exit 14), not as the source."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "dump.sql").write_bytes(mixed_data(2 * 1024 * 1024, seed=5))
    first = backup(source, data)
    source_location = Path(source["LOCKSTEP_REPOSITORY"])
    packs_before = pack_files(source_location)
    (data / "new.bin").write_bytes(os.urandom(200_000))
    backup(source, data)
    # The second snapshot's own packs: its data pack (the random file) is the larger one.
    new_packs = sorted(
        pack_files(source_location) - packs_before, key=lambda name: _pack_path(source_location, name).stat().st_size
    )
    data_pack = _pack_path(source_location, new_packs[-1])
    copy(destination, source, [first])
    destination_location = Path(destination["LOCKSTEP_REPOSITORY"])
    destination_packs = pack_files(destination_location)
    environment = {**destination, "LOCKSTEP_FROM_PASSWORD": SOURCE_PASSWORD}
    arguments = ["repo", "copy", "--from-repo", str(source_location)]
    intact = data_pack.read_bytes()

    data_pack.unlink()
    missing = run_lockstep(arguments, env=environment)
    damaged_bytes = bytearray(intact)
    damaged_bytes[len(intact) // 3] ^= 0xFF
    data_pack.write_bytes(bytes(damaged_bytes))
    damaged = run_lockstep(arguments, env=environment)

    for result, what in ((missing, "is missing"), (damaged, "failed authentication")):
        assert result.returncode == 12, result.err
        line = result.err.strip().splitlines()[-1]
        assert line.startswith(f"lockstep: error: could not read the source repository at local:{source_location}"), (
            line
        )
        assert f"pack {data_pack.name[:8]}" in line and what in line, line
        assert "while copying snapshot" in line, line
        assert f"`lockstep repo check --read-data -r local:{source_location}`" in line, line
        assert pack_files(destination_location) == destination_packs
    assert len(json.loads(restic_in(destination, ["snapshots", "--json"]).out)) == 1
    assert "no errors were found" in restic_in(destination, ["check", "--read-data"]).out

    # The source's storage failing (the pack cannot be read at all): exit 14, still the source's.
    data_pack.unlink()
    data_pack.mkdir()
    unreadable = run_lockstep(arguments, env=environment)
    assert unreadable.returncode == 14, unreadable.err
    line = unreadable.err.strip().splitlines()[-1]
    assert line.startswith(f"lockstep: error: could not read the source repository at local:{source_location}"), line
    assert f"cannot access {data_pack}: Is a directory" in line and "copy again" in line, line
    assert pack_files(destination_location) == destination_packs

    data_pack.rmdir()
    data_pack.write_bytes(intact)
    (destination_location / "data").rename(destination_location / "data-moved")
    (destination_location / "data").write_text("not a directory\n")
    unwritable = run_lockstep(arguments, env=environment)
    assert unwritable.returncode == 14, unwritable.err
    assert "source repository" not in unwritable.err, unwritable.err
    assert str(destination_location / "data") in unwritable.err, unwritable.err


def _pack_path(location: Path, name: str) -> Path:
    return location / "data" / name[:2] / name
