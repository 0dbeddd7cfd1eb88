"""`lockstep agent`: the long-running process that keeps the app up and owns the traffic switch."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from lockstep.cli.output import console, error_console, print_json
from lockstep.cli.project_options import project_options, wants_json

if TYPE_CHECKING:
    from lockstep.actions.environment import EnvironmentContext

# The actions (the config models, the agent's server, aiohttp) are imported inside the commands
# that run them: `lockstep --help` lists this command without loading any of them.


@click.group("agent", invoke_without_command=True)
@project_options
@click.pass_context
def agent_group(context: click.Context, config_path: Path | None, environment: str | None) -> None:
    """Run the agent for one environment in the foreground (for systemd or any supervisor).

    It starts, supervises (restart with backoff, crash-loop detection) and stops the app's
    processes, and owns the traffic switch. Stopping it leaves the app and the proxy running;
    the next agent adopts them.
    """
    if context.invoked_subcommand is not None:
        context.obj = {**(context.obj or {}), "config_path": config_path, "environment": environment}
        return
    from lockstep.actions.agent_run import run_agent

    loaded = _load(context, config_path, environment)
    stopped_apps = run_agent(loaded, on_ready=lambda line: error_console.print(line, markup=False))
    error_console.print("agent stopped" + (" with the app" if stopped_apps else "; the app keeps running"))


def _load(context: click.Context, config_path: Path | None, environment: str | None) -> EnvironmentContext:
    """Options may come before the subcommand (`agent --env E stop`) or after it."""
    from lockstep.actions.environment import load_environment

    parent = context.obj or {}
    return load_environment(
        Path.cwd(), config_path or parent.get("config_path"), environment or parent.get("environment")
    )


@agent_group.command("stop")
@project_options
@click.option("--apps", is_flag=True, help="Also stop the app's processes and the traffic switch.")
@click.pass_context
def stop_command(context: click.Context, config_path: Path | None, environment: str | None, apps: bool) -> None:
    """Ask the running agent to exit (the app keeps running unless --apps).

    With `lockstep --json`: {"environment": ..., "stopping": true, "apps": ...}."""
    loaded = _load(context, config_path, environment)
    loaded.agent().shutdown(stop_apps=apps)
    if wants_json(False):  # `lockstep --json agent stop`: a JSON document, as everywhere
        print_json({"environment": loaded.environment, "stopping": True, "apps": apps})
        return
    console.print(f"agent for {loaded.environment!r} is stopping" + (" with the app" if apps else ""))


@agent_group.command("print-systemd-unit")
@project_options
@click.pass_context
def print_systemd_unit(context: click.Context, config_path: Path | None, environment: str | None) -> None:
    """Print a systemd unit that runs this agent (save it under /etc/systemd/system/).

    With `lockstep --json`: {"environment": ..., "unit": "..."}."""
    parent = context.obj or {}
    loaded = _load(context, config_path, environment)
    executable = shutil.which("lockstep") or f"{sys.executable} -m lockstep"
    config_file = config_path or parent.get("config_path") or loaded.directory / "lockstep.toml"
    # -c and --env belong to the agent command: `lockstep -c FILE agent` is a usage error, which
    # systemd would restart every RestartSec, forever.
    command = (
        f"{executable} agent -c {shlex.quote(str(Path(config_file).resolve()))} --env {shlex.quote(loaded.environment)}"
    )
    unit = f"""[Unit]
Description=lockstep agent for {loaded.config.app.name or loaded.directory.name} ({loaded.environment})
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
WorkingDirectory={loaded.directory}
ExecStart={command}
# Stopping the agent leaves the app and the proxy running (KillMode=process keeps its children).
KillMode=process
Restart=always
RestartSec=2
# The repository password, if the agent runs scheduled backups:
# EnvironmentFile=/etc/lockstep/{loaded.environment}.env

[Install]
WantedBy=multi-user.target"""
    if wants_json(False):  # `lockstep --json agent print-systemd-unit`: a JSON document, as everywhere
        print_json({"environment": loaded.environment, "unit": unit + "\n"})
        return
    console.print(unit, markup=False, highlight=False)


COMMANDS = [agent_group]
