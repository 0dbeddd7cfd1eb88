"""Database adapters, one module per engine, chosen by the URL's scheme.

The module name is the word users write in the URL (`postgresql://` → `postgresql`), as with
storage backends; `mariadb://` is served by the `mysql` module, which speaks to both. Modules
are imported on first use, so a deploy without PostgreSQL never imports its driver.
"""

from __future__ import annotations

import importlib

from lockstep.databases.base import DatabaseAdapter, DatabaseInfo, DumpFormat, DumpStream, TableInfo
from lockstep.databases.base import redact_url as redact_url
from lockstep.errors import UsageError

__all__ = ["DatabaseAdapter", "DatabaseInfo", "DumpFormat", "DumpStream", "TableInfo", "adapter_for"]

# URL scheme → adapter module.
MODULES = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "sqlite": "sqlite",
}


def adapter_for(url: str) -> DatabaseAdapter:
    """The adapter for a database URL; SQLAlchemy-style driver suffixes (`postgresql+psycopg`) are ignored."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower() if ":" in url else ""
    module_name = MODULES.get(scheme)
    if module_name is None:
        raise UsageError(
            f"unsupported database URL {redact_url(url)!r}",
            "use a URL starting with " + ", ".join(f"{name}://" for name in MODULES),
        )
    module = importlib.import_module(f"lockstep.databases.{module_name}")
    adapter = module.ADAPTER
    if not isinstance(adapter, DatabaseAdapter):
        raise TypeError(f"lockstep.databases.{module_name}.ADAPTER does not implement DatabaseAdapter")
    return adapter
