"""Every secret a project's config points at, so that nothing lockstep prints or sends shows one.

The environment's secret-named variables are known to the redactor by their names; what is only
known through lockstep.toml is collected here: database passwords (password_env, password_file),
the repository's password file, the passwords of [repository.copies] (password_file, password_env),
the password in [backup] healthchecks_url, the values of the files `[files] secrets` names (a hook
or a migration may print a line of a .env file), and values in `[app] env` and the components'
`env` whose names look secret (`STRIPE_SECRET = "..."`), which the app's commands see in their
environment and may echo.
"""

from __future__ import annotations

import os
from contextlib import suppress

from lockstep.config.model import ProjectConfig
from lockstep.errors import LockstepError
from lockstep.notify.transport import url_password_texts
from lockstep.redaction import Redactor, is_secret_name, process_redactor, secret_file_values

# A secret file larger than this is not read for its values (a keystore, a bundle of certificates).
MAX_SECRET_FILE_BYTES = 64 * 1024


def project_secrets(config: ProjectConfig) -> list[str]:
    """The secret values `config` leads to; unreadable files and unset variables are skipped."""
    from lockstep.pipeline.snapshot import database_password, stored_apart

    found: list[str] = []
    for name, database in config.databases.items():
        with suppress(LockstepError):
            found.append(database_password(name, database) or "")
    password_files = [config.repository.password_file]
    for copy_config in config.repository.copies.values():
        password_files.append(copy_config.password_file)
        if copy_config.password_env is not None:
            found.append(os.environ.get(copy_config.password_env, ""))
    for password_file in password_files:
        if password_file is not None:
            with suppress(OSError, UnicodeDecodeError):
                found.append(password_file.read_text(encoding="utf-8").rstrip("\r\n"))
    for path in stored_apart(config).secrets:
        with suppress(OSError, UnicodeDecodeError):
            if path.stat().st_size <= MAX_SECRET_FILE_BYTES:
                found.extend(secret_file_values(path.read_text(encoding="utf-8")))
    found += url_password_texts(config.backup.healthchecks_url)  # sent as basic auth
    for environment in [config.app.env, *(component.env for component in config.app.components.values())]:
        found.extend(value for key, value in environment.items() if is_secret_name(key))
    return [value for value in found if value]


def teach_project_secrets(config: ProjectConfig, redactor: Redactor | None = None) -> Redactor:
    """Teach `redactor` (by default the process's, which the CLI's output uses) the project's secrets."""
    target = redactor if redactor is not None else process_redactor()
    for value in project_secrets(config):
        target.add(value)
    return target
