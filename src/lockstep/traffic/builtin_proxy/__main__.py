"""`python -m lockstep.traffic.builtin_proxy --listen HOST:PORT --state-directory DIR --upstream-port N`.

Started detached by `lockstep.traffic.builtin.BuiltinProxy`; it logs to DIR/proxy.log and resumes
the upstream persisted in DIR (when there is one) rather than `--upstream-port`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from lockstep.traffic.builtin_proxy import ADMIN_SOCKET_NAME, LOG_FILE_NAME, PID_FILE_NAME
from lockstep.traffic.builtin_proxy.admin import AdminServer
from lockstep.traffic.builtin_proxy.server import ProxyServer
from lockstep.traffic.builtin_proxy.upstream_file import read_upstream_file

log = logging.getLogger("lockstep.proxy")

EXIT_CANNOT_LISTEN = 3


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lockstep.traffic.builtin_proxy")
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept client connections on")
    parser.add_argument("--state-directory", required=True, type=Path)
    parser.add_argument("--upstream-port", required=True, type=int, help="used when no upstream was persisted")
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument("--request-timeout", type=float, default=60.0)
    return parser.parse_args(argv)


async def run(arguments: argparse.Namespace) -> int:
    state_directory: Path = arguments.state_directory
    host, _, port_text = arguments.listen.rpartition(":")
    upstream_port = read_upstream_file(state_directory) or arguments.upstream_port
    proxy = ProxyServer(
        host.strip("[]"),
        int(port_text),
        upstream_port,
        state_directory,
        arguments.drain_timeout,
        arguments.request_timeout,
    )
    try:
        await proxy.start()
    except OSError as error:
        log.error("cannot listen on %s: %s", arguments.listen, error.strerror or error)
        print(f"cannot listen on {arguments.listen}: {error.strerror or error}", file=sys.stderr, flush=True)
        return EXIT_CANNOT_LISTEN
    # Bound relative to the state directory (the working directory), so a long path still fits sockaddr_un.
    admin = AdminServer(proxy, Path(ADMIN_SOCKET_NAME))
    await admin.start()
    pid_file = state_directory / PID_FILE_NAME
    temporary = state_directory / f".{PID_FILE_NAME}.{os.getpid()}"
    temporary.write_text(f"{os.getpid()}\n")
    os.replace(temporary, pid_file)
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, lambda: loop.create_task(proxy.shutdown()))
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # a closing terminal must not stop traffic
    try:
        await proxy.stopped.wait()
    finally:
        admin.close()
        with contextlib.suppress(OSError):
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    os.umask(0o077)
    arguments.state_directory = arguments.state_directory.absolute()
    os.chdir(arguments.state_directory)
    logging.basicConfig(
        filename=arguments.state_directory / LOG_FILE_NAME,
        level=logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(message)s",
    )
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run(arguments))
    return uvloop.run(run(arguments))


if __name__ == "__main__":
    sys.exit(main())
