"""exclude_table_data on MariaDB/MySQL needs mariadb-dump's --ignore-table-data: a client
without it (MySQL's mysqldump, MariaDB clients before 2020) is refused before anything runs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockstep.databases import mysql
from lockstep.errors import UsageError


@pytest.fixture
def client_without_ignore_table_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A mariadb-dump first on PATH whose --help lists --ignore-table but not --ignore-table-data,
    as MySQL 8's mysqldump does; the answer asked once per process is forgotten before and after."""
    program = tmp_path / "mariadb-dump"
    program.write_text("#!/bin/sh\necho 'Usage: mysqldump [OPTIONS] database [tables]'\necho '  --ignore-table=name'\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    mysql.client_ignores_table_data.cache_clear()
    yield
    mysql.client_ignores_table_data.cache_clear()


@pytest.mark.usefixtures("client_without_ignore_table_data")
def test_a_client_without_ignore_table_data_is_refused_naming_the_key() -> None:
    with pytest.raises(UsageError) as refused:
        mysql.ADAPTER.dump("mariadb://root@127.0.0.1:3306/shop", None, exclude_table_data=["sessions"])
    assert "exclude_table_data" in refused.value.message and "--ignore-table-data" in refused.value.message
    assert "mariadb-client" in refused.value.hint
