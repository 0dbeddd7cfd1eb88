"""The multi-buffer SHA-256 extension gives hashlib's digests on every path, for every batch shape."""

from __future__ import annotations

import hashlib
import mmap
import platform
import random
import threading
from pathlib import Path

import pytest

from tests.conftest import require_all

try:
    from lockstep.repository import _sha256_lanes
except ImportError:  # setup.py builds it as optional: without a C compiler lockstep uses hashlib
    if require_all():
        raise
    pytest.skip("the _sha256_lanes extension is not built (`pip install -e .` builds it)", allow_module_level=True)
from lockstep.repository._sha256_lanes import AVAILABLE_PATHS, LANES, PATH, digests

EDGE_LENGTHS = [0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129]
MEBIBYTE = 1 << 20

# None is the default path; each name forces one path, so the scalar code and every vector path
# this CPU has are all checked.
PATH_CHOICES = [None, *AVAILABLE_PATHS]


def expected(buffers: list[bytes] | list[bytearray] | list[memoryview]) -> list[bytes]:
    return [hashlib.sha256(buffer).digest() for buffer in buffers]


def mixed_lengths(generator: random.Random, count: int) -> list[int]:
    """Lengths from empty to a few hundred KiB, so lanes finish at very different times."""
    choices = [
        lambda: generator.choice(EDGE_LENGTHS),
        lambda: generator.randrange(0, 4096),
        lambda: generator.randrange(4096, 400_000),
    ]
    return [generator.choice(choices)() for _ in range(count)]


def cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_default_path_is_an_available_one() -> None:
    """PATH is among AVAILABLE_PATHS, the scalar code is always there, and LANES fits PATH."""
    assert AVAILABLE_PATHS[0] == "scalar"
    assert PATH in AVAILABLE_PATHS
    default_lanes = 1 if PATH == "scalar" else 8
    assert default_lanes == LANES


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="AVX2 and AVX-512 are x86-64 only")
def test_vector_paths_are_used_when_the_cpu_has_them() -> None:
    """With AVX2 the 8 lanes are the default; with AVX-512VL too they use its instructions."""
    flags = cpu_flags()
    if "avx2" not in flags:
        pytest.skip("this CPU has no AVX2")
    assert LANES == 8
    assert "avx2" in AVAILABLE_PATHS
    if {"avx512f", "avx512vl"} <= flags:
        assert PATH == "avx512vl"
        assert "avx512" in AVAILABLE_PATHS
    else:
        assert PATH == "avx2"


@pytest.mark.parametrize("path", PATH_CHOICES)
@pytest.mark.parametrize("length", EDGE_LENGTHS)
def test_padding_edge_lengths(path: str | None, length: int) -> None:
    """Lengths around the one-or-two padding blocks boundary (55/56) and block multiples."""
    data = random.Random(length).randbytes(length)
    assert digests([data], path=path) == expected([data])


@pytest.mark.parametrize("path", PATH_CHOICES)
def test_edge_lengths_in_one_batch(path: str | None) -> None:
    """All edge lengths side by side, so the lanes hold messages with 1 and 2 padding blocks at once."""
    generator = random.Random(1)
    buffers = [generator.randbytes(length) for length in EDGE_LENGTHS * 3]
    assert digests(buffers, path=path) == expected(buffers)


@pytest.mark.parametrize("path", PATH_CHOICES)
def test_random_lengths_up_to_three_mebibytes(path: str | None) -> None:
    """Chunk-sized messages, including ones that are not a multiple of the block size."""
    generator = random.Random(2)
    buffers = [generator.randbytes(generator.randrange(0, 3 * MEBIBYTE)) for _ in range(10)]
    assert digests(buffers, path=path) == expected(buffers)


@pytest.mark.parametrize("path", PATH_CHOICES)
@pytest.mark.parametrize("count", [1, 7, 8, 9, 17, 100])
def test_batches_with_very_different_lengths(path: str | None, count: int) -> None:
    """Fewer, as many and more messages than lanes: lanes are refilled and run out at different times."""
    generator = random.Random(count)
    buffers = [generator.randbytes(length) for length in mixed_lengths(generator, count)]
    assert digests(buffers, path=path) == expected(buffers)


@pytest.mark.parametrize("path", PATH_CHOICES)
def test_one_long_message_among_many_short_ones(path: str | None) -> None:
    """One lane stays on the long message while the others are refilled many times."""
    generator = random.Random(3)
    short_ones = [generator.randbytes(generator.randrange(0, 300)) for _ in range(60)]
    buffers = [*short_ones[:5], generator.randbytes(MEBIBYTE + 17), *short_ones[5:]]
    assert digests(buffers, path=path) == expected(buffers)


@pytest.mark.parametrize("path", PATH_CHOICES)
def test_equal_lengths_finish_together(path: str | None) -> None:
    """All lanes finish in the same step and are refilled together."""
    generator = random.Random(4)
    buffers = [generator.randbytes(1000) for _ in range(40)]
    assert digests(buffers, path=path) == expected(buffers)


@pytest.mark.parametrize("path", PATH_CHOICES)
def test_lanes_change_paths_in_the_middle_of_their_padding(path: str | None) -> None:
    """8 empty messages end after one step; the 8 others (two padding blocks each) are part way
    through when the last ones move on to a narrower path or the scalar code."""
    generator = random.Random(8)
    buffers = [b""] * 8 + [generator.randbytes(56 + 64 * index) for index in range(8)]
    generator.shuffle(buffers)
    assert digests(buffers, path=path) == expected(buffers)


@pytest.mark.parametrize("path", PATH_CHOICES)
def test_many_random_batches_of_short_messages(path: str | None) -> None:
    """Many batch sizes and length mixes, so lanes are refilled, idle and moved in every pattern."""
    generator = random.Random(9)
    for _ in range(150):
        count = generator.randrange(0, 48)
        buffers = [generator.randbytes(generator.randrange(0, 1500)) for _ in range(count)]
        assert digests(buffers, path=path) == expected(buffers)


@pytest.mark.parametrize("path", PATH_CHOICES)
def test_buffer_kinds(path: str | None) -> None:
    """bytes, bytearray and memoryview slices at odd offsets of one bytearray, mixed in a tuple."""
    generator = random.Random(5)
    backing = bytearray(generator.randbytes(200_003))
    view = memoryview(backing)
    buffers = (
        generator.randbytes(1000),
        bytearray(generator.randbytes(70)),
        view[1:],
        view[3:3],
        view[7 : 7 + 64],
        view[13 : 13 + 100_001],
        view[199_999:],
        memoryview(generator.randbytes(129)),
    )
    assert digests(buffers, path=path) == [hashlib.sha256(buffer).digest() for buffer in buffers]


@pytest.mark.parametrize("path", PATH_CHOICES)
def test_memoryview_of_an_mmap(path: str | None) -> None:
    """Slices of a memory map, the way a file's chunks can be hashed without copying."""
    data = random.Random(6).randbytes(300_000)
    with mmap.mmap(-1, len(data)) as mapped:
        mapped.write(data)
        view = memoryview(mapped)
        buffers = [view[0:65], view[65:150_001], view[150_001:]]
        try:
            result = digests(buffers, path=path)
        finally:  # the map cannot close while views of it exist
            for buffer in [*buffers, view]:
                buffer.release()
    assert result == expected([data[0:65], data[65:150_001], data[150_001:]])


@pytest.mark.parametrize("path", PATH_CHOICES)
def test_empty_batch(path: str | None) -> None:
    """No buffers, no digests."""
    assert digests([], path=path) == []


def test_paths_agree_with_each_other() -> None:
    """Every available path gives the same digests for the same batch."""
    generator = random.Random(7)
    buffers = [generator.randbytes(length) for length in mixed_lengths(generator, 33)]
    results = [digests(buffers, path=path) for path in AVAILABLE_PATHS]
    assert all(result == results[0] for result in results)
    assert results[0] == expected(buffers)


def test_non_buffer_item_raises_type_error() -> None:
    """An item without the buffer protocol is refused, and the buffers acquired before it are released."""
    backing = bytearray(b"abc")
    with pytest.raises(TypeError):
        digests([backing, "text"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        digests([backing, 5])  # type: ignore[list-item]
    backing.extend(b"def")  # would raise BufferError if the export had leaked
    assert backing == b"abcdef"


def test_buffers_are_released_after_success() -> None:
    """A bytearray can be resized again once digests() returns."""
    backing = bytearray(b"abc")
    digests([backing, memoryview(backing)[1:]])
    backing.extend(b"def")
    assert backing == b"abcdef"


def test_single_buffer_instead_of_a_sequence_raises_type_error() -> None:
    """digests(b"...") would otherwise hash nothing useful; it must be a sequence of buffers."""
    with pytest.raises(TypeError):
        digests(b"abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        digests(5)  # type: ignore[arg-type]


def test_non_contiguous_memoryview_raises_buffer_error() -> None:
    """A strided view has no contiguous bytes to hash."""
    with pytest.raises(BufferError):
        digests([memoryview(bytearray(100))[::2]])


def test_unknown_path_raises_value_error() -> None:
    """Only the names in AVAILABLE_PATHS are accepted."""
    with pytest.raises(ValueError, match="'sse2'"):
        digests([b"abc"], path="sse2")
    with pytest.raises(TypeError):
        digests([b"abc"], path=8)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", PATH_CHOICES)
def test_three_threads_at_once(path: str | None) -> None:
    """The GIL is released while hashing; concurrent calls on different data keep their own results."""
    failures: list[str] = []
    start = threading.Barrier(3)

    def hash_repeatedly(seed: int) -> None:
        generator = random.Random(100 + seed)
        buffers = [generator.randbytes(length) for length in mixed_lengths(generator, 20)]
        wanted = expected(buffers)
        start.wait()
        for round_number in range(5):
            if digests(buffers, path=path) != wanted:
                failures.append(f"thread {seed}, round {round_number}")

    threads = [threading.Thread(target=hash_repeatedly, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_module_is_the_compiled_extension() -> None:
    """The tests must exercise the C code, not something else that happens to be importable."""
    assert _sha256_lanes.__file__ is not None
    assert not _sha256_lanes.__file__.endswith(".py")
