"""Blob IDs (the SHA-256 of each chunk) for many chunks at once, on CPUs without SHA instructions.

A blob's ID is the SHA-256 of its plaintext: restic's format fixes that. With the SHA-NI
instructions (or ARM's SHA2 extension) OpenSSL hashes one chunk at 1.6 GB/s and hashlib is the
fastest way. Without them OpenSSL manages about 300 MB/s, and hashing becomes a quarter of a
backup's CPU time; the compiled `_sha256_lanes` module then hashes 8 chunks side by side in
the lanes of AVX2 registers, several times faster per core.

`BATCH` says how many chunks a caller should hand `blob_ids` at once; 1 means "hash each chunk
on its own, wherever convenient" (hashlib, which releases the GIL, on the worker threads).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

try:
    from lockstep.repository import _sha256_lanes
except ImportError:  # not built (no compiler when installed): hashlib does it all
    _sha256_lanes = None  # type: ignore[assignment]

Chunk = bytes | bytearray | memoryview

# Chunks per call when the lanes are used: twice the lanes, so that when one chunk ends its
# lane takes up another and few lanes idle while the longest chunks finish.
BATCH_PER_LANE = 2
# Set to "hashlib" to hash one chunk at a time whatever the CPU (for comparisons).
FORCE_VARIABLE = "LOCKSTEP_CHUNK_HASHING"


def cpu_has_sha_instructions(cpuinfo: str | None = None) -> bool:
    """Whether the CPU hashes SHA-256 in hardware (x86 `sha_ni`, ARM `sha2`), from /proc/cpuinfo."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
                cpuinfo = file.read()
        except OSError:
            return True  # unknown: keep to hashlib, which is never wrong
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            features = value.split()
            return "sha_ni" in features or "sha2" in features
    return True


def _choose_batch() -> int:
    if os.environ.get(FORCE_VARIABLE) == "hashlib" or _sha256_lanes is None or _sha256_lanes.LANES <= 1:
        return 1
    if cpu_has_sha_instructions():
        return 1
    return _sha256_lanes.LANES * BATCH_PER_LANE


BATCH = _choose_batch()


def blob_ids(chunks: Sequence[Chunk]) -> list[bytes]:
    """The SHA-256 of each chunk, in order; with lanes, all of them in one call without the GIL."""
    if BATCH > 1 and _sha256_lanes is not None:
        return _sha256_lanes.digests(chunks)
    return [hashlib.sha256(chunk).digest() for chunk in chunks]


def describe() -> str:
    """How blob IDs are computed on this machine, and why (for benchmarks and bug reports)."""
    if BATCH > 1 and _sha256_lanes is not None:
        return f"{BATCH} chunks per call in {_sha256_lanes.LANES} lanes ({_sha256_lanes.PATH})"
    if _sha256_lanes is None:
        why = "the _sha256_lanes extension is not built: run `pip install -e .`"
    elif os.environ.get(FORCE_VARIABLE) == "hashlib":
        why = f"{FORCE_VARIABLE}=hashlib"
    elif _sha256_lanes.LANES <= 1:
        why = "the CPU has no AVX2"
    else:
        why = "the CPU has SHA instructions"
    return f"hashlib, one chunk at a time ({why})"
