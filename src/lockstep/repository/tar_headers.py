"""What a node's tar header carries beyond name, type, mode and owner, as restic's dump writes it.

restic's dump (Go's archive/tar, format left to the writer) puts the modification time in the
ustar field, rounded to the nearest second, and writes no access or change time. It adds PAX
records for a node's extended attributes (``SCHILY.xattr.NAME``, the raw value) and its Linux
POSIX ACLs (``SCHILY.acl.access`` / ``SCHILY.acl.default``, in the long text form GNU tar reads).
lockstep writes the same, and in one place more: a modification time with a fraction of a second
also goes into a PAX ``mtime`` record, to the nanosecond, so `tar x` restores it as exactly as
`repo restore` does (a reader that ignores PAX sees restic's rounded second).
"""

from __future__ import annotations

import base64
import binascii
import struct
import tarfile
from collections.abc import Iterable, Mapping
from typing import Any

NANOSECONDS = 1_000_000_000

# Linux's ACL xattr: a little-endian version (2), then (tag u16, permissions u16, id u32) entries.
_ACL_VERSION = 2
_ACL_ENTRY = struct.Struct("<HHI")
_ACL_TAGS = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask", 0x20: "other"}
_ACL_TAGS_WITH_ID = frozenset({0x02, 0x08})
_ACL_RECORDS = {"system.posix_acl_access": "SCHILY.acl.access", "system.posix_acl_default": "SCHILY.acl.default"}


def tar_mtime(mtime_ns: int) -> tuple[int, str | None]:
    """The ustar header's seconds (Go's time.Round: to the nearest second, a half one up to the
    later time) and the exact PAX mtime record, None when the time is a whole second (restic's
    header then, byte for byte)."""
    seconds, fraction = divmod(mtime_ns, NANOSECONDS)  # fraction >= 0, also before 1970
    if fraction == 0:
        return seconds, None
    rounded = seconds + 1 if fraction >= NANOSECONDS // 2 else seconds
    sign = "-" if mtime_ns < 0 else ""
    whole, part = divmod(abs(mtime_ns), NANOSECONDS)
    return rounded, f"{sign}{whole}.{part:09d}".rstrip("0")


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


class RawPaxTarInfo(tarfile.TarInfo):
    """A TarInfo whose PAX records carry bytes that are not UTF-8 (a name, an xattr value) raw, as
    Go's archive/tar and so restic write them. tarfile would announce them with a
    ``hdrcharset=BINARY`` record, which GNU tar warns about on every such entry ("Ignoring unknown
    extended header keyword"); tarfile reads raw values back without it (UTF-8, else its
    surrogate escapes)."""

    @classmethod
    def _create_pax_generic_header(
        cls, pax_headers: dict[str, str], type: bytes, encoding: str
    ) -> bytes:  # tarfile's own signature
        records = b""
        for keyword, value in pax_headers.items():
            raw = value.encode("utf-8", "surrogateescape")
            line = keyword.encode("utf-8") + b"=" + raw + b"\n"
            # A record is "LENGTH KEYWORD=VALUE\n", LENGTH counting its own digits and the space.
            length = len(line) + 1
            length += len(str(length + len(str(length))))
            records += str(length).encode("ascii") + b" " + line
        info = {"name": "././@PaxHeader", "type": type, "size": len(records), "magic": tarfile.POSIX_MAGIC}
        header: bytes = cls._create_header(info, tarfile.USTAR_FORMAT, "ascii", "replace")  # type: ignore[attr-defined]
        payload: bytes = cls._create_payload(records)  # type: ignore[attr-defined]
        return header + payload


def xattr_records(attributes: Iterable[Mapping[str, Any]] | None) -> dict[str, str]:
    """PAX records for a node's extended attributes (name, base64 value, as restic stores them).
    Values are raw bytes, carried in the str as surrogate escapes: tarfile then writes them
    unchanged (with hdrcharset=BINARY when they are not UTF-8)."""
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
