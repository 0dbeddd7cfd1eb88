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


def _context(command: click.Command, path: list[str], parent: click.Context | None) -> click.Context:
    # With its parent, so inherited settings show as they do at a terminal (`-h, --help`).
    settings = {"terminal_width": 100, "max_content_width": 100, **command.context_settings}
    return click.Context(command, parent=parent, info_name=path[-1], **settings)


def _render(command: click.Command, path: list[str], parts: list[str], parent: click.Context) -> None:
    context = _context(command, path, parent)
    runs_itself = not isinstance(command, click.Group) or command.invoke_without_command
    if runs_itself:  # `lockstep agent` runs the agent: its own options are documented too
        parts.append(f"\n## `{' '.join(path)}`\n")
        parts.append("```text")
        parts.append(command.get_help(context))
        parts.append("```")
    if isinstance(command, click.Group):
        for name in command.list_commands(context):
            sub = command.get_command(context, name)
            if sub is not None and not sub.hidden:
                _render(sub, [*path, name], parts, context)


def render() -> dict[Path, str]:
    """Each reference file and the text it must have."""
    root = _context(cli, ["lockstep"], None)
    repository_parts = [REPOSITORY_INTRODUCTION]
    repo = cli.get_command(root, "repo")
    assert repo is not None
    _render(repo, ["lockstep", "repo"], repository_parts, root)
    # The options every command takes (--json, --debug) are lockstep's own, before the command.
    command_parts = [COMMANDS_INTRODUCTION, "\n## `lockstep`\n", "```text", cli.get_help(root), "```"]
    for name in cli.list_commands(root):
        command = cli.get_command(root, name)
        if name != "repo" and command is not None:
            _render(command, ["lockstep", name], command_parts, root)
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
