"""`lockstep repo restore` and `lockstep repo dump`."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import BinaryIO

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.errors import IntegrityError
from lockstep.repository.archiver import ProgressCallback
from lockstep.repository.gojson import parse_time_ns, unix_permissions
from lockstep.repository.repository import Repository
from lockstep.repository.restorer import Restorer, RestoreSummary, dump_file, find_node, read_blobs
from lockstep.repository.tar_headers import RawPaxTarInfo, tar_mtime, xattr_records


def restore(
    access: RepositoryAccess,
    reference: str,
    target: Path,
    includes: list[str] | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[str, RestoreSummary]:
    with access.session(exclusive=False) as repository:
        snapshot = repository.find_snapshot(reference)
        summary = Restorer(repository, snapshot, target, includes, progress, keep_going=True).run()
    if summary.damaged:
        count = len(summary.damaged)
        raise IntegrityError(
            f"{count} {'path' if count == 1 else 'paths'} of snapshot {snapshot.id[:8]} could not be restored "
            f"(damaged data): {'; '.join(summary.damaged[:3])}{' ...' if count > 3 else ''}; "
            "everything else is restored",
            "run `lockstep repo check --read-data` to see the damage; restore those paths from another snapshot",
            result=RestoreResult(snapshot.id, summary),
        )
    return snapshot.id, summary


class RestoreResult:
    """What `repo restore --json` prints, also beside the error of a restore with damaged paths."""

    def __init__(self, snapshot_id: str, summary: RestoreSummary) -> None:
        self.snapshot_id = snapshot_id
        self.summary = summary

    def to_document(self) -> dict[str, object]:
        return {"message_type": "summary", "snapshot_id": self.snapshot_id, **self.summary.to_document()}


def dump(access: RepositoryAccess, reference: str, path: str, output: BinaryIO) -> int:
    """Write a file's content to `output`, or a directory as a tar stream (as restic does)."""
    with access.session(exclusive=False) as repository:
        snapshot = repository.find_snapshot(reference)
        node = find_node(repository, snapshot, path)
        if node.type == "file":
            return dump_file(repository, node, output)
        if node.type == "dir" and node.subtree is not None:
            # Entry names are the paths in the snapshot (`/srv/app` -> srv/app/...), as restic's dump
            # names them, so `tar x -C /` puts the files back where they were taken from.
            parts = [part for part in os.fsencode(path).split(b"/") if part]
            return _dump_tar(repository, node.subtree, output, b"".join(b"/" + part for part in parts))
        from lockstep.errors import UsageError

        raise UsageError(f"{path} is a {node.type}, not a file or directory")


class _CountingWriter:
    def __init__(self, output: BinaryIO) -> None:
        self.output = output
        self.count = 0

    def write(self, data: bytes) -> int:
        self.output.write(data)
        self.count += len(data)
        return len(data)


class _BlobReader:
    """A file-like reader over a file node's blobs, for tarfile."""

    def __init__(self, repository: Repository, blob_ids: list[bytes]) -> None:
        self._blobs = read_blobs(repository, blob_ids)
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            try:
                self._buffer += next(self._blobs)
            except StopIteration:
                break
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def _dump_tar(repository: Repository, tree_id: bytes, output: BinaryIO, prefix: bytes = b"") -> int:
    writer = _CountingWriter(output)
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as archive:  # type: ignore[call-overload]
        for path, node in repository.walk(tree_id, prefix):
            info = RawPaxTarInfo(path.decode("utf-8", "surrogateescape").lstrip("/"))
            info.mode = unix_permissions(node.mode)
            info.mtime, exact_mtime = tar_mtime(parse_time_ns(node.mtime))
            info.uid, info.gid, info.uname, info.gname = node.uid, node.gid, node.user, node.group
            # restic's PAX records (xattrs, ACLs), and the mtime to the nanosecond (see tar_headers).
            info.pax_headers = xattr_records(node.extended_attributes)
            if exact_mtime is not None:
                info.pax_headers["mtime"] = exact_mtime
            if node.type == "dir":
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            elif node.type == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = node.link_target_bytes.decode("utf-8", "surrogateescape")
                archive.addfile(info)
            elif node.type == "file":
                info.size = node.size
                archive.addfile(info, _BlobReader(repository, node.content or []))
            elif node.type in _SPECIAL_TYPES:
                # As `repo restore` recreates them: `tar x` makes the pipe or device again.
                info.type = _SPECIAL_TYPES[node.type]
                info.devmajor, info.devminor = os.major(node.device), os.minor(node.device)
                archive.addfile(info)
            # A socket has no tar type (and restic does not back sockets up): it is left out.
    return writer.count


# Named pipes and devices: restic 0.14's dump writes the ones directly in the dumped directory as
# empty regular files and drops deeper ones; lockstep dropped them all.
_SPECIAL_TYPES = {"fifo": tarfile.FIFOTYPE, "chardev": tarfile.CHRTYPE, "dev": tarfile.BLKTYPE}
