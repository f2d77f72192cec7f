"""tpconv_lite.irreps: old Rs lists to o3.Irreps and back."""

from __future__ import annotations

import pytest
from e3nn import o3

from tpconv_lite.irreps import irreps_to_rs, rs_to_irreps


@pytest.mark.parametrize(
    "Rs, expected",
    [
        ([(2, 0)], "2x0e"),
        ([(4, 0), (4, 1), (4, 2)], "4x0e+4x1o+4x2e"),
        ([(1, 3, 0)], "1x3o"),
        ([(1, 1, 1), (2, 0, -1)], "1x1e+2x0o"),
        ([(1, 0), (1, 0)], "1x0e+1x0e"),
        ([(0, 2)], "0x2e"),
        ([], ""),
    ],
)
def test_rs_to_irreps(Rs, expected: str) -> None:
    assert rs_to_irreps(Rs) == o3.Irreps(expected)


def test_parity_choice_for_p0() -> None:
    assert rs_to_irreps([(1, 1), (1, 2, 0)], p0="even") == o3.Irreps("1x1e+1x2e")
    assert rs_to_irreps([(1, 1, -1)], p0="error") == o3.Irreps("1x1o")  # explicit parities are always fine
    with pytest.raises(ValueError, match="no parity"):
        rs_to_irreps([(1, 1)], p0="error")
    with pytest.raises(ValueError, match="p0 must be"):
        rs_to_irreps([(1, 1)], p0="odd")


@pytest.mark.parametrize(
    "Rs, error, message",
    [
        ("2x0e", TypeError, "must be a list"),
        ([(2,)], ValueError, r"Rs\[0\] must be a tuple"),
        ([(1, 0), 3], ValueError, r"Rs\[1\] must be a tuple"),
        ([(-1, 0)], ValueError, "must be >= 0"),
        ([(1, -2)], ValueError, "must be >= 0"),
        ([(1, 1, 2)], ValueError, "p must be 1, -1 or 0"),
        ([(1.5, 1)], TypeError, "mul must be an int"),
        ([(1, True)], TypeError, "l must be an int"),
    ],
)
def test_rs_to_irreps_bad_input(Rs, error, message: str) -> None:
    with pytest.raises(error, match=message):
        rs_to_irreps(Rs)


def test_round_trip() -> None:
    irreps = o3.Irreps("3x0e + 2x1o + 1x1e + 1x2e + 2x0o")
    Rs = irreps_to_rs(irreps)
    assert Rs == [(3, 0, 1), (2, 1, -1), (1, 1, 1), (1, 2, 1), (2, 0, -1)]
    assert rs_to_irreps(Rs, p0="error") == irreps
