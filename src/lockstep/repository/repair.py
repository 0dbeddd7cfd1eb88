"""Rebuild the index from the packs' headers, as `restic repair index` (0.16) does.

Every pack ends with a sealed header that lists its blobs (§7), so the index is redundant: when
an index file is damaged or lost, the headers describe the same blobs again. The steps:

1. list the old index files and load those that still decode (all are ignored with
   `read_all_packs`); a damaged one is reported and will be deleted;
2. list the packs; every pack that no readable index covers, or whose size differs from what
   its index entries imply, has its header read (a ranged read of its tail, not the whole pack);
   packs an index names but storage does not have are dropped from the index;
3. write new index files covering every readable pack, then delete every old index file.

A pack whose header cannot be read is reported and left where it is: its blobs may still be
readable one by one, and deleting data is never a repair. It is simply not in the new index.

Crash safety: the new index files are complete before any old one is deleted, so a process
killed at any moment leaves every pack that was indexed before still indexed (a pack may be
listed twice for a while, which restic and lockstep both accept). Damaged old index files are
deleted first, so the repository is usable again as soon as possible. The caller holds the
exclusive lock.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lockstep.errors import IntegrityError
from lockstep.fault_injection import kill_point
from lockstep.repository.blobs import PackedBlob
from lockstep.repository.crypto import AuthenticationFailed
from lockstep.repository.index import Index, parse_index_document
from lockstep.repository.pack import (
    EAGER_TAIL,
    HEADER_LENGTH_SIZE,
    PackFormatError,
    decode_header,
    expected_pack_size,
    header_length_from_tail,
)
from lockstep.repository.repository import Repository
from lockstep.storage.base import FileMissing, FileType
from lockstep.wording import counted

ProgressCallback = Callable[[str], None]

# Pack headers are small ranged reads: many at once hide object-storage latency.
HEADER_WORKERS = 8
# Fault-injection points for the tests (tests/faults, lockstep/fault_injection.py): `wrote-index-N`
# after the N-th new index file, `deleted-index-N` after the N-th old one is deleted.


@dataclass
class RepairIndexReport:
    """What a repair found and did; `ok` is False when some packs could not be indexed."""

    index_files_loaded: int = 0  # old index files that decoded (0 with read_all_packs)
    damaged_index_files: dict[str, str] = field(default_factory=dict)  # name → why it is unusable
    packs: int = 0  # packs in the new index
    packs_read: int = 0  # packs whose header was read
    blobs_indexed: int = 0  # entries in the new index
    added_packs: list[str] = field(default_factory=list)  # packs no readable index covered
    reindexed_packs: list[str] = field(default_factory=list)  # indexed with the wrong size
    missing_packs: list[str] = field(default_factory=list)  # indexed but not in storage
    unreadable_packs: dict[str, str] = field(default_factory=dict)  # name → why its header failed
    index_files_written: list[str] = field(default_factory=list)
    index_files_deleted: int = 0

    @property
    def ok(self) -> bool:
        return not self.unreadable_packs

    def to_document(self) -> dict[str, Any]:
        return {
            "message_type": "summary",
            "ok": self.ok,
            "index_files_loaded": self.index_files_loaded,
            "damaged_index_files": [
                {"id": name, "error": error} for name, error in sorted(self.damaged_index_files.items())
            ],
            "packs": self.packs,
            "packs_read": self.packs_read,
            "blobs_indexed": self.blobs_indexed,
            "added_packs": sorted(self.added_packs),
            "reindexed_packs": sorted(self.reindexed_packs),
            "missing_packs": sorted(self.missing_packs),
            "unreadable_packs": [{"id": name, "error": error} for name, error in sorted(self.unreadable_packs.items())],
            "index_files_written": self.index_files_written,
            "index_files_deleted": self.index_files_deleted,
        }


def _short(name: str) -> str:
    return name[:8]


def _load_index_file(repository: Repository, name: str) -> list[tuple[bytes, list[PackedBlob]]] | str:
    """An index file's packs, or why it cannot be used."""
    try:
        packs = parse_index_document(repository.load_unpacked(FileType.INDEX, name))
    except FileMissing:
        return "it disappeared while it was being read"
    except IntegrityError as error:
        return error.message
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        return f"it cannot be decoded: {type(error).__name__}: {error}"
    for pack_id, blobs in packs:
        if len(pack_id) != 32 or any(len(blob.blob_id) != 32 for blob in blobs):
            return "it holds an ID that is not 32 bytes long"
    return packs


def read_pack_header(repository: Repository, name: str, size: int) -> list[PackedBlob]:
    """A pack's blobs, from its header alone: the last EAGER_TAIL bytes, and a second ranged
    read only when the header is longer than that (as restic reads it). Raises IntegrityError
    when the header cannot be found, authenticated or parsed, or does not fit the pack."""
    where = f"pack {_short(name)}"
    try:
        tail_length = min(EAGER_TAIL, size)
        tail = repository.backend.load(FileType.PACK, name, size - tail_length, tail_length)
        if len(tail) != tail_length:
            raise PackFormatError(f"only {len(tail)} of its last {tail_length} bytes could be read")
        header_length = header_length_from_tail(tail, size)
        if header_length + HEADER_LENGTH_SIZE <= tail_length:
            sealed = tail[tail_length - HEADER_LENGTH_SIZE - header_length : tail_length - HEADER_LENGTH_SIZE]
        else:
            sealed = repository.backend.load(
                FileType.PACK, name, size - HEADER_LENGTH_SIZE - header_length, header_length
            )
        blobs = decode_header(repository.key.open(sealed))
    except AuthenticationFailed as error:
        raise IntegrityError(f"{where}: its header failed authentication: the pack is damaged") from error
    except PackFormatError as error:
        raise IntegrityError(f"{where}: its header cannot be read: {error}") from error
    if not blobs:
        raise IntegrityError(f"{where}: its header lists no blobs")
    blobs_end = sum(blob.length for blob in blobs)
    if blobs_end + header_length + HEADER_LENGTH_SIZE != size:
        raise IntegrityError(
            f"{where}: its header describes {blobs_end} bytes of blobs, but "
            f"{size - header_length - HEADER_LENGTH_SIZE} bytes come before the header"
        )
    return blobs


def repair_index(
    repository: Repository, read_all_packs: bool = False, progress: ProgressCallback | None = None
) -> RepairIndexReport:
    """Rebuild the index (see the module docstring). The caller holds an exclusive lock; the
    repository's in-memory index is replaced by the new one."""
    say = progress or (lambda _: None)
    report = RepairIndexReport()
    old_index_files = sorted(name for name, _ in repository.backend.list(FileType.INDEX))

    indexed: dict[bytes, list[PackedBlob]] = {}
    if not read_all_packs:
        say(f"loading {len(old_index_files)} index files")
        with ThreadPoolExecutor(max_workers=HEADER_WORKERS, thread_name_prefix="lockstep-repair-index") as pool:
            outcomes = list(pool.map(lambda name: _load_index_file(repository, name), old_index_files))
        for name, loaded in zip(old_index_files, outcomes, strict=True):
            if isinstance(loaded, str):
                report.damaged_index_files[name] = loaded
                continue
            report.index_files_loaded += 1
            for pack_id, pack_blobs in loaded:
                indexed.setdefault(pack_id, pack_blobs)  # a pack listed twice keeps its first listing

    say("listing the packs")
    stored = dict(repository.backend.list(FileType.PACK))
    to_read: list[str] = []
    for name, size in sorted(stored.items()):
        listed = indexed.get(bytes.fromhex(name))
        if listed is None:
            to_read.append(name)
            if not read_all_packs:
                report.added_packs.append(name)
        elif expected_pack_size(listed) != size:
            to_read.append(name)
            report.reindexed_packs.append(name)
            del indexed[bytes.fromhex(name)]
    for pack_id in sorted(set(indexed) - {bytes.fromhex(name) for name in stored}):
        report.missing_packs.append(pack_id.hex())
        del indexed[pack_id]

    if to_read:
        say(f"reading the headers of {counted(len(to_read), 'pack')}")

    def read(name: str) -> list[PackedBlob] | str:
        try:
            return read_pack_header(repository, name, stored[name])
        except FileMissing:
            return "it disappeared while it was being read"
        except IntegrityError as error:
            return error.message

    with ThreadPoolExecutor(max_workers=HEADER_WORKERS, thread_name_prefix="lockstep-repair-index") as pool:
        headers = list(pool.map(read, to_read))
    for name, header in zip(to_read, headers, strict=True):
        if isinstance(header, str):
            report.unreadable_packs[name] = header
            continue
        report.packs_read += 1
        indexed[bytes.fromhex(name)] = header

    packs = sorted(indexed.items())
    report.packs = len(packs)
    report.blobs_indexed = sum(len(blobs) for _, blobs in packs)
    say(f"writing the new index ({counted(report.blobs_indexed, 'blob')} in {counted(report.packs, 'pack')})")
    written = repository.write_index_files(packs, on_written=lambda count: kill_point(f"wrote-index-{count}"))
    report.index_files_written = written

    # Damaged files first: until they are gone, every other command refuses to load the index.
    obsolete = [name for name in old_index_files if name in report.damaged_index_files]
    obsolete += [name for name in old_index_files if name not in report.damaged_index_files]
    obsolete = [name for name in obsolete if name not in written]
    say(f"deleting {len(obsolete)} old index files")
    for name in obsolete:
        repository.backend.remove(FileType.INDEX, name)
        report.index_files_deleted += 1
        kill_point(f"deleted-index-{report.index_files_deleted}")

    index = Index()
    for pack_id, blobs in packs:
        index.add_pack(pack_id, blobs)
    index.index_file_ids = set(written)
    repository.index = index
    return report


__all__ = ["RepairIndexReport", "read_pack_header", "repair_index"]
