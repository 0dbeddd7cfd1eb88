"""HAProxy as the traffic switch: lockstep writes the backend, validates it, and reloads HAProxy.

HAProxy runs in master-worker mode (`-W`, master CLI on a unix socket). A reload (SIGUSR2 to the
master) re-executes it with the new config: the new worker takes over the listening sockets
(handed over through the worker's stats socket, `expose-fd listeners`, so no connection is
refused), and the old worker stops accepting and exits once its requests are done. The master
CLI's `show proc` tells when the new worker runs, whether the reload failed, and which old
workers are still draining. A candidate config that fails `haproxy -c` never replaces the live
one.

Each upstream is a server named `port_<PORT>`, so the stats CSV gives per-port counters.

Two modes, as for nginx:

* ``managed``: lockstep runs its own HAProxy (config, pid file, master and stats sockets in
  `state_directory`), daemonised (`-D`) so it outlives lockstep; later runs adopt it.
* ``system``: the user's HAProxy also loads a file lockstep writes (`-f include_path`), holding
  one `backend` section; lockstep validates the user's config with it and runs a reload command.
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from lockstep.errors import LockstepError, UsageError
from lockstep.process import Command, run_capture
from lockstep.traffic.base import TrafficState, UpstreamCounters
from lockstep.traffic.common import check_port, ensure_listen_free, fsync_directory, require_executable
from lockstep.traffic.reloaded_proxy import Mode, ReloadedProxySwitch, write_candidate
from lockstep.unix_sockets import SOCKET_PATH_LIMIT, fits_in_socket_address

BACKEND_NAME = "lockstep_active"
CONFIG_FILE = "haproxy.cfg"
PID_FILE = "haproxy.pid"
MASTER_SOCKET = "master.sock"
STATS_SOCKET = "stats.sock"
SERVER_PREFIX = "port_"

RELOAD_TIMEOUT = 30.0
START_TIMEOUT = 30.0


class HaproxySwitch(ReloadedProxySwitch):
    """A `TrafficSwitch` backed by a real HAProxy (see the module docstring for the two modes)."""

    server_name = "HAProxy"
    process_name = "haproxy"
    config_file = CONFIG_FILE
    include_advice = "set it to a file your HAProxy loads with an extra -f"
    graceful_stop_signal = signal.SIGUSR1  # stop accepting, finish requests

    def __init__(
        self,
        listen: str,
        state_directory: Path,
        drain_timeout: float = 30.0,
        binary: str = "haproxy",
        mode: Mode = "managed",
        include_path: Path | None = None,
        config_path: Path | None = None,
        reload_command: tuple[str, ...] | None = None,
        master_socket: Path | None = None,
        stats_socket: Path | None = None,
        upstream_host: str = "127.0.0.1",
        backend_name: str = BACKEND_NAME,
        hard_stop_after: float | None = None,
    ) -> None:
        """
        listen: "HOST:PORT" the frontend binds (managed); system mode only reports it.
        state_directory: where lockstep keeps this switch's files; managed mode puts haproxy.cfg,
            haproxy.pid, master.sock and stats.sock here (socket paths must stay under 107 bytes).
        drain_timeout: seconds `stop()` waits for in-flight requests before forcing HAProxy down.
        binary: the haproxy executable.
        mode: "managed" (lockstep runs its own HAProxy) or "system" (the user's HAProxy loads
            `include_path`).
        include_path: system mode only (required): the file lockstep writes, one
            `backend <backend_name>` section with one `server`; load it with an extra
            `-f include_path` and point a frontend at it (`default_backend <backend_name>`).
        config_path: system mode only: the user's main config file or directory, validated
            together with the include (`haproxy -c -f config_path -f include_path`); default
            /etc/haproxy/haproxy.cfg.
        reload_command: system mode only: argv run after a successful validation; default
            `systemctl reload haproxy`.
        master_socket: managed mode: where to put the master CLI socket (default: in state_directory);
            system mode: the master CLI socket (`-S`) of the user's HAProxy, used to
            confirm a reload took effect and for `wait_drained`; default /run/haproxy-master.sock
            (Debian's default) when it exists. Without it lockstep cannot observe draining.
        stats_socket: system mode only: an admin/operator stats socket of the user's HAProxy for
            `state()` counters; None reports no counters.
        upstream_host: the host the upstream ports are on.
        backend_name: the name of the generated backend section.
        hard_stop_after: managed mode only: HAProxy's `hard-stop-after`, in seconds: how long an old
            worker may keep long-lived connections (WebSockets) after a reload; None waits forever.
        """
        super().__init__(listen, state_directory, drain_timeout, binary, mode, include_path, upstream_host)
        self.config_path = config_path if config_path is not None else Path("/etc/haproxy/haproxy.cfg")
        self.pid_file = self.state_directory / PID_FILE
        self.backend_name = backend_name
        self.hard_stop_after = hard_stop_after
        self.reload_command = (
            tuple(reload_command) if reload_command is not None else ("systemctl", "reload", "haproxy")
        )
        if mode == "managed":
            # Sockets may live elsewhere when the state directory is too deep for a socket path.
            self.master_socket: Path | None = master_socket or self.state_directory / MASTER_SOCKET
            self.stats_socket: Path | None = stats_socket or self.state_directory / STATS_SOCKET
            for path in (self.master_socket, self.stats_socket):
                if not fits_in_socket_address(path):
                    raise UsageError(
                        f"the HAProxy socket path {path} is longer than {SOCKET_PATH_LIMIT} bytes",
                        "use a shorter [traffic] state directory",
                    )
        else:
            default_master = Path("/run/haproxy-master.sock")
            self.master_socket = master_socket or (default_master if default_master.exists() else None)
            self.stats_socket = stats_socket
        self._idle_close_on_response: bool | None = None

    def _start_argv(self) -> tuple[str, ...]:
        return (
            self.binary,
            "-W",
            "-D",
            "-S",
            f"{self.master_socket},mode,600",
            "-p",
            str(self.pid_file),
            "-f",
            str(self.managed_config),
        )

    # -- the Protocol -------------------------------------------------------------------------

    def ensure_running(self, initial_port: int) -> None:
        """Start lockstep's HAProxy on `initial_port` unless it already runs (then adopt it as is).

        System mode: write the include with `initial_port` if it holds no backend yet (reloading
        only a running HAProxy), and raise when the master socket shows HAProxy is not running;
        lockstep never starts the user's HAProxy.
        """
        check_port(initial_port)
        if self.mode == "system":
            observable = self.master_socket is not None
            running = self._show_proc() is not None
            if self.active_port() is None:
                self._switch_system(initial_port, reload=running or not observable)
            if observable and not running:
                raise LockstepError(
                    f"the system HAProxy is not running (its master socket {self.master_socket} does not answer)",
                    "start it (e.g. systemctl start haproxy) or set master_socket to its -S socket",
                )
            return
        if self._master_pid() is not None:
            return
        self.state_directory.mkdir(parents=True, exist_ok=True)
        ensure_listen_free(self.listen_host, self.listen_port, "HAProxy")
        # Started again while traffic is held: to the relay, or the hold would end unasked.
        upstream = self.holding.relay_port() or initial_port
        candidate = self._validated_candidate(self.render_managed_config(upstream))
        os.replace(candidate, self.managed_config)
        for stale in (self.pid_file, self.master_socket, self.stats_socket):
            if stale is not None:
                stale.unlink(missing_ok=True)
        try:
            run_capture(Command(self._start_argv()), timeout=START_TIMEOUT)
        except LockstepError as error:
            raise LockstepError(
                f"HAProxy did not start on {self.listen}: {error.message}",
                "is the address free and the binary working?",
            ) from error
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            processes = self._show_proc()
            if processes is not None and processes.workers:
                return
            time.sleep(0.02)
        raise LockstepError(f"HAProxy started but no worker came up within {START_TIMEOUT:.0f} s")

    def state(self) -> TrafficState:
        """Whether HAProxy runs, the active port (from the written config) and per-port counters.

        Counters come from the current worker's stats (`show stat`): requests (req_tot, or
        sessions), errors (hrsp_5xx + connection and response errors) and in_flight (scur) per
        `port_<PORT>` server. A reload starts a new worker, so they count since the last switch
        (or start). System mode without `stats_socket` reports no counters, and without either
        socket reports running=False (lockstep has nothing to ask).
        """
        if self.mode == "managed":
            running = self._master_pid() is not None
        elif self.master_socket is not None:
            running = self._show_proc() is not None
        else:
            running = self.stats_socket is not None and self._answers(self.stats_socket)
        upstreams = self._read_counters() if self.stats_socket is not None else ()
        active = self.holding.target_port() or self.active_port()  # held: where the relay sends it
        return TrafficState(
            running=running, listen=self.listen, active_port=active, upstreams=upstreams, hold=self.holding.state()
        )

    def wait_drained(self, port: int, timeout: float) -> bool:
        """Wait until no HAProxy worker from before the last reload has a request in flight (or a
        tunnel, a WebSocket, open) to a backend, and, when `port` is still active, until its
        server has no current session.

        An old worker keeps idle client connections until it answers their next request with
        "Connection: close" (`option idle-close-on-response`), so it may outlive its last request;
        what it still has in flight is asked through the master CLI (`@!PID show stat`).
        """
        deadline = time.monotonic() + timeout
        while True:
            processes = self._show_proc()
            old_workers = processes.old_workers if processes is not None else ()
            busy = any(counter.port == port and counter.in_flight > 0 for counter in self._read_counters())
            if not busy and not any(self._old_worker_busy(pid) for pid in old_workers):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _old_worker_busy(self, pid: int) -> bool:
        """Whether an old worker has a current session on a server of the backend; True when it
        cannot be asked (no master socket)."""
        if self.master_socket is None:
            return True
        try:
            text = _ask(self.master_socket, f"@!{pid} show stat")
        except OSError:
            return True
        return any(counter.in_flight > 0 for counter in self._parse_counters(text))

    # -- more --------------------------------------------------------------------------------

    def _port_in(self, text: str) -> int | None:
        """The port of the `server` line in the generated backend section."""
        in_backend = False
        for line in text.splitlines():
            words = line.split()
            if not words:
                continue
            if words[0] in ("backend", "frontend", "listen", "defaults", "global"):
                in_backend = words[0] == "backend" and words[1:2] == [self.backend_name]
            elif in_backend and words[0] == "server" and len(words) >= 3:
                port_text = words[2].rsplit(":", 1)[-1]
                if port_text.isdigit():
                    return int(port_text)
        return None

    def render_backend(self, port: int) -> str:
        """The backend section; it is all a system-mode include file holds."""
        host = f"[{self.upstream_host}]" if ":" in self.upstream_host else self.upstream_host
        return (
            "# Written by lockstep; every switch rewrites this file. Do not edit.\n"
            f"backend {self.backend_name}\n"
            "    mode http\n"
            f"    server {SERVER_PREFIX}{port} {host}:{port}\n"
        )

    def render_managed_config(self, port: int) -> str:
        """The whole haproxy.cfg of a managed instance."""
        hard_stop = f"    hard-stop-after {int(self.hard_stop_after * 1000)}ms\n" if self.hard_stop_after else ""
        bind_host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        # A reload's old worker closes idle client connections at once by default, and a request a
        # client sends on one at that moment gets no answer (a POST cannot be retried). With this
        # option it answers the next request with "Connection: close" instead (HAProxy >= 2.6).
        idle_close = "    option idle-close-on-response\n" if self._knows_idle_close_on_response() else ""
        return (
            "# Written by lockstep (managed HAProxy traffic switch); every switch rewrites it.\n"
            "global\n"
            f"    pidfile {self.pid_file}\n"
            # The new worker takes the listening sockets over from the old one through this
            # socket, so a reload never refuses a connection.
            f"    stats socket {self.stats_socket} mode 600 level admin expose-fd listeners\n"
            f"{hard_stop}"
            "defaults\n"
            "    mode http\n"
            "    option http-keep-alive\n"
            f"{idle_close}"
            "    timeout connect 5s\n"
            "    timeout client 75s\n"
            "    timeout server 3600s\n"
            "    timeout tunnel 3600s\n"
            "    timeout http-keep-alive 75s\n"
            "frontend lockstep\n"
            f"    bind {bind_host}:{self.listen_port}\n"
            "    option forwardfor\n"
            # Set, not passed through from the client, as nginx and the built-in proxy do: an app
            # trusts these from its proxy (secure cookies, redirects, links).
            "    http-request set-header X-Forwarded-Proto http\n"
            "    http-request del-header X-Forwarded-Host\n"
            "    http-request set-header X-Forwarded-Host %[req.hdr(host)] if { req.hdr(host) -m found }\n"
            f"    default_backend {self.backend_name}\n" + self.render_backend(port)
        )

    # -- internals ---------------------------------------------------------------------------

    def _knows_idle_close_on_response(self) -> bool:
        """Whether this HAProxy accepts `option idle-close-on-response` (asked once: older
        versions refuse the keyword, and keep closing idle connections on a reload)."""
        if self._idle_close_on_response is None:
            self.state_directory.mkdir(parents=True, exist_ok=True)
            probe = write_candidate(
                self.state_directory / "probe.cfg", "defaults\n    mode http\n    option idle-close-on-response\n"
            )
            try:
                checked = subprocess.run(
                    (self.binary, "-c", "-q", "-f", str(probe)),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=RELOAD_TIMEOUT,
                    check=False,
                )
                # 0: valid; 2: valid but nothing to listen on (this probe has no frontend); 1: errors.
                self._idle_close_on_response = checked.returncode in (0, 2)
            except (OSError, subprocess.TimeoutExpired):
                self._idle_close_on_response = False
            finally:
                probe.unlink(missing_ok=True)
        return self._idle_close_on_response

    def _switch_managed(self, port: int) -> None:
        master = self._master_pid()
        if master is None:
            raise LockstepError(
                f"lockstep's HAProxy is not running (no live master in {self.pid_file})",
                "start it first (ensure_running), e.g. by running the deploy again",
            )
        candidate = self._validated_candidate(self.render_managed_config(port))
        before = self._show_proc()
        os.replace(candidate, self.managed_config)
        fsync_directory(self.managed_config.parent)
        os.kill(master, signal.SIGUSR2)
        self._wait_for_reload(before)

    def _switch_system(self, port: int, reload: bool = True) -> None:
        assert self.include_path is not None
        include = self.include_path
        files = (self.config_path,) if _is_inside(include, self.config_path) else (self.config_path, include)
        self._replace_include(self.render_backend(port), lambda: self._validate(files))
        if not reload:
            return
        before = self._show_proc() if self.master_socket is not None else None
        try:
            run_capture(Command(self.reload_command), timeout=RELOAD_TIMEOUT)
        except LockstepError as error:
            raise LockstepError(
                f"the HAProxy reload command failed: {error.message}",
                f"check the reload_command setting ({Command(self.reload_command).display()})",
            ) from error
        if before is not None:
            self._wait_for_reload(before)

    def _wait_for_reload(self, before: _Processes | None) -> None:
        """Wait until the master reports a worker newer than `before`'s; a failed reload raises."""
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while time.monotonic() < deadline:
            now = self._show_proc()
            if now is not None and before is not None:
                if now.failed_reloads > before.failed_reloads:
                    raise LockstepError(
                        "HAProxy rejected the reload and keeps serving the old backend",
                        "run haproxy -c on its config to see why",
                    )
                if now.workers and not set(now.workers) & set(before.workers) and self._stopped(before.workers):
                    return
            elif now is not None and now.workers:
                return
            time.sleep(0.005)
        raise LockstepError(
            f"HAProxy did not apply the new backend within {RELOAD_TIMEOUT:.0f} s",
            "check HAProxy's log; the old backend may still serve",
        )

    def _stopped(self, workers: tuple[int, ...]) -> bool:
        """Whether every one of `workers` (those before a reload) has begun its soft stop, and so
        accepts no more connections. The master lists the new worker a moment before an old one
        handles its stop signal: a request in that moment still reached the old backend after
        the switch had returned (seen in a test of ten switches under load). An old worker that
        is gone, or a master that cannot ask it (`@!PID show info`), counts as stopped."""
        if self.master_socket is None:
            return True
        for pid in workers:
            try:
                answer = _ask(self.master_socket, f"@!{pid} show info")
            except OSError:
                continue
            if any(line.replace(" ", "") == "Stopping:0" for line in answer.splitlines()):
                return False
        return True

    def _validate_managed(self, candidate: Path) -> None:
        self._validate((candidate,))

    def _validate(self, files: tuple[Path, ...]) -> None:
        require_executable(self.binary, "HAProxy", "haproxy")
        argv = [self.binary, "-c", "-q"]
        for path in files:
            argv += ["-f", str(path)]
        try:
            run_capture(Command(tuple(argv)), timeout=RELOAD_TIMEOUT)
        except LockstepError as error:
            raise LockstepError(
                f"the new HAProxy config failed validation, nothing was reloaded: {error.message}",
                "the previous backend keeps serving; fix the HAProxy config and switch again",
            ) from error

    def _show_proc(self) -> _Processes | None:
        """The master's `show proc`, or None when the master CLI does not answer."""
        if self.master_socket is None:
            return None
        try:
            text = _ask(self.master_socket, "show proc")
        except OSError:
            return None
        return _Processes.parse(text)

    @staticmethod
    def _answers(path: Path) -> bool:
        try:
            _ask(path, "show info")
        except OSError:
            return False
        return True

    def _read_counters(self) -> tuple[UpstreamCounters, ...]:
        if self.stats_socket is None:
            return ()
        try:
            text = _ask(self.stats_socket, "show stat")
        except OSError:
            return ()
        return self._parse_counters(text)

    def _parse_counters(self, text: str) -> tuple[UpstreamCounters, ...]:
        """Per-port counters from a `show stat` CSV answer."""
        lines = text.lstrip("# ").splitlines()
        counters = []
        for row in csv.DictReader(lines):
            server = row.get("svname") or ""
            if row.get("pxname") != self.backend_name or not server.startswith(SERVER_PREFIX):
                continue
            port_text = server[len(SERVER_PREFIX) :]
            if not port_text.isdigit():
                continue

            def number(name: str, fields: dict[str, str] = row) -> int:
                value = fields.get(name) or ""
                return int(value) if value.isdigit() else 0

            requests = number("req_tot") or number("stot")
            errors = number("hrsp_5xx") + number("econ") + number("eresp")
            counters.append(
                UpstreamCounters(port=int(port_text), requests=requests, errors=errors, in_flight=number("scur"))
            )
        return tuple(counters)


class _Processes:
    """The parts of the master's `show proc` that lockstep needs."""

    def __init__(self, workers: tuple[int, ...], old_workers: tuple[int, ...], failed_reloads: int) -> None:
        self.workers = workers
        self.old_workers = old_workers
        self.failed_reloads = failed_reloads

    @classmethod
    def parse(cls, text: str) -> _Processes:
        workers: list[int] = []
        old_workers: list[int] = []
        failed = 0
        section = "master"
        for line in text.splitlines():
            if line.startswith("# "):
                section = line[2:].strip()
                continue
            words = line.split()
            if not words or not words[0].isdigit():
                continue
            if len(words) > 1 and words[1] == "master" and "[failed:" in line:
                failed_text = line.split("[failed:", 1)[1].split("]", 1)[0].strip()
                failed = int(failed_text) if failed_text.isdigit() else 0
            elif section == "workers":
                workers.append(int(words[0]))
            elif section == "old workers":
                old_workers.append(int(words[0]))
        return cls(tuple(workers), tuple(old_workers), failed)


def _ask(path: Path, command: str, timeout: float = 10.0) -> str:
    """One command on an HAProxy CLI socket (master or stats); returns the whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(str(path))
        connection.sendall(command.encode() + b"\n")
        connection.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _is_inside(path: Path, directory: Path) -> bool:
    return directory.is_dir() and path.resolve().is_relative_to(directory.resolve())
