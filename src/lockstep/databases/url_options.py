"""The query options each engine's database URL takes (`?sslmode=...`, `?socket=...`).

One list, read both by the adapters that pass the options on and by the config, which checks a
URL when lockstep.toml is loaded: an option meant for the other engine (`mysql://...?host=`) or
one lockstep does not know is refused there, before any snapshot starts, rather than dropped.
Nothing heavy is imported here, so loading the config stays quick.
"""

from __future__ import annotations

from collections.abc import Iterable

from lockstep.errors import UsageError

# The query parameters a postgresql:// URL may carry, as libpq reads them: psycopg gets them as
# connection keywords, pg_dump and pg_restore as the environment variables libpq takes them
# from. host, port and user override the URL's own parts (`postgresql:///shop?host=/run/postgresql`).
LIBPQ_OPTIONS = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "user": "PGUSER",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "application_name": "PGAPPNAME",
    "options": "PGOPTIONS",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "channel_binding": "PGCHANNELBINDING",
    "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME",
    "requirepeer": "PGREQUIREPEER",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "service": "PGSERVICE",
}

# mysql:// and mariadb:// URLs: the server's unix socket, and nothing else.
MYSQL_OPTIONS = frozenset({"socket"})

_ALLOWED = {"postgresql": LIBPQ_OPTIONS.keys(), "mysql": MYSQL_OPTIONS, "mariadb": MYSQL_OPTIONS, "sqlite": frozenset()}
_HINTS = {
    "postgresql": "use one of " + ", ".join(sorted(LIBPQ_OPTIONS)) + " (or set it in a libpq service file)",
    "mysql": "the one option a mysql:// or mariadb:// URL takes is ?socket=PATH; put other client"
    " settings in an option file such as ~/.my.cnf",
    "sqlite": "a sqlite:/// URL names a file and takes no options: remove everything from the ?",
}
_HINTS["mariadb"] = _HINTS["mysql"]


def check_url_options(engine: str, shown_url: str, names: Iterable[str]) -> None:
    """Refuse a password option, or one `engine`'s URLs do not take (`engine` is the URL's
    scheme). `shown_url` is the URL as messages may show it (password values hidden)."""
    for name in names:
        if "password" in name:
            raise UsageError(
                f"the database URL {shown_url} carries {name}: passwords never go in URLs",
                "remove it and put the password in the database's password_env or password_file",
            )
        if name not in _ALLOWED[engine]:
            raise UsageError(
                f"the database URL {shown_url} has the option {name!r}, which lockstep does not pass on",
                _HINTS[engine],
            )
