#!/usr/bin/env python3
"""Write docs/repository.md from the click commands themselves, so the reference cannot drift.

python scripts/generate_cli_reference.py          # rewrite the file
python scripts/generate_cli_reference.py --check  # exit 1 if it is out of date (the tests do this)
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lockstep.cli.main import cli

TARGET = Path(__file__).resolve().parent.parent / "docs" / "repository.md"

INTRODUCTION = """# `lockstep repo`: command reference

Generated from the code by `python scripts/generate_cli_reference.py`; a test fails when this
file and the commands disagree. Every command takes the repository from `--repo` or
`LOCKSTEP_REPOSITORY` and the password from `--password-file`, `--password-command`,
`LOCKSTEP_PASSWORD` or `LOCKSTEP_PASSWORD_FILE`. Exit codes: [exit-codes.md](exit-codes.md).
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


def render() -> str:
    repo = cli.commands["repo"]
    parts = [INTRODUCTION]
    _render(repo, ["lockstep", "repo"], parts)
    return "\n".join(parts) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python scripts/generate_cli_reference.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
