"""restic's sealing: AES-256-CTR plus Poly1305-AES over the ciphertext (§3.2)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from lockstep.repository.crypto import NONCE_SIZE, OVERHEAD, TAG_SIZE, AuthenticationFailed, Key

POLY1305_PRIME = (1 << 130) - 5
R_CLAMP = 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
_real_urandom = os.urandom  # crypto draws nonces from os.urandom, which the tests replace


def reference_poly1305_aes(mac_k: bytes, mac_r: bytes, nonce: bytes, message: bytes) -> bytes:
    """Bernstein's Poly1305-AES written out: r clamped explicitly, s = AES-128(k, nonce)."""
    r = int.from_bytes(mac_r, "little") & R_CLAMP
    encryptor = Cipher(algorithms.AES(mac_k), modes.ECB()).encryptor()
    s = int.from_bytes(encryptor.update(nonce) + encryptor.finalize(), "little")
    accumulator = 0
    for start in range(0, len(message), 16):
        block = message[start : start + 16]
        accumulator = (accumulator + int.from_bytes(block + b"\x01", "little")) * r % POLY1305_PRIME
    return ((accumulator + s) % (1 << 128)).to_bytes(16, "little")


def reference_ctr(key: bytes, nonce: bytes, data: bytes) -> bytes:
    """Go's cipher.NewCTR: the whole nonce is the counter block, incremented as one 128-bit
    big-endian integer (wrapping at 2^128)."""
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    counter = int.from_bytes(nonce, "big")
    stream = b""
    for block in range((len(data) + 15) // 16):
        stream += encryptor.update(((counter + block) % (1 << 128)).to_bytes(16, "big"))
    return bytes(a ^ b for a, b in zip(data, stream, strict=False))


def fixed_nonces(*nonces: bytes) -> Callable[[int], bytes]:
    """An os.urandom stand-in that hands out the given nonces first, then real randomness."""
    queue = list(nonces)

    def urandom(size: int) -> bytes:
        if queue and size == NONCE_SIZE:
            return queue.pop(0)
        return _real_urandom(size)

    return urandom


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1000, 70_000])
def test_seal_then_open_gives_the_plaintext_back(size: int) -> None:
    key = Key.generate()
    plaintext = os.urandom(size)
    sealed = key.seal(plaintext)
    assert len(sealed) == size + OVERHEAD
    assert key.open(sealed) == plaintext
    assert key.open(memoryview(sealed)) == plaintext


def test_each_seal_uses_a_fresh_nonce() -> None:
    key = Key.generate()
    first, second = key.seal(b"same"), key.seal(b"same")
    assert first[:NONCE_SIZE] != second[:NONCE_SIZE]
    assert first != second


@pytest.mark.parametrize("position", [0, NONCE_SIZE - 1, NONCE_SIZE, NONCE_SIZE + 10, -TAG_SIZE, -1])
def test_any_changed_byte_fails_authentication(position: int) -> None:
    key = Key.generate()
    sealed = bytearray(key.seal(b"restic compatible payload"))
    sealed[position] ^= 0x01
    with pytest.raises(AuthenticationFailed):
        key.open(bytes(sealed))


def test_wrong_key_and_short_input_fail_authentication() -> None:
    sealed = Key.generate().seal(b"secret")
    with pytest.raises(AuthenticationFailed):
        Key.generate().open(sealed)
    with pytest.raises(AuthenticationFailed):
        Key.generate().open(b"\x00" * (OVERHEAD - 1))


def test_an_all_zero_nonce_is_never_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """restic rejects an all-zero nonce, so seal must draw again when randomness gives one."""
    replacement = b"\x01" * NONCE_SIZE
    monkeypatch.setattr(os, "urandom", fixed_nonces(bytes(NONCE_SIZE), bytes(NONCE_SIZE), replacement))
    key = Key.from_bytes(bytes(range(64)))
    sealed = key.seal(b"payload")
    assert sealed[:NONCE_SIZE] == replacement
    assert key.open(sealed) == b"payload"


@pytest.mark.parametrize("size", [0, 1, 16, 33, 4096 + 7])
@pytest.mark.parametrize("mac_r_byte", [0x00, 0xFF, 0x5A])
def test_tag_equals_reference_poly1305_aes_with_explicit_clamping(size: int, mac_r_byte: int) -> None:
    """Key.seal passes the stored r unclamped to a library that clamps; a hand-written
    Poly1305-AES that clamps explicitly must agree, whatever bits the stored r has."""
    key = Key(encrypt=os.urandom(32), mac_k=os.urandom(16), mac_r=bytes([mac_r_byte]) * 8 + os.urandom(8))
    sealed = key.seal(os.urandom(size))
    nonce, ciphertext, tag = sealed[:NONCE_SIZE], sealed[NONCE_SIZE:-TAG_SIZE], sealed[-TAG_SIZE:]
    assert tag == reference_poly1305_aes(key.mac_k, key.mac_r, nonce, ciphertext)


@pytest.mark.parametrize("nonce", [bytes(15) + b"\x01", b"\xff" * 16, b"\x00" * 8 + b"\xff" * 8])
def test_ctr_counts_the_whole_nonce_as_one_big_endian_counter(nonce: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """The counter carries across all 16 bytes and wraps at 2^128, as Go's CTR does."""
    monkeypatch.setattr(os, "urandom", fixed_nonces(nonce))
    key = Key.generate()
    plaintext = os.urandom(16 * 5 + 3)
    sealed = key.seal(plaintext)
    assert sealed[:NONCE_SIZE] == nonce
    assert sealed[NONCE_SIZE:-TAG_SIZE] == reference_ctr(key.encrypt, nonce, plaintext)


def test_key_json_round_trip_and_part_order() -> None:
    material = bytes(range(64))
    key = Key.from_bytes(material)
    assert (key.encrypt, key.mac_k, key.mac_r) == (material[:32], material[32:48], material[48:])
    document = key.to_json_dict()
    assert list(document) == ["mac", "encrypt"]
    assert Key.from_json_dict(document) == key


def test_key_refuses_wrong_sizes() -> None:
    with pytest.raises(ValueError):
        Key.from_bytes(bytes(63))
    document = Key.generate().to_json_dict()
    document["encrypt"] = "AAAA"
    with pytest.raises(ValueError):
        Key.from_json_dict(document)
