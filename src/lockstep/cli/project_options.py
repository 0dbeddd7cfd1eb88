"""Options every project command shares: -c/--config and --env."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def config_and_env_options(env_help: str) -> Callable[[Any], Any]:
    """-c/--config PATH and --env NAME, with `env_help` saying what leaving --env out does for
    the command (most: default_environment; `snapshot list` and `forget`: every environment)."""

    def decorate(function: Any) -> Any:
        function = click.option("--env", "environment", metavar="NAME", help=env_help)(function)
        return click.option(
            "-c",
            "--config",
            "config_path",
            type=click.Path(path_type=Path, dir_okay=False),
            help="The config file. Default: lockstep.toml in the current directory.",
        )(function)

    return decorate


# Add -c/--config PATH and --env NAME (the environment; default: the config's default_environment).
project_options = config_and_env_options(
    "Environment ([environments.NAME]); default: default_environment from lockstep.toml."
)


def wants_json(json_output: bool) -> bool:
    """--json on the command or on `lockstep` itself."""
    context = click.get_current_context(silent=True)
    root = context.find_root().obj if context is not None else None
    return json_output or bool(root and root.get("json"))


def parse_duration_seconds(text: str) -> float:
    """`90`, `90s`, `5m` or `1h` as seconds; a clear usage error otherwise."""
    value = text.strip().lower()
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    factor = units.get(value[-1:])
    number = value[:-1] if factor is not None else value
    try:
        seconds = float(number) * (factor or 1.0)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration: write e.g. 30s, 5m or 1h") from None
    if seconds < 0:
        raise click.BadParameter("a duration cannot be negative")
    return seconds


class Duration(click.ParamType[float]):
    """A duration option (`--lock-wait`): `90`, `90s`, `5m` or `1h`, as seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration_seconds(str(value))
        except click.BadParameter as error:
            self.fail(error.message, param, ctx)
