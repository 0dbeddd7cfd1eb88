"""Reading many blobs with few requests: blobs grouped by pack and offset into runs, one ranged
read per run.

On object storage every read is an HTTP round trip, so reading blob by blob costs one GET per
blob (about 1 MiB each); restic's copy and prune read a pack's wanted blobs together. A run may
step over a small gap (blobs not wanted) rather than pay for a second request, and is capped in
size. read_run streams a run (a blob held at a time); load_run holds it whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field

from lockstep.errors import IntegrityError
from lockstep.repository.blobs import BlobLocation, BlobType
from lockstep.repository.repository import Repository
from lockstep.storage.base import FileMissing, FileType

# Unwanted bytes a run reads through rather than start a new request: on S3 a request costs about
# what 1 MiB of transfer does; locally the page cache makes either cheap.
MAX_GAP = 1024 * 1024
# A run ends before it passes this size (a single larger blob is a run of its own): what a caller
# of load_run holds per run, and one request's worth of a streamed read_run.
MAX_RUN_BYTES = 16 * 1024 * 1024


@dataclass
class PackRun:
    """Blobs of one pack, by offset, read with one request from `start` to `end`."""

    pack_id: bytes
    blobs: list[tuple[BlobType, bytes, BlobLocation]] = field(default_factory=list)

    @property
    def start(self) -> int:
        return self.blobs[0][2].offset

    @property
    def end(self) -> int:
        return max(location.offset + location.length for _, _, location in self.blobs)


def plan_runs(
    blobs: Iterable[tuple[BlobType, bytes, BlobLocation]],
    max_gap: int = MAX_GAP,
    max_bytes: int = MAX_RUN_BYTES,
) -> list[PackRun]:
    """Group located blobs into runs: by pack, by offset, split at gaps over `max_gap` and
    before a run would grow past `max_bytes`."""
    ordered = sorted(blobs, key=lambda blob: (blob[2].pack_id, blob[2].offset))
    runs: list[PackRun] = []
    for blob in ordered:
        location = blob[2]
        current = runs[-1] if runs else None
        if (
            current is None
            or current.pack_id != location.pack_id
            or location.offset - current.end > max_gap
            or location.offset + location.length - current.start > max_bytes
        ):
            runs.append(PackRun(location.pack_id))
        runs[-1].blobs.append(blob)
    return runs


def load_run(repository: Repository, run: PackRun) -> memoryview:
    """The bytes of `run`'s pack from its start to its end, with one ranged read.
    Raises FileMissing: the caller knows what a missing pack means at that point."""
    start = run.start
    return memoryview(repository.backend.load(FileType.PACK, run.pack_id.hex(), start, run.end - start))


def sealed_blob(run: PackRun, data: memoryview, location: BlobLocation) -> memoryview:
    """One blob's sealed bytes out of what load_run read; IntegrityError when the pack ended early."""
    offset = location.offset - run.start
    sealed = data[offset : offset + location.length]
    if len(sealed) != location.length:
        raise _truncated(run)
    return sealed


def read_run(repository: Repository, run: PackRun) -> Iterator[tuple[BlobType, bytes, bytes]]:
    """Each blob of `run` as (type, ID, verified plaintext), from one ranged read of its pack,
    streamed: only the blob in hand is held, not the whole run (4 runs of 16 MiB in flight were
    most of a copy's memory)."""
    pieces: list[int] = []
    position = run.start
    for _, _, location in run.blobs:
        if location.offset < position:  # blobs that overlap (a damaged index): read the run whole
            yield from _read_run_whole(repository, run)
            return
        pieces.extend((location.offset - position, location.length))
        position = location.offset + location.length
    try:
        loaded = repository.backend.load_pieces(FileType.PACK, run.pack_id.hex(), run.start, pieces)
        with closing(loaded):
            for blob_type, blob_id, location in run.blobs:
                next(loaded, b"")  # the gap before the blob, not wanted
                sealed = next(loaded, b"")
                if len(sealed) != location.length:
                    raise _truncated(run)
                yield blob_type, blob_id, repository.decode_blob(blob_type, blob_id, location, sealed)
    except FileMissing as error:
        raise _missing(run) from error


def _read_run_whole(repository: Repository, run: PackRun) -> Iterator[tuple[BlobType, bytes, bytes]]:
    try:
        data = load_run(repository, run)
    except FileMissing as error:
        raise _missing(run) from error
    for blob_type, blob_id, location in run.blobs:
        yield blob_type, blob_id, repository.decode_blob(blob_type, blob_id, location, sealed_blob(run, data, location))


def _missing(run: PackRun) -> IntegrityError:
    return IntegrityError(f"pack {run.pack_id.hex()[:8]} is missing", "run `lockstep repo check`")


def _truncated(run: PackRun) -> IntegrityError:
    return IntegrityError(f"pack {run.pack_id.hex()[:8]} is shorter than the index says: it is truncated")
