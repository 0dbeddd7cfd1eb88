"""restic's `--tag` values: `a,b` is two tags, whether it adds tags or filters by them.

restic parses every `--tag` option as a comma-separated list (its TagList): `backup --tag a,b`
writes the tags "a" and "b", and `snapshots --tag a,b` keeps snapshots carrying both, while
repeated options are OR-ed. Spaces around each tag are dropped. Kept apart from retention so
that `snapshot create` and `repo backup` read their options without importing the policy code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from lockstep.repository.snapshot import Snapshot


def parse_tag_list(text: str) -> tuple[str, ...]:
    """`a, b` → ("a", "b"): every tag of the list must be present (restic's TagList)."""
    return tuple(tag.strip() for tag in text.split(","))


def flatten_tag_lists(options: Iterable[str]) -> tuple[str, ...]:
    """The tags a new snapshot gets from `--tag a,b --tag c`: a, b, c in order, empty ones
    dropped and repeats kept (restic's TagLists.Flatten, so both tools write the same list)."""
    return tuple(tag for option in options for tag in parse_tag_list(option) if tag)


def has_tags(snapshot: Snapshot, tags: Sequence[str]) -> bool:
    """restic's HasTags: every tag is present; an empty tag matches a snapshot without tags."""
    for tag in tags:
        if tag == "" and not snapshot.tags:
            return True
        if tag not in snapshot.tags:
            return False
    return True


def matches_tag_options(snapshot: Snapshot, options: Sequence[str]) -> bool:
    """restic's `--tag` filter: any option matches (OR); within one, every tag must (AND)."""
    return not options or any(has_tags(snapshot, parse_tag_list(option)) for option in options)
