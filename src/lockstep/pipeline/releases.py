"""Release directories, Capistrano-style: `releases/<deploy-id>/` built from a git commit, with the
paths listed in `app.shared` linked to the environment's `shared/` so they outlive releases.
"""

from __future__ import annotations

import contextlib
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lockstep.config.deploy_model import AppConfig
from lockstep.errors import SourceError, UsageError
from lockstep.layout import EnvironmentLayout
from lockstep.pipeline.code import SHORT_COMMIT_LENGTH, git_command
from lockstep.process import run_capture, run_to_file

GIT_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class ResolvedRef:
    """A git ref the user named, resolved to its commit."""

    ref: str
    commit: str
    subject: str

    @property
    def short_commit(self) -> str:
        return self.commit[:SHORT_COMMIT_LENGTH]


def resolve_ref(work_tree: Path, ref: str) -> ResolvedRef:
    """The commit `ref` names; a clear error when it names none."""
    try:
        commit = run_capture(git_command(work_tree, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")).strip()
    except SourceError:
        raise UsageError(
            f"git ref {ref!r} does not exist in {work_tree}",
            "name a branch, tag or commit that exists (git log --oneline shows them)",
        ) from None
    subject = run_capture(git_command(work_tree, "log", "-1", "--format=%s", commit)).strip()
    return ResolvedRef(ref=ref, commit=commit, subject=subject)


def new_deploy_id(commit: str, now: datetime | None = None) -> str:
    """`YYYYMMDD_HHMMSS_<short commit>`, in UTC: sortable, and says what was deployed."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment:%Y%m%d_%H%M%S}_{commit[:7]}"


def build_release_directory(
    work_tree: Path, app: AppConfig, layout: EnvironmentLayout, release_id: str, commit: str
) -> Path:
    """Extract `app.source` at `commit` into releases/<release_id>/ and link the shared paths."""
    target = layout.release_directory(release_id)
    if target.exists():
        raise UsageError(f"release directory {target} already exists", "wait a second and deploy again")
    source = (app.source or ".").strip("/") or "."
    tree = commit if source == "." else f"{commit}:{source}"
    layout.releases.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{release_id}-", dir=layout.releases))
    try:
        archive = staging / "release.tar"
        run_to_file(git_command(work_tree, "archive", "--format=tar", tree), archive, timeout=GIT_TIMEOUT_SECONDS)
        tree_directory = staging / "tree"
        tree_directory.mkdir()
        with tarfile.open(archive) as tar:
            tar.extractall(tree_directory, filter="data")
        archive.unlink()
        link_shared_paths(tree_directory, app.shared, layout.shared)
        tree_directory.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def link_shared_paths(release: Path, shared_paths: list[str], shared: Path) -> None:
    """Replace each shared path in the release by a link into shared/ (seeded from the release once)."""
    for relative in shared_paths:
        relative = relative.strip("/")
        if not relative or ".." in Path(relative).parts:
            raise UsageError(f"app.shared entry {relative!r} is not a relative path inside the release")
        in_release = release / relative
        in_shared = shared / relative
        if not in_shared.exists():
            in_shared.parent.mkdir(parents=True, exist_ok=True)
            if in_release.exists():
                shutil.move(str(in_release), str(in_shared))  # the first release seeds it
            else:
                in_shared.mkdir(parents=True)
        if in_release.is_symlink() or in_release.is_file():
            in_release.unlink()
        elif in_release.is_dir():
            shutil.rmtree(in_release)
        in_release.parent.mkdir(parents=True, exist_ok=True)
        in_release.symlink_to(in_shared.resolve())


def prune_releases(layout: EnvironmentLayout, keep: int, protected: set[str]) -> list[str]:
    """Remove the oldest release directories beyond `keep`, never one in `protected` (running ones)."""
    if not layout.releases.is_dir():
        return []
    releases = sorted(
        entry.name for entry in layout.releases.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )
    removable = [name for name in releases[: max(0, len(releases) - keep)] if name not in protected]
    for name in removable:
        with contextlib.suppress(OSError):
            shutil.rmtree(layout.releases / name)
    return removable


def substitute(value: str, release: Path, shared: Path, port: int | None = None) -> str:
    """Fill {release}, {shared} and {port} in a config value."""
    value = value.replace("{release}", str(release)).replace("{shared}", str(shared))
    if port is not None:
        value = value.replace("{port}", str(port))
    return value
