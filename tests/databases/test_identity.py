"""same_database: whether two URLs name one database, so that `snapshot restore --to` the live
database is not taken for a copy elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockstep.databases.identity import same_database


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("postgresql://postgres@127.0.0.1:5432/shop", "postgresql://app@localhost/shop"),
        ("postgresql://postgres@127.0.0.1:5432/shop", "postgres://postgres@%2Fvar%2Frun%2Fpostgresql/shop"),
        ("postgresql://postgres@127.0.0.1:5432/shop", "postgresql+psycopg://postgres@[::1]:5432/shop?sslmode=disable"),
        ("postgresql://db.internal/shop", "postgresql://DB.internal:5432/shop"),
        ("mysql://root@127.0.0.1:3306/shop", "mariadb://app@localhost/shop?socket=/run/mysqld/mysqld.sock"),
    ],
)
def test_spellings_of_one_database_are_the_same(first: str, second: str) -> None:
    assert same_database(first, second)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("postgresql://postgres@127.0.0.1:5432/shop", "postgresql://postgres@127.0.0.1:5432/shop_copy"),
        ("postgresql://postgres@127.0.0.1:5432/shop", "postgresql://postgres@127.0.0.1:5433/shop"),
        ("postgresql://postgres@127.0.0.1:5432/shop", "postgresql://postgres@db.internal:5432/shop"),
        ("postgresql://postgres@127.0.0.1:5432/shop", "mysql://root@127.0.0.1:5432/shop"),
        ("mysql://root@127.0.0.1/shop", "mysql://root@127.0.0.1/Shop2"),
    ],
)
def test_other_databases_are_not(first: str, second: str) -> None:
    assert not same_database(first, second)


def test_sqlite_compares_files(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "app.db").write_bytes(b"")
    (tmp_path / "link.db").symlink_to(tmp_path / "data" / "app.db")
    live = f"sqlite:///{tmp_path}/data/app.db"
    assert same_database(live, f"sqlite:///{tmp_path}/data/../data/app.db")
    assert same_database(live, f"sqlite:///{tmp_path}/link.db")
    assert not same_database(live, f"sqlite:///{tmp_path}/data/copy.db")
    assert same_database(f"sqlite:///{tmp_path}/new.db", f"sqlite:///{tmp_path}/./new.db")
