"""Bring snapshots back: to a directory (`restore`) or as a byte stream (`dump`).

Every blob is authenticated and hash-checked as it is read; a damaged blob stops the restore
with the pack and blob named, it is never written out silently.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import stat
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from lockstep.errors import IntegrityError, NotFound, StorageError
from lockstep.repository import chunk_hashing
from lockstep.repository.blobs import BlobType
from lockstep.repository.gojson import parse_time_ns, unix_permissions
from lockstep.repository.repository import Repository
from lockstep.repository.restore_warnings import ONLY_ROOT_CREATES_DEVICES, RestoreWarning
from lockstep.repository.snapshot import Snapshot
from lockstep.repository.tree import Node

ProgressCallback = Callable[[int], None]


@dataclass
class RestoreSummary:
    files: int = 0
    directories: int = 0
    bytes_written: int = 0
    warnings: list[RestoreWarning] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # "path: why", what keep_going skipped

    def to_document(self) -> dict[str, object]:
        return {
            "files": self.files,
            "directories": self.directories,
            "bytes_written": self.bytes_written,
            "warnings": [str(warning) for warning in self.warnings],
            "damaged": self.damaged,
        }


def read_blobs(repository: Repository, blob_ids: list[bytes], workers: int = 4) -> Iterator[bytes]:
    """Yield the plaintext of data blobs in order, fetching a few ahead on threads.

    Each blob is checked against its ID: by the loading thread, or, where chunk_hashing hashes
    many chunks at once faster, here, a batch at a time, before any of the batch is yielded."""
    if chunk_hashing.BATCH > 1 and len(blob_ids) > 1:
        yield from _read_blobs_in_batches(repository, blob_ids, workers, chunk_hashing.BATCH)
        return
    if len(blob_ids) <= 1:
        for blob_id in blob_ids:
            yield repository.load_blob(BlobType.DATA, blob_id)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lockstep-read") as pool:
        window: deque[Future[bytes]] = deque()
        pending = iter(blob_ids)
        for blob_id in pending:
            window.append(pool.submit(repository.load_blob, BlobType.DATA, blob_id))
            if len(window) >= workers * 2:
                break
        try:
            for blob_id in pending:
                yield window.popleft().result()
                window.append(pool.submit(repository.load_blob, BlobType.DATA, blob_id))
            while window:
                yield window.popleft().result()
        except GeneratorExit:  # the reader stopped early: the blobs not started are not wanted
            pool.shutdown(cancel_futures=True)
            raise


def _read_blobs_in_batches(repository: Repository, blob_ids: list[bytes], workers: int, batch: int) -> Iterator[bytes]:
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lockstep-read") as pool:
        window: deque[tuple[bytes, Future[bytes]]] = deque()
        pending = iter(blob_ids)

        def read_ahead() -> None:
            for blob_id in pending:
                window.append((blob_id, pool.submit(repository.load_blob, BlobType.DATA, blob_id, False)))
                if len(window) >= batch + workers * 2:
                    break

        read_ahead()
        try:
            while window:
                group = [window.popleft() for _ in range(min(batch, len(window)))]
                read_ahead()
                plaintexts = [future.result() for _, future in group]
                for (blob_id, _), digest in zip(group, chunk_hashing.blob_ids(plaintexts), strict=True):
                    if digest != blob_id:
                        raise repository.blob_id_mismatch(BlobType.DATA, blob_id)
                yield from plaintexts
        except GeneratorExit:  # the reader stopped early: the blobs not started are not wanted
            pool.shutdown(cancel_futures=True)
            raise


def find_node(repository: Repository, snapshot: Snapshot, path: str) -> Node:
    """The node at `path` (absolute, as `repo ls` prints it) inside a snapshot."""
    parts = [part for part in os.fsencode(path).split(b"/") if part]
    if not parts:
        return Node(name=b"", type="dir", subtree=snapshot.tree)
    tree_id = snapshot.tree
    node: Node | None = None
    for position, part in enumerate(parts):
        node = repository.load_tree(tree_id).find(part)
        if node is None:
            raise NotFound(
                f"{path} is not in snapshot {snapshot.short_id}",
                f"list its files with `lockstep repo ls {snapshot.short_id}`",
            )
        if position < len(parts) - 1:
            if node.type != "dir" or node.subtree is None:
                raise NotFound(f"{path} is not in snapshot {snapshot.short_id}")
            tree_id = node.subtree
    assert node is not None
    return node


def dump_file(repository: Repository, node: Node, output: BinaryIO, progress: ProgressCallback | None = None) -> int:
    """Write a file node's content to `output`; returns the number of bytes."""
    written = 0
    for data in read_blobs(repository, node.content or []):
        output.write(data)
        written += len(data)
        if progress:
            progress(len(data))
    return written


class Restorer:
    """Restores a snapshot (or the parts of it under `includes`) into a target directory."""

    def __init__(
        self,
        repository: Repository,
        snapshot: Snapshot,
        target: Path,
        includes: list[str] | None = None,
        progress: ProgressCallback | None = None,
        keep_going: bool = False,
    ) -> None:
        """`keep_going`: a file or directory whose data is damaged is skipped and named in
        `summary.damaged`, and everything else is restored, as restic does; otherwise the first
        damaged blob ends the restore (a database dump is whole or useless)."""
        self.keep_going = keep_going
        self.repository = repository
        self.snapshot = snapshot
        self.target = Path(target)
        self.includes = [os.fsencode(include).rstrip(b"/") or b"/" for include in includes or []]
        self.progress = progress
        self.summary = RestoreSummary()
        self._is_root = os.geteuid() == 0
        # Files with more than one link, by (device, inode) as recorded at backup: the path
        # restored first, so the others become hard links to it, as restic restores them.
        self._hard_links: dict[tuple[int, int], bytes] = {}
        self._xattrs_unsupported = False

    def _selected(self, path: bytes) -> tuple[bool, bool]:
        """(restore this node, descend into it) for an absolute snapshot path."""
        if not self.includes:
            return True, True
        for include in self.includes:
            if include == b"/" or path == include or path.startswith(include + b"/"):
                return True, True
            if include.startswith(path + b"/"):
                return False, True
        return False, False

    def run(self) -> RestoreSummary:
        self._check_includes()
        self._prepare_target()
        try:
            self._restore_tree(self.snapshot.tree, b"", os.fsencode(self.target))
        except OSError as error:
            # Disk full, read-only, permissions, too many inodes: anywhere in the tree, not only
            # while writing file content. Name the path and the remedy instead of a traceback.
            where = os.fsdecode(error.filename) if error.filename is not None else str(self.target)
            if error.errno == errno.ENOSPC:
                raise StorageError(
                    f"no space left on the device while restoring {where}", "free some space or choose another --target"
                ) from error
            raise StorageError(
                f"cannot restore {where}: {error.strerror}",
                "check free space and permissions, or choose another --target",
            ) from error
        return self.summary

    def _check_includes(self) -> None:
        """Every include names a path of the snapshot, or nothing is restored (not even the
        target created): restic restores nothing and exits 0 for an include that matches nothing,
        and a typo would pass for a restore. One include matching while another does not also
        restores nothing, naming only the ones that match nothing."""
        missing = [include for include in self.includes if not self._in_snapshot(include)]
        if not missing:
            return
        named = ", ".join(os.fsdecode(include) for include in missing)
        short_id = self.snapshot.short_id
        raise NotFound(
            f"--include {named} {'matches' if len(missing) == 1 else 'match'} nothing in snapshot {short_id}; "
            "nothing was restored",
            f"give each path from / as `lockstep repo ls {short_id}` prints it",
        )

    def _in_snapshot(self, include: bytes) -> bool:
        """Whether `include` is a path of the snapshot as _selected matches it: absolute, each
        part a name in the tree (no empty part, `.` or `..`)."""
        if include == b"/":
            return True
        if not include.startswith(b"/"):
            return False
        tree_id: bytes | None = self.snapshot.tree
        for part in include[1:].split(b"/"):
            if tree_id is None or part in (b"", b".", b".."):
                return False
            node = self.repository.load_tree(tree_id).find(part)
            if node is None:
                return False
            tree_id = node.subtree if node.type == "dir" else None
        return True

    def _prepare_target(self) -> None:
        """Create the target directory, or say plainly why it cannot be restored into."""
        if self.target.exists() and not self.target.is_dir():
            raise StorageError(
                f"the restore target {self.target} exists and is not a directory", "choose another --target"
            )
        try:
            self.target.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(
                f"cannot create the restore target {self.target}: {error.strerror}", "choose another --target"
            ) from error
        if not os.access(self.target, os.W_OK):
            raise StorageError(f"the restore target {self.target} is not writable", "choose another --target")

    def _restore_tree(self, tree_id: bytes, snapshot_path: bytes, directory: bytes) -> None:
        try:
            nodes = self.repository.load_tree(tree_id).nodes
        except IntegrityError as error:
            if not self.keep_going:
                raise
            self.summary.damaged.append(f"{os.fsdecode(directory)}/: {error.message}")
            return
        for node in nodes:
            if b"/" in node.name or node.name in (b"", b".", b".."):
                self._warn(
                    "skipped an entry with an unsafe name",
                    f"skipped an entry with an unsafe name: {node.display_name!r}",
                    repr(node.display_name),
                )
                continue
            path = snapshot_path + b"/" + node.name
            restore, descend = self._selected(path)
            destination = os.path.join(directory, node.name)
            if node.type == "dir" and node.subtree is not None:
                if not (restore or descend):
                    continue
                os.makedirs(destination, exist_ok=True)
                self._restore_tree(node.subtree, path, destination)
                if restore:
                    self.summary.directories += 1
                self._apply_metadata(destination, node)
            elif restore:
                self._restore_leaf(node, destination)

    def _restore_leaf(self, node: Node, destination: bytes) -> None:
        if os.path.lexists(destination) and not os.path.isdir(destination):
            os.unlink(destination)
        if node.type == "file" and self._link_to_restored_copy(node, destination):
            return
        if node.type == "file":
            try:
                with open(destination, "wb") as handle:
                    written = dump_file(self.repository, node, handle, self.progress)
            except OSError as error:
                # A truncated file would look restored: remove it, and name it in the error.
                with contextlib.suppress(OSError):
                    os.unlink(destination)
                if error.filename is None:
                    error.filename = destination
                raise
            except BaseException as error:
                # A damaged blob or an interruption: a half-written file must not pass for a restored one.
                with contextlib.suppress(OSError):
                    os.unlink(destination)
                if self.keep_going and isinstance(error, IntegrityError):
                    self.summary.damaged.append(f"{os.fsdecode(destination)}: {error.message}")
                    return
                raise
            if written != node.size:
                self._warn(
                    "restored a size other than the snapshot records",
                    f"{os.fsdecode(destination)}: restored {written} bytes, the snapshot says {node.size}",
                    os.fsdecode(destination),
                )
            self.summary.files += 1
            self.summary.bytes_written += written
            if node.links > 1 and node.inode:
                self._hard_links.setdefault((node.device_id, node.inode), destination)
        elif node.type == "symlink":
            os.symlink(node.link_target_bytes, destination)
        elif node.type == "fifo":
            os.mkfifo(destination)
        elif node.type in ("dev", "chardev"):
            if not self._is_root:
                self._warn(
                    ONLY_ROOT_CREATES_DEVICES,
                    f"skipped device {os.fsdecode(destination)}: only root can create devices",
                    os.fsdecode(destination),
                )
                return
            kind = stat.S_IFBLK if node.type == "dev" else stat.S_IFCHR
            os.mknod(destination, kind | 0o600, node.device)
        else:
            self._warn(
                f"skipped {node.type}", f"skipped {node.type} {os.fsdecode(destination)}", os.fsdecode(destination)
            )
            return
        self._apply_metadata(destination, node)

    def _link_to_restored_copy(self, node: Node, destination: bytes) -> bool:
        """Make `destination` a hard link to the file restored earlier for the same inode;
        False when there is none (this is the first, or the first was not restored)."""
        if node.links <= 1 or not node.inode:
            return False
        first = self._hard_links.get((node.device_id, node.inode))
        if first is None:
            return False
        try:
            os.link(first, destination)
        except OSError as error:
            # Another file system under the target, or a link count limit: restore a copy.
            self._warn(
                f"cannot hard-link, restored a copy instead ({error.strerror})",
                f"cannot link {os.fsdecode(destination)} to {os.fsdecode(first)} ({error.strerror}); restored a copy",
                os.fsdecode(destination),
            )
            return False
        self.summary.files += 1
        self._apply_metadata(destination, node)
        return True

    def _restore_extended_attributes(self, path: bytes, node: Node) -> None:
        """Set the extended attributes restic recorded (name, base64 value); before chmod, since
        setting one needs write permission on the file for anyone but root."""
        for attribute in node.extended_attributes or ():
            name = str(attribute.get("name") or "")
            if not name or self._xattrs_unsupported:
                continue
            try:
                value = base64.b64decode(attribute.get("value") or "")
                os.setxattr(path, name, value, follow_symlinks=False)
            except ValueError:
                self._warn(
                    f"extended attribute {name} has an unreadable value",
                    f"{os.fsdecode(path)}: extended attribute {name} has an unreadable value",
                    os.fsdecode(path),
                )
            except OSError as error:
                if error.errno == errno.ENOTSUP and node.type != "symlink":
                    # The target's file system has no extended attributes: say it once, not per file.
                    self._xattrs_unsupported = True
                    unsupported = (
                        f"the file system under {self.target} does not support extended attributes; "
                        "they were not restored"
                    )
                    self._warn(unsupported, unsupported)
                else:
                    self._warn(
                        f"cannot set extended attribute {name} ({error.strerror})",
                        f"cannot set extended attribute {name} on {os.fsdecode(path)}: {error.strerror}",
                        os.fsdecode(path),
                    )

    def _warn(self, problem: str, text: str, path: str | None = None) -> None:
        self.summary.warnings.append(RestoreWarning(problem, text, path))

    def _apply_metadata(self, path: bytes, node: Node) -> None:
        if self._is_root:
            try:
                os.lchown(path, node.uid, node.gid)
            except OSError as error:
                self._warn(
                    f"cannot set owner ({error.strerror})",
                    f"cannot set owner of {os.fsdecode(path)}: {error.strerror}",
                    os.fsdecode(path),
                )
        self._restore_extended_attributes(path, node)
        if node.type != "symlink":
            os.chmod(path, unix_permissions(node.mode))
        times = (parse_time_ns(node.atime), parse_time_ns(node.mtime))
        os.utime(path, ns=times, follow_symlinks=False)


def link_target_text(node: Node) -> str:
    """A symlink target for display."""
    if node.linktarget_raw:
        return base64.b64decode(node.linktarget_raw).decode("utf-8", "backslashreplace")
    return node.linktarget
