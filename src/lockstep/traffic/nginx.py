"""nginx as the traffic switch: lockstep writes the upstream, validates it, and reloads nginx.

A reload is nginx's own zero-downtime path: the master re-reads the config, starts new workers
with the new upstream, and tells the old workers to stop accepting and exit once their
requests are done. So `switch_to` is: write the candidate config, `nginx -t` it, move it into
place atomically, signal the master, and wait until the old workers have stopped accepting.
A candidate that fails `nginx -t` never replaces the live file, so nginx keeps serving the old
upstream.

Two modes:

* ``managed``: lockstep owns a whole nginx instance whose config, pid file, logs and temp
  directories live in `state_directory` (so it runs as any user). It is started detached
  (nginx daemonises), so it outlives the lockstep process, and later lockstep runs adopt it
  through its pid file.
* ``system``: the user's nginx `include`s a file lockstep writes (one `upstream` block, in the
  `http` context). lockstep validates the user's whole config with it and runs a reload command.
  lockstep never starts or stops that nginx.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lockstep.errors import LockstepError
from lockstep.process import Command, process_alive, run_capture
from lockstep.traffic.base import TrafficState, UpstreamCounters
from lockstep.traffic.common import (
    check_port,
    command_line,
    ensure_listen_free,
    fsync_directory,
    require_executable,
    wait_for_exit,
)
from lockstep.traffic.reloaded_proxy import Mode, ReloadedProxySwitch

UPSTREAM_NAME = "lockstep_active"
CONFIG_FILE = "nginx.conf"
PID_FILE = "nginx.pid"
ERROR_LOG = "error.log"
ACCESS_LOG = "access.log"

# How long a reload may take before lockstep calls it failed; generous for loaded machines.
RELOAD_TIMEOUT = 30.0
START_TIMEOUT = 30.0

_SERVER_LINE = re.compile(r"^\s*server\s+\[?([^\s\];]+?)\]?:(\d+)\b", re.MULTILINE)


class NginxSwitch(ReloadedProxySwitch):
    """A `TrafficSwitch` backed by a real nginx (see the module docstring for the two modes)."""

    server_name = "nginx"
    process_name = "nginx"
    config_file = CONFIG_FILE
    include_advice = "set it to a file your nginx config includes inside http { }"
    graceful_stop_signal = signal.SIGQUIT  # graceful shutdown: finish requests, then exit

    def __init__(
        self,
        listen: str,
        state_directory: Path,
        drain_timeout: float = 30.0,
        binary: str = "nginx",
        mode: Mode = "managed",
        include_path: Path | None = None,
        config_path: Path | None = None,
        reload_command: tuple[str, ...] | None = None,
        pid_file: Path | None = None,
        upstream_host: str = "127.0.0.1",
        upstream_name: str = UPSTREAM_NAME,
        worker_processes: int = 1,
        user: str | None = None,
    ) -> None:
        """
        listen: "HOST:PORT" the public side listens on (managed: written into the config;
            system: only reported by `state()`, the user's config owns its `listen`).
        state_directory: where lockstep keeps this switch's files; managed mode puts nginx.conf,
            nginx.pid, error.log, access.log and temp/ here; must be writable by lockstep.
        drain_timeout: seconds `stop()` waits for in-flight requests before forcing nginx down.
        binary: the nginx executable (a name on PATH or a path).
        mode: "managed" (lockstep runs its own nginx) or "system" (the user's nginx includes
            `include_path`).
        include_path: system mode only (required): the file lockstep writes, holding
            `upstream <upstream_name> { server HOST:PORT; }`; the user's config must `include` it
            inside `http { }` and `proxy_pass http://<upstream_name>;`.
        config_path: system mode only: the user's main nginx config, passed as `-c` to `nginx -t`
            and to the default reload command; None uses nginx's compiled-in default.
        reload_command: system mode only: argv run after a successful validation; default
            `nginx [-c config_path] -s reload`.
        pid_file: system mode only: the nginx master's pid file, used to wait until the reload has
            taken effect and for `wait_drained`; default /run/nginx.pid. Unreadable: lockstep
            returns as soon as the reload command succeeds and cannot observe draining.
        upstream_host: the host the upstream ports are on.
        upstream_name: the name of the generated `upstream` block.
        worker_processes: managed mode only: nginx `worker_processes`.
        user: managed mode only, when lockstep runs as root: nginx's `user` for the workers;
            None keeps nginx's default (nobody). Workers never need the state directory.
        """
        super().__init__(listen, state_directory, drain_timeout, binary, mode, include_path, upstream_host)
        self.config_path = config_path
        self.upstream_name = upstream_name
        self.worker_processes = worker_processes
        self.user = user
        if mode == "managed":
            self.pid_file = self.state_directory / PID_FILE
        else:
            self.pid_file = pid_file if pid_file is not None else Path("/run/nginx.pid")
        if reload_command is not None:
            self.reload_command: tuple[str, ...] = tuple(reload_command)
        else:
            self.reload_command = (binary, *self._config_arguments(), "-s", "reload")
        self._log_offset = 0
        self._counts: Counter[tuple[int, str]] = Counter()

    # -- paths --------------------------------------------------------------------------------

    @property
    def error_log(self) -> Path:
        return self.state_directory / ERROR_LOG

    @property
    def access_log(self) -> Path:
        return self.state_directory / ACCESS_LOG

    def _config_arguments(self) -> tuple[str, ...]:
        if self.mode == "managed":
            return ("-p", str(self.state_directory), "-e", str(self.error_log), "-c", str(self.managed_config))
        return ("-c", str(self.config_path)) if self.config_path is not None else ()

    # -- the Protocol -------------------------------------------------------------------------

    def ensure_running(self, initial_port: int) -> None:
        """Start lockstep's nginx on `initial_port` unless it already runs (then adopt it as is).

        System mode: write the include with `initial_port` if it holds no upstream yet (reloading
        only a running nginx), and raise when the user's nginx is not running (per `pid_file`);
        lockstep never starts it.
        """
        check_port(initial_port)
        if self.mode == "system":
            running = self._master_pid() is not None
            if self.active_port() is None:
                self._switch_system(initial_port, reload=running)
            if not running:
                raise LockstepError(
                    f"the system nginx is not running (no live master in {self.pid_file})",
                    "start it (e.g. systemctl start nginx) or set pid_file to its pid file",
                )
            return
        if self._master_pid() is not None:
            return
        self.state_directory.mkdir(parents=True, exist_ok=True)
        self._stop_orphaned_workers()
        ensure_listen_free(self.listen_host, self.listen_port, "nginx")
        # Started again while traffic is held: to the relay, or the hold would end unasked.
        upstream = self.holding.relay_port() or initial_port
        candidate = self._validated_candidate(self.render_managed_config(upstream))
        os.replace(candidate, self.managed_config)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        try:
            run_capture(Command((self.binary, *self._config_arguments())), timeout=START_TIMEOUT)
        except LockstepError as error:
            raise LockstepError(
                f"nginx did not start on {self.listen}: {error.message}",
                f"is the address free and the binary working? see {self.error_log}",
            ) from error
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            master = self._master_pid()
            if master is not None and _live_workers(master):
                return
            time.sleep(0.02)
        raise LockstepError(
            f"nginx started but no worker came up within {START_TIMEOUT:.0f} s", f"see {self.error_log}"
        )

    def state(self) -> TrafficState:
        """Whether nginx runs, the active upstream port (from the written config) and counters.

        Counters (managed mode only) come from lockstep's access log: requests and errors (status
        >= 500, including nginx's own 502/504) per upstream port since the log began. in_flight
        is always 0 (nginx does not report it per upstream without the commercial API). System
        mode reports no counters.
        """
        running = self._master_pid() is not None
        active = self.holding.target_port() or self.active_port()  # held: where the relay sends it
        upstreams: tuple[UpstreamCounters, ...] = ()
        if self.mode == "managed":
            upstreams = self._read_counters()
        return TrafficState(
            running=running, listen=self.listen, active_port=active, upstreams=upstreams, hold=self.holding.state()
        )

    def wait_drained(self, port: int, timeout: float) -> bool:
        """Wait until no old nginx worker (one from before the last reload) is still alive.

        Old workers only exist while they finish requests (or close long-lived connections)
        begun before a reload, so once they are gone nothing can be in flight to a port that is
        no longer active. For the active port this returns True as soon as old workers are gone,
        since nginx does not count in-flight requests per upstream.
        """
        deadline = time.monotonic() + timeout
        while True:
            master = self._master_pid()
            if master is None or not _shutting_down_workers(master):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    # -- more --------------------------------------------------------------------------------

    def _port_in(self, text: str) -> int | None:
        """The port of the `server` line in the generated upstream block."""
        match = _SERVER_LINE.search(text.split(f"upstream {self.upstream_name}", 1)[-1])
        return int(match.group(2)) if match else None

    def render_upstream(self, port: int) -> str:
        """The `upstream` block; it is all a system-mode include file holds."""
        host = f"[{self.upstream_host}]" if ":" in self.upstream_host else self.upstream_host
        return (
            "# Written by lockstep; every switch rewrites this file. Do not edit.\n"
            f"upstream {self.upstream_name} {{\n"
            f"    server {host}:{port};\n"
            "}\n"
        )

    def render_managed_config(self, port: int) -> str:
        """The whole nginx.conf of a managed instance, every path inside the state directory."""
        state = self.state_directory
        temp = state / "temp"
        listen_host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        user = f"user {self.user};\n" if self.user else ""
        return (
            "# Written by lockstep (managed nginx traffic switch); every switch rewrites it.\n"
            f"{user}"
            f"worker_processes {self.worker_processes};\n"
            f"pid {state / PID_FILE};\n"
            f"error_log {self.error_log} notice;\n"
            "daemon on;\n"
            "events {\n    worker_connections 4096;\n}\n"
            "http {\n"
            "    log_format lockstep '$upstream_addr $status';\n"
            f"    access_log {self.access_log} lockstep;\n"
            f"    client_body_temp_path {temp / 'client_body'};\n"
            f"    proxy_temp_path {temp / 'proxy'};\n"
            f"    fastcgi_temp_path {temp / 'fastcgi'};\n"
            f"    uwsgi_temp_path {temp / 'uwsgi'};\n"
            f"    scgi_temp_path {temp / 'scgi'};\n"
            "    client_max_body_size 0;\n"
            # Bodies stream straight through and never touch the temp directories, so workers
            # (nobody, when lockstep runs as root) need no access to the state directory.
            "    proxy_request_buffering off;\n"
            "    proxy_max_temp_file_size 0;\n"
            "    keepalive_timeout 75s;\n"
            "    map $http_upgrade $lockstep_connection {\n        default upgrade;\n        '' close;\n    }\n"
            + "".join("    " + line + "\n" for line in self.render_upstream(port).splitlines())
            + "    server {\n"
            f"        listen {listen_host}:{self.listen_port};\n"
            "        location / {\n"
            f"            proxy_pass http://{self.upstream_name};\n"
            "            proxy_http_version 1.1;\n"
            "            proxy_set_header Host $http_host;\n"
            "            proxy_set_header Upgrade $http_upgrade;\n"
            "            proxy_set_header Connection $lockstep_connection;\n"
            "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
            "            proxy_set_header X-Forwarded-Proto $scheme;\n"
            # Set, not passed through: a client's own X-Forwarded-Host would reach the app as
            # trusted (links built from it). Empty without a Host header, so not sent then.
            "            proxy_set_header X-Forwarded-Host $http_host;\n"
            "            proxy_read_timeout 3600s;\n"
            "            proxy_send_timeout 3600s;\n"
            "        }\n"
            "    }\n"
            "}\n"
        )

    # -- internals ---------------------------------------------------------------------------

    def _switch_managed(self, port: int) -> None:
        master = self._master_pid()
        if master is None:
            raise LockstepError(
                f"lockstep's nginx is not running (no live master in {self.pid_file})",
                "start it first (ensure_running), e.g. by running the deploy again",
            )
        candidate = self._validated_candidate(self.render_managed_config(port))
        os.replace(candidate, self.managed_config)
        fsync_directory(self.managed_config.parent)
        self._reload_and_wait(master, lambda: os.kill(master, signal.SIGHUP))

    def _switch_system(self, port: int, reload: bool = True) -> None:
        self._replace_include(self.render_upstream(port), lambda: self._validate(self.config_path))
        if not reload:
            return
        master = self._master_pid()

        def run_reload() -> None:
            try:
                run_capture(Command(self.reload_command), timeout=RELOAD_TIMEOUT)
            except LockstepError as error:
                raise LockstepError(
                    f"the nginx reload command failed: {error.message}",
                    f"check the reload_command setting ({Command(self.reload_command).display()})",
                ) from error

        if master is None:
            run_reload()
            return
        self._reload_and_wait(master, run_reload)

    def _reload_and_wait(self, master: int, reload: Callable[[], None]) -> None:
        """Trigger a reload and wait until every worker that predates it stopped accepting."""
        before = set(_live_workers(master))
        reload()
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while time.monotonic() < deadline:
            live = set(_live_workers(master))
            if live and not (live & before):
                return
            if not process_alive(master):
                raise LockstepError("nginx exited during the reload", f"see {self._error_log_hint()}")
            time.sleep(0.005)
        raise LockstepError(
            f"nginx did not apply the new upstream within {RELOAD_TIMEOUT:.0f} s",
            f"see {self._error_log_hint()}; the old upstream may still serve",
        )

    def _error_log_hint(self) -> str:
        return str(self.error_log) if self.mode == "managed" else "nginx's error log"

    def _validate(self, config: Path | None) -> None:
        """`nginx -t` the given main config; a failure raises with nginx's own words."""
        require_executable(self.binary, "nginx", "nginx")
        if self.mode == "managed":
            assert config is not None
            argv: tuple[str, ...] = (
                self.binary,
                "-t",
                "-q",
                "-p",
                str(self.state_directory),
                "-e",
                str(self.error_log),
                "-c",
                str(config),
            )
        else:
            argv = (self.binary, "-t", "-q", *(("-c", str(config)) if config is not None else ()))
        try:
            run_capture(Command(argv), timeout=RELOAD_TIMEOUT)
        except LockstepError as error:
            raise LockstepError(
                f"the new nginx config failed validation, nothing was reloaded: {error.message}",
                "the previous upstream keeps serving; fix the nginx config and switch again",
            ) from error

    def _validate_managed(self, candidate: Path) -> None:
        (self.state_directory / "temp").mkdir(parents=True, exist_ok=True)  # the config's temp paths
        self._validate(candidate)

    def _stop_orphaned_workers(self) -> None:
        """Stop the workers a killed master left behind (kill -9, the OOM killer): they keep the
        listening socket, so no new master could start, and serve an upstream no switch reaches.

        They are this instance's because they hold its access or error log open. SIGQUIT lets
        them finish their requests; whatever still runs after `drain_timeout` is killed.
        """
        ours = {str(self.access_log), str(self.error_log)}
        orphans = [pid for pid in _nginx_processes() if ours & _open_files(pid)]
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
        for pid in orphans:
            if not wait_for_exit(pid, self.drain_timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                wait_for_exit(pid, 10.0)

    def _read_counters(self) -> tuple[UpstreamCounters, ...]:
        """Fold new access-log lines into per-port request and error counts."""
        try:
            with open(self.access_log, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size < self._log_offset:  # rotated or truncated: start over
                    self._log_offset = 0
                    self._counts.clear()
                handle.seek(self._log_offset)
                data = handle.read()
        except FileNotFoundError:
            return ()
        complete = data.rfind(b"\n") + 1
        self._log_offset += complete
        for line in data[:complete].decode("utf-8", "replace").splitlines():
            fields = line.rsplit(" ", 1)
            if len(fields) != 2:
                continue
            addresses, status = fields
            # "$upstream_addr" lists every upstream tried ("a:1, a:2"); the last one answered.
            last = addresses.split(",")[-1].strip().rsplit(":", 1)
            if len(last) != 2 or not last[1].isdigit():
                continue
            port = int(last[1])
            self._counts[(port, "requests")] += 1
            if status.isdigit() and int(status) >= 500:
                self._counts[(port, "errors")] += 1
        ports = sorted({port for port, _ in self._counts})
        return tuple(
            UpstreamCounters(
                port=port, requests=self._counts[(port, "requests")], errors=self._counts[(port, "errors")]
            )
            for port in ports
        )


# -- helpers shared in spirit with traffic/haproxy.py ---------------------------------------


@dataclass(frozen=True)
class _Process:
    pid: int
    parent: int
    command_line: str


def _children(parent: int) -> list[_Process]:
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                after_name = handle.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if after_name[0] == "Z" or int(after_name[1]) != parent:
            continue
        children.append(_Process(int(entry), parent, command_line(int(entry))))
    return children


def _nginx_processes() -> list[int]:
    """Every live nginx process but masters (workers, cache processes), whoever their parent."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (line := command_line(int(entry))).startswith("nginx: ") and "master" not in line:
            found.append(int(entry))
    return found


def _open_files(pid: int) -> set[str]:
    """The paths `pid` has open (what its /proc fd links point to; empty when unreadable)."""
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    paths = set()
    for descriptor in descriptors:
        with contextlib.suppress(OSError):
            paths.add(os.readlink(f"/proc/{pid}/fd/{descriptor}"))
    return paths


def _live_workers(master: int) -> list[int]:
    """Workers that accept new connections (nginx renames old ones "...is shutting down")."""
    return [
        child.pid
        for child in _children(master)
        if "worker process" in child.command_line and "shutting down" not in child.command_line
    ]


def _shutting_down_workers(master: int) -> list[int]:
    return [child.pid for child in _children(master) if "shutting down" in child.command_line]
