"""`lockstep init`: write a commented starting lockstep.toml for the project in a directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lockstep.config.loading import CONFIG_FILE_NAME
from lockstep.config.sample import render_sample
from lockstep.errors import UsageError


@dataclass(frozen=True)
class InitProjectResult:
    path: Path
    git_work_tree: bool
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
    return InitProjectResult(path=path, git_work_tree=(directory / ".git").exists(), replaced=existed)
