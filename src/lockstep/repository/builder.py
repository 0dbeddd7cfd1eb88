"""Build one snapshot from several sources: byte streams, in-memory bytes, files and directories.

A coordinated snapshot holds a database dump next to config files and a manifest, all under one
snapshot ID, so restic can restore any of it. The builder lays the pieces out as a directory
tree (`/databases/main.dump`, `/files/config/app.env`, `/manifest.json`, ...) and writes the
snapshot only when `commit` is called; `abort` (or leaving the `with` block on an error) removes
the packs written so far, so a failed source never leaves a snapshot or orphaned data behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from lockstep import __version__
from lockstep.errors import SourceError, UsageError
from lockstep.repository.archiver import DEFAULT_WORKERS, Archiver, ChunkPipeline, HashingReader, ProgressCallback
from lockstep.repository.gojson import MODE_DIR, format_time_ns
from lockstep.repository.identity import current_user
from lockstep.repository.repository import Repository
from lockstep.repository.snapshot import Snapshot
from lockstep.repository.tree import Node, Tree


@dataclass(frozen=True)
class StoredFile:
    """What was stored for one source: its path in the snapshot, its size, and two checksums.

    `blobs_sha256` is the SHA-256 of its blob IDs in order, each the SHA-256 of a piece of the
    content, so it pins every byte and costs nothing more; `sha256`, of the bytes themselves,
    is a second full pass over them (None when not asked for, as for database dumps: 2.4
    CPU-seconds per GB on a CPU without SHA instructions).
    """

    path: str
    size: int
    sha256: str | None
    blobs_sha256: str


@dataclass
class _Directory:
    """A directory of the snapshot being built: child directories and finished nodes, and the
    metadata of the directory on disk it stands for, if any (`add_directory`)."""

    directories: dict[str, _Directory] = field(default_factory=dict)
    nodes: dict[bytes, Node] = field(default_factory=dict)
    metadata: Node | None = None


def blob_list_sha256(content: list[bytes]) -> str:
    """SHA-256 of a file's blob IDs in order: a checksum of its content that needs no reading."""
    return hashlib.sha256(b"".join(content)).hexdigest()


def _split(path: str) -> list[str]:
    parts = [part for part in path.strip("/").split("/") if part]
    if not parts or any(part in (".", "..") for part in parts):
        raise UsageError(f"invalid path in snapshot: {path!r}")
    return parts


class SnapshotBuilder:
    """Collects sources into one snapshot; use as a context manager so failures clean up."""

    def __init__(
        self, repository: Repository, progress: ProgressCallback | None = None, workers: int = DEFAULT_WORKERS
    ) -> None:
        self.repository = repository
        self._archiver = Archiver(repository, progress=progress, workers=workers)
        self._pipeline = ChunkPipeline(repository, workers)
        self._root = _Directory()
        self._time = format_time_ns(time.time_ns())
        self._done = False
        self.stored: list[StoredFile] = []

    def __enter__(self) -> SnapshotBuilder:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if not self._done:
            self.abort()

    def _place(self, path: str, node: Node) -> None:
        *parents, name = _split(path)
        directory = self._root
        for part in parents:
            directory = directory.directories.setdefault(part, _Directory())
        key = name.encode("utf-8")
        if key in directory.nodes or name in directory.directories:
            raise UsageError(f"{path} is added to the snapshot twice")
        node.name = key
        directory.nodes[key] = node

    def _file_node(self, size: int, content: list[bytes], mode: int) -> Node:
        return Node(
            name=b"",
            type="file",
            mode=mode,
            mtime=self._time,
            atime=self._time,
            ctime=self._time,
            uid=os.getuid(),
            gid=os.getgid(),
            size=size,
            content=content,
        )

    def add_stream(
        self,
        path: str,
        stream: IO[bytes],
        *,
        finished_cleanly: Callable[[], None] | None = None,
        allow_empty: bool = False,
        mode: int = 0o600,
        hash_bytes: bool = True,
    ) -> StoredFile:
        """Store a stream as the file at `path`. `finished_cleanly` runs after the stream ends and
        may raise (e.g. the dump tool exited non-zero): then nothing of it counts. Without
        `hash_bytes` the result's `sha256` is None (its `blobs_sha256` is always there)."""
        reader = HashingReader(stream) if hash_bytes else None
        source: IO[bytes] = stream if reader is None else reader  # type: ignore[assignment]
        content, size = self._archiver.store_stream(self._pipeline, source)
        if finished_cleanly is not None:
            finished_cleanly()
        if size == 0 and not allow_empty:
            raise SourceError(
                f"{path}: the stream was empty; no snapshot was written", "check the command that feeds it"
            )
        self._pipeline.drain()
        self._place(path, self._file_node(size, content, mode))
        stored = StoredFile(
            "/" + "/".join(_split(path)),
            size,
            None if reader is None else reader.digest.hexdigest(),
            blob_list_sha256(content),
        )
        self.stored.append(stored)
        return stored

    def add_bytes(self, path: str, data: bytes, mode: int = 0o600) -> StoredFile:
        """Store `data` as the file at `path` (a manifest, a commit ID, a diff)."""
        import io

        return self.add_stream(path, io.BytesIO(data), allow_empty=True, mode=mode)

    def add_path(self, path: str, source: Path) -> int:
        """Store a file or a whole directory tree from disk at `path`, with its metadata; returns
        the bytes of the files stored (their sizes, before deduplication and compression)."""
        read_before = self._archiver.summary.bytes_read
        raw_source = os.fsencode(os.path.abspath(source))
        node = self._archiver.node_for_path(raw_source, _split(path)[-1].encode("utf-8"))
        if node is None:
            raise SourceError(f"{source} cannot be read", "check that it exists and is readable")
        if node.type == "dir":
            node.subtree = self._archiver.save_directory(self._pipeline, raw_source)
        elif node.type == "file":
            self._archiver.fill_content(self._pipeline, raw_source, node)
        self._place(path, node)
        return self._archiver.summary.bytes_read - read_before

    def add_directory(self, path: str, source: Path) -> None:
        """Give the directory at `path`, whose entries are added one by one (a tree stored without
        some of its entries), the metadata of `source` on disk: its mode, owner and times, as
        `add_path` would. Without it the builder's own 0700 directory stood in for it, and a
        release restored from the snapshot came back unreadable to the web server's user."""
        node = self._archiver.node_for_path(os.fsencode(os.path.abspath(source)), _split(path)[-1].encode("utf-8"))
        if node is None or node.type != "dir":
            raise SourceError(f"{source} cannot be read as a directory", "check that it exists and is readable")
        *parents, name = _split(path)
        directory = self._root
        for part in parents:
            directory = directory.directories.setdefault(part, _Directory())
        if name.encode("utf-8") in directory.nodes:
            raise UsageError(f"{path} is added to the snapshot twice")
        directory.directories.setdefault(name, _Directory()).metadata = node

    def describe_paths(self) -> None:
        """From now on keep what `add_path` stores in memory, for `stored_below`: its trees, and
        the SHA-256 of each file's bytes (hashed as they stream in, no second read)."""
        if self._archiver.kept_trees is None:
            self._archiver.kept_trees = {}
            self._archiver.hashed_files = []

    def stored_below(self, path: str) -> Iterator[tuple[bytes, Node]]:
        """Every node stored below `path` so far, with its path relative to `path`, read from
        memory (the snapshot is not written yet): what was added with `add_path` after
        `describe_paths`, and the directories the builder made on the way to it."""
        self._pipeline.drain()
        *parents, name = _split(path)
        directory = self._root
        for part in parents:
            directory = directory.directories[part]
        if name in directory.directories:
            yield from self._walk_directory(directory.directories[name], b"")
            return
        node = directory.nodes[name.encode("utf-8")]
        if node.subtree is not None:
            yield from self._walk_tree(node.subtree, b"")

    def _walk_directory(self, directory: _Directory, prefix: bytes) -> Iterator[tuple[bytes, Node]]:
        for key, node in directory.nodes.items():
            yield prefix + key, node
            if node.type == "dir" and node.subtree is not None:
                yield from self._walk_tree(node.subtree, prefix + key + b"/")
        for name, child in directory.directories.items():
            key = name.encode("utf-8")
            yield prefix + key, self._directory_node(name, child, None)
            yield from self._walk_directory(child, prefix + key + b"/")

    def _walk_tree(self, tree_id: bytes, prefix: bytes) -> Iterator[tuple[bytes, Node]]:
        kept = self._archiver.kept_trees
        if kept is None or tree_id not in kept:
            raise UsageError("stored_below needs describe_paths before the paths are added")
        for node in kept[tree_id].nodes:
            yield prefix + node.name, node
            if node.type == "dir" and node.subtree is not None:
                yield from self._walk_tree(node.subtree, prefix + node.name + b"/")

    def hashed_file_sha256(self) -> dict[bytes, str]:
        """The SHA-256 of each file of several chunks added since `describe_paths`, by its blob
        IDs joined (a file of one chunk has its SHA-256 as its blob ID)."""
        self._pipeline.drain()
        return {b"".join(content): digest for content, digest in self._archiver.hashed_files or []}

    def _directory_node(self, name: str, directory: _Directory, subtree: bytes | None) -> Node:
        """A directory on the way to what was added: the one on disk it stands for (`add_directory`),
        or one the builder makes (e.g. /databases), private to the snapshot's owner."""
        if directory.metadata is not None:
            return dataclasses.replace(directory.metadata, subtree=subtree)
        return Node(
            name=name.encode("utf-8"),
            type="dir",
            mode=MODE_DIR | 0o700,
            mtime=self._time,
            atime=self._time,
            ctime=self._time,
            uid=os.getuid(),
            gid=os.getgid(),
            subtree=subtree,
        )

    def _save(self, directory: _Directory) -> bytes:
        nodes = list(directory.nodes.values())
        for name, child in directory.directories.items():
            nodes.append(self._directory_node(name, child, self._save(child)))
        return self.repository.save_tree(Tree(nodes))

    def commit(self, paths: Iterable[str], tags: Iterable[str] = (), hostname: str | None = None) -> Snapshot:
        """Write the trees, flush packs and index, then the snapshot; returns it (with its ID)."""
        self._pipeline.drain()
        tree_id = self._save(self._root)
        self.repository.flush()
        snapshot = Snapshot(
            time=self._time,
            tree=tree_id,
            paths=list(paths),
            hostname=hostname if hostname is not None else socket.gethostname(),
            username=current_user(),
            uid=os.getuid(),
            gid=os.getgid(),
            tags=list(tags),
            program_version=f"lockstep {__version__}",
        )
        self.repository.save_snapshot(snapshot)
        self._done = True
        self._pipeline.close()
        return snapshot

    def abort(self) -> None:
        """Forget everything added: remove the packs written so far; no snapshot is written."""
        self._done = True
        self._pipeline.close()
        self.repository.discard_unindexed_packs()
