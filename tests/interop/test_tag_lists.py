"""`--tag a,b` means two tags, as in restic: written by `repo backup`, read back by restic, and
used as a filter (both tags) by `repo snapshots` the way restic's own filter uses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.interop import lockstep, lockstep_backup_summary, restic, restic_snapshots

pytestmark = pytest.mark.usefixtures("restic_binary")


def test_repo_backup_splits_comma_separated_tags_as_restic_does(repository_env: dict[str, str], tmp_path: Path) -> None:
    """lockstep wrote `--tag a,b` as the single tag "a,b": restic then saw neither a nor b."""
    lockstep(repository_env, ["repo", "init"])
    source = tmp_path / "source"
    source.mkdir()
    (source / "f.txt").write_text("tagged\n")
    both = lockstep_backup_summary(
        lockstep(repository_env, ["repo", "backup", "--json", "--tag", "nightly, db", "--tag", "eu,,", str(source)])
    )["snapshot_id"]
    only_nightly = lockstep_backup_summary(
        lockstep(repository_env, ["repo", "backup", "--json", "--tag", "nightly", str(source)])
    )["snapshot_id"]

    tags_by_id = {snapshot["id"]: snapshot.get("tags") for snapshot in restic_snapshots(repository_env)}
    assert tags_by_id == {both: ["nightly", "db", "eu"], only_nightly: ["nightly"]}

    def restic_ids(*arguments: str) -> list[str]:
        listed = restic(repository_env, ["snapshots", "--json", *arguments]).out
        return [snapshot["id"] for snapshot in json.loads(listed)]

    def lockstep_ids(*arguments: str) -> list[str]:
        listed = lockstep(repository_env, ["repo", "snapshots", "--json", *arguments]).out
        return [snapshot["id"] for snapshot in json.loads(listed)]

    for filter_arguments, expected in (
        (("--tag", "nightly,db"), [both]),
        (("--tag", "db, nightly"), [both]),
        (("--tag", "nightly"), [both, only_nightly]),
        (("--tag", "db,absent"), []),
        (("--tag", "db,absent", "--tag", "nightly"), [both, only_nightly]),
    ):
        assert restic_ids(*filter_arguments) == expected, filter_arguments
        assert lockstep_ids(*filter_arguments) == expected, filter_arguments
