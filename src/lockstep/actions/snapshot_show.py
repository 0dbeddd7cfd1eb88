"""`lockstep snapshot show`: one coordinated snapshot, found by ID prefix, commit prefix or `latest`."""

from __future__ import annotations

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.actions.snapshot_list import ListedSnapshot, lockstep_snapshots
from lockstep.errors import NotFound
from lockstep.pipeline.code import SHORT_COMMIT_LENGTH
from lockstep.pipeline.snapshot import COMMIT_TAG_PREFIX, load_manifest, tag_value
from lockstep.repository.snapshot import Snapshot

SHOWN_CANDIDATES = 10


def resolve_reference(snapshots: list[Snapshot], reference: str) -> Snapshot:
    """`latest`, or the one snapshot whose ID or git commit starts with `reference`.

    A commit is matched on the `commit:` tag (its first 12 digits), so nothing is read to find it.
    Raises NotFound, listing the candidates, when nothing or more than one snapshot matches.
    """
    if reference == "latest":
        if not snapshots:
            raise NotFound("there are no lockstep snapshots yet", "make one with `lockstep snapshot create`")
        return snapshots[-1]
    wanted = reference.strip().lower()
    if not wanted:
        raise NotFound("an empty snapshot reference matches nothing", "give a snapshot ID, a commit or latest")
    matches = [
        snapshot for snapshot in snapshots if snapshot.id.startswith(wanted) or _commit_matches(snapshot, wanted)
    ]
    if not matches:
        raise NotFound(
            f"no lockstep snapshot matches {reference!r} (by snapshot ID or git commit)",
            "list them with `lockstep snapshot list`",
        )
    if len(matches) > 1:
        listed = ", ".join(_describe(snapshot) for snapshot in matches[:SHOWN_CANDIDATES])
        more = f" and {len(matches) - SHOWN_CANDIDATES} more" if len(matches) > SHOWN_CANDIDATES else ""
        raise NotFound(
            f"{reference!r} matches {len(matches)} snapshots: {listed}{more}",
            "give more characters of the snapshot ID",
        )
    return matches[0]


def _commit_matches(snapshot: Snapshot, wanted: str) -> bool:
    commit = tag_value(snapshot, COMMIT_TAG_PREFIX)
    if not commit:
        return False
    return commit.startswith(wanted[:SHORT_COMMIT_LENGTH])


def _describe(snapshot: Snapshot) -> str:
    commit = tag_value(snapshot, COMMIT_TAG_PREFIX)
    return f"{snapshot.short_id} ({snapshot.time[:19]}{', commit ' + commit if commit else ''})"


def show_snapshot(access: RepositoryAccess, reference: str) -> ListedSnapshot:
    """The snapshot `reference` names, with its manifest."""
    with access.session(lock=False) as repository:
        snapshot = resolve_reference(lockstep_snapshots(repository), reference)
        return ListedSnapshot(snapshot, load_manifest(repository, snapshot))
