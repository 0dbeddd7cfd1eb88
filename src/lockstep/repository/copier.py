"""Copying snapshots from one repository into another, as restic's `copy` does.

Both repositories have their own keys, so every blob the destination lacks is read from the
source (authenticated, decrypted, hash-checked) and sealed again with the destination's key.
Blob IDs are SHA-256 of the plaintext, so trees copy byte for byte and keep their IDs; what the
destination already holds, from any earlier backup or copy, is not sent again.

One snapshot at a time: its blobs, then the destination's packs and index, then the snapshot
file. An interrupted copy leaves at worst packs no index names (prune removes them), never a
snapshot that refers to something missing.

Data blobs are read as restic's copy reads them: the snapshot's missing blobs sorted by pack and
offset, each run of neighbours in one ranged read (pack_runs.py), not one request per blob.

A failure to read the source (a pack missing or damaged there, its storage down) is raised as
SourceReadFailed, apart from the destination's errors: the user must check the source, not the
copy, and the callers word it for their own source (`repo copy`'s --from-repo, a backup's primary).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial

from lockstep.errors import IntegrityError, LockstepError
from lockstep.fault_injection import wait_point
from lockstep.repository.blobs import BlobLocation, BlobType
from lockstep.repository.pack_runs import PackRun, plan_runs, read_run
from lockstep.repository.repository import Repository
from lockstep.repository.snapshot import Snapshot
from lockstep.repository.tag_lists import has_tags
from lockstep.repository.tree import Tree

ProgressCallback = Callable[[int], None]
# Reads (a tree, or a run of data blobs of at most pack_runs.MAX_RUN_BYTES) re-sealed at once:
# enough for reads from object storage to overlap, few enough to bound the memory in flight.
READS_IN_FLIGHT = 4
# Trees read at once while walking (each is small), and the batch the walk reads together.
TREE_READERS = 8
TREE_BATCH = 256
# Missing data blobs gathered before their runs are planned: a few MiB of IDs and locations.
BLOBS_PER_PLAN = 20_000


class SourceReadFailed(LockstepError):
    """Reading the source repository failed: `error` is what the read raised, and its exit code
    (INTEGRITY for a missing or damaged pack, STORAGE for storage that failed) is this one's.
    `snapshot` is the short ID of the snapshot being copied, when one was."""

    def __init__(self, error: LockstepError, location: str, snapshot: str | None = None) -> None:
        where = f"the source repository at {location}"
        while_copying = f" (while copying snapshot {snapshot})" if snapshot else ""
        super().__init__(f"could not read {where}{while_copying}: {error.message}", error.hint)
        self.exit_code = error.exit_code
        self.error = error
        self.location = location
        self.snapshot = snapshot

    def copying(self, snapshot: str) -> SourceReadFailed:
        """The same failure, naming the snapshot that was being copied."""
        return SourceReadFailed(self.error, self.location, snapshot)


@contextmanager
def reading_source(source: Repository) -> Iterator[None]:
    """Raise what reading `source` raises as SourceReadFailed, so callers can tell it apart."""
    try:
        yield
    except SourceReadFailed:
        raise
    except LockstepError as error:
        raise SourceReadFailed(error, source.backend.location) from error


def similar_snapshots(a: Snapshot, b: Snapshot) -> bool:
    """restic's similarSnapshots: everything but `parent` and `original` is the same, so `b` is
    (a copy of) `a` and copying it again would only add a duplicate."""
    if (
        a.time_ns != b.time_ns
        or a.tree != b.tree
        or a.hostname != b.hostname
        or a.username != b.username
        or a.uid != b.uid
        or a.gid != b.gid
        or len(a.paths) != len(b.paths)
        or len(a.excludes) != len(b.excludes)
        or len(a.tags) != len(b.tags)
    ):
        return False
    return all(path in a.paths for path in b.paths) and has_tags(a, b.tags) and a.excludes == b.excludes


def persistent_id(snapshot: Snapshot) -> str:
    """The ID a snapshot keeps through copies: its `original`, else its own."""
    return snapshot.original.hex() if snapshot.original else snapshot.id


@dataclass(frozen=True)
class CopiedSnapshot:
    source_id: str
    destination_id: str
    blobs_added: int
    bytes_added: int


@dataclass(frozen=True)
class SkippedSnapshot:
    source_id: str
    existing_id: str  # the similar snapshot already in the destination


@dataclass
class CopyReport:
    """What a copy did; `blobs_added`/`bytes_added` are sealed blobs written to the destination."""

    copied: list[CopiedSnapshot] = field(default_factory=list)
    skipped: list[SkippedSnapshot] = field(default_factory=list)

    @property
    def blobs_added(self) -> int:
        return sum(item.blobs_added for item in self.copied)

    @property
    def bytes_added(self) -> int:
        return sum(item.bytes_added for item in self.copied)


def find_copy(snapshot: Snapshot, existing: dict[str, list[Snapshot]]) -> Snapshot | None:
    """The destination snapshot that `snapshot` was already copied to, if any. `existing` maps
    persistent IDs and own IDs to the destination's snapshots (see index_by_original)."""
    for candidate in existing.get(persistent_id(snapshot), []):
        if similar_snapshots(candidate, snapshot):
            return candidate
    return None


def index_by_original(snapshots: list[Snapshot]) -> dict[str, list[Snapshot]]:
    """The destination's snapshots by their `original` and by their own ID, as restic keys them
    (a destination snapshot that is itself the source's original counts too)."""
    found: dict[str, list[Snapshot]] = {}
    for snapshot in snapshots:
        if snapshot.original:
            found.setdefault(snapshot.original.hex(), []).append(snapshot)
        found.setdefault(snapshot.id, []).append(snapshot)
    return found


class Copier:
    """Copies snapshots from `source` into `destination` (both open, index loaded, locked)."""

    def __init__(self, source: Repository, destination: Repository, progress: ProgressCallback | None = None) -> None:
        self.source = source
        self.destination = destination
        self.progress = progress or (lambda _: None)
        # Trees already walked in this run: snapshots of one host share most of their trees.
        self._visited_trees: set[bytes] = set()
        self._add_lock = threading.Lock()

    def copy_snapshot(self, snapshot: Snapshot) -> CopiedSnapshot:
        """Copy the blobs `snapshot` needs, flush, then save it with `original` set and no parent
        (the parent names a snapshot of the source). On failure the packs written for it are
        removed again (best effort)."""
        blobs_before, bytes_before = self.destination.blobs_added, self.destination.bytes_added
        try:
            self._copy_tree(snapshot.tree)
            wait_point("copy flush")  # tests: packs written, the snapshot not yet saved
            self.destination.flush()
        except SourceReadFailed as error:
            self.destination.discard_unindexed_packs()
            raise error.copying(snapshot.short_id) from error.error
        except BaseException:
            self.destination.discard_unindexed_packs()
            raise
        copy = replace(snapshot, parent=None, original=bytes.fromhex(persistent_id(snapshot)), id="")
        new_id = self.destination.save_snapshot(copy)
        return CopiedSnapshot(
            snapshot.id,
            new_id,
            self.destination.blobs_added - blobs_before,
            self.destination.bytes_added - bytes_before,
        )

    def _copy_tree(self, root: bytes) -> None:
        """Trees as they are walked (they must be read to be walked), then the data blobs the
        destination lacks, run by run: planned every BLOBS_PER_PLAN blobs, which bounds the list
        held and lets copying start while a large snapshot is still being walked."""
        missing_data: list[bytes] = []
        with ThreadPoolExecutor(max_workers=READS_IN_FLIGHT, thread_name_prefix="lockstep-copy") as pool:
            in_flight: deque[Future[None]] = deque()

            def submit(work: Callable[[], None]) -> None:
                in_flight.append(pool.submit(work))
                if len(in_flight) >= READS_IN_FLIGHT:
                    in_flight.popleft().result()

            def copy_data() -> None:
                for run in plan_runs(self._locate(missing_data)):
                    submit(partial(self._store_run, run))
                missing_data.clear()

            for tree_id, raw in self._missing_trees(root, missing_data):
                submit(partial(self._store, BlobType.TREE, tree_id, raw))
                if len(missing_data) >= BLOBS_PER_PLAN:
                    copy_data()
            copy_data()
            while in_flight:
                in_flight.popleft().result()

    def _locate(self, blob_ids: list[bytes]) -> Iterator[tuple[BlobType, bytes, BlobLocation]]:
        for blob_id in blob_ids:
            with reading_source(self.source):
                location = self.source.lookup_blob(BlobType.DATA, blob_id)
            yield BlobType.DATA, blob_id, location

    def _store_run(self, run: PackRun) -> None:
        """On a worker: read a run of data blobs with one request, verify and re-seal each. Only
        the reads are the source's: a failure to store is the destination's."""
        blobs = read_run(self.source, run)
        while True:
            with reading_source(self.source):
                blob = next(blobs, None)
            if blob is None:
                return
            self._store(*blob)

    def _store(self, blob_type: BlobType, blob_id: bytes, plaintext: bytes) -> None:
        """Seal a verified blob for the destination. Packs take one blob at a time, hence the lock."""
        prepared = self.destination.prepare_blob(blob_type, plaintext, blob_id)
        if prepared is not None:
            with self._add_lock:
                self.destination.add_prepared(prepared)
        self.progress(len(plaintext))

    def _missing_trees(self, root: bytes, missing_data: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
        """Every tree under `root` (not walked before in this run) that the destination lacks,
        with its plaintext; the data blobs the destination lacks go to `missing_data`, each once.
        Trees are read TREE_BATCH at a time on threads (as prune's walk): on object storage a
        walk one tree after another waits out one round trip per directory."""
        pending = [root]
        queued: set[bytes] = set()
        with ThreadPoolExecutor(max_workers=TREE_READERS, thread_name_prefix="lockstep-copy-walk") as pool:
            while pending:
                batch: list[bytes] = []
                while pending and len(batch) < TREE_BATCH:
                    tree_id = pending.pop()
                    if tree_id not in self._visited_trees:
                        self._visited_trees.add(tree_id)
                        batch.append(tree_id)
                for tree_id, raw in zip(batch, pool.map(self._load_tree_bytes, batch), strict=True):
                    tree = self._decode_tree(tree_id, raw)
                    for node in tree.nodes:
                        for blob_id in node.content or ():
                            if blob_id not in queued and not self.destination.is_known(BlobType.DATA, blob_id):
                                queued.add(blob_id)
                                missing_data.append(blob_id)
                        if node.type == "dir" and node.subtree and node.subtree not in self._visited_trees:
                            pending.append(node.subtree)
                    if not self.destination.is_known(BlobType.TREE, tree_id):
                        # The bytes as stored, not a re-encoding: the ID is their hash.
                        yield tree_id, raw

    def _load_tree_bytes(self, tree_id: bytes) -> bytes:
        with reading_source(self.source):
            return self.source.load_blob(BlobType.TREE, tree_id)

    def _decode_tree(self, tree_id: bytes, raw: bytes) -> Tree:
        """A tree of the source that does not decode is damage in the source."""
        with reading_source(self.source):
            try:
                return Tree.decode(raw)
            except ValueError as error:
                raise IntegrityError(f"tree {tree_id.hex()[:8]} cannot be decoded: {error}") from error
