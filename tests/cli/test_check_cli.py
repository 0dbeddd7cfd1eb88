"""`lockstep repo check` as a user runs it: output, exit codes, --json, subsets, restic's verdict,
and that restore and dump refuse damaged data instead of writing it."""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from lockstep.exit_codes import ExitCode
from lockstep.repository.gojson import format_time_ns
from lockstep.storage.base import FileType
from tests.conftest import run_lockstep, run_restic
from tests.repository.test_checker import (
    STDIN_DATA,
    BuiltRepository,
    add_snapshot_with_wrong_uncompressed_length,
    backup_json,
    build_repository,
    damage_big_file_blob,
    open_repository,
    write_orphan_pack,
)


@pytest.fixture
def built(repository_env: dict[str, str], awkward_tree: Path) -> BuiltRepository:
    return build_repository(repository_env, awkward_tree)


def check_json(env: dict[str, str], *arguments: str) -> tuple[int, dict[str, Any]]:
    completed = run_lockstep(["repo", "check", "--json", *arguments], env=env)
    return completed.returncode, json.loads(completed.out)


def test_a_sound_repository_passes_lockstep_and_restic_check(built: BuiltRepository, restic_binary: str) -> None:
    completed = run_lockstep(["repo", "check", "--read-data"], env=built.env)
    assert completed.returncode == ExitCode.OK, completed.err
    lines = completed.out.splitlines()
    assert lines[-1] == "no errors were found"
    assert lines[-2].startswith("checked 2 snapshots, ")
    assert completed.err == ""

    restic = run_restic(built.location, ["check", "--read-data"])
    assert restic.returncode == 0, restic.err
    assert "no errors were found" in restic.out


def test_json_report_of_a_sound_repository(built: BuiltRepository) -> None:
    code, report = check_json(built.env, "--read-data")
    assert code == ExitCode.OK
    assert report["ok"] is True
    assert report["errors"] == [] and report["hints"] == []
    assert report["snapshots"] == 2
    assert report["packs"] == report["packs_read"] == len(list((built.root / "data").glob("*/*")))
    assert isinstance(report["blobs_read"], int) and report["blobs_read"] > 0


def test_a_flipped_bit_fails_read_data_and_stops_restore_and_dump(
    built: BuiltRepository, tmp_path: Path, restic_binary: str
) -> None:
    pack_id, blob_id = damage_big_file_blob(built)
    pack, blob = pack_id.hex()[:8], blob_id.hex()[:8]

    # Without --read-data nothing reads the blob's bytes, so nothing can notice.
    assert run_lockstep(["repo", "check"], env=built.env).returncode == ExitCode.OK

    completed = run_lockstep(["repo", "check", "--read-data"], env=built.env)
    assert completed.returncode == ExitCode.INTEGRITY
    assert f"error: data blob {blob} in pack {pack} failed authentication" in completed.err
    assert blob_id.hex() in completed.err
    assert "/sub/big.bin: 1 of its" in completed.err
    assert completed.err.splitlines()[-1] == "3 errors found"
    # restic agrees the pack is damaged.
    assert run_restic(built.location, ["check", "--read-data"]).returncode != 0

    original = (built.source / "sub" / "big.bin").read_bytes()
    target = tmp_path / "restored"
    restore = run_lockstep(["repo", "restore", built.tree_snapshot, "--target", str(target)], env=built.env)
    assert restore.returncode == ExitCode.INTEGRITY
    assert f"data blob {blob} in pack {pack}" in restore.err
    restored = target / str(built.source).lstrip("/") / "sub" / "big.bin"
    # Never a file that looks restored: the partly written file is removed.
    assert not restored.exists()
    # Everything else is restored, as restic does, and the damaged path is named.
    assert "1 path of snapshot" in restore.err and "everything else is restored" in restore.err
    assert "sub/big.bin" in restore.err
    expected = {
        path.relative_to(built.source)
        for path in built.source.rglob("*")
        if path.is_file() and not path.is_symlink() and path.name != "big.bin"
    }
    assert expected and all((target / str(built.source).lstrip("/") / name).is_file() for name in expected)
    again = run_lockstep(
        ["repo", "restore", built.tree_snapshot, "--target", str(tmp_path / "again"), "--json"], env=built.env
    )
    assert again.returncode == ExitCode.INTEGRITY
    document = json.loads(again.out)
    assert document["exit_code"] == ExitCode.INTEGRITY and document["files"] == len(expected)
    assert [entry.split(":")[0].endswith("/sub/big.bin") for entry in document["damaged"]] == [True]

    path = str(built.source / "sub" / "big.bin")
    dump = run_lockstep(["repo", "dump", built.tree_snapshot, path], env=built.env)
    assert dump.returncode == ExitCode.INTEGRITY
    assert f"data blob {blob} in pack {pack}" in dump.err
    assert len(dump.stdout) < len(original) and original.startswith(dump.stdout)

    # Files that do not use the damaged blob are still readable.
    other = run_lockstep(["repo", "dump", built.stdin_snapshot, "/shop.sql"], env=built.env)
    assert other.returncode == ExitCode.OK
    assert other.stdout == STDIN_DATA


def test_a_wrong_uncompressed_length_fails_read_data(built: BuiltRepository) -> None:
    """restic 0.14's `check --read-data` reports "no errors were found" for this repository (§15.3:
    it compares header and index, which agree, never the real length); `restic restore` then writes
    /trap.txt 5 bytes too long. lockstep's read-data compares the decompressed length."""
    pack_id, blob_id, snapshot_id = add_snapshot_with_wrong_uncompressed_length(built.location)
    assert run_lockstep(["repo", "check"], env=built.env).returncode == ExitCode.OK

    completed = run_lockstep(["repo", "check", "--read-data"], env=built.env)
    assert completed.returncode == ExitCode.INTEGRITY
    assert f"data blob {blob_id.hex()[:8]} in pack {pack_id.hex()[:8]} has " in completed.err
    assert f"snapshot {snapshot_id[:8]}: /trap.txt: 1 of its 1 data blobs are damaged" in completed.err

    dump = run_lockstep(["repo", "dump", snapshot_id, "/trap.txt"], env=built.env)
    assert dump.returncode == ExitCode.INTEGRITY
    assert dump.stdout == b""


def test_an_orphan_pack_is_a_hint_and_exits_zero(built: BuiltRepository) -> None:
    pack_id = write_orphan_pack(built.location)
    completed = run_lockstep(["repo", "check", "--read-data"], env=built.env)
    assert completed.returncode == ExitCode.OK, completed.err
    assert (
        f"hint: pack {pack_id.hex()[:8]} is not referenced in any index; `lockstep repo prune` removes them"
        in completed.out
    )
    assert completed.out.splitlines()[-1] == "no errors were found"


def test_a_deleted_pack_exits_with_integrity_and_json_lists_the_errors(built: BuiltRepository) -> None:
    pack = sorted((built.root / "data").glob("*/*"))[0]
    pack.unlink()
    code, report = check_json(built.env)
    assert code == ExitCode.INTEGRITY
    assert report["ok"] is False
    errors = report["errors"]
    assert isinstance(errors, list)
    assert f"pack {pack.name[:8]} is named in the index but missing from storage" in errors


def test_a_damaged_snapshot_file_exits_with_integrity(built: BuiltRepository) -> None:
    path = built.file(FileType.SNAPSHOT, built.tree_snapshot)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x80
    path.write_bytes(bytes(data))
    completed = run_lockstep(["repo", "check"], env=built.env)
    assert completed.returncode == ExitCode.INTEGRITY
    assert f"error: snapshot {built.tree_snapshot[:8]} is unreadable" in completed.err
    assert completed.err.splitlines()[-1] == "1 error found"


def test_read_data_subsets_split_the_packs_and_percentages_pick_some(built: BuiltRepository) -> None:
    for number in range(6):
        backup_json(["--stdin", "--stdin-filename", f"part{number}.sql"], built.env, input=os.urandom(5000))
    pack_ids = [bytes.fromhex(path.name) for path in (built.root / "data").glob("*/*")]
    total = len(pack_ids)
    assert total >= 14

    _, first = check_json(built.env, "--read-data-subset=1/2")
    _, second = check_json(built.env, "--read-data-subset=2/2")
    assert first["packs"] == second["packs"] == total
    assert first["packs_read"] == sum(1 for pack_id in pack_ids if pack_id[0] % 2 == 0)
    assert second["packs_read"] == sum(1 for pack_id in pack_ids if pack_id[0] % 2 == 1)
    assert first["packs_read"] + second["packs_read"] == total

    _, half = check_json(built.env, "--read-data-subset=50%")
    assert half["packs_read"] == total // 2
    _, tiny = check_json(built.env, "--read-data-subset=0.1%")
    assert tiny["packs_read"] == 1


@pytest.mark.parametrize("subset", ["0/2", "3/2", "0%", "abc"])
def test_a_bad_subset_is_a_usage_error(built: BuiltRepository, subset: str) -> None:
    completed = run_lockstep(["repo", "check", f"--read-data-subset={subset}"], env=built.env)
    assert completed.returncode == ExitCode.USAGE
    assert "--read-data-subset" in completed.err
    assert "Traceback" not in completed.err


def write_live_lock(built: BuiltRepository, exclusive: bool) -> None:
    """A lock held by this (living) test process, as another lockstep or restic would write it."""
    repository = open_repository(built.location)
    try:
        document = {
            "time": format_time_ns(time.time_ns()),
            "exclusive": exclusive,
            "hostname": socket.gethostname(),
            "username": getpass.getuser(),
            "pid": os.getpid(),
        }
        repository.save_unpacked(FileType.LOCK, document)
    finally:
        repository.close()


def test_check_takes_a_shared_lock_only(built: BuiltRepository) -> None:
    """A backup's shared lock does not stop a check (restic's would); an exclusive one does."""
    write_live_lock(built, exclusive=False)
    assert run_lockstep(["repo", "check"], env=built.env).returncode == ExitCode.OK
    assert len(list((built.root / "locks").iterdir())) == 1  # ours was removed, the other kept

    write_live_lock(built, exclusive=True)
    completed = run_lockstep(["repo", "check"], env=built.env)
    assert completed.returncode == ExitCode.LOCKED
    assert "exclusive lock" in completed.err


def test_read_data_on_s3(s3_env: dict[str, str], tmp_path: Path) -> None:
    assert run_lockstep(["repo", "init"], env=s3_env).returncode == 0
    source = tmp_path / "s3-source"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "random.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    (source / "hello.txt").write_text("hello\n")
    backup_json([str(source)], s3_env)
    backup_json(["--stdin", "--stdin-filename", "shop.sql"], s3_env, input=STDIN_DATA)

    code, report = check_json(s3_env, "--read-data")
    assert code == ExitCode.OK, report
    assert report["snapshots"] == 2
    assert report["packs"] == report["packs_read"] == 4
    assert isinstance(report["bytes_read"], int) and report["bytes_read"] > 2 * 1024 * 1024


def test_a_repository_written_by_restic_passes_read_data(
    repository_env: dict[str, str], awkward_tree: Path, restic_binary: str
) -> None:
    """restic's packs (its header layout, its index order) check clean: nothing lockstep-specific."""
    location = repository_env["LOCKSTEP_REPOSITORY"]
    assert run_restic(location, ["init"]).returncode == 0
    assert run_restic(location, ["backup", str(awkward_tree)]).returncode == 0
    assert run_restic(location, ["backup", "--stdin", "--stdin-filename", "shop.sql"], input=STDIN_DATA).returncode == 0

    code, report = check_json(repository_env, "--read-data")
    assert code == ExitCode.OK, report
    assert report["snapshots"] == 2
    assert report["packs_read"] == report["packs"] == len(list(Path(location, "data").glob("*/*")))
