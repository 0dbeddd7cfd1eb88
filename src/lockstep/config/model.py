"""The `lockstep.toml` schema: one pydantic model that validates, and drives the sample and the docs.

Defaults live here and nowhere else. Every field carries a description and an example, because
`sample.py` writes the commented starting config from them and `scripts/generate_config_reference.py`
writes docs/config.md from them; a test fails when either drifts from this file.

Paths in the file are relative to the directory the file sits in. They are resolved while validating
when the caller passes that directory as `context={"base_directory": Path}` (loading.py does);
without it they are left as written.
"""

from __future__ import annotations

import copy
import difflib
import glob
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from lockstep.config.agent_model import AgentConfig, ScheduleConfig
from lockstep.config.deploy_model import AppConfig, DeployConfig, PolicyConfig, TrafficConfig
from lockstep.config.hosts_model import HostConfig, HostTarget, SshConfig, host_targets
from lockstep.databases.table_patterns import check_table_pattern
from lockstep.databases.url_options import check_url_options
from lockstep.errors import UsageError
from lockstep.notify.config import NotificationsConfig

DatabaseEngine = Literal["postgresql", "mysql", "mariadb", "sqlite"]
DATABASE_ENGINES: tuple[DatabaseEngine, ...] = ("postgresql", "mysql", "mariadb", "sqlite")
CodeKind = Literal["git", "release-directory"]

# The environment name lockstep writes on what runs with the top-level config (the tag env:default,
# shown in `snapshot list`): `snapshot create` and `backup` without --env when default_environment
# has no [environments.NAME] table (the top-level tables are then its config). With a table, no
# --env means that environment, its overrides and its name; older env:default snapshots keep the
# label. It is not a name --env accepts unless the config defines it.
DEFAULT_ENVIRONMENT = "default"
# A project's name (its snapshots' /lockstep/NAME path) when lockstep.toml sets none and its
# directory has no name (the root directory).
DEFAULT_PROJECT = "project"
PROJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class _Section(BaseModel):
    """Every table rejects keys it does not know: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid")


def _reject_password_in_url(url: str, fix: str) -> None:
    """Secrets never live only in the config text, which ends up in snapshots, diffs and tickets."""
    address = url.removeprefix("s3:")
    if "://" not in address:
        return
    parts = urlsplit(address)
    if parts.password is not None or any("password" in name for name, _ in parse_qsl(parts.query)):
        raise ValueError(f"the URL contains a password; remove it from the URL and {fix}")


def _base_directory(info: ValidationInfo) -> Path | None:
    context = info.context
    if isinstance(context, dict):
        base = context.get("base_directory")
        if isinstance(base, Path):
            return base
    return None


def _resolve_path(path: Path, base: Path) -> Path:
    """`~/x` in the user's home (from the password database when HOME is unset, as under some
    crons), other relative paths from `base`: a `~` is never a directory name under the project."""
    path = Path(os.path.expanduser(path))
    return path if path.is_absolute() else base / path


def _source_within(code_path: Path | None, base: Path) -> str:
    """Where the config's directory is inside the code's work tree: the app's directory there."""
    if code_path is None:
        return "."
    try:
        relative = base.resolve().relative_to(code_path.resolve())
    except ValueError:
        return "."
    return relative.as_posix() or "."


_COPY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def _check_variable_name(name: str | None) -> str | None:
    """password_env names a variable; a value that cannot be one is most likely the password."""
    if name is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(
            "password_env is the NAME of an environment variable, not the password itself; "
            "set the password in that variable and put its name here"
        )
    return name


def _check_repository_url(url: str) -> str:
    """A repository location lockstep can open, with no password in it."""
    if not url.removeprefix("local:").strip():
        raise ValueError("the repository URL is empty: set it to a path, local:PATH, s3:HOST/BUCKET or s3:URL/BUCKET")
    _reject_password_in_url(
        url, "give S3 credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (environment variables)"
    )
    if _SCHEME.match(url) and not url.startswith(("local:", "s3:")):
        raise ValueError("unsupported repository location: use a path, local:PATH or s3:http(s)://HOST[:PORT]/BUCKET")
    return url


def _resolve_url(url: str, base: Path) -> str:
    """A local repository's path made absolute (from `base`); S3 locations as written."""
    if url.startswith("s3:"):
        return url
    return f"local:{_resolve_path(Path(url.removeprefix('local:')), base)}"


class RepositoryCopyConfig(_Section):
    """Another repository each backup's snapshots are copied to ([repository.copies.NAME]).

    Its password source is required and its own: a copy usually lives elsewhere (another
    provider, another person's keys), and the main repository's LOCKSTEP_PASSWORD* variables
    must not silently open it."""

    url: str = Field(
        description=(
            "The copy's location, in the forms of repository.url (relative paths from lockstep.toml's "
            "directory). LOCKSTEP_REPOSITORY does not change it."
        ),
        examples=["s3:https://s3.eu-central-1.amazonaws.com/acme-backups/shop"],
    )
    password_file: Path | None = Field(
        default=None,
        description=(
            "File holding the copy's password (relative to lockstep.toml's directory). Each copy needs exactly "
            "one of password_file, password_command and password_env: the repository's password and the "
            "LOCKSTEP_PASSWORD* variables never apply to a copy."
        ),
        examples=["/etc/lockstep/offsite-password"],
    )
    password_command: str | None = Field(
        default=None,
        description="Command whose output is the copy's password; run without a shell, in lockstep.toml's directory.",
        examples=["pass show lockstep/offsite"],
    )
    password_env: str | None = Field(
        default=None,
        description="Name of the environment variable that holds the copy's password.",
        examples=["LOCKSTEP_OFFSITE_PASSWORD"],
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        return _check_repository_url(url)

    @field_validator("password_env")
    @classmethod
    def _check_password_env(cls, name: str | None) -> str | None:
        return _check_variable_name(name)

    @model_validator(mode="after")
    def _check_password_source(self) -> RepositoryCopyConfig:
        given = [key for key in COPY_PASSWORD_KEYS if getattr(self, key) is not None]
        if not given:
            raise ValueError(
                "no password source for this copy: set password_file, password_command or password_env "
                "(a copy never uses the main repository's password)"
            )
        if len(given) > 1:
            raise ValueError(f"both {given[0]} and {given[1]} are set: keep only one of them")
        return self

    def resolved(self, base: Path) -> RepositoryCopyConfig:
        password_file = None if self.password_file is None else _resolve_path(self.password_file, base)
        return self.model_copy(update={"url": _resolve_url(self.url, base), "password_file": password_file})


COPY_PASSWORD_KEYS = ("password_file", "password_command", "password_env")


class RepositoryConfig(_Section):
    """Where snapshots are stored, and how to get the repository password."""

    url: str = Field(
        description=(
            "Repository location: a path, local:PATH, s3:HOST[:PORT]/BUCKET[/PREFIX] (https, as restic "
            "writes AWS locations) or s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]; the second form takes "
            "restic's -o s3.bucket-lookup, -o s3.region and -o s3.storage-class as its query, e.g. "
            "?bucket-lookup=dns&region=eu-west-1&storage-class=STANDARD_IA (bucket-lookup auto: the bucket "
            "in the host name for AWS and Google, in the path elsewhere). "
            "Relative paths are relative to the directory of lockstep.toml (~/ is the home directory); "
            "the LOCKSTEP_REPOSITORY environment variable overrides this value."
        ),
        examples=["local:.lockstep/repository"],
    )
    password_file: Path | None = Field(
        default=None,
        description=(
            "File holding the repository password (relative to lockstep.toml's directory); it wins over "
            "LOCKSTEP_PASSWORD. --password-file/--password-command and LOCKSTEP_PASSWORD_FILE/"
            "LOCKSTEP_PASSWORD_COMMAND override it."
        ),
        examples=["/etc/lockstep/repository-password"],
    )
    password_command: str | None = Field(
        default=None,
        description=(
            "Command whose output is the repository password, e.g. a secret manager's CLI; run without a "
            "shell, in lockstep.toml's directory. It wins over LOCKSTEP_PASSWORD; --password-file/"
            "--password-command and LOCKSTEP_PASSWORD_FILE/LOCKSTEP_PASSWORD_COMMAND override it."
        ),
        examples=["pass show lockstep/shop"],
    )

    copies: dict[str, RepositoryCopyConfig] = Field(
        default_factory=dict,
        description=(
            "Other repositories that every `lockstep backup` (and the agent's scheduled backups) copies "
            "snapshots to, by a name of your choice ([repository.copies.NAME]), for the 3-2-1 rule: after the "
            "snapshot, retention and verification, each copy in turn gets every snapshot of the repository it "
            "lacks (as `lockstep repo copy` does; so one a failed backup could not send follows with the "
            "next), then [retention] is applied to it as to the repository. Each must exist already "
            "(`lockstep repo init -r URL`, with the copy's password): a copy that is missing, does not open "
            "with its password or cannot be reached fails the backup (exit code 10, 11 or 14, the message "
            "naming the copy), while the new snapshot stays in the repository."
        ),
        examples=[
            {
                "offsite": {
                    "url": "s3:https://s3.eu-central-1.amazonaws.com/acme-backups/shop",
                    "password_file": "/etc/lockstep/offsite-password",
                }
            }
        ],
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        return _check_repository_url(url)

    @field_validator("copies")
    @classmethod
    def _check_copy_names(cls, copies: dict[str, RepositoryCopyConfig]) -> dict[str, RepositoryCopyConfig]:
        for name in copies:
            if not _COPY_NAME.match(name):
                raise ValueError(
                    f"copy name {name!r} is not allowed: use letters, digits, - and _ "
                    "(it names the copy in messages and the one-line report)"
                )
        return copies

    @model_validator(mode="after")
    def _check_password_sources(self) -> RepositoryConfig:
        if self.password_file is not None and self.password_command is not None:
            raise ValueError("both password_file and password_command are set: keep only one of them")
        for name, copy_config in self.copies.items():
            if copy_config.url == self.url:
                raise ValueError(
                    f"copies.{name} has the repository's own url {self.url!r}: a copy must be another repository"
                )
        return self

    def resolved(self, base: Path) -> RepositoryConfig:
        """A copy whose local paths and password files are absolute, relative ones taken from `base`."""
        password_file = None if self.password_file is None else _resolve_path(self.password_file, base)
        copies = {name: copy_config.resolved(base) for name, copy_config in self.copies.items()}
        return self.model_copy(
            update={"url": _resolve_url(self.url, base), "password_file": password_file, "copies": copies}
        )


def git_work_tree(path: Path) -> Path | None:
    """The top of the git work tree `path` is in: the nearest of it and the directories above it
    that holds .git (a directory, or the file of a linked work tree or submodule). An app in a
    monorepo's subdirectory is in the monorepo's work tree. None outside any work tree."""
    for candidate in (path, *path.parents):
        if (candidate / ".git").exists():
            return candidate
    return None


class CodeConfig(_Section):
    """The application code that a snapshot records next to the databases."""

    kind: CodeKind | None = Field(
        default=None,
        description=(
            'How the code is deployed: "git" (a git work tree; the snapshot records the commit) or '
            '"release-directory" (a directory of files copied into the snapshot). '
            'Default: "git" when the code path is in a git work tree (it or a directory above it holds '
            ".git, as for an app in a monorepo's subdirectory), and then path is that work tree's top; "
            "otherwise none."
        ),
        examples=["git"],
    )
    path: Path | None = Field(
        default=None,
        description="Directory of the code, relative to lockstep.toml's directory. Default: that directory.",
        examples=["."],
    )
    allow_dirty: bool = Field(
        default=False,
        description=(
            "For git: allow a snapshot while the work tree has uncommitted changes; their diff, untracked "
            "files included, is stored with it (what `snapshot create --allow-dirty` does once, here for "
            "every snapshot: `lockstep backup` and the agent's schedules have no flag for it). A deploy of "
            "HEAD is allowed too, without the changes."
        ),
        examples=[True],
    )

    def resolved(self, base: Path) -> CodeConfig:
        """A copy with an absolute path and, when no kind was given, the kind detected on disk."""
        path = base if self.path is None else _resolve_path(self.path, base)
        kind = self.kind
        if kind is None:
            # The work tree may start above the config (an app in a monorepo's subdirectory).
            work_tree = git_work_tree(path)
            if work_tree is not None:
                kind, path = "git", work_tree
        return self.model_copy(update={"path": path, "kind": kind})


class DatabaseConfig(_Section):
    """One database to dump into every snapshot."""

    url: str = Field(
        description=(
            "Connection URL without a password: postgresql://, mysql://, mariadb:// or sqlite:///PATH. "
            "The engine is taken from the scheme. A unix socket: its directory as the host, percent-encoded "
            "(postgresql://app@%2Frun%2Fpostgresql/shop), or ?host=DIR; for MariaDB/MySQL ?socket=PATH. "
            "PostgreSQL URLs also take libpq's connection options (?sslmode=verify-full&sslrootcert=PATH, "
            "application_name, target_session_attrs, ...). SQLite URLs take none. An option the engine does "
            "not take is refused when the config loads."
        ),
        examples=["postgresql://postgres@127.0.0.1:5432/shop"],
    )
    password_env: str | None = Field(
        default=None,
        description="Name of the environment variable that holds the database password.",
        examples=["SHOP_DATABASE_PASSWORD"],
    )
    password_file: Path | None = Field(
        default=None,
        description="File holding the database password (relative to lockstep.toml's directory).",
        examples=["/etc/lockstep/shop-database-password"],
    )
    exclude_table_data: list[str] = Field(
        default_factory=list,
        description=(
            "Tables whose rows snapshots leave out (sessions, caches, job queues, logs that can be made again): "
            "their definition, indexes and constraints are kept, and a restore gives them back empty. Names or "
            "patterns matched against the table names as `snapshot show` lists them, case-sensitive: * is any "
            "characters but a dot, ? one character but a dot. PostgreSQL: `table` is in the public schema, "
            "`schema.table` in another (`audit.*`), and a partitioned table's name leaves out the rows of all its "
            "partitions; MariaDB/MySQL and SQLite: the table name alone. A pattern that matches no table is a "
            "warning in the snapshot, and so is a kept table's foreign key to one whose rows are left out. "
            "MariaDB/MySQL need a mariadb-dump that has "
            "--ignore-table-data (MariaDB's clients since 2020; MySQL's mysqldump has none)."
        ),
        examples=[["sessions", "cache_*"]],
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        scheme, separator, _ = url.partition("://")
        if not separator or scheme not in DATABASE_ENGINES:
            raise ValueError(
                "not a supported database URL: start it with postgresql://, mysql://, mariadb:// or sqlite:///PATH"
            )
        _reject_password_in_url(
            url, "put it in password_env (the name of an environment variable that holds it) or password_file"
        )
        parts = urlsplit(url)
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        try:
            check_url_options(scheme, url, options)
        except UsageError as error:
            raise ValueError(str(error)) from None
        if scheme == "sqlite":
            if parts.netloc or parts.path in ("", "/"):
                raise ValueError("a SQLite URL names a file: write it as sqlite:///PATH (three slashes)")
        elif not parts.hostname and not {"host", "socket"} & options.keys():
            raise ValueError(f"the URL has no host: write it as {scheme}://USER@HOST[:PORT]/DATABASE")
        return url

    @field_validator("password_env")
    @classmethod
    def _check_password_env(cls, name: str | None) -> str | None:
        return _check_variable_name(name)

    @model_validator(mode="after")
    def _check_password_sources(self) -> DatabaseConfig:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("both password_env and password_file are set: keep only one of them")
        return self

    @model_validator(mode="after")
    def _check_exclude_table_data(self) -> DatabaseConfig:
        for pattern in self.exclude_table_data:
            try:
                check_table_pattern(pattern, self.engine)
            except ValueError as error:
                raise ValueError(f"exclude_table_data: {error}") from None
        return self

    @property
    def engine(self) -> DatabaseEngine:
        """The database engine, from the URL's scheme; also the name of the module that dumps it."""
        scheme = self.url.partition("://")[0]
        for engine in DATABASE_ENGINES:
            if engine == scheme:
                return engine
        raise AssertionError(f"unvalidated database URL scheme {scheme!r}")

    def resolved(self, base: Path) -> DatabaseConfig:
        """A copy whose password file and SQLite path are absolute, relative ones taken from `base`.

        `sqlite:///app.db` is relative and `sqlite:////srv/app.db` absolute (SQLAlchemy's rule); a
        relative one is anchored at lockstep.toml's directory, not at wherever lockstep runs.
        """
        update: dict[str, Any] = {}
        if self.password_file is not None:
            update["password_file"] = _resolve_path(self.password_file, base)
        prefix = "sqlite:///"
        if self.url.startswith(prefix) and not self.url.startswith(prefix + "/"):
            update["url"] = prefix + str(base / self.url[len(prefix) :])
        return self.model_copy(update=update) if update else self


class FilesConfig(_Section):
    """Files outside the code and databases that a snapshot records."""

    config: list[str] = Field(
        default_factory=list,
        description="Glob patterns of configuration files to record, relative to lockstep.toml's directory.",
        examples=[["config/*.yml", "nginx/shop.conf"]],
    )
    secrets: list[str] = Field(
        default_factory=list,
        description=(
            "Glob patterns of secret files (keys, .env) to record, relative to lockstep.toml's directory; "
            "they are stored encrypted like everything else and never printed."
        ),
        examples=[[".env", "secrets/*.key"]],
    )

    def resolved(self, base: Path) -> FilesConfig:
        """A copy whose relative patterns are anchored at `base`, its glob characters escaped: a
        project in /srv/shop[2] must not match /srv/shop2's files, nor nothing at all."""

        def anchor(pattern: str) -> str:
            pattern = os.path.expanduser(pattern)
            return pattern if Path(pattern).is_absolute() else os.path.join(glob.escape(str(base)), pattern)

        return self.model_copy(
            update={"config": [anchor(p) for p in self.config], "secrets": [anchor(p) for p in self.secrets]}
        )


def check_restic_duration(text: str) -> None:
    """Check a keep_within* value: restic's duration (`1y5m7d2h`: years, months, days, hours)."""
    from lockstep.repository.retention import Duration  # lazily: loading a config needs no repository code

    try:
        Duration.parse(text)
    except UsageError:
        raise ValueError(
            f"{text!r} is not a restic duration: write numbers each followed by a unit, y (years), "
            'm (months), d (days) or h (hours), e.g. "1y5m7d2h" or "14d"'
        ) from None


class RetentionConfig(_Section):
    """How many snapshots `forget` keeps, with restic's `forget` rules; -1 keeps every snapshot of
    that kind. A snapshot is kept when any rule keeps it.

    The calendar rules (hourly to yearly) count the regular (manual and scheduled) snapshots; an
    hour, day, week, month or year with none is filled by its newest pre-deploy or pre-restore
    snapshot. Those are also kept by a rule of their own, and one taken after the day's backup
    never takes that backup's place as the day's daily. keep_last and the keep_within rules count
    the regular snapshots only; keep_tags keeps any snapshot with the tags."""

    keep_last: int = Field(
        default=0,
        ge=-1,
        description=(
            "The N newest manual or scheduled snapshots to keep (restic's --keep-last; -1: all of them, "
            "0: off). Pre-deploy and pre-restore snapshots are not counted: their own rules keep them."
        ),
        examples=[5],
    )
    keep_hourly: int = Field(
        default=0,
        ge=-1,
        description=(
            "Hours to keep the newest manual or scheduled snapshot of, the last N hours that have a "
            "snapshot (restic's --keep-hourly; -1: every hour, 0: off). An hour without a manual or "
            "scheduled one keeps its newest pre-deploy or pre-restore snapshot instead, and counts as "
            "one of the N."
        ),
        examples=[24],
    )
    keep_daily: int = Field(
        default=7,
        ge=-1,
        description=(
            "Days to keep the newest manual or scheduled snapshot of, the last N days that have a "
            "snapshot (restic's --keep-daily; -1: every day). A day without a manual or scheduled one "
            "keeps its newest pre-deploy or pre-restore snapshot instead, and counts as one of the N."
        ),
        examples=[14],
    )
    keep_weekly: int = Field(
        default=4,
        ge=-1,
        description=(
            "Weeks (Monday to Sunday) to keep the newest manual or scheduled snapshot of (restic's "
            "--keep-weekly; -1: every week). A week without a manual or scheduled one keeps its newest "
            "pre-deploy or pre-restore snapshot instead, and counts as one of the N."
        ),
        examples=[8],
    )
    keep_monthly: int = Field(
        default=-1,
        ge=-1,
        description=(
            "Months to keep the newest manual or scheduled snapshot of (restic's --keep-monthly; "
            "-1: every month, forever). A month without a manual or scheduled one keeps its newest "
            "pre-deploy or pre-restore snapshot instead, and counts as one of the N: a project that "
            "only deploys keeps one snapshot a month."
        ),
        examples=[12],
    )
    keep_yearly: int = Field(
        default=0,
        ge=-1,
        description=(
            "Years to keep the newest manual or scheduled snapshot of (restic's --keep-yearly; -1: "
            "every year, 0: off). A year without a manual or scheduled one keeps its newest pre-deploy "
            "or pre-restore snapshot instead, and counts as one of the N."
        ),
        examples=[3],
    )
    keep_within: str | None = Field(
        default=None,
        description=(
            "Keep every manual or scheduled snapshot taken within this duration of the newest one "
            "(restic's --keep-within): years, months, days and hours as restic writes them, e.g. "
            '"1y5m7d2h" or "14d". Measured from the newest manual or scheduled snapshot, not from now, '
            "so snapshots stop expiring when backups stop. Pre-deploy and pre-restore snapshots are not "
            "kept by it. Default: off."
        ),
        examples=["14d"],
    )
    keep_within_hourly: str | None = Field(
        default=None,
        description=(
            "Keep the newest manual or scheduled snapshot of every hour within this duration of the "
            "newest one (restic's --keep-within-hourly; restic's duration, e.g. \"2d\"). Pre-deploy and "
            "pre-restore snapshots are not kept by it. Default: off."
        ),
        examples=["2d"],
    )
    keep_within_daily: str | None = Field(
        default=None,
        description=(
            "Keep the newest manual or scheduled snapshot of every day within this duration of the "
            "newest one (restic's --keep-within-daily; restic's duration, e.g. \"1m\"). Pre-deploy and "
            "pre-restore snapshots are not kept by it. Default: off."
        ),
        examples=["1m"],
    )
    keep_within_weekly: str | None = Field(
        default=None,
        description=(
            "Keep the newest manual or scheduled snapshot of every week within this duration of the "
            "newest one (restic's --keep-within-weekly; restic's duration, e.g. \"6m\"). Pre-deploy and "
            "pre-restore snapshots are not kept by it. Default: off."
        ),
        examples=["6m"],
    )
    keep_within_monthly: str | None = Field(
        default=None,
        description=(
            "Keep the newest manual or scheduled snapshot of every month within this duration of the "
            "newest one (restic's --keep-within-monthly; restic's duration, e.g. \"2y\"). Pre-deploy "
            "and pre-restore snapshots are not kept by it. Default: off."
        ),
        examples=["2y"],
    )
    keep_within_yearly: str | None = Field(
        default=None,
        description=(
            "Keep the newest manual or scheduled snapshot of every year within this duration of the "
            "newest one (restic's --keep-within-yearly; restic's duration, e.g. \"10y\"). Pre-deploy "
            "and pre-restore snapshots are not kept by it. Default: off."
        ),
        examples=["10y"],
    )
    keep_tags: list[str] = Field(
        default_factory=list,
        description=(
            "Snapshots with any of these tags (`snapshot create --tag`) are always kept, whatever their "
            'kind (restic\'s --keep-tag, once per entry): an entry "a,b" keeps the snapshots that have '
            "both a and b."
        ),
        examples=[["release", "before-migration"]],
    )
    keep_pre_deploy: int = Field(
        default=10,
        ge=-1,
        description=(
            "The pre-deploy snapshots (taken by `deploy` before it changes anything, what `rollback "
            "--with-data` restores) of the last N deploys to keep (-1: all, 0: none). The calendar "
            "rules keep one only as the newest snapshot of an hour, day, week, month or year that has no "
            "manual or scheduled snapshot; keep_tags keeps one with its tags."
        ),
        examples=[20],
    )
    keep_pre_restore: int = Field(
        default=10,
        ge=-1,
        description=(
            "The pre-restore snapshots (taken by `snapshot restore` and data rollbacks before they "
            "overwrite a live database: the only undo of a mistaken restore) of the last N restores "
            "to keep (-1: all, 0: none). The calendar rules keep one only as the newest snapshot of an "
            "hour, day, week, month or year that has no manual or scheduled snapshot, so one taken after "
            "the day's backup never makes that backup forgotten."
        ),
        examples=[5],
    )

    @field_validator(
        "keep_within",
        "keep_within_hourly",
        "keep_within_daily",
        "keep_within_weekly",
        "keep_within_monthly",
        "keep_within_yearly",
    )
    @classmethod
    def _check_duration(cls, text: str | None) -> str | None:
        """restic's duration syntax, checked at load time: "3 days" must not silently keep nothing."""
        if text is not None:
            check_restic_duration(text)
        return text

    @field_validator("keep_tags")
    @classmethod
    def _check_tags(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            if any(not tag.strip() for tag in entry.split(",")):
                raise ValueError(
                    f"{entry!r} has an empty tag, which keeps no lockstep snapshot: write each entry as a "
                    'tag, or tags separated by commas that must all be present, e.g. ["release", "db,weekly"]'
                )
        return entries


VerifyLevel = Literal["none", "structure", "data", "restore"]


class BackupConfig(_Section):
    """What `lockstep backup` (the cron-friendly one-shot) does around the snapshot."""

    healthchecks_url: str | None = Field(
        default=None,
        description=(
            "A healthchecks-style ping URL: lockstep requests URL/start when it begins, URL on success "
            "and URL/fail on failure. Leave it out for no pings. Credentials in it "
            "(https://user:password@host/..., percent-encoded as curl reads them) are sent as HTTP basic "
            "auth and never shown."
        ),
        examples=["https://hc-ping.com/your-uuid"],
    )
    verify_level: VerifyLevel = Field(
        default="structure",
        description=(
            'How deeply to verify the new snapshot after the backup: "none", "structure" (the snapshot and '
            'its tree are readable), "data" (every blob is read and checked) or "restore" (a test-restore '
            "of every database into a scratch database)."
        ),
        examples=["restore"],
    )
    forget: bool = Field(
        default=True,
        description="Apply the retention policy after a successful backup (without pruning).",
        examples=[False],
    )
    min_free_disk_mb: int = Field(
        default=1024,
        ge=0,
        description="Refuse to start when the local repository's file system has less free space (MiB).",
        examples=[4096],
    )


class ProjectConfig(_Section):
    """A project's lockstep.toml: what a coordinated snapshot contains and where it is stored."""

    project: str | None = Field(
        default=None,
        description=(
            "The project's name in the repository: its snapshots are stored under the path /lockstep/NAME, "
            "and every snapshot command (list, show, diff, verify, restore, forget, backup's retention, "
            "`latest`, ID and commit prefixes), deploy, rollback and the agent see only the snapshots of "
            "this name, so projects sharing a repository never restore or forget each other's snapshots. "
            "Default: the name of the directory lockstep.toml is in, as snapshots have always been stored. "
            "Set it before two projects in directories of the same name share a repository, or to keep "
            "finding the snapshots after moving the project to a directory of another name. Letters, "
            "digits, '.', '_' and '-'; top level only (one name in every environment). `lockstep repo ...` "
            "commands still see every snapshot. The deploy lock of each environment is the project's too, so "
            "two projects' `production` deploy at the same time (commands.md, Deploy locks); the hosts of a "
            "multi-host environment must have the deploying machine's name (the preflight checks)."
        ),
        examples=["shop"],
    )
    repository: RepositoryConfig = Field(
        description="Where snapshots are stored.",
        examples=[{"url": "local:.lockstep/repository"}],
    )
    code: CodeConfig = Field(
        default_factory=CodeConfig,
        description=(
            "The application code. Without this table: the git work tree lockstep.toml is in (the commit "
            "checked out there), or else nothing."
        ),
        examples=[{"kind": "git", "path": "."}],
    )
    databases: dict[str, DatabaseConfig] = Field(
        default_factory=dict,
        description="Databases to dump, by a name of your choice ([databases.NAME]).",
        examples=[{"main": {"url": "postgresql://postgres@127.0.0.1:5432/shop"}}],
    )
    files: FilesConfig = Field(
        default_factory=FilesConfig,
        description="Configuration and secret files to record.",
        examples=[{"config": ["config/*.yml"]}],
    )
    retention: RetentionConfig = Field(
        default_factory=RetentionConfig,
        description=(
            "Which snapshots `snapshot forget`, `backup` and the agent's forget keep, per environment, "
            "with restic's `forget` rules under restic's names. keep_hourly, keep_daily, keep_weekly, "
            "keep_monthly and keep_yearly are restic's calendar rules (the newest snapshot of each of the "
            "last N hours, days, weeks, months, years that have one; the oldest kept when a rule is not "
            "filled) over the regular snapshots: manual (`snapshot create`) and scheduled (`backup`, the "
            "agent). A period with no regular snapshot is filled by its newest pre-deploy or pre-restore "
            "snapshot, counted as one of the N (a project that only deploys keeps one a month); one with "
            "a regular snapshot keeps that one, whatever was taken after it. keep_last, keep_within and "
            "keep_within_hourly ... keep_within_yearly count the regular snapshots only; keep_tags keeps "
            "any snapshot with its tags. Snapshots taken for a purpose also have a rule of their own: "
            "pre-deploy ones keep_pre_deploy, pre-restore ones keep_pre_restore. The rules add up: "
            "a snapshot is kept when any rule keeps it, and `snapshot forget --dry-run` lists why. "
            "The example keeps the last 3 regular snapshots, two weeks of dailies, one a year forever, any "
            "snapshot tagged release, every pre-deploy snapshot of the last 20 deploys and the pre-restore "
            "snapshots of the last 5 restores. With restic itself (which does not fill periods) the "
            "regular part is `restic forget --tag env:production,kind:scheduled --tag "
            "env:production,kind:manual --keep-last 3 --keep-daily 14 ...`."
        ),
        examples=[
            {
                "keep_last": 3,
                "keep_daily": 14,
                "keep_yearly": -1,
                "keep_tags": ["release"],
                "keep_pre_deploy": 20,
                "keep_pre_restore": 5,
            }
        ],
    )
    backup: BackupConfig = Field(
        default_factory=BackupConfig,
        description="What `lockstep backup` does around the snapshot.",
        examples=[{"healthchecks_url": "https://hc-ping.com/your-uuid", "verify_level": "restore"}],
    )
    app: AppConfig = Field(
        default_factory=AppConfig,
        description="The application `lockstep deploy` ships: its components, build and migrations.",
        examples=[{"migrate": "python3 migrate.py"}],
    )
    traffic: TrafficConfig = Field(
        default_factory=TrafficConfig,
        description="The traffic switch in front of the app.",
        examples=[{"kind": "builtin", "listen": "127.0.0.1:8080"}],
    )
    deploy: DeployConfig = Field(
        default_factory=DeployConfig,
        description="Smoke tests, the watch window and hooks of `lockstep deploy`.",
        examples=[{"watch_seconds": 60}],
    )
    policy: PolicyConfig = Field(
        default_factory=PolicyConfig,
        description="What the environment allows (override it per environment).",
        examples=[{"confirm": True}],
    )
    agent: AgentConfig = Field(
        default_factory=AgentConfig,
        description="The agent's dashboard, metrics and recovery point objective.",
        examples=[{"dashboard_listen": "127.0.0.1:8790"}],
    )
    schedules: list[ScheduleConfig] = Field(
        default_factory=list,
        description="Work the agent runs on a schedule ([[schedules]]); `lockstep backup` remains for cron.",
        examples=[[{"job": "backup", "cron": "0 2 * * *"}, {"job": "verify", "cron": "0 4 * * 0"}]],
    )
    notifications: NotificationsConfig = Field(
        default_factory=NotificationsConfig,
        description=(
            "Who hears about deploys, rollbacks, snapshots and failures: Slack, webhooks, email, "
            "healthchecks pings, GitHub Actions and a local event log."
        ),
        examples=[{"channels": [{"kind": "slack", "url_env": "SLACK_WEBHOOK_URL", "events": ["deploy.*"]}]}],
    )
    hosts: list[str | HostConfig] = Field(
        default_factory=list,
        description=(
            "Hosts to deploy to over SSH, all or none (usually set per environment: [environments.NAME] hosts = "
            "[...]). Each is [user@]host[:port], or a table { address = ..., port = ..., project_dir = ... } for "
            "what differs from [ssh]. The first host is the primary: it alone takes the pre-deploy snapshot and "
            "runs the migrations. Empty: deploy to this machine."
        ),
        examples=[["deploy@web1.example.com", "web2.example.com:2222"]],
    )
    ssh: SshConfig = Field(
        default_factory=SshConfig,
        description="How to reach the hosts over SSH (host keys are always checked).",
        examples=[{"user": "deploy", "project_dir": "/srv/shop"}],
    )
    default_environment: str = Field(
        default="production",
        description=(
            "The environment every command uses when --env is not given: deploy, rollback, status, history, "
            "doctor, lock, backup, the snapshot commands and the repo commands' repository. It needs no "
            "[environments.NAME] table of its own: without one, the top-level tables are its config, and "
            "the snapshots taken without --env are labelled default; with one, they use its overrides and "
            "are labelled with its name."
        ),
        examples=["staging"],
    )
    environments: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description=(
            "Per-environment overrides ([environments.NAME.SECTION...]) of any table above, merged key by "
            "key over the top-level values when lockstep runs for that environment; a key that has "
            "alternatives replaces the top-level one (password_file or password_command of [repository], "
            "password_env or password_file of a database, http, tcp or command of a health check). "
            "Every command's --env "
            "accepts the names defined here and default_environment; any other name is a usage error (exit "
            "code 2) that lists the valid names, so a typo never deploys into a new, unconfigured environment."
        ),
        examples=[{"production": {"databases": {"main": {"url": "postgresql://deploy@db.internal:5432/shop"}}}}],
    )

    _source: dict[str, Any] = PrivateAttr(default_factory=dict)
    _context: dict[str, Any] = PrivateAttr(default_factory=dict)

    @field_validator("project")
    @classmethod
    def _check_project(cls, project: str | None) -> str | None:
        if project is not None and not PROJECT_NAME.fullmatch(project):
            raise ValueError(
                f"project {project!r} is not a valid name: use letters, digits, '.', '_' and '-', "
                "starting with a letter or digit (it is a path component in the repository)"
            )
        return project

    @field_validator("environments")
    @classmethod
    def _check_environment_names(cls, environments: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, overrides in environments.items():
            if "environments" in overrides:
                raise ValueError(f"environments.{name} contains environments: environments cannot be nested")
            if "project" in overrides:
                # Commands without --env (list, forget) use the top-level name: an environment's
                # own would hide its snapshots from them, and from its retention.
                raise ValueError(
                    f"environments.{name} sets project: a project has one name in every environment, "
                    "set it at the top level"
                )
        return environments

    @model_validator(mode="after")
    def _resolve_paths(self, info: ValidationInfo) -> ProjectConfig:
        base = _base_directory(info)
        if base is not None:
            if self.project is None:  # the name snapshots were always stored under
                self.project = base.name or DEFAULT_PROJECT
            self.repository = self.repository.resolved(base)
            self.code = self.code.resolved(base)
            if self.app.source is None:
                self.app = self.app.model_copy(update={"source": _source_within(self.code.path, base)})
            self.databases = {name: database.resolved(base) for name, database in self.databases.items()}
            self.files = self.files.resolved(base)
            self.notifications = self.notifications.resolved(base)
            self.ssh = self.ssh.resolved(base)
        return self

    @model_validator(mode="after")
    def _check_hosts(self) -> ProjectConfig:
        host_targets(self.hosts, self.ssh)  # a host without a project_dir, or listed twice: say so now
        return self

    def host_targets(self) -> list[HostTarget]:
        """The hosts to deploy to, resolved; empty for a single-machine environment."""
        return host_targets(self.hosts, self.ssh)

    @classmethod
    def from_source(cls, source: dict[str, Any], base_directory: Path | None = None) -> ProjectConfig:
        """Validate `source` (the parsed TOML), keeping it so `resolve` can merge environments later."""
        context: dict[str, Any] = {} if base_directory is None else {"base_directory": base_directory}
        config = cls.model_validate(source, context=context)
        config._source = copy.deepcopy(source)
        config._context = context
        return config

    def known_environments(self) -> list[str]:
        """The names --env accepts: each [environments.NAME], and default_environment even without a table."""
        return sorted({*self.environments, self.default_environment})

    def check_environment(self, environment: str) -> None:
        """Refuse a name that is neither defined nor the default, so `--env prodution` is a usage
        error rather than a new, unconfigured environment with non-production policy."""
        known = self.known_environments()
        if environment in known:
            return
        matches = difflib.get_close_matches(environment, known, n=1, cutoff=0.6)
        suggestion = f"did you mean {matches[0]}? " if matches else ""
        if environment == DEFAULT_ENVIRONMENT:
            suggestion = self._default_label_hint()
        raise UsageError(
            f"unknown environment {environment!r}",
            f"{suggestion}the environments in the config are: {', '.join(known)} "
            f"(add [environments.{environment}] to lockstep.toml to define a new one)",
        )

    def _default_label_hint(self) -> str:
        """`--env default`, typed after `snapshot list` showed "default": that label names what ran
        with the top-level config, which is default_environment's when it has no table of its own.
        With one, no environment uses the top-level config (no --env means default_environment)."""
        name = self.default_environment
        if name in self.environments:
            return (
                f"{DEFAULT_ENVIRONMENT} labels snapshots of the top-level tables, which no environment uses here "
                f"(without --env lockstep uses [environments.{name}]): restore one of their databases elsewhere "
                "with `snapshot restore ID --database NAME --to URL`; "
            )
        return (
            f"did you mean {name}? {DEFAULT_ENVIRONMENT} labels the snapshots taken without --env, which are "
            f"{name}'s (it has no [environments.{name}] table): use --env {name} or leave --env out; "
        )

    def resolve(self, environment: str | None) -> ProjectConfig:
        """The configuration for `environment`: its overrides merged over the top-level tables.

        None gives this configuration unchanged. The merged model has no environments of its own.
        The default environment without a table of its own is the top-level configuration.
        Raises UsageError for an unknown environment, pydantic's ValidationError when the merged
        result is invalid (loading.py checks every environment up front, so that is a bug there).
        """
        if environment is None:
            return self
        self.check_environment(environment)
        if environment not in self.environments:
            return self  # the default environment needs no table: the top-level tables are its config
        base = {key: value for key, value in self._source.items() if key != "environments"}
        merged = merge_tables(base, self.environments[environment])
        return type(self).model_validate(merged, context=self._context)


# Keys of which a table holds at most one (by table path, "*" for any name). An environment that
# sets one of them replaces the top-level choice: merged key by key, it added a second one (TOML
# has no null to remove the inherited key), so e.g. production could not take its repository
# password from a command while the top level read a file.
ALTERNATIVE_KEYS: tuple[tuple[tuple[str, ...], frozenset[str]], ...] = (
    (("repository",), frozenset({"password_file", "password_command"})),
    (("repository", "copies", "*"), frozenset(COPY_PASSWORD_KEYS)),
    (("databases", "*"), frozenset({"password_env", "password_file"})),
    (("app", "components", "*", "health"), frozenset({"http", "tcp", "command"})),
)


def _alternatives(path: tuple[str, ...]) -> list[frozenset[str]]:
    return [
        keys
        for pattern, keys in ALTERNATIVE_KEYS
        if len(pattern) == len(path) and all(part in ("*", name) for part, name in zip(pattern, path, strict=True))
    ]


def merge_tables(base: dict[str, Any], overrides: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """`overrides` over `base`, table by table: nested tables merge, any other value replaces; one
    of a set of alternative keys (ALTERNATIVE_KEYS) replaces the base's choice among them."""
    merged = copy.deepcopy(base)
    for keys in _alternatives(path):
        chosen = {key for key in keys & overrides.keys() if overrides[key] is not False}  # `tcp = false` chooses none
        if chosen:
            for key in keys - overrides.keys():
                merged.pop(key, None)
    for key, value in overrides.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            merged[key] = merge_tables(current, value, (*path, key))
        else:
            merged[key] = copy.deepcopy(value)
    return merged
