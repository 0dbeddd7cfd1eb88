"""Table data out of a custom-format stream (copy_frames.py): the compiled and the Python unframe
give the same text whatever the reads, and a damaged or cut stream is an error, never less data."""

from __future__ import annotations

import io
import random
from collections.abc import Callable

import pytest

from lockstep.databases import copy_frames
from lockstep.databases.copy_frames import Unframed, data_blocks, unframe_in_python
from lockstep.databases.postgresql_archive import BLOCK_DATA
from lockstep.errors import SourceError
from tests.conftest import missing

try:
    from lockstep.databases._copy_frames import unframe as unframe_in_c
except ImportError:  # pragma: no cover - only without a C compiler
    unframe_in_c = None


def _implementations() -> list[Callable[[bytes, int, int, int], Unframed]]:
    return [unframe_in_python] if unframe_in_c is None else [unframe_in_python, unframe_in_c]


def test_restores_use_the_compiled_module() -> None:
    if unframe_in_c is None:
        missing("the _copy_frames extension is not built (`pip install -e .` builds it with a C compiler)")
    assert copy_frames.unframe is unframe_in_c


def _integer(value: int, int_size: int) -> bytes:
    return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(int_size, "little")


def _block(dump_id: int, rows: list[bytes], int_size: int = 4) -> bytes:
    frames = b"".join(_integer(len(row), int_size) + row for row in rows)
    return bytes([BLOCK_DATA]) + _integer(dump_id, int_size) + frames + _integer(0, int_size)


def _rows(count: int, seed: int) -> list[bytes]:
    chance = random.Random(seed)
    return [
        b"\t".join(bytes(chance.choices(b"abc\\\x00\xff.", k=chance.randrange(0, 40))) for _ in range(3)) + b"\n"
        for _ in range(count)
    ]


class _Pieces:
    """A stream that hands out its bytes in pieces of the sizes given, over and over."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data = io.BytesIO(data)
        self._sizes = sizes
        self._turn = 0

    def read(self, _size: int) -> bytes:
        self._turn += 1
        return self._data.read(self._sizes[self._turn % len(self._sizes)])


@pytest.mark.parametrize("implementation", _implementations())
@pytest.mark.parametrize("sizes", [[1], [2, 3], [5, 1, 7], [4096], [1 << 20]])
@pytest.mark.parametrize("int_size", [4, 8])
def test_every_block_comes_out_whole_whatever_the_reads(
    monkeypatch: pytest.MonkeyPatch,
    implementation: Callable[[bytes, int, int, int], Unframed],
    sizes: list[int],
    int_size: int,
) -> None:
    monkeypatch.setattr(copy_frames, "unframe", implementation)
    tables = {7: _rows(300, 1), 9: [], 12: _rows(1, 2), 400: _rows(50, 3)}
    stream = b"".join(_block(dump_id, rows, int_size) for dump_id, rows in tables.items())
    buffered, rest = stream[:3], stream[3:]

    seen: dict[int, list[bytes]] = {}
    ends: list[int] = []
    for dump_id, text, ended in data_blocks(buffered, _Pieces(rest, sizes).read, int_size, 1 << 16):
        seen.setdefault(dump_id, []).append(text)
        if ended:
            ends.append(dump_id)

    assert ends == list(tables)
    assert {dump_id: b"".join(texts) for dump_id, texts in seen.items()} == {
        dump_id: b"".join(rows) for dump_id, rows in tables.items()
    }


@pytest.mark.parametrize("implementation", _implementations())
def test_a_negative_length_is_refused(implementation: Callable[[bytes, int, int, int], Unframed]) -> None:
    with pytest.raises(ValueError, match="invalid length"):
        implementation(_integer(3, 4) + b"ab\n" + _integer(-2, 4) + b"xx", 0, 4, 0)
    with pytest.raises(ValueError, match="invalid length"):
        implementation(b"\x02" + (3).to_bytes(4, "little") + b"ab\n", 0, 4, 0)


@pytest.mark.parametrize("implementation", _implementations())
def test_a_cut_length_waits_for_more_bytes(implementation: Callable[[bytes, int, int, int], Unframed]) -> None:
    data = _integer(3, 4) + b"ab\n" + _integer(5, 4)[:2]
    assert implementation(data, 0, 4, 0) == (b"ab\n", 8, 0, False)
    assert implementation(b"xyz", 0, 4, 5) == (b"xyz", 3, 2, False)


@pytest.mark.parametrize("cut", [1, 4, 6, 20, -6, -1])
def test_a_stream_cut_short_is_an_error(cut: int) -> None:
    stream = _block(7, _rows(10, 4)) + _block(8, _rows(10, 5))
    with pytest.raises(SourceError, match="ends inside"):
        list(data_blocks(b"", io.BytesIO(stream[:cut] if cut > 0 else stream[: len(stream) + cut]).read, 4, 7))


def test_a_block_that_is_not_table_data_is_an_error() -> None:
    large_objects = bytes([3]) + _integer(7, 4) + _integer(0, 4)
    with pytest.raises(SourceError, match="block of type 3"):
        list(data_blocks(large_objects, io.BytesIO(b"").read, 4, 7))


def test_a_damaged_frame_names_the_entry() -> None:
    damaged = bytes([BLOCK_DATA]) + _integer(42, 4) + b"\x07" + (3).to_bytes(4, "little") + b"ab\n"
    with pytest.raises(SourceError, match="entry 42 is damaged"):
        list(data_blocks(damaged, io.BytesIO(b"").read, 4, 7))


def test_a_negative_entry_id_is_an_error() -> None:
    block = bytes([BLOCK_DATA]) + _integer(-7, 4) + _integer(0, 4)
    with pytest.raises(SourceError, match="negative entry ID"):
        list(data_blocks(block, io.BytesIO(b"").read, 4, 7))
