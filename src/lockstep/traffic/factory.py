"""Build the traffic switch the config asks for; the module name is the config's word for it."""

from __future__ import annotations

import importlib
import os
import stat
from pathlib import Path

from lockstep.config.deploy_model import TrafficConfig
from lockstep.errors import LockstepError
from lockstep.process import Command
from lockstep.traffic.base import TrafficSwitch
from lockstep.traffic.builtin import BuiltinProxy
from lockstep.unix_sockets import DEFAULT_MARGIN, fits_in_socket_address, short_socket_location


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
    if config.kind == "haproxy" and not fits_in_socket_address(directory / "master.sock", margin=DEFAULT_MARGIN):
        # A deep state directory gets HAProxy's sockets in the temporary directory.
        sockets = short_socket_location(directory, "haproxy")
        sockets.mkdir(mode=0o700, exist_ok=True)
        _check_private(sockets)
        options["master_socket"] = sockets / "master.sock"
        options["stats_socket"] = sockets / "stats.sock"
    switch: TrafficSwitch = switch_class(config.listen, directory, **options)
    return switch


def _check_private(directory: Path) -> None:
    """Refuse a socket directory in /tmp that someone else made (its name is predictable): they
    could swap HAProxy's master socket for their own and answer lockstep's reload checks."""
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise LockstepError(
            f"HAProxy's socket directory {directory} is not a private directory of this user "
            f"(owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o})",
            "remove it (as root if need be) and run the command again, or use a shorter state directory",
        )
