"""`lockstep repo backup`: paths, stdin, or the output of a command."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.errors import UsageError
from lockstep.process import StreamingProcess, command_from_argv
from lockstep.repository.archiver import Archiver, BackupSummary, ProgressCallback


def backup(
    access: RepositoryAccess,
    paths: Sequence[str] = (),
    stdin: bool = False,
    stdin_filename: str = "stdin",
    stdin_command: Sequence[str] = (),
    tags: Sequence[str] = (),
    hostname: str | None = None,
    progress: ProgressCallback | None = None,
) -> BackupSummary:
    """Write one snapshot. On any failure, packs this backup wrote are removed again."""
    sources = sum([bool(paths), stdin, bool(stdin_command)])
    if sources != 1:
        raise UsageError("give exactly one of: PATH..., --stdin, or --stdin-from-command -- CMD ARGS...")
    # The lock's re-check runs while the first packs are written: they stay unreferenced until
    # the index is written, and the repository refuses that until the re-check passed.
    with access.session(exclusive=False, defer_lock_recheck=True) as repository:
        archiver = Archiver(repository, progress=progress)
        try:
            if paths:
                return archiver.backup_paths(paths, tags=tags, hostname=hostname)
            if stdin:
                return archiver.backup_stream(sys.stdin.buffer, stdin_filename, tags=tags, hostname=hostname)
            process = StreamingProcess(command_from_argv(stdin_command))
            try:
                return archiver.backup_stream(
                    process.stdout, stdin_filename, tags=tags, hostname=hostname, finished_cleanly=process.finish
                )
            finally:
                process.kill()
        except BaseException:
            repository.discard_unindexed_packs()
            raise
