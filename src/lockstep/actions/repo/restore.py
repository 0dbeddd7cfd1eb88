"""`lockstep repo restore` and `lockstep repo dump`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.errors import IntegrityError
from lockstep.repository import go_tar
from lockstep.repository.archiver import ProgressCallback
from lockstep.repository.go_tar import GoTarHeader, GoTarWriter
from lockstep.repository.gojson import parse_time_ns, unix_permissions
from lockstep.repository.repository import Repository
from lockstep.repository.restorer import Restorer, RestoreSummary, dump_file, find_node, read_blobs
from lockstep.repository.tar_headers import GO_ZERO_TIME_NS, tar_mtime, xattr_records
from lockstep.repository.tree import Node


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


def _dump_tar(repository: Repository, tree_id: bytes, output: BinaryIO, prefix: bytes = b"") -> int:
    """The tree as restic's dump writes it, byte for byte (Go's archive/tar, see go_tar)."""
    writer = GoTarWriter(output)
    for path, node in repository.walk(tree_id, prefix):
        header = _tar_header(path.lstrip(b"/"), node)
        if node.type == "dir":
            header.name += b"/"
            header.typeflag = go_tar.DIRECTORY
            writer.add(header)
        elif node.type == "symlink":
            header.typeflag, header.linkname = go_tar.SYMLINK, node.link_target_bytes
            writer.add(header)
        elif node.type == "file":
            header.typeflag, header.size = go_tar.REGULAR, node.size
            written = writer.add_file(header, read_blobs(repository, node.content or []))
            if written != node.size:
                raise IntegrityError(
                    f"{path.decode('utf-8', 'backslashreplace')} has {written} bytes, its node says {node.size}; "
                    "the tar stream written so far is cut off there",
                    "run `lockstep repo check --read-data` to see the damage",
                )
        elif node.type in _SPECIAL_TYPES:
            # As `repo restore` recreates them: `tar x` makes the pipe or device again.
            header.typeflag = _SPECIAL_TYPES[node.type]
            header.devmajor, header.devminor = os.major(node.device), os.minor(node.device)
            writer.add(header)
        # A socket has no tar type (and restic does not back sockets up): it is left out.
    writer.close()
    return writer.written


def _tar_header(name: bytes, node: Node) -> GoTarHeader:
    """What restic's dumpNodeTar puts in every header: owner, permission bits, the time rounded
    to the second as Go's WriteHeader rounds it, and the xattrs and ACLs as PAX records."""
    mtime_ns = parse_time_ns(node.mtime)
    records = xattr_records(node.extended_attributes)
    return GoTarHeader(
        name=name,
        typeflag=go_tar.REGULAR,
        mode=unix_permissions(node.mode),
        uid=node.uid,
        gid=node.gid,
        uname=node.user.encode("utf-8", "surrogateescape"),
        gname=node.group.encode("utf-8", "surrogateescape"),
        mtime=0 if mtime_ns == GO_ZERO_TIME_NS else tar_mtime(mtime_ns),
        pax_records={
            key.encode("utf-8", "surrogateescape"): value.encode("utf-8", "surrogateescape")
            for key, value in records.items()
        },
    )


# Named pipes and devices: restic 0.14's dump writes the ones directly in the dumped directory as
# empty regular files and drops deeper ones; lockstep dropped them all.
_SPECIAL_TYPES = {"fifo": go_tar.FIFO, "chardev": go_tar.CHARACTER_DEVICE, "dev": go_tar.BLOCK_DEVICE}
