"""Recording which code a snapshot goes with: a git commit, or a release directory.

A snapshot of databases is only worth restoring next to the code that wrote them, so the commit
is recorded and a dirty work tree is refused: its changes exist nowhere but on this disk. With
`allow_dirty` the uncommitted diff (`git diff HEAD --binary`) is stored instead. Every git command
is an argv list run through lockstep.process.
"""

from __future__ import annotations

import os
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


def uncommitted_diff(work_tree: Path) -> StreamingProcess:
    """`git diff HEAD --binary` as a byte stream (binary-safe; untracked files are not in it)."""
    return StreamingProcess(git_command(work_tree, "diff", "HEAD", "--binary"))


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
