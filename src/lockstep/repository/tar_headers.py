"""What a node's tar header carries beyond name, type, mode and owner, as restic's dump writes it.

restic's dump (Go's archive/tar, format left to the writer) puts the modification time in the
ustar field, rounded to the nearest second, and writes no access or change time: a fraction of a
second is lost, in restic's stream and so in lockstep's. It adds PAX records for a node's extended
attributes (``SCHILY.xattr.NAME``, the raw value) and its Linux POSIX ACLs (``SCHILY.acl.access`` /
``SCHILY.acl.default``, in the long text form GNU tar reads). go_tar writes the bytes.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Iterable, Mapping
from typing import Any

NANOSECONDS = 1_000_000_000
# Go's zero time.Time (0001-01-01T00:00:00Z), a node's time when it has none: tar writes 0 for it.
GO_ZERO_TIME_NS = -62_135_596_800 * NANOSECONDS

# Linux's ACL xattr: a little-endian version (2), then (tag u16, permissions u16, id u32) entries.
_ACL_VERSION = 2
_ACL_ENTRY = struct.Struct("<HHI")
_ACL_TAGS = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask", 0x20: "other"}
_ACL_TAGS_WITH_ID = frozenset({0x02, 0x08})
_ACL_RECORDS = {"system.posix_acl_access": "SCHILY.acl.access", "system.posix_acl_default": "SCHILY.acl.default"}


def tar_mtime(mtime_ns: int) -> int:
    """The ustar header's seconds: Go's time.Round, to the nearest second, a half one up to the
    later time (also before 1970), as restic's writer rounds every time it writes."""
    seconds, fraction = divmod(mtime_ns, NANOSECONDS)  # fraction >= 0, also before 1970
    return seconds + 1 if fraction >= NANOSECONDS // 2 else seconds


def linux_acl_text(value: bytes) -> str | None:
    """A Linux ACL xattr in POSIX.1e long text form (``user::rw-\\nuser:1000:r--\\n...``, IDs in
    decimal, since the snapshot may come from another machine), as restic's formatLinuxACL
    writes it; None for a value that is not one, which restic leaves out too."""
    if len(value) < 4 or (len(value) - 4) % _ACL_ENTRY.size:
        return None
    (version,) = struct.unpack_from("<I", value)
    if version != _ACL_VERSION:
        return None
    lines = []
    for tag, permissions, identifier in _ACL_ENTRY.iter_unpack(value[4:]):
        if tag not in _ACL_TAGS:
            return None
        qualifier = str(identifier) if tag in _ACL_TAGS_WITH_ID else ""
        bits = "".join(letter if permissions & bit else "-" for letter, bit in (("r", 4), ("w", 2), ("x", 1)))
        lines.append(f"{_ACL_TAGS[tag]}:{qualifier}:{bits}\n")
    return "".join(lines)


def xattr_records(attributes: Iterable[Mapping[str, Any]] | None) -> dict[str, str]:
    """PAX records for a node's extended attributes (name, base64 value, as restic stores them).
    Values are raw bytes, carried in the str as surrogate escapes."""
    records: dict[str, str] = {}
    for attribute in attributes or ():
        name = str(attribute.get("name") or "")
        if not name:
            continue
        try:
            value = base64.b64decode(str(attribute.get("value") or ""), validate=True)
        except (binascii.Error, ValueError):
            continue  # `repo restore` warns about it; a dump leaves it out
        if name in _ACL_RECORDS:
            text = linux_acl_text(value)
            if text is not None:
                records[_ACL_RECORDS[name]] = text
        else:
            records[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")
    return records
