#!/usr/bin/env python3
"""The two sweeps behind lockstep's chunk size and zstd level (BENCHMARKS.md).

    python bench/chunking_and_compression.py            # both sweeps on the scale-8 dumps
    python bench/chunking_and_compression.py --limit 100000000   # a quicker look
    python bench/chunking_and_compression.py --repeats 5   # the spread across polynomials

Needs the dumps that bench/backup_stream.py builds (bench/results/data/shop8.sql and
shop8-changed.sql). The chunk sweep backs both dumps up with the engine, in-process, into a
fresh repository per setting, and runs restic on the same files for comparison. Every fresh
repository has a random chunker polynomial, and the bytes a second backup stores depend on it
by a percent or two: `--repeats N` backs up N times per setting (and runs restic N times).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zstandard
from pyfastcdc import FastCDC

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from lockstep.repository import chunker  # noqa: E402
from lockstep.repository.archiver import Archiver  # noqa: E402
from lockstep.repository.repository import Repository  # noqa: E402
from lockstep.storage.local import LocalBackend  # noqa: E402

# FastCDC avg, min in KiB; 1024 + 512 is the chosen one (1024 + 256 before session 4).
CHUNK_SETTINGS = [
    (256, 64),
    (512, 128),
    (768, 256),
    (1024, 256),
    (768, 512),
    (1024, 512),
    (1536, 256),
    (1536, 512),
    (2048, 256),
]


def directory_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def read_limited(path: Path, limit: int | None) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(limit) if limit else handle.read()


def backed_up_twice(base: bytes, changed: bytes, repository_path: Path) -> tuple[int, int]:
    """Bytes stored by a first backup of `base` and added by a second one of `changed`."""
    repository = Repository.init(LocalBackend(repository_path), "benchmark")
    Archiver(repository).backup_stream(io.BytesIO(base), "shop.sql")
    first = directory_bytes(repository_path)
    repository.close()
    repository = Repository.open(LocalBackend(repository_path), "benchmark")
    repository.load_index()
    Archiver(repository).backup_stream(io.BytesIO(changed), "shop.sql")
    second = directory_bytes(repository_path) - first
    repository.close()
    shutil.rmtree(repository_path)
    return first, second


def restic_twice(base: bytes, changed: bytes, work: Path) -> tuple[int, int]:
    restic_path = work / "restic"
    env = {
        **os.environ,
        "RESTIC_PASSWORD": "benchmark",
        "RESTIC_REPOSITORY": str(restic_path),
        "RESTIC_CACHE_DIR": str(work / "restic-cache"),
    }
    subprocess.run(["restic", "init", "-q"], env=env, check=True, capture_output=True)
    backup = ["restic", "backup", "-q", "--stdin", "--stdin-filename", "shop.sql"]
    subprocess.run(backup, input=base, env=env, check=True)
    first = directory_bytes(restic_path)
    subprocess.run(backup, input=changed, env=env, check=True)
    second = directory_bytes(restic_path) - first
    shutil.rmtree(restic_path)
    return first, second


def _megabytes(values: list[int]) -> str:
    shown = ", ".join(f"{value / 1e6:.1f}" for value in values)
    return f"{shown} (mean {sum(values) / len(values) / 1e6:.2f})" if len(values) > 1 else shown


def chunk_sweep(base: bytes, changed: bytes, work: Path, repeats: int) -> None:
    print("chunk average (avg + min): first backup MB; second adds MB")
    chosen = chunker.AVERAGE_SIZE, chunker.MINIMUM_SIZE
    for average, minimum in CHUNK_SETTINGS:
        chunker.AVERAGE_SIZE, chunker.MINIMUM_SIZE = average * 1024, minimum * 1024
        runs = [backed_up_twice(base, changed, work / f"chunks-{average}-{minimum}") for _ in range(repeats)]
        print(
            f"{average + minimum:>6} KiB ({average} + {minimum}): "
            f"{_megabytes([first for first, _ in runs])}; {_megabytes([second for _, second in runs])}",
            flush=True,
        )
    chunker.AVERAGE_SIZE, chunker.MINIMUM_SIZE = chosen
    runs = [restic_twice(base, changed, work) for _ in range(repeats)]
    print(f"restic: {_megabytes([first for first, _ in runs])}; {_megabytes([second for _, second in runs])}")


def compression_sweep(base: bytes) -> None:
    cuts = FastCDC(chunker.AVERAGE_SIZE, min_size=chunker.MINIMUM_SIZE, max_size=chunker.MAXIMUM_SIZE).cut_buf(base)
    chunks = [bytes(chunk.data) for chunk in cuts]
    settings: list[tuple[str, zstandard.ZstdCompressor]] = [
        (f"level {level}", zstandard.ZstdCompressor(level=level)) for level in (1, 2, 3)
    ]
    for hash_log, chain_log, min_match in [(15, 14, 5), (16, 14, 5), (15, 15, 6), (17, 16, 5)]:
        parameters = zstandard.ZstdCompressionParameters(
            window_log=21,
            hash_log=hash_log,
            chain_log=chain_log,
            search_log=1,
            min_match=min_match,
            strategy=zstandard.STRATEGY_DFAST,
        )
        settings.append(
            (
                f"dfast hash {hash_log} chain {chain_log} match {min_match}",
                zstandard.ZstdCompressor(compression_params=parameters),
            )
        )
    for hash_log in (15, 16, 17, 18):  # the "fast" strategy of levels 1 and 2, around level 2
        for min_match in (5, 6, 7):
            parameters = zstandard.ZstdCompressionParameters(
                window_log=20,
                hash_log=hash_log,
                chain_log=15,
                search_log=1,
                min_match=min_match,
                strategy=zstandard.STRATEGY_FAST,
            )
            settings.append(
                (f"fast hash {hash_log} match {min_match}", zstandard.ZstdCompressor(compression_params=parameters))
            )
    print("zstd setting on 1.5 MiB chunks, one core         ratio   speed")
    for name, compressor in settings:
        started = time.process_time()
        stored = sum(len(compressor.compress(chunk)) for chunk in chunks)
        seconds = time.process_time() - started
        print(f"{name:45} {len(base) / stored:6.3f}  {len(base) / seconds / 1e6:5.0f} MB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "bench" / "results" / "data")
    parser.add_argument("--scale", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N bytes of each dump")
    parser.add_argument("--repeats", type=int, default=1, help="fresh repositories (polynomials) per setting")
    arguments = parser.parse_args()
    base = read_limited(arguments.data_dir / f"shop{arguments.scale}.sql", arguments.limit)
    changed = read_limited(arguments.data_dir / f"shop{arguments.scale}-changed.sql", arguments.limit)
    os.environ.setdefault("LOCKSTEP_SCRYPT_N", "1024")
    with tempfile.TemporaryDirectory(prefix="lockstep-bench-") as work:
        chunk_sweep(base, changed, Path(work), arguments.repeats)
    compression_sweep(base)


if __name__ == "__main__":
    main()
