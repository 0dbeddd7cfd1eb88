"""The agent's API: JSON over HTTP on a unix socket in the environment's state directory.

Only local users who can open the socket (mode 0600, the state directory 0700) can talk to it;
nothing is exposed over TCP. Routes:

  GET  /v1/status                      slots, processes, traffic
  GET  /v1/events?since=ID             what happened since event ID
  POST /v1/slots/SLOT/start            {release_id, release_directory, version, components: [...]}
  POST /v1/slots/SLOT/components       {components: [...]}: start more components in a running slot
  POST /v1/slots/SLOT/stop             {components: [...] | null}
  POST /v1/traffic/switch              {slot}
  POST /v1/traffic/withdraw            {slot}: no slot has the traffic (undo of a first deploy)
  POST /v1/traffic/drain               {slot, timeout} -> {drained}
  POST /v1/traffic/hold                {owner: {pid, start_ticks}, timeout} -> {held, mode, drained}
  POST /v1/traffic/release             -> {released, hold: {seconds, held, refused, ...}}
  POST /v1/shutdown                    {stop_apps: bool}
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from lockstep.agent.service import AgentService, ComponentLaunch
from lockstep.errors import LockstepError, UsageError
from lockstep.exit_codes import ExitCode
from lockstep.traffic.hold import HoldOwner
from lockstep.unix_sockets import foreign_socket_owner, peer_pid

Handler = Callable[[dict[str, Any], dict[str, list[str]]], Any]


class AgentAlreadyRunning(LockstepError):
    """Another agent answers on this environment's socket: the environment is held by someone
    else, as with a lock (exit code LOCKED), and waiting or stopping that agent frees it."""

    exit_code = ExitCode.LOCKED


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True


class AgentServer:
    """Serves an AgentService on a unix socket until `shutdown()`."""

    def __init__(self, service: AgentService, socket_path: Path, stop_command: str = "lockstep agent stop") -> None:
        self.service = service
        self.socket_path = socket_path
        self.stop_requested = threading.Event()
        self.stop_apps_requested = False
        _claim_socket_path(socket_path, stop_command)
        routes = self._routes()

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None  # requests are not worth a log line; what they change is an event

            def _dispatch(self, method: str) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                except json.JSONDecodeError:
                    self._reply(400, {"error": "the request body is not JSON"})
                    return
                handler = routes.get((method, url.path))
                if handler is None:
                    self._reply(404, {"error": f"no such agent endpoint: {method} {url.path}"})
                    return
                try:
                    self._reply(200, handler(body, parse_qs(url.query)))
                except LockstepError as error:
                    self._reply(409, {"error": error.message, "hint": error.hint, "exit_code": int(error.exit_code)})
                except Exception as error:  # the agent must survive a bad request
                    self._reply(500, {"error": f"the agent failed: {type(error).__name__}: {error}"})

            def _reply(self, status: int, document: Any) -> None:
                payload = json.dumps(document).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

        # Bound with mode 0600 from the start: chmod after bind would leave a moment in which
        # the umask's mode lets others connect.
        previous_umask = os.umask(0o177)
        try:
            self._server = _UnixHTTPServer(str(socket_path), RequestHandler)
        finally:
            os.umask(previous_umask)
        os.chmod(socket_path, 0o600)

    def _routes(self) -> dict[tuple[str, str], Handler]:
        service = self.service
        routes: dict[tuple[str, str], Handler] = {
            ("GET", "/v1/status"): lambda body, query: service.status(),
            ("GET", "/v1/events"): lambda body, query: service.events(int(query.get("since", ["0"])[0])),
            ("POST", "/v1/traffic/switch"): lambda body, query: service.switch(str(body["slot"])),
            ("POST", "/v1/traffic/withdraw"): lambda body, query: service.withdraw_traffic(str(body["slot"])),
            ("POST", "/v1/traffic/drain"): lambda body, query: {
                "drained": service.wait_drained(str(body["slot"]), float(body.get("timeout", 30.0)))
            },
            ("POST", "/v1/traffic/hold"): self._hold_route,
            ("POST", "/v1/traffic/release"): lambda body, query: service.release(),
            ("POST", "/v1/shutdown"): self._shutdown_route,
        }
        for slot in ("blue", "green"):
            routes[("POST", f"/v1/slots/{slot}/start")] = self._start_route(slot)
            routes[("POST", f"/v1/slots/{slot}/stop")] = self._stop_route(slot)
            routes[("POST", f"/v1/slots/{slot}/components")] = self._components_route(slot)
        return routes

    def _start_route(self, slot: str) -> Handler:
        def start(body: dict[str, Any], query: dict[str, list[str]]) -> Any:
            return self.service.start_slot(
                slot,
                release_id=str(body["release_id"]),
                release_directory=Path(body["release_directory"]),
                version=body.get("version"),
                launches=[ComponentLaunch.from_document(item) for item in body["components"]],
            )

        return start

    def _components_route(self, slot: str) -> Handler:
        def start_components(body: dict[str, Any], query: dict[str, list[str]]) -> Any:
            launches = [ComponentLaunch.from_document(item) for item in body["components"]]
            directory = body.get("release_directory")
            return self.service.start_components(
                slot,
                launches,
                release_id=body.get("release_id"),
                release_directory=None if directory is None else Path(directory),
                replace=bool(body.get("replace", False)),
            )

        return start_components

    def _stop_route(self, slot: str) -> Handler:
        def stop(body: dict[str, Any], query: dict[str, list[str]]) -> Any:
            components = body.get("components")
            self.service.stop_slot(slot, None if components is None else [str(name) for name in components])
            return {"stopped": slot}

        return stop

    def _hold_route(self, body: dict[str, Any], query: dict[str, list[str]]) -> Any:
        try:
            owner = HoldOwner.from_document(body.get("owner"))
            timeout = float(body.get("timeout", 30.0))
        except (TypeError, ValueError) as error:
            raise UsageError(f"a traffic hold needs an owner and a timeout: {error}") from None
        if not 0 < timeout <= 3600:
            raise UsageError(f"a traffic hold's timeout must be between 0 and 3600 seconds, not {timeout:g}")
        return self.service.hold(owner, timeout)

    def _shutdown_route(self, body: dict[str, Any], query: dict[str, list[str]]) -> Any:
        self.stop_apps_requested = bool(body.get("stop_apps"))
        self.stop_requested.set()
        return {"stopping": True, "stop_apps": self.stop_apps_requested}

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()


def _claim_socket_path(path: Path, stop_command: str) -> None:
    """Remove a socket left by a dead agent; refuse when a live agent answers on it, or when the
    path belongs to another user (see `foreign_socket_owner`)."""
    owner = foreign_socket_owner(path)
    if owner is not None:
        raise LockstepError(
            f"the agent socket {path} belongs to another user (uid {owner})",
            "another user may be impersonating the agent: remove that file (as root) and start the agent again",
        )
    if not path.exists() and not path.is_symlink():
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2.0)
        probe.connect(str(path))
        running = peer_pid(probe)  # the agent that answered is the process listening there
    except OSError:
        path.unlink(missing_ok=True)  # nobody listens: a crashed agent's leftover
        return
    finally:
        probe.close()
    who = f"PID {running}" if running is not None else "PID unknown"
    stop_it = f"`{stop_command}`" + (f" (or `kill {running}`)" if running is not None else "")
    raise AgentAlreadyRunning(
        f"an agent is already running for this environment ({who}, socket {path})",
        f"use it, or stop it first with {stop_it}",
    )
