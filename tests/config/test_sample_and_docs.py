"""The sample lockstep.toml and docs/config.md are generated from the model: they load and they match."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lockstep.config.loading import load_config
from lockstep.config.model import ProjectConfig
from lockstep.config.sample import iter_keys, render_reference, render_sample

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(autouse=True)
def no_repository_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCKSTEP_REPOSITORY", raising=False)


@pytest.mark.parametrize("git", [True, False])
def test_the_sample_loads_as_written(tmp_path: Path, git: bool) -> None:
    """`lockstep init`'s file must be a valid config before anyone edits it, in a git tree or not."""
    if git:
        (tmp_path / ".git").mkdir()
    path = tmp_path / "lockstep.toml"
    path.write_text(render_sample(tmp_path), encoding="utf-8")
    config = load_config(path)
    assert config.databases["main"].engine == "postgresql"
    assert config.code.kind == ("git" if git else None)
    text = path.read_text(encoding="utf-8")
    assert ("is a git work tree" in text) is git
    assert ("is not a git work tree" in text) is not git


def test_the_sample_describes_every_key() -> None:
    """Each key of the model appears in the sample with its description, set or commented out."""
    text = render_sample()
    for key in iter_keys():
        name = key.path.rsplit(".", 1)[-1]
        if not key.is_table:
            assert f"{name} = " in text, key.path
        assert key.description.split()[0] in text, key.path


def test_the_commented_examples_are_valid_toml() -> None:
    """Each commented-out key is ready to uncomment: its example parses as TOML."""
    names = {key.path.rsplit(".", 1)[-1] for key in iter_keys() if not key.is_table}
    commented = [
        line[2:]
        for line in render_sample().splitlines()
        if line.startswith("# ") and line[2:].split(" = ", 1)[0] in names
    ]
    assert len(commented) >= 12
    for line in commented:
        assert tomllib.loads(line), line


def test_every_field_has_a_description_and_an_example() -> None:
    """The sample and the docs depend on both."""
    keys = list(iter_keys())
    assert len(keys) > 15
    for key in keys:
        assert key.description and key.example, key.path


def test_the_reference_documents_every_key_with_its_default() -> None:
    """docs/config.md lists each key, and the defaults are the model's."""
    text = render_reference()
    for key in iter_keys():
        assert f"`{key.path}`" in text
    defaults = ProjectConfig.model_validate({"repository": {"url": "r"}}).retention
    assert f"- default: `{defaults.keep_monthly}`" in text


def test_config_reference_matches_the_model() -> None:
    """docs/config.md is generated; it must match the model exactly."""
    completed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_config_reference.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr


def test_watch_max_exits_is_documented_with_its_default_and_an_example() -> None:
    """The key that makes one crash in the watch window roll back: its default (0) and how to allow more."""
    reference = render_reference()
    section = reference.split("### `deploy.watch_max_exits`", 1)[1].split("\n### ", 1)[0]
    assert "- default: `0`" in section and "watch_max_exits = 1" in section
    assert "watch_max_exits = " in render_sample()
    config = ProjectConfig.model_validate({"repository": {"url": "r"}, "deploy": {"watch_max_exits": 2}})
    assert config.deploy.watch_max_exits == 2
    assert ProjectConfig.model_validate({"repository": {"url": "r"}}).deploy.watch_max_exits == 0
