"""Turn a repository location string into a backend, with the syntax restic uses.

/srv/backups/repo                      a local path
local:/srv/backups/repo                the same, spelled out
s3:http://127.0.0.1:9000/bucket/prefix S3-compatible storage (credentials from AWS_* variables)
s3:s3.amazonaws.com/bucket/prefix      the same over https, written without a scheme
"""

from __future__ import annotations

from lockstep.errors import UsageError
from lockstep.storage.base import Backend


def open_backend(location: str) -> Backend:
    """Build the backend for `location`; nothing is contacted yet."""
    if not location:
        raise UsageError(
            "no repository given",
            "pass --repo LOCATION or set LOCKSTEP_REPOSITORY (a path, local:PATH, s3:HOST/BUCKET or s3:URL/BUCKET)",
        )
    if location.startswith("s3:"):
        from lockstep.storage.s3 import S3Backend

        return S3Backend.from_location(location)
    if location.startswith("local:"):
        location = location[len("local:") :]
    elif ":" in location.split("/", 1)[0] and not location.startswith("/"):
        scheme = location.split(":", 1)[0]
        raise UsageError(
            f"unsupported repository location scheme {scheme!r}",
            "use a path, local:PATH, s3:HOST[:PORT]/BUCKET[/PREFIX] or s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]",
        )
    from lockstep.storage.local import LocalBackend

    return LocalBackend(location)
