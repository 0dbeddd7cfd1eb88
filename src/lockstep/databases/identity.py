"""Whether two database URLs name the same database, however they are spelt.

`snapshot restore --to URL` treats a target that is one of the project's own databases as the
in-place restore it is (pre-restore snapshot, what is discarded, confirmation); without this,
typing the live URL after --to replaced live data with no way back. The comparison is on the
URL alone, so it never connects: same engine, same database name, same port (the engine's
default filled in), and the same host, where every local spelling (no host, localhost, a
loopback address, a unix socket) counts as one. For SQLite, the same file.
"""

from __future__ import annotations

import os
from pathlib import Path

from lockstep.databases import MODULES
from lockstep.databases.base import ServerLocation

DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
_LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}
# Query options that name the server instead of the URL's host part.
_HOST_OPTIONS = ("host", "hostaddr", "socket")
_LOCAL = "(local)"


def same_database(first: str, second: str) -> bool:
    """True when `first` and `second` name the same database (see the module's docstring)."""
    engine = _engine(first)
    if engine is None or engine != _engine(second):
        return False
    if engine == "sqlite":
        return _sqlite_file(first) == _sqlite_file(second)
    return _server_key(engine, first) == _server_key(engine, second)


def _engine(url: str) -> str | None:
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower() if ":" in url else ""
    return MODULES.get(scheme)


def _sqlite_file(url: str) -> Path:
    from lockstep.databases.sqlite import database_path

    path = database_path(url)
    try:
        stat = path.stat()
    except OSError:
        return Path(os.path.realpath(path))
    return Path(f"/dev/{stat.st_dev}/inode/{stat.st_ino}")  # hard links and symlinks too


def _server_key(engine: str, url: str) -> tuple[str, int, str]:
    location = ServerLocation.parse(url)
    options = dict(location.options)
    host = next((options[name] for name in _HOST_OPTIONS if options.get(name)), location.host or "")
    host = host.split(",")[0].strip().lower()  # libpq's first of several hosts
    if host in _LOCAL_HOSTS or host.startswith("/") or host.startswith("@"):
        host = _LOCAL
    port = str(options.get("port") or location.port or DEFAULT_PORTS[engine])
    return host, int(port) if port.isdigit() else -1, location.database
