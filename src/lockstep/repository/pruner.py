"""Prune: free the space of data no snapshot needs, as restic 0.14's `prune` decides it.

Planning reads only the index and the trees: every snapshot's trees are walked to mark the
blobs still used (a set of 32-byte IDs), then each pack is judged from its index entries:

* used completely           → kept as it is;
* used by nothing           → deleted;
* used in part, or mixing data and trees
                            → repacked while the unused bytes exceed `--max-unused`
                              (partly used tree and mixed packs whatever the limit, as restic);
* used completely but small → repacked when there are ten or more of them (under 1/25 of the
                              pack size), so many tiny packs become a few full ones;
* in storage but no index   → deleted first (left by an interrupted backup);
* in the index but missing  → dropped from the index if nothing in it is used, else abort.

A blob stored more than once counts as used in one pack only (restic's duplicate rule), so
packs holding only copies become unused. Blobs that are unused but sit in a kept pack stay
until that pack is repacked, exactly as restic does.

Executing follows the order that keeps the repository readable after a crash at any moment
(restic-format.md §14): delete unreferenced packs; write the repacked blobs into new packs and
index them; write new index files for every pack that stays; delete the old index files; only
then delete the obsolete packs. Memory is bounded by the index: at most one pack being repacked
is held in memory (plus the new packs being filled, as in a backup).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from lockstep.errors import IntegrityError, UsageError
from lockstep.repository.blobs import BlobLocation, BlobType, PackedBlob
from lockstep.repository.crypto import OVERHEAD
from lockstep.repository.index import Index, parse_index_document
from lockstep.repository.pack import HEADER_LENGTH_SIZE, header_entry_size
from lockstep.repository.pack_runs import PackRun, load_run, sealed_blob
from lockstep.repository.repository import Repository
from lockstep.storage.base import FileMissing, FileType
from lockstep.wording import counted

DEFAULT_MAX_UNUSED = "5%"
TREE_BATCH = 256  # trees loaded concurrently while walking; bounds the trees held at once
PARALLEL_FILES = 8  # concurrent deletes and index loads (object storage is latency-bound)
SMALL_PACK_DIVISOR = 25  # restic repacks packs under 1/25 of the pack size, ten or more at a time
MIN_SMALL_PACKS = 10
# Temporary files older than this are of writes that never finished: a pack is written in
# seconds, and a live writer's lock is refreshed every 5 minutes (stale after 30).
STALE_TEMPORARY_SECONDS = 3600

BlobHandle = tuple[BlobType, bytes]
ProgressCallback = Callable[[str], None]


# --- options --------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """restic's size syntax: `500`, `500b`, `64k`, `10M`, `2g`, `1T` (powers of 1024)."""
    value = text.strip()
    if not value:
        raise UsageError("expected a size, got an empty string")
    multipliers = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    unit = multipliers.get(value[-1].lower())
    number = value[:-1] if unit is not None else value
    try:
        amount = int(number)
    except ValueError as error:
        raise UsageError(f"invalid size {text!r}", "write a whole number with an optional k, M, G or T") from error
    if amount < 0:
        raise UsageError(f"invalid size {text!r}: it must not be negative")
    return amount * (unit or 1)


@dataclass(frozen=True)
class UnusedLimit:
    """`--max-unused`: unused bytes tolerated after pruning, as a percentage, a size or unlimited."""

    percent: float | None = 5.0
    size: int | None = None

    @classmethod
    def parse(cls, text: str) -> UnusedLimit:
        value = text.strip()
        if not value:
            raise UsageError(f"invalid value for --max-unused: {text!r}")
        if value == "unlimited":
            return cls(percent=None, size=None)
        if value.endswith("%"):
            try:
                percent = float(value[:-1])
            except ValueError as error:
                raise UsageError(f"invalid percentage {text!r} for --max-unused") from error
            if percent < 0:
                raise UsageError("the percentage for --max-unused must be positive")
            if percent >= 100:
                raise UsageError("the percentage for --max-unused must be below 100%")
            return cls(percent=percent, size=None)
        return cls(percent=None, size=parse_size(value))

    def bytes_allowed(self, used_bytes: int) -> int | None:
        """Unused bytes allowed to remain, given the used bytes; None = no limit.

        A percentage is of the repository size after pruning: p% of (used + unused), which is
        p / (100 - p) times the used bytes."""
        if self.percent is not None:
            return int(self.percent / (100 - self.percent) * used_bytes)
        return self.size


@dataclass(frozen=True)
class PruneOptions:
    """What prune may do: how much unused data to tolerate, how much to repack, or only plan."""

    max_unused: UnusedLimit = field(default_factory=UnusedLimit)
    max_repack_bytes: int | None = None
    dry_run: bool = False


# --- statistics and the plan ----------------------------------------------------------------


@dataclass
class PruneStats:
    """restic's prune statistics. Sizes are stored (sealed) blob bytes; packs are counts."""

    snapshots: int = 0
    used_blobs: int = 0
    used_bytes: int = 0
    duplicate_blobs: int = 0
    duplicate_bytes: int = 0
    unused_blobs: int = 0
    unused_bytes: int = 0
    unreferenced_bytes: int = 0  # whole packs that no index lists
    repack_blobs: int = 0
    repack_bytes: int = 0
    repack_removed_blobs: int = 0
    repack_removed_bytes: int = 0
    remove_blobs: int = 0
    remove_bytes: int = 0
    packs_used: int = 0
    packs_partly_used: int = 0
    packs_unused: int = 0
    packs_unreferenced: int = 0
    packs_keep: int = 0
    packs_repack: int = 0
    packs_remove: int = 0
    packs_missing_dropped: int = 0

    @property
    def total_blobs(self) -> int:
        return self.used_blobs + self.unused_blobs + self.duplicate_blobs

    @property
    def total_bytes(self) -> int:
        return self.used_bytes + self.duplicate_bytes + self.unused_bytes + self.unreferenced_bytes

    @property
    def prune_blobs(self) -> int:
        return self.remove_blobs + self.repack_removed_blobs

    @property
    def prune_bytes(self) -> int:
        """Bytes the plan frees: removed blobs, blobs dropped by repacking, unreferenced packs."""
        return self.remove_bytes + self.repack_removed_bytes + self.unreferenced_bytes

    @property
    def unused_after_bytes(self) -> int:
        return self.unused_bytes + self.duplicate_bytes - self.remove_bytes - self.repack_removed_bytes


@dataclass
class _PackUsage:
    """One indexed pack, judged blob by blob. Sizes start with the pack header and trailer."""

    used_blobs: int = 0
    unused_blobs: int = 0
    used_size: int = 0
    unused_size: int = 0
    blob_type: BlobType | None = None
    mixed: bool = False

    @property
    def size(self) -> int:
        return self.used_size + self.unused_size


@dataclass
class PrunePlan:
    """Everything prune will do, decided from the index alone; nothing is changed yet."""

    options: PruneOptions
    stats: PruneStats
    pack_blobs: dict[bytes, list[PackedBlob]]  # every indexed pack's entries, from the index files
    stored_pack_sizes: dict[bytes, int]  # every pack in storage, with its size
    index_file_ids: list[str]  # the index files read; all are replaced when the index changes
    unreferenced_packs: set[bytes] = field(default_factory=set)
    remove_packs: set[bytes] = field(default_factory=set)
    repack_packs: set[bytes] = field(default_factory=set)
    missing_packs: set[bytes] = field(default_factory=set)  # indexed, absent, not needed
    keep_blobs: set[BlobHandle] = field(default_factory=set)  # to copy out of repacked packs

    @property
    def changes_index(self) -> bool:
        return bool(self.remove_packs or self.repack_packs or self.missing_packs)

    @property
    def obsolete_packs(self) -> set[bytes]:
        return self.remove_packs | self.repack_packs

    def kept_packs(self) -> Iterable[tuple[bytes, list[PackedBlob]]]:
        """The indexed packs that stay as they are, in index order."""
        dropped = self.remove_packs | self.repack_packs | self.missing_packs
        return ((pack_id, blobs) for pack_id, blobs in self.pack_blobs.items() if pack_id not in dropped)


@dataclass(frozen=True)
class PruneReport:
    """What prune did (or, with dry_run, would do)."""

    dry_run: bool
    snapshots: int
    stats: PruneStats
    packs_deleted: int  # unused and unreferenced packs, plus the repacked originals
    packs_repacked: int
    packs_written: int
    index_files_written: int
    index_files_deleted: int
    bytes_before: int  # all pack bytes before
    bytes_freed: int  # measured after a real run; planned for a dry run
    bytes_remaining: int
    temporary_files_removed: int = 0  # left by writes cut off by kill -9 (see execute_prune)


# --- finding what is used -------------------------------------------------------------------


def find_used_blobs(
    repository: Repository, tree_ids: Iterable[bytes], workers: int = PARALLEL_FILES
) -> dict[BlobType, set[bytes]]:
    """Walk every tree reachable from `tree_ids`; each tree is loaded (and verified) once.

    Raises IntegrityError when a tree is missing or damaged: prune must stop before it deletes
    anything, since an incomplete walk would count needed data as unused."""
    used: dict[BlobType, set[bytes]] = {BlobType.TREE: set(), BlobType.DATA: set()}
    used_trees = used[BlobType.TREE]
    used_data = used[BlobType.DATA]
    pending = list(tree_ids)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lockstep-prune-walk") as pool:
        while pending:
            batch: list[bytes] = []
            while pending and len(batch) < TREE_BATCH:
                tree_id = pending.pop()
                if tree_id not in used_trees:
                    used_trees.add(tree_id)
                    batch.append(tree_id)
            for tree_id, tree in zip(batch, pool.map(repository.load_tree, batch), strict=True):
                for node in tree.nodes:
                    if node.type == "file":
                        used_data.update(node.content or ())
                    elif node.type == "dir":
                        if node.subtree is None:
                            raise IntegrityError(
                                f"directory {node.display_name!r} in tree {tree_id.hex()[:8]} has no subtree",
                                "run `lockstep repo check`",
                            )
                        if node.subtree not in used_trees:
                            pending.append(node.subtree)
    return used


def read_index_files(repository: Repository) -> tuple[list[str], dict[bytes, list[PackedBlob]]]:
    """Every index file's packs with all their entries (duplicates included), and reset the
    repository's in-memory index to match, so trees are read through the same view."""
    names = sorted(name for name, _ in repository.backend.list(FileType.INDEX))
    pack_blobs: dict[bytes, list[PackedBlob]] = {}
    index = Index()
    with ThreadPoolExecutor(max_workers=PARALLEL_FILES, thread_name_prefix="lockstep-prune-index") as pool:
        documents = pool.map(repository.load_index_file, names)
        for name, document in zip(names, documents, strict=True):
            for pack_id, blobs in parse_index_document(document):
                if pack_id not in pack_blobs:  # a pack listed twice keeps its first listing
                    pack_blobs[pack_id] = blobs
                    index.add_pack(pack_id, blobs)
            index.index_file_ids.add(name)
    repository.index = index
    return names, pack_blobs


# --- planning -------------------------------------------------------------------------------


def plan_prune(
    repository: Repository,
    options: PruneOptions,
    ignore_snapshots: Iterable[str] = (),
    progress: ProgressCallback | None = None,
) -> PrunePlan:
    """Decide what to delete and what to repack. Reads index, snapshots and trees; writes nothing.

    `ignore_snapshots` are treated as already forgotten (forget --prune --dry-run)."""
    say = progress or (lambda _: None)
    say("loading index")
    index_file_ids, pack_blobs = read_index_files(repository)
    ignored = set(ignore_snapshots)
    say("loading snapshots")
    snapshots = [snapshot for snapshot in repository.list_snapshots() if snapshot.id not in ignored]
    for snapshot in snapshots:
        if not snapshot.tree:
            raise IntegrityError(f"snapshot {snapshot.short_id} has no tree", "run `lockstep repo check`")
    say(f"finding data still used by {counted(len(snapshots), 'snapshot')}")
    used = find_used_blobs(repository, [snapshot.tree for snapshot in snapshots])
    stats = PruneStats(snapshots=len(snapshots))
    keep_blobs, usage = _judge_packs(pack_blobs, used, stats)
    say("deciding which packs to delete and repack")
    stored_pack_sizes = {bytes.fromhex(name): size for name, size in repository.backend.list(FileType.PACK)}
    plan = PrunePlan(options, stats, pack_blobs, stored_pack_sizes, index_file_ids)
    _decide_pack_actions(repository, plan, usage)
    if plan.repack_packs:
        # Copy only blobs that no surviving pack already holds.
        dropped = plan.remove_packs | plan.repack_packs | plan.missing_packs
        for pack_id, blobs in pack_blobs.items():
            if pack_id not in dropped:
                for blob in blobs:
                    keep_blobs.discard((blob.blob_type, blob.blob_id))
        plan.keep_blobs = keep_blobs
    return plan


def _header_size(blobs: list[PackedBlob]) -> int:
    return sum(header_entry_size(blob) for blob in blobs) + OVERHEAD + HEADER_LENGTH_SIZE


def _judge_packs(
    pack_blobs: dict[bytes, list[PackedBlob]], used: dict[BlobType, set[bytes]], stats: PruneStats
) -> tuple[set[BlobHandle], dict[bytes, _PackUsage]]:
    """restic's packInfoFromIndex: which blobs are used, duplicated or unused, per pack."""
    keep_blobs: set[BlobHandle] = set()
    duplicates: dict[BlobHandle, int] = {}
    for blobs in pack_blobs.values():
        for blob in blobs:
            handle = (blob.blob_type, blob.blob_id)
            if blob.blob_id in used[blob.blob_type]:
                used[blob.blob_type].discard(blob.blob_id)
                keep_blobs.add(handle)
                stats.used_bytes += blob.length
                stats.used_blobs += 1
            elif handle in keep_blobs:
                duplicates[handle] = min(duplicates.get(handle, 1) + 1, 255)
                stats.duplicate_bytes += blob.length
                stats.duplicate_blobs += 1
            else:
                stats.unused_bytes += blob.length
                stats.unused_blobs += 1
    missing = [(blob_type, blob_id) for blob_type, ids in used.items() for blob_id in ids]
    if missing:
        blob_type, blob_id = missing[0]
        raise IntegrityError(
            f"{len(missing)} blobs that snapshots need are not in the index "
            f"(first: {blob_type.value} {blob_id.hex()[:8]}); prune stopped before deleting anything",
            "run `lockstep repo check` and repair the repository first",
        )

    usage: dict[bytes, _PackUsage] = {}
    for pack_id, blobs in pack_blobs.items():
        pack = _PackUsage(used_size=_header_size(blobs))
        for blob in blobs:
            if pack.blob_type is None:
                pack.blob_type = blob.blob_type
            elif pack.blob_type is not blob.blob_type:
                pack.mixed = True
            handle = (blob.blob_type, blob.blob_id)
            if handle in duplicates:
                pass  # settled below, once every pack's own used blobs are counted
            elif handle in keep_blobs:
                pack.used_size += blob.length
                pack.used_blobs += 1
            else:
                pack.unused_size += blob.length
                pack.unused_blobs += 1
        usage[pack_id] = pack

    # Each duplicated blob counts as used exactly once: in a pack that has other used blobs
    # if possible, else in its last copy; every other copy is unused.
    if duplicates:
        for pack_id, blobs in pack_blobs.items():
            pack = usage[pack_id]
            for blob in blobs:
                handle = (blob.blob_type, blob.blob_id)
                count = duplicates.get(handle)
                if count is None:
                    continue
                if count == 0:
                    pack.unused_size += blob.length
                    pack.unused_blobs += 1
                elif pack.used_blobs > 0 or count == 1:
                    pack.used_size += blob.length
                    pack.used_blobs += 1
                    duplicates[handle] = 0
                else:
                    pack.unused_size += blob.length
                    pack.unused_blobs += 1
                    duplicates[handle] = count - 1
    return keep_blobs, usage


def _decide_pack_actions(repository: Repository, plan: PrunePlan, usage: dict[bytes, _PackUsage]) -> None:
    """restic's decidePackAction: delete, keep or repack each pack."""
    stats = plan.stats
    small_pack_size = repository.pack_size // SMALL_PACK_DIVISOR
    candidates: list[tuple[bytes, _PackUsage]] = []
    small_candidates: list[tuple[bytes, _PackUsage]] = []
    remaining = dict(usage)
    for pack_id, stored_size in plan.stored_pack_sizes.items():
        pack = remaining.pop(pack_id, None)
        if pack is None:
            plan.unreferenced_packs.add(pack_id)
            stats.unreferenced_bytes += stored_size
            continue
        if pack.size != stored_size and pack.used_blobs:
            raise IntegrityError(
                f"pack {pack_id.hex()[:8]} has {stored_size} bytes, the index says {pack.size}; "
                "prune stopped before deleting anything",
                "run `lockstep repo check --read-data` (or `restic repair index`) first",
            )
        if pack.used_blobs == 0:
            stats.packs_unused += 1
        elif pack.unused_blobs == 0:
            stats.packs_used += 1
        else:
            stats.packs_partly_used += 1
        # restic also repacks tree packs holding uncompressed trees, to compress them. lockstep
        # stores a blob raw when zstd does not shrink it (an empty tree, for one), so a repack
        # would write the same raw blob again and that rule would repack them on every run.
        if pack.used_blobs == 0:
            plan.remove_packs.add(pack_id)
            stats.remove_blobs += pack.unused_blobs
            stats.remove_bytes += pack.unused_size
        elif pack.unused_blobs == 0 and not pack.mixed:
            if stored_size >= small_pack_size:
                stats.packs_keep += 1
            else:
                small_candidates.append((pack_id, pack))
        else:
            candidates.append((pack_id, pack))

    needed_missing = {pack_id: pack for pack_id, pack in remaining.items() if pack.used_blobs}
    if needed_missing:
        listed = ", ".join(pack_id.hex()[:8] for pack_id in list(needed_missing)[:5])
        raise IntegrityError(
            f"the index lists {len(needed_missing)} needed packs that are missing from storage ({listed}); "
            "prune stopped before deleting anything",
            "run `lockstep repo check` to see which snapshots are damaged",
        )
    for pack_id, pack in remaining.items():
        plan.missing_packs.add(pack_id)
        stats.remove_blobs += pack.unused_blobs
        stats.remove_bytes += pack.unused_size
    stats.packs_missing_dropped = len(plan.missing_packs)

    if len(small_candidates) < MIN_SMALL_PACKS:
        # Too few to be worth it; also stops one small pack being repacked on every run.
        stats.packs_keep += len(small_candidates)
    else:
        candidates.extend(small_candidates)

    def is_data(pack: _PackUsage) -> bool:
        return pack.blob_type is BlobType.DATA and not pack.mixed

    def order(first: tuple[bytes, _PackUsage], second: tuple[bytes, _PackUsage]) -> int:
        """Tree and mixed packs first, then small packs, then the highest unused share."""
        one, other = first[1], second[1]
        if is_data(one) != is_data(other):
            return 1 if is_data(one) else -1
        one_small, other_small = one.size < small_pack_size, other.size < small_pack_size
        if one_small != other_small:
            return -1 if one_small else 1
        left, right = one.unused_size * other.used_size, other.unused_size * one.used_size
        return -1 if left > right else (1 if left < right else 0)

    candidates.sort(key=functools.cmp_to_key(order))
    unused_allowed = plan.options.max_unused.bytes_allowed(stats.used_bytes)
    max_repack = plan.options.max_repack_bytes
    for pack_id, pack in candidates:
        unused_after = stats.unused_bytes - stats.remove_bytes - stats.repack_removed_bytes
        reached_unused_limit = unused_allowed is None or unused_after < unused_allowed
        reached_repack_limit = max_repack is not None and stats.repack_bytes + pack.size >= max_repack
        large_enough = pack.size >= small_pack_size
        if reached_repack_limit:
            stats.packs_keep += 1
        elif not is_data(pack):
            _repack(plan, pack_id, pack)  # tree and mixed packs: only the repack size limits them
        elif reached_unused_limit and large_enough:
            stats.packs_keep += 1
        else:
            _repack(plan, pack_id, pack)
    stats.packs_unreferenced = len(plan.unreferenced_packs)
    stats.packs_repack = len(plan.repack_packs)
    stats.packs_remove = len(plan.remove_packs)


def _repack(plan: PrunePlan, pack_id: bytes, pack: _PackUsage) -> None:
    plan.repack_packs.add(pack_id)
    plan.stats.repack_blobs += pack.used_blobs + pack.unused_blobs
    plan.stats.repack_bytes += pack.size
    plan.stats.repack_removed_blobs += pack.unused_blobs
    plan.stats.repack_removed_bytes += pack.unused_size


# --- executing ------------------------------------------------------------------------------


def execute_prune(repository: Repository, plan: PrunePlan, progress: ProgressCallback | None = None) -> PruneReport:
    """Carry out a plan (or only report it, for a dry run). The caller holds an exclusive lock."""
    say = progress or (lambda _: None)
    bytes_before = sum(plan.stored_pack_sizes.values())
    if plan.options.dry_run:
        return PruneReport(
            dry_run=True,
            snapshots=plan.stats.snapshots,
            stats=plan.stats,
            packs_deleted=len(plan.unreferenced_packs | plan.obsolete_packs),
            packs_repacked=len(plan.repack_packs),
            packs_written=0,
            index_files_written=0,
            index_files_deleted=0,
            bytes_before=bytes_before,
            bytes_freed=plan.stats.prune_bytes,
            bytes_remaining=bytes_before - plan.stats.prune_bytes,
        )

    # The exclusive lock means no backup or copy is writing; the age is a margin for a writer
    # whose lock was removed as stale while it still ran.
    temporary_files_removed = repository.backend.remove_stale_temporary_files(STALE_TEMPORARY_SECONDS)
    if temporary_files_removed:
        say(f"deleted {temporary_files_removed} temporary files of writes that never finished")

    if plan.unreferenced_packs:
        say(f"deleting {len(plan.unreferenced_packs)} unreferenced packs")
        _remove_files(repository, FileType.PACK, [pack_id.hex() for pack_id in plan.unreferenced_packs])

    new_index_files: list[str] = []
    if plan.repack_packs:
        say(f"repacking {counted(len(plan.repack_packs), 'pack')}")
        new_index_files = _repack_packs(repository, plan)

    old_index_files: list[str] = []
    if plan.changes_index:
        say("writing the new index")
        new_index_files += _write_index(repository, plan.kept_packs())
        old_index_files = plan.index_file_ids
        say(f"deleting {len(old_index_files)} old index files")
        _remove_files(repository, FileType.INDEX, old_index_files)
        repository.index.index_file_ids = set(new_index_files)

    if plan.obsolete_packs:
        say(f"deleting {len(plan.obsolete_packs)} old packs")
        _remove_files(repository, FileType.PACK, [pack_id.hex() for pack_id in plan.obsolete_packs])

    packs_after = dict(repository.backend.list(FileType.PACK))
    bytes_remaining = sum(packs_after.values())
    packs_before = {pack_id.hex() for pack_id in plan.stored_pack_sizes}
    return PruneReport(
        dry_run=False,
        snapshots=plan.stats.snapshots,
        stats=plan.stats,
        packs_deleted=len(plan.unreferenced_packs | plan.obsolete_packs),
        packs_repacked=len(plan.repack_packs),
        packs_written=len(set(packs_after) - packs_before),
        index_files_written=len(new_index_files),
        index_files_deleted=len(old_index_files),
        bytes_before=bytes_before,
        bytes_freed=bytes_before - bytes_remaining,
        bytes_remaining=bytes_remaining,
        temporary_files_removed=temporary_files_removed,
    )


def _repack_packs(repository: Repository, plan: PrunePlan) -> list[str]:
    """Copy the still-needed blobs of the packs being repacked into new packs, verified on the
    way; returns the index files that list the new packs."""
    index = Index()
    for pack_id, blobs in plan.kept_packs():
        index.add_pack(pack_id, blobs)
    repository.index = index  # is_known() now means "in a surviving pack"
    wanted = plan.keep_blobs
    try:
        for pack_id in sorted(plan.repack_packs):
            _copy_needed_blobs(repository, plan, pack_id, wanted)
        written = repository.flush()
    except BaseException:
        repository.discard_unindexed_packs()
        raise
    if wanted:
        blob_type, blob_id = next(iter(wanted))
        raise IntegrityError(
            f"{len(wanted)} needed blobs were not found in the packs being repacked "
            f"(first: {blob_type.value} {blob_id.hex()[:8]}); nothing was deleted",
            "run `lockstep repo check --read-data`",
        )
    return written


def _copy_needed_blobs(repository: Repository, plan: PrunePlan, pack_id: bytes, wanted: set[BlobHandle]) -> None:
    """Read one pack's needed blobs in a single ranged read, verify each, and re-add it."""
    blobs = sorted(
        (blob for blob in plan.pack_blobs[pack_id] if (blob.blob_type, blob.blob_id) in wanted),
        key=lambda blob: blob.offset,
    )
    if not blobs:
        return
    run = PackRun(
        pack_id,
        [
            (blob.blob_type, blob.blob_id, BlobLocation(pack_id, blob.offset, blob.length, blob.uncompressed_length))
            for blob in blobs
        ],
    )
    try:
        data = load_run(repository, run)
    except FileMissing as error:
        raise IntegrityError(f"pack {pack_id.hex()[:8]} disappeared during prune; nothing was deleted") from error
    for blob, (_, _, location) in zip(blobs, run.blobs, strict=True):
        handle = (blob.blob_type, blob.blob_id)
        if handle not in wanted:
            continue  # copied already from another pack holding the same blob
        try:
            plaintext = repository.decode_blob(blob.blob_type, blob.blob_id, location, sealed_blob(run, data, location))
        except IntegrityError:
            plaintext = _load_other_copy(repository, plan, pack_id, blob)
        prepared = repository.prepare_blob(blob.blob_type, plaintext, blob.blob_id)
        if prepared is not None:
            repository.add_prepared(prepared)
        wanted.discard(handle)


def _load_other_copy(repository: Repository, plan: PrunePlan, damaged_pack: bytes, blob: PackedBlob) -> bytes:
    """A damaged blob may have a good copy in another pack (restic tries the same)."""
    for pack_id, blobs in plan.pack_blobs.items():
        if pack_id == damaged_pack or pack_id in plan.missing_packs:
            continue
        for other in blobs:
            if other.blob_type is blob.blob_type and other.blob_id == blob.blob_id:
                location = BlobLocation(pack_id, other.offset, other.length, other.uncompressed_length)
                try:
                    sealed = repository.backend.load(FileType.PACK, pack_id.hex(), other.offset, other.length)
                    return repository.decode_blob(blob.blob_type, blob.blob_id, location, sealed)
                except (IntegrityError, FileMissing):
                    continue
    raise IntegrityError(
        f"{blob.blob_type.value} blob {blob.blob_id.hex()[:8]} in pack {damaged_pack.hex()[:8]} is damaged "
        "and no other copy exists; prune stopped before deleting anything",
        "run `lockstep repo check --read-data`",
    )


def _write_index(repository: Repository, packs: Iterable[tuple[bytes, list[PackedBlob]]]) -> list[str]:
    """New index files for the surviving packs, at most 50,000 blobs each, whole packs only."""
    return repository.write_index_files(packs)


def _remove_files(repository: Repository, file_type: FileType, names: Iterable[str]) -> None:
    with ThreadPoolExecutor(max_workers=PARALLEL_FILES, thread_name_prefix="lockstep-prune-delete") as pool:
        for _ in pool.map(lambda name: repository.backend.remove(file_type, name), sorted(names)):
            pass


def prune(
    repository: Repository,
    options: PruneOptions,
    ignore_snapshots: Iterable[str] = (),
    progress: ProgressCallback | None = None,
) -> PruneReport:
    """Plan and execute in one go; the caller holds an exclusive lock."""
    plan = plan_prune(repository, options, ignore_snapshots, progress)
    return execute_prune(repository, plan, progress)


__all__ = [
    "DEFAULT_MAX_UNUSED",
    "PruneOptions",
    "PrunePlan",
    "PruneReport",
    "PruneStats",
    "UnusedLimit",
    "execute_prune",
    "find_used_blobs",
    "parse_size",
    "plan_prune",
    "prune",
    "read_index_files",
]
