"""Talk to a running agent over its unix socket, synchronously (deploys are step by step)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lockstep.errors import LockstepError
from lockstep.traffic.hold import HoldOwner
from lockstep.unix_sockets import UnixHTTPConnection, foreign_socket_owner


class AgentUnavailable(LockstepError):
    """No agent answers for the environment."""


class AgentRequestFailed(LockstepError):
    """The agent refused or failed a request; its message says why."""


class AgentClient:
    """One environment's agent; every call is one request."""

    def __init__(self, socket_path: Path, environment: str, config_hint: str = "") -> None:
        self.socket_path = socket_path
        self.environment = environment
        self._config_hint = config_hint

    def _unavailable(self, reason: str) -> AgentUnavailable:
        return AgentUnavailable(
            f"the lockstep agent for environment {self.environment!r} is not running ({reason})",
            f"start it with `lockstep{self._config_hint} agent --env {self.environment}` "
            "(or run it as a service: `lockstep agent print-systemd-unit`)",
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
        connection = UnixHTTPConnection(self.socket_path, timeout)
        try:
            payload = None if body is None else json.dumps(body).encode("utf-8")
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            try:
                connection.request(method, path, body=payload, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except FileNotFoundError:
                raise self._unavailable(f"no socket at {self.socket_path}") from None
            except ConnectionRefusedError:
                raise self._unavailable("nothing listens on its socket") from None
            except TimeoutError:
                raise self._unavailable(f"no answer within {timeout:.0f} s") from None
            except OSError as error:
                raise self._unavailable(str(error)) from None
        finally:
            connection.close()
        try:
            document = json.loads(data or b"null")
        except json.JSONDecodeError:
            raise AgentRequestFailed(f"the agent sent a reply that is not JSON (HTTP {response.status})") from None
        if response.status != 200:
            message = document.get("error", f"HTTP {response.status}") if isinstance(document, dict) else str(document)
            hint = document.get("hint") if isinstance(document, dict) else None
            raise AgentRequestFailed(f"the agent refused: {message}", hint)
        return document

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
