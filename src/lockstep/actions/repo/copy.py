"""`lockstep repo copy`: snapshots from a source repository into the destination (restic's copy)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.errors import IntegrityError, LockstepError, NotFound, RepositoryLocked
from lockstep.malloc_arenas import map_large_buffers
from lockstep.repository.copier import (
    Copier,
    CopyReport,
    SkippedSnapshot,
    SourceReadFailed,
    find_copy,
    index_by_original,
    reading_source,
)
from lockstep.repository.locks import locked
from lockstep.repository.repository import Repository
from lockstep.repository.retention import SnapshotFilter
from lockstep.repository.snapshot import Snapshot

ProgressCallback = Callable[[int], None]
StepCallback = Callable[[str], None]


class DestinationLocked(RepositoryLocked):
    """The destination is locked by another process (a prune there): the same exit code as any
    lock, but told apart from a locked source, since `lockstep backup` only puts off a copy
    whose destination is busy (the next backup sends what it lacks)."""


class SourceLocked(RepositoryLocked):
    """The source is locked exclusively by another process (a prune there): the same exit code as
    any lock, but told apart, since `lockstep backup`, whose snapshot is already safe when its
    primary (the copies' source) turns out busy, puts its copies off as for a busy destination."""


@dataclass(frozen=True)
class CopyRequest:
    """Which snapshots to copy: the IDs (or `latest`) given, else all; narrowed by the filter
    and, for a backup's copies, by `only` (the project's own snapshots; None for `repo copy`)."""

    references: Sequence[str] = ()
    snapshot_filter: SnapshotFilter = field(default_factory=SnapshotFilter)
    only: Callable[[Snapshot], bool] | None = None

    def matches(self, snapshot: Snapshot) -> bool:
        return self.snapshot_filter.matches(snapshot) and (self.only is None or self.only(snapshot))


def copy_snapshots(
    destination_access: RepositoryAccess,
    source_access: RepositoryAccess,
    request: CopyRequest,
    progress: ProgressCallback | None = None,
    step: StepCallback | None = None,
) -> CopyReport:
    """Copy each selected source snapshot that has no similar snapshot in the destination.

    The source is opened first, so that a wrong source password or a missing source leaves the
    destination untouched (not even locked). A read of the source that fails (a pack missing or
    damaged there) is the source's error, with its exit code, not the destination's."""
    with opened_source(source_access) as source:
        try:
            return copy_from(source, destination_access, request, progress, step)
        except SourceReadFailed as error:
            raise source_read_error(error) from error.error


def source_read_error(failure: SourceReadFailed) -> LockstepError:
    """`repo copy`'s wording of a failed read of its source: the class (hence the exit code) of
    what the read raised, a message naming the source, and a hint that checks the source."""
    error = failure.error
    if isinstance(error, IntegrityError):
        hint = (
            f"the source is damaged, not the destination: check it with "
            f"`lockstep repo check --read-data -r {failure.location}`"
        )
    else:
        hint = f"{error.hint}; then run the copy again" if error.hint else "fix the source's storage and copy again"
    return reworded(error, failure.message, hint)


def reworded(error: LockstepError, message: str, hint: str | None) -> LockstepError:
    """An error of `error`'s class (hence its exit code) with another message and hint."""
    wrapped = type(error).__new__(type(error))
    LockstepError.__init__(wrapped, message, hint)
    return wrapped


@contextmanager
def opened_source(source_access: RepositoryAccess) -> Iterator[Repository]:
    """The source, open under a shared lock, as restic's copy takes: apart from copy_from so that
    a caller can tell the source's errors (missing, locked) from the destination's."""
    source = source_access.open(load_index=False)
    try:
        with ExitStack() as held:
            try:
                held.enter_context(locked(source, exclusive=False, wait_seconds=source_access.lock_wait_seconds))
            except RepositoryLocked as error:
                raise SourceLocked(error.message, error.hint) from error
            yield source
    finally:
        source.close()


def copy_from(
    source: Repository,
    destination_access: RepositoryAccess,
    request: CopyRequest,
    progress: ProgressCallback | None = None,
    step: StepCallback | None = None,
) -> CopyReport:
    """copy_snapshots from an opened source. The destination takes a non-exclusive lock, like a
    backup's, so prune cannot remove what a copied snapshot is about to refer to."""
    # Here and not for every command: a fixed mmap threshold keeps a copy's peak under restic's,
    # but costs a backup 3-9 % more CPU in page faults (BENCHMARKS.md, session 20).
    map_large_buffers()
    say = step or (lambda _: None)
    with ExitStack() as held:
        try:
            destination = held.enter_context(destination_access.session(exclusive=False, load_index=False))
        except RepositoryLocked as error:
            raise DestinationLocked(error.message, error.hint) from error
        return _copy(source, destination, request, progress, say)


def _copy(
    source: Repository,
    destination: Repository,
    request: CopyRequest,
    progress: ProgressCallback | None,
    say: StepCallback,
) -> CopyReport:
    selected = select_snapshots(source, request)
    existing = index_by_original(
        # A damaged snapshot file is skipped with a warning: at worst its snapshot is copied again.
        [snapshot for snapshot in destination.list_snapshots(skip_unreadable=True) if request.matches(snapshot)]
    )
    report = CopyReport()
    wanted: list[Snapshot] = []
    for snapshot in selected:
        copy = find_copy(snapshot, existing)
        if copy is None:
            wanted.append(snapshot)
        else:
            report.skipped.append(SkippedSnapshot(snapshot.id, copy.id))
            say(f"snapshot {snapshot.short_id} was already copied to {copy.short_id}: skipped")
    if not wanted:
        return report
    say("loading the indexes")
    with reading_source(source):
        source.load_index()
    destination.load_index()
    copier = Copier(source, destination, progress)
    for snapshot in wanted:
        say(f"copying snapshot {snapshot.short_id} of {', '.join(snapshot.paths)} at {snapshot.time}")
        copied = copier.copy_snapshot(snapshot)
        report.copied.append(copied)
        say(f"snapshot {snapshot.short_id} saved as {copied.destination_id[:8]}")
    return report


def select_snapshots(source: Repository, request: CopyRequest) -> list[Snapshot]:
    """restic's FindFilteredSnapshots: with IDs, those snapshots (`latest` being the newest that
    passes the filter), else every snapshot that passes it; oldest first, each once."""
    with reading_source(source):
        snapshots = source.list_snapshots(skip_unreadable=True)
    matching = [snapshot for snapshot in snapshots if request.matches(snapshot)]
    if not request.references:
        return matching
    chosen: dict[str, Snapshot] = {}
    for reference in request.references:
        pool = matching if reference == "latest" else snapshots
        try:
            found = source.find_snapshot(reference, pool)
        except NotFound as error:
            raise NotFound(
                f"in the source repository at {source.backend.location}: {error.message}",
                "list its snapshots with `lockstep repo snapshots -r SOURCE`",
            ) from error
        chosen.setdefault(found.id, found)
    return sorted(chosen.values(), key=lambda snapshot: (snapshot.time_ns, snapshot.id))
