"""SHA-256 of many buffers at once in the lanes of vector registers (C extension, _sha256_lanes.c)."""

from collections.abc import Sequence

from typing_extensions import Buffer

PATH: str
"""The path `digests` uses by default: "avx512vl" or "avx2" (8 lanes), or "scalar" (1)."""

LANES: int
"""How many messages the default path hashes side by side: 8, or 1 for the scalar code."""

AVAILABLE_PATHS: tuple[str, ...]
"""Every path this CPU can run, out of "scalar", "avx2", "avx512vl" and "avx512" (16 lanes)."""

def digests(buffers: Sequence[Buffer], *, path: str | None = None) -> list[bytes]:
    """The SHA-256 digest of each buffer, in order, equal to `hashlib.sha256(buffer).digest()`.

    Buffers must be C-contiguous; the GIL is released while hashing. Hand over many buffers per
    call (twice `LANES` or more) so that the lanes stay busy. `path=None` uses `PATH`; a name from
    `AVAILABLE_PATHS` forces that path (ValueError for any other).
    """
