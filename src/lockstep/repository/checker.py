"""Verify a repository the way `restic check` does (§15), and a little more.

Phases, in this order:

1. snapshots are loaded before the index (§14), so a snapshot written by a concurrent backup never
   points at an index file that was not read;
2. every index file is loaded on its own, so one damaged file is reported and the rest still count;
3. every pack the index names must exist with exactly the size the index implies; packs no index
   names are hints (an interrupted backup leaves them; prune removes them);
4. with `read_data`, the selected packs are read whole: name = SHA-256, header = index, every blob
   decrypts, decompresses to exactly `uncompressed_length` bytes and hashes to its ID. restic does
   not compare the real decompressed length (§15.3), although its restorer trusts it;
5. every tree reachable from a snapshot is loaded and its nodes checked as restic does, plus one
   stricter rule: a file's `size` must equal the sum of its blobs' lengths, which the restorer
   also relies on. Files whose blobs are in missing or damaged packs are named, so the user knows
   what is lost. This runs after phase 4 so that it can name the files a damaged blob belongs to.

Nothing is ever written: the checker holds a shared lock only, taken by its caller.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from lockstep.errors import IntegrityError, UsageError
from lockstep.repository.blobs import BlobLocation, BlobType, PackedBlob
from lockstep.repository.crypto import OVERHEAD, AuthenticationFailed
from lockstep.repository.index import parse_index_document
from lockstep.repository.pack import (
    HEADER_LENGTH_SIZE,
    PackFormatError,
    decode_header,
    expected_pack_size,
    header_entry_size,
    header_length_from_tail,
)
from lockstep.repository.repository import Repository
from lockstep.repository.snapshot import Snapshot
from lockstep.repository.tree import NODE_TYPES, Node, Tree
from lockstep.storage.base import FileMissing, FileType

ProgressCallback = Callable[[int], None]

# restic buckets packs by the first byte of their ID, so at most 256 groups make sense.
MAX_SUBSET_GROUPS = 256
# Packs read at once: enough to hide object-storage latency, few enough that memory stays at
# one pack (16 MiB by default, 128 MiB at most) per worker.
READ_WORKERS = 4
# Index files and trees are small; more of them are fetched at once.
LOAD_WORKERS = 8
# Trees loaded per round of the breadth-first walk, so a very wide level never sits in memory whole.
TREE_BATCH = 256
NULL_ID = bytes(32)


@dataclass
class CheckReport:
    """What a check found. `errors` mean damage; `hints` are harmless leftovers worth knowing."""

    errors: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    snapshots: int = 0
    index_files: int = 0
    trees: int = 0
    packs: int = 0
    packs_read: int = 0
    blobs_read: int = 0
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_document(self) -> dict[str, Any]:
        """The report as `--json` prints it."""
        return {
            "ok": self.ok,
            "errors": list(self.errors),
            "hints": list(self.hints),
            "snapshots": self.snapshots,
            "index_files": self.index_files,
            "trees": self.trees,
            "packs": self.packs,
            "packs_read": self.packs_read,
            "blobs_read": self.blobs_read,
            "bytes_read": self.bytes_read,
        }


@dataclass(frozen=True)
class PackSelection:
    """Which packs `--read-data` reads: all, group `group` of `groups` (by first ID byte), or a percentage."""

    group: int = 1
    groups: int = 1
    percent: float | None = None

    @classmethod
    def parse(cls, text: str) -> PackSelection:
        """`n/t` or `x%`, as restic's --read-data-subset accepts them."""
        text = text.strip()
        fraction = re.fullmatch(r"(\d+)/(\d+)", text)
        if fraction:
            group, groups = int(fraction.group(1)), int(fraction.group(2))
            if groups < 1 or groups > MAX_SUBSET_GROUPS:
                raise UsageError(f"--read-data-subset={text}: the number of groups must be 1 to {MAX_SUBSET_GROUPS}")
            if group < 1 or group > groups:
                raise UsageError(f"--read-data-subset={text}: the group must be between 1 and {groups}")
            return cls(group=group, groups=groups)
        percent = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)%", text)
        if percent:
            value = float(percent.group(1))
            if not 0 < value <= 100:
                raise UsageError(f"--read-data-subset={text}: the percentage must be above 0 and at most 100")
            return cls(percent=value)
        raise UsageError(
            f"--read-data-subset={text!r} is not understood", "use n/t (e.g. 1/5) or a percentage (e.g. 10%)"
        )

    def select(self, pack_ids: Iterable[bytes]) -> list[bytes]:
        """The chosen pack IDs, sorted. Groups are deterministic: checking 1/t … t/t reads every
        pack exactly once. A percentage picks at random (at least one pack if there are any)."""
        candidates = sorted(pack_ids)
        if self.percent is not None:
            # restic truncates, then reads at least one pack.
            count = int(len(candidates) * self.percent / 100)
            if candidates:
                count = max(1, count)
            return sorted(random.SystemRandom().sample(candidates, count))
        return [pack_id for pack_id in candidates if pack_id[0] % self.groups == self.group - 1]


@dataclass(frozen=True)
class _TreeVisit:
    """A tree to load, and how it was reached (for messages)."""

    tree_id: bytes
    snapshot_id: str
    path: str


@dataclass
class _PackResult:
    """What reading one pack found; built on a worker thread, merged on the caller's."""

    pack_id: bytes
    errors: list[str] = field(default_factory=list)
    damaged_blobs: set[bytes] = field(default_factory=set)
    blobs_read: int = 0
    bytes_read: int = 0
    read: bool = False


def _short(identifier: bytes | str) -> str:
    return (identifier.hex() if isinstance(identifier, bytes) else identifier)[:8]


class Checker:
    """Runs the phases on an open repository whose index has not been loaded yet."""

    def __init__(self, repository: Repository, progress: ProgressCallback | None = None) -> None:
        self.repository = repository
        self.progress = progress
        self.report = CheckReport()
        self._snapshots: list[Snapshot] = []
        self._pack_blobs: dict[bytes, list[PackedBlob]] = {}  # pack → its blobs, as the index lists them
        self._pack_index_files: dict[bytes, list[str]] = {}
        self._unusable_packs: dict[bytes, str] = {}  # pack → why its blobs cannot be read
        self._damaged_blobs: set[bytes] = set()

    def run(self, selection: PackSelection | None = None) -> CheckReport:
        """Every phase; `selection` None means do not read pack data."""
        self.load_snapshots()
        self.load_index()
        self.check_packs()
        if selection is not None:
            self.read_packs(selection)
        self.check_structure()
        return self.report

    # --- phase 1: snapshots -------------------------------------------------------------

    def load_snapshots(self) -> None:
        names = sorted(name for name, _ in self.repository.backend.list(FileType.SNAPSHOT))
        with ThreadPoolExecutor(max_workers=LOAD_WORKERS, thread_name_prefix="lockstep-check") as pool:
            outcomes = list(pool.map(self._load_snapshot, names))
        for outcome in outcomes:
            if isinstance(outcome, str):
                self.report.errors.append(outcome)
            else:
                self._snapshots.append(outcome)
        self.report.snapshots = len(self._snapshots)

    def _load_snapshot(self, name: str) -> Snapshot | str:
        try:
            snapshot = self.repository.load_snapshot(name)
        except FileMissing:
            return f"snapshot {_short(name)} disappeared while it was being read"
        except IntegrityError as error:
            return f"snapshot {_short(name)} is unreadable: {error.message}"
        except (KeyError, ValueError, TypeError, AttributeError) as error:
            return f"snapshot {_short(name)} cannot be decoded: {type(error).__name__}: {error}"
        if len(snapshot.tree) != 32:
            return f"snapshot {_short(name)} has no root tree"
        return snapshot

    # --- phase 2: index -----------------------------------------------------------------

    def load_index(self) -> None:
        names = sorted(name for name, _ in self.repository.backend.list(FileType.INDEX))
        with ThreadPoolExecutor(max_workers=LOAD_WORKERS, thread_name_prefix="lockstep-check") as pool:
            outcomes = list(pool.map(self._load_index_file, names))
        unreadable = 0
        for name, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, str):
                self.report.errors.append(outcome)
                unreadable += 1
                continue
            self.report.index_files += 1
            self.repository.index.index_file_ids.add(name)
            for pack_id, blobs in outcome:
                self._add_indexed_pack(name, pack_id, blobs)
        if unreadable:
            # Before `repo prune` is suggested for the packs only the damaged files listed.
            self.report.hints.append(
                f"{unreadable} index file{'s' if unreadable > 1 else ''} cannot be read: "
                "`lockstep repo repair index` rebuilds the index from the packs"
            )
        for pack_id, files in sorted(self._pack_index_files.items()):
            if len(files) > 1:
                self.report.hints.append(
                    f"pack {_short(pack_id)} is listed in {len(files)} index files "
                    f"({', '.join(_short(name) for name in files)}); `lockstep repo prune` tidies this"
                )

    def _load_index_file(self, name: str) -> list[tuple[bytes, list[PackedBlob]]] | str:
        try:
            document = self.repository.load_unpacked(FileType.INDEX, name)
        except FileMissing:
            return f"index {_short(name)} disappeared while it was being read"
        except IntegrityError as error:
            return f"index {_short(name)} is unreadable: {error.message}"
        try:
            packs = parse_index_document(document)
        except (KeyError, ValueError, TypeError, AttributeError) as error:
            return f"index {_short(name)} cannot be decoded: {type(error).__name__}: {error}"
        for pack_id, blobs in packs:
            if len(pack_id) != 32 or any(len(blob.blob_id) != 32 for blob in blobs):
                return f"index {_short(name)} holds an ID that is not 32 bytes long"
        return packs

    def _add_indexed_pack(self, index_name: str, pack_id: bytes, blobs: list[PackedBlob]) -> None:
        files = self._pack_index_files.setdefault(pack_id, [])
        files.append(index_name)
        if len(files) > 1:
            if set(blobs) != set(self._pack_blobs[pack_id]):
                self.report.errors.append(
                    f"index {_short(index_name)} and index {_short(files[0])} disagree about the blobs of "
                    f"pack {_short(pack_id)}"
                )
            return
        self._pack_blobs[pack_id] = blobs
        self.repository.index.add_pack(pack_id, blobs)
        if self.repository.config.version < 2 and any(blob.uncompressed_length for blob in blobs):
            self.report.errors.append(
                f"pack {_short(pack_id)} holds compressed blobs, which a version 1 repository cannot have"
            )
        if len({blob.blob_type for blob in blobs}) > 1:
            self.report.hints.append(
                f"pack {_short(pack_id)} mixes data and tree blobs; `lockstep repo prune` repacks it"
            )

    # --- phase 3: packs on storage ------------------------------------------------------

    def check_packs(self) -> None:
        stored = dict(self.repository.backend.list(FileType.PACK))
        self.report.packs = len(self._pack_blobs)
        for pack_id, blobs in sorted(self._pack_blobs.items()):
            name = pack_id.hex()
            if name not in stored:
                self._unusable_packs[pack_id] = "missing"
                self.report.errors.append(f"pack {_short(pack_id)} is named in the index but missing from storage")
                continue
            expected = expected_pack_size(blobs)
            if stored[name] != expected:
                self._unusable_packs[pack_id] = "damaged"
                self.report.errors.append(
                    f"pack {_short(pack_id)} has {stored[name]} bytes, the index implies {expected}: "
                    "the file is truncated or damaged"
                )
            problem = _layout_problem(blobs)
            if problem:
                self.report.errors.append(f"pack {_short(pack_id)}: the index lists {problem}")
        indexed = {pack_id.hex() for pack_id in self._pack_blobs}
        for name in sorted(set(stored) - indexed):
            self.report.hints.append(
                f"pack {_short(name)} is not referenced in any index; `lockstep repo prune` removes them"
            )

    # --- phase 4: pack contents ---------------------------------------------------------

    def read_packs(self, selection: PackSelection) -> None:
        readable = [pack_id for pack_id in self._pack_blobs if self._unusable_packs.get(pack_id) != "missing"]
        chosen = selection.select(readable)
        results: list[_PackResult] = []
        with ThreadPoolExecutor(
            max_workers=max(1, min(READ_WORKERS, len(chosen))), thread_name_prefix="lockstep-check-read"
        ) as pool:
            futures = [pool.submit(self._read_pack, pack_id) for pack_id in chosen]
            for future in as_completed(futures):
                result = future.result()
                if self.progress is not None and result.bytes_read:
                    self.progress(result.bytes_read)
                results.append(result)
        for result in sorted(results, key=lambda result: result.pack_id):
            self.report.errors.extend(result.errors)
            self.report.packs_read += int(result.read)
            self.report.blobs_read += result.blobs_read
            self.report.bytes_read += result.bytes_read
            self._damaged_blobs |= result.damaged_blobs
            if result.read:
                # Each blob was tried: the damaged ones are known by ID, the rest are readable.
                self._unusable_packs.pop(result.pack_id, None)

    def _read_pack(self, pack_id: bytes) -> _PackResult:
        """On a worker thread: the only place a whole pack is held in memory."""
        result = _PackResult(pack_id)
        where = f"pack {_short(pack_id)}"
        try:
            data = self.repository.backend.load(FileType.PACK, pack_id.hex())
        except FileMissing:
            result.errors.append(f"{where} disappeared while it was being read")
            return result
        result.read = True
        result.bytes_read = len(data)
        actual_id = hashlib.sha256(data).digest()
        if actual_id != pack_id:
            result.errors.append(
                f"{where} does not match its name (its SHA-256 is {_short(actual_id)}): the file is damaged"
            )
        index_blobs = self._pack_blobs[pack_id]
        result.errors.extend(f"{where}: {problem}" for problem in self._compare_header(data, index_blobs))
        view = memoryview(data)
        for blob in sorted(index_blobs, key=lambda blob: blob.offset):
            result.blobs_read += 1
            if blob.offset + blob.length > len(data):
                result.damaged_blobs.add(blob.blob_id)
                result.errors.append(
                    f"{where}: {blob.blob_type.value} blob {blob.blob_id.hex()} lies past the end of the pack "
                    "(the file is truncated)"
                )
                continue
            location = BlobLocation(pack_id, blob.offset, blob.length, blob.uncompressed_length)
            sealed = view[blob.offset : blob.offset + blob.length]
            try:
                self.repository.decode_blob(blob.blob_type, blob.blob_id, location, sealed)
            except IntegrityError as error:
                result.damaged_blobs.add(blob.blob_id)
                result.errors.append(f"{error.message} (blob ID {blob.blob_id.hex()})")
        return result

    def _compare_header(self, data: bytes, index_blobs: list[PackedBlob]) -> list[str]:
        """Problems with the pack header, or with how it and the index agree (§15.2)."""
        try:
            header_length = header_length_from_tail(data[-HEADER_LENGTH_SIZE:], len(data))
        except PackFormatError as error:
            return [f"its header cannot be found: {error}"]
        sealed_header = data[len(data) - HEADER_LENGTH_SIZE - header_length : len(data) - HEADER_LENGTH_SIZE]
        try:
            header_blobs = decode_header(self.repository.key.open(sealed_header))
        except AuthenticationFailed:
            return ["its header failed authentication: the pack is damaged"]
        except PackFormatError as error:
            return [f"its header cannot be parsed: {error}"]
        problems = []
        expected_header_length = sum(header_entry_size(blob) for blob in index_blobs) + OVERHEAD
        if header_length != expected_header_length:
            problems.append(f"its header has {header_length} bytes, the index implies {expected_header_length}")
        blobs_end = sum(blob.length for blob in header_blobs)
        if blobs_end + header_length + HEADER_LENGTH_SIZE != len(data):
            problems.append(
                f"its header describes {blobs_end} bytes of blobs, but "
                f"{len(data) - header_length - HEADER_LENGTH_SIZE} "
                "bytes come before the header"
            )
        in_index = set(index_blobs)
        in_header = set(header_blobs)
        for blob in header_blobs:
            if blob not in in_index:
                problems.append(f"header entry {_describe(blob)} is not in the index, or differs from it")
        for blob in index_blobs:
            if blob not in in_header:
                problems.append(f"index entry {_describe(blob)} is not in the pack header, or differs from it")
        return problems

    # --- phase 5: snapshots' trees ------------------------------------------------------

    def check_structure(self) -> None:
        seen: set[bytes] = set()
        frontier: list[_TreeVisit] = []
        for snapshot in self._snapshots:
            if snapshot.tree not in seen:
                seen.add(snapshot.tree)
                frontier.append(_TreeVisit(snapshot.tree, snapshot.id, "/"))
        with ThreadPoolExecutor(max_workers=LOAD_WORKERS, thread_name_prefix="lockstep-check") as pool:
            while frontier:
                batch, frontier = frontier[:TREE_BATCH], frontier[TREE_BATCH:]
                for visit, outcome in zip(batch, pool.map(self._load_tree, batch), strict=True):
                    if isinstance(outcome, str):
                        self.report.errors.append(outcome)
                        continue
                    self.report.trees += 1
                    for node in outcome.nodes:
                        frontier.extend(self._check_node(visit, node, seen))

    def _load_tree(self, visit: _TreeVisit) -> Tree | str:
        try:
            return self.repository.load_tree(visit.tree_id)
        except IntegrityError as error:
            return (
                f"snapshot {_short(visit.snapshot_id)}: tree {_short(visit.tree_id)} for {visit.path} "
                f"is unreadable: {error.message}"
            )

    def _check_node(self, visit: _TreeVisit, node: Node, seen: set[bytes]) -> list[_TreeVisit]:
        """restic's node rules (§9.2) plus the size rule; returns the subtree to visit, if any."""
        directory = visit.path.rstrip("/")
        path = f"{directory}/{node.display_name}"
        where = f"snapshot {_short(visit.snapshot_id)}: {path}"
        if not node.name:
            self.report.errors.append(
                f"snapshot {_short(visit.snapshot_id)}: tree {_short(visit.tree_id)} for {visit.path} "
                "has an entry without a name"
            )
        if node.type not in NODE_TYPES:
            self.report.errors.append(f"{where} has the invalid type {node.type!r}")
        elif node.type == "file":
            self._check_file(where, node)
        elif node.type == "dir":
            if node.subtree is None or node.subtree == NULL_ID:
                self.report.errors.append(f"{where} is a directory without a subtree")
            elif node.subtree not in seen:
                seen.add(node.subtree)
                return [_TreeVisit(node.subtree, visit.snapshot_id, path)]
        return []

    def _check_file(self, where: str, node: Node) -> None:
        if node.content is None:
            self.report.errors.append(f"{where} is a file without a content list")
            return
        missing: list[bytes] = []
        unusable: dict[bytes, int] = {}
        damaged: list[bytes] = []
        total = 0
        has_null = False
        for blob_id in node.content:
            if blob_id == NULL_ID:
                has_null = True
                continue
            location = self.repository.index.lookup(BlobType.DATA, blob_id)
            if location is None:
                missing.append(blob_id)
                continue
            total += location.plaintext_length
            if blob_id in self._damaged_blobs:
                damaged.append(blob_id)
            elif location.pack_id in self._unusable_packs:
                unusable[location.pack_id] = unusable.get(location.pack_id, 0) + 1
        if has_null:
            self.report.errors.append(f"{where} refers to the null blob ID")
        if missing:
            self.report.errors.append(
                f"{where}: {len(missing)} of its {len(node.content)} data blobs are not in the index "
                f"(first: {missing[0].hex()})"
            )
        elif not has_null and total != node.size:
            self.report.errors.append(f"{where}: its size says {node.size} bytes, its blobs hold {total}")
        for pack_id, count in sorted(unusable.items()):
            self.report.errors.append(
                f"{where}: {count} of its data blobs are in {self._unusable_packs[pack_id]} pack {_short(pack_id)}"
            )
        if damaged:
            self.report.errors.append(
                f"{where}: {len(damaged)} of its {len(node.content)} data blobs are damaged (first: {damaged[0].hex()})"
            )


def _describe(blob: PackedBlob) -> str:
    compressed = f", uncompressed_length {blob.uncompressed_length}" if blob.uncompressed_length else ""
    return (
        f"({blob.blob_type.value} blob {blob.blob_id.hex()} at offset {blob.offset}, length {blob.length}{compressed})"
    )


def _layout_problem(blobs: list[PackedBlob]) -> str | None:
    """Blobs must follow each other from offset 0 with no gaps and no overlaps (§7.1)."""
    end = 0
    for blob in sorted(blobs, key=lambda blob: blob.offset):
        if blob.offset != end:
            kind = "a gap" if blob.offset > end else "overlapping blobs"
            return f"{kind} at offset {end} (blob {blob.blob_id.hex()} starts at {blob.offset})"
        end = blob.offset + blob.length
    return None


def check(
    repository: Repository, selection: PackSelection | None = None, progress: ProgressCallback | None = None
) -> CheckReport:
    """Check an open repository whose index is not loaded yet (the checker loads it file by file)."""
    return Checker(repository, progress).run(selection)


__all__ = ["CheckReport", "Checker", "PackSelection", "check"]
