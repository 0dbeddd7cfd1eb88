"""The code's checksum in the manifest: a release directory's tree_sha256 (with its listing and the
release `current` pointed to) and the uncommitted diff's sha256, checked by `verify --level data`
and by `restore --code`. Real files, real git, a real repository; a damaged snapshot is built as
an attacker or a bug would leave it: the manifest of one tree beside another tree."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lockstep.config.model import CodeConfig, ProjectConfig
from lockstep.errors import IntegrityError, LockstepError
from lockstep.pipeline.manifest import MANIFEST_PATH, Manifest
from lockstep.pipeline.restore import restore_code
from lockstep.pipeline.snapshot import SnapshotRequest, StoredApart, create_snapshot, load_manifest, prepare_code
from lockstep.pipeline.verify import UNCHECKED_DIFF_NOTE, UNCHECKED_RELEASE_NOTE, verify_snapshot
from lockstep.repository.builder import SnapshotBuilder
from lockstep.repository.chunker import MAXIMUM_SIZE
from lockstep.repository.repository import Repository
from lockstep.repository.restorer import dump_file, find_node
from lockstep.repository.snapshot import Snapshot
from tests.pipeline.test_code import work_tree as committed_tree  # noqa: F401  (dirty_tree's fixture)
from tests.pipeline.test_verify import open_repository

BIG_SIZE = MAXIMUM_SIZE + 1024 * 1024  # more than one chunk, whatever the content


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mode_of(path: Path) -> str:
    return f"{path.lstat().st_mode & 0o7777:04o}"


def make_release(root: Path) -> Path:
    """releases/20261123070000 with a small file, a file of several chunks, an empty directory, a
    symlink and an executable, and `current` pointing at it; returns `current`."""
    release = root / "releases" / "20261123070000"
    (release / "static").mkdir(parents=True)
    (release / "cache").mkdir()
    (release / "index.php").write_text("<?php echo 'v7';\n")
    (release / "bin").mkdir()
    (release / "bin" / "console").write_text("#!/bin/sh\necho hi\n")
    (release / "bin" / "console").chmod(0o750)
    (release / "static" / "big.bin").write_bytes(os.urandom(BIG_SIZE))
    (release / "static" / "app.css").symlink_to("../index.php")
    current = root / "current"
    current.symlink_to(Path("releases") / "20261123070000")
    return current


def expected_listing(release: Path) -> bytes:
    """The listing as docs/manifest.md defines it, written out by hand for make_release's tree."""
    files = ("bin/console", "index.php", "static/big.bin")
    lines = {
        name: f"{name}\tfile\t{mode_of(release / name)}\t{(release / name).stat().st_size}\t"
        f"{sha256((release / name).read_bytes())}\t\n"
        for name in files
    }
    for name in ("bin", "cache", "static"):
        lines[name] = f"{name}\tdir\t{mode_of(release / name)}\t\t\t\n"
    lines["static/app.css"] = "static/app.css\tsymlink\t\t\t\t../index.php\n"
    return "".join(lines[name] for name in sorted(lines)).encode()


def snapshot_code(repository_path: Path, directory: Path, code: CodeConfig, **request: Any) -> Snapshot:
    """A coordinated snapshot of `code` alone, made by the real pipeline."""
    config = ProjectConfig.from_source({"repository": {"url": str(repository_path)}}, directory).resolve(None)
    snapshot_request = SnapshotRequest(project_directory=directory, message="test", **request)
    prepared = prepare_code(code, snapshot_request, StoredApart())
    repository = open_repository(repository_path)
    try:
        return create_snapshot(repository, config, snapshot_request, prepared).snapshot
    finally:
        repository.close()


def stored(repository: Repository, snapshot: Snapshot, path: str) -> bytes:
    buffer = io.BytesIO()
    dump_file(repository, find_node(repository, snapshot, path), buffer)
    return buffer.getvalue()


def rebuild(
    repository: Repository,
    snapshot: Snapshot,
    change: Callable[[dict[str, Any]], None] = lambda document: None,
    release: Path | None = None,
    diff: bytes | None = None,
) -> Snapshot:
    """A new snapshot with the old one's manifest (edited by `change`) and listing, but with the
    release tree taken from `release` or the diff replaced by `diff`, when given."""
    manifest = load_manifest(repository, snapshot)
    document = manifest.to_document()
    change(document)
    code = manifest.code
    assert code is not None and code.path is not None
    with SnapshotBuilder(repository) as builder:
        if code.commit is not None:
            builder.add_bytes("/code/commit", stored(repository, snapshot, "/code/commit"))
            builder.add_bytes(code.path, stored(repository, snapshot, code.path) if diff is None else diff)
        else:
            assert release is not None
            builder.add_path(code.path, release)
            if code.listing is not None:
                builder.add_bytes(code.listing, stored(repository, snapshot, code.listing))
        builder.add_bytes(MANIFEST_PATH, (json.dumps(document, indent=2) + "\n").encode())
        return builder.commit(paths=snapshot.paths, tags=snapshot.tags)


# --- a release directory -------------------------------------------------------------------


def test_a_release_directory_is_recorded_with_its_listing_checksum_and_release(tmp_path: Path) -> None:
    """The manifest recorded only the release's size: nothing a restored copy could be checked
    against, and not which release `current` pointed to."""
    current = make_release(tmp_path / "site")
    snapshot = snapshot_code(
        tmp_path / "repository", tmp_path / "site", CodeConfig(kind="release-directory", path=current)
    )
    repository = open_repository(tmp_path / "repository")
    try:
        code = load_manifest(repository, snapshot).code
        assert code is not None
        listing = expected_listing(current.resolve())
        assert code.release == "20261123070000"
        assert code.listing == "/code/release.listing"
        assert stored(repository, snapshot, "/code/release.listing") == listing
        assert code.tree_sha256 == sha256(listing)
        result = verify_snapshot(repository, snapshot, "data", record=False)
        assert result.ok and result.notes == [], result.findings
    finally:
        repository.close()


def test_a_release_directory_without_a_symlink_records_no_release(tmp_path: Path) -> None:
    current = make_release(tmp_path / "site")
    snapshot = snapshot_code(
        tmp_path / "repository", tmp_path / "site", CodeConfig(kind="release-directory", path=current.resolve())
    )
    repository = open_repository(tmp_path / "repository")
    try:
        code = load_manifest(repository, snapshot).code
        assert code is not None and code.release is None and code.tree_sha256 is not None
        assert "release" not in code.to_document()
    finally:
        repository.close()


def test_a_release_tree_that_differs_from_its_manifest_fails_verify_and_restore_naming_the_entries(
    tmp_path: Path,
) -> None:
    """A snapshot whose release tree is not the one its manifest describes passed
    `verify --level data` (every blob matched its own ID) and `restore --code` wrote it out."""
    current = make_release(tmp_path / "site")
    snapshot = snapshot_code(
        tmp_path / "repository", tmp_path / "site", CodeConfig(kind="release-directory", path=current)
    )
    release = current.resolve()
    (release / "index.php").write_text("<?php echo 'tampered';\n")
    (release / "bin" / "console").chmod(0o755)
    (release / "extra.txt").write_text("not in the release\n")
    big = bytearray((release / "static" / "big.bin").read_bytes())
    big[-1] ^= 0x01  # same size, several chunks: only its SHA-256 tells
    (release / "static" / "big.bin").write_bytes(bytes(big))
    repository = open_repository(tmp_path / "repository")
    try:
        swapped = rebuild(repository, snapshot, release=release)
        assert verify_snapshot(repository, swapped, "structure", record=False).ok
        result = verify_snapshot(repository, swapped, "data", record=False)
        assert not result.ok
        [finding] = result.findings
        assert finding.subject == "code"
        assert "/code/release does not match the manifest's tree_sha256" in finding.message
        assert "index.php: its content differs" in finding.message
        assert "bin/console: mode is 0755, the snapshot has 0750" in finding.message
        assert "extra.txt is not in the snapshot's listing" in finding.message
        assert "static/big.bin: its content differs (SHA-256" in finding.message

        target = tmp_path / "restored"
        with pytest.raises(IntegrityError, match=r"index\.php: its content differs") as raised:
            restore_code(repository, swapped, load_manifest(repository, swapped), None, target)
        assert raised.value.exit_code == 12
        assert not target.exists()  # the mismatching copy is removed again

        good = tmp_path / "good"
        written = restore_code(repository, snapshot, load_manifest(repository, snapshot), None, good)
        assert "checked against its tree_sha256" in written.description and written.warnings == []
        assert (good / "index.php").read_text() == "<?php echo 'v7';\n"
    finally:
        repository.close()


def test_an_older_release_manifest_is_not_checked_and_says_so(tmp_path: Path) -> None:
    current = make_release(tmp_path / "site")
    snapshot = snapshot_code(
        tmp_path / "repository", tmp_path / "site", CodeConfig(kind="release-directory", path=current)
    )

    def as_before(document: dict[str, Any]) -> None:
        for key in ("tree_sha256", "listing", "release"):
            del document["code"][key]

    repository = open_repository(tmp_path / "repository")
    try:
        older = rebuild(repository, snapshot, as_before, release=current.resolve())
        result = verify_snapshot(repository, older, "data", record=False)
        assert result.ok and result.notes == [UNCHECKED_RELEASE_NOTE]
        assert result.to_document()["notes"] == [UNCHECKED_RELEASE_NOTE]
        written = restore_code(repository, older, load_manifest(repository, older), None, tmp_path / "restored")
        assert "not checked: its manifest records no tree_sha256" in written.description
    finally:
        repository.close()


# --- the uncommitted diff --------------------------------------------------------------------


@pytest.fixture
def dirty_tree(request: pytest.FixtureRequest) -> Path:
    """test_code's committed work tree, with a change and an untracked file."""
    work_tree: Path = request.getfixturevalue("committed_tree")
    (work_tree / "app.py").write_text("print('v2, not committed')\n")
    (work_tree / "new.txt").write_text("untracked\n")
    return work_tree


def test_the_uncommitted_diff_is_recorded_with_its_sha256_and_checked(dirty_tree: Path, tmp_path: Path) -> None:
    """`--allow-dirty` stored the diff with only its size: a different diff under the same
    manifest passed `verify --level data` and was applied by `restore --code`."""
    code = CodeConfig(kind="git", path=dirty_tree)
    snapshot = snapshot_code(tmp_path / "repository", dirty_tree, code, allow_dirty=True)
    repository = open_repository(tmp_path / "repository")
    try:
        manifest = load_manifest(repository, snapshot)
        assert manifest.code is not None and manifest.code.path == "/code/uncommitted.diff"
        diff = stored(repository, snapshot, "/code/uncommitted.diff")
        assert b"+print('v2, not committed')" in diff
        assert manifest.code.sha256 == sha256(diff) and manifest.code.size == len(diff)
        assert verify_snapshot(repository, snapshot, "data", record=False).ok

        other = diff.replace(b"v2, not committed", b"v3, never written")
        swapped = rebuild(repository, snapshot, diff=other)
        result = verify_snapshot(repository, swapped, "data", record=False)
        assert not result.ok
        assert result.findings[0].subject == "/code/uncommitted.diff"
        assert "code: /code/uncommitted.diff has SHA-256" in result.findings[0].message
        with pytest.raises(IntegrityError, match=r"uncommitted diff .* it was not applied"):
            restore_code(repository, swapped, load_manifest(repository, swapped), dirty_tree, tmp_path / "restored")
        assert not (tmp_path / "restored").exists()

        restored = tmp_path / "good"
        restore_code(repository, snapshot, manifest, dirty_tree, restored)
        assert (restored / "app.py").read_text() == "print('v2, not committed')\n"
    finally:
        repository.close()


def test_an_older_diff_manifest_is_not_checked_and_says_so(dirty_tree: Path, tmp_path: Path) -> None:
    snapshot = snapshot_code(
        tmp_path / "repository", dirty_tree, CodeConfig(kind="git", path=dirty_tree), allow_dirty=True
    )
    repository = open_repository(tmp_path / "repository")
    try:
        older = rebuild(repository, snapshot, lambda document: document["code"].pop("sha256"))
        assert Manifest.from_json(stored(repository, older, MANIFEST_PATH)).code.sha256 is None  # type: ignore[union-attr]
        result = verify_snapshot(repository, older, "data", record=False)
        assert result.ok and result.notes == [UNCHECKED_DIFF_NOTE]
        written = restore_code(repository, older, load_manifest(repository, older), dirty_tree, tmp_path / "restored")
        assert "the diff not checked" in written.description
    finally:
        repository.close()


NOBODY = 65534


def restore_code_as_nobody(repository_path: Path, snapshot_id: str, target: Path) -> tuple[str, list[str]]:
    """restore_code in a forked child that has become user nobody (no capabilities: no mknod),
    with the modules this process already imported (nobody cannot read root's Python): what it
    wrote and its warnings, or "failed (EXIT): MESSAGE" and no warnings."""
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        outcome: tuple[str, list[str]] = ("child crashed", [])
        try:
            os.close(reading)
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            repository = open_repository(repository_path)
            snapshot = repository.load_snapshot(snapshot_id)
            try:
                restored = restore_code(repository, snapshot, load_manifest(repository, snapshot), None, target)
                outcome = (restored.description, restored.warnings)
            except LockstepError as error:
                outcome = (f"failed ({error.exit_code}): {error.message}", [])
        except BaseException as error:
            outcome = (f"child crashed: {error!r}", [])
        finally:
            os.write(writing, json.dumps(outcome).encode())
            os._exit(0)
    os.close(writing)
    with os.fdopen(reading, "rb") as pipe:
        description, warnings = json.loads(pipe.read())
    os.waitpid(child, 0)
    return description, warnings


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make device nodes and to become another user")
def test_a_release_with_device_nodes_restored_by_another_user_passes_its_check_naming_them() -> None:
    """Only root can create a device node: restored by another user the release lacks it (the
    restore skips it, as restic does), and the check against tree_sha256 failed with exit 12 on
    every such release. The devices' entries now come from the stored tree and the report names
    them; the rest of the tree is still checked (a changed file still fails)."""
    root = Path(tempfile.mkdtemp(prefix="lockstep-devices-", dir="/tmp"))
    try:
        root.chmod(0o755)
        current = make_release(root / "site")
        release = current.resolve()
        os.mknod(release / "static" / "null", stat.S_IFCHR | 0o644, os.makedev(1, 3))
        os.mknod(release / "disk", stat.S_IFBLK | 0o600, os.makedev(7, 0))
        os.mkfifo(release / "pipe")
        snapshot = snapshot_code(root / "repository", root / "site", CodeConfig(kind="release-directory", path=current))
        (release / "index.php").write_text("<?php echo 'tampered';\n")
        repository = open_repository(root / "repository")
        try:
            # verify reads the stored tree, where the devices are: nothing to skip there.
            assert verify_snapshot(repository, snapshot, "data", record=False).ok
            swapped = rebuild(repository, snapshot, release=release)
        finally:
            repository.close()
        subprocess.run(["chmod", "-R", "a+rX", str(root / "repository")], check=True)
        os.chown(root, NOBODY, NOBODY)

        written, warnings = restore_code_as_nobody(root / "repository", snapshot.id, root / "restored")
        assert warnings == []  # the skipped devices are named in what was written, not again
        assert written == (
            f"the release directory of snapshot {snapshot.short_id} (checked against its tree_sha256; device nodes"
            " not restored, since only root can create them, and so not checked: disk, static/null)"
        )
        assert (root / "restored" / "index.php").read_text() == "<?php echo 'v7';\n"
        assert stat.S_ISFIFO((root / "restored" / "pipe").lstat().st_mode)
        assert not (root / "restored" / "disk").exists() and not (root / "restored" / "static" / "null").exists()

        failed, _ = restore_code_as_nobody(root / "repository", swapped.id, root / "tampered")
        assert failed.startswith("failed (12): ") and "index.php: its content differs" in failed, failed
        assert "null" not in failed and "disk" not in failed, failed
        assert not (root / "tampered").exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to set trusted.* attributes and to become another user")
def test_a_release_restored_by_another_user_reports_the_attributes_it_could_not_set() -> None:
    """Only root may set trusted.* extended attributes: restored by another user they were
    dropped and the restore said nothing (its warnings were thrown away). The problem is now
    reported once for all the files it hit, with the first of them; what could be set (a
    user.* attribute on a file nobody owns) is set."""
    root = Path(tempfile.mkdtemp(prefix="lockstep-xattrs-", dir="/tmp"))
    try:
        root.chmod(0o755)
        current = make_release(root / "site")
        release = current.resolve()
        for name in ("index.php", "bin/console", "static/big.bin"):
            os.setxattr(release / name, "trusted.lockstep", b"cache-key")
        os.setxattr(release / "index.php", "user.origin", b"build 7")
        snapshot = snapshot_code(root / "repository", root / "site", CodeConfig(kind="release-directory", path=current))
        subprocess.run(["chmod", "-R", "a+rX", str(root / "repository")], check=True)
        os.chown(root, NOBODY, NOBODY)

        written, warnings = restore_code_as_nobody(root / "repository", snapshot.id, root / "restored")
        assert written.endswith("(checked against its tree_sha256)"), written
        assert warnings == [
            "cannot set extended attribute trusted.lockstep (Operation not permitted) on 3 files"
            f" (first: {root / 'restored' / 'bin' / 'console'})"
        ]
        assert os.getxattr(root / "restored" / "index.php", "user.origin") == b"build 7"
    finally:
        shutil.rmtree(root, ignore_errors=True)
