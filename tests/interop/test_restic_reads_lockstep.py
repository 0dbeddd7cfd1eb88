"""restic 0.14 reads, checks, restores, dumps and prunes what lockstep wrote, on disk and on S3.

Every verdict here comes from the real `restic` binary: if lockstep's bytes drift from restic's
format anywhere (crypto, packs, index, trees, names, modes, times), one of these fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.conftest import missing, run_lockstep
from tests.interop import (
    describe_tree,
    listed_path,
    lockstep,
    lockstep_backup_summary,
    mixed_data,
    restic,
    restic_backup_summary,
    restic_json_lines,
    restic_snapshots,
    restic_tree,
    restored_copy,
    subtree_id,
)

pytestmark = pytest.mark.usefixtures("restic_binary")


@pytest.fixture(params=["local", "s3"])
def environment(request: pytest.FixtureRequest) -> dict[str, str]:
    """A fresh lockstep repository, on local disk or on the loopback S3 server."""
    fixture = "repository_env" if request.param == "local" else "s3_env"
    environment: dict[str, str] = dict(request.getfixturevalue(fixture))
    lockstep(environment, ["repo", "init"])
    return environment


@pytest.fixture
def local_environment(repository_env: dict[str, str]) -> dict[str, str]:
    """A fresh lockstep repository on local disk."""
    lockstep(repository_env, ["repo", "init"])
    return repository_env


def test_restic_checks_restores_and_lists_a_lockstep_backup(
    environment: dict[str, str], awkward_tree: Path, tmp_path: Path
) -> None:
    """The awkward tree comes back from restic identical: bytes, raw names, links, modes, ns mtimes."""
    snapshot_id = lockstep_backup_summary(lockstep(environment, ["repo", "backup", str(awkward_tree), "--json"]))[
        "snapshot_id"
    ]

    check = restic(environment, ["check", "--read-data"])
    assert "no errors were found" in check.out

    target = tmp_path / "restored-by-restic"
    restic(environment, ["restore", snapshot_id, "--target", str(target)])
    expected = describe_tree(awkward_tree)
    assert describe_tree(restored_copy(target, awkward_tree)) == expected
    # The fixture's hand-picked mtime survives to the nanosecond.
    assert os.stat(restored_copy(target, awkward_tree) / "hello.txt").st_mtime_ns == 1_600_000_000_123_456_789

    listing = restic_json_lines(restic(environment, ["ls", "--json", snapshot_id]))
    listed = {line["path"] for line in listing if line.get("struct_type") == "node"}
    prefix = "/" + str(awkward_tree).strip("/") + "/"
    for path in expected:
        assert prefix + listed_path(path) in listed


def test_restic_dumps_and_prunes_lockstep_snapshots(
    environment: dict[str, str], awkward_tree: Path, tmp_path: Path
) -> None:
    """A stdin snapshot dumps byte-exact; after restic prunes the older snapshot away, restic's
    check still passes and lockstep reads what restic rewrote."""
    lockstep(environment, ["repo", "backup", str(awkward_tree)])
    data = mixed_data(4 * 1024 * 1024 + 123)
    stdin_snapshot = lockstep_backup_summary(
        lockstep(environment, ["repo", "backup", "--stdin", "--stdin-filename", "db.sql", "--json"], input=data)
    )["snapshot_id"]

    assert restic(environment, ["dump", stdin_snapshot, "/db.sql"]).stdout == data

    # Grouped by host only: by default restic keeps the last snapshot of each set of paths.
    restic(environment, ["forget", "--keep-last", "1", "--group-by", "host", "--prune"])
    assert [snapshot["id"] for snapshot in restic_snapshots(environment)] == [stdin_snapshot]
    assert "no errors were found" in restic(environment, ["check", "--read-data"]).out

    listed = json.loads(lockstep(environment, ["repo", "snapshots", "--json"]).out)
    assert [snapshot["id"] for snapshot in listed] == [stdin_snapshot]
    assert lockstep(environment, ["repo", "dump", stdin_snapshot, "/db.sql"]).stdout == data
    target = tmp_path / "restored-by-lockstep"
    lockstep(environment, ["repo", "restore", stdin_snapshot, "--target", str(target)])
    assert (target / "db.sql").read_bytes() == data


def test_restic_restores_a_stdin_snapshot_at_its_nested_path(local_environment: dict[str, str], tmp_path: Path) -> None:
    """--stdin-filename dumps/nightly/db.sql becomes real directories when restic restores it."""
    data = mixed_data(300_000, seed=7)
    lockstep(local_environment, ["repo", "backup", "--stdin", "--stdin-filename", "dumps/nightly/db.sql"], input=data)

    listing = restic_json_lines(restic(local_environment, ["ls", "--json", "latest"]))
    nodes = {line["path"]: line["type"] for line in listing if line.get("struct_type") == "node"}
    assert nodes == {"/dumps": "dir", "/dumps/nightly": "dir", "/dumps/nightly/db.sql": "file"}
    assert restic_snapshots(local_environment)[0]["paths"] == ["/dumps/nightly/db.sql"]

    target = tmp_path / "restored"
    restic(local_environment, ["restore", "latest", "--target", str(target)])
    assert (target / "dumps" / "nightly" / "db.sql").read_bytes() == data
    assert sorted(os.listdir(target)) == ["dumps"]


def test_restic_reads_a_large_file_given_as_stdin(local_environment: dict[str, str], tmp_path: Path) -> None:
    """`--stdin < FILE` of a file past chunker.MAP_AT_LEAST is mapped rather than read; restic
    must still check it and dump it byte for byte, and the same bytes through a pipe must give
    the same chunks (nothing new stored the second time)."""
    from lockstep.repository.chunker import MAP_AT_LEAST

    source = tmp_path / "large.sql"
    data = mixed_data(MAP_AT_LEAST + (5 << 20), seed=11)
    source.write_bytes(data)
    environment = {**os.environ, "LOCKSTEP_SCRYPT_N": "1024", **local_environment}
    with open(source, "rb") as stdin:
        completed = subprocess.run(
            [sys.executable, "-m", "lockstep", "repo", "backup", "--stdin", "--stdin-filename", "large.sql", "--json"],
            stdin=stdin,
            capture_output=True,
            env=environment,
            check=False,
        )
    assert completed.returncode == 0, completed.stderr.decode()
    assert "no errors were found" in restic(local_environment, ["check", "--read-data"]).out
    target = tmp_path / "restored"
    restic(local_environment, ["restore", "latest", "--target", str(target)])
    assert (target / "large.sql").read_bytes() == data
    piped = lockstep_backup_summary(
        lockstep(local_environment, ["repo", "backup", "--stdin", "--stdin-filename", "large.sql", "--json"], data)
    )
    # Only the new snapshot's one tree blob is new: every data chunk was cut as before.
    assert piped["blobs_added"] == 1, "the piped copy was cut differently from the mapped one"


# Times, and subtree IDs (the hashes of trees that hold times), are the fields allowed to differ.
_TIME_FIELD = re.compile(rb'"(mtime|atime|ctime|subtree)":"[^"]*"')


def _without_times(tree: bytes) -> bytes:
    return _TIME_FIELD.sub(rb'"\1":"masked"', tree)


def test_stdin_trees_equal_restics_except_for_times(local_environment: dict[str, str]) -> None:
    """The same stream under the same nested name gives restic's tree bytes, times aside.

    The data is below lockstep's minimum chunk size, so both tools store it as one blob with the
    same ID; the trees then differ only where the clock does."""
    data = mixed_data(200_000, seed=3)
    name = "dumps/nightly/db.sql"
    restic(local_environment, ["backup", "--stdin", "--stdin-filename", name], input=data)
    lockstep_summary = lockstep_backup_summary(
        lockstep(local_environment, ["repo", "backup", "--stdin", "--stdin-filename", name, "--json"], input=data)
    )
    # Only the three trees are new: the data blob deduplicated against restic's.
    assert lockstep_summary["blobs_added"] == 3

    restic_snapshot, lockstep_snapshot = restic_snapshots(local_environment)
    assert lockstep_snapshot["id"] == lockstep_summary["snapshot_id"]
    restic_tree_id, lockstep_tree_id = restic_snapshot["tree"], lockstep_snapshot["tree"]
    for depth, component in enumerate(["dumps", "nightly", "db.sql"]):
        restic_bytes = restic_tree(local_environment, restic_tree_id)
        lockstep_bytes = restic_tree(local_environment, lockstep_tree_id)
        assert restic_bytes != lockstep_bytes, "times should differ: the test would prove nothing"
        assert _without_times(lockstep_bytes) == _without_times(restic_bytes), f"tree at depth {depth}"
        if component != "db.sql":
            restic_tree_id = subtree_id(local_environment, restic_tree_id, component)
            lockstep_tree_id = subtree_id(local_environment, lockstep_tree_id, component)


def _small_awkward_directory(root: Path) -> Path:
    """Files below lockstep's minimum chunk size (one chunk in both tools), awkward names,
    links, modes and ns mtimes: everything whose tree bytes must match restic's exactly."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "hello.txt").write_text("hello\n")
    (root / "empty").write_bytes(b"")
    (root / "sub" / "random.bin").write_bytes(os.urandom(200_000))
    (root / "sub" / "deeper" / "repeated.txt").write_bytes(b"lockstep " * 20_000)
    (root / "link").symlink_to("hello.txt")
    (root / "dangling").symlink_to("does/not/exist")
    for name in ['quote"name', "back\\slash", "new\nline", "tab\tname", "café 😀", "\u00a0nbsp", "\u2028sep"]:
        (root / name).write_text(name)
    for name in ["del\x7f", "<&>", "UPPER", "lower"]:
        (root / name).write_text(name)
    with open(os.fsencode(root) + b"/bytes-\xff\xfe", "wb") as handle:
        handle.write(b"not utf-8 name")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o750)
    (root / "sticky").mkdir()
    (root / "sticky").chmod(0o1777)
    os.utime(root / "hello.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    return root


def test_directory_trees_are_byte_identical_to_restics(
    local_environment: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """restic first, lockstep on top, then restic again: every blob deduplicates both ways.

    restic is run from the parent directory with a relative path, so its root tree is the one-node
    tree holding `source`, the same tree lockstep writes for the parent of its absolute path."""
    source = _small_awkward_directory(tmp_path / "source")
    monkeypatch.chdir(source.parent)  # restic runs here: the tree follows the path as typed

    first = restic_backup_summary(restic(local_environment, ["backup", "--json", "source"]))
    assert first["data_blobs"] > 0

    lockstep_summary = lockstep_backup_summary(lockstep(local_environment, ["repo", "backup", str(source), "--json"]))
    # New: one tree per ancestor above source's parent (root, tmp, …); everything else is restic's.
    assert lockstep_summary["blobs_added"] == len(source.parent.parts) - 1

    second = restic_backup_summary(restic(local_environment, ["backup", "--json", "--force", "source"]))
    assert (second["data_blobs"], second["tree_blobs"], second["data_added"]) == (0, 0, 0)
    assert second["files_new"] == first["files_new"]  # --force really re-read every file

    restic_first, lockstep_snapshot, restic_second = restic_snapshots(local_environment)
    assert lockstep_snapshot["id"] == lockstep_summary["snapshot_id"]
    restic_source_tree = subtree_id(local_environment, restic_first["tree"], "source")
    lockstep_source_tree = subtree_id(local_environment, lockstep_snapshot["tree"], source)
    assert lockstep_source_tree == restic_source_tree
    assert subtree_id(local_environment, restic_second["tree"], "source") == restic_source_tree


def test_several_targets_merge_into_restics_tree_shape(
    local_environment: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Targets sharing ancestors (a dir, a nested dir, a lone file) give the very trees restic
    writes for the same targets, and restic's change detection trusts lockstep's nodes."""
    for directory in ("data/a", "data/b/c", "data/b/not-a-target"):
        (tmp_path / directory).mkdir(parents=True)
    (tmp_path / "data/a/f").write_text("1")
    (tmp_path / "data/b/c/g").write_text("2")
    (tmp_path / "data/b/file").write_text("3")
    (tmp_path / "data/b/not-a-target/h").write_text("4")
    targets = ["data/a", "data/b/c", "data/b/file"]
    absolute_targets = [str(tmp_path / target) for target in targets]
    monkeypatch.chdir(tmp_path)

    lockstep_summary = lockstep_backup_summary(
        lockstep(local_environment, ["repo", "backup", "--json", *absolute_targets])
    )
    # Same absolute paths and host: restic takes lockstep's snapshot as parent and, comparing
    # each file with lockstep's node (mtime, ctime, size, inode), finds nothing to re-read.
    with_parent = restic_backup_summary(restic(local_environment, ["backup", "--json", *absolute_targets]))
    assert (with_parent["files_unmodified"], with_parent["files_new"], with_parent["data_blobs"]) == (3, 0, 0)
    # Relative paths: restic's root tree is the one lockstep wrote for tmp_path (holding `data`).
    relative = restic_backup_summary(restic(local_environment, ["backup", "--json", *targets]))
    assert (relative["data_blobs"], relative["tree_blobs"]) == (0, 0)

    lockstep_snapshot, _, restic_snapshot = restic_snapshots(local_environment)
    assert lockstep_snapshot["id"] == lockstep_summary["snapshot_id"]
    assert lockstep_snapshot["paths"] == restic_snapshot["paths"] == absolute_targets
    assert subtree_id(local_environment, lockstep_snapshot["tree"], tmp_path) == restic_snapshot["tree"]
    listing = restic_json_lines(restic(local_environment, ["ls", "--json", lockstep_snapshot["id"]]))
    listed = {line["path"] for line in listing if line.get("struct_type") == "node"}
    assert not any("not-a-target" in path for path in listed)
    assert str(tmp_path / "data/b/file") in listed


# 999-06-01 and the year 12645: both outside what Go marshals as is (restic pads and clamps).
_OUT_OF_RANGE_MTIMES = {"ancient": -30_628_713_600, "far-future": 400_000_000_000}


@pytest.fixture
def out_of_range_times_directory() -> Iterator[Path]:
    """Files whose mtimes ext4 cannot hold but tmpfs can (as btrfs or XFS with bigtime can)."""
    if not os.path.isdir("/dev/shm"):
        missing("/dev/shm (tmpfs) is needed for file times before 1901 or after 2446")
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="lockstep-times-") as directory:
        source = Path(directory) / "source"
        source.mkdir()
        for name, seconds in _OUT_OF_RANGE_MTIMES.items():
            (source / name).write_text(name)
            os.utime(source / name, (seconds, seconds))
            if os.stat(source / name).st_mtime_ns != seconds * 1_000_000_000:
                missing("/dev/shm does not keep file times outside 1901-2446")
        os.utime(source, (1_600_000_000, 1_600_000_000))
        yield source


def test_times_outside_gos_range_are_written_as_restic_writes_them(
    local_environment: dict[str, str], out_of_range_times_directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A year below 1000 keeps four digits and a year above 9999 becomes 9999, as restic's
    FixTime does: the trees are identical to restic's and restic checks them."""
    source = out_of_range_times_directory
    monkeypatch.chdir(source.parent)
    restic(local_environment, ["backup", "source"])
    snapshot_id = lockstep_backup_summary(lockstep(local_environment, ["repo", "backup", "--json", str(source)]))[
        "snapshot_id"
    ]
    restic_snapshot, lockstep_snapshot = restic_snapshots(local_environment)
    assert lockstep_snapshot["id"] == snapshot_id
    source_tree = subtree_id(local_environment, lockstep_snapshot["tree"], source)
    assert source_tree == subtree_id(local_environment, restic_snapshot["tree"], "source")
    nodes = json.loads(restic_tree(local_environment, source_tree))["nodes"]
    assert {node["name"]: node["mtime"] for node in nodes} == {
        "ancient": "0999-06-01T00:00:00Z",
        "far-future": "9999-06-30T15:06:40Z",
    }
    assert "no errors were found" in restic(local_environment, ["check"]).out


def test_extended_attributes_are_recorded_as_restic_records_them(
    local_environment: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """restic records every extended attribute; lockstep recorded none, so a lockstep backup
    lost them (and its trees differed from restic's for the same files)."""
    source = tmp_path / "source"
    (source / "directory").mkdir(parents=True)
    (source / "text").write_text("text\n")
    (source / "binary").write_text("binary\n")
    (source / "plain").write_text("no attributes\n")
    (source / "link").symlink_to("text")
    try:
        os.setxattr(source / "text", "user.origin", b"upload")
        os.setxattr(source / "text", "user.checked", b"")
        os.setxattr(source / "binary", "user.digest", bytes(range(256)))
        os.setxattr(source / "directory", "user.role", b"releases <&>")
    except OSError as error:
        missing(f"the file system under {tmp_path} does not support user extended attributes: {error.strerror}")
    monkeypatch.chdir(source.parent)
    restic(local_environment, ["backup", "--json", "source"])
    lockstep(local_environment, ["repo", "backup", str(source), "--json"])
    restic_snapshot, lockstep_snapshot = restic_snapshots(local_environment)
    restic_source_tree = subtree_id(local_environment, restic_snapshot["tree"], "source")
    lockstep_source_tree = subtree_id(local_environment, lockstep_snapshot["tree"], source)
    assert b"extended_attributes" in restic_tree(local_environment, restic_source_tree)
    assert lockstep_source_tree == restic_source_tree

    target = tmp_path / "restored"
    restic(local_environment, ["restore", lockstep_snapshot["id"], "--target", str(target)])
    copy = restored_copy(target, source)
    assert os.getxattr(copy / "binary", "user.digest") == bytes(range(256))
    assert os.getxattr(copy / "directory", "user.role") == b"releases <&>"


def test_restic_opens_a_repository_written_with_a_region_and_storage_class(
    s3_env: dict[str, str], s3_endpoint: str, tmp_path: Path
) -> None:
    """The options are restic's -o s3.region / -o s3.storage-class in the location's query, which
    restic ignores: restic opens and checks the repository with the same location string, given
    the same options its own way, and its storage class is the one lockstep wrote."""
    location = s3_env["LOCKSTEP_REPOSITORY"]
    environment = {**s3_env, "LOCKSTEP_REPOSITORY": location + "?region=eu-west-1&storage-class=STANDARD_IA"}
    lockstep(environment, ["repo", "init"])
    source = tmp_path / "source"
    source.mkdir()
    (source / "notes.txt").write_text("notes\n")
    lockstep(environment, ["repo", "backup", str(source)])

    options = ["-o", "s3.region=eu-west-1", "-o", "s3.storage-class=STANDARD_IA"]
    assert "no errors were found" in restic(environment, [*options, "check", "--read-data"]).out
    restic(environment, [*options, "backup", str(source)])
    assert len(json.loads(lockstep(environment, ["repo", "snapshots", "--json"]).out)) == 2

    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
    )
    bucket = location.rsplit("/", 2)[1]
    assert client.get_bucket_location(Bucket=bucket)["LocationConstraint"] == "eu-west-1"
    contents = client.list_objects_v2(Bucket=bucket, Prefix="repo/data/")["Contents"]
    assert contents and {item["StorageClass"] for item in contents} == {"STANDARD_IA"}


def test_restic_restores_a_release_directory_that_matches_its_tree_sha256(
    local_environment: dict[str, str], awkward_tree: Path, tmp_path: Path
) -> None:
    """A release directory's checksum can be recomputed from restic's restore alone: the listing
    of the restored tree (raw names, newlines and tabs in names, symlinks, a sticky directory,
    modes) hashes to the manifest's tree_sha256, and equals the listing stored beside it."""
    import hashlib

    from lockstep.pipeline.code_listing import entries_on_disk, listing_bytes

    project = tmp_path / "project"
    project.mkdir()
    (project / "lockstep.toml").write_text(
        f'[repository]\nurl = "{local_environment["LOCKSTEP_REPOSITORY"]}"\n\n'
        f'[code]\nkind = "release-directory"\npath = "{awkward_tree}"\n'
    )
    created = run_lockstep(["snapshot", "create", "--json"], cwd=project, env=local_environment)
    assert created.returncode == 0, created.err
    code = json.loads(created.out)["code"]
    target = tmp_path / "restored"
    restic(local_environment, ["restore", json.loads(created.out)["id"], "--target", str(target)])
    listing = listing_bytes(entries_on_disk(target / "code" / "release"))
    assert (target / "code" / "release.listing").read_bytes() == listing
    assert hashlib.sha256(listing).hexdigest() == code["tree_sha256"]
    assert b"new%0Aline\tfile\t" in listing and b"bytes-\xff\xfe\tfile\t" in listing
    assert b"sticky\tdir\t1777\t\t\t\n" in listing
    own = run_lockstep(
        ["snapshot", "restore", "latest", "--code", str(tmp_path / "own")], cwd=project, env=local_environment
    )
    assert own.returncode == 0 and "checked against its tree_sha256" in own.out, own.err
