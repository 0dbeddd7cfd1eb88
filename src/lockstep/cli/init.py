"""`lockstep init`: start a project's lockstep.toml."""

from __future__ import annotations

from pathlib import Path

import click

from lockstep.cli.output import console, print_json


@click.command("init")
@click.option("--force", is_flag=True, help="Replace an existing lockstep.toml.")
@click.option("--json", "json_output", is_flag=True, help="Print JSON on stdout.")
@click.pass_context
def init_command(context: click.Context, force: bool, json_output: bool) -> None:
    """Write a commented lockstep.toml for the project in the current directory."""
    from lockstep.actions.init_project import init_project  # here: not for `lockstep --help`

    root = context.find_root().obj
    json_output = json_output or bool(root and root.get("json"))
    result = init_project(Path.cwd(), force=force)
    if json_output:
        print_json({"path": str(result.path)})
        return
    console.print(f"{'replaced' if result.replaced else 'wrote'} {result.path}", markup=False)
    if result.work_tree == result.path.parent:
        console.print("the code is this git work tree; next, set the repository and database URLs in it")
    elif result.work_tree is not None:
        console.print(
            f"the code is the git work tree {result.work_tree}, which this directory is in; "
            "next, set the repository and database URLs in it",
            markup=False,
        )
    else:
        console.print(
            'this directory is not a git work tree: set kind = "release-directory" or the path of the code in [code]',
            markup=False,
        )


COMMANDS = [init_command]
