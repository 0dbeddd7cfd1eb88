"""The checksum of a release directory: a canonical listing of its tree, and that listing's SHA-256.

A release directory is stored whole, so a single SHA-256 of "the code" needs a definition that
anyone can recompute from a restored copy (lockstep's restore, `restic restore`, a copy made by
hand) without lockstep's repository. The listing is that definition. It has one line per entry
below the directory (the directory itself is not listed), sorted by the entry's relative path as
raw bytes, each line six fields separated by a tab and ended by a newline:

    PATH  TYPE  MODE  SIZE  SHA256  TARGET

- PATH: relative, `/`-separated, the file name's raw bytes;
- TYPE: `dir`, `file`, `symlink`, `fifo`, `dev` or `chardev` (restic's node types); sockets are
  not listed, since no restore creates them;
- MODE: the permission bits with setuid, setgid and sticky, four octal digits (`0644`); empty for
  a symlink, whose own mode no restore sets;
- SIZE and SHA256: a file's size in bytes and the SHA-256 (hex) of its bytes; empty otherwise;
- TARGET: a symlink's target, raw bytes; empty otherwise.

Bytes of PATH and TARGET that would break the format (`%`, tab, newline, other control bytes)
are written `%XX`. Owners, times and extended attributes are left out: a restore by another user
or on another day cannot give the same ones, and they are not the code.

The manifest's `tree_sha256` is the SHA-256 of the listing's bytes, and the listing is stored
beside the tree (`/code/release.listing`), so a verifier that finds another checksum can name the
entries that differ. A file's SHA-256 costs no second read: the snapshot hashes the bytes as they
stream in (0.13 CPU-seconds for 175 MB of Python packages, SHA-256 at 1.4 GB/s with SHA
instructions, against 3.3-4 CPU-seconds to store them). Whether a file will be cut into more than
one chunk is only known once it is read, so every file is hashed; a verifier reading the stored
tree hashes only files of several chunks, since a chunk's ID is the SHA-256 of its bytes.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lockstep.repository.builder import SnapshotBuilder
from lockstep.repository.gojson import unix_permissions
from lockstep.repository.repository import Repository
from lockstep.repository.tree import Node

LISTING_SUFFIX = ".listing"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# Bytes written as %XX in paths and targets: the separators, the escape itself, control bytes.
_ESCAPED = frozenset([*range(0x20), 0x7F, ord("%")])
# Node types only root can create: a restore by another user skips them (restore.py).
DEVICE_TYPES = frozenset({"dev", "chardev"})
_TYPE_BY_FORMAT = {
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "file",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFBLK: "dev",
    stat.S_IFCHR: "chardev",
}


@dataclass(frozen=True)
class ListedEntry:
    """One entry of a release directory as the listing records it."""

    path: bytes
    type: str
    mode: int | None = None
    size: int | None = None
    sha256: str | None = None
    target: bytes | None = None

    def line(self) -> bytes:
        fields = [
            _escape(self.path),
            self.type.encode("ascii"),
            b"" if self.mode is None else f"{self.mode:04o}".encode("ascii"),
            b"" if self.size is None else str(self.size).encode("ascii"),
            (self.sha256 or "").encode("ascii"),
            b"" if self.target is None else _escape(self.target),
        ]
        return b"\t".join(fields) + b"\n"


def _escape(raw: bytes) -> bytes:
    return b"".join(b"%%%02X" % byte if byte in _ESCAPED else bytes([byte]) for byte in raw)


def listing_bytes(entries: Iterable[ListedEntry]) -> bytes:
    """The canonical listing: one line per entry, sorted by path."""
    return b"".join(entry.line() for entry in sorted(entries, key=lambda entry: entry.path))


def listing_sha256(listing: bytes) -> str:
    return hashlib.sha256(listing).hexdigest()


def entry_for_node(path: bytes, node: Node, sha256: str | None = None) -> ListedEntry | None:
    """A stored node's entry (None for a socket); a file's `sha256` is the caller's to give."""
    if node.type == "file":
        return ListedEntry(path, "file", unix_permissions(node.mode), node.size, sha256)
    if node.type == "symlink":
        return ListedEntry(path, "symlink", target=node.link_target_bytes)
    if node.type in ("dir", "fifo", "dev", "chardev"):
        return ListedEntry(path, node.type, unix_permissions(node.mode))
    return None


def single_chunk_sha256(node: Node) -> str | None:
    """A file's SHA-256 when its content says it without reading: empty, or one chunk, whose ID is
    the SHA-256 of its bytes. None for a file of several chunks, which must be hashed."""
    content = node.content or []
    if not content:
        return EMPTY_SHA256
    if len(content) == 1:
        return content[0].hex()
    return None


def stored_listing(builder: SnapshotBuilder, path: str) -> bytes:
    """The listing of what `builder` stored at `path` (added after `describe_paths`), before the
    snapshot is written: from the trees and hashes the builder kept in memory."""
    hashed = builder.hashed_file_sha256()
    entries: list[ListedEntry] = []
    for relative, node in builder.stored_below(path):
        sha256 = None
        if node.type == "file":
            sha256 = single_chunk_sha256(node) or hashed[b"".join(node.content or [])]
        entry = entry_for_node(relative, node, sha256)
        if entry is not None:
            entries.append(entry)
    return listing_bytes(entries)


def tree_entries(repository: Repository, tree_id: bytes, prefix: bytes = b"") -> Iterator[tuple[ListedEntry, Node]]:
    """The entries of a stored tree, each with its node; a file of several chunks has no SHA-256
    yet (its blobs must be read: the caller hashes them and fills it in)."""
    for node in repository.load_tree(tree_id).nodes:
        path = prefix + node.name
        entry = entry_for_node(path, node, single_chunk_sha256(node) if node.type == "file" else None)
        if entry is not None:
            yield entry, node
        if node.type == "dir" and node.subtree is not None:
            yield from tree_entries(repository, node.subtree, path + b"/")


def entries_on_disk(root: Path) -> Iterator[ListedEntry]:
    """The entries of a directory as it is on disk (a restored release), every file read once.

    OSError (an unreadable file) is left to the caller: a copy that cannot be read cannot be
    said to match."""
    raw_root = os.fsencode(root)
    pending: list[bytes] = [b""]
    while pending:
        relative = pending.pop()
        with os.scandir(os.path.join(raw_root, relative) if relative else raw_root) as scanned:
            children = sorted(entry.name for entry in scanned)
        for name in children:
            path = relative + b"/" + name if relative else name
            absolute = os.path.join(raw_root, path)
            info = os.lstat(absolute)
            kind = _TYPE_BY_FORMAT.get(stat.S_IFMT(info.st_mode))
            if kind is None:
                continue  # a socket
            if kind == "symlink":
                yield ListedEntry(path, kind, target=os.readlink(absolute))
                continue
            mode = stat.S_IMODE(info.st_mode)
            if kind == "file":
                yield ListedEntry(path, kind, mode, info.st_size, _file_sha256(absolute))
                continue
            yield ListedEntry(path, kind, mode)
            if kind == "dir":
                pending.append(path)


def _file_sha256(path: bytes) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def listing_differences(expected: bytes, actual: bytes, limit: int = 5) -> list[str]:
    """The entries two listings disagree on, each said in words, at most `limit` of them plus a
    count of the rest: what a checksum mismatch is about."""
    wanted, found = _by_path(expected), _by_path(actual)
    problems: list[str] = []
    for path in sorted(wanted.keys() | found.keys()):
        if path not in found:
            problems.append(f"{_shown(path)} is missing")
        elif path not in wanted:
            problems.append(f"{_shown(path)} is not in the snapshot's listing")
        elif wanted[path] != found[path]:
            problems.append(f"{_shown(path)}: {_field_difference(wanted[path], found[path])}")
    if len(problems) > limit:
        problems = [*problems[:limit], f"and {len(problems) - limit} more entries"]
    return problems


def mismatch_problem(where: str, recorded_sha256: str, stored_listing: bytes | None, actual: bytes) -> str:
    """What a release directory that does not match its manifest's tree_sha256 gets wrong: the
    entries that differ from the listing stored beside it, when that listing is the one the
    manifest pinned (otherwise nothing can say which entries changed)."""
    head = f"{where} does not match the manifest's tree_sha256"
    if stored_listing is None or listing_sha256(stored_listing) != recorded_sha256:
        return f"{head}, and no listing in the snapshot matches it either, to say which entries differ"
    return f"{head}: " + "; ".join(listing_differences(stored_listing, actual) or ["the listings differ"])


_FIELDS = ("type", "mode", "size", "SHA-256", "target")


def _by_path(listing: bytes) -> dict[bytes, list[bytes]]:
    entries: dict[bytes, list[bytes]] = {}
    for line in listing.splitlines():
        path, *fields = line.split(b"\t")
        entries[path] = fields
    return entries


def _field_difference(wanted: list[bytes], found: list[bytes]) -> str:
    for name, expected, actual in zip(_FIELDS, wanted, found, strict=False):
        if expected == actual:
            continue
        if name == "size":
            return f"its content differs ({_text(actual)} bytes, the snapshot has {_text(expected)})"
        if name == "SHA-256":
            now, then = actual[:16].decode(), expected[:16].decode()
            return f"its content differs (SHA-256 {now}…, the snapshot has {then}…)"
        return f"{name} is {_text(actual) or 'empty'}, the snapshot has {_text(expected) or 'empty'}"
    return "the entry differs"


def _shown(escaped_path: bytes) -> str:
    return _text(escaped_path)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")
