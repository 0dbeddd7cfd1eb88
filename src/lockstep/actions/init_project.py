"""`lockstep init`: write a commented starting lockstep.toml for the project in a directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lockstep.config.loading import CONFIG_FILE_NAME
from lockstep.config.model import git_work_tree
from lockstep.config.sample import render_sample
from lockstep.errors import UsageError


@dataclass(frozen=True)
class InitProjectResult:
    path: Path
    # The git work tree the directory is in (it, or one above it): the code a snapshot records,
    # as the config's [code] defaults find it. None outside any work tree.
    work_tree: Path | None
    replaced: bool


def init_project(directory: Path, force: bool = False) -> InitProjectResult:
    """Write lockstep.toml into `directory`; an existing one is replaced only with `force`.

    The sample comes from the config model, so it always loads as written.
    """
    path = directory / CONFIG_FILE_NAME
    existed = path.exists()
    if existed and not force:
        raise UsageError(f"{path} already exists", "edit it, or pass --force to replace it with a fresh sample")
    try:
        path.write_text(render_sample(directory), encoding="utf-8")
    except OSError as error:
        raise UsageError(f"cannot write {path}: {error.strerror}", "check the directory's permissions") from None
    return InitProjectResult(path=path, work_tree=git_work_tree(directory), replaced=existed)
