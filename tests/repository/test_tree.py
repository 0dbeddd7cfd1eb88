"""Tree blobs encoded byte for byte as restic 0.14 writes them (§9), so tree IDs deduplicate."""

from __future__ import annotations

import json

import pytest

from lockstep.repository.gojson import MODE_DIR, MODE_SYMLINK
from lockstep.repository.tree import Node, Tree

TIME = "2026-11-22T02:02:28.03574034Z"
CONTENT_ID = bytes.fromhex("1d58d390d90f" + "ab" * 24 + "07bb")
SUBTREE_ID = bytes.fromhex("457b5b126e928eb0f63230558349860afa3ba5a1c7ee8c3d08f4860241df7a72")

# The field order of restic's Node struct (§9.2).
GO_FIELD_ORDER = [
    "name",
    "type",
    "mode",
    "mtime",
    "atime",
    "ctime",
    "uid",
    "gid",
    "user",
    "group",
    "inode",
    "device_id",
    "size",
    "links",
    "linktarget",
    "linktarget_raw",
    "extended_attributes",
    "generic_attributes",
    "device",
    "content",
    "subtree",
    "error",
]


def file_node(name: bytes, content: list[bytes] | None = None, size: int = 0) -> Node:
    return Node(name=name, type="file", mode=0o644, mtime=TIME, atime=TIME, ctime=TIME, size=size, content=content)


def test_restics_stdin_sample_tree_is_reproduced_exactly() -> None:
    """The stdin tree of §12.2: no user, group, inode, links or device_id; uid/gid written as 0."""
    tree = Tree([file_node(b"db.sql", [CONTENT_ID], size=77)])
    assert (
        tree.encode()
        == (
            '{"nodes":[{"name":"db.sql","type":"file","mode":420,'
            f'"mtime":"{TIME}","atime":"{TIME}","ctime":"{TIME}",'
            f'"uid":0,"gid":0,"size":77,"content":["{CONTENT_ID.hex()}"]}}]}}\n'
        ).encode()
    )


def test_restics_directory_sample_tree_is_reproduced_exactly() -> None:
    """A tree restic 0.14 wrote on this project's machine for `restic backup src`: a directory
    node has `content: null`, a subtree, no `links` and no `size`."""
    restic_bytes = (
        b'{"nodes":[{"name":"src","type":"dir","mode":2147484141,"mtime":"2026-11-22T03:17:13.99849947Z",'
        b'"atime":"2026-11-22T03:17:13.99849947Z","ctime":"2026-11-22T03:17:13.99849947Z","uid":0,"gid":0,'
        b'"user":"root","group":"root","inode":2179392,"device_id":65024,"content":null,'
        b'"subtree":"457b5b126e928eb0f63230558349860afa3ba5a1c7ee8c3d08f4860241df7a72"}]}\n'
    )
    moment = "2026-11-22T03:17:13.99849947Z"
    node = Node(
        name=b"src",
        type="dir",
        mode=MODE_DIR | 0o755,
        mtime=moment,
        atime=moment,
        ctime=moment,
        user="root",
        group="root",
        inode=2179392,
        device_id=65024,
        subtree=SUBTREE_ID,
    )
    assert Tree([node]).encode() == restic_bytes
    assert Tree.decode(restic_bytes).encode() == restic_bytes


def test_empty_file_has_empty_content_list_and_directory_has_null() -> None:
    directory = Node(name=b"d", type="dir", mode=MODE_DIR | 0o700, mtime=TIME, atime=TIME, ctime=TIME)
    directory.subtree = SUBTREE_ID
    link = Node(name=b"l", type="symlink", mode=MODE_SYMLINK | 0o777, mtime=TIME, atime=TIME, ctime=TIME)
    link.linktarget = "target"
    encoded = Tree([file_node(b"e", []), directory, link]).encode()
    nodes = json.loads(encoded)["nodes"]
    assert [node["content"] for node in nodes] == [None, [], None]
    assert b'"name":"e","type":"file","mode":420,' in encoded
    assert b'"content":[]}' in encoded
    assert b'"content":null,"subtree":"' + SUBTREE_ID.hex().encode() + b'"}' in encoded
    assert "size" not in nodes[1]  # an empty file has no size, like Go's omitempty


def test_an_empty_directory_is_an_empty_node_list() -> None:
    assert Tree([]).encode() == b'{"nodes":[]}\n'


def test_nodes_are_sorted_by_raw_name_bytes() -> None:
    names = [b"lower", b"\xff\xfe", "é".encode(), b"UPPER", b"a b", b"a", b"Z", b"_", "\u00a0".encode()]
    tree = Tree([file_node(name, []) for name in names])
    decoded = Tree.decode(tree.encode())
    assert [node.name for node in decoded.nodes] == sorted(names)
    assert [node.name for node in decoded.nodes][:3] == [b"UPPER", b"Z", b"_"]
    assert decoded.nodes[-1].name == b"\xff\xfe"


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Tree([file_node(b"same", []), file_node(b"same", [])]).encode()


def test_every_field_is_written_in_go_struct_order() -> None:
    node = Node(
        name=b"everything",
        type="chardev",
        mode=0o600,
        mtime=TIME,
        atime=TIME,
        ctime=TIME,
        uid=1000,
        gid=1000,
        user="user",
        group="group",
        inode=7,
        device_id=8,
        size=9,
        links=2,
        linktarget="t",
        linktarget_raw="dA==",
        extended_attributes=[{"name": "user.x", "value": "eQ=="}],
        generic_attributes={"windows.creation_time": "AA=="},
        device=1234,
        content=[CONTENT_ID],
        subtree=SUBTREE_ID,
        error="e",
    )
    encoded = Tree([node]).encode()
    (document,) = json.loads(encoded, object_pairs_hook=list)[0][1]
    assert [key for key, _ in document] == GO_FIELD_ORDER
    assert encoded.endswith(b"}]}\n") and encoded.count(b"\n") == 1


def test_names_are_go_quoted_then_json_escaped_on_disk() -> None:
    """§9.3: on disk `back\\slash` is "back\\\\\\\\slash" and `quote"name` is "quote\\\\\\"name"."""
    names = [b"back\\slash", b'quote"name', b"bytes-\xff\xfe", b"new\nline", b"<&>", "\u2028sep".encode()]
    encoded = Tree([file_node(name, []) for name in names]).encode()
    assert b'"name":"back\\\\\\\\slash"' in encoded
    assert b'"name":"quote\\\\\\"name"' in encoded
    assert b'"name":"bytes-\\\\xff\\\\xfe"' in encoded
    assert b'"name":"new\\\\nline"' in encoded
    assert b'"name":"\\u003c\\u0026\\u003e"' in encoded
    assert b'"name":"\\\\u2028sep"' in encoded
    assert [node.name for node in Tree.decode(encoded).nodes] == sorted(names)


def test_decoding_restic_trees_tolerates_missing_and_unknown_fields() -> None:
    data = (
        b'{"nodes":[{"name":"f","type":"file","mtime":"2024-01-02T03:04:05.123456789Z",'
        b'"content":["' + CONTENT_ID.hex().encode() + b'"],"program_extra":1}],"unknown":true}\n'
    )
    (node,) = Tree.decode(data).nodes
    assert (node.name, node.type, node.mode, node.size, node.content) == (b"f", "file", 0, 0, [CONTENT_ID])
    assert node.mtime == "2024-01-02T03:04:05.123456789Z"
    assert Tree.decode(b'{"nodes":null}\n').nodes == []


def test_link_target_raw_wins_over_linktarget() -> None:
    node = Node(name=b"l", type="symlink", linktarget="replaced\ufffd", linktarget_raw="cmF3/w==")
    assert node.link_target_bytes == b"raw\xff"
    assert Node(name=b"l", type="symlink", linktarget="plain").link_target_bytes == b"plain"
