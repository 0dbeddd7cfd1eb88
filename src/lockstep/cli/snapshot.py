"""`lockstep snapshot …`: coordinated snapshots of code, databases and files.

The group and the options its verbs share. Each verb lives in a module of its own, imported only
when it runs (or `snapshot --help` lists it): `lockstep --help`, which lists this group, loads none
of them, nor the config models and the repository they import.
"""

from __future__ import annotations

import click

from lockstep.cli.project_options import config_and_env_options

# What --env picks for the commands that open one snapshot (show and verify; diff and restore
# name the live databases too).
ONE_SNAPSHOT_ENV_HELP = (
    "Environment ([environments.NAME]) whose snapshot ID names, in its repository;"
    " default: default_environment from lockstep.toml."
)
# `snapshot list` without --env lists every environment's snapshots (forget says so with its retention).
ALL_SNAPSHOTS_ENV_HELP = (
    "Only this environment's snapshots, in its repository;"
    " default: every environment's snapshots in default_environment's repository."
)


_config_option = config_and_env_options(ONE_SNAPSHOT_ENV_HELP)


# Each verb and the module that defines it (it registers itself on the group when imported), so
# that only the verb that runs is imported: `snapshot create` (run from cron before every deploy)
# starts about 70 ms sooner without verify, diff and forget.
SUBCOMMAND_MODULES = {
    "create": "lockstep.cli.snapshot_basics",
    "list": "lockstep.cli.snapshot_basics",
    "show": "lockstep.cli.snapshot_basics",
    "verify": "lockstep.cli.snapshot_verify",
    "diff": "lockstep.cli.snapshot_diff",
    "restore": "lockstep.cli.snapshot_restore",
    "forget": "lockstep.cli.snapshot_forget",
}


class _SnapshotGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *SUBCOMMAND_MODULES})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in SUBCOMMAND_MODULES:
            import importlib

            importlib.import_module(SUBCOMMAND_MODULES[cmd_name])  # registers itself on the group
        return self.commands.get(cmd_name)


@click.group("snapshot", cls=_SnapshotGroup)
def snapshot_group() -> None:
    """Coordinated snapshots: code version, databases and config files under one ID."""


COMMANDS = [snapshot_group]
