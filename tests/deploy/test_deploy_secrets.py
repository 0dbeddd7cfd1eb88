"""Secrets that a failing command prints must not come back in the deploy's error line, its
--json document or its history: the notes app, a real agent and a real PostgreSQL database."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest

from tests.deploy.conftest import _stop_everything, make_project
from tests.pipeline.test_verify import postgresql_database

pytestmark = pytest.mark.slow

FILE_PASSWORD = "pw-file-3b9d-never-shown"  # the database password, from password_file
ENV_TOKEN = "tok-env-8e21-never-shown"  # a secret-named variable in the deployer's environment


def test_a_failing_migration_that_prints_secrets_leaks_them_nowhere(tmp_path: Path) -> None:
    with postgresql_database() as url:
        password_file = tmp_path / "shop-password"
        password_file.write_text(FILE_PASSWORD + "\n")
        password_file.chmod(0o600)
        project = make_project(
            tmp_path,
            extra_config=f'[databases.shop]\nurl = "{url}"\npassword_file = "{password_file}"\n',
        )
        project.env["DEPLOY_API_TOKEN"] = ENV_TOKEN
        project.start_agent()
        try:
            assert project.lockstep("deploy").returncode == 0
            # A migration that fails and, as real tools do, prints what it connected with.
            (project.directory / "migrate.py").write_text(
                "import os, sys\n"
                f"password = open({str(password_file)!r}).read().strip()\n"
                "print('could not authenticate with', password, 'and', os.environ['DEPLOY_API_TOKEN'])\n"
                "sys.exit(1)\n"
            )
            project.commit("a migration that prints secrets and fails")
            failed = project.lockstep("deploy", "--json", "--log-format", "json")
            assert failed.returncode == 3, failed.err
            assert "could not authenticate with" in failed.err
            assert "could not authenticate with" in json.loads(failed.out)["error"]
            history = project.lockstep("history", "--json")
            assert history.returncode == 0, history.err
            assert "could not authenticate with" in history.out
            texts = {"stdout": failed.out, "stderr": failed.err, "history": history.out}
            history_database = project.directory / ".lockstep" / "state" / "test" / "history.db"
            with contextlib.closing(sqlite3.connect(history_database)) as connection:
                texts["history.db"] = "".join(row[0] for row in connection.execute("SELECT document FROM operations"))
        finally:
            _stop_everything(project)
    for secret in (FILE_PASSWORD, ENV_TOKEN):
        for where, text in texts.items():
            assert secret not in text, f"{secret} in {where}"
