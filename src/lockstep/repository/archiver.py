"""Backups: turn a byte stream or directory trees into blobs, trees and a snapshot.

Chunks are hashed, compressed and sealed on worker threads (all of those release the GIL)
while the main thread reads and cuts the next ones; results are consumed in order, so a
file's content list and the packs come out deterministic in content, and memory stays
bounded by the number of chunks in flight.
"""

from __future__ import annotations

import base64
import errno
import grp
import hashlib
import os
import pwd
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO

from lockstep import __version__
from lockstep.errors import SourceError, UsageError
from lockstep.repository import chunk_hashing
from lockstep.repository.blobs import BlobType
from lockstep.repository.chunker import Chunker
from lockstep.repository.gojson import MODE_DIR, format_time_ns, go_file_mode
from lockstep.repository.identity import current_user
from lockstep.repository.repository import INCREMENT_COMPRESSION_LEVEL, PreparedBlob, Repository
from lockstep.repository.snapshot import Snapshot
from lockstep.repository.tree import Node, Tree

ProgressCallback = Callable[[int], None]

# restic's node type for each kind of file (st_mode's format bits).
NODE_TYPE_BY_FORMAT = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFBLK: "dev",
    stat.S_IFCHR: "chardev",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}

# One more worker than cores: while one waits (on the GIL, or on a full upload queue) the cores
# stay busy. Measured on 2 cores: 2 workers 3.06 s, 3 workers 2.22 s for a 725 MB dump.
DEFAULT_WORKERS = (os.cpu_count() or 2) + 1
# New data an increment compresses at INCREMENT_COMPRESSION_LEVEL: this much, plus a quarter of
# what the backup reads (the second backup of the 725 MB shop dump adds 179 MB: all of it).
INCREMENT_ALLOWANCE = 64 * 1024 * 1024


@dataclass
class BackupSummary:
    """What one backup did, for the report line and --json."""

    snapshot_id: str = ""
    files: int = 0
    directories: int = 0
    bytes_read: int = 0
    bytes_added: int = 0
    blobs_added: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


class HashingReader:
    """Wraps a stream so the bytes that pass through are hashed on the way (one pass)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.digest = hashlib.sha256()

    def readinto(self, buffer: memoryview) -> int:
        count: int = self._stream.readinto(buffer)  # type: ignore[attr-defined]
        if count:
            self.digest.update(buffer[:count])
        return count

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.digest.update(data)
        return data


class ChunkPipeline:
    """Prepares blobs on a thread pool and hands results back in submission order.

    Where the CPU lacks SHA instructions, chunks are first collected in batches and their IDs
    computed together, side by side (chunk_hashing.py), on the submitting thread; otherwise
    each worker hashes its own chunk.

    In a repository that already held data when the backup began, new chunks are compressed
    harder (INCREMENT_COMPRESSION_LEVEL): such a backup is mostly an increment, and what it adds
    is what the repository grows by. The harder level is kept to the first INCREMENT_ALLOWANCE
    bytes of new data plus a quarter of the data read, so a backup that is not an increment
    after all (all new) pays for it on its first ~85 MB only.
    """

    def __init__(self, repository: Repository, workers: int = DEFAULT_WORKERS, batch: int | None = None) -> None:
        self.repository = repository
        self._increment = repository.holds_data()
        self._bytes_taken = 0
        self._new_bytes = 0
        self._budget_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lockstep-chunk")
        self._window: deque[tuple[Future[tuple[bytes, PreparedBlob | None]], Callable[[bytes], None]]] = deque()
        self._batch = chunk_hashing.BATCH if batch is None else batch
        self._unhashed: list[tuple[bytes | memoryview, Callable[[bytes], None]]] = []
        self._max_in_flight = max(workers * 3, self._batch + workers)
        self._submitted = 0
        self._completed = 0

    def submitted(self) -> int:
        """Chunks taken so far (the chunker reuses a block once its chunks completed)."""
        return self._submitted

    def wait_completed(self, count: int) -> None:
        """Complete results in order until the first `count` submitted chunks are done."""
        if self._unhashed:
            self._hash_batch()
        while self._completed < count and self._window:
            self._complete_oldest()

    def _prepare(self, data: bytes | memoryview, blob_id: bytes | None = None) -> tuple[bytes, PreparedBlob | None]:
        if blob_id is None:
            blob_id = hashlib.sha256(data).digest()
        if self.repository.is_known(BlobType.DATA, blob_id):  # before the budget: known chunks cost none
            return blob_id, None
        return blob_id, self.repository.prepare_blob(BlobType.DATA, data, blob_id, self._level_for_new(len(data)))

    def _level_for_new(self, size: int) -> int | None:
        """INCREMENT_COMPRESSION_LEVEL while the increment's budget lasts; None: the default."""
        if not self._increment:
            return None
        with self._budget_lock:
            self._new_bytes += size
            within = self._new_bytes <= INCREMENT_ALLOWANCE + self._bytes_taken // 4
        return INCREMENT_COMPRESSION_LEVEL if within else None

    def submit(self, data: bytes | memoryview, on_done: Callable[[bytes], None]) -> None:
        self._submitted += 1
        self._bytes_taken += len(data)
        if self._batch > 1:
            self._unhashed.append((data, on_done))
            if len(self._unhashed) >= self._batch:
                self._hash_batch()
            return
        self._start(data, None, on_done)

    def _start(self, data: bytes | memoryview, blob_id: bytes | None, on_done: Callable[[bytes], None]) -> None:
        while len(self._window) >= self._max_in_flight:
            self._complete_oldest()
        self._window.append((self._pool.submit(self._prepare, data, blob_id), on_done))

    def _hash_batch(self) -> None:
        batch, self._unhashed = self._unhashed, []
        blob_ids = chunk_hashing.blob_ids([data for data, _ in batch])
        for (data, on_done), blob_id in zip(batch, blob_ids, strict=True):
            self._start(data, blob_id, on_done)

    def _complete_oldest(self) -> None:
        future, on_done = self._window.popleft()
        self._completed += 1
        blob_id, prepared = future.result()
        if prepared is not None:
            self.repository.add_prepared(prepared)
        on_done(blob_id)

    def drain(self) -> None:
        if self._unhashed:
            self._hash_batch()
        while self._window:
            self._complete_oldest()

    def close(self) -> None:
        self._unhashed.clear()
        for future, _ in self._window:
            future.cancel()
        self._window.clear()
        self._pool.shutdown(wait=True)


@lru_cache(maxsize=1024)
def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@lru_cache(maxsize=1024)
def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


class Archiver:
    """Writes one snapshot into an open, locked repository."""

    def __init__(
        self, repository: Repository, progress: ProgressCallback | None = None, workers: int = DEFAULT_WORKERS
    ) -> None:
        self.repository = repository
        self.chunker = Chunker(repository.config.chunker_polynomial)
        self.progress = progress or (lambda _: None)
        self.summary = BackupSummary()
        self._workers = workers
        # Set by a caller that describes what it stored (SnapshotBuilder.describe_paths): every
        # tree saved, so the stored nodes can be listed before the snapshot is written, and the
        # SHA-256 of each file of several chunks, hashed on the way in, beside its content (whose
        # blob IDs are filled in as the pipeline completes). Every file is hashed, since how many
        # chunks it makes is known only once read; one of one chunk has its ID as its SHA-256.
        self.kept_trees: dict[bytes, Tree] | None = None
        self.hashed_files: list[tuple[list[bytes], str]] | None = None

    def store_stream(
        self, pipeline: ChunkPipeline, stream: IO[bytes], map_large_file: bool = False
    ) -> tuple[list[bytes], int]:
        content: list[bytes] = []
        size = 0
        for chunk in self.chunker.chunks(stream, pipeline, map_large_file=map_large_file):
            position = len(content)
            content.append(b"")

            def place(blob_id: bytes, position: int = position) -> None:
                content[position] = blob_id

            pipeline.submit(chunk, place)
            size += len(chunk)
            self.summary.bytes_read += len(chunk)
            self.progress(len(chunk))
        return content, size

    # --- stdin ----------------------------------------------------------------------------

    def backup_stream(
        self,
        stream: IO[bytes],
        filename: str,
        tags: Iterable[str] = (),
        hostname: str | None = None,
        allow_empty: bool = False,
        finished_cleanly: Callable[[], None] | None = None,
    ) -> BackupSummary:
        """Store a stream as the file /FILENAME. `finished_cleanly` may raise to refuse the result
        (e.g. the producing command exited non-zero): then no snapshot is written."""
        started = time.monotonic()
        filename = filename.strip("/")
        if not filename or any(part in ("", ".", "..") for part in filename.split("/")):
            raise UsageError(f"invalid --stdin-filename {filename!r}", "give a plain name such as db.sql")
        now = format_time_ns(time.time_ns())
        pipeline = ChunkPipeline(self.repository, self._workers)
        try:
            # A file given as stdin is mapped, not read (a copy less); files in a directory
            # backup are not, because a log rotated meanwhile would kill the process (SIGBUS).
            content, size = self.store_stream(pipeline, stream, map_large_file=True)
            pipeline.drain()
        finally:
            pipeline.close()
        if finished_cleanly is not None:
            finished_cleanly()
        if size == 0 and not allow_empty:
            raise SourceError(
                "the stream was empty; no snapshot was written", "check the command or file that feeds it"
            )
        parts = filename.split("/")
        node = Node(
            name=parts[-1].encode("utf-8"),
            type="file",
            mode=0o644,
            mtime=now,
            atime=now,
            ctime=now,
            uid=os.getuid(),
            gid=os.getgid(),
            size=size,
            content=content,
        )
        tree_id = self.repository.save_tree(Tree([node]))
        for directory in reversed(parts[:-1]):
            directory_node = Node(
                name=directory.encode("utf-8"),
                type="dir",
                mode=MODE_DIR | 0o755,
                mtime=now,
                atime=now,
                ctime=now,
                uid=os.getuid(),
                gid=os.getgid(),
                subtree=tree_id,
            )
            tree_id = self.repository.save_tree(Tree([directory_node]))
        self.summary.files = 1
        return self._finish(tree_id, ["/" + filename], tags, hostname, now, started)

    # --- directory trees ------------------------------------------------------------------

    def backup_paths(
        self, paths: Iterable[str | Path], tags: Iterable[str] = (), hostname: str | None = None
    ) -> BackupSummary:
        """Store files and directories under their absolute paths, as restic does."""
        started = time.monotonic()
        now = format_time_ns(time.time_ns())
        absolute = sorted({os.path.abspath(os.fsencode(path)) for path in paths})
        for path in absolute:
            if not os.path.lexists(path):
                raise SourceError(f"{os.fsdecode(path)} does not exist", "check the path and try again")
        pipeline = ChunkPipeline(self.repository, self._workers)
        try:
            root_tree = self._tree_for_targets(
                pipeline, b"/", [path for path in absolute if path != b"/"], b"/" in absolute
            )
        finally:
            pipeline.close()
        return self._finish(root_tree, [os.fsdecode(path) for path in absolute], tags, hostname, now, started)

    def _tree_for_targets(self, pipeline: ChunkPipeline, directory: bytes, targets: list[bytes], whole: bool) -> bytes:
        """The tree for `directory`: all of it if `whole`, else only the chains down to targets."""
        if whole:
            return self.save_directory(pipeline, directory)
        children: dict[bytes, list[bytes]] = {}
        complete: set[bytes] = set()
        for target in targets:
            relative = os.path.relpath(target, directory)
            first = relative.split(b"/", 1)[0]
            child = os.path.join(directory, first)
            if child == target:
                complete.add(first)
            children.setdefault(first, []).append(target)
        nodes = []
        for name, child_targets in children.items():
            child_path = os.path.join(directory, name)
            node = self.node_for_path(child_path, name)
            if node is None:
                continue
            if node.type == "dir":
                node.subtree = self._tree_for_targets(pipeline, child_path, child_targets, name in complete)
                node.size = 0
            elif node.type == "file":
                self.fill_content(pipeline, child_path, node)
            nodes.append(node)
        pipeline.drain()
        return self.repository.save_tree(Tree(nodes))

    def save_directory(self, pipeline: ChunkPipeline, path: bytes) -> bytes:
        self.summary.directories += 1
        nodes = []
        try:
            entries = sorted(os.scandir(path), key=lambda entry: entry.name)
        except OSError as error:
            self.summary.warnings.append(f"cannot read directory {os.fsdecode(path)}: {error.strerror}")
            entries = []
        for entry in entries:
            child_path = os.path.join(path, entry.name)
            node = self.node_for_path(child_path, entry.name)
            if node is None:
                continue
            if node.type == "dir":
                node.subtree = self.save_directory(pipeline, child_path)
            elif node.type == "file":
                self.fill_content(pipeline, child_path, node)
            nodes.append(node)
        pipeline.drain()
        tree = Tree(nodes)
        tree_id = self.repository.save_tree(tree)
        if self.kept_trees is not None:
            self.kept_trees[tree_id] = tree
        return tree_id

    def fill_content(self, pipeline: ChunkPipeline, path: bytes, node: Node) -> None:
        self.summary.files += 1
        reader: HashingReader | None = None
        try:
            with open(path, "rb") as handle:
                if self.hashed_files is not None:
                    reader = HashingReader(handle)
                source: IO[bytes] = handle if reader is None else reader  # type: ignore[assignment]
                content, size = self.store_stream(pipeline, source)
        except OSError as error:
            self.summary.warnings.append(f"cannot read {os.fsdecode(path)}: {error.strerror}")
            node.content = []
            node.size = 0
            node.error = error.strerror or "unreadable"
            return
        node.content = content
        node.size = size
        if reader is not None and self.hashed_files is not None and len(content) > 1:
            self.hashed_files.append((content, reader.digest.hexdigest()))

    def node_for_path(self, path: bytes, name: bytes) -> Node | None:
        try:
            info = os.lstat(path)
        except OSError as error:
            self.summary.warnings.append(f"cannot stat {os.fsdecode(path)}: {error.strerror}")
            return None
        mode = info.st_mode
        node_type = NODE_TYPE_BY_FORMAT.get(stat.S_IFMT(mode))
        if node_type is None:
            return None
        mtime = format_time_ns(info.st_mtime_ns)
        node = Node(
            name=name,
            type=node_type,
            mode=go_file_mode(mode),
            mtime=mtime,
            atime=mtime,  # restic stores mtime here unless --with-atime
            ctime=format_time_ns(info.st_ctime_ns),
            uid=info.st_uid,
            gid=info.st_gid,
            user=_user_name(info.st_uid),
            group=_group_name(info.st_gid),
            inode=info.st_ino,
            device_id=info.st_dev,
        )
        if node_type != "dir":
            node.links = info.st_nlink
        if node_type == "file":
            node.size = info.st_size
        elif node_type == "symlink":
            target = os.readlink(path)
            try:
                node.linktarget = target.decode("utf-8")
            except UnicodeDecodeError:
                node.linktarget = target.decode("utf-8", "replace")
                node.linktarget_raw = base64.b64encode(target).decode("ascii")
        elif node_type in ("dev", "chardev"):
            node.device = info.st_rdev
        node.extended_attributes = self._extended_attributes(path)
        return node

    def _extended_attributes(self, path: bytes) -> list[dict[str, str]] | None:
        """The node's extended attributes as restic 0.14 records them: in the order the kernel
        lists them, the value base64-encoded; none on a file system without them."""
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError as error:
            if error.errno not in (errno.ENOTSUP, errno.ENODATA):
                self.summary.warnings.append(
                    f"cannot list the extended attributes of {os.fsdecode(path)}: {error.strerror}"
                )
            return None
        attributes = []
        for name in names:
            try:
                value = os.getxattr(path, name, follow_symlinks=False)
            except OSError as error:
                self.summary.warnings.append(
                    f"cannot read extended attribute {name} of {os.fsdecode(path)}: {error.strerror}"
                )
                continue
            attributes.append({"name": name, "value": base64.b64encode(value).decode("ascii")})
        return attributes or None

    # --- the end of every backup ----------------------------------------------------------

    def _finish(
        self, tree_id: bytes, paths: list[str], tags: Iterable[str], hostname: str | None, now: str, started: float
    ) -> BackupSummary:
        self.repository.flush()
        snapshot = Snapshot(
            time=now,
            tree=tree_id,
            paths=paths,
            hostname=hostname if hostname is not None else socket.gethostname(),
            username=current_user(),
            uid=os.getuid(),
            gid=os.getgid(),
            tags=list(tags),
            program_version=f"lockstep {__version__}",
        )
        self.summary.snapshot_id = self.repository.save_snapshot(snapshot)
        self.summary.bytes_added = self.repository.bytes_added
        self.summary.blobs_added = self.repository.blobs_added
        self.summary.seconds = time.monotonic() - started
        return self.summary
