"""Key files: the master key sealed under a key derived from a password with scrypt (§3.3).

A repository can have several key files (several passwords); any one of them opens it.
Key files are plaintext JSON and their name is the SHA-256 of those exact bytes.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass

from lockstep.errors import IntegrityError, NotFound, UsageError
from lockstep.repository.crypto import AuthenticationFailed, Key
from lockstep.repository.gojson import format_time_ns, go_json
from lockstep.repository.identity import current_user
from lockstep.storage.base import Backend, FileType

SALT_SIZE = 64  # restic refuses any other salt length
HASHLIB_MAXMEM_LIMIT = 2**31 - 1  # hashlib.scrypt's maxmem must fit a C int


@dataclass(frozen=True)
class ScryptParameters:
    """Work factors for scrypt; restic accepts any N (power of two), r, p that scrypt accepts."""

    n: int = 1 << 15
    r: int = 8
    p: int = 1


def derive_user_key(password: str, salt: bytes, parameters: ScryptParameters) -> Key:
    """scrypt(password, salt) → 64 bytes → the user key that seals the master key.

    hashlib's scrypt (OpenSSL) releases the GIL for its ~0.1 s, so a command can import and
    connect on its main thread while a repository opens (RepositoryAccess.session's
    `meanwhile`); cryptography's Scrypt holds it.
    """
    n, r, p = parameters.n, parameters.r, parameters.p
    # Bytes that are not UTF-8 arrive as surrogate escapes (passwords.py) and go back unchanged.
    secret = password.encode("utf-8", "surrogateescape")
    # OpenSSL refuses to use more than `maxmem` (32 MiB by default): scrypt needs 128·r·(N+p+2).
    maxmem = 128 * r * (n + p + 2) + 1024
    if maxmem > HASHLIB_MAXMEM_LIMIT:  # a key file made for 2 GiB and more: cryptography has no cap
        from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

        return Key.from_bytes(Scrypt(salt=salt, length=64, n=n, r=r, p=p).derive(secret))
    return Key.from_bytes(hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=64))


@dataclass(frozen=True)
class KeyFile:
    """One parsed key file: who made it, the KDF parameters, and the sealed master key."""

    created: str
    username: str
    hostname: str
    parameters: ScryptParameters
    salt: bytes
    sealed_master_key: bytes

    def to_bytes(self) -> bytes:
        """The file's bytes, compact JSON in restic 0.14's field order."""
        document = {
            "created": self.created,
            "username": self.username,
            "hostname": self.hostname,
            "kdf": "scrypt",
            "N": self.parameters.n,
            "r": self.parameters.r,
            "p": self.parameters.p,
            "salt": base64.b64encode(self.salt).decode("ascii"),
            "data": base64.b64encode(self.sealed_master_key).decode("ascii"),
        }
        return go_json(document).encode("utf-8")

    @property
    def storage_id(self) -> str:
        """The file name: SHA-256 of the bytes written."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyFile:
        """Parse a key file written by restic or lockstep."""
        document = json.loads(data)
        if document.get("kdf") != "scrypt":
            raise ValueError(f"unsupported key derivation {document.get('kdf')!r}")
        salt = base64.b64decode(document["salt"])
        if len(salt) != SALT_SIZE:
            raise ValueError("key file salt must be 64 bytes")
        return cls(
            created=str(document.get("created", "")),
            username=str(document.get("username", "")),
            hostname=str(document.get("hostname", "")),
            parameters=ScryptParameters(n=int(document["N"]), r=int(document["r"]), p=int(document["p"])),
            salt=salt,
            sealed_master_key=base64.b64decode(document["data"]),
        )

    def open(self, password: str) -> Key:
        """The master key, or AuthenticationFailed if the password is not this key's."""
        user_key = derive_user_key(password, self.salt, self.parameters)
        plaintext = user_key.open(self.sealed_master_key)
        return Key.from_json_dict(json.loads(plaintext))

    @classmethod
    def create(cls, master_key: Key, password: str, parameters: ScryptParameters | None = None) -> KeyFile:
        """Seal `master_key` under a new random salt and `password`."""
        parameters = parameters or default_scrypt_parameters()
        salt = os.urandom(SALT_SIZE)
        user_key = derive_user_key(password, salt, parameters)
        sealed = user_key.seal(go_json(master_key.to_json_dict()).encode("utf-8"))
        return cls(
            created=format_time_ns(time.time_ns()),
            username=current_user(),
            hostname=socket.gethostname(),
            parameters=parameters,
            salt=salt,
            sealed_master_key=sealed,
        )


def default_scrypt_parameters() -> ScryptParameters:
    """N=2^15, r=8, p=1 (about 0.1 s, 32 MiB); LOCKSTEP_SCRYPT_N lowers it for tests."""
    override = os.environ.get("LOCKSTEP_SCRYPT_N")
    if override:
        return ScryptParameters(n=int(override))
    return ScryptParameters()


# --- managing the key files of a repository (restic's `key` commands) ----------------------


def load_key_file(backend: Backend, key_id: str) -> KeyFile:
    """Read and parse one key file; a file that does not parse is reported as damaged."""
    data = backend.load(FileType.KEY, key_id)
    try:
        return KeyFile.from_bytes(data)
    except (ValueError, KeyError, TypeError) as error:
        raise IntegrityError(f"key file {key_id[:8]} is damaged: {error}") from error


def find_key_id(backend: Backend, prefix: str) -> str:
    """The one key file whose ID starts with `prefix`; none or several is an error, never a guess."""
    wanted = prefix.strip().lower()
    if not wanted:
        raise UsageError("an empty key ID matches every key", "give the key's ID (see `lockstep repo key list`)")
    matches = sorted(name for name, _ in backend.list(FileType.KEY) if name.startswith(wanted))
    if not matches:
        raise NotFound(f"no key matches {prefix!r}", "list the keys with `lockstep repo key list`")
    if len(matches) > 1:
        listed = ", ".join(name[:8] for name in matches[:5])
        raise NotFound(f"{prefix!r} matches {len(matches)} keys ({listed})", "give more characters of the ID")
    return matches[0]


def add_key_file(
    backend: Backend,
    master_key: Key,
    password: str,
    username: str | None = None,
    hostname: str | None = None,
    parameters: ScryptParameters | None = None,
) -> str:
    """Seal `master_key` under `password` in a new key file and return its ID.

    The file is read back and opened before this returns (as restic does): a key file that
    cannot be opened would be worse than none, since the caller may remove the old key next.
    """
    if not password:
        raise UsageError("an empty password is not allowed", "choose a non-empty new password")
    key_file = KeyFile.create(master_key, password, parameters)
    if username is not None or hostname is not None:
        key_file = dataclasses.replace(
            key_file,
            username=key_file.username if username is None else username,
            hostname=key_file.hostname if hostname is None else hostname,
        )
    key_id = key_file.storage_id
    backend.save(FileType.KEY, key_id, key_file.to_bytes())
    try:
        works = load_key_file(backend, key_id).open(password) == master_key
    except (AuthenticationFailed, IntegrityError, ValueError, KeyError):
        works = False
    if not works:
        backend.remove(FileType.KEY, key_id)
        raise IntegrityError(
            "the new key file did not open the repository when read back, so it was removed",
            "nothing changed; check the storage and try again",
        )
    return key_id


def remove_key_file(backend: Backend, key_id: str, current_key_id: str) -> None:
    """Delete a key file, but never the one that opened the repository (restic refuses too)."""
    if key_id == current_key_id:
        raise UsageError(
            f"refusing to remove key {key_id[:8]}: it is the key this password opened the repository with",
            "open the repository with another key's password to remove it, "
            "or change this key's password with `lockstep repo key passwd`",
        )
    backend.remove(FileType.KEY, key_id)


__all__ = [
    "AuthenticationFailed",
    "KeyFile",
    "ScryptParameters",
    "add_key_file",
    "derive_user_key",
    "find_key_id",
    "load_key_file",
    "remove_key_file",
]
