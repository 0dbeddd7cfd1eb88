"""The PAX records and times of `repo dump`'s tar headers, as restic's dump writes them."""

from __future__ import annotations

import base64
import struct

import pytest

from lockstep.repository.tar_headers import linux_acl_text, tar_mtime, xattr_records


@pytest.mark.parametrize(
    ("mtime_ns", "expected"),
    [
        (1_600_000_000_000_000_000, 1_600_000_000),
        (1_600_000_000_123_456_789, 1_600_000_000),
        (1_600_000_000_500_000_000, 1_600_000_001),  # Go rounds a half second up
        (1_600_000_000_999_999_999, 1_600_000_001),
        (-1_500_000_000, -1),  # to the later second, as Go's Time.Round
        (-1_200_000_000, -1),
        (-2_000_000_000, -2),
    ],
)
def test_tar_mtime_is_gos_rounded_second(mtime_ns: int, expected: int) -> None:
    assert tar_mtime(mtime_ns) == expected


def acl(*entries: tuple[int, int, int], version: int = 2) -> bytes:
    return struct.pack("<I", version) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


def test_linux_acls_read_as_restic_formats_them() -> None:
    value = acl((0x01, 7, 0xFFFFFFFF), (0x02, 5, 1000), (0x04, 4, 0), (0x08, 2, 50), (0x10, 7, 0), (0x20, 1, 0))
    assert linux_acl_text(value) == "user::rwx\nuser:1000:r-x\ngroup::r--\ngroup:50:-w-\nmask::rwx\nother::--x\n"


@pytest.mark.parametrize(
    "value", [b"", b"\x02\x00\x00", acl((0x01, 7, 0), version=1), acl((0x40, 7, 0)), acl((0x01, 7, 0)) + b"\x00"]
)
def test_a_value_that_is_no_acl_is_left_out(value: bytes) -> None:
    assert linux_acl_text(value) is None
    attribute = {"name": "system.posix_acl_access", "value": base64.b64encode(value).decode()}
    assert xattr_records([attribute]) == {}


def test_xattrs_become_schily_records_with_their_raw_bytes() -> None:
    attributes = [
        {"name": "user.comment", "value": base64.b64encode(b"a note").decode()},
        {"name": "user.binary", "value": base64.b64encode(b"\xff\x00").decode()},
        {"name": "system.posix_acl_default", "value": base64.b64encode(acl((0x01, 6, 0))).decode()},
        {"name": "user.broken", "value": "not base64!"},
    ]
    records = xattr_records(attributes)
    assert records == {
        "SCHILY.xattr.user.comment": "a note",
        "SCHILY.xattr.user.binary": "\udcff\x00",
        "SCHILY.acl.default": "user::rw-\n",
    }
    assert records["SCHILY.xattr.user.binary"].encode("utf-8", "surrogateescape") == b"\xff\x00"
