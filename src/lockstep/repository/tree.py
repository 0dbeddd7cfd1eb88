"""Trees (directory listings) and their nodes, encoded byte for byte as restic 0.14 does (§9)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lockstep.repository.gojson import go_json, go_string, quote_name, unquote_name

NODE_TYPES = ("file", "dir", "symlink", "dev", "chardev", "fifo", "socket")


@dataclass
class Node:
    """One entry of a tree. Times are kept as the RFC 3339 text restic wrote, so nothing is lost."""

    name: bytes
    type: str
    mode: int = 0
    mtime: str = "0001-01-01T00:00:00Z"
    atime: str = "0001-01-01T00:00:00Z"
    ctime: str = "0001-01-01T00:00:00Z"
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    inode: int = 0
    device_id: int = 0
    size: int = 0
    links: int = 0
    linktarget: str = ""
    linktarget_raw: str = ""
    extended_attributes: list[dict[str, Any]] | None = None
    generic_attributes: dict[str, Any] | None = None
    device: int = 0
    content: list[bytes] | None = None
    subtree: bytes | None = None
    error: str = ""

    @property
    def display_name(self) -> str:
        return self.name.decode("utf-8", "backslashreplace")

    def to_document(self) -> dict[str, Any]:
        """The node as an ordered dict, fields in Go struct order, zero values omitted like Go."""
        document: dict[str, Any] = {"name": quote_name(self.name), "type": self.type}
        if self.mode:
            document["mode"] = self.mode
        document["mtime"] = self.mtime
        document["atime"] = self.atime
        document["ctime"] = self.ctime
        document["uid"] = self.uid
        document["gid"] = self.gid
        for key in ("user", "group", "inode", "device_id", "size", "links", "linktarget", "linktarget_raw"):
            value = getattr(self, key)
            if value:
                document[key] = value
        if self.extended_attributes:
            document["extended_attributes"] = self.extended_attributes
        if self.generic_attributes:
            document["generic_attributes"] = self.generic_attributes
        if self.device:
            document["device"] = self.device
        document["content"] = None if self.content is None else [blob_id.hex() for blob_id in self.content]
        if self.subtree is not None:
            document["subtree"] = self.subtree.hex()
        if self.error:
            document["error"] = self.error
        return document

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Node:
        """Parse a node as restic (any version) or lockstep wrote it; unknown keys are ignored."""
        content = document.get("content")
        subtree = document.get("subtree")
        return cls(
            name=unquote_name(document.get("name", "")),
            type=document.get("type", ""),
            mode=int(document.get("mode") or 0),
            mtime=document.get("mtime") or "0001-01-01T00:00:00Z",
            atime=document.get("atime") or "0001-01-01T00:00:00Z",
            ctime=document.get("ctime") or "0001-01-01T00:00:00Z",
            uid=int(document.get("uid") or 0),
            gid=int(document.get("gid") or 0),
            user=document.get("user") or "",
            group=document.get("group") or "",
            inode=int(document.get("inode") or 0),
            device_id=int(document.get("device_id") or 0),
            size=int(document.get("size") or 0),
            links=int(document.get("links") or 0),
            linktarget=document.get("linktarget") or "",
            linktarget_raw=document.get("linktarget_raw") or "",
            extended_attributes=document.get("extended_attributes"),
            generic_attributes=document.get("generic_attributes"),
            device=int(document.get("device") or 0),
            content=None if content is None else [bytes.fromhex(blob_id) for blob_id in content],
            subtree=bytes.fromhex(subtree) if subtree else None,
            error=document.get("error") or "",
        )

    @property
    def link_target_bytes(self) -> bytes:
        """The symlink target as raw bytes (linktarget_raw wins when present)."""
        if self.linktarget_raw:
            import base64

            return base64.b64decode(self.linktarget_raw)
        return self.linktarget.encode("utf-8", "surrogateescape")


@dataclass
class Tree:
    """A directory listing: nodes sorted by raw name bytes."""

    nodes: list[Node] = field(default_factory=list)

    def encode(self) -> bytes:
        """The tree blob bytes: `{"nodes":[…]}` plus a newline; nodes are sorted first."""
        self.nodes.sort(key=lambda node: node.name)
        for previous, current in zip(self.nodes, self.nodes[1:], strict=False):
            if previous.name == current.name:
                raise ValueError(f"duplicate name in tree: {current.display_name!r}")
        encoded_nodes = ",".join(_encode_node(node) for node in self.nodes)
        return ('{"nodes":[' + encoded_nodes + "]}\n").encode("utf-8", "surrogatepass")

    @classmethod
    def decode(cls, data: bytes) -> Tree:
        document = json.loads(data)
        return cls(nodes=[Node.from_document(node) for node in document.get("nodes") or []])

    def find(self, name: bytes) -> Node | None:
        for node in self.nodes:
            if node.name == name:
                return node
        return None


def _encode_node(node: Node) -> str:
    document = node.to_document()
    name = document.pop("name")
    return '{"name":' + go_string(name) + ("," + go_json(document)[1:] if document else "}")
