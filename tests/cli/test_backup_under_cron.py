"""`lockstep backup` as cron runs it: no terminal, PATH=/usr/bin:/bin, HOME unset, LANG=C, another
working directory with -c, and a real healthchecks server on loopback. What broke there (and
not in a shell) is tested here, each with the fix's clear message."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

import lockstep
from lockstep.exit_codes import ExitCode
from tests.cli.test_backup_cli import SUMMARY, Pings, pings  # noqa: F401 (the fixture)
from tests.cli.test_snapshot_cli import git
from tests.conftest import TEST_PASSWORD, Completed, require_binary

CRON_PATH = "/usr/bin:/bin"


def run_like_cron(arguments: list[str], cwd: Path, extra: Mapping[str, str] | None = None) -> Completed:
    """The real CLI with only what cron gives (plus where lockstep's code is): no HOME, no
    terminal (stdin, stdout and stderr are not ttys), LANG=C."""
    source = str(Path(lockstep.__file__).resolve().parent.parent)
    environment = {"PATH": CRON_PATH, "LANG": "C", "PYTHONPATH": source, "LOCKSTEP_SCRYPT_N": "1024", **(extra or {})}
    completed = subprocess.run(
        [sys.executable, "-m", "lockstep", *arguments],
        cwd=cwd,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
        check=False,
    )
    return Completed(completed.returncode, completed.stdout, completed.stderr)


def make_project(root: Path, ping_url: str, extra: str = "") -> Path:
    """A git work tree with lockstep.toml, a SQLite database and an initialised repository; the
    repository password comes from a command that reads a file next to lockstep.toml."""
    require_binary("git", "apt-get install git")
    root.mkdir(parents=True)
    with sqlite3.connect(root / "app.db") as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
        connection.execute("INSERT INTO notes VALUES ('crème brûlée')")
    (root / "password").write_text(TEST_PASSWORD + "\n")
    (root / "password").chmod(0o600)
    (root / "lockstep.toml").write_text(
        '[repository]\nurl = "repository"\npassword_command = "cat password"\n\n'
        '[databases.main]\nurl = "sqlite:///app.db"\n\n'
        f'[backup]\nhealthchecks_url = "{ping_url}"\nmin_free_disk_mb = 1\nverify_level = "restore"\n' + extra
    )
    (root / ".gitignore").write_text("app.db\nrepository/\npassword\n.lockstep/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "first")
    created = run_like_cron(["repo", "init", "-c", str(root / "lockstep.toml")], cwd=root)
    assert created.returncode == 0, created.err
    return root / "lockstep.toml"


def test_a_backup_from_cron_prints_one_line_and_pings(tmp_path: Path, pings: Pings) -> None:  # noqa: F811
    config = make_project(tmp_path / "shop", pings.url)
    elsewhere = tmp_path / "cron-cwd"
    elsewhere.mkdir()
    result = run_like_cron(["backup", "-c", str(config)], cwd=elsewhere)
    assert result.returncode == 0, result.err
    assert SUMMARY.match(result.out.strip()), result.out
    assert result.err == ""  # cron mails whatever is printed: a good night says one line
    assert pings.paths() == ["/start", "/"]


def test_a_work_tree_owned_by_another_user_is_named_with_a_fix_that_works_without_home(
    tmp_path: Path,
    pings: Pings,  # noqa: F811
) -> None:
    """root's crontab backing up the deploy user's tree: git refuses it ("dubious ownership"), and
    lockstep showed git's last lines (`git config --global ...`, which cannot work without HOME)
    under the hint "make a first commit". It says what is wrong and gives fixes that work."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to give the work tree to another user")
    config = make_project(tmp_path / "shop", pings.url)
    shutil.chown(tmp_path / "shop", user=65534, group=65534)
    for path in (tmp_path / "shop").rglob("*"):
        os.lchown(path, 65534, 65534)
    result = run_like_cron(["backup", "-c", str(config)], cwd=tmp_path)
    assert result.returncode == ExitCode.SOURCE, result.err
    assert "git refuses to read" in result.err and "belongs to uid 65534" in result.err
    assert "lockstep runs as uid 0" in result.err
    assert f"git config --system --add safe.directory {tmp_path / 'shop'}" in result.err
    assert "make a first commit" not in result.err
    assert pings.paths() == ["/start", "/fail"]
    assert "git refuses to read" in pings.received[-1][1]


def test_client_tools_installed_off_crons_path_are_named_with_the_path_to_set(tmp_path: Path) -> None:
    """pg_dump in /usr/local/bin or /usr/lib/postgresql/N/bin works in a shell and is "not found"
    under cron; the fix said to install it. It says where it is and which PATH to set."""
    installed = require_binary("pg_dump", "apt-get install postgresql-client")
    project = tmp_path / "shop"
    project.mkdir()
    (project / "lockstep.toml").write_text(
        '[repository]\nurl = "repository"\n\n[databases.main]\nurl = "postgresql://postgres@127.0.0.1:5432/small_x"\n'
    )
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    result = run_like_cron(
        ["backup", "-c", str(project / "lockstep.toml")],
        cwd=tmp_path,
        extra={"PATH": str(empty), "LOCKSTEP_PASSWORD": TEST_PASSWORD},
    )
    assert result.returncode == ExitCode.SOURCE, result.err
    assert "pg_dump" in result.err and "not found on PATH" in result.err
    directory = str(Path(installed).resolve().parent) if "/usr/lib/postgresql/" in installed else None
    assert ", but installed: " in result.err
    assert "to PATH where lockstep runs" in result.err and "apt-get" not in result.err
    if directory is not None:
        assert directory in result.err


def test_a_tilde_in_config_paths_and_in_a_crontabs_repository_is_the_home(tmp_path: Path) -> None:
    """`url = "~/backups/shop"` and `password_file = "~/.lockstep-password"` meant a directory
    named `~` next to lockstep.toml ("cannot read the password file /srv/shop/~/..."), and so did
    a crontab's `LOCKSTEP_REPOSITORY=~/backups/shop` (cron assigns it without a shell) under the
    working directory. Both are the home directory now, as the same path on --repo always was."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".lockstep-password").write_text(TEST_PASSWORD + "\n")
    project = tmp_path / "shop"
    project.mkdir()
    with sqlite3.connect(project / "app.db") as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    (project / "lockstep.toml").write_text(
        '[repository]\nurl = "~/backups/shop"\npassword_file = "~/.lockstep-password"\n\n'
        '[databases.main]\nurl = "sqlite:///app.db"\n\n[backup]\nmin_free_disk_mb = 1\n'
    )
    config = str(project / "lockstep.toml")
    initialised = run_like_cron(["repo", "init", "-c", config], cwd=tmp_path, extra={"HOME": str(home)})
    assert initialised.returncode == 0, initialised.err
    assert (home / "backups" / "shop" / "config").is_file()
    assert not (project / "~").exists()
    backed_up = run_like_cron(["backup", "-c", config], cwd=tmp_path, extra={"HOME": str(home)})
    assert backed_up.returncode == 0, backed_up.err
    crontab = {"HOME": str(home), "LOCKSTEP_REPOSITORY": "~/backups/other"}
    password = ["--password-file", str(home / ".lockstep-password")]
    other = run_like_cron(["repo", "init", *password], cwd=tmp_path, extra=crontab)
    assert other.returncode == 0, other.err
    assert (home / "backups" / "other" / "config").is_file()
    overridden = run_like_cron(["backup", "-c", config], cwd=tmp_path, extra=crontab)
    assert overridden.returncode == 0, overridden.err
    assert list((home / "backups" / "other" / "snapshots").iterdir())
    assert not (tmp_path / "~").exists()


def run_with_closed_streams(arguments: list[str], cwd: Path, redirect: str, extra: Mapping[str, str]) -> int:
    """The real CLI started by a shell with `redirect` (`>&-`: stdout closed, not /dev/null)."""
    source = str(Path(lockstep.__file__).resolve().parent.parent)
    environment = {"PATH": CRON_PATH, "LANG": "C", "PYTHONPATH": source, "LOCKSTEP_SCRYPT_N": "1024", **extra}
    script = f'exec "$0" -m lockstep "$@" </dev/null {redirect}'
    return subprocess.run(
        ["/bin/sh", "-c", script, sys.executable, *arguments], cwd=cwd, env=environment, timeout=300, check=False
    ).returncode


@pytest.mark.parametrize("redirect", [">&-", "2>&-", ">&- 2>&-"])
def test_a_backup_with_its_output_closed_still_runs_and_pings(
    tmp_path: Path,
    pings: Pings,  # noqa: F811
    redirect: str,
) -> None:
    """`lockstep backup >&-` (a crontab silencing a job) started Python with sys.stdout None, and
    lockstep died with a traceback on its first output, before the backup and its pings: nothing
    happened, and with `2>&-` nothing said so either. Closed streams are /dev/null now."""
    config = make_project(tmp_path / "shop", pings.url)
    code = run_with_closed_streams(["backup", "-c", str(config)], tmp_path, redirect, {})
    assert code == 0
    assert pings.paths() == ["/start", "/"]
    wrong = run_with_closed_streams(
        ["backup", "-c", str(config)], tmp_path, redirect, {"LOCKSTEP_PASSWORD_COMMAND": "echo not-the-password"}
    )
    assert wrong == ExitCode.WRONG_PASSWORD
    assert pings.paths() == ["/start", "/", "/start", "/fail"]
    checked = run_like_cron(["repo", "check", "--read-data", "-c", str(config)], cwd=tmp_path)
    assert checked.returncode == 0, checked.err


def test_tools_get_the_users_home_when_the_scheduler_sets_none(tmp_path: Path, pings: Pings) -> None:  # noqa: F811
    """Without HOME (a systemd service without User=, `env -i`), `pass` found no store, gpg no
    keys and git no ~/.gitconfig: a password command that works in a shell failed at 03:00. The
    tools lockstep runs get the home of the password database, as a login would give them."""
    import pwd

    expected = pwd.getpwuid(os.getuid()).pw_dir
    config = make_project(tmp_path / "shop", pings.url)
    helper = tmp_path / "shop" / "password-helper"
    check_home = f'[ "$HOME" = "{expected}" ] || {{ echo "HOME is [$HOME]" >&2; exit 1; }}'
    helper.write_text(f"#!/bin/sh\n{check_home}\ncat password\n")
    helper.chmod(0o700)
    text = config.read_text().replace('password_command = "cat password"', 'password_command = "./password-helper"')
    config.write_text(text)
    git(config.parent, "add", "-A")
    git(config.parent, "commit", "-q", "-m", "a password helper")
    result = run_like_cron(["backup", "-c", str(config)], cwd=tmp_path)
    assert result.returncode == 0, result.err
    assert pings.paths() == ["/start", "/"]
