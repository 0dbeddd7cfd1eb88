"""lockstep reads what restic 0.14 wrote (on disk and on S3), then writes into it, and restic
still checks and restores the result."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import struct
import subprocess
import tarfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from lockstep.storage.s3 import parse_location
from tests.conftest import missing
from tests.interop import (
    describe_tree,
    lockstep,
    lockstep_backup_summary,
    mixed_data,
    restic,
    restic_backup_summary,
    restored_copy,
)
from tests.s3_fault_proxy import FaultProxy

pytestmark = pytest.mark.usefixtures("restic_binary")


@pytest.fixture(params=["local", "s3"])
def environment(request: pytest.FixtureRequest) -> dict[str, str]:
    """A fresh repository created by `restic init`, on local disk or on the loopback S3 server."""
    fixture = "repository_env" if request.param == "local" else "s3_env"
    environment: dict[str, str] = dict(request.getfixturevalue(fixture))
    restic(environment, ["init"])
    return environment


def test_lockstep_reads_and_extends_a_restic_repository(
    environment: dict[str, str], awkward_tree: Path, tmp_path: Path
) -> None:
    """Snapshots, listing, restore and dump of restic's snapshots; then a lockstep backup that
    restic checks and restores."""
    # restic writes times in the local zone; a half-hour zone (-02:30 in summer) proves lockstep honours offsets.
    tree_summary = restic_backup_summary(
        restic(
            environment,
            ["backup", "--json", "--tag", "files", "--tag", "awkward", "--host", "host-one", str(awkward_tree)],
            extra_environment={"TZ": "America/St_Johns"},
        )
    )
    data = mixed_data(3 * 1024 * 1024 + 5, seed=11)
    stdin_arguments = ["--stdin", "--stdin-filename", "dumps/nightly/db.sql", "--tag", "db", "--host", "host-two"]
    stdin_summary = restic_backup_summary(restic(environment, ["backup", "--json", *stdin_arguments], input=data))

    snapshots = json.loads(lockstep(environment, ["repo", "snapshots", "--json"]).out)
    assert [snapshot["short_id"] for snapshot in snapshots] == [
        tree_summary["snapshot_id"][:8],
        stdin_summary["snapshot_id"][:8],
    ]
    tree_snapshot, stdin_snapshot = snapshots
    assert (tree_snapshot["paths"], tree_snapshot["tags"], tree_snapshot["hostname"]) == (
        [str(awkward_tree)],
        ["files", "awkward"],
        "host-one",
    )
    assert (stdin_snapshot["paths"], stdin_snapshot["tags"], stdin_snapshot["hostname"]) == (
        ["/dumps/nightly/db.sql"],
        ["db"],
        "host-two",
    )
    tagged = json.loads(lockstep(environment, ["repo", "snapshots", "--json", "--tag", "db"]).out)
    assert [snapshot["id"] for snapshot in tagged] == [stdin_snapshot["id"]]

    expected = describe_tree(awkward_tree)
    listing = json.loads(lockstep(environment, ["repo", "ls", "--json", tree_snapshot["id"]]).out)
    hello = [node for node in listing["nodes"] if node["path"].endswith("/hello.txt")]
    assert [node["mtime"] for node in hello] == ["2020-09-13T09:56:40.123456789-02:30"]
    listed = {node["path"]: node["type"] for node in listing["nodes"]}
    prefix = "/" + str(awkward_tree).strip("/") + "/"
    for path, entry in expected.items():
        assert listed[prefix + path.decode("utf-8", "backslashreplace")] == entry.kind
    assert listed[prefix + "link"] == "symlink"

    target = tmp_path / "restored-by-lockstep"
    lockstep(environment, ["repo", "restore", tree_snapshot["id"], "--target", str(target)])
    assert describe_tree(restored_copy(target, awkward_tree)) == expected
    assert os.stat(restored_copy(target, awkward_tree) / "hello.txt").st_mtime_ns == 1_600_000_000_123_456_789

    assert lockstep(environment, ["repo", "dump", stdin_snapshot["id"], "/dumps/nightly/db.sql"]).stdout == data

    # lockstep writes into restic's repository; restic accepts and restores the result.
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "notes.txt").write_bytes(b"written by lockstep\n")
    (extra / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    extra_snapshot = lockstep_backup_summary(lockstep(environment, ["repo", "backup", "--json", str(extra)]))[
        "snapshot_id"
    ]
    assert "no errors were found" in restic(environment, ["check", "--read-data"]).out
    restic_target = tmp_path / "restored-by-restic"
    restic(environment, ["restore", extra_snapshot, "--target", str(restic_target)])
    assert describe_tree(restored_copy(restic_target, extra)) == describe_tree(extra)


def test_hard_links_and_extended_attributes_come_back_as_restic_restores_them(
    repository_env: dict[str, str], tmp_path: Path
) -> None:
    """restic records both and its restore brings them back; lockstep's restore wrote each hard
    link as a separate copy (a directory of hard-linked releases grew several times over) and
    dropped every extended attribute (file capabilities, SELinux labels, user.* metadata)."""
    source = tmp_path / "source"
    (source / "directory").mkdir(parents=True)
    (source / "first").write_bytes(b"shared content\n" * 100)
    os.link(source / "first", source / "second")
    os.link(source / "first", source / "directory" / "third")
    (source / "alone").write_text("one link\n")
    try:
        os.setxattr(source / "alone", "user.checksum", b"sha256:\x00\xff binary")
        os.setxattr(source / "directory", "user.role", b"releases")
    except OSError as error:
        missing(f"the file system under {tmp_path} does not support user extended attributes: {error.strerror}")
    restic(repository_env, ["init"])
    restic(repository_env, ["backup", str(source)])

    target = tmp_path / "restored"
    restored = lockstep(repository_env, ["repo", "restore", "latest", "--target", str(target), "--json"])
    summary = json.loads(restored.out)
    copy = restored_copy(target, source)
    inodes = {os.stat(copy / name).st_ino for name in ("first", "second", "directory/third")}
    assert len(inodes) == 1
    assert os.stat(copy / "first").st_nlink == 3
    assert (copy / "directory" / "third").read_bytes() == b"shared content\n" * 100
    assert os.stat(copy / "alone").st_nlink == 1
    assert os.getxattr(copy / "alone", "user.checksum") == b"sha256:\x00\xff binary"
    assert os.getxattr(copy / "directory", "user.role") == b"releases"
    assert summary["files"] == 4 and not summary["warnings"], summary


def special_files_tree(root: Path) -> Path:
    """A file, a symlink, named pipes at two depths and (where mknod is allowed) /dev/null's twin."""
    (root / "nested").mkdir(parents=True)
    (root / "notes.txt").write_text("notes\n")
    os.chmod(root / "notes.txt", 0o640)
    os.symlink("notes.txt", root / "link")
    os.mkfifo(root / "pipe")
    os.chmod(root / "pipe", 0o620)  # not through mkfifo's mode, which the umask trims
    os.mkfifo(root / "nested" / "deeper-pipe", 0o600)
    with contextlib.suppress(PermissionError):  # without CAP_MKNOD the pipes still show the bug
        os.mknod(root / "null", 0o644 | stat.S_IFCHR, os.makedev(1, 3))
    return root


def test_dump_keeps_named_pipes_and_devices(repository_env: dict[str, str], tmp_path: Path) -> None:
    """A directory's tar stream dropped every named pipe and device node (restic 0.14 writes the
    top-level ones as empty regular files and drops the deeper ones); they come out as what they
    are, with their permissions and device numbers, as `repo restore` recreates them."""
    source = special_files_tree(tmp_path / "source")
    restic(repository_env, ["init"])
    restic(repository_env, ["backup", str(source)])
    dumped = lockstep(repository_env, ["repo", "dump", "latest", str(source)]).stdout
    with tarfile.open(fileobj=io.BytesIO(dumped)) as archive:
        members = {member.name.split("/source/", 1)[-1]: member for member in archive}
    assert members["notes.txt"].isreg() and members["link"].issym()
    assert members["pipe"].isfifo() and members["pipe"].mode == 0o620
    assert members["nested/deeper-pipe"].isfifo() and members["nested/deeper-pipe"].mode == 0o600
    if (source / "null").exists():
        assert members["null"].ischr() and (members["null"].devmajor, members["null"].devminor) == (1, 3)
        assert members["null"].mode == 0o644


def tar_members(stream: bytes) -> dict[str, tuple[bytes, int, int, str, int]]:
    with tarfile.open(fileobj=io.BytesIO(stream)) as archive:
        return {
            member.name: (member.type, member.mode, member.size, member.linkname, member.mtime) for member in archive
        }


def test_dump_names_entries_as_restic_does(repository_env: dict[str, str], tmp_path: Path) -> None:
    """`dump SNAPSHOT /srv/app` named its entries relative to /srv/app; restic names them by their
    path in the snapshot (srv/app/...), so the same `tar x -C /` put the files somewhere else."""
    source = tmp_path / "source"
    (source / "nested" / "deeper").mkdir(parents=True)
    (source / "notes.txt").write_text("notes\n")
    (source / "nested" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(source / "nested" / "run.sh", 0o4755)
    os.symlink("../notes.txt", source / "nested" / "link")
    restic(repository_env, ["init"])
    restic(repository_env, ["backup", str(source)])
    for path in (str(source), str(source) + "/", str(source / "nested"), "/"):
        ours = tar_members(lockstep(repository_env, ["repo", "dump", "latest", path]).stdout)
        theirs = tar_members(restic(repository_env, ["dump", "latest", path]).stdout)
        assert ours == theirs, path
    assert str(source / "nested" / "run.sh").lstrip("/") in ours


def linux_acl(*entries: tuple[int, int, int]) -> bytes:
    """A system.posix_acl_access value: version 2, then (tag, permissions, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


def ustar_mtime(stream: bytes, member: tarfile.TarInfo) -> int:
    """The seconds in the member's own ustar header (what a reader that ignores PAX sees)."""
    header = stream[member.offset_data - 512 : member.offset_data]
    return int(header[136:148].strip(b"\0 ") or b"0", 8)


def test_dump_writes_restics_pax_records(repository_env: dict[str, str], tmp_path: Path) -> None:
    """A directory's tar stream left out the extended attributes and ACLs restic's dump writes
    (SCHILY.xattr.*, SCHILY.acl.*), and a non-UTF-8 value or name added a hdrcharset record GNU
    tar warns about. Now the stream is restic's, byte for byte: every record restic writes, and
    the time rounded to the second as restic's (Go's) writer rounds it, with no PAX mtime."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "notes.txt").write_text("notes\n")
    (source / "shared.txt").write_text("shared\n")
    (source / "whole.txt").write_text("whole\n")
    (source / "late.txt").write_text("late\n")
    os.mkdir(os.fsencode(source) + b"/caf\xe9")
    try:
        os.setxattr(source / "notes.txt", "user.comment", b"a note")
        os.setxattr(source / "notes.txt", "user.binary", b"\xff\x00\x01")
        acl = linux_acl(
            (0x01, 6, 0xFFFFFFFF), (0x02, 4, 1000), (0x04, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)
        )
        os.setxattr(source / "shared.txt", "system.posix_acl_access", acl)
    except OSError as error:
        missing(f"the file system of {tmp_path} takes no extended attributes or ACLs: {error}")
    os.utime(source / "notes.txt", ns=(0, 1_600_000_000_123_456_789))
    os.utime(source / "whole.txt", ns=(0, 1_600_000_000_000_000_000))
    os.utime(source / "late.txt", ns=(0, 1_600_000_000_700_000_000))  # rounds up, as Go rounds
    restic(repository_env, ["init"])
    restic(repository_env, ["backup", str(source)])

    ours_stream = lockstep(repository_env, ["repo", "dump", "latest", str(source)]).stdout
    theirs_stream = restic(repository_env, ["dump", "latest", str(source)]).stdout
    assert ours_stream == theirs_stream
    with tarfile.open(fileobj=io.BytesIO(ours_stream)) as ours_archive:
        ours = {member.name: member for member in ours_archive}
    by_file = {name.rsplit("/", 1)[-1]: member for name, member in ours.items()}
    assert by_file["notes.txt"].pax_headers["SCHILY.xattr.user.comment"] == "a note"
    assert by_file["shared.txt"].pax_headers["SCHILY.acl.access"] == (
        "user::rw-\nuser:1000:r--\ngroup::r--\nmask::r--\nother::---\n"
    )
    assert "mtime" not in by_file["notes.txt"].pax_headers
    assert ustar_mtime(ours_stream, by_file["late.txt"]) == 1_600_000_001

    # GNU tar takes it all back without a warning: the attributes, the ACL, the rounded second.
    target = tmp_path / "extracted"
    target.mkdir()
    extracted = subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "--acls", "-xf", "-", "-C", str(target)],
        input=ours_stream,
        capture_output=True,
        check=False,
    )
    assert extracted.returncode == 0 and extracted.stderr == b"", extracted.stderr
    copy = restored_copy(target, source)
    assert os.getxattr(copy / "notes.txt", "user.binary") == b"\xff\x00\x01"
    assert os.getxattr(copy / "shared.txt", "system.posix_acl_access") == acl
    assert os.stat(copy / "notes.txt").st_mtime_ns == 1_600_000_000_000_000_000
    assert os.path.isdir(os.fsencode(copy) + b"/caf\xe9")


def parity_tree(root: Path) -> Path:
    """Every header form Go's tar writer picks between: plain ustar, a long path split into
    prefix and name, PAX for a path too long to split, for a non-ASCII or non-UTF-8 name, a long
    link target, an ID too big for octal, a time before 1970 or after 2242, and for xattrs."""
    deep = root / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    (deep / "split-into-prefix.txt").write_text("prefix\n")
    (deep / ("f" * 120)).write_text("too long to split\n")
    (root / "empty").mkdir()
    (root / "zero.bin").write_bytes(b"")
    (root / "block.bin").write_bytes(mixed_data(4096 * 3 + 17, seed=5))
    (root / "caf\u00e9.txt").write_text("non-ascii\n")
    with open(os.fsencode(root) + b"/raw\xff.txt", "wb") as handle:
        handle.write(b"not utf-8\n")
    os.symlink("notes.txt", root / "link")
    os.symlink("t" * 150, root / "long-link")
    (root / "tool").write_text("#!/bin/sh\n")
    os.chmod(root / "tool", 0o4755)
    (root / "big-owner.txt").write_text("owner\n")
    with contextlib.suppress(PermissionError):
        os.chown(root / "big-owner.txt", 3_000_000, 3_000_001)
    with contextlib.suppress(OSError):
        os.setxattr(root / "zero.bin", "user.comment", b"a note")
    times = {
        "block.bin": 1_600_000_000_123_456_789,
        "zero.bin": 1_600_000_000_500_000_000,  # a half second: Go rounds it up
        "tool": 1_600_000_000_000_000_000,
        "caf\u00e9.txt": -1_500_000_000,  # before 1970: PAX, and rounded to the later second
        "big-owner.txt": 9_000_000_000_250_000_000,  # after 2242: too big for the octal field
    }
    for name, mtime_ns in times.items():
        os.utime(root / name, ns=(0, mtime_ns))
    os.utime(root / "link", ns=(0, 1_700_000_000_900_000_000), follow_symlinks=False)
    return root


def test_dump_writes_restics_bytes(repository_env: dict[str, str], tmp_path: Path) -> None:
    """`repo dump` of a directory went through Python's tarfile: the same entries as restic's
    dump, other bytes (PAX headers named ././@PaxHeader, no ustar prefix, empty device fields, a
    sub-second time as a PAX record, the end padded to 10 KiB). It writes Go's bytes now: the
    stream is restic's, byte for byte, for the whole snapshot and a directory in it."""
    source = parity_tree(tmp_path / "source")
    restic(repository_env, ["init"])
    restic(repository_env, ["backup", str(source)])
    for path in (str(source), str(source / ("d" * 60)), "/"):
        ours = lockstep(repository_env, ["repo", "dump", "latest", path]).stdout
        theirs = restic(repository_env, ["dump", "latest", path]).stdout
        assert len(ours) == len(theirs), path
        assert ours == theirs, path
    with tarfile.open(fileobj=io.BytesIO(ours)) as archive:
        kinds = {member.name.rsplit("/", 1)[-1]: member for member in archive}
    assert kinds["f" * 120].size == len("too long to split\n")
    assert kinds["caf\u00e9.txt"].mtime == -1


def test_ls_long_prints_what_restic_ls_long_prints(repository_env: dict[str, str], tmp_path: Path) -> None:
    """`repo ls -l` printed the node type, size and raw time but no mode bits, owner or group;
    it prints restic's lines: `-rw-r-----     0     0      6 2026-11-23 11:02:01 /path`."""
    source = special_files_tree(tmp_path / "source")
    (source / "tool").write_text("#!/bin/sh\n")
    os.chmod(source / "tool", 0o4755)
    os.chmod(source / "nested", 0o1777)
    restic(repository_env, ["init"])
    restic(repository_env, ["backup", str(source)])
    environment = {**repository_env, "TZ": "America/St_Johns"}  # local time, at a half-hour offset
    ours = lockstep(environment, ["repo", "ls", "-l", "latest"]).out.splitlines()
    theirs = restic(repository_env, ["ls", "-l", "latest"], extra_environment={"TZ": "America/St_Johns"})
    assert ours == [line for line in theirs.out.splitlines() if not line.startswith("snapshot ")]
    assert any(line.startswith("prw--w----") and line.endswith("/pipe") for line in ours), ours
    assert any(line.startswith("urwxr-xr-x") and line.endswith("/tool") for line in ours), ours


def test_an_escaped_s3_prefix_names_the_same_objects_as_for_restic(s3_env: dict[str, str], tmp_path: Path) -> None:
    """restic decodes percent-escapes in the location (`my%20backups` is the prefix "my backups");
    lockstep kept them, so the same location string opened an empty place beside restic's
    repository, and `repo init` there made a second one."""
    environment = {**s3_env, "LOCKSTEP_REPOSITORY": s3_env["LOCKSTEP_REPOSITORY"] + "/my%20backups/100%25"}
    restic(environment, ["init"])
    source = tmp_path / "source"
    source.mkdir()
    (source / "notes.txt").write_text("notes\n")
    restic(environment, ["backup", str(source)])
    snapshots = json.loads(lockstep(environment, ["repo", "snapshots", "--json"]).out)
    assert len(snapshots) == 1
    lockstep(environment, ["repo", "backup", str(source)])
    assert len(json.loads(restic(environment, ["snapshots", "--json"]).out)) == 2


def test_bucket_lookup_dns_opens_what_restic_wrote_with_it(s3_env: dict[str, str], tmp_path: Path) -> None:
    """restic's `-o s3.bucket-lookup=dns` is lockstep's `?bucket-lookup=dns` in the location (which
    restic ignores, so one location string serves both). Requests go through a recording forward
    proxy, so BUCKET.localhost needs no DNS."""
    endpoint, bucket, prefix = parse_location(s3_env["LOCKSTEP_REPOSITORY"])
    port = urlsplit(endpoint).port
    location = f"s3:http://localhost:{port}/{bucket}/{prefix}"
    with FaultProxy(endpoint) as proxy:
        environment = {**s3_env, "HTTP_PROXY": proxy.endpoint, "NO_PROXY": "", "LOCKSTEP_REPOSITORY": location}
        restic(environment, ["-o", "s3.bucket-lookup=dns", "init"])
        source = tmp_path / "source"
        source.mkdir()
        (source / "notes.txt").write_text("notes\n")
        restic(environment, ["-o", "s3.bucket-lookup=dns", "backup", str(source)])
        environment["LOCKSTEP_REPOSITORY"] = location + "?bucket-lookup=dns"
        assert len(json.loads(lockstep(environment, ["repo", "snapshots", "--json"]).out)) == 1
        assert proxy.requests and all(f"//{bucket}.localhost:{port}/" in request for request in proxy.requests)
        assert len(json.loads(restic(environment, ["snapshots", "--json"]).out)) == 1  # the query is ignored
