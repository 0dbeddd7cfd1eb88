"""Talk to a running agent over its unix socket, synchronously (deploys are step by step).

A deploy or rollback that starts while the agent restarts (systemd's Restart=, an upgrade, a
crash) waits for it: while the socket is absent or nobody listens on it, the request has not
been sent, so connecting again is safe, for up to `wait_seconds` (LOCKSTEP_AGENT_WAIT, 30 s by
default). Once connected, a request that may have reached the agent (a POST: start, switch,
stop) is never sent again, so nothing is started or switched twice; a GET (status, events)
changes nothing and is tried again within the same wait.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from lockstep.errors import LockstepError, UsageError
from lockstep.traffic.hold import HoldOwner
from lockstep.unix_sockets import UnixHTTPConnection, foreign_socket_owner

AGENT_WAIT_VARIABLE = "LOCKSTEP_AGENT_WAIT"
DEFAULT_AGENT_WAIT_SECONDS = 30.0
RECONNECT_INTERVAL = 0.2


def agent_wait_seconds() -> float:
    """How long a deploy or rollback waits for an agent that is not answering (LOCKSTEP_AGENT_WAIT)."""
    text = os.environ.get(AGENT_WAIT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_AGENT_WAIT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise UsageError(
            f"{AGENT_WAIT_VARIABLE}={text!r} is not a number of seconds",
            f"set {AGENT_WAIT_VARIABLE} to the seconds to wait for a restarting agent (0: do not wait)",
        )
    return seconds


class _NotConnected(Exception):
    """Connecting failed: the request was not sent."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _LostAfterSending(Exception):
    """The connection broke after the request went out: the agent may have acted on it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AgentUnavailable(LockstepError):
    """No agent answers for the environment."""


class AgentRequestFailed(LockstepError):
    """The agent refused or failed a request; its message says why."""


class AgentClient:
    """One environment's agent; every call is one request."""

    def __init__(self, socket_path: Path, environment: str, config_hint: str = "", wait_seconds: float = 0.0) -> None:
        self.socket_path = socket_path
        self.environment = environment
        self._config_hint = config_hint
        self.wait_seconds = wait_seconds
        self._announced = False

    def _unavailable(self, reason: str) -> AgentUnavailable:
        # -c belongs to `agent` (lockstep itself takes no -c); the unit needs the same config and env.
        command = f"lockstep agent{self._config_hint} --env {self.environment}"
        return AgentUnavailable(
            f"the lockstep agent for environment {self.environment!r} is not running ({reason})",
            f"start it with `{command}` (or run it as a service: `{command} print-systemd-unit`)",
        )

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 120.0) -> Any:
        owner = foreign_socket_owner(self.socket_path)
        if owner is not None:
            raise AgentUnavailable(
                f"the agent socket {self.socket_path} belongs to another user (uid {owner}); "
                "lockstep does not talk to it",
                "an agent runs as the user who deploys; if that socket is not yours, remove it "
                "(as root) and start the agent again",
            )
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                status, data = self._exchange(method, path, body, timeout)
                break
            except _NotConnected as error:
                reason = error.reason
            except _LostAfterSending as error:
                if method != "GET":
                    raise self._unavailable(f"{error.reason}; the request may have reached it") from None
                reason = error.reason
            if time.monotonic() >= deadline:
                waited = f"; waited {self.wait_seconds:.0f} s" if self.wait_seconds else ""
                self.wait_seconds = 0.0  # it did not come back: the next request (an undo) fails at once
                raise self._unavailable(reason + waited)
            self._announce(reason)
            time.sleep(RECONNECT_INTERVAL)
        try:
            document = json.loads(data or b"null")
        except json.JSONDecodeError:
            raise AgentRequestFailed(f"the agent sent a reply that is not JSON (HTTP {status})") from None
        if status != 200:
            message = document.get("error", f"HTTP {status}") if isinstance(document, dict) else str(document)
            hint = document.get("hint") if isinstance(document, dict) else None
            raise AgentRequestFailed(f"the agent refused: {message}", hint)
        return document

    def _exchange(self, method: str, path: str, body: dict[str, Any] | None, timeout: float) -> tuple[int, bytes]:
        """One connection, one request: (HTTP status, body). Raises _NotConnected when the request
        was not sent, _LostAfterSending when the connection broke after it was, AgentUnavailable
        when the agent took too long to answer."""
        connection = UnixHTTPConnection(self.socket_path, timeout)
        try:
            try:
                connection.connect()
            except FileNotFoundError:
                raise _NotConnected(f"no socket at {self.socket_path}") from None
            except ConnectionRefusedError:
                raise _NotConnected("nothing listens on its socket") from None
            except TimeoutError:
                raise self._unavailable(f"no answer within {timeout:.0f} s") from None
            except OSError as error:
                raise self._unavailable(str(error)) from None
            payload = None if body is None else json.dumps(body).encode("utf-8")
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            try:
                connection.request(method, path, body=payload, headers=headers)
                response = connection.getresponse()
                return response.status, response.read()
            except TimeoutError:
                raise self._unavailable(f"no answer within {timeout:.0f} s") from None
            except (ConnectionError, http.client.RemoteDisconnected, http.client.IncompleteRead) as error:
                raise _LostAfterSending(f"the connection broke: {error}") from None
            except OSError as error:
                raise self._unavailable(str(error)) from None
        finally:
            connection.close()

    def _announce(self, reason: str) -> None:
        """Once per client, on a terminal: why nothing seems to happen for a while."""
        if self._announced:
            return
        self._announced = True
        if sys.stderr.isatty():
            print(
                f"lockstep: waiting up to {self.wait_seconds:.0f} s for the agent of environment "
                f"{self.environment!r} ({reason}): it may be restarting",
                file=sys.stderr,
                flush=True,
            )

    def is_running(self) -> bool:
        try:
            self.status()
        except AgentUnavailable:
            return False
        return True

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/v1/status", timeout=10.0)
        return result

    def events(self, since_id: int) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", f"/v1/events?since={since_id}", timeout=10.0)
        return result

    def start_slot(
        self, slot: str, release_id: str, release_directory: Path, version: str | None, components: list[dict[str, Any]]
    ) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "POST",
            f"/v1/slots/{slot}/start",
            {
                "release_id": release_id,
                "release_directory": str(release_directory),
                "version": version,
                "components": components,
            },
        )
        return result

    def start_components(
        self,
        slot: str,
        components: list[dict[str, Any]],
        release_id: str | None = None,
        release_directory: Path | None = None,
        replace: bool = False,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"components": components, "replace": replace, "release_id": release_id}
        body["release_directory"] = None if release_directory is None else str(release_directory)
        result: dict[str, Any] = self.request("POST", f"/v1/slots/{slot}/components", body)
        return result

    def stop_slot(self, slot: str, components: list[str] | None = None) -> None:
        self.request("POST", f"/v1/slots/{slot}/stop", {"components": components})

    def switch(self, slot: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/v1/traffic/switch", {"slot": slot})
        return result

    def withdraw_traffic(self, slot: str) -> None:
        self.request("POST", "/v1/traffic/withdraw", {"slot": slot})

    def wait_drained(self, slot: str, timeout: float) -> bool:
        result = self.request("POST", "/v1/traffic/drain", {"slot": slot, "timeout": timeout}, timeout=timeout + 30)
        return bool(result.get("drained"))

    def hold(self, owner: HoldOwner, timeout: float, drain_timeout: float) -> dict[str, Any]:
        """Hold new requests for `owner` (the calling process); returns once in-flight ones drained."""
        result: dict[str, Any] = self.request(
            "POST",
            "/v1/traffic/hold",
            {"owner": owner.to_document(), "timeout": timeout},
            timeout=drain_timeout + 60,
        )
        return result

    def release(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/v1/traffic/release", {})
        return result

    def shutdown(self, stop_apps: bool = False) -> None:
        self.request("POST", "/v1/shutdown", {"stop_apps": stop_apps})
