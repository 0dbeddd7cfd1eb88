"""Find lockstep.toml, read it, and turn every problem in it into one line a person can act on.

Messages name the file, the key's full location and what to change; they never repeat the
values they reject, since a value in the wrong place may be a password.
"""

from __future__ import annotations

import difflib
import os
import tomllib
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from lockstep.config.model import ProjectConfig
from lockstep.config.sample import toml_value
from lockstep.errors import UsageError
from lockstep.redaction import Redactor, is_secret_name

CONFIG_FILE_NAME = "lockstep.toml"
REPOSITORY_VARIABLE = "LOCKSTEP_REPOSITORY"


def find_config(start: Path, explicit: Path | None) -> Path:
    """The config file to use: `explicit` (-c/--config) if given, else lockstep.toml in `start`."""
    if explicit is not None:
        if not explicit.is_file():
            raise UsageError(f"config file {explicit} does not exist", "check the -c/--config path")
        return explicit
    candidate = start / CONFIG_FILE_NAME
    if not candidate.is_file():
        raise UsageError(
            f"no {CONFIG_FILE_NAME} in {start}",
            "run `lockstep init` to create one, or pass -c/--config PATH",
        )
    return candidate


def load_config(path: Path, environment: str | None = None) -> ProjectConfig:
    """Read and validate `path`; with `environment`, that environment's merged configuration.

    Every environment is checked on load, so a typo in [environments.production] fails in staging too.
    Raises UsageError (exit code 2) with one line per problem.
    """
    shown = _display_name(path)
    source = _read_toml(path, shown)
    override = _repository_override()
    if override is not None:
        repository = source.setdefault("repository", {})
        if isinstance(repository, dict):
            repository["url"] = override
    base_directory = path.resolve().parent
    try:
        config = ProjectConfig.from_source(source, base_directory)
    except ValidationError as error:
        raise _usage_error(shown, error.errors(include_input=False, include_url=False), ()) from None
    problems: list[str] = []
    for name in config.environments:
        try:
            config.resolve(name)
        except ValidationError as error:
            errors = error.errors(include_input=False, include_url=False)
            problems.extend(_describe(shown, errors, ("environments", name), source))
    if problems:
        raise UsageError("\n".join(problems))
    resolved = config.resolve(environment)
    if override is not None:  # the variable wins over an environment's repository too
        resolved.repository = resolved.repository.model_copy(update={"url": override})
    return resolved


def _display_name(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _repository_override() -> str | None:
    """LOCKSTEP_REPOSITORY, with a relative local path made absolute against the current directory."""
    value = os.environ.get(REPOSITORY_VARIABLE, "").strip()
    if not value:
        return None
    if value.startswith("s3:"):
        return value
    # A crontab's `LOCKSTEP_REPOSITORY=~/backups` is not expanded by cron (no shell reads it).
    local = Path(os.path.expanduser(value.removeprefix("local:")))
    return f"local:{local if local.is_absolute() else Path.cwd() / local}"


def _read_toml(path: Path, shown: str) -> dict[str, Any]:
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except tomllib.TOMLDecodeError as error:
        # tomllib's message reads "Expected '=' after a key ... (at line 2, column 5)": no values in it.
        raise UsageError(f"{shown}: invalid TOML: {error}", "fix the syntax at that line") from None
    except OSError as error:
        raise UsageError(f"cannot read {shown}: {error.strerror}", "check the path and its permissions") from None


def _usage_error(shown: str, errors: Sequence[ErrorDetails], prefix: tuple[str, ...]) -> UsageError:
    return UsageError("\n".join(_describe(shown, errors, prefix)))


def _describe(
    shown: str, errors: Sequence[ErrorDetails], prefix: tuple[str, ...], base: dict[str, Any] | None = None
) -> list[str]:
    """One line per problem; `base` (the parsed file) is given for an environment's overrides."""
    lines: list[str] = []
    for error in errors:
        location = tuple(str(part) for part in error["loc"])
        where = ".".join((*prefix, *location)) or "(top level)"
        explanation = _explain(error, location, prefix)
        if base is not None and error["type"] == "missing":
            explanation += _misspelt_entry(location, base)
        line = f"{shown}: {where}: {explanation}"
        if Redactor().redact(line) != line:
            # A key named like a secret (password, api_key) followed by ": " reads as an assignment
            # to the redactor every error goes through, which would print "password: *** key". The
            # line holds no value (see above), so the explanation goes where it looks assigned to nothing.
            line = f"{shown}: {where} ({explanation})"
        if line not in lines:
            lines.append(line)
    return lines


def _misspelt_entry(location: tuple[str, ...], base: dict[str, Any]) -> str:
    """For `environments.E.databases.mian.url: missing`: the override names an entry the base
    tables lack, most likely a typo of one they have ("main"), which only needs the keys it changes."""
    if len(location) < 3:
        return ""
    table: Any = base
    for part in location[:-2]:
        table = table.get(part) if isinstance(table, dict) else None
    entry = location[-2]
    if not isinstance(table, dict) or entry in table:
        return ""
    matches = difflib.get_close_matches(entry, [str(name) for name in table], n=1)
    if not matches:
        return ""
    return f' (or did you mean "{matches[0]}"? an override of an existing entry needs only the keys it changes)'


def _explain(error: ErrorDetails, location: tuple[str, ...], prefix: tuple[str, ...] = ()) -> str:
    """What is wrong and how to fix it, from pydantic's error, without the rejected value."""
    kind = error["type"]
    if kind == "extra_forbidden":
        known = known_keys(location[:-1])
        matches = difflib.get_close_matches(location[-1], known, n=1)
        if len(location) > 1 and location[-1] in _top_level_keys():
            return _misplaced(location[-1], prefix)
        if is_secret_name(location[-1]) and "password_env" in known:
            return (
                "unknown key: lockstep.toml holds no secrets; name the environment variable that holds the password "
                "with password_env, or its file with password_file"
            )
        if matches:
            return f'unknown key; did you mean "{matches[0]}"?'
        return f"unknown key: the keys allowed here are {', '.join(known)}" if known else "unknown key: remove it"
    if kind == "missing":
        return f"missing: {_missing_hint(location)}" if location else "missing: see docs/config.md"
    if kind == "value_error":
        context = error.get("ctx") or {}
        return str(context.get("error", error["msg"]))
    return f"{error['msg'].lower()}: see docs/config.md for what this key takes"


def _misplaced(key: str, prefix: tuple[str, ...]) -> str:
    """A top-level key written after a [table] header, which TOML puts in that table."""
    if prefix:  # an environment's override: its own top level is [environments.NAME]
        table = ".".join(prefix)
        where = f"directly under [{table}], above its first [{table}.TABLE]"
    else:
        where = "at the top of the file, above the first [table]"
    return (
        f'unknown key here: "{key}" belongs {where} (in TOML every key after a [table] header '
        "is part of that table): move it there"
    )


def _top_level_keys() -> list[str]:
    """The plain keys (no table, no [[array of tables]]) of lockstep.toml's top level: those a key
    written after a [table] header was meant for, when it is not that table's own."""
    keys = []
    for name, field in ProjectConfig.model_fields.items():
        annotation = _unwrap_optional(field.annotation)
        is_table = _model_at((name,)) is not None or get_origin(annotation) is dict
        is_array_of_tables = get_origin(annotation) is list and any(
            isinstance(member, type) and issubclass(member, BaseModel) for member in get_args(annotation)
        )
        if not is_table and not is_array_of_tables:
            keys.append(name)
    return keys


def known_keys(location: Sequence[str]) -> list[str]:
    """The keys allowed in the table at `location` of lockstep.toml (empty when it is not a fixed table)."""
    model = _model_at(location)
    return [] if model is None else list(model.model_fields)


def _model_at(location: Sequence[str]) -> type[BaseModel] | None:
    """The model of the table at `location` (dict keys such as database names are stepped over)."""
    annotation: Any = ProjectConfig
    for part in location:
        annotation = _unwrap_optional(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            if field is None:
                return None
            annotation = field.annotation
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        elif get_origin(annotation) is list and part.isdigit():  # [[deploy.smoke]], [[schedules]]: an entry
            annotation = get_args(annotation)[0]
        else:
            return None
    annotation = _unwrap_optional(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _missing_hint(location: tuple[str, ...]) -> str:
    """`add url = "..."`, with the model's own example for that key."""
    model = _model_at(location[:-1])
    field = None if model is None else model.model_fields.get(location[-1])
    if field is None or not field.examples:
        return f"add {location[-1]} (see docs/config.md)"
    example = field.examples[0]
    if isinstance(example, dict):
        return f"add a [{'.'.join(location)}] table (see docs/config.md)"
    return f"add {location[-1]} = {toml_value(example)}"


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        members = [member for member in get_args(annotation) if member is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation
