"""`lockstep repo …`: the repository commands, restic's verbs on a restic-compatible store."""

from __future__ import annotations

import importlib

import click

# Each verb and the module that defines it (one module per group of verbs, each with a COMMANDS
# list). Modules load only when their verb runs: `repo backup` must not pay for importing prune,
# retention and rich tables first (BENCHMARKS.md, issue #2).
VERB_MODULES: dict[str, str] = {
    "init": "basics",
    "unlock": "basics",
    "stats": "basics",
    "backup": "backup",
    "snapshots": "browse",
    "ls": "browse",
    "restore": "restore",
    "dump": "restore",
    "check": "check",
    "forget": "forget",
    "prune": "forget",
    "key": "key",
    "repair": "repair",
    "copy": "copy",
}


class LazyRepoGroup(click.Group):
    """A group whose verbs are imported when first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(VERB_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = VERB_MODULES.get(cmd_name)
        if module_name is None:
            return None
        module = importlib.import_module(f"lockstep.cli.repo.{module_name}")
        for command in module.COMMANDS:
            if command.name == cmd_name:
                return command  # type: ignore[no-any-return]
        return None


@click.group(cls=LazyRepoGroup)
def repo() -> None:
    """Work with the repository directly (init, backup, restore, check, forget, prune, repair, copy, keys)."""


COMMANDS = [repo]
