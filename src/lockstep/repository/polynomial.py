"""restic's chunker polynomial: a random irreducible polynomial of degree 53 over GF(2).

restic refuses a repository whose `chunker_polynomial` fails Ben-Or's irreducibility test,
so lockstep generates one exactly as restic's chunker package does.
"""

from __future__ import annotations

import os


def _degree(value: int) -> int:
    return value.bit_length() - 1


def _multiply_mod(a: int, b: int, modulus: int) -> int:
    """a·b mod `modulus` over GF(2) (carry-less multiplication)."""
    result = 0
    degree = _degree(modulus)
    while b:
        if b & 1:
            result ^= a
        b >>= 1
        a <<= 1
        if a >> degree & 1:
            a ^= modulus
    return result


def _mod(a: int, modulus: int) -> int:
    degree = _degree(modulus)
    while a and _degree(a) >= degree:
        a ^= modulus << (_degree(a) - degree)
    return a


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, _mod(a, b)
    return a


def is_irreducible(polynomial: int) -> bool:
    """Ben-Or's test: for i = 1 .. deg/2, gcd(P, x^(2^i) − x) must be 1."""
    degree = _degree(polynomial)
    if degree < 1:
        return False
    x = 0b10
    power = x  # x^(2^i) mod P, starting at i = 0
    for _ in range(1, degree // 2 + 1):
        power = _multiply_mod(power, power, polynomial)
        if _gcd(polynomial, power ^ x) != 1:
            return False
    return True


def random_polynomial() -> int:
    """A random irreducible polynomial of degree 53, as restic's RandomPolynomial makes one."""
    while True:
        candidate = int.from_bytes(os.urandom(8), "little")
        candidate &= (1 << 54) - 1
        candidate |= (1 << 53) | 1
        if is_irreducible(candidate):
            return candidate
