#!/usr/bin/env python3
"""The two sweeps behind lockstep's chunk size and zstd level (BENCHMARKS.md).

    python bench/chunking_and_compression.py            # both sweeps on the scale-8 dumps
    python bench/chunking_and_compression.py --limit 100000000   # a quicker look

Needs the dumps that bench/backup_stream.py builds (bench/results/data/shop8.sql and
shop8-changed.sql). The chunk sweep backs both dumps up with the engine, in-process, into a
fresh repository per setting, and runs restic on the same files for comparison.
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

CHUNK_SETTINGS = [(256, 64), (512, 128), (768, 256), (1024, 256)]  # FastCDC avg, min in KiB


def directory_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def read_limited(path: Path, limit: int | None) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(limit) if limit else handle.read()


def chunk_sweep(base: bytes, changed: bytes, work: Path) -> None:
    print("chunk average (avg + min)  first backup   second adds")
    for average, minimum in CHUNK_SETTINGS:
        chunker.AVERAGE_SIZE, chunker.MINIMUM_SIZE = average * 1024, minimum * 1024
        repository_path = work / f"chunks-{average}"
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
        print(f"{average + minimum:>6} KiB ({average} + {minimum})   {first / 1e6:8.1f} MB   {second / 1e6:8.1f} MB")
    restic_path = work / "restic"
    env = {
        **os.environ,
        "RESTIC_PASSWORD": "benchmark",
        "RESTIC_REPOSITORY": str(restic_path),
        "RESTIC_CACHE_DIR": str(work / "restic-cache"),
    }
    subprocess.run(["restic", "init", "-q"], env=env, check=True, capture_output=True)
    subprocess.run(
        ["restic", "backup", "-q", "--stdin", "--stdin-filename", "shop.sql"], input=base, env=env, check=True
    )
    first = directory_bytes(restic_path)
    subprocess.run(
        ["restic", "backup", "-q", "--stdin", "--stdin-filename", "shop.sql"], input=changed, env=env, check=True
    )
    print(
        f"restic                        {first / 1e6:8.1f} MB   {(directory_bytes(restic_path) - first) / 1e6:8.1f} MB"
    )


def compression_sweep(base: bytes) -> None:
    cuts = FastCDC(1024 * 1024, min_size=256 * 1024, max_size=8 * 1024 * 1024).cut_buf(base)
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
    print("zstd setting on 1.25 MiB chunks, one core        ratio   speed")
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
    arguments = parser.parse_args()
    base = read_limited(arguments.data_dir / f"shop{arguments.scale}.sql", arguments.limit)
    changed = read_limited(arguments.data_dir / f"shop{arguments.scale}-changed.sql", arguments.limit)
    os.environ.setdefault("LOCKSTEP_SCRYPT_N", "1024")
    with tempfile.TemporaryDirectory(prefix="lockstep-bench-") as work:
        chunk_sweep(base, changed, Path(work))
    compression_sweep(base)


if __name__ == "__main__":
    main()
