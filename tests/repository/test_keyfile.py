"""Key files: the engine functions behind `lockstep repo key` (adding, finding, removing)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from lockstep.errors import IntegrityError, NotFound, UsageError
from lockstep.exit_codes import ExitCode
from lockstep.repository.crypto import AuthenticationFailed, Key
from lockstep.repository.keyfile import (
    KeyFile,
    ScryptParameters,
    add_key_file,
    find_key_id,
    load_key_file,
    remove_key_file,
)
from lockstep.repository.repository import Repository
from lockstep.storage.base import Backend, FileType
from lockstep.storage.local import LocalBackend
from tests.conftest import TEST_PASSWORD


@pytest.fixture
def repository(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repository"), TEST_PASSWORD)


def key_ids(backend: Backend) -> set[str]:
    return {name for name, _ in backend.list(FileType.KEY)}


def test_added_key_seals_the_same_master_key_under_the_new_password(repository: Repository) -> None:
    """The new file opens with the new password to the very master key, and is named by its hash."""
    backend = repository.backend
    key_id = add_key_file(backend, repository.key, "second password")

    assert key_ids(backend) == {repository.key_id, key_id}
    data = backend.load(FileType.KEY, key_id)
    assert hashlib.sha256(data).hexdigest() == key_id
    key_file = load_key_file(backend, key_id)
    assert key_file.open("second password") == repository.key
    with pytest.raises(AuthenticationFailed):
        key_file.open(TEST_PASSWORD)
    reopened = Repository.open(backend, "second password")
    assert reopened.key_id == key_id
    assert reopened.config.id == repository.config.id


def test_added_key_records_the_given_user_and_host(repository: Repository) -> None:
    key_id = add_key_file(repository.backend, repository.key, "pw2", username="alice", hostname="build-01")
    document = json.loads(repository.backend.load(FileType.KEY, key_id))
    assert (document["username"], document["hostname"]) == ("alice", "build-01")
    assert list(document) == ["created", "username", "hostname", "kdf", "N", "r", "p", "salt", "data"]


def test_added_key_uses_the_given_scrypt_parameters(repository: Repository) -> None:
    parameters = ScryptParameters(n=2048, r=4, p=2)
    key_id = add_key_file(repository.backend, repository.key, "pw2", parameters=parameters)
    assert load_key_file(repository.backend, key_id).parameters == parameters


def test_empty_new_password_is_refused(repository: Repository) -> None:
    before = key_ids(repository.backend)
    with pytest.raises(UsageError):
        add_key_file(repository.backend, repository.key, "")
    assert key_ids(repository.backend) == before


class CorruptingBackend(LocalBackend):
    """Flips a bit in every key file it stores: storage that silently damages writes."""

    def save(self, file_type: FileType, name: str, data: bytes) -> None:
        if file_type is FileType.KEY:
            document = json.loads(data)
            sealed = bytearray(base64.b64decode(document["data"]))
            sealed[20] ^= 1
            document["data"] = base64.b64encode(bytes(sealed)).decode()
            data = json.dumps(document).encode()
        super().save(file_type, name, data)


def test_a_key_that_does_not_read_back_is_removed_and_reported(repository: Repository, tmp_path: Path) -> None:
    """restic checks a new key before trusting it; so must we, or passwd could lock users out."""
    backend = CorruptingBackend(tmp_path / "repository")
    before = key_ids(backend)
    with pytest.raises(IntegrityError) as raised:
        add_key_file(backend, repository.key, "second password")
    assert "removed" in raised.value.message
    assert key_ids(backend) == before


def test_find_key_id_by_unique_prefix_in_any_case(repository: Repository) -> None:
    assert find_key_id(repository.backend, repository.key_id[:6].upper()) == repository.key_id
    assert find_key_id(repository.backend, repository.key_id) == repository.key_id


def test_find_key_id_refuses_unknown_empty_and_ambiguous_prefixes(repository: Repository) -> None:
    with pytest.raises(NotFound):
        find_key_id(repository.backend, "not-hex")
    with pytest.raises(UsageError):
        find_key_id(repository.backend, "  ")
    # Add keys until two share a first hex digit (at most 17 keys by pigeonhole).
    by_first_digit: dict[str, list[str]] = {repository.key_id[0]: [repository.key_id]}
    while all(len(ids) < 2 for ids in by_first_digit.values()):
        key_id = add_key_file(repository.backend, repository.key, "another")
        by_first_digit.setdefault(key_id[0], []).append(key_id)
    digit = next(digit for digit, ids in by_first_digit.items() if len(ids) >= 2)
    with pytest.raises(NotFound) as raised:
        find_key_id(repository.backend, digit)
    assert f"{digit!r} matches" in raised.value.message
    assert raised.value.exit_code == ExitCode.NOT_FOUND


def test_remove_key_file_refuses_the_key_in_use(repository: Repository) -> None:
    other = add_key_file(repository.backend, repository.key, "pw2")
    with pytest.raises(UsageError) as raised:
        remove_key_file(repository.backend, repository.key_id, repository.key_id)
    assert "refusing" in raised.value.message
    assert key_ids(repository.backend) == {repository.key_id, other}

    remove_key_file(repository.backend, other, repository.key_id)
    assert key_ids(repository.backend) == {repository.key_id}


def test_damaged_key_file_is_reported_as_integrity_error(repository: Repository) -> None:
    repository.backend.save(FileType.KEY, "ab" * 32, b'{"kdf":"scrypt","N":1024}')
    with pytest.raises(IntegrityError) as raised:
        load_key_file(repository.backend, "ab" * 32)
    assert "abababab" in raised.value.message


def test_key_file_round_trips_restic_bytes() -> None:
    """A key file as restic 0.14 writes it (p=5) parses and re-serialises byte for byte."""
    master = Key.generate()
    key_file = KeyFile.create(master, "pw", ScryptParameters(n=1024, r=8, p=5))
    data = key_file.to_bytes()
    assert KeyFile.from_bytes(data).to_bytes() == data
    assert KeyFile.from_bytes(data).open("pw") == master


def test_the_key_derivation_matches_cryptographys_and_lets_other_threads_run() -> None:
    """hashlib's scrypt gives restic's user key (the same as cryptography's Scrypt) and releases
    the GIL, so a command can import and connect while a repository opens."""
    import threading
    import time

    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    from lockstep.repository.keyfile import derive_user_key

    for n, r, p in [(1 << 15, 8, 1), (1024, 8, 5), (2048, 4, 2)]:
        key = derive_user_key("pw", b"s" * 64, ScryptParameters(n=n, r=r, p=p))
        expected = Scrypt(salt=b"s" * 64, length=64, n=n, r=r, p=p).derive(b"pw")
        assert key.encrypt + key.mac_k + key.mac_r == expected

    slow = ScryptParameters(n=1 << 16, r=8, p=1)
    started = time.perf_counter()
    derive_user_key("pw", b"s" * 64, slow)
    alone = time.perf_counter() - started
    ticks = 0
    thread = threading.Thread(target=derive_user_key, args=("pw", b"s" * 64, slow))
    thread.start()
    while thread.is_alive():
        ticks += 1
        sum(range(1000))
    thread.join()
    # With the GIL held for the whole derivation, the loop would run a few times at most.
    assert ticks > 20 * max(1.0, alone * 10), f"only {ticks} turns of the loop while scrypt ran for {alone:.2f} s"
