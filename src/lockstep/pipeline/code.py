"""Recording which code a snapshot goes with: a git commit, or a release directory.

A snapshot of databases is only worth restoring next to the code that wrote them, so the commit
is recorded and a dirty work tree is refused: its changes exist nowhere but on this disk. With
`allow_dirty` the uncommitted diff is stored instead: every change against HEAD, untracked files
included, staged in a temporary index so that the user's own index is never touched. Files the
snapshot stores on their own (secrets, SQLite databases, a repository inside the work tree) are
left out of that diff and out of a --commit. Every git command is an argv list run
through lockstep.process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lockstep.errors import SourceError, UsageError
from lockstep.process import Command, StreamingProcess, run_capture

GIT_TIMEOUT_SECONDS = 120.0
SHORT_COMMIT_LENGTH = 12


@dataclass(frozen=True)
class GitState:
    """A git work tree's HEAD and whether it has uncommitted changes."""

    commit: str
    branch: str | None  # None when HEAD is detached
    author: str
    dirty: bool

    @property
    def short_commit(self) -> str:
        return self.commit[:SHORT_COMMIT_LENGTH]


def git_command(work_tree: Path, *arguments: str) -> Command:
    """`git -C WORK_TREE ARGUMENTS...` as data."""
    return Command(("git", "-C", str(work_tree), *arguments))


def _git(work_tree: Path, *arguments: str) -> str:
    try:
        return run_capture(git_command(work_tree, *arguments), timeout=GIT_TIMEOUT_SECONDS)
    except SourceError as error:
        raise _ownership_error(work_tree, error) or error from None


def _ownership_error(work_tree: Path, error: SourceError) -> SourceError | None:
    """Git's "dubious ownership" refusal, said plainly: a root crontab backing up a work tree that
    the deploy user owns hits it, and git's own last lines (a `git config --global` command,
    which fails where cron leaves HOME unset) did not say what was wrong.

    lockstep does not pass `-c safe.directory` itself: git refuses such a tree because its
    .git/config could make git run its owner's commands as the user running lockstep."""
    if "safe.directory" not in error.message:
        return None
    try:
        owner = f"uid {work_tree.stat().st_uid}"
    except OSError:
        owner = "another user"
    return SourceError(
        f"git refuses to read {work_tree}: it belongs to {owner}, and lockstep runs as uid {os.geteuid()} "
        "(git's safe.directory check against dubious ownership)",
        f"run lockstep as the owner of {work_tree} (from that user's crontab), or, if you trust that user, "
        f"allow the directory for every user: git config --system --add safe.directory {work_tree}",
    )


class NoCommitsYet(UsageError):
    """A git work tree whose branch has no commit yet (`git init` and nothing committed): there
    is no version to record, so a snapshot is refused until a first commit exists."""


def head_commit(work_tree: Path) -> str | None:
    """HEAD's commit; None in a repository whose branch has no commit yet. A directory that is
    not a git work tree (or that git refuses to read) is a SourceError."""
    try:
        return _git(work_tree, "rev-parse", "--verify", "HEAD").strip()
    except SourceError as error:
        if _ownership_error(work_tree, error) is not None:
            raise
        if unborn_branch(work_tree) is not None:
            return None
        raise SourceError(
            f"cannot read the git commit of {work_tree}: {error.message}",
            "make a first commit, or set [code] kind to match how the code is deployed",
        ) from error


def unborn_branch(work_tree: Path) -> str | None:
    """The branch HEAD names while it has no commit yet; None when it has one, HEAD is
    detached, or this is no git work tree."""
    try:
        branch = _git(work_tree, "symbolic-ref", "-q", "--short", "HEAD").strip()
    except SourceError:
        return None  # HEAD is detached, or this is no git work tree
    try:
        _git(work_tree, "rev-parse", "-q", "--verify", "HEAD")
    except SourceError:
        return branch
    return None


def current_branch(work_tree: Path) -> str | None:
    """The branch HEAD names (with or without commits); None when HEAD is detached."""
    try:
        return _git(work_tree, "symbolic-ref", "-q", "--short", "HEAD").strip() or None
    except SourceError:
        return None


def read_git_state(work_tree: Path, ignore: tuple[Path, ...] = ()) -> GitState:
    """HEAD's commit, branch and author, and whether `git status --porcelain` lists anything
    outside the `ignore` directories (lockstep's own state and repository, when they are inside).
    A branch without commits is NoCommitsYet (exit 2): nothing is wrong with the source, a
    first commit is missing."""
    commit = head_commit(work_tree)
    if commit is None:
        raise NoCommitsYet(
            f"the git work tree {work_tree} has no commits yet, so there is no version of the code to record",
            "make a first commit (git add -A && git commit -m MESSAGE), or set [code] kind to match how the "
            "code is deployed",
        )
    branch = _git(work_tree, "rev-parse", "--abbrev-ref", "HEAD").strip()
    author = _git(work_tree, "log", "-1", "--format=%an <%ae>", "HEAD").strip()
    excludes = []
    root = work_tree.resolve()
    for directory in ignore:
        try:
            relative = directory.resolve().relative_to(root)
        except ValueError:
            continue  # outside the work tree: git does not see it anyway
        if relative.parts:
            excludes.append(f":(exclude,literal){relative.as_posix()}")
    status = _git(work_tree, "status", "--porcelain", *(["--", ".", *excludes] if excludes else []))
    return GitState(commit=commit, branch=None if branch == "HEAD" else branch, author=author, dirty=bool(status))


@dataclass(frozen=True)
class PendingCommit:
    """A commit of the work tree that is not on its branch yet: it is moved there only once the
    snapshot that records it is written, so a failed snapshot leaves no commit behind."""

    commit: str
    parent: str | None  # None for the first commit of a repository
    author: str


def _top_level(work_tree: Path) -> Path:
    """The work tree's root: git reports paths, and takes pathspecs, relative to it."""
    return Path(_git(work_tree, "rev-parse", "--show-toplevel").strip())


def _relative_paths(top: Path, paths: Sequence[Path]) -> list[str]:
    """`paths` inside the work tree, relative to its root; the others cannot be in git anyway."""
    relative: list[str] = []
    for path in paths:
        for candidate in (Path(os.path.abspath(path)), path.parent.resolve() / path.name):
            with contextlib.suppress(ValueError):
                relative.append(candidate.relative_to(top).as_posix())
                break
    return [name for name in relative if name not in ("", ".")]


class _TemporaryIndex:
    """A copy of the work tree's index (its stat cache saves hashing every file again) in a
    directory of its own, where git can also make its index.lock."""

    def __init__(self, top: Path) -> None:
        index = top / _git(top, "rev-parse", "--git-path", "index").strip()
        self.directory = Path(tempfile.mkdtemp(prefix="lockstep-index-"))
        path = self.directory / "index"
        with contextlib.suppress(FileNotFoundError):
            # copy2 keeps the index's mtime: git trusts an entry's stat data only when the file
            # was modified before the index was written ("racy git"); a copy stamped now would
            # make a change written in the same clock tick as the index look unchanged.
            shutil.copy2(index, path)
        self.env = {"GIT_INDEX_FILE": str(path)}

    def git(self, top: Path, *arguments: str, literal: bool = False) -> str:
        env = {**self.env, "GIT_LITERAL_PATHSPECS": "1"} if literal else self.env
        return run_capture(Command(("git", "-C", str(top), *arguments), env=env), timeout=GIT_TIMEOUT_SECONDS)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _stage_work_tree(index: _TemporaryIndex, top: Path, left_out: list[str], born: bool = True) -> None:
    """Stage every change, untracked (not ignored) files included, except `left_out`, which
    keep HEAD's version.

    `git add -A -- . ':(exclude)PATH'` would be one command, but it fails when PATH is ignored
    (git reports it as an ignored path it was asked to add). So tracked files are updated with
    `add -u` (which never looks at ignored files), and the untracked ones are listed by
    `ls-files` and added by name. Left-out content is never read into git's object store; the
    reset drops whatever the user had staged for it (in a repository without commits yet, not
    `born`, there is no HEAD to reset to, so it is removed from the index instead)."""
    excluded = [f":(exclude,literal){name}" for name in left_out]
    index.git(top, "add", "-u", "--", ".", *excluded)
    untracked = index.git(top, "ls-files", "-z", "--others", "--exclude-standard", "--", ".", *excluded)
    if untracked.strip("\0"):
        names = index.directory / "untracked"
        names.write_bytes(os.fsencode(untracked))
        index.git(top, "add", f"--pathspec-from-file={names}", "--pathspec-file-nul", literal=True)
    if left_out and born:
        index.git(top, "reset", "-q", "HEAD", "--", *left_out, literal=True)
    elif left_out:  # no HEAD to reset to: nothing of theirs may be staged at all
        index.git(top, "rm", "-r", "-q", "--cached", "--ignore-unmatch", "--", *left_out, literal=True)


class _DiffStream(StreamingProcess):
    """`git diff --cached` over a temporary index, removed once the diff has been read."""

    def __init__(self, command: Command, index: _TemporaryIndex) -> None:
        self._index = index
        super().__init__(command)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._index.remove()

    def kill(self) -> None:
        try:
            super().kill()
        finally:
            self._index.remove()


def uncommitted_diff(work_tree: Path, left_out: Sequence[Path] = ()) -> StreamingProcess:
    """Every change against HEAD as a binary-safe diff, untracked (not ignored) files included,
    `left_out` excluded; `git apply --binary` takes it back onto the commit."""
    top = _top_level(work_tree)
    index = _TemporaryIndex(top)
    try:
        _stage_work_tree(index, top, _relative_paths(top, left_out))
        return _DiffStream(
            Command(("git", "-C", str(top), "diff", "--cached", "--binary", "HEAD"), env=index.env), index
        )
    except BaseException:
        index.remove()
        raise


def uncommitted_paths(work_tree: Path, paths: Sequence[Path]) -> list[str]:
    """Which of `paths` differ from HEAD (untracked, changed or staged; not ignored): what a
    commit of every change would take in."""
    top = _top_level(work_tree)
    relative = _relative_paths(top, paths)
    if not relative:
        return []
    pathspecs = [f":(literal){name}" for name in relative]
    status = _git(top, "status", "--porcelain", "-z", "--untracked-files=all", "--", *pathspecs)
    return sorted(_porcelain_paths(status))


def _porcelain_paths(status: str) -> set[str]:
    """The paths of `git status --porcelain -z`: "XY path", a rename or copy followed by its source."""
    found: set[str] = set()
    entries = iter(status.split("\0"))
    for entry in entries:
        if len(entry) < 4:
            continue
        found.add(entry[3:])
        if entry[0] in "RC":
            next(entries, None)
    return found


def build_commit(work_tree: Path, message: str, left_out: Sequence[Path] = ()) -> PendingCommit | None:
    """Commit every change except `left_out` without moving the branch or touching the index:
    a temporary index, `git write-tree` and `git commit-tree` (which runs no hooks). None when
    nothing but `left_out` has changed. `publish_commit` moves the branch later."""
    if not message.strip():
        raise UsageError("--commit needs a commit message", "pass -m MESSAGE")
    top = _top_level(work_tree)
    _refuse_unfinished_operation(top)
    parent = head_commit(top)  # None: the first commit of a new repository
    index = _TemporaryIndex(top)
    try:
        _stage_work_tree(index, top, _relative_paths(top, left_out), born=parent is not None)
        tree = index.git(top, "write-tree").strip()
    finally:
        index.remove()
    if parent is None:
        if tree == _git(top, "hash-object", "-t", "tree", "/dev/null").strip():
            raise UsageError(
                f"--commit has nothing to commit: {top} has no commits and no files besides what the snapshot "
                "stores apart (secrets, databases, lockstep's own files)",
                "add the code's files (and `git add` them), then try again",
            )
    elif tree == _git(top, "rev-parse", "--verify", "HEAD^{tree}").strip():
        return None
    signing = ["-S"] if _config_flag(top, "commit.gpgSign") else []
    parents = [] if parent is None else ["-p", parent]
    commit = _git(top, "commit-tree", tree, *parents, *signing, "-m", message.strip()).strip()
    author = _git(top, "log", "-1", "--format=%an <%ae>", commit).strip()
    return PendingCommit(commit=commit, parent=parent, author=author)


def publish_commit(work_tree: Path, pending: PendingCommit) -> None:
    """Move HEAD's branch (or a detached HEAD) to the commit, only if it still points at the
    commit's parent, then reset the index to it (the work tree is not touched)."""
    subject = _git(work_tree, "log", "-1", "--format=%s", pending.commit).strip()
    try:
        # An empty old value: the branch must still have no commit (the first commit of a repository).
        old_value = pending.parent or ""
        _git(work_tree, "update-ref", "-m", f"commit (lockstep): {subject}", "HEAD", pending.commit, old_value)
    except SourceError as error:
        raise SourceError(
            f"the snapshot records commit {pending.commit[:SHORT_COMMIT_LENGTH]}, but HEAD moved while it was "
            f"written, so the commit was not put on it: {error.message}",
            f"bring it in with `git cherry-pick {pending.commit[:SHORT_COMMIT_LENGTH]}`",
        ) from error
    _git(work_tree, "reset", "-q")


def _refuse_unfinished_operation(top: Path) -> None:
    """A merge, cherry-pick or revert in progress: `git commit` would record its extra parent or
    finish it; a commit-tree with HEAD as its only parent would quietly lose that."""
    for name in ("MERGE_HEAD", "CHERRY_PICK_HEAD", "REVERT_HEAD"):
        try:
            _git(top, "rev-parse", "-q", "--verify", name)
        except SourceError:
            continue
        raise UsageError(
            f"a git operation is in progress in {top} ({name} exists)", "finish it with `git commit` first"
        )


def _config_flag(work_tree: Path, name: str) -> bool:
    try:
        return _git(work_tree, "config", "--type=bool", "--get", name).strip() == "true"
    except SourceError:  # not set
        return False


def snapshot_author(work_tree: Path | None) -> str:
    """Who takes the snapshot: git's user.name (and email) when set, else $USER."""
    if work_tree is not None:
        try:
            name = _git(work_tree, "config", "user.name").strip()
        except SourceError:
            name = ""
        if name:
            try:
                email = _git(work_tree, "config", "user.email").strip()
            except SourceError:
                email = ""
            return f"{name} <{email}>" if email else name
    return os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"
