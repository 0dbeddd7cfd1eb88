"""Recording the code version against a real git work tree."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lockstep.config.model import CodeConfig
from lockstep.errors import SourceError, UsageError
from lockstep.pipeline.code import build_commit, publish_commit, read_git_state, uncommitted_diff
from lockstep.pipeline.snapshot import SnapshotRequest, StoredApart, prepare_code
from tests.conftest import require_binary

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Ada Lovelace",
    "GIT_AUTHOR_EMAIL": "ada@example.org",
    "GIT_COMMITTER_NAME": "Ada Lovelace",
    "GIT_COMMITTER_EMAIL": "ada@example.org",
}


def git(work_tree: Path, *arguments: str) -> str:
    completed = subprocess.run(
        ["git", "-C", str(work_tree), *arguments],
        capture_output=True,
        check=True,
        env={**os.environ, **GIT_IDENTITY},
    )
    return completed.stdout.decode().strip()


@pytest.fixture
def work_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    require_binary("git", "apt-get install git")
    for name, value in GIT_IDENTITY.items():
        monkeypatch.setenv(name, value)
    root = tmp_path / "app"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "app.py").write_text("print('v1')\n")
    (root / "logo.bin").write_bytes(bytes(range(256)))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "first")
    return root


def test_clean_tree_records_commit_branch_and_author(work_tree: Path) -> None:
    state = read_git_state(work_tree)
    assert state.commit == git(work_tree, "rev-parse", "HEAD")
    assert len(state.commit) == 40
    assert state.branch == "main"
    assert state.author == "Ada Lovelace <ada@example.org>"
    assert state.dirty is False
    assert state.short_commit == state.commit[:12]


def test_untracked_file_makes_the_tree_dirty(work_tree: Path) -> None:
    (work_tree / "new.txt").write_text("new\n")
    assert read_git_state(work_tree).dirty is True


def test_detached_head_has_no_branch(work_tree: Path) -> None:
    git(work_tree, "checkout", "-q", "--detach")
    assert read_git_state(work_tree).branch is None


def test_diff_is_binary_safe(work_tree: Path) -> None:
    """A changed binary file is in the diff as a binary patch that `git apply` takes back."""
    (work_tree / "logo.bin").write_bytes(bytes(reversed(range(256))) + b"\x00\xff")
    (work_tree / "app.py").write_text("print('v2')\n")
    stream = uncommitted_diff(work_tree)
    diff = stream.stdout.read()
    stream.finish()
    assert b"GIT binary patch" in diff
    assert b"+print('v2')" in diff
    git(work_tree, "checkout", "-q", "--", ".")
    patch = work_tree.parent / "change.diff"
    patch.write_bytes(diff)
    git(work_tree, "apply", "--binary", str(patch))
    assert (work_tree / "logo.bin").read_bytes() == bytes(reversed(range(256))) + b"\x00\xff"


def read_diff(work_tree: Path, left_out: tuple[Path, ...] = ()) -> bytes:
    stream = uncommitted_diff(work_tree, left_out)
    diff = stream.stdout.read()
    stream.finish()
    return diff


def test_diff_holds_untracked_files_and_leaves_the_index_alone(work_tree: Path) -> None:
    """`git diff HEAD` left untracked files out although the snapshot said it held the
    uncommitted changes. They are in the diff now (ignored ones are not), the user's staged
    changes stay staged, and the diff applies onto a clean checkout."""
    (work_tree / ".gitignore").write_text("*.log\n")
    (work_tree / "app.py").write_text("print('v2')\n")
    git(work_tree, "add", "app.py")
    (work_tree / "views").mkdir()
    (work_tree / "views" / "new.py").write_text("print('new')\n")
    (work_tree / "icon.bin").write_bytes(bytes(range(256)) * 2)
    (work_tree / "debug.log").write_text("ignored\n")
    staged_before = git(work_tree, "diff", "--cached", "--name-only")
    status_before = git(work_tree, "status", "--porcelain")
    diff = read_diff(work_tree)
    assert git(work_tree, "diff", "--cached", "--name-only") == staged_before == "app.py"
    assert git(work_tree, "status", "--porcelain") == status_before
    assert b"views/new.py" in diff and b"icon.bin" in diff and b".gitignore" in diff
    assert b"debug.log" not in diff

    clean = work_tree.parent / "clean"
    git(work_tree, "worktree", "add", "-q", "--detach", str(clean), "HEAD")
    patch = work_tree.parent / "change.diff"
    patch.write_bytes(diff)
    git(clean, "apply", "--binary", str(patch))
    assert (clean / "views" / "new.py").read_text() == "print('new')\n"
    assert (clean / "icon.bin").read_bytes() == bytes(range(256)) * 2
    assert (clean / "app.py").read_text() == "print('v2')\n"


def test_diff_leaves_out_what_the_snapshot_stores_apart(work_tree: Path) -> None:
    """An untracked secret, a SQLite database and a repository inside the work tree are stored
    on their own (or are the store): none is in the diff, nor written into git's objects."""
    (work_tree / "app.py").write_text("print('v2')\n")
    (work_tree / ".env").write_text("STRIPE_KEY=sk_live_never_in_git\n")
    (work_tree / "app.db").write_bytes(b"SQLite format 3\x00 pretend")
    (work_tree / ".lockstep" / "repository").mkdir(parents=True)
    (work_tree / ".lockstep" / "repository" / "config").write_text("encrypted\n")
    left_out = (work_tree / ".env", work_tree / "app.db", work_tree / "app.db-wal", work_tree / ".lockstep/repository")
    diff = read_diff(work_tree, left_out)
    assert b"+print('v2')" in diff
    assert b".env" not in diff and b"app.db" not in diff and b".lockstep" not in diff
    secret_blob = git(work_tree, "hash-object", ".env")
    missing = subprocess.run(["git", "-C", str(work_tree), "cat-file", "-e", secret_blob], capture_output=True)
    assert missing.returncode != 0


def test_build_commit_moves_nothing_until_published(work_tree: Path) -> None:
    """--commit's commit is made off the branch (a temporary index and commit-tree): HEAD, the
    index and the work tree stay as they were until publish_commit, which then leaves a clean
    tree; left-out files are in neither."""
    (work_tree / "app.py").write_text("print('v2')\n")
    (work_tree / "new.txt").write_text("new\n")
    (work_tree / ".env").write_text("SECRET=1\n")
    (work_tree / ".gitignore").write_text(".env\n")
    before = read_git_state(work_tree).commit
    status = git(work_tree, "status", "--porcelain")
    pending = build_commit(work_tree, "ship v2", (work_tree / ".env",))
    assert pending is not None and pending.parent == before
    assert read_git_state(work_tree).commit == before
    assert git(work_tree, "status", "--porcelain") == status
    assert git(work_tree, "ls-tree", "--name-only", pending.commit).split() == [
        ".gitignore",
        "app.py",
        "logo.bin",
        "new.txt",
    ]
    publish_commit(work_tree, pending)
    state = read_git_state(work_tree)
    assert state.commit == pending.commit and state.branch == "main" and state.dirty is False
    assert git(work_tree, "log", "-1", "--format=%s") == "ship v2"
    assert git(work_tree, "rev-parse", "HEAD~1") == before


def test_build_commit_refuses_during_a_merge(work_tree: Path) -> None:
    """`git commit` would record the merge's second parent; a commit-tree on HEAD alone would not."""
    git(work_tree, "checkout", "-q", "-b", "side")
    (work_tree / "app.py").write_text("print('side')\n")
    git(work_tree, "commit", "-q", "-am", "side")
    git(work_tree, "checkout", "-q", "main")
    (work_tree / "other.txt").write_text("main\n")
    git(work_tree, "add", "other.txt")
    git(work_tree, "commit", "-q", "-m", "main")
    git(work_tree, "merge", "-q", "--no-commit", "side")
    with pytest.raises(UsageError, match="MERGE_HEAD"):
        build_commit(work_tree, "merge side")


def test_prepare_commit_refuses_a_secret_git_would_take_in(work_tree: Path) -> None:
    """`git add -A` committed a .env that [files] secrets lists but .gitignore does not: into
    history, for good. --commit refuses and names it; nothing is committed."""
    (work_tree / "app.py").write_text("print('v2')\n")
    (work_tree / ".env").write_text("STRIPE_KEY=sk_live_never_in_git\n")
    before = read_git_state(work_tree).commit
    config = CodeConfig(kind="git", path=work_tree)
    request = SnapshotRequest(project_directory=work_tree, commit=True, message="ship v2")
    with pytest.raises(UsageError, match=r"secret files.*\.env") as raised:
        prepare_code(config, request, StoredApart(secrets=(work_tree / ".env",)))
    assert raised.value.hint is not None and ".gitignore" in raised.value.hint
    assert read_git_state(work_tree).commit == before
    assert git(work_tree, "status", "--porcelain").splitlines() == ["M app.py", "?? .env"]  # (stripped)

    (work_tree / ".gitignore").write_text(".env\n")
    prepared = prepare_code(config, request, StoredApart(secrets=(work_tree / ".env",)))
    assert prepared is not None and prepared.git is not None and prepared.pending_commit is not None
    assert prepared.git.commit == prepared.pending_commit.commit and prepared.git.dirty is False
    assert read_git_state(work_tree).commit == before  # moved only once the snapshot is written


def test_prepare_code_refuses_a_dirty_tree_unless_allowed(work_tree: Path) -> None:
    (work_tree / "app.py").write_text("print('v2')\n")
    config = CodeConfig(kind="git", path=work_tree)
    with pytest.raises(UsageError, match="--allow-dirty"):
        prepare_code(config, SnapshotRequest(project_directory=work_tree), StoredApart())
    allowed = prepare_code(config, SnapshotRequest(project_directory=work_tree, allow_dirty=True), StoredApart())
    assert allowed is not None and allowed.git is not None and allowed.git.dirty
    from_config = prepare_code(
        CodeConfig(kind="git", path=work_tree, allow_dirty=True), SnapshotRequest(work_tree), StoredApart()
    )
    assert from_config is not None and from_config.git is not None and from_config.git.dirty


def test_prepare_code_without_code_records_nothing(tmp_path: Path) -> None:
    assert prepare_code(CodeConfig(), SnapshotRequest(project_directory=tmp_path), StoredApart()) is None
    with pytest.raises(UsageError, match="--commit"):
        prepare_code(CodeConfig(), SnapshotRequest(project_directory=tmp_path, commit=True, message="m"), StoredApart())


def test_a_repository_without_commits_is_a_usage_error_that_says_to_commit(tmp_path: Path) -> None:
    """Nothing is wrong with the source (exit 15 said so): a first commit is missing (exit 2)."""
    require_binary("git", "apt-get install git")
    git(tmp_path, "init", "-q")
    with pytest.raises(UsageError, match="has no commits yet") as raised:
        read_git_state(tmp_path)
    assert raised.value.hint is not None and "make a first commit" in raised.value.hint
    assert raised.value.exit_code == 2


def test_a_directory_outside_git_is_still_a_source_error(tmp_path: Path) -> None:
    require_binary("git", "apt-get install git")
    with pytest.raises(SourceError, match="not a git repository"):
        read_git_state(tmp_path)


def test_build_commit_in_a_new_repository_makes_a_root_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No HEAD to take as parent or to reset left-out files to: the commit has no parent, leaves
    out what the snapshot stores apart, and moves the unborn branch only once published."""
    require_binary("git", "apt-get install git")
    for name, value in GIT_IDENTITY.items():
        monkeypatch.setenv(name, value)
    git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "app.py").write_text("print('v1')\n")
    (tmp_path / "app.db").write_bytes(b"sqlite")
    git(tmp_path, "add", "app.db")  # staged by the user, but stored apart by the snapshot
    pending = build_commit(tmp_path, "first", [tmp_path / "app.db"])
    assert pending is not None and pending.parent is None
    assert git(tmp_path, "ls-tree", "--name-only", pending.commit).split() == ["app.py"]
    assert git(tmp_path, "rev-list", "--all") == ""  # not on the branch yet
    publish_commit(tmp_path, pending)
    assert git(tmp_path, "rev-parse", "main") == pending.commit
    assert git(tmp_path, "rev-list", "--parents", "-n", "1", "HEAD") == pending.commit


def test_the_temporary_index_keeps_the_index_time_git_judges_racy_entries_by(work_tree: Path) -> None:
    """File times come from a coarse clock, so a file rewritten (same size) in the tick its
    index entry was written has the stat data git recorded. git then re-reads it only because
    the entry is not older than the index file ("racy git"); the temporary index was a copy
    stamped now, which hid such a change, and the diff came out empty (seen once in CI, under
    load). The copy keeps the index's time."""
    from lockstep.pipeline.code import _TemporaryIndex

    index = work_tree / ".git" / "index"
    os.utime(index, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    copy = _TemporaryIndex(work_tree)
    try:
        assert (Path(copy.env["GIT_INDEX_FILE"]).stat().st_mtime_ns) == index.stat().st_mtime_ns
    finally:
        copy.remove()
