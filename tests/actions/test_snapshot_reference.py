"""Naming a snapshot by ID prefix or commit prefix: when several match, the hint must say what
would name one, and more digits of a commit that every match shares never do."""

from __future__ import annotations

import pytest

from lockstep.actions.snapshot_show import resolve_reference
from lockstep.errors import NotFound
from lockstep.repository.snapshot import Snapshot

COMMIT = "88336c2747d6"


def snapshot(snapshot_id: str, time: str, commit: str = COMMIT) -> Snapshot:
    tags = ["lockstep", "kind:scheduled", "env:default", f"commit:{commit}"]
    return Snapshot(time=time, tree=b"\x00" * 32, paths=["/lockstep/shop"], tags=tags, id=snapshot_id * 8)


NIGHTLY = [
    snapshot("78204a3c", "2026-11-22T02:00:00Z"),
    snapshot("851d822c", "2026-11-23T02:00:00Z"),
    snapshot("8a1b2c3d", "2026-11-24T02:00:00Z", commit="b488fa749938"),
    snapshot("8a1b9f00", "2026-11-24T03:00:00Z", commit="b488fa749938"),
]


def hint_for(reference: str) -> str:
    with pytest.raises(NotFound) as raised:
        resolve_reference(NIGHTLY, reference, "default", project="shop")
    assert raised.value.hint is not None
    return raised.value.hint


def test_a_commit_prefix_of_several_snapshots_asks_for_the_snapshot_id() -> None:
    """Every backup of an unchanged deploy records the same commit: the hint used to ask for
    "more characters of the snapshot ID" after the user gave a commit, which no digits fix."""
    for reference in ("88336", COMMIT):
        hint = hint_for(reference)
        assert f"they are all snapshots of commit {COMMIT}" in hint, hint
        assert "snapshot ID of the one you mean" in hint and "more characters" not in hint, hint


def test_an_id_prefix_of_several_snapshots_asks_for_more_characters() -> None:
    assert hint_for("8a1b") == "give more characters of the snapshot ID"


def test_a_prefix_of_both_an_id_and_a_commit_says_either_helps() -> None:
    hint = hint_for("8")
    assert "more characters of the snapshot ID or of the commit" in hint, hint


def test_only_this_projects_snapshots_are_candidates() -> None:
    """Projects sharing a repository: `latest`, an ID prefix or a commit prefix that another
    project's snapshot also matches names this project's alone; one that only theirs matches is
    refused with whose it is (it used to be restored into this project's databases)."""
    theirs = Snapshot(
        time="2026-11-25T02:00:00Z",
        tree=b"\x00" * 32,
        paths=["/lockstep/blog"],
        tags=["lockstep", "kind:scheduled", "env:default", "commit:c0ffee000000"],
        id="8a1b9f01" * 8,
    )
    structure = Snapshot(
        time="2026-11-24T04:00:00Z",
        tree=b"\x00" * 32,
        paths=["/lockstep/shop/schema-only"],
        tags=["lockstep", "kind:manual", "env:default", "schema-only"],
        id="5c4e3a00" * 8,
    )
    snapshots = [*NIGHTLY, structure, theirs]
    assert resolve_reference(snapshots, "latest", "default", project="shop") is NIGHTLY[-1]
    assert resolve_reference(snapshots, "8a1b9", "default", project="shop") is NIGHTLY[-1]
    assert resolve_reference(snapshots, "5c4e", "default", project="shop") is structure
    assert resolve_reference(snapshots, "latest", "default", project="blog") is theirs
    for reference in ("8a1b9f01", "c0ffee"):
        with pytest.raises(NotFound) as raised:
            resolve_reference(snapshots, reference, "default", project="shop")
        assert "belongs to another project" in raised.value.message and "'blog'" in raised.value.message
        assert raised.value.hint is not None and "repo restore 8a1b9f01" in raised.value.hint
