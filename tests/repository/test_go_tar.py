"""The header bytes of go_tar, where Go's archive/tar makes choices Python's tarfile does not.

The interop tests hold whole streams against restic's; these pin the edges a snapshot rarely
reaches: a PAX record whose length gains a digit, and where a long path splits.
"""

from __future__ import annotations

import pytest

from lockstep.repository import go_tar
from lockstep.repository.go_tar import GoTarHeader, header_bytes, pax_record, split_ustar_path


@pytest.mark.parametrize("value_length", [0, 1, 4, 5, 6, 86, 87, 88, 89, 990, 991, 992, 993, 994, 995])
def test_a_pax_record_counts_its_own_length(value_length: int) -> None:
    record = pax_record(b"path", b"x" * value_length)
    length, _, rest = record.partition(b" ")
    assert int(length) == len(record)
    assert rest == b"path=" + b"x" * value_length + b"\n"


def test_a_long_path_splits_at_the_last_slash_that_fits() -> None:
    assert split_ustar_path(b"a" * 100) is None  # fits the name field as it is
    assert split_ustar_path(b"d" * 60 + b"/" + b"e" * 60) == (b"d" * 60, b"e" * 60)
    assert split_ustar_path(b"d" * 60 + b"/" + b"e" * 101) is None  # the name part is too long
    assert split_ustar_path(b"p" * 156 + b"/name") is None  # the prefix part is too long
    assert split_ustar_path(("d" * 60 + "/caf\u00e9" + "e" * 60).encode()) is None  # not ASCII


def test_a_directory_name_too_long_for_ustar_ends_before_its_slash() -> None:
    """Go's formatString: a path cut off at 100 bytes right after a slash gets a NUL there, so
    a reader that ignores PAX does not take a file for a directory."""
    name = b"x" * 99 + b"/" + b"y" * 200
    header = GoTarHeader(name, go_tar.REGULAR, 0o644, 0, 0, b"root", b"root", 0)
    blocks = header_bytes(header)
    main = blocks[-512:]
    assert main[:100] == b"x" * 99 + b"\0"
    # The PAX header's own name (x.../PaxHeaders.0/y...) cut at 100 bytes loses its slash too.
    assert blocks[:100] == b"x" * 99 + b"\0"
    assert blocks[156:157] == b"x"
