#!/usr/bin/env python3
"""Write the command references from the click commands themselves, so they cannot drift.

docs/repository.md documents `lockstep repo …`; docs/commands.md every other command.

    python scripts/generate_cli_reference.py          # rewrite the files
    python scripts/generate_cli_reference.py --check  # exit 1 if one is out of date (the tests do this)
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lockstep.cli.main import cli

DOCS = Path(__file__).resolve().parent.parent / "docs"

REPOSITORY_INTRODUCTION = """# `lockstep repo`: command reference

Generated from the code by `python scripts/generate_cli_reference.py`; a test fails when this
file and the commands disagree. Every command takes the repository from `--repo` or
`LOCKSTEP_REPOSITORY` and the password from `--password-file`, `--password-command`,
`LOCKSTEP_PASSWORD` or `LOCKSTEP_PASSWORD_FILE`
(in restic's order: see the README's [password sources](../README.md#password-sources)).
Exit codes: [exit-codes.md](exit-codes.md).
"""

COMMANDS_INTRODUCTION = """# lockstep commands

Generated from the code by `python scripts/generate_cli_reference.py`; a test fails when this
file and the commands disagree. These commands read the project's `lockstep.toml`
([config.md](config.md)); the repository commands are in [repository.md](repository.md).
Exit codes: [exit-codes.md](exit-codes.md).
"""


def _render(command: click.Command, path: list[str], parts: list[str]) -> None:
    context = click.Context(command, info_name=" ".join(path), terminal_width=100, max_content_width=100)
    if isinstance(command, click.Group):
        for name in command.list_commands(context):
            sub = command.get_command(context, name)
            if sub is not None and not sub.hidden:
                _render(sub, [*path, name], parts)
        return
    parts.append(f"\n## `{' '.join(path)}`\n")
    parts.append("```text")
    parts.append(command.get_help(context))
    parts.append("```")


def render() -> dict[Path, str]:
    """Each reference file and the text it must have."""
    context = click.Context(cli, info_name="lockstep")
    repository_parts = [REPOSITORY_INTRODUCTION]
    repo = cli.get_command(context, "repo")
    assert repo is not None
    _render(repo, ["lockstep", "repo"], repository_parts)
    command_parts = [COMMANDS_INTRODUCTION]
    for name in cli.list_commands(context):
        command = cli.get_command(context, name)
        if name != "repo" and command is not None:
            _render(command, ["lockstep", name], command_parts)
    return {
        DOCS / "repository.md": "\n".join(repository_parts) + "\n",
        DOCS / "commands.md": "\n".join(command_parts) + "\n",
    }


def main() -> int:
    stale = []
    for target, text in render().items():
        if "--check" in sys.argv:
            if not target.exists() or target.read_text() != text:
                stale.append(target)
        else:
            target.write_text(text)
    for target in stale:
        print(f"{target} is out of date: run python scripts/generate_cli_reference.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
