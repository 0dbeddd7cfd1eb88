"""`lockstep repo …`: the repository commands, restic's verbs on a restic-compatible store."""

from __future__ import annotations

import importlib

import click


@click.group()
def repo() -> None:
    """Work with the repository directly (init, backup, restore, check, forget, prune, keys)."""


# One module per group of verbs; each defines click commands and a COMMANDS list.
_MODULES = ("basics", "backup", "browse", "restore", "check", "forget", "key")

for _name in _MODULES:
    _module = importlib.import_module(f"lockstep.cli.repo.{_name}")
    for _command in _module.COMMANDS:
        repo.add_command(_command)
COMMANDS = [repo]
