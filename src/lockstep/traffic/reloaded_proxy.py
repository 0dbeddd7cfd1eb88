"""What the nginx and HAProxy switches have in common: a real proxy server that lockstep points
at an upstream by writing a config file, validating it and reloading the server.

Both come in two modes. In ``managed`` mode lockstep runs its own instance, whose config and
pid file live in `state_directory`; in ``system`` mode the user's own server loads one file
lockstep writes (`include_path`) and lockstep only validates and reloads. Neither server can
park a request, so both hold traffic through a relay (traffic/holding.py) that can.

A subclass says how its server is configured, validated, started and reloaded; this class keeps
the order every switch must follow: check the port, let a hold's relay move first, write the
new file beside the old one, validate, move it into place, reload.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal

from lockstep.errors import LockstepError, UsageError
from lockstep.process import process_alive
from lockstep.traffic.base import HoldMode
from lockstep.traffic.common import check_port, command_line, fsync_directory, parse_listen, stop_gracefully
from lockstep.traffic.hold import HoldOwner
from lockstep.traffic.holding import HoldingRelay

Mode = Literal["managed", "system"]


class ReloadedProxySwitch:
    """The shared half of traffic/nginx.py and traffic/haproxy.py (see the module docstring)."""

    # How the server is named in messages ("nginx", "HAProxy") and in its process title.
    server_name: ClassVar[str]
    process_name: ClassVar[str]
    # The managed instance's config file in the state directory.
    config_file: ClassVar[str]
    # What a system-mode user must do with include_path for the switch to reach their server.
    include_advice: ClassVar[str]
    # The signal that makes the master stop accepting and exit once its requests are done.
    graceful_stop_signal: ClassVar[signal.Signals]

    # The master's pid file: the state directory's (managed) or the user's server's (system).
    pid_file: Path

    def __init__(
        self,
        listen: str,
        state_directory: Path,
        drain_timeout: float,
        binary: str,
        mode: Mode,
        include_path: Path | None,
        upstream_host: str,
    ) -> None:
        if mode not in ("managed", "system"):
            raise UsageError(f"unknown {self.process_name} traffic mode {mode!r}", 'use "managed" or "system"')
        if mode == "system" and include_path is None:
            raise UsageError(
                f"the {self.process_name} traffic switch in system mode needs include_path", self.include_advice
            )
        self.listen_host, self.listen_port = parse_listen(listen)
        self.listen = listen
        self.state_directory = Path(state_directory)
        self.drain_timeout = drain_timeout
        self.holding = HoldingRelay(self.state_directory, drain_timeout, self._point_at)
        self.binary = binary
        self.mode: Mode = mode
        self.include_path = include_path
        self.upstream_host = upstream_host

    # -- what a subclass provides --------------------------------------------------------------

    def _switch_managed(self, port: int) -> None:
        raise NotImplementedError

    def _switch_system(self, port: int, reload: bool = True) -> None:
        raise NotImplementedError

    def _validate_managed(self, candidate: Path) -> None:
        """Check a candidate managed config with the server's own check; raise when it fails."""
        raise NotImplementedError

    def _port_in(self, text: str) -> int | None:
        """The upstream port a written config or include names, or None."""
        raise NotImplementedError

    # -- the shared half ------------------------------------------------------------------------

    @property
    def managed_config(self) -> Path:
        return self.state_directory / self.config_file

    @property
    def _written_file(self) -> Path:
        """The file that holds the active upstream: the whole config (managed) or the include."""
        if self.mode == "managed":
            return self.managed_config
        assert self.include_path is not None
        return self.include_path

    def switch_to(self, port: int) -> None:
        """Write, validate and load an upstream of `port`; return once new requests go there.

        Raises LockstepError, and the server keeps serving the old upstream, when the new config
        fails validation or the reload does not take effect.
        """
        check_port(port)
        if not self.holding.switch_to(port):  # while held, the relay's upstream moves instead
            self._point_at(port)

    def _point_at(self, port: int) -> None:
        if self.mode == "managed":
            self._switch_managed(port)
        else:
            self._switch_system(port)

    def active_port(self) -> int | None:
        """The upstream port in the written config (what the server serves once loaded), or None."""
        try:
            text = self._written_file.read_text()
        except FileNotFoundError:
            return None
        return self._port_in(text)

    def hold(self, owner: HoldOwner, timeout: float) -> HoldMode:
        """The server cannot park a request: its upstream becomes a relay that does (traffic/holding.py)."""
        return self.holding.hold_upstream(owner, timeout, self.active_port(), self.server_name)

    def release(self) -> dict[str, object] | None:
        return self.holding.release()

    def check_hold(self) -> str | None:
        return self.holding.check()

    def stop(self) -> None:
        """Managed: the graceful stop signal (stop accepting, finish requests), forced after
        `drain_timeout`. System: nothing, lockstep never stops the user's server (a hold's relay
        stops)."""
        self.holding.stop()
        if self.mode == "system":
            return
        master = self._master_pid()
        if master is None:
            return
        stop_gracefully(master, self.graceful_stop_signal, self.drain_timeout)

    def _master_pid(self) -> int | None:
        """The live master from the pid file, or None (missing, stale, or another program's)."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (FileNotFoundError, PermissionError, ValueError, IndexError):
            return None
        if not process_alive(pid) or self.process_name not in command_line(pid):
            return None
        return pid

    def _validated_candidate(self, text: str) -> Path:
        """`text` written beside the managed config and validated, ready for os.replace; nothing
        is left behind when validation fails."""
        candidate = write_candidate(self.managed_config, text)
        try:
            self._validate_managed(candidate)
        except LockstepError:
            candidate.unlink(missing_ok=True)
            raise
        return candidate

    def _replace_include(self, text: str, validate: Callable[[], None]) -> None:
        """Put `text` in place as the system-mode include, validated where the user's config loads
        it; when validation fails, the previous include comes back and the error is raised.

        The server's own check must see the new file where the user's config reads it, so the new
        file goes in place first; the server itself only reads it on the reload that follows.
        """
        assert self.include_path is not None
        include = self.include_path
        try:
            previous: bytes | None = include.read_bytes()
        except FileNotFoundError:
            previous = None
        os.replace(write_candidate(include, text), include)
        try:
            validate()
        except LockstepError:
            if previous is None:
                include.unlink(missing_ok=True)
            else:
                os.replace(write_candidate(include, previous.decode()), include)
            raise
        fsync_directory(include.parent)


def write_candidate(destination: Path, text: str) -> Path:
    """Write `text` next to `destination` (so os.replace is atomic) and fsync it."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    candidate = destination.with_name(f".{destination.name}.{os.getpid()}.next")
    with open(candidate, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    return candidate
