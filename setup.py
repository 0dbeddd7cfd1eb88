"""Declares the C extensions only; everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "lockstep.repository._sha256_lanes",
            ["src/lockstep/repository/_sha256_lanes.c"],
            extra_compile_args=["-O3"],
            # Without a C compiler lockstep still installs and hashes with hashlib (slower on
            # CPUs without SHA instructions; see chunk_hashing.py).
            optional=True,
        ),
        Extension(
            "lockstep.databases._copy_frames",
            ["src/lockstep/databases/_copy_frames.c"],
            extra_compile_args=["-O3"],
            # Without it restores strip pg_dump's per-row framing in Python (copy_frames.py), slower.
            optional=True,
        ),
        Extension(
            "lockstep.databases._copy_binary",
            ["src/lockstep/databases/_copy_binary.c"],
            extra_compile_args=["-O3"],
            # Without it restores send the rows as COPY text, which the server reads more slowly.
            optional=True,
        ),
    ]
)
