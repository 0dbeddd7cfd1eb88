"""`lockstep repo forget` and `lockstep repo prune` as a user runs them, against the real restic:
each reads what the other leaves behind, space is really freed, and kill -9 never breaks it."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lockstep.exit_codes import ExitCode
from lockstep.repository.locks import RECHECK_DELAY_SECONDS, locked
from lockstep.repository.repository import Repository
from lockstep.repository.snapshot import Snapshot
from lockstep.repository.tree import Tree
from lockstep.storage.local import LocalBackend
from tests.conftest import TEST_PASSWORD, run_lockstep, run_restic

MEBIBYTE = 1024 * 1024
ATTEMPTS = 8


def backup(env: dict[str, str], source: Path, *extra: str) -> str:
    completed = run_lockstep(["repo", "backup", str(source), "--json", *extra], env=env)
    assert completed.returncode == 0, completed.err
    return str(json.loads(completed.out.strip().splitlines()[-1])["snapshot_id"])


def init(env: dict[str, str]) -> None:
    completed = run_lockstep(["repo", "init"], env=env)
    assert completed.returncode == 0, completed.err


def data_bytes(repository: Path) -> int:
    return sum(file.stat().st_size for file in (repository / "data").rglob("*") if file.is_file())


def snapshot_ids(env: dict[str, str]) -> set[str]:
    completed = run_lockstep(["repo", "snapshots", "--json"], env=env)
    assert completed.returncode == 0, completed.err
    return {snapshot["id"] for snapshot in json.loads(completed.out)}


def assert_same_tree(restored: Path, source: Path) -> None:
    """Byte-identical files and the same names, recursively."""
    restored_files = {path.relative_to(restored): path for path in restored.rglob("*")}
    source_files = {path.relative_to(source): path for path in source.rglob("*")}
    assert set(restored_files) == set(source_files)
    for relative, path in source_files.items():
        if path.is_file():
            assert restored_files[relative].read_bytes() == path.read_bytes(), relative


def restore_with_lockstep(env: dict[str, str], snapshot_id: str, source: Path, target: Path) -> None:
    completed = run_lockstep(["repo", "restore", snapshot_id, "--target", str(target)], env=env)
    assert completed.returncode == 0, completed.err
    assert_same_tree(target / source.relative_to("/"), source)


def restore_with_restic(repository: Path, snapshot_id: str, source: Path, target: Path) -> None:
    completed = run_restic(str(repository), ["restore", snapshot_id, "--target", str(target)])
    assert completed.returncode == 0, completed.err
    assert_same_tree(target / source.relative_to("/"), source)


def restic_check(repository: Path, read_data: bool = True) -> None:
    completed = run_restic(str(repository), ["check", *(["--read-data"] if read_data else [])])
    assert completed.returncode == 0, completed.out + completed.err
    assert "no errors were found" in completed.out


def two_sources(root: Path, size: int) -> tuple[Path, Path]:
    """`first` holds unique files and files it shares with `second`, interleaved so that the
    packs of a backup of `first` end up partly used once only `second` is kept."""
    first, second = root / "first", root / "second"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    for number in range(8):  # backed up in name order: unique and shared alternate in the packs
        (first / f"{number}-a-unique.bin").write_bytes(os.urandom(size))
        shared = os.urandom(size)
        (first / f"{number}-b-shared.bin").write_bytes(shared)
        (second / f"{number}-b-shared.bin").write_bytes(shared)
    (second / "note.txt").write_text("only in the second backup\n")
    return first, second


# --- refusing and reporting -----------------------------------------------------------------


def test_forget_without_a_policy_refuses_like_restic(repository_env: dict[str, str], tmp_path: Path) -> None:
    init(repository_env)
    source = tmp_path / "source"
    source.mkdir()
    (source / "file").write_text("x")
    snapshot = backup(repository_env, source)
    completed = run_lockstep(["repo", "forget"], env=repository_env)
    assert completed.returncode == ExitCode.USAGE
    assert "no policy was specified, no snapshots will be removed" in completed.err
    assert snapshot_ids(repository_env) == {snapshot}


def test_forget_refuses_a_policy_that_keeps_nothing_of_a_group(repository_env: dict[str, str], tmp_path: Path) -> None:
    """As current restic: --keep-tag alone would delete every untagged snapshot of the group."""
    init(repository_env)
    source = tmp_path / "source"
    source.mkdir()
    (source / "file").write_text("x")
    snapshot = backup(repository_env, source)
    completed = run_lockstep(["repo", "forget", "--keep-tag", "release", "--prune"], env=repository_env)
    assert completed.returncode == ExitCode.USAGE
    assert "refusing to delete the last snapshot" in completed.err
    assert snapshot_ids(repository_env) == {snapshot}


def test_prune_on_an_empty_repository_does_nothing(repository_env: dict[str, str]) -> None:
    init(repository_env)
    completed = run_lockstep(["repo", "prune", "--json"], env=repository_env)
    assert completed.returncode == 0, completed.err
    report = json.loads(completed.out)
    assert report["packs_deleted"] == report["bytes_remaining"] == report["snapshots"] == 0


def test_forget_needs_the_repository_to_itself(repository_env: dict[str, str], tmp_path: Path) -> None:
    init(repository_env)
    source = tmp_path / "source"
    source.mkdir()
    (source / "file").write_text("x")
    backup(repository_env, source)
    repository = Repository.open(LocalBackend(repository_env["LOCKSTEP_REPOSITORY"]), TEST_PASSWORD)
    try:
        with locked(repository, exclusive=False):
            completed = run_lockstep(["repo", "forget", "--keep-last", "1", "--prune"], env=repository_env)
    finally:
        repository.close()
    assert completed.returncode == ExitCode.LOCKED, completed.err
    assert "locked" in completed.err


def test_forget_by_id_and_dry_run(repository_env: dict[str, str], tmp_path: Path) -> None:
    init(repository_env)
    source = tmp_path / "source"
    source.mkdir()
    (source / "file").write_text("one")
    first = backup(repository_env, source)
    (source / "file").write_text("two")
    second = backup(repository_env, source)
    dry = run_lockstep(["repo", "forget", first[:8], "--dry-run"], env=repository_env)
    assert dry.returncode == 0, dry.err
    assert "would remove 1 snapshot " in dry.out
    assert snapshot_ids(repository_env) == {first, second}
    done = run_lockstep(["repo", "forget", first[:8]], env=repository_env)
    assert done.returncode == 0, done.err
    assert snapshot_ids(repository_env) == {second}


# --- lockstep prunes, restic reads ----------------------------------------------------------


@pytest.mark.slow
def test_forget_prune_frees_space_and_restic_still_reads_everything(
    restic_binary: str, repository_env: dict[str, str], tmp_path: Path
) -> None:
    repository = Path(repository_env["LOCKSTEP_REPOSITORY"])
    init(repository_env)
    first, second = two_sources(tmp_path / "sources", 600_000)
    backup(repository_env, first)
    kept = backup(repository_env, second)
    before = data_bytes(repository)
    completed = run_lockstep(
        ["repo", "forget", "--keep-last", "1", "--group-by", "", "--prune", "--json"], env=repository_env
    )
    assert completed.returncode == 0, completed.err
    groups_line, prune_line = completed.out.strip().splitlines()
    groups = json.loads(groups_line)
    assert [snapshot["id"] for snapshot in groups[0]["keep"]] == [kept]
    assert groups[0]["reasons"][0]["matches"] == ["last snapshot"]
    report = json.loads(prune_line)
    assert report["message_type"] == "prune" and report["packs_repacked"] >= 1
    after = data_bytes(repository)
    assert before - after == report["bytes_freed"] >= 8 * 600_000  # every unique file is gone
    assert report["bytes_remaining"] == after
    assert snapshot_ids(repository_env) == {kept}
    restic_check(repository)
    restore_with_restic(repository, kept, second, tmp_path / "restic-restore")
    restore_with_lockstep(repository_env, kept, second, tmp_path / "lockstep-restore")
    again = run_lockstep(["repo", "prune", "--json"], env=repository_env)
    assert again.returncode == 0, again.err
    assert json.loads(again.out)["packs_deleted"] == 0  # nothing left to do


# --- restic prunes, lockstep reads ----------------------------------------------------------


@pytest.mark.slow
def test_lockstep_reads_a_repository_restic_pruned(
    restic_binary: str, repository_env: dict[str, str], tmp_path: Path
) -> None:
    repository = Path(repository_env["LOCKSTEP_REPOSITORY"])
    init(repository_env)
    first, second = two_sources(tmp_path / "sources", 300_000)
    backup(repository_env, first)
    kept = backup(repository_env, second)
    before = data_bytes(repository)
    completed = run_restic(str(repository), ["forget", "--keep-last", "1", "--group-by", "", "--prune"])
    assert completed.returncode == 0, completed.err
    assert data_bytes(repository) < before
    checked = run_lockstep(["repo", "check", "--read-data"], env=repository_env)
    assert checked.returncode == 0, checked.out + checked.err
    restore_with_lockstep(repository_env, kept, second, tmp_path / "restore")
    # Both tools make the same decisions, so after restic's prune lockstep finds nothing to free.
    dry = run_lockstep(["repo", "prune", "--dry-run", "--json"], env=repository_env)
    assert dry.returncode == 0, dry.err
    assert json.loads(dry.out)["packs_deleted"] == 0


@pytest.mark.slow
def test_lockstep_prunes_a_repository_restic_wrote(restic_binary: str, tmp_path: Path) -> None:
    """restic's own packs and index files (compressed trees, its blob order) pruned by lockstep."""
    repository = tmp_path / "repository"
    env = {"LOCKSTEP_REPOSITORY": str(repository), "LOCKSTEP_PASSWORD": TEST_PASSWORD}
    assert run_restic(str(repository), ["init"]).returncode == 0
    first, second = two_sources(tmp_path / "sources", 300_000)
    for source in (first, second):
        completed = run_restic(str(repository), ["backup", str(source)])
        assert completed.returncode == 0, completed.err
    kept = max(json.loads(run_restic(str(repository), ["snapshots", "--json"]).out), key=lambda item: item["time"])
    before = data_bytes(repository)
    completed = run_lockstep(["repo", "forget", "--keep-last", "1", "--group-by", "", "--prune"], env=env)
    assert completed.returncode == 0, completed.err
    assert data_bytes(repository) <= before - 8 * 300_000
    restic_check(repository)
    restore_with_restic(repository, kept["id"], second, tmp_path / "restic-restore")
    restore_with_lockstep(env, kept["id"], second, tmp_path / "lockstep-restore")


# --- the same verdicts as restic's forget ---------------------------------------------------


def test_forget_json_matches_restic_forget_json(restic_binary: str, tmp_path: Path) -> None:
    """Hosts, tags and times chosen so that every rule fills its count (where restic 0.14 and
    current restic agree); both tools see the same groups and keep and remove the same IDs."""
    path = tmp_path / "repository"
    repository = Repository.init(LocalBackend(str(path)), TEST_PASSWORD)
    tree_id = repository.save_tree(Tree())
    repository.flush()
    generator = random.Random(7)
    for number in range(60):
        day = 1 + number // 3
        repository.save_snapshot(
            Snapshot(
                time=f"2024-03-{day:02d}T{generator.randrange(24):02d}:{number:02d}:00+01:00",
                tree=tree_id,
                paths=["/srv/app"] if number % 5 else ["/srv/db"],
                hostname=generator.choice(["web", "db"]),
                tags=generator.choice([[], ["deploy"], ["deploy", "nightly"]]),
            )
        )
    repository.close()
    env = {"LOCKSTEP_REPOSITORY": str(path), "LOCKSTEP_PASSWORD": TEST_PASSWORD}
    flag_sets = [
        ["--keep-daily", "3", "--keep-last", "2"],
        ["--keep-daily", "2", "--group-by", "host,tags", "--tag", "deploy"],
        ["--keep-weekly", "1", "--keep-tag", "deploy,nightly", "--host", "web", "--group-by", "host"],
        ["--keep-within", "4d", "--group-by", ""],
    ]
    for flags in flag_sets:
        ours = run_lockstep(["repo", "forget", "--dry-run", "--json", *flags], env=env)
        theirs = run_restic(str(path), ["forget", "--dry-run", "--json", *flags])
        assert ours.returncode == 0 and theirs.returncode == 0, ours.err + theirs.err

        def verdicts(output: str) -> dict[tuple[str, tuple[str, ...], tuple[str, ...]], tuple[list[str], list[str]]]:
            return {
                (group["host"], tuple(group["paths"] or []), tuple(group["tags"] or [])): (
                    [snapshot["id"] for snapshot in group["keep"] or []],
                    [snapshot["id"] for snapshot in group["remove"] or []],
                )
                for group in json.loads(output.strip().splitlines()[0])
            }

        assert verdicts(ours.out) == verdicts(theirs.out), flags
    assert len(snapshot_ids(env)) == 60


# --- object storage -------------------------------------------------------------------------


def test_forget_prune_on_s3(s3_env: dict[str, str], tmp_path: Path) -> None:
    init(s3_env)
    first, second = two_sources(tmp_path / "sources", 100_000)
    backup(s3_env, first)
    kept = backup(s3_env, second)
    stats_before = json.loads(run_lockstep(["repo", "stats", "--json"], env=s3_env).out)
    completed = run_lockstep(["repo", "forget", "--keep-last", "1", "--group-by", "", "--prune"], env=s3_env)
    assert completed.returncode == 0, completed.err
    stats_after = json.loads(run_lockstep(["repo", "stats", "--json"], env=s3_env).out)
    assert stats_after["pack_bytes"] <= stats_before["pack_bytes"] - 8 * 100_000
    assert stats_after["snapshots"] == 1
    checked = run_lockstep(["repo", "check", "--read-data"], env=s3_env)
    assert checked.returncode == 0, checked.out + checked.err
    restore_with_lockstep(s3_env, kept, second, tmp_path / "restore")


def test_prune_on_s3_aborts_the_multipart_uploads_a_kill_left(s3_env: dict[str, str], tmp_path: Path) -> None:
    """An unfinished multipart upload (restic's client sends large packs in parts) costs storage
    until aborted: prune aborts it and counts it with the temporary files; another prefix's
    stays. moto reports every upload as initiated in 2010, past prune's one-hour margin
    (tests/storage/test_s3_backend.py checks both sides of the margin with its own clock)."""
    import boto3
    from botocore.config import Config

    init(s3_env)
    backup(s3_env, two_sources(tmp_path / "sources", 10_000)[0])
    endpoint, _, path = s3_env["LOCKSTEP_REPOSITORY"].removeprefix("s3:").rpartition("/")
    endpoint, _, bucket = endpoint.rpartition("/")
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}),
    )
    left = {}
    for prefix in (path, f"{path}-other"):
        key = f"{prefix}/data/ab/{'ab' + '0' * 62}"
        left[prefix] = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        client.upload_part(Bucket=bucket, Key=key, UploadId=left[prefix], PartNumber=1, Body=b"x" * 4096)
    # The server sets the initiation time. moto's is 2010, past the margin; should a later moto
    # report the real time, the upload is young and must stay: the outcome follows what it says.
    initiated = next(
        item["Initiated"]
        for item in client.list_multipart_uploads(Bucket=bucket)["Uploads"]
        if item["UploadId"] == left[path]
    )
    stale = (datetime.now(UTC) - initiated).total_seconds() > 3600
    completed = run_lockstep(["repo", "prune", "--json"], env=s3_env)
    assert completed.returncode == 0, completed.err
    assert json.loads(completed.out.strip().splitlines()[-1])["temporary_files_removed"] == (1 if stale else 0)
    remaining = {item["UploadId"] for item in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
    assert remaining == ({left[f"{path}-other"]} if stale else set(left.values()))
    assert run_lockstep(["repo", "check"], env=s3_env).returncode == 0


# --- kill -9 --------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_during_forget_prune_never_breaks_the_repository(
    restic_binary: str, repository_env: dict[str, str], tmp_path: Path
) -> None:
    """Start `forget --keep-last 1 --prune`, wait until it holds its lock, kill -9 it after a
    random part of the time a full run works, and look: after `unlock` removes the dead
    process's lock, restic check --read-data passes and the kept snapshot restores byte for
    byte; a new run then finishes the job."""
    pristine = Path(repository_env["LOCKSTEP_REPOSITORY"])
    init(repository_env)
    first, second = two_sources(tmp_path / "sources", 4 * MEBIBYTE)
    backup(repository_env, first)
    kept = backup(repository_env, second)
    command = [sys.executable, "-m", "lockstep", "repo", "forget", "--keep-last", "1", "--group-by", "", "--prune"]

    def environment_for(path: Path) -> dict[str, str]:
        return {**os.environ, **repository_env, "LOCKSTEP_REPOSITORY": str(path), "LOCKSTEP_SCRYPT_N": "1024"}

    def start(path: Path) -> tuple[subprocess.Popen[bytes], float]:
        """Start the command and return once it holds its lock (or has exited)."""
        process = subprocess.Popen(
            command, env=environment_for(path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while process.poll() is None and not any((path / "locks").iterdir()):
            time.sleep(0.005)
        return process, time.monotonic()

    timing = tmp_path / "timing"
    shutil.copytree(pristine, timing)
    process, locked_at = start(timing)
    assert process.wait(timeout=300) == 0
    working_seconds = time.monotonic() - locked_at
    shutil.rmtree(timing)

    generator = random.Random()
    killed_while_running = 0
    attempt = 0
    # ATTEMPTS runs, and more (up to twice as many) until ATTEMPTS // 2 kills landed mid-run: the
    # timing run may have been slowed by other work on the machine, so a run that ends before its
    # kill shrinks the window to what it took (a kill after the end proves nothing).
    while attempt < ATTEMPTS or (killed_while_running < ATTEMPTS // 2 and attempt < 2 * ATTEMPTS):
        attempt += 1
        path = tmp_path / f"attempt-{attempt}"
        shutil.copytree(pristine, path)
        env = {**repository_env, "LOCKSTEP_REPOSITORY": str(path)}
        # The first RECHECK_DELAY_SECONDS are the lock's own settling time: nothing is written then.
        delay = generator.uniform(RECHECK_DELAY_SECONDS, working_seconds)
        process, locked_at = start(path)
        while time.monotonic() < locked_at + delay and process.poll() is None:
            time.sleep(0.005)
        if process.poll() is None:
            killed_while_running += 1
        else:
            working_seconds = max(RECHECK_DELAY_SECONDS, min(working_seconds, time.monotonic() - locked_at))
        process.kill()
        process.wait(timeout=30)
        unlocked = run_lockstep(["repo", "unlock"], env=env)
        assert unlocked.returncode == 0, unlocked.err
        assert not list((path / "locks").iterdir()), f"a stale lock survived unlock after {delay:.2f} s"
        restic_check(path)
        restore_with_lockstep(env, kept, second, tmp_path / f"restore-{attempt}")
        finish = run_lockstep(["repo", "forget", "--keep-last", "1", "--group-by", "", "--prune"], env=env)
        assert finish.returncode == 0, finish.err
        assert snapshot_ids(env) == {kept}
        restic_check(path, read_data=False)
        shutil.rmtree(path)
    assert killed_while_running >= ATTEMPTS // 2, (
        f"only {killed_while_running} of {attempt} kills landed in {working_seconds:.2f} s of work"
    )
