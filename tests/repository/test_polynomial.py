"""The chunker polynomial: restic refuses a repository whose polynomial is not irreducible (§4)."""

from __future__ import annotations

import pytest

from lockstep.repository.polynomial import is_irreducible, random_polynomial

# restic's chunker package tests with the first; the second is the sample repository's (§4).
IRREDUCIBLE = [0x3DA3358B4DC173, 0x22D5819F370319]


def carryless_multiply(a: int, b: int) -> int:
    """Multiply two polynomials over GF(2)."""
    result = 0
    while b:
        if b & 1:
            result ^= a
        a <<= 1
        b >>= 1
    return result


@pytest.mark.parametrize("polynomial", IRREDUCIBLE, ids=hex)
def test_known_irreducible_polynomials_pass(polynomial: int) -> None:
    assert is_irreducible(polynomial)


@pytest.mark.parametrize(
    "polynomial",
    [
        0x3DA3358B4DC173 ^ 1,  # no constant term: divisible by x
        (1 << 53) | 1,  # x^53 + 1: an even number of terms, so divisible by x + 1
        0x3DA3358B4DC173 ^ 0b10,  # even number of terms again
        carryless_multiply(0b111, 0x3DA3358B4DC173 >> 2 | 1),  # (x^2+x+1) · something of degree 51
        carryless_multiply(0x3DA3358B4DC173 >> 26 | 1, (1 << 26) | 0b1011),  # degree 27 · degree 26
        0b1,  # a constant is not irreducible
        0,
    ],
    ids=hex,
)
def test_reducible_polynomials_fail(polynomial: int) -> None:
    assert not is_irreducible(polynomial)


def test_products_used_above_have_degree_53() -> None:
    """The reducible products must be the same degree as a real polynomial, or they prove little."""
    assert carryless_multiply(0b111, 0x3DA3358B4DC173 >> 2 | 1).bit_length() - 1 == 53
    assert carryless_multiply(0x3DA3358B4DC173 >> 26 | 1, (1 << 26) | 0b1011).bit_length() - 1 == 53


def test_small_known_cases() -> None:
    assert is_irreducible(0b111)  # x^2 + x + 1
    assert is_irreducible(0b1011)  # x^3 + x + 1
    assert not is_irreducible(0b101)  # x^2 + 1 = (x + 1)^2
    assert is_irreducible(0x11B)  # AES's x^8 + x^4 + x^3 + x + 1


def test_random_polynomial_is_irreducible_of_degree_53() -> None:
    seen = set()
    for _ in range(3):
        polynomial = random_polynomial()
        assert polynomial.bit_length() - 1 == 53
        assert polynomial & 1
        assert is_irreducible(polynomial)
        seen.add(polynomial)
    assert len(seen) == 3
