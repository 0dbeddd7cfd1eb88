#!/usr/bin/env python3
"""Blob-ID hashing speed on one thread: hashlib one chunk at a time against _sha256_lanes in batches.

    python bench/sha256_lanes.py                 # ~725 MB in ~480 chunks, batches of 16, best of 3
    python bench/sha256_lanes.py --batch 32      # another batch size
    python bench/sha256_lanes.py --total-mb 200  # a quicker look
    python bench/sha256_lanes.py --path avx2     # another of _sha256_lanes.AVAILABLE_PATHS

Builds ~725 MB of random bytes once, in one bytearray, and cuts it into chunks sized like the
chunker's (0.5 MiB plus an exponential with a 1 MiB mean, at most 4 MiB: about 1.5 MiB on
average). Then hashes every chunk (a) with `hashlib.sha256(chunk).digest()` and (b) with
`_sha256_lanes.digests()` on memoryviews of `--batch` chunks at a time, and prints MB/s for both
and their ratio. MB/s is measured on the thread's CPU time, which other processes on a shared
machine disturb much less than wall time (printed too). Both must give the same digests.
Needs the extension built: `pip install -e .` from the repository root.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from lockstep.repository import _sha256_lanes  # noqa: E402

MEBIBYTE = 1 << 20
MINIMUM_CHUNK = MEBIBYTE // 2
MAXIMUM_CHUNK = 4 * MEBIBYTE
MEAN_ABOVE_MINIMUM = MEBIBYTE
FILL_PIECE = 64 * MEBIBYTE  # random.randbytes cannot make more than 256 MiB at once


@dataclass
class Measurement:
    cpu_seconds: float
    wall_seconds: float
    digests: list[bytes]


def build_data(total_bytes: int, seed: int) -> bytearray:
    """`total_bytes` of deterministic random bytes, filled in place piece by piece."""
    generator = random.Random(seed)
    data = bytearray(total_bytes)
    for start in range(0, total_bytes, FILL_PIECE):
        end = min(start + FILL_PIECE, total_bytes)
        data[start:end] = generator.randbytes(end - start)
    return data


def cut_chunks(data: bytearray, seed: int) -> list[memoryview]:
    """Memoryviews of consecutive pieces of `data`, sized like the chunker's chunks."""
    generator = random.Random(seed)
    view = memoryview(data)
    chunks: list[memoryview] = []
    start = 0
    while start < len(data):
        size = MINIMUM_CHUNK + int(generator.expovariate(1 / MEAN_ABOVE_MINIMUM))
        end = min(start + min(size, MAXIMUM_CHUNK), len(data))
        chunks.append(view[start:end])
        start = end
    return chunks


def hash_with_hashlib(chunks: list[memoryview]) -> list[bytes]:
    return [hashlib.sha256(chunk).digest() for chunk in chunks]


def hash_with_lanes(chunks: list[memoryview], batch: int, path: str) -> list[bytes]:
    digests: list[bytes] = []
    for start in range(0, len(chunks), batch):
        digests.extend(_sha256_lanes.digests(chunks[start : start + batch], path=path))
    return digests


def measure(hash_all: Callable[[], list[bytes]], repeats: int) -> Measurement:
    """The fastest of `repeats` runs, by CPU time."""
    measurements: list[Measurement] = []
    for _ in range(repeats):
        wall_start = time.perf_counter()
        cpu_start = time.thread_time()
        digests = hash_all()
        measurements.append(Measurement(time.thread_time() - cpu_start, time.perf_counter() - wall_start, digests))
    return min(measurements, key=lambda measurement: measurement.cpu_seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total-mb", type=float, default=725.0, help="bytes to hash, in MB (10^6)")
    parser.add_argument("--batch", type=int, default=16, help="chunks per digests() call")
    parser.add_argument(
        "--path", choices=_sha256_lanes.AVAILABLE_PATHS, default=_sha256_lanes.PATH, help="the code digests() runs"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per method; the fastest counts")
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args()

    data = build_data(int(arguments.total_mb * 1e6), arguments.seed)
    chunks = cut_chunks(data, arguments.seed)
    megabytes = len(data) / 1e6
    print(
        f"{megabytes:.0f} MB in {len(chunks)} chunks of {megabytes / len(chunks):.2f} MB on average; "
        f"path {arguments.path}, batches of {arguments.batch}, best of {arguments.repeats}"
    )

    hashlib_result = measure(lambda: hash_with_hashlib(chunks), arguments.repeats)
    lanes_result = measure(lambda: hash_with_lanes(chunks, arguments.batch, arguments.path), arguments.repeats)
    if lanes_result.digests != hashlib_result.digests:
        print("digests() and hashlib disagree", file=sys.stderr)
        return 1

    for name, result in (("hashlib.sha256, one chunk", hashlib_result), ("_sha256_lanes.digests", lanes_result)):
        print(
            f"{name:28} {megabytes / result.cpu_seconds:7.0f} MB/s"
            f"   (wall time: {megabytes / result.wall_seconds:.0f} MB/s)"
        )
    print(f"{'ratio':28} {hashlib_result.cpu_seconds / lanes_result.cpu_seconds:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
