"""Build the traffic switch the config asks for; the module name is the config's word for it."""

from __future__ import annotations

import importlib
from pathlib import Path

from lockstep.config.deploy_model import TrafficConfig
from lockstep.traffic.base import TrafficSwitch
from lockstep.traffic.builtin import BuiltinProxy


def switch_for(config: TrafficConfig, state_directory: Path) -> TrafficSwitch:
    """The switch for `config.kind`, keeping its files (pid, sockets, generated config) in `state_directory`."""
    if config.kind == "builtin":
        return BuiltinProxy(
            config.listen,
            state_directory / "builtin",
            drain_timeout=config.drain_timeout,
            request_timeout=config.request_timeout,
        )
    # nginx and HAProxy load only when asked for: most setups never need them.
    module = importlib.import_module(f"lockstep.traffic.{config.kind}")
    switch_class = module.NginxSwitch if config.kind == "nginx" else module.HaproxySwitch
    switch: TrafficSwitch = switch_class(
        config.listen, state_directory / config.kind, drain_timeout=config.drain_timeout
    )
    return switch
