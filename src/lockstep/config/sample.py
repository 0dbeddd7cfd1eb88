"""The commented starting lockstep.toml and the key reference, both written from the model.

Nothing here knows a default or a description of its own: they come from the pydantic fields in
model.py, so the sample that `lockstep init` writes and docs/config.md cannot disagree with it.
"""

from __future__ import annotations

import json
import textwrap
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from lockstep.config.model import ProjectConfig, git_work_tree

_COMMENT_WIDTH = 100
_SEE_KEYS = "see its keys"


@dataclass(frozen=True)
class KeyReference:
    """One key of lockstep.toml as the docs present it."""

    path: str  # e.g. "databases.NAME.url"
    type_name: str
    default: str  # "required", or the default in TOML syntax, or "none"
    description: str
    example: str  # "key = value" in TOML syntax
    is_table: bool


def toml_value(value: Any) -> str:
    """`value` as an inline TOML value (strings, numbers, booleans, paths, lists and tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{toml_key(key)} = {toml_value(item)}" for key, item in value.items()) + " }"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def toml_key(key: str) -> str:
    """A bare key when TOML allows one, a quoted key otherwise."""
    if key and all(character.isascii() and (character.isalnum() or character in "-_") for character in key):
        return key
    return json.dumps(key, ensure_ascii=False)


def toml_tables(path: list[str], table: dict[str, Any]) -> list[str]:
    """`table` as `[a.b]` sections: plain values under the header, nested tables as their own sections."""
    plain = {key: value for key, value in table.items() if not isinstance(value, dict)}
    nested = {key: value for key, value in table.items() if isinstance(value, dict)}
    lines: list[str] = []
    if plain or not nested:
        lines.append("[" + ".".join(toml_key(part) for part in path) + "]")
        lines.extend(f"{toml_key(key)} = {toml_value(value)}" for key, value in plain.items())
    for key, value in nested.items():
        lines.extend(toml_tables([*path, key], value))
    return lines


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type: "string", "integer", "path", '"git" | "release-directory"'."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [member for member in get_args(annotation) if member is not type(None)]
        return " | ".join(type_name(member) for member in members)
    if origin is Literal:
        return " | ".join(json.dumps(value) for value in get_args(annotation))
    if origin is list:
        return f"list of {type_name(get_args(annotation)[0])}s"
    if origin is dict:
        value_type = get_args(annotation)[1]
        return f"tables by name, each {type_name(value_type)}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    names = {str: "string", int: "integer", bool: "boolean", float: "number", Path: "path"}
    return names.get(annotation, "table" if annotation is Any else str(annotation))


def _example(field: FieldInfo) -> Any:
    if not field.examples:
        raise ValueError("every config field needs an example")
    return field.examples[0]


def _default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True)
    if default is None:
        return "none"
    if isinstance(default, BaseModel):
        return _SEE_KEYS
    return toml_value(default)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if get_origin(annotation) is dict:
        annotation = get_args(annotation)[1]
    elif get_origin(annotation) is list:
        annotation = get_args(annotation)[0]
    elif get_origin(annotation) in (Union, types.UnionType):
        members = [member for member in get_args(annotation) if member is not type(None)]
        if len(members) == 1:
            annotation = members[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _description(field: FieldInfo) -> str:
    if not field.description:
        raise ValueError("every config field needs a description")
    return field.description


def iter_keys(model: type[BaseModel] = ProjectConfig, prefix: str = "") -> Iterator[KeyReference]:
    """Every key of lockstep.toml, depth first, tables before their keys."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        nested = _model_of(annotation)
        example = _example(field)
        is_named_tables = get_origin(annotation) is dict
        is_list_of_tables = get_origin(annotation) is list and nested is not None
        yield KeyReference(
            path=path,
            type_name=type_name(annotation),
            default=_default_text(field),
            description=_description(field),
            example="\n".join(toml_tables(path.split("."), example))
            if isinstance(example, dict)
            else f"{name} = {toml_value(example)}",
            is_table=nested is not None or is_named_tables,
        )
        if nested is not None:
            child_prefix = f"{path}.NAME." if is_named_tables else f"{path}[]." if is_list_of_tables else f"{path}."
            yield from iter_keys(nested, child_prefix)


def _comment(text: str, indent: str = "") -> list[str]:
    return [
        f"{indent}# {line}" for line in textwrap.wrap(text, _COMMENT_WIDTH - 2 - len(indent), break_on_hyphens=False)
    ]


def _key_lines(name: str, field: FieldInfo) -> list[str]:
    lines = _comment(_description(field))
    if field.is_required():
        lines.append(f"{toml_key(name)} = {toml_value(_example(field))}")
    else:
        lines.append(f"# default: {_default_text(field)}")
        lines.append(f"# {toml_key(name)} = {toml_value(_example(field))}")
    return lines


def _code_note(project_directory: Path | None) -> list[str]:
    if project_directory is None:
        return []
    work_tree = git_work_tree(project_directory)
    if work_tree == project_directory:
        return _comment(
            'This directory is a git work tree, so the code is the commit checked out here (kind = "git"): '
            "nothing below needs to change for that."
        )
    if work_tree is not None:
        return _comment(
            f"This directory is inside the git work tree {work_tree}, so the code is the commit checked out "
            'there (kind = "git", path = that work tree): nothing below needs to change for that.'
        )
    return _comment(
        'This directory is not a git work tree: set kind = "release-directory" to record its files, or point '
        "path at the git work tree of the code."
    )


def _render_table(
    path: list[str], model: type[BaseModel], commented: bool, project_directory: Path | None = None, array: bool = False
) -> list[str]:
    """One table and, after its own keys, its sub-tables; tables inside examples are commented out."""
    prefix = "# " if commented else ""
    header = ".".join(toml_key(part) for part in path)
    lines = [f"{prefix}[[{header}]]" if array else f"{prefix}[{header}]"]
    if path == ["code"]:
        lines.extend(_code_note(project_directory))
    sub_tables: list[tuple[str, FieldInfo, type[BaseModel]]] = []
    for key, key_field in model.model_fields.items():
        nested = _model_of(key_field.annotation)
        if nested is not None:
            sub_tables.append((key, key_field, nested))
            continue
        key_lines = _key_lines(key, key_field)
        if commented:
            key_lines = [line if line.startswith("#") else f"# {line}" for line in key_lines]
        lines.extend(key_lines)
    for key, key_field, nested in sub_tables:
        lines.append("")
        lines.extend(_comment(_description(key_field)))
        origin = get_origin(key_field.annotation)
        if origin is dict:
            example = _example(key_field)
            entry = next(iter(example), "NAME") if isinstance(example, dict) else "NAME"
            lines.extend(_render_table([*path, key, entry], nested, commented=True))
        elif origin is list:
            lines.extend(_render_table([*path, key], nested, commented=True, array=True))
        else:
            lines.extend(_render_table([*path, key], nested, commented=commented))
    return lines


def render_sample(project_directory: Path | None = None) -> str:
    """The starting lockstep.toml: every table and key, described; optional keys commented out.

    With `project_directory`, the [code] table notes whether that directory is a git work tree.
    """
    lines = [
        "# lockstep.toml: what a snapshot of this project contains and where it is stored.",
        "# Written by `lockstep init` from lockstep's config model; docs/config.md describes every key.",
        "# A commented-out key shows an example value; without it lockstep uses the default shown.",
        "# The repository password comes from password_file or password_command if set, else LOCKSTEP_PASSWORD.",
    ]
    tables = {}
    for name, field in ProjectConfig.model_fields.items():  # top-level keys must precede every [table]
        if _model_of(field.annotation) is None and not isinstance(_example(field), dict):
            lines.append("")
            lines.extend(_key_lines(name, field))
        else:
            tables[name] = field
    for name, field in tables.items():
        annotation = field.annotation
        nested = _model_of(annotation)
        lines.append("")
        lines.extend(_comment(_description(field)))
        if nested is None:  # free-form tables (environments): an example, commented out
            lines.extend(f"# {line}" for line in toml_tables([name], _example(field)))
            continue
        if get_origin(annotation) is dict:
            example = _example(field)
            for entry_name, entry in example.items():
                lines.append(f"[{name}.{toml_key(entry_name)}]")
                for key, key_field in nested.model_fields.items():
                    value = entry.get(key)
                    if value is None:
                        lines.extend(_key_lines(key, key_field))
                    else:
                        lines.extend(_comment(_description(key_field)))
                        lines.append(f"{toml_key(key)} = {toml_value(value)}")
            continue
        if get_origin(annotation) is list:  # an array of tables: an example entry, commented out
            lines.extend(_render_table([name], nested, commented=True, array=True))
            continue
        lines.extend(_render_table([name], nested, commented=False, project_directory=project_directory))
    return "\n".join(lines) + "\n"


def render_reference() -> str:
    """docs/config.md: every key with its type, default, description and an example."""
    parts = [
        "# `lockstep.toml`: configuration reference",
        "",
        "Generated from the config model (src/lockstep/config/model.py) by",
        "`python scripts/generate_config_reference.py`; a test fails when this file and the model disagree.",
        "`lockstep init` writes a commented starting file from the same model.",
        "",
        "lockstep reads `lockstep.toml` from the current directory, or the file given with `-c/--config`.",
        "Relative paths in it are relative to the directory the file is in; `~/` starts one in the home",
        "directory of the user running lockstep. Unknown keys are errors.",
        "The smallest valid file:",
        "",
        "```toml",
        "[repository]",
        'url = "local:.lockstep/repository"   # LOCKSTEP_REPOSITORY overrides it',
        "",
        "[databases.main]",
        'url = "postgresql://postgres@127.0.0.1:5432/shop"',
        "```",
        "",
        "The repository password comes from `repository.password_file` / `repository.password_command`",
        "when set, else from `LOCKSTEP_PASSWORD`; `LOCKSTEP_PASSWORD_FILE` / `LOCKSTEP_PASSWORD_COMMAND`",
        "override the config (the order is restic's: see the README). Passwords never go in URLs: a URL",
        "with a password is refused.",
    ]
    for key in iter_keys():
        depth = key.path.count(".") - key.path.count("NAME.") - key.path.count("[].")
        heading = "##" if depth == 0 else "###"
        parts.extend(["", f"{heading} `{key.path}`", ""])
        parts.append(key.description)
        parts.append("")
        parts.append(f"- type: {key.type_name}")
        plain = key.default in ("required", "none", _SEE_KEYS)
        parts.append(f"- default: {key.default if plain else '`' + key.default + '`'}")
        parts.append("- example:")
        parts.extend(["", "  ```toml", *[f"  {line}" for line in key.example.splitlines()], "  ```"])
    return "\n".join(parts) + "\n"
