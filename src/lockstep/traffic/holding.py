"""Holds for nginx and HAProxy, which cannot keep a request waiting on their own.

nginx has no way to park a request until an outside event (it can only answer, or proxy), and
HAProxy queues a request only while every server is at its maxconn, so with zero free slots it
answers 503 at once, and its `maint`/`drain` states refuse too. Both can proxy, though. So a hold
points their upstream (one reload) at a relay: lockstep's built-in proxy on a private loopback
port, started for the hold, which keeps the requests waiting and, once released, passes them to
the active slot. Release: the relay lets its requests go, nginx/HAProxy is pointed back at the
active slot (a second reload), and the relay stops once its requests are done.

If the owner of the hold dies, the relay itself lets the requests through (it watches the owner,
as the built-in proxy does), so traffic flows even before the agent's next `check_hold` points
nginx/HAProxy back and stops the relay.

Restarts mid-hold keep the hold: the relay persists it as the built-in proxy does, so a relay
that died is started again by `check_hold` (on its port, or a new one nginx/HAProxy is pointed
at) and resumes it; nginx/HAProxy started again while held start pointed at the relay; and the
agent restarting changes nothing, since the relay and hold.json outlive it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lockstep.errors import LockstepError
from lockstep.traffic.base import HoldMode
from lockstep.traffic.builtin import BuiltinProxy
from lockstep.traffic.builtin_proxy.hold_file import remove_hold_file
from lockstep.traffic.hold import HoldOwner

HOLD_FILE = "hold.json"
RELAY_DIRECTORY = "holding"
RELAY_REQUEST_TIMEOUT = 3600.0  # as long as the managed nginx/HAProxy wait for an upstream


class HoldingRelay:
    """The relay of one nginx or HAProxy switch; `point_at(port)` reloads that server's upstream."""

    def __init__(self, state_directory: Path, drain_timeout: float, point_at: Callable[[int], None]) -> None:
        self.state_directory = state_directory
        self.file = state_directory / HOLD_FILE
        self.drain_timeout = drain_timeout
        self.point_at = point_at

    def current(self) -> dict[str, Any] | None:
        """The hold in force: {relay_port, target_port, owner}, or None."""
        try:
            document = json.loads(self.file.read_text())
        except (OSError, ValueError):
            return None
        return document if isinstance(document, dict) and "relay_port" in document else None

    def relay_port(self) -> int | None:
        """Where nginx/HAProxy must send requests while a hold is in force (the relay), or None."""
        current = self.current()
        return None if current is None else int(current["relay_port"])

    def target_port(self) -> int | None:
        """Where traffic goes once released (the active slot), while a hold is in force."""
        current = self.current()
        return None if current is None else int(current["target_port"])

    def state(self) -> dict[str, Any] | None:
        """The relay's hold (owner, seconds, waiting requests...), or None when nothing is held."""
        current = self.current()
        if current is None:
            return None
        return self._relay(int(current["relay_port"])).hold_state() or {"owner": current.get("owner")}

    def hold_upstream(self, owner: HoldOwner, timeout: float, active_port: int | None, server: str) -> HoldMode:
        """A switch's hold(): `server` (nginx, HAProxy) sends to `active_port`, or, held already,
        to the relay, whose target stays where released requests go."""
        if active_port is None:
            raise LockstepError(f"{server} has no upstream to hold traffic for", "deploy first")
        self.hold(owner, timeout, self.target_port() or active_port)
        return "queue"

    def hold(self, owner: HoldOwner, timeout: float, target_port: int) -> None:
        current = self.current()
        if current is not None:
            self._relay(int(current["relay_port"])).hold(owner, timeout)  # refused for another live owner
            return
        self.state_directory.mkdir(parents=True, exist_ok=True)
        # No hold is in force, so a hold an earlier relay left on disk is stale: not to be resumed.
        remove_hold_file(self.state_directory / RELAY_DIRECTORY)
        relay = self._relay(_free_loopback_port())
        relay.ensure_running(target_port)
        try:
            relay.switch_to(target_port)
            relay.hold(owner, timeout)
            self._write(
                {
                    "relay_port": relay.port,
                    "target_port": target_port,
                    "owner": owner.to_document(),
                    "timeout": timeout,
                    "started_at": time.time(),
                }
            )
            self.point_at(relay.port)
        except BaseException:
            self.file.unlink(missing_ok=True)
            with contextlib.suppress(LockstepError):
                relay.release()
            relay.stop()
            raise

    def switch_to(self, port: int) -> bool:
        """While held, a switch moves the relay's upstream (where the held requests will go);
        False when no hold is in force and the caller switches as usual."""
        current = self.current()
        if current is None:
            return False
        self._relay(int(current["relay_port"])).switch_to(port)
        self._write({**current, "target_port": port})
        return True

    def release(self) -> dict[str, object] | None:
        """Let the held requests go to the target, point the server back at it, stop the relay."""
        current = self.current()
        if current is None:
            return None
        relay = self._relay(int(current["relay_port"]))
        summary: dict[str, object] | None = None
        with contextlib.suppress(LockstepError):  # a relay that died holds nothing any more
            summary = relay.release()
        self.point_at(int(current["target_port"]))
        self.file.unlink(missing_ok=True)
        relay.stop()
        return summary or {"seconds": None}

    def check(self) -> str | None:
        """End a hold whose owner died, and start a relay that died again while its owner lives;
        why a hold was ended, or None."""
        current = self.current()
        if current is None:
            return None
        owner = HoldOwner.from_document(current.get("owner"))
        if not owner.alive():
            self.release()
            return f"its owner pid {owner.pid} is gone"
        if self._relay(int(current["relay_port"])).pid() is not None:
            return None
        try:
            self._restart_relay(current, owner)
        except LockstepError as error:
            self.release()
            return f"its relay stopped and could not be started again ({error.message})"
        return None

    def _restart_relay(self, current: dict[str, Any], owner: HoldOwner) -> None:
        """Start the relay again: it resumes the hold it persisted (the same owner asking again
        keeps it, deadline included). On its old port if it is still free, else on a new one
        nginx/HAProxy is pointed at."""
        target_port = int(current["target_port"])
        relay = self._relay(int(current["relay_port"]))
        try:
            relay.ensure_running(target_port)
        except LockstepError:
            relay = self._relay(_free_loopback_port())
            relay.ensure_running(target_port)
        started_at = float(current.get("started_at", time.time()))
        timeout = float(current.get("timeout", RELAY_REQUEST_TIMEOUT))
        relay.switch_to(target_port)
        relay.hold(owner, max(0.001, timeout - (time.time() - started_at)))  # kept if resumed
        if relay.port != int(current["relay_port"]):
            self._write({**current, "relay_port": relay.port})
            self.point_at(relay.port)

    def stop(self) -> None:
        """Stop a relay left running (the switch itself stops)."""
        current = self.current()
        if current is not None:
            self._relay(int(current["relay_port"])).stop()
            self.file.unlink(missing_ok=True)

    def _relay(self, port: int) -> BuiltinProxy:
        return BuiltinProxy(
            f"127.0.0.1:{port}",
            self.state_directory / RELAY_DIRECTORY,
            drain_timeout=self.drain_timeout,
            request_timeout=RELAY_REQUEST_TIMEOUT,
        )

    def _write(self, document: dict[str, Any]) -> None:
        temporary = self.file.with_name(f".{HOLD_FILE}.{os.getpid()}")
        temporary.write_text(json.dumps(document))
        os.replace(temporary, self.file)


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
