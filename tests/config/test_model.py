"""The config model on its own: defaults, database URLs, derived engines and environment merging."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from lockstep.config.model import DatabaseConfig, ProjectConfig, merge_tables
from lockstep.errors import UsageError

MINIMAL: dict[str, Any] = {
    "repository": {"url": "local:.lockstep/repository"},
    "databases": {"main": {"url": "postgresql://postgres@127.0.0.1:5432/shop"}},
}


def test_defaults_come_from_the_model() -> None:
    """The retention defaults the issue names live in the model."""
    config = ProjectConfig.model_validate(MINIMAL)
    assert config.retention.keep_daily == 7
    assert config.retention.keep_weekly == 4
    assert config.retention.keep_monthly == -1
    assert config.retention.keep_pre_deploy == 10
    assert config.retention.keep_pre_restore == 10
    assert config.code.allow_dirty is False
    assert config.files.config == []


@pytest.mark.parametrize(
    ("url", "engine"),
    [
        ("postgresql://postgres@127.0.0.1:5432/shop", "postgresql"),
        ("mysql://root@db:3306/shop", "mysql"),
        ("mariadb://root@db/shop", "mariadb"),
        ("sqlite:///var/lib/shop.db", "sqlite"),
    ],
)
def test_engine_is_derived_from_the_url_scheme(url: str, engine: str) -> None:
    """The scheme names the engine (and the adapter module)."""
    assert DatabaseConfig(url=url).engine == engine


@pytest.mark.parametrize("url", ["oracle://db/shop", "postgresql:/shop", "sqlite://host/shop.db", "mysql:///shop"])
def test_unsupported_or_malformed_database_urls_are_refused(url: str) -> None:
    """Only the four engines, each in its own URL shape."""
    with pytest.raises(ValidationError):
        DatabaseConfig(url=url)


def test_password_env_must_be_a_variable_name() -> None:
    """Putting the password itself in password_env is caught."""
    with pytest.raises(ValidationError, match="NAME of an environment variable"):
        DatabaseConfig(url="postgresql://u@h/db", password_env="hunter 2!")


def test_relative_paths_resolve_against_the_base_directory(tmp_path: Path) -> None:
    """Paths in the file are relative to the file's directory, not the current one."""
    source = {
        **MINIMAL,
        "repository": {"url": "backups/repo", "password_file": "secret/password"},
        "files": {"config": ["config/*.yml", "/etc/nginx/shop.conf"]},
    }
    config = ProjectConfig.from_source(source, tmp_path)
    assert config.repository.url == f"local:{tmp_path / 'backups/repo'}"
    assert config.repository.password_file == tmp_path / "secret/password"
    assert config.files.config == [str(tmp_path / "config/*.yml"), "/etc/nginx/shop.conf"]


def test_file_patterns_match_in_a_project_whose_path_has_glob_characters(tmp_path: Path) -> None:
    """/tmp/proj[1]/config/*.yml was a glob over /tmp/proj1/...: the project's own files did not
    match. The project path is escaped, the pattern written in lockstep.toml is not."""
    base = tmp_path / "proj[1]"
    (base / "config").mkdir(parents=True)
    (base / "config" / "app.yml").write_text("currency: EUR\n")
    (tmp_path / "proj1" / "config").mkdir(parents=True)
    (tmp_path / "proj1" / "config" / "other.yml").write_text("not this project's\n")
    source = {**MINIMAL, "files": {"config": ["config/*.yml"], "secrets": ["config/[a]pp.yml"]}}
    files = ProjectConfig.from_source(source, base).files
    assert glob.glob(files.config[0]) == [str(base / "config" / "app.yml")]
    assert glob.glob(files.secrets[0]) == [str(base / "config" / "app.yml")]


def test_s3_repository_url_is_kept_as_written(tmp_path: Path) -> None:
    """Only local paths are resolved."""
    source = {**MINIMAL, "repository": {"url": "s3:http://127.0.0.1:9000/bucket/prefix"}}
    assert ProjectConfig.from_source(source, tmp_path).repository.url == "s3:http://127.0.0.1:9000/bucket/prefix"


def test_environment_overrides_merge_key_by_key(tmp_path: Path) -> None:
    """production replaces one key of one database; staging inherits everything."""
    source = {
        **MINIMAL,
        "retention": {"keep_daily": 3},
        "environments": {
            "production": {
                "databases": {"main": {"url": "postgresql://deploy@db.internal:5432/shop", "password_env": "PGPASS"}},
                "retention": {"keep_weekly": 12},
            },
            "staging": {},
        },
    }
    config = ProjectConfig.from_source(source, tmp_path)
    production = config.resolve("production")
    assert production.databases["main"].url == "postgresql://deploy@db.internal:5432/shop"
    assert production.databases["main"].password_env == "PGPASS"
    assert production.retention.keep_daily == 3
    assert production.retention.keep_weekly == 12
    assert production.repository.url == f"local:{tmp_path / '.lockstep/repository'}"
    staging = config.resolve("staging")
    assert staging.databases["main"].url == "postgresql://postgres@127.0.0.1:5432/shop"
    assert staging.retention.keep_weekly == 4
    assert config.resolve(None) is config


def test_unknown_environment_lists_the_known_ones(tmp_path: Path) -> None:
    """A typo in an environment name says which names exist."""
    config = ProjectConfig.from_source({**MINIMAL, "environments": {"production": {}, "staging": {}}}, tmp_path)
    with pytest.raises(UsageError) as raised:
        config.resolve("prod")
    assert "production, staging" in str(raised.value)


def test_merge_tables_replaces_lists_and_keeps_the_base_untouched() -> None:
    """Lists are values, not tables: an override replaces them."""
    base = {"files": {"config": ["a"]}, "retention": {"keep_daily": 1}}
    merged = merge_tables(base, {"files": {"config": ["b"]}})
    assert merged == {"files": {"config": ["b"]}, "retention": {"keep_daily": 1}}
    assert base["files"] == {"config": ["a"]}


def test_merge_tables_replaces_a_health_checks_kind() -> None:
    """A health check is http, tcp or command: an environment's kind replaces the top level's;
    `tcp = false` chooses none and leaves it."""
    base = {"app": {"components": {"web": {"health": {"http": "/health", "timeout": 3.0}}}}}
    merged = merge_tables(base, {"app": {"components": {"web": {"health": {"command": "./check"}}}}})
    assert merged["app"]["components"]["web"]["health"] == {"command": "./check", "timeout": 3.0}
    kept = merge_tables(base, {"app": {"components": {"web": {"health": {"tcp": False}}}}})
    assert kept["app"]["components"]["web"]["health"] == {"http": "/health", "timeout": 3.0, "tcp": False}


def _with_copies(copies: dict[str, Any]) -> dict[str, Any]:
    return {**MINIMAL, "repository": {**MINIMAL["repository"], "copies": copies}}


def test_repository_copies_resolve_like_the_repository(tmp_path: Path) -> None:
    """[repository.copies.NAME]: local paths and password files from the config's directory, S3 as written."""
    config = ProjectConfig.from_source(
        _with_copies(
            {
                "usb": {"url": "../usb", "password_file": "secrets/usb-password"},
                "offsite": {"url": "s3:https://s3.eu-central-1.amazonaws.com/acme/shop", "password_env": "OFFSITE_PW"},
            }
        ),
        tmp_path,
    )
    usb, offsite = config.repository.copies["usb"], config.repository.copies["offsite"]
    assert usb.url == f"local:{tmp_path / '../usb'}"
    assert usb.password_file == tmp_path / "secrets/usb-password"
    assert offsite.url == "s3:https://s3.eu-central-1.amazonaws.com/acme/shop"
    assert offsite.password_env == "OFFSITE_PW"


@pytest.mark.parametrize(
    ("copies", "message"),
    [
        ({"usb": {"url": "/mnt/usb"}}, "no password source for this copy"),
        ({"usb": {"url": "/mnt/usb", "password_env": "A", "password_file": "f"}}, "keep only one of them"),
        ({"usb": {"url": "/mnt/usb", "password_env": "hunter2 hunter2"}}, "NAME of an environment variable"),
        ({"usb": {"url": "s3:https://key:secret@s3.example.com/b", "password_env": "A"}}, "contains a password"),
        ({"usb": {"url": "sftp:host:/srv", "password_env": "A"}}, "unsupported repository location"),
        ({"my copy": {"url": "/mnt/usb", "password_env": "A"}}, "copy name 'my copy' is not allowed"),
        ({"self": {"url": "local:.lockstep/repository", "password_env": "A"}}, "the repository's own url"),
        ({"usb": {"url": "/mnt/usb", "password_env": "A", "pasword_file": "f"}}, "pasword_file"),
    ],
)
def test_invalid_repository_copies_are_refused(copies: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        ProjectConfig.from_source(_with_copies(copies))
    assert message in str(raised.value)


def test_an_environment_replaces_a_copys_password_source(tmp_path: Path) -> None:
    """password_file, password_command and password_env of a copy are alternatives: an
    environment that sets one drops the top level's."""
    source = _with_copies({"usb": {"url": "/mnt/usb", "password_file": "usb-password"}})
    source["environments"] = {"production": {"repository": {"copies": {"usb": {"password_env": "USB_PW"}}}}}
    production = ProjectConfig.from_source(source, tmp_path).resolve("production")
    assert production.repository.copies["usb"].password_env == "USB_PW"
    assert production.repository.copies["usb"].password_file is None
