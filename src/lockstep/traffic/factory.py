"""Build the traffic switch the config asks for; the module name is the config's word for it."""

from __future__ import annotations

import hashlib
import importlib
import tempfile
from pathlib import Path

from lockstep.config.deploy_model import TrafficConfig
from lockstep.process import Command
from lockstep.traffic.base import TrafficSwitch
from lockstep.traffic.builtin import BuiltinProxy

SOCKET_PATH_LIMIT = 100


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
    options: dict[str, object] = {"drain_timeout": config.drain_timeout, "mode": config.mode}
    if config.binary:
        options["binary"] = config.binary
    if config.include_path:
        options["include_path"] = Path(config.include_path)
    if config.config_path:
        options["config_path"] = Path(config.config_path)
    if config.reload_command:
        options["reload_command"] = Command.parse(config.reload_command).argv
    directory = state_directory / config.kind
    if config.kind == "haproxy" and len(str(directory / "master.sock")) > SOCKET_PATH_LIMIT:
        # Unix socket paths hold ~107 bytes; a deep state directory gets its sockets in /tmp.
        digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
        sockets = Path(tempfile.gettempdir()) / f"lockstep-haproxy-{digest}"
        sockets.mkdir(mode=0o700, exist_ok=True)
        options["master_socket"] = sockets / "master.sock"
        options["stats_socket"] = sockets / "stats.sock"
    switch: TrafficSwitch = switch_class(config.listen, directory, **options)
    return switch
