"""An open repository: its key, config and index, and the blob read/write paths.

Writers call `prepare_blob` (hash, compress, seal: safe on many threads at once) and then
`add_prepared` in order on one thread; `flush` writes the open packs and the index file.
Packs always reach storage before the index that names them, and the index before any
snapshot that needs it (§14), so a crash at any moment leaves a readable repository.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import zstandard

from lockstep.errors import IntegrityError, NotFound, RepositoryNotFound, UsageError, WrongPassword
from lockstep.repository.blobs import BlobLocation, BlobType, PackedBlob
from lockstep.repository.crypto import AuthenticationFailed, Key
from lockstep.repository.index import MAX_BLOBS_PER_INDEX_FILE, Index, index_document
from lockstep.repository.keyfile import KeyFile, ScryptParameters
from lockstep.repository.pack import PackWriter
from lockstep.repository.polynomial import is_irreducible, random_polynomial
from lockstep.repository.snapshot import Snapshot
from lockstep.repository.tree import Tree
from lockstep.repository.unpacked import RepositoryConfig, decode_unpacked, decompress_frame, encode_unpacked
from lockstep.storage.base import Backend, FileMissing, FileType

DEFAULT_PACK_SIZE = 16 * 1024 * 1024
# Level 2 compresses this kind of data (SQL dumps, source) as well as 3, about 30 % faster
# (bench/backup_stream.py); restic's "auto" is roughly zstd level 3.
DEFAULT_COMPRESSION_LEVEL = 2
# ...and with a match table of 2^15 entries instead of level 2's 2^16. On the 725 MB shop dump's
# chunks: 2.10 CPU-s and 207.1 MB instead of 2.45 CPU-s and 203.7 MB, a backup 9 % faster for
# 1.7 % more bytes (still within 1.5 % of restic's level 3); 2^14 entries: 1.98 CPU-s, 231.6 MB.
# The smaller table stays in a core's L2 cache. Compression was the largest share of a backup's
# CPU time. Other levels keep zstd's own table sizes.
DEFAULT_LEVEL_HASH_LOG = 15
# New data in a backup into a repository that already holds data is mostly an increment (what
# changed since the last dump): it is what the repository grows by, and small, so it is worth
# compressing harder. The second backup of the shop dump adds 179 MB of new chunks: level 2
# stores 52.1 MB of them in 1.4 CPU-s, level 5 48.6 MB in 4.0 (level 3: 50.6 MB, 6: 46.6 MB in
# 5.4). ChunkPipeline decides which chunks count as an increment.
INCREMENT_COMPRESSION_LEVEL = 5
MAX_KEYS_TRIED = 20
# What to do when an index file cannot be read: the packs' headers describe every blob again.
REPAIR_INDEX_HINT = "run `lockstep repo repair index` to rebuild the index from the packs"


def _warn_on_stderr(message: str) -> None:
    print(f"lockstep: warning: {message}", file=sys.stderr, flush=True)


def new_compressor(level: int) -> zstandard.ZstdCompressor:
    """A compressor for `level`: the default level with its smaller match table, set for the
    large chunks that carry nearly all bytes (zstd still shrinks it for a small input); other
    levels exactly as zstd sets them, parameters picked by each input's size."""
    if level != DEFAULT_COMPRESSION_LEVEL:
        return zstandard.ZstdCompressor(level=level, write_content_size=True)
    parameters = zstandard.ZstdCompressionParameters.from_level(
        level, hash_log=DEFAULT_LEVEL_HASH_LOG, write_content_size=True
    )
    return zstandard.ZstdCompressor(compression_params=parameters)


@dataclass(frozen=True)
class PreparedBlob:
    """A blob ready to go into a pack: its ID, sealed bytes, and plaintext length if compressed."""

    blob_type: BlobType
    blob_id: bytes
    sealed: bytes
    uncompressed_length: int
    plaintext_length: int


class Repository:
    """A repository opened with a password. Not safe for concurrent writers on many threads,
    except `prepare_blob`, which is."""

    def __init__(self, backend: Backend, key: Key, config: RepositoryConfig, key_id: str) -> None:
        self.backend = backend
        self.key = key
        self.config = config
        self.key_id = key_id
        self.index = Index()
        self.pack_size = DEFAULT_PACK_SIZE
        self.compression_level = DEFAULT_COMPRESSION_LEVEL
        self._local = threading.local()
        self._packers = {BlobType.DATA: PackWriter(), BlobType.TREE: PackWriter()}
        self._pending_blobs: dict[BlobType, set[bytes]] = {BlobType.DATA: set(), BlobType.TREE: set()}
        self._unindexed_packs: list[tuple[bytes, list[PackedBlob]]] = []
        self._index_lock = threading.Lock()
        self._uploader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lockstep-upload")
        self._uploads: list[Future[None]] = []
        self.bytes_added = 0  # sealed bytes written to packs by this process
        self.blobs_added = 0
        self._commit_guards: list[Callable[[bool], None]] = []
        # Snapshots list_snapshots(skip_unreadable=True) left out, and where warnings go.
        self.unreadable_snapshots: dict[str, IntegrityError] = {}
        self.warn: Callable[[str], None] = _warn_on_stderr

    # --- opening and creating -----------------------------------------------------------

    @classmethod
    def init(
        cls,
        backend: Backend,
        password: str,
        scrypt: ScryptParameters | None = None,
        chunker_polynomial: int | None = None,
    ) -> Repository:
        """Create a new repository: a fresh master key, its key file, and the config. The chunker
        polynomial is random unless given (another repository's, so that the same data cuts into
        the same chunks in both and copies between them deduplicate)."""
        if not password:
            raise UsageError("an empty password is not allowed", "set LOCKSTEP_PASSWORD or use --password-file")
        backend.create()
        master_key = Key.generate()
        if chunker_polynomial is not None and not is_irreducible(chunker_polynomial):
            raise IntegrityError("the chunker polynomial to copy is not irreducible: the source's config is damaged")
        config = RepositoryConfig.new(random_polynomial() if chunker_polynomial is None else chunker_polynomial)
        key_file = KeyFile.create(master_key, password, scrypt)
        backend.save(FileType.KEY, key_file.storage_id, key_file.to_bytes())
        backend.save(FileType.CONFIG, "config", config.seal(master_key))
        return cls(backend, master_key, config, key_file.storage_id)

    @classmethod
    def open(cls, backend: Backend, password: str) -> Repository:
        """Open with the first key file that `password` unlocks (restic tries at most 20)."""
        try:
            sealed_config = backend.load(FileType.CONFIG, "config")
        except FileMissing as error:
            raise RepositoryNotFound(
                f"there is no repository at {backend.location}",
                "check the location, or create one with `lockstep repo init`",
            ) from error
        key_ids = [name for name, _ in backend.list(FileType.KEY)]
        if not key_ids:
            raise IntegrityError(f"the repository at {backend.location} has no key files")
        for key_id in key_ids[:MAX_KEYS_TRIED]:
            try:
                key_file = KeyFile.from_bytes(backend.load(FileType.KEY, key_id))
                master_key = key_file.open(password)
            except AuthenticationFailed:
                continue
            except (ValueError, KeyError) as error:
                raise IntegrityError(f"key file {key_id[:8]} is damaged: {error}") from error
            try:
                config = RepositoryConfig.open(master_key, sealed_config)
            except AuthenticationFailed as error:
                raise IntegrityError(
                    "the repository config does not match its key", "run `lockstep repo check`"
                ) from error
            except ValueError as error:
                raise IntegrityError(f"the repository config is unusable: {error}") from error
            if not is_irreducible(config.chunker_polynomial):
                raise IntegrityError("the repository's chunker polynomial is not irreducible")
            return cls(backend, master_key, config, key_id)
        raise WrongPassword(
            f"wrong password for the repository at {backend.location}",
            "check LOCKSTEP_PASSWORD, --password-file or --password-command",
        )

    def close(self) -> None:
        self._uploader.shutdown(wait=True)
        self.backend.close()

    # --- commit guards --------------------------------------------------------------------

    def add_commit_guard(self, guard: Callable[[bool], None]) -> None:
        """Call `guard(True)` before writing any index or snapshot file, and `guard(False)` (a
        quick look that must not block) before shipping each pack; a guard raises to stop the
        write. A lock whose re-check for competing locks runs in the background uses this."""
        self._commit_guards.append(guard)

    def remove_commit_guard(self, guard: Callable[[bool], None]) -> None:
        with contextlib.suppress(ValueError):
            self._commit_guards.remove(guard)

    def confirm_lock(self) -> None:
        """Wait for the commit guards (a lock's re-check in the background) before work outside
        the repository that must not begin under a competing lock: a restore, which reads the
        snapshot meanwhile, writes into a database or a directory only after this."""
        self._check_commit_guards(wait=True)

    def _check_commit_guards(self, wait: bool) -> None:
        for guard in list(self._commit_guards):
            guard(wait)

    # --- unpacked files -----------------------------------------------------------------

    def save_unpacked(self, file_type: FileType, document: Any) -> str:
        """Seal and store an index, snapshot or lock document; returns its storage ID."""
        if file_type in (FileType.INDEX, FileType.SNAPSHOT):
            self._check_commit_guards(wait=True)
        data = encode_unpacked(self.key, document, self.config.version)
        storage_id = hashlib.sha256(data).hexdigest()
        self.backend.save(file_type, storage_id, data)
        return storage_id

    def load_unpacked(self, file_type: FileType, storage_id: str) -> Any:
        """Load, verify and decode an index, snapshot or lock file."""
        data = self.backend.load(file_type, storage_id)
        if hashlib.sha256(data).hexdigest() != storage_id:
            raise IntegrityError(f"{file_type.value}/{storage_id[:8]} does not match its name: the file is damaged")
        try:
            return decode_unpacked(self.key, data, self.config.version)
        except AuthenticationFailed as error:
            raise IntegrityError(
                f"{file_type.value}/{storage_id[:8]} failed authentication: the file is damaged"
            ) from error
        except ValueError as error:
            raise IntegrityError(f"{file_type.value}/{storage_id[:8]} cannot be decoded: {error}") from error

    # --- index --------------------------------------------------------------------------

    def load_index(self) -> None:
        """Read every index file into memory (several at once, for object storage).

        One damaged index file stops this, on purpose: a command that writes or deletes must
        not act on a partial view of the repository. The error names the repair command."""
        names = [name for name, _ in self.backend.list(FileType.INDEX) if name not in self.index.index_file_ids]
        with ThreadPoolExecutor(max_workers=8) as pool:
            for name, document in zip(names, pool.map(self.load_index_file, names), strict=True):
                try:
                    self.index.merge_file(name, document)
                except (KeyError, ValueError, TypeError, AttributeError) as error:
                    raise IntegrityError(
                        f"index/{name[:8]} is not a valid index file: {type(error).__name__}: {error}",
                        REPAIR_INDEX_HINT,
                    ) from error

    def load_index_file(self, name: str) -> Any:
        """One index file's decoded document; a damaged one raises IntegrityError whose hint
        says how to rebuild the index."""
        try:
            return self.load_unpacked(FileType.INDEX, name)
        except IntegrityError as error:
            raise IntegrityError(error.message, REPAIR_INDEX_HINT) from error

    def write_index_files(
        self,
        packs: Iterable[tuple[bytes, list[PackedBlob]]],
        on_written: Callable[[int], None] | None = None,
    ) -> list[str]:
        """New index files for these whole packs, at most 50,000 blobs each (restic's limit);
        returns their storage IDs. `on_written(n)` runs after the n-th file is stored. The
        in-memory index is left to the caller."""
        written: list[str] = []

        def write(batch: list[tuple[bytes, list[PackedBlob]]]) -> None:
            written.append(self.save_unpacked(FileType.INDEX, index_document(batch)))
            if on_written is not None:
                on_written(len(written))

        batch: list[tuple[bytes, list[PackedBlob]]] = []
        count = 0
        for pack_id, blobs in packs:
            batch.append((pack_id, blobs))
            count += len(blobs)
            if count >= MAX_BLOBS_PER_INDEX_FILE:
                write(batch)
                batch, count = [], 0
        if batch:
            write(batch)
        return written

    def lookup_blob(self, blob_type: BlobType, blob_id: bytes) -> BlobLocation:
        location = self.index.lookup(blob_type, blob_id)
        if location is None:
            raise IntegrityError(
                f"{blob_type.value} blob {blob_id.hex()[:8]} is not in the index", "run `lockstep repo check`"
            )
        return location

    # --- reading blobs ------------------------------------------------------------------

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        decompressor: zstandard.ZstdDecompressor | None = getattr(self._local, "decompressor", None)
        if decompressor is None:
            decompressor = zstandard.ZstdDecompressor()
            self._local.decompressor = decompressor
        return decompressor

    def decode_blob(
        self,
        blob_type: BlobType,
        blob_id: bytes,
        location: BlobLocation,
        sealed: bytes | memoryview,
        check_id: bool = True,
    ) -> bytes:
        """Authenticate, decrypt, decompress and hash-check one blob's sealed bytes.

        `check_id=False` leaves the hash check to the caller, who must then compare the SHA-256
        of the result with the ID (read_blobs does so for many blobs at once, chunk_hashing.py)
        and raise `blob_id_mismatch` when they differ."""
        where = f"{blob_type.value} blob {blob_id.hex()[:8]} in pack {location.pack_id.hex()[:8]}"
        try:
            plaintext = self.key.open(sealed)
        except AuthenticationFailed as error:
            raise IntegrityError(
                f"{where} failed authentication: the pack is damaged", "run `lockstep repo check --read-data`"
            ) from error
        if location.uncompressed_length:
            try:
                plaintext = self._decompressor().decompress(plaintext, max_output_size=location.uncompressed_length)
            except zstandard.ZstdError:
                try:
                    plaintext = decompress_frame(plaintext)
                except zstandard.ZstdError as error:
                    raise IntegrityError(f"{where} cannot be decompressed: {error}") from error
            if len(plaintext) != location.uncompressed_length:
                raise IntegrityError(
                    f"{where} has {len(plaintext)} bytes, the index says {location.uncompressed_length}"
                )
        if check_id and hashlib.sha256(plaintext).digest() != blob_id:
            raise self.blob_id_mismatch(blob_type, blob_id, location)
        return plaintext

    def blob_id_mismatch(
        self, blob_type: BlobType, blob_id: bytes, location: BlobLocation | None = None
    ) -> IntegrityError:
        """The error for a blob whose bytes do not hash to its ID."""
        location = location or self.lookup_blob(blob_type, blob_id)
        return IntegrityError(
            f"{blob_type.value} blob {blob_id.hex()[:8]} in pack {location.pack_id.hex()[:8]} does not match its ID: "
            "the data is damaged",
            "run `lockstep repo check --read-data`",
        )

    def load_blob(self, blob_type: BlobType, blob_id: bytes, check_id: bool = True) -> bytes:
        """One blob's plaintext, verified (the ID check left to the caller without `check_id`)."""
        location = self.lookup_blob(blob_type, blob_id)
        try:
            sealed = self.backend.load(FileType.PACK, location.pack_id.hex(), location.offset, location.length)
        except FileMissing as error:
            raise IntegrityError(
                f"pack {location.pack_id.hex()[:8]} is missing", "run `lockstep repo check`"
            ) from error
        if len(sealed) != location.length:
            raise IntegrityError(f"pack {location.pack_id.hex()[:8]} is shorter than the index says: it is truncated")
        return self.decode_blob(blob_type, blob_id, location, sealed, check_id)

    def load_tree(self, tree_id: bytes) -> Tree:
        try:
            return Tree.decode(self.load_blob(BlobType.TREE, tree_id))
        except ValueError as error:
            raise IntegrityError(f"tree {tree_id.hex()[:8]} cannot be decoded: {error}") from error

    # --- writing blobs ------------------------------------------------------------------

    def _compressor(self, level: int | None = None) -> zstandard.ZstdCompressor:
        # One compressor per thread and level: sharing one between threads crashes the interpreter.
        compressors: dict[int, zstandard.ZstdCompressor] | None = getattr(self._local, "compressors", None)
        if compressors is None:
            compressors = self._local.compressors = {}
        level = self.compression_level if level is None else level
        compressor = compressors.get(level)
        if compressor is None:
            compressor = compressors[level] = new_compressor(level)
        return compressor

    def holds_data(self) -> bool:
        """Whether the index knows any data blob (a backup into it is likely an increment)."""
        return self.index.count(BlobType.DATA) > 0

    def is_known(self, blob_type: BlobType, blob_id: bytes) -> bool:
        """Stored already, or waiting in an open pack."""
        return self.index.has(blob_type, blob_id) or blob_id in self._pending_blobs[blob_type]

    def prepare_blob(
        self, blob_type: BlobType, data: bytes | memoryview, blob_id: bytes | None = None, level: int | None = None
    ) -> PreparedBlob | None:
        """Hash, compress (at `level`, or `compression_level`) and seal a blob; None if the
        repository has it already. Thread-safe."""
        if blob_id is None:
            blob_id = hashlib.sha256(data).digest()
        if self.is_known(blob_type, blob_id):
            return None
        length = len(data)
        uncompressed_length = 0
        payload: bytes | memoryview = data
        if self.config.version >= 2 and length > 0:
            compressed = self._compressor(level).compress(data)
            # restic's check never compares uncompressed_length with the real length, but its
            # restorer trusts it (§15.3). The frame declares its content size and zstd decoders
            # refuse output of any other size, so checking the declaration checks the length.
            if zstandard.frame_content_size(compressed) != length:
                raise IntegrityError("zstd wrote a frame with the wrong content size; nothing was stored")
            # Trees are always compressed, as restic does in v2 (its prune repacks packs holding
            # raw trees); data that zstd cannot shrink is stored raw, which v2 also allows.
            if blob_type is BlobType.TREE or len(compressed) < length:
                payload = compressed
                uncompressed_length = length
        return PreparedBlob(blob_type, blob_id, self.key.seal(payload), uncompressed_length, length)

    def add_prepared(self, blob: PreparedBlob) -> None:
        """Put a prepared blob into its type's open pack; ship the pack when it is full."""
        if self.is_known(blob.blob_type, blob.blob_id):
            return
        packer = self._packers[blob.blob_type]
        packer.add(blob.blob_type, blob.blob_id, blob.sealed, blob.uncompressed_length)
        self._pending_blobs[blob.blob_type].add(blob.blob_id)
        self.bytes_added += len(blob.sealed)
        self.blobs_added += 1
        if len(packer) >= self.pack_size:
            self._ship_pack(blob.blob_type)

    def save_blob(self, blob_type: BlobType, data: bytes) -> bytes:
        """Store one blob (if new) and return its ID."""
        blob_id = hashlib.sha256(data).digest()
        prepared = self.prepare_blob(blob_type, data, blob_id)
        if prepared is not None:
            self.add_prepared(prepared)
        return blob_id

    def save_tree(self, tree: Tree) -> bytes:
        return self.save_blob(BlobType.TREE, tree.encode())

    def _ship_pack(self, blob_type: BlobType) -> None:
        packer = self._packers[blob_type]
        if not packer.count:
            return
        self._check_commit_guards(wait=False)
        full_packer = packer
        self._packers[blob_type] = PackWriter()
        self._raise_failed_uploads()
        while len([upload for upload in self._uploads if not upload.done()]) >= 2:
            self._uploads[0].result()
            self._raise_failed_uploads()
        self._uploads.append(self._uploader.submit(self._upload_pack, full_packer))

    def _upload_pack(self, packer: PackWriter) -> None:
        """On an upload thread: seal the header, hash the pack, store it, then index it."""
        data, pack_id, blobs = packer.finish(self.key)
        self.backend.save(FileType.PACK, pack_id.hex(), data)
        with self._index_lock:
            # Into the index first, then out of "pending": is_known never misses the blob.
            self.index.add_pack(pack_id, blobs)
            for blob in blobs:
                self._pending_blobs[blob.blob_type].discard(blob.blob_id)
            self._unindexed_packs.append((pack_id, blobs))

    def _raise_failed_uploads(self) -> None:
        finished = [upload for upload in self._uploads if upload.done()]
        for upload in finished:
            upload.result()  # re-raises a failed upload's StorageError
        self._uploads = [upload for upload in self._uploads if not upload.done()]

    def flush(self) -> list[str]:
        """Write every open pack, wait for uploads, then write the index; returns index file IDs."""
        for blob_type in (BlobType.DATA, BlobType.TREE):
            self._ship_pack(blob_type)
        return self.flush_index()

    def flush_index(self) -> list[str]:
        """Wait for pending pack uploads, then record them in new index files."""
        for upload in self._uploads:
            upload.result()
        self._uploads = []
        written: list[str] = []
        # Packs in _unindexed_packs are only added once their upload finished without error.
        packs = self._take_uploaded_packs()
        batch: list[tuple[bytes, list[PackedBlob]]] = []
        count = 0
        indexed = 0
        try:
            for pack_id, blobs in packs:
                batch.append((pack_id, blobs))
                count += len(blobs)
                if count >= MAX_BLOBS_PER_INDEX_FILE:
                    written.append(self._write_index_file(batch))
                    indexed += len(batch)
                    batch, count = [], 0
            if batch:
                written.append(self._write_index_file(batch))
        except BaseException:
            # An index file failed (disk full): its packs are unindexed again, so that
            # discard_unindexed_packs removes them instead of leaving them to prune.
            with self._index_lock:
                self._unindexed_packs[:0] = packs[indexed:]
            raise
        return written

    def discard_unindexed_packs(self) -> None:
        """After a failed write: drop open packs and delete uploaded packs no index names yet,
        so an aborted backup leaves nothing behind (best effort; prune removes any remnant)."""
        for packer in self._packers.values():
            packer.finish_discard()
        for upload in self._uploads:
            with contextlib.suppress(Exception):
                upload.result()
        self._uploads = []
        for pack_id, blobs in self._take_uploaded_packs():
            try:
                self.backend.remove(FileType.PACK, pack_id.hex())
            except Exception:
                continue
            self.index.remove_pack(pack_id, blobs)
        for pending in self._pending_blobs.values():
            pending.clear()

    def _take_uploaded_packs(self) -> list[tuple[bytes, list[PackedBlob]]]:
        with self._index_lock:
            packs = self._unindexed_packs
            self._unindexed_packs = []
        return packs

    def _write_index_file(self, packs: list[tuple[bytes, list[PackedBlob]]]) -> str:
        index_id = self.save_unpacked(FileType.INDEX, index_document(packs))
        self.index.index_file_ids.add(index_id)
        return index_id

    # --- snapshots ----------------------------------------------------------------------

    def save_snapshot(self, snapshot: Snapshot) -> str:
        """Store a snapshot; everything it refers to must be flushed first."""
        snapshot.id = self.save_unpacked(FileType.SNAPSHOT, snapshot.to_document())
        return snapshot.id

    def load_snapshot(self, snapshot_id: str) -> Snapshot:
        """One snapshot; IntegrityError when its file is damaged or not a snapshot at all."""
        document = self.load_unpacked(FileType.SNAPSHOT, snapshot_id)
        try:
            return Snapshot.from_document(document, snapshot_id)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise IntegrityError(
                f"snapshots/{snapshot_id[:8]} is not a valid snapshot: {error!r}", "run `lockstep repo check`"
            ) from error

    def list_snapshots(self, skip_unreadable: bool = False) -> list[Snapshot]:
        """Every snapshot, oldest first.

        A snapshot file that cannot be read or verified raises IntegrityError, which is what
        anything that deletes data (forget, prune) needs: an unreadable snapshot may still need
        its data. Readers pass `skip_unreadable`: one damaged snapshot file must not stop the
        restore of every other snapshot (restic lists and restores the rest too). What was
        skipped is kept in `unreadable_snapshots` and reported through `warn`. A snapshot
        deleted while the list was read (a concurrent forget) is left out either way."""
        names = [name for name, _ in self.backend.list(FileType.SNAPSHOT)]

        def load(name: str) -> Snapshot | None:
            try:
                return self.load_snapshot(name)
            except FileMissing:
                return None
            except IntegrityError as error:
                if not skip_unreadable:
                    raise
                if name not in self.unreadable_snapshots:
                    self.unreadable_snapshots[name] = error
                    self.warn(f"snapshot {name[:8]} is unreadable and was skipped ({error.message})")
                return None

        with ThreadPoolExecutor(max_workers=8) as pool:
            snapshots = [snapshot for snapshot in pool.map(load, names) if snapshot is not None]
        return sorted(snapshots, key=lambda snapshot: (snapshot.time_ns, snapshot.id))

    def check_unreadable_reference(self, reference: str) -> None:
        """Raise the damage found when `reference` (an ID prefix) names a snapshot that
        list_snapshots skipped as unreadable, instead of a misleading "no such snapshot"."""
        wanted = reference.strip().lower()
        if not wanted or wanted == "latest":
            return
        for snapshot_id, error in self.unreadable_snapshots.items():
            if snapshot_id.startswith(wanted):
                raise IntegrityError(
                    f"snapshot {snapshot_id[:8]} cannot be read: {error.message}",
                    "run `lockstep repo check`; other snapshots can still be restored",
                ) from error

    def find_snapshot(self, reference: str, snapshots: list[Snapshot] | None = None) -> Snapshot:
        """Resolve `latest` or a unique prefix of a snapshot ID (unreadable snapshots skipped,
        with a warning, when the list is read here)."""
        snapshots = self.list_snapshots(skip_unreadable=True) if snapshots is None else snapshots
        if reference == "latest":
            if not snapshots and self.unreadable_snapshots:
                raise IntegrityError(
                    f"no snapshot can be read: all {len(self.unreadable_snapshots)} snapshot files are damaged",
                    "run `lockstep repo check`",
                )
            if not snapshots:
                raise NotFound(f"the repository at {self.backend.location} has no snapshots yet")
            return snapshots[-1]
        matches = [snapshot for snapshot in snapshots if snapshot.id.startswith(reference.lower())]
        if not matches:
            self.check_unreadable_reference(reference)
            raise NotFound(f"no snapshot matches {reference!r}", "list them with `lockstep repo snapshots`")
        if len(matches) > 1:
            listed = ", ".join(snapshot.short_id for snapshot in matches[:5])
            raise NotFound(
                f"{reference!r} matches {len(matches)} snapshots ({listed})", "give more characters of the ID"
            )
        return matches[0]

    def walk(self, tree_id: bytes, prefix: bytes = b"") -> Iterator[tuple[bytes, Any]]:
        """Depth-first (path, node) over a tree, parents before children."""
        for node in self.load_tree(tree_id).nodes:
            path = prefix + b"/" + node.name
            yield path, node
            if node.type == "dir" and node.subtree:
                yield from self.walk(node.subtree, path)


__all__ = ["PreparedBlob", "Repository"]
