"""Unix sockets with paths of any length: HTTP over them, and short places for deep state dirs.

Linux's sockaddr_un holds 108 bytes including the terminating NUL, and state directories under a
project or a test's temporary directory easily run longer. Two rules live here, once: a client
reaches a socket with a long path through a short /proc path to its directory, and a server
whose socket path would be too long binds it in the temporary directory instead, under a name
derived from the state directory, so every command finds the same one.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import struct
import tempfile
from pathlib import Path

SOCKET_PATH_LIMIT = 107  # sun_path is 108 bytes including the terminating NUL
# Kept free when choosing where a socket goes, for sibling sockets with longer names.
DEFAULT_MARGIN = 7


def fits_in_socket_address(path: Path, margin: int = 0) -> bool:
    """Whether `path` can be bound as a unix socket (with `margin` bytes to spare)."""
    return len(os.fsencode(path)) <= SOCKET_PATH_LIMIT - margin


def short_socket_location(state_directory: Path, label: str) -> Path:
    """A short, stable path in the temporary directory standing in for `state_directory`.

    The same state directory always maps to the same name, so the process that binds and the
    commands that connect agree without storing anything.
    """
    digest = hashlib.sha256(str(state_directory.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"lockstep-{label}-{digest}"


def foreign_socket_owner(path: Path) -> int | None:
    """The owner of the socket at `path` when it sits in a directory every user may write to
    (the temporary directory) and belongs to neither this user nor root; else None.

    A stand-in socket lives in the shared temporary directory, where any local user could bind
    its predictable name first: an agent would then refuse to start ("already running") and the
    CLI would send that user its requests, release environments (secrets) included. Callers
    refuse such a socket. A missing path is not foreign, nor is one in a private directory
    (whoever can create files there is trusted with the environment anyway).
    """
    try:
        owner = os.lstat(path).st_uid
        shared = bool(os.stat(path.parent).st_mode & 0o002)
    except FileNotFoundError:
        return None
    return owner if shared and owner not in (os.geteuid(), 0) else None


def peer_pid(connection: socket.socket) -> int | None:
    """The PID of the process that listens at the other end of a connected unix socket (the
    kernel's SO_PEERCRED, recorded when it called listen), or None where the platform has none."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        credentials = connection.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return None
    pid: int = struct.unpack("3i", credentials)[0]
    return pid or None


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket, whatever the length of its path."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = str(path.absolute())

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        if fits_in_socket_address(Path(self._socket_path)):
            self.sock.connect(self._socket_path)
            return
        # Too long for sockaddr_un: reach the socket through a short /proc path to its directory.
        directory, _, name = self._socket_path.rpartition("/")
        descriptor = os.open(directory, os.O_PATH | os.O_DIRECTORY)
        try:
            self.sock.connect(f"/proc/self/fd/{descriptor}/{name}")
        finally:
            os.close(descriptor)
