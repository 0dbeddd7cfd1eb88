"""process.StreamingProcess: a dump tool's output read as a stream."""

from __future__ import annotations

import fcntl

import pytest

from lockstep.errors import SourceError
from lockstep.process import STREAM_PIPE_BYTES, Command, StreamingProcess


def test_the_stream_comes_through_a_large_pipe_whole() -> None:
    process = StreamingProcess(Command(("sh", "-c", "head -c 3000000 /dev/zero")))
    # Fewer wake-ups between the dump tool and lockstep than with the default 64 KiB.
    assert fcntl.fcntl(process.stdout.fileno(), fcntl.F_GETPIPE_SZ) == STREAM_PIPE_BYTES
    assert len(process.stdout.read()) == 3_000_000
    process.finish()


def test_a_failing_command_is_named_with_its_last_words() -> None:
    process = StreamingProcess(Command(("sh", "-c", "echo partial; echo 'disk full' >&2; exit 4")))
    assert process.stdout.read() == b"partial\n"
    with pytest.raises(SourceError, match=r"exited with code 4.*disk full"):
        process.finish()
