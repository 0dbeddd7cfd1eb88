"""Recording which code a snapshot goes with: a git commit, or a release directory.

A snapshot of databases is only worth restoring next to the code that wrote them, so the commit
is recorded and a dirty work tree is refused: its changes exist nowhere but on this disk. With
`allow_dirty` the uncommitted diff is stored instead: every change against HEAD, untracked files
included, staged in a temporary index so that the user's own index is never touched. Files the
snapshot stores on their own (secrets, SQLite databases, a repository inside the work tree) are
left out of that diff. Every git command is an argv list run through lockstep.process.
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
    return run_capture(git_command(work_tree, *arguments), timeout=GIT_TIMEOUT_SECONDS)


def read_git_state(work_tree: Path) -> GitState:
    """HEAD's commit, branch and author, and whether `git status --porcelain` lists anything."""
    try:
        commit = _git(work_tree, "rev-parse", "--verify", "HEAD").strip()
    except SourceError as error:
        raise SourceError(
            f"cannot read the git commit of {work_tree}: {error.message}",
            "make a first commit, or set [code] kind to match how the code is deployed",
        ) from error
    branch = _git(work_tree, "rev-parse", "--abbrev-ref", "HEAD").strip()
    author = _git(work_tree, "log", "-1", "--format=%an <%ae>", "HEAD").strip()
    status = _git(work_tree, "status", "--porcelain")
    return GitState(commit=commit, branch=None if branch == "HEAD" else branch, author=author, dirty=bool(status))


def commit_all(work_tree: Path, message: str) -> None:
    """`git add -A` then `git commit -m MESSAGE`: the work tree as it is becomes the recorded commit."""
    if not message.strip():
        raise UsageError("--commit needs a commit message", "pass -m MESSAGE")
    _git(work_tree, "add", "-A")
    _git(work_tree, "commit", "--quiet", "-m", message)


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
            shutil.copyfile(index, path)
        self.env = {"GIT_INDEX_FILE": str(path)}

    def git(self, top: Path, *arguments: str, literal: bool = False) -> str:
        env = {**self.env, "GIT_LITERAL_PATHSPECS": "1"} if literal else self.env
        return run_capture(Command(("git", "-C", str(top), *arguments), env=env), timeout=GIT_TIMEOUT_SECONDS)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _stage_work_tree(index: _TemporaryIndex, top: Path, left_out: list[str]) -> None:
    """Stage every change, untracked (not ignored) files included, except `left_out`, which
    keep HEAD's version.

    `git add -A -- . ':(exclude)PATH'` would be one command, but it fails when PATH is ignored
    (git reports it as an ignored path it was asked to add). So tracked files are updated with
    `add -u` (which never looks at ignored files), and the untracked ones are listed by
    `ls-files` and added by name. Left-out content is never read into git's object store; the
    reset drops whatever the user had staged for it."""
    excluded = [f":(exclude,literal){name}" for name in left_out]
    index.git(top, "add", "-u", "--", ".", *excluded)
    untracked = index.git(top, "ls-files", "-z", "--others", "--exclude-standard", "--", ".", *excluded)
    if untracked.strip("\0"):
        names = index.directory / "untracked"
        names.write_bytes(os.fsencode(untracked))
        index.git(top, "add", f"--pathspec-from-file={names}", "--pathspec-file-nul", literal=True)
    if left_out:
        index.git(top, "reset", "-q", "HEAD", "--", *left_out, literal=True)


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
