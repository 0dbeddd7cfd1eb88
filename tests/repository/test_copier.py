"""restic's rule for "this snapshot was copied already" (cmd_copy.go, similarSnapshots)."""

from __future__ import annotations

from dataclasses import replace

from lockstep.repository.copier import find_copy, index_by_original, similar_snapshots
from lockstep.repository.snapshot import Snapshot

BASE = Snapshot(
    time="2026-11-24T01:02:03.123456789+01:00",
    tree=bytes(32),
    paths=["/srv/app", "/etc/app"],
    hostname="web1",
    username="root",
    uid=0,
    gid=0,
    excludes=["*.tmp", "cache"],
    tags=["nightly", "shop"],
    id="aa" * 32,
)


def test_parent_original_and_order_of_paths_and_tags_do_not_count() -> None:
    other = replace(BASE, parent=b"\x01" * 32, original=b"\x02" * 32, paths=BASE.paths[::-1], tags=BASE.tags[::-1])
    assert similar_snapshots(BASE, other)
    # The same instant written in another zone is the same time (Go's Time.Equal).
    assert similar_snapshots(BASE, replace(BASE, time="2026-11-24T00:02:03.123456789Z"))


def test_any_other_field_makes_a_different_snapshot() -> None:
    for change in (
        {"time": "2026-11-24T01:02:03.123456788+01:00"},
        {"tree": b"\x01" * 32},
        {"hostname": "web2"},
        {"username": "app"},
        {"uid": 1000},
        {"gid": 1000},
        {"paths": ["/srv/app"]},
        {"excludes": BASE.excludes[::-1]},  # restic compares excludes in order
        {"tags": ["nightly"]},
        {"tags": ["nightly", "other"]},
    ):
        assert not similar_snapshots(BASE, replace(BASE, **change)), change


def test_a_copy_is_found_by_the_original_it_records_or_by_its_own_id() -> None:
    copy = replace(BASE, original=bytes.fromhex(BASE.id), id="bb" * 32)
    assert find_copy(BASE, index_by_original([copy])) is copy
    # A copy of a copy records the first original: copying the middle one again finds it too.
    middle = replace(BASE, original=bytes.fromhex("cc" * 32), id="dd" * 32)
    onward = replace(middle, id="ee" * 32)
    assert find_copy(middle, index_by_original([onward])) is onward
    # The destination holding the very snapshot (same ID) counts as well.
    assert find_copy(BASE, index_by_original([BASE])) is BASE
    assert find_copy(BASE, index_by_original([replace(copy, hostname="other")])) is None
