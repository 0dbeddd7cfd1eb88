"""restic's authenticated encryption: AES-256-CTR with a Poly1305-AES tag.

A sealed message is `nonce(16) ‖ ciphertext ‖ tag(16)`. The tag's one-time key is
`r ‖ AES-128(mac_k, nonce)` and it covers the ciphertext only (restic-format.md §3).
"""

from __future__ import annotations

import base64
import hmac
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.poly1305 import Poly1305

NONCE_SIZE = 16
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE


class AuthenticationFailed(Exception):
    """The tag did not match: wrong key, or the bytes were changed."""


@dataclass(frozen=True)
class Key:
    """64 bytes of key material: 32 for AES-256, 16 for the MAC's AES-128 key, 16 for Poly1305's r."""

    encrypt: bytes
    mac_k: bytes
    mac_r: bytes

    @classmethod
    def generate(cls) -> Key:
        """A fresh random master key."""
        return cls.from_bytes(os.urandom(64))

    @classmethod
    def from_bytes(cls, material: bytes) -> Key:
        """Split 64 bytes (e.g. scrypt output) into the three parts, in restic's order."""
        if len(material) != 64:
            raise ValueError("key material must be 64 bytes")
        return cls(encrypt=material[:32], mac_k=material[32:48], mac_r=material[48:64])

    def to_json_dict(self) -> dict[str, object]:
        """The master key as restic stores it inside a key file."""
        return {
            "mac": {"k": _b64(self.mac_k), "r": _b64(self.mac_r)},
            "encrypt": _b64(self.encrypt),
        }

    @classmethod
    def from_json_dict(cls, data: dict[str, object]) -> Key:
        """Parse the master-key JSON object found inside a key file."""
        mac = data["mac"]
        if not isinstance(mac, dict):
            raise ValueError("master key has no mac object")
        key = cls(
            encrypt=base64.b64decode(str(data["encrypt"])),
            mac_k=base64.b64decode(str(mac["k"])),
            mac_r=base64.b64decode(str(mac["r"])),
        )
        if len(key.encrypt) != 32 or len(key.mac_k) != 16 or len(key.mac_r) != 16:
            raise ValueError("master key has the wrong size")
        return key

    def _tag(self, nonce: bytes, ciphertext: bytes | memoryview) -> bytes:
        encryptor = Cipher(algorithms.AES(self.mac_k), modes.ECB()).encryptor()
        s = encryptor.update(nonce) + encryptor.finalize()
        # Standard Poly1305 clamps r itself, so the stored r passes through unchanged (§3.2).
        mac = Poly1305(self.mac_r + s)
        mac.update(ciphertext)
        return mac.finalize()

    def seal(self, plaintext: bytes | memoryview) -> bytes:
        """Encrypt and authenticate `plaintext` with a fresh random nonce."""
        nonce = os.urandom(NONCE_SIZE)
        while nonce == bytes(NONCE_SIZE):  # restic rejects an all-zero nonce
            nonce = os.urandom(NONCE_SIZE)
        ciphertext = Cipher(algorithms.AES(self.encrypt), modes.CTR(nonce)).encryptor().update(plaintext)
        # One copy of a blob of some MiB, not two (`nonce + ciphertext + tag` makes one per `+`).
        return b"".join((nonce, ciphertext, self._tag(nonce, ciphertext)))

    def open(self, sealed: bytes | memoryview) -> bytes:
        """Check the tag, then decrypt. Raises AuthenticationFailed on any mismatch."""
        if len(sealed) < OVERHEAD:
            raise AuthenticationFailed("ciphertext is shorter than the crypto overhead")
        view = memoryview(sealed)
        nonce = bytes(view[:NONCE_SIZE])
        ciphertext = view[NONCE_SIZE:-TAG_SIZE]
        tag = bytes(view[-TAG_SIZE:])
        if not hmac.compare_digest(self._tag(nonce, ciphertext), tag):
            raise AuthenticationFailed("message authentication failed")
        decryptor = Cipher(algorithms.AES(self.encrypt), modes.CTR(nonce)).decryptor()
        return decryptor.update(ciphertext) + decryptor.finalize()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
