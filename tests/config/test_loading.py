"""Loading lockstep.toml from disk: finding it, resolving it, and the messages for every kind of mistake."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lockstep.config.loading import find_config, known_keys, load_config
from lockstep.errors import UsageError
from lockstep.exit_codes import ExitCode
from lockstep.redaction import Redactor

MINIMAL = """\
[repository]
url = "local:.lockstep/repository"   # LOCKSTEP_REPOSITORY overrides it

[databases.main]
url = "postgresql://postgres@127.0.0.1:5432/shop"
"""


@pytest.fixture(autouse=True)
def no_repository_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own LOCKSTEP_REPOSITORY must not leak into these tests."""
    monkeypatch.delenv("LOCKSTEP_REPOSITORY", raising=False)


def write_config(directory: Path, text: str) -> Path:
    path = directory / "lockstep.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(path: Path, environment: str | None = None) -> UsageError:
    with pytest.raises(UsageError) as raised:
        load_config(path, environment)
    assert raised.value.exit_code == ExitCode.USAGE
    return raised.value


def test_the_minimal_config_loads(tmp_path: Path) -> None:
    """The smallest valid config from the issue, outside any git work tree."""
    config = load_config(write_config(tmp_path, MINIMAL))
    assert config.repository.url == f"local:{tmp_path.resolve() / '.lockstep/repository'}"
    assert config.databases["main"].engine == "postgresql"
    assert config.code.path == tmp_path.resolve()
    assert config.code.kind is None


def test_code_is_the_git_work_tree_the_config_sits_in(tmp_path: Path) -> None:
    """Without [code], a directory with .git is taken as git code."""
    (tmp_path / ".git").mkdir()
    config = load_config(write_config(tmp_path, MINIMAL))
    assert config.code.kind == "git"
    assert config.code.path == tmp_path.resolve()


def test_explicit_code_section_keeps_its_kind_and_resolves_its_path(tmp_path: Path) -> None:
    """A release directory next to the config."""
    text = MINIMAL + '\n[code]\nkind = "release-directory"\npath = "current"\n'
    config = load_config(write_config(tmp_path, text))
    assert config.code.kind == "release-directory"
    assert config.code.path == tmp_path.resolve() / "current"


def test_repository_variable_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LOCKSTEP_REPOSITORY wins, also over an environment's repository; relative means the current dir."""
    text = MINIMAL + '\n[environments.production.repository]\nurl = "s3:http://127.0.0.1:9000/b"\n'
    path = write_config(tmp_path, text)
    monkeypatch.setenv("LOCKSTEP_REPOSITORY", "/srv/backups/shop")
    assert load_config(path).repository.url == "local:/srv/backups/shop"
    assert load_config(path, "production").repository.url == "local:/srv/backups/shop"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("LOCKSTEP_REPOSITORY", "local:relative/repo")
    assert load_config(path).repository.url == f"local:{elsewhere / 'relative/repo'}"


def test_relative_repository_path_is_relative_to_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading from another directory gives the same repository."""
    project = tmp_path / "project"
    project.mkdir()
    write_config(project, MINIMAL)
    monkeypatch.chdir(tmp_path)
    expected = f"local:{project.resolve()}/.lockstep/repository"
    assert load_config(Path("project/lockstep.toml")).repository.url == expected


def test_environment_overrides_apply_on_load(tmp_path: Path) -> None:
    """production changes the database URL; staging inherits the top-level one."""
    text = MINIMAL + textwrap.dedent(
        """
        [environments.production.databases.main]
        url = "postgresql://deploy@db.internal:5432/shop"

        [environments.staging]
        """
    )
    path = write_config(tmp_path, text)
    assert load_config(path, "production").databases["main"].url == "postgresql://deploy@db.internal:5432/shop"
    assert load_config(path, "staging").databases["main"].url == "postgresql://postgres@127.0.0.1:5432/shop"
    error = load_error(path, "qa")
    assert "production, staging" in str(error)


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    """A typo names its full location and the key that was meant."""
    path = write_config(tmp_path, MINIMAL.replace("[databases.main]\nurl", "[databases.main]\nulr"))
    message = str(load_error(path))
    assert 'lockstep.toml: databases.main.ulr: unknown key; did you mean "url"?' in message
    assert "databases.main.url: missing: add url = " in message


def test_a_secret_named_key_is_explained_in_words_the_redactor_leaves_alone(tmp_path: Path) -> None:
    """Every error line goes through the redactor, which reads "password: unknown" as an
    assignment: `password = "..."` under [databases.main] (a newcomer's first guess) printed
    "databases.main.password: *** key". The line says where the password goes instead."""
    secret_keys = 'password = "hunter2-not-shown"\napi_key = "x"\n'
    text = MINIMAL + secret_keys + '[repository.copies.offsite]\nurl = "/b"\ntoken = 1\n'
    message = Redactor().redact(str(load_error(write_config(tmp_path, text))))
    assert "***" not in message, message
    assert "hunter2" not in message
    for key in ("databases.main.password", "databases.main.api_key", "repository.copies.offsite.token"):
        assert f"lockstep.toml: {key} (unknown key: lockstep.toml holds no secrets;" in message, message
    assert "password_env" in message and "password_file" in message


def test_unknown_key_in_an_environment_is_caught_for_every_environment(tmp_path: Path) -> None:
    """A typo under [environments.production] fails even when loading without an environment."""
    text = MINIMAL + "\n[environments.production.retention]\nkeep_dialy = 3\n"
    message = str(load_error(write_config(tmp_path, text)))
    assert 'environments.production.retention.keep_dialy: unknown key; did you mean "keep_daily"?' in message


def test_unknown_key_in_an_array_of_tables_gets_a_suggestion(tmp_path: Path) -> None:
    """[[deploy.smoke]] and [[schedules]] entries are matched against their own keys too; a typo
    there was only told "remove it"."""
    text = MINIMAL + '\n[[deploy.smoke]]\nhtp = "/health"\n\n[[schedules]]\njob = "backup"\ncorn = "0 2 * * *"\n'
    message = str(load_error(write_config(tmp_path, text)))
    assert 'deploy.smoke.0.htp: unknown key; did you mean "http"?' in message
    assert 'schedules.0.corn: unknown key; did you mean "cron"?' in message


def test_a_top_level_key_written_after_a_table_says_where_it_belongs(tmp_path: Path) -> None:
    """TOML puts `default_environment = ...` written below [repository] into that table; the
    message says so instead of listing [repository]'s keys, here and in an environment."""
    text = MINIMAL.replace('shop"\n', 'shop"\ndefault_environment = "staging"\n')
    message = str(load_error(write_config(tmp_path, text)))
    assert 'databases.main.default_environment: unknown key here: "default_environment" belongs at the top' in message
    assert "move it there" in message
    text = MINIMAL + '\n[environments.staging]\n[environments.staging.app]\nkeep_releases = 3\nhosts = ["web1"]\n'
    message = str(load_error(write_config(tmp_path, text)))
    expected = 'environments.staging.app.hosts: unknown key here: "hosts" belongs directly under [environments.staging]'
    assert expected in message


def test_password_in_a_database_url_is_refused_without_repeating_it(tmp_path: Path) -> None:
    """The message says where to move the password, and does not contain it."""
    secret = "s3cr3t-Pa55word"
    text = MINIMAL.replace("postgres@127", f"postgres:{secret}@127")
    message = str(load_error(write_config(tmp_path, text)))
    assert "databases.main.url" in message
    assert "password_env" in message
    assert "password_file" in message
    assert secret not in message


def test_a_password_in_a_database_url_option_is_refused_too(tmp_path: Path) -> None:
    secret = "s3cr3t-Pa55word"
    text = MINIMAL.replace("5432/shop", f"5432/shop?sslmode=require&password={secret}")
    message = str(load_error(write_config(tmp_path, text)))
    assert "databases.main.url: the URL contains a password" in message
    assert secret not in message


def test_socket_urls_load_without_a_host_in_the_netloc(tmp_path: Path) -> None:
    """libpq's ?host=DIR and MariaDB's ?socket=PATH stand in for the host; nothing at all does not."""
    for url in ("postgresql:///shop?host=/run/postgresql", "mariadb://root@/shop?socket=/run/mysqld/mysqld.sock"):
        config = load_config(write_config(tmp_path, MINIMAL.replace("postgresql://postgres@127.0.0.1:5432/shop", url)))
        assert config.databases["main"].url == url
    text = MINIMAL.replace("postgresql://postgres@127.0.0.1:5432/shop", "postgresql:///shop?sslmode=require")
    assert "the URL has no host" in str(load_error(write_config(tmp_path, text)))


@pytest.mark.parametrize(
    ("url", "option", "hint"),
    [
        ("mariadb://root@/shop?host=/run/mysqld", "'host'", "?socket=PATH"),
        ("mysql://root@127.0.0.1/shop?ssl-mode=REQUIRED", "'ssl-mode'", "~/.my.cnf"),
        ("postgresql:///shop?socket=/run/postgresql", "'socket'", "sslmode"),
        ("postgresql://postgres@127.0.0.1/shop?sslmod=require", "'sslmod'", "libpq service file"),
        ("sqlite:///app.db?mode=ro", "'mode'", "takes no options"),
    ],
)
def test_an_option_the_engine_does_not_take_is_refused_when_the_config_loads(
    tmp_path: Path, url: str, option: str, hint: str
) -> None:
    """Checked per engine when lockstep.toml loads, not first at connect time or never (SQLite
    dropped its options, and a misspelt sslmode would connect without TLS)."""
    text = MINIMAL.replace("postgresql://postgres@127.0.0.1:5432/shop", url)
    message = str(load_error(write_config(tmp_path, text)))
    assert f"databases.main.url: the database URL {url} has the option {option}" in message
    assert hint in message


def test_password_in_the_repository_url_is_refused(tmp_path: Path) -> None:
    """The same rule for an S3 URL with credentials in it."""
    secret = "AKIAsecretKEY"
    text = MINIMAL.replace('"local:.lockstep/repository"', f'"s3:http://user:{secret}@127.0.0.1:9000/bucket"')
    message = str(load_error(write_config(tmp_path, text)))
    assert "repository.url: the URL contains a password" in message
    assert "AWS_SECRET_ACCESS_KEY" in message
    assert secret not in message


def test_wrong_types_are_reported_per_key_without_values(tmp_path: Path) -> None:
    """One line per problem, each with the file and the key."""
    text = MINIMAL + '\n[retention]\nkeep_daily = "lots"\nkeep_weekly = -5\n'
    message = str(load_error(write_config(tmp_path, text)))
    lines = message.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{tmp_path / 'lockstep.toml'}: retention.keep_daily: ")
    assert lines[1].startswith(f"{tmp_path / 'lockstep.toml'}: retention.keep_weekly: ")
    assert "lots" not in message


def test_a_keep_within_that_is_not_a_restic_duration_names_the_key_and_the_syntax(tmp_path: Path) -> None:
    """keep_within = "3 days" would keep nothing if read loosely: the load fails on the key (in
    an environment's override too) with restic's duration syntax and an example."""
    path = write_config(tmp_path, MINIMAL + '\n[retention]\nkeep_within = "3 days"\n')
    assert str(load_error(path)) == (
        f"{path}: retention.keep_within: '3 days' is not a restic duration: write numbers each followed by a unit,"
        ' y (years), m (months), d (days) or h (hours), e.g. "1y5m7d2h" or "14d"'
    )
    path = write_config(tmp_path, MINIMAL + '\n[environments.production.retention]\nkeep_within_daily = "1w"\n')
    message = str(load_error(path))
    assert f"{path}: environments.production.retention.keep_within_daily: '1w' is not a restic duration" in message
    good = MINIMAL + '\n[retention]\nkeep_within = "1y5m7d2h"\nkeep_tags = ["release", "db,weekly"]\n'
    retention = load_config(write_config(tmp_path, good)).retention
    assert retention.keep_within == "1y5m7d2h"
    assert retention.keep_tags == ["release", "db,weekly"]


def test_a_keep_tags_entry_with_an_empty_tag_is_refused(tmp_path: Path) -> None:
    text = MINIMAL + '\n[retention]\nkeep_tags = ["release", "db,"]\n'
    message = str(load_error(write_config(tmp_path, text)))
    assert "retention.keep_tags: 'db,' has an empty tag" in message


def test_toml_syntax_error_shows_line_and_column(tmp_path: Path) -> None:
    """A broken file points at the line to fix."""
    path = write_config(tmp_path, '[repository]\nurl "local:repo"\n')
    message = str(load_error(path))
    assert "line 2" in message
    assert "column" in message
    assert "invalid TOML" in message


def test_missing_config_tells_to_run_init(tmp_path: Path) -> None:
    """No lockstep.toml: say how to get one."""
    with pytest.raises(UsageError) as raised:
        find_config(tmp_path, None)
    assert "lockstep init" in str(raised.value)
    assert "-c" in str(raised.value)
    with pytest.raises(UsageError):
        find_config(tmp_path, tmp_path / "nowhere.toml")


def test_find_config_prefers_the_explicit_path(tmp_path: Path) -> None:
    """-c wins over ./lockstep.toml."""
    default = write_config(tmp_path, MINIMAL)
    explicit = tmp_path / "production.toml"
    explicit.write_text(MINIMAL, encoding="utf-8")
    assert find_config(tmp_path, None) == default
    assert find_config(tmp_path, explicit) == explicit


def test_known_keys_steps_over_table_names() -> None:
    """The suggestion list for databases.<any name> is the database keys."""
    assert known_keys(["databases", "anything"]) == ["url", "password_env", "password_file", "exclude_table_data"]
    assert "repository" in known_keys([])


def test_an_environment_override_of_a_misspelt_entry_names_the_one_meant(tmp_path: Path) -> None:
    """[environments.staging.databases.mian] (for main) asked for a whole new database ("add url =
    ..."), which sends people to copy the URL instead of fixing the name."""
    path = write_config(tmp_path, MINIMAL + '\n[environments.staging.databases.mian]\npassword_env = "STAGING_PW"\n')
    message = load_error(path).message
    assert "environments.staging.databases.mian.url: missing" in message
    assert 'did you mean "main"?' in message
    unrelated = write_config(tmp_path, MINIMAL + '\n[environments.staging.databases.reports]\npassword_env = "X"\n')
    assert "did you mean" not in load_error(unrelated).message


def test_a_home_relative_path_means_the_home_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """url = "~/backups/shop" created a directory literally named "~" inside the project (inside
    its git work tree, too), while LOCKSTEP_REPOSITORY=~/... meant the home directory."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    project = tmp_path / "project"
    project.mkdir()
    text = '[repository]\nurl = "~/backups/shop"\npassword_file = "~/.lockstep-password"\n'
    config = load_config(write_config(project, text))
    assert config.repository.url == f"local:{home / 'backups' / 'shop'}"
    assert config.repository.password_file == home / ".lockstep-password"
    local = load_config(write_config(project, '[repository]\nurl = "local:~/backups/shop"\n'))
    assert local.repository.url == f"local:{home / 'backups' / 'shop'}"


def test_an_empty_local_repository_path_is_refused(tmp_path: Path) -> None:
    """url = "local:" meant the project's own directory as the repository."""
    message = load_error(write_config(tmp_path, '[repository]\nurl = "local:"\n')).message
    assert "repository.url" in message and "empty" in message


def test_an_environment_switches_the_repository_password_source(tmp_path: Path) -> None:
    """The top level reads a password file, production runs a command: merged key by key, production
    had both, which is refused ("keep only one of them"), and TOML cannot unset the inherited one.
    An environment's choice replaces the top-level one; the others keep the top level's."""
    text = textwrap.dedent(
        """
        [repository]
        url = "local:.lockstep/repository"
        password_file = "staging.pass"

        [databases.main]
        url = "postgresql://postgres@127.0.0.1:5432/shop"
        password_env = "SHOP_PASSWORD"

        [environments.production.repository]
        password_command = "pass show lockstep/production"

        [environments.production.databases.main]
        password_file = "/etc/lockstep/shop.pass"

        [environments.staging]
        """
    )
    path = write_config(tmp_path, text)
    production = load_config(path, "production")
    assert production.repository.password_command == "pass show lockstep/production"
    assert production.repository.password_file is None
    assert production.databases["main"].password_file == Path("/etc/lockstep/shop.pass")
    assert production.databases["main"].password_env is None
    staging = load_config(path, "staging")
    assert staging.repository.password_file == tmp_path / "staging.pass"
    assert staging.repository.password_command is None
    assert staging.databases["main"].password_env == "SHOP_PASSWORD"


def test_an_environment_setting_both_password_sources_is_still_refused(tmp_path: Path) -> None:
    text = MINIMAL + textwrap.dedent(
        """
        [environments.production.repository]
        password_file = "production.pass"
        password_command = "pass show lockstep/production"
        """
    )
    message = str(load_error(write_config(tmp_path, text), "production"))
    assert "environments.production.repository" in message and "keep only one of them" in message
