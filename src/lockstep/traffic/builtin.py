"""The built-in traffic switch: lockstep's own reverse proxy, run as a detached process.

The proxy process outlives the `lockstep` command (its own session, no controlling terminal), so
a deploy can end, or crash, without taking the site down. This adapter finds it through the pid
file and admin socket in the state directory, and starts it only when none answers there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lockstep
from lockstep.errors import LockstepError, UsageError
from lockstep.process import process_alive
from lockstep.redaction import is_secret_name
from lockstep.traffic.base import HoldMode, TrafficState, UpstreamCounters
from lockstep.traffic.builtin_proxy import ADMIN_SOCKET_NAME, LOG_FILE_NAME, PID_FILE_NAME
from lockstep.traffic.builtin_proxy.hold_file import read_hold_file, remove_hold_file
from lockstep.traffic.builtin_proxy.upstream_file import read_upstream_file
from lockstep.traffic.hold import HoldOwner
from lockstep.unix_sockets import UnixHTTPConnection

START_TIMEOUT = 15.0
ADMIN_TIMEOUT = 10.0


class BuiltinProxy:
    """Drives the built-in proxy for one public address; state lives in `state_directory`."""

    def __init__(
        self, listen: str, state_directory: Path, drain_timeout: float = 30.0, request_timeout: float = 60.0
    ) -> None:
        host, separator, port_text = listen.rpartition(":")
        if not separator or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise UsageError(f"traffic listen address {listen!r} is not HOST:PORT", "for example 0.0.0.0:8080")
        self.listen = listen
        self.host = host.strip("[]")
        self.port = int(port_text)
        self.state_directory = Path(state_directory)
        self.drain_timeout = drain_timeout
        self.request_timeout = request_timeout
        self.socket_path = self.state_directory / ADMIN_SOCKET_NAME
        self.log_path = self.state_directory / LOG_FILE_NAME
        self._process: subprocess.Popen[bytes] | None = None

    # -- the TrafficSwitch protocol ---------------------------------------------------------------

    def ensure_running(self, initial_port: int) -> None:
        """Adopt the proxy that answers in the state directory, or start one sending to `initial_port`
        (or to the upstream it persisted before, when it ran here earlier)."""
        self.state_directory.mkdir(parents=True, exist_ok=True)
        with self._start_lock():
            if self._answers():
                self._check_adopted_listen()
                return
            pid = self.pid()
            if pid is not None:
                deadline = time.monotonic() + START_TIMEOUT
                while time.monotonic() < deadline and self._alive_or_reap(pid):
                    if self._answers():
                        self._check_adopted_listen()
                        return
                    time.sleep(0.05)
                if self._alive_or_reap(pid):
                    raise LockstepError(
                        f"the built-in proxy (pid {pid}) runs but does not answer on {self.socket_path}",
                        f"stop it (kill {pid}) and run the command again; its log is {self.log_path}",
                    )
            self._check_port_free()
            self._start(initial_port)

    def switch_to(self, port: int) -> None:
        """Send every new request to `port`; returns once the proxy has switched (and persisted it)."""
        self._request("POST", f"/switch?port={int(port)}")

    def state(self) -> TrafficState:
        try:
            payload = self._request("GET", "/state")
        except LockstepError:
            return TrafficState(running=False, listen=self.listen, active_port=self.persisted_port())
        upstreams = tuple(
            UpstreamCounters(
                port=int(entry["port"]),
                requests=int(entry["requests"]),
                errors=int(entry["errors"]),
                in_flight=int(entry["in_flight"]),
            )
            for entry in payload["upstreams"]
        )
        return TrafficState(
            running=True,
            listen=str(payload["listen"]),
            active_port=int(payload["active_port"]),
            upstreams=upstreams,
            hold=payload.get("hold"),
        )

    def wait_drained(self, port: int, timeout: float) -> bool:
        """Poll the proxy's in-flight count for `port`; a stopped proxy has nothing in flight."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            if not state.running:
                return True
            in_flight = sum(upstream.in_flight for upstream in state.upstreams if upstream.port == port)
            if in_flight == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def stop(self) -> None:
        """Ask for a graceful stop (in-flight requests finish, up to the drain timeout), then wait for exit."""
        pid = self._pid()
        try:
            self._request("POST", "/stop")
        except LockstepError:
            if pid is None or not self._alive_or_reap(pid):
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if pid is None:
            return
        deadline = time.monotonic() + self.drain_timeout + 10
        while self._alive_or_reap(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
            time.sleep(0.02)

    def hold(self, owner: HoldOwner, timeout: float) -> HoldMode:
        """New requests wait in the proxy; it ends the hold itself when `owner` dies."""
        ticks = "" if owner.start_ticks is None else f"&start_ticks={owner.start_ticks}"
        self._request("POST", f"/hold?timeout={float(timeout)!r}&pid={owner.pid}{ticks}")
        return "queue"

    def release(self) -> dict[str, object] | None:
        """End the hold. A proxy that is not running holds nothing now, but would resume the hold
        it left on disk when started again: forgetting that file is the release then."""
        try:
            hold: dict[str, object] | None = self._request("POST", "/release").get("hold")
        except LockstepError:
            if not self.state_directory.is_dir():
                return None
            with self._start_lock():
                if self.pid() is not None:
                    raise
                persisted = read_hold_file(self.state_directory)
                remove_hold_file(self.state_directory)
            if persisted is None:
                return None
            return {**persisted.to_document(), "seconds": round(max(0.0, time.time() - persisted.started_at), 3)}
        return hold

    def check_hold(self) -> str | None:
        return None  # the proxy watches the owner itself, even with no agent running

    def hold_state(self) -> dict[str, Any] | None:
        """The proxy's current hold (owner, seconds, waiting requests...), or None."""
        try:
            hold: dict[str, Any] | None = self._request("GET", "/state").get("hold")
        except LockstepError:
            return None
        return hold

    # -- helpers ------------------------------------------------------------------------------------

    def persisted_port(self) -> int | None:
        """The upstream the proxy last persisted: where it sends traffic once it (re)starts."""
        return read_upstream_file(self.state_directory)

    def pid(self) -> int | None:
        """The running proxy's process id, or None."""
        pid = self._pid()
        return pid if pid is not None and self._alive_or_reap(pid) else None

    def _pid(self) -> int | None:
        try:
            return int((self.state_directory / PID_FILE_NAME).read_text().strip())
        except (OSError, ValueError):
            return None

    def _alive_or_reap(self, pid: int) -> bool:
        if self._process is not None and self._process.pid == pid:
            return self._process.poll() is None
        return _alive(pid)

    def _answers(self) -> bool:
        try:
            self._request("GET", "/state", timeout=2.0)
        except LockstepError:
            return False
        return True

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        """Two commands starting the proxy at once must end with one proxy, not two."""
        with (self.state_directory / "proxy.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _check_adopted_listen(self) -> None:
        """An adopted proxy listening elsewhere means the configuration changed under it: say so."""
        listening = self.state().listen
        # A proxy from before IPv6 hosts were bracketed reports "::1:8080" for "[::1]:8080".
        host, _, port = listening.rpartition(":")
        if (host.strip("[]"), port) != (self.host, str(self.port)):
            raise LockstepError(
                f"the built-in proxy in {self.state_directory} listens on {listening}, not on {self.listen}",
                "stop it (`lockstep agent stop --apps`, or kill the pid in proxy.pid) so it restarts there",
            )

    def _check_port_free(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.host, self.port))
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise LockstepError(
                        f"the built-in proxy cannot listen on {self.listen}: the address is already in use",
                        "stop the program that listens there or set another traffic listen address",
                    ) from None
                raise LockstepError(
                    f"the built-in proxy cannot listen on {self.listen}: {error.strerror or error}",
                    "check the traffic listen address",
                ) from None

    def _start(self, initial_port: int) -> None:
        package_root = str(Path(lockstep.__file__).resolve().parents[1])
        python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        argv = [
            sys.executable,
            "-m",
            "lockstep.traffic.builtin_proxy",
            "--listen",
            self.listen,
            "--state-directory",
            str(self.state_directory.absolute()),
            "--upstream-port",
            str(int(initial_port)),
            "--drain-timeout",
            str(self.drain_timeout),
            "--request-timeout",
            str(self.request_timeout),
        ]
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                cwd="/",
                env={**_without_secrets(os.environ), "PYTHONPATH": python_path},
                start_new_session=True,
                close_fds=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self._process.poll() is not None:
                raise LockstepError(
                    f"the built-in proxy exited at start: {_last_line(self.log_path)}",
                    f"see {self.log_path}",
                )
            if time.monotonic() > deadline:
                self._process.kill()
                self._process.wait()
                raise LockstepError(
                    f"the built-in proxy did not start within {START_TIMEOUT:g} s", f"see {self.log_path}"
                )
            time.sleep(0.02)

    def _request(self, method: str, path: str, timeout: float = ADMIN_TIMEOUT) -> dict[str, Any]:
        connection = UnixHTTPConnection(self.socket_path, timeout)
        try:
            connection.request(method, path)
            response = connection.getresponse()
            payload: dict[str, Any] = json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError) as error:
            raise LockstepError(
                f"the built-in proxy does not answer on {self.socket_path} ({error})",
                "start it with a deploy, or check its log " + str(self.log_path),
            ) from None
        finally:
            connection.close()
        if response.status >= 400:
            raise LockstepError(f"the built-in proxy refused {method} {path}: {payload.get('error')}")
        return payload


def _alive(pid: int) -> bool:
    """Whether `pid` is a live built-in proxy: alive, and (a stale pid file may name a reused
    pid) running the proxy's module, where /proc can tell."""
    if not process_alive(pid):
        return False
    try:
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the signal check
    return b"lockstep.traffic.builtin_proxy" in command_line


def _without_secrets(environment: Mapping[str, str]) -> dict[str, str]:
    """The environment minus secrets (LOCKSTEP_PASSWORD, database passwords, *_TOKEN, ...): the
    proxy outlives the deploy that starts it and needs none of them, and a long-lived process's
    environment is readable in /proc for as long as it runs."""
    return {name: value for name, value in environment.items() if not is_secret_name(name)}


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no log"
