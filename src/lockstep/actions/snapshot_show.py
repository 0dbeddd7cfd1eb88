"""`lockstep snapshot show`: one coordinated snapshot, found by ID prefix, commit prefix or `latest`."""

from __future__ import annotations

from pathlib import Path

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.actions.snapshot_list import ListedSnapshot, lockstep_snapshots
from lockstep.config.loading import find_config, load_config
from lockstep.errors import NotFound
from lockstep.pipeline.code import SHORT_COMMIT_LENGTH
from lockstep.pipeline.retention_policy import snapshot_environment
from lockstep.pipeline.snapshot import (
    COMMIT_TAG_PREFIX,
    DEFAULT_ENVIRONMENT,
    environment_name,
    is_schema_only,
    load_manifest,
    snapshot_project,
    tag_value,
)
from lockstep.repository.repository import Repository
from lockstep.repository.snapshot import Snapshot

SHOWN_CANDIDATES = 10


def reference_environments(start: Path, config_path: Path | None, environment: str | None) -> tuple[str, ...]:
    """The environments whose snapshots hold the data of the databases `--env environment` (or no
    --env) names, the first as the commands call it ("default" for the top-level config).

    Without --env the snapshot commands use default_environment (chosen_environment): its table
    when it has one, else the top-level tables, and so does any environment without an
    [environments.NAME] table: then the snapshots its deploys take (tagged with its name) and
    those taken with the top-level config (tagged default) are of the same databases, and `latest`
    must see both, as doctor and the agent do (snapshot_environments). Where default_environment
    has a table, the older `default` snapshots are the top-level config's, not its own."""
    base = load_config(find_config(start, config_path), None)  # the resolved config has no environments
    if environment is None and base.default_environment in base.environments:
        environment = base.default_environment
    name = environment or base.default_environment
    names = [environment_name(environment)]
    if name not in base.environments:
        names += [other for other in (DEFAULT_ENVIRONMENT, name) if other not in names]
    return tuple(names)


def resolve_reference(
    snapshots: list[Snapshot],
    reference: str,
    environment: str | tuple[str, ...] | None = None,
    default_environment: str | None = None,
    *,
    project: str | None,
) -> Snapshot:
    """`latest` (the newest that is not schema-only), or the one snapshot whose ID or git commit
    starts with `reference`.

    With `environment` (a name, "default" without --env, or the names reference_environments
    gives, the first as the user calls it) only those environments' snapshots count: a restore
    writes into the environment's own databases, so `latest` or a prefix must never pick another
    environment's snapshot. When the reference matches only snapshots of other environments, the
    error names them and the --env to use; when there is none yet, the hint says how to take one,
    without --env for `default_environment` (no --env works on it).

    A commit is matched on the `commit:` tag (its first 12 digits), so nothing is read to find it;
    find_snapshot confirms a longer commit reference with `check_commit_reference`.
    Raises NotFound, listing the candidates, when nothing or more than one snapshot matches.

    With `project` (the config's project name) only that project's snapshots count, before
    anything else: projects sharing a repository must never restore, diff or verify each other's
    snapshots by `latest` or a prefix. An ID or commit of another project's snapshot is refused
    with an error that says whose it is and how to reach it.
    """
    foreign: list[Snapshot] = []
    if project is not None:
        foreign = [snapshot for snapshot in snapshots if snapshot_project(snapshot) != project]
        snapshots = [snapshot for snapshot in snapshots if snapshot_project(snapshot) == project]
    everywhere = snapshots
    names = (environment,) if isinstance(environment, str) else environment
    environment = None if names is None else names[0]
    if names is not None:
        snapshots = [snapshot for snapshot in snapshots if snapshot_environment(snapshot) in names]
    if reference == "latest":
        if not snapshots:
            raise NotFound(*_nothing_yet(everywhere, environment, default_environment, project, foreign))
        # The newest snapshot with data: a schema-only one (no rows) is never what `latest`
        # restores, diffs or verifies; it is named by its ID.
        full = [snapshot for snapshot in snapshots if not is_schema_only(snapshot)]
        if not full:
            raise NotFound(
                "there are only schema-only snapshots (no rows), and `latest` names the newest snapshot with data",
                "give the schema-only snapshot's ID (see `lockstep snapshot list`)",
            )
        return full[-1]
    wanted = reference.strip().lower()
    if not wanted:
        raise NotFound("an empty snapshot reference matches nothing", "give a snapshot ID, a commit or latest")
    matches = [snapshot for snapshot in snapshots if _matches(snapshot, wanted)]
    if not matches:
        elsewhere = [snapshot for snapshot in everywhere if _matches(snapshot, wanted)]
        if elsewhere:
            raise NotFound(*_in_other_environments(reference, elsewhere, environment))
        theirs = [snapshot for snapshot in foreign if _matches(snapshot, wanted)]
        if theirs and project is not None:
            raise NotFound(*_in_other_projects(reference, theirs, project))
        raise _no_match(reference)
    if len(matches) > 1:
        listed = ", ".join(_describe(snapshot) for snapshot in matches[:SHOWN_CANDIDATES])
        more = f" and {len(matches) - SHOWN_CANDIDATES} more" if len(matches) > SHOWN_CANDIDATES else ""
        raise NotFound(
            f"{reference!r} matches {len(matches)} snapshots: {listed}{more}", _ambiguity_hint(matches, wanted)
        )
    return matches[0]


def _ambiguity_hint(matches: list[Snapshot], wanted: str) -> str:
    """What names one of `matches`: more digits of an ID prefix, but never of a commit every match
    shares (each backup of an unchanged deploy records the same commit): then only the snapshot ID."""
    commits = {tag_value(snapshot, COMMIT_TAG_PREFIX) for snapshot in matches if _commit_matches(snapshot, wanted)}
    if not commits:
        return "give more characters of the snapshot ID"
    if len(commits) == 1 and not any(snapshot.id.startswith(wanted) for snapshot in matches):
        return (
            f"they are all snapshots of commit {commits.pop()}: give the snapshot ID of the one you mean "
            "(the first column of `lockstep snapshot list`)"
        )
    return "give more characters of the snapshot ID or of the commit, or the snapshot ID of the one you mean"


def find_snapshot(
    repository: Repository,
    reference: str,
    environment: str | tuple[str, ...] | None,
    default_environment: str | None = None,
    *,
    project: str,
) -> Snapshot:
    """The lockstep snapshot of `project` `reference` names among `environment`'s (all when
    None), a commit reference longer than the tag confirmed against its manifest: what every
    command that takes an ID does. `default_environment` (the config's) words the hint when there
    is none yet."""
    try:
        snapshots = lockstep_snapshots(repository, None)
        snapshot = resolve_reference(snapshots, reference, environment, default_environment, project=project)
    except NotFound:
        repository.check_unreadable_reference(reference)
        raise
    check_commit_reference(repository, snapshot, reference)
    return snapshot


def _no_match(reference: str) -> NotFound:
    return NotFound(
        f"no lockstep snapshot matches {reference!r} (by snapshot ID or git commit)",
        "list them with `lockstep snapshot list`",
    )


def _matches(snapshot: Snapshot, wanted: str) -> bool:
    return snapshot.id.startswith(wanted) or _commit_matches(snapshot, wanted)


def _nothing_yet(
    everywhere: list[Snapshot],
    environment: str | None,
    default_environment: str | None,
    project: str | None = None,
    foreign: list[Snapshot] | None = None,
) -> tuple[str, str]:
    # No --env takes default_environment's snapshot, so the hint names --env only for another.
    option = "" if environment in (None, environment_name(None), default_environment) else f" --env {environment}"
    if not everywhere and foreign and project is not None:
        return (
            f"there are no lockstep snapshots of project {project!r} yet (the repository holds other "
            f"projects' snapshots: {_project_names(foreign)})",
            f"make one with `lockstep snapshot create{option}`; to use another project's snapshots, "
            "run the command with -c and that project's lockstep.toml",
        )
    if environment is None or not everywhere:
        return "there are no lockstep snapshots yet", f"make one with `lockstep snapshot create{option}`"
    others = sorted({snapshot_environment(snapshot) for snapshot in everywhere})
    return (
        f"there are no lockstep snapshots of environment {environment!r} yet (there are of {', '.join(others)})",
        f"make one with `lockstep snapshot create{option}`, or pass --env to pick another",
    )


def _in_other_environments(reference: str, elsewhere: list[Snapshot], environment: str | None) -> tuple[str, str]:
    names = sorted({snapshot_environment(snapshot) for snapshot in elsewhere})
    listed = ", ".join(_describe(snapshot) for snapshot in elsewhere[:SHOWN_CANDIDATES])
    # `default` is no --env name: it labels the top-level config's snapshots, default_environment's
    # only when that has no table of its own (then leaving --env out finds them).
    named = [name for name in names if name != DEFAULT_ENVIRONMENT]
    use = (
        f"add --env {named[0]} to use it there (a restore writes into that environment's databases), or "
        if named
        else "default labels snapshots of the top-level tables, default_environment's when it has no "
        "[environments.NAME] table (then leave --env out); else "
    )
    return (
        f"{reference!r} matches no snapshot of environment {environment!r}, only of {', '.join(names)}: {listed}",
        f"{use}restore one database elsewhere with --database NAME --to URL",
    )


def _project_names(snapshots: list[Snapshot]) -> str:
    return ", ".join(sorted({repr(snapshot_project(snapshot) or "none") for snapshot in snapshots}))


def _in_other_projects(reference: str, theirs: list[Snapshot], project: str) -> tuple[str, str]:
    """A reference that names only other projects' snapshots: say whose, and how to get at them
    without ever restoring them into this project's databases by mistake."""
    listed = ", ".join(
        f"{_describe(snapshot)} of project {snapshot_project(snapshot) or 'none'!r}"
        for snapshot in theirs[:SHOWN_CANDIDATES]
    )
    return (
        f"{reference!r} names no snapshot of project {project!r}: it belongs to another project sharing "
        f"the repository: {listed}",
        "run the command with -c and that project's lockstep.toml, or extract the files with "
        f"`lockstep repo restore {theirs[0].short_id} --target DIR` (projects share a repository "
        "by their `project` name in lockstep.toml)",
    )


def _commit_matches(snapshot: Snapshot, wanted: str) -> bool:
    """The tag holds the commit's first 12 digits: a longer reference must begin with them, and
    `check_commit_reference` compares the rest with the manifest's full commit."""
    commit = tag_value(snapshot, COMMIT_TAG_PREFIX)
    if not commit:
        return False
    return commit.startswith(wanted) if len(wanted) <= len(commit) else wanted.startswith(commit)


def check_commit_reference(repository: Repository, snapshot: Snapshot, reference: str) -> None:
    """Confirm a commit reference longer than the tag against the manifest's full commit, so that
    `e3d3ae3feec5ffffffff` does not name the snapshot of commit e3d3ae3feec5 1a2b...; the
    manifest is read only for such a reference. Raises NotFound as resolve_reference does."""
    wanted = reference.strip().lower()
    if len(wanted) <= SHORT_COMMIT_LENGTH or snapshot.id.startswith(wanted):
        return
    manifest = load_manifest(repository, snapshot)
    commit = manifest.code.commit if manifest.code is not None else None
    if commit is None or not commit.lower().startswith(wanted):
        raise _no_match(reference)


def _describe(snapshot: Snapshot) -> str:
    commit = tag_value(snapshot, COMMIT_TAG_PREFIX)
    return f"{snapshot.short_id} ({snapshot.time[:19]}{', commit ' + commit if commit else ''})"


def show_snapshot(
    access: RepositoryAccess,
    reference: str,
    environment: str | tuple[str, ...] | None = None,
    default_environment: str | None = None,
    *,
    project: str,
) -> ListedSnapshot:
    """The snapshot of `project` `reference` names among `environment`'s (all when None), with its manifest."""
    with access.session(lock=False) as repository:
        snapshot = find_snapshot(repository, reference, environment, default_environment, project=project)
        return ListedSnapshot(snapshot, load_manifest(repository, snapshot))
