"""Old e3nn "Rs lists" and today's ``o3.Irreps``.

Before version 0.2, e3nn described a feature tensor by a representation list ``Rs``: a list of ``(mul, l)`` or
``(mul, l, p)`` tuples, ``mul`` copies of the degree-``l`` representation with parity ``p`` in {1, -1, 0}, where
``p = 0`` meant "parity not tracked" (a network for rotations only). Today the same information is an
``o3.Irreps`` such as ``"2x0e + 4x1o"``, in which every irrep has a parity, ``e`` (+1) or ``o`` (-1).

The one choice to make is what ``p = 0`` becomes, and it is a convention: a rotation-only network never tracked
parity, so its features have none to recover. By default it becomes the parity of the spherical harmonics of that
degree, ``(-1)**l`` (``0e, 1o, 2e, ...``). That is exact only for features built directly from scalars and
spherical harmonics, such as the output of one convolution of scalar inputs with spherical-harmonic filters. Deeper
features need not follow it: the ``1 x 1 -> 1`` product of a rotation-only network is a cross product, which under
O(3) is a pseudovector ``1e``, not the ``1o`` of the rule, and O(3) has no ``1o x 1o -> 1o`` path, so a deep
network converted by the rule loses such paths. Give those entries their parity explicitly (``(mul, l, p)`` with
``p = +-1``), pass ``p0="error"`` to find every parity-less entry, or ``p0="even"`` to map them to ``+1``.
"""

from __future__ import annotations

from typing import Literal

from e3nn import o3

ParityForP0 = Literal["sh", "even", "error"]


def rs_to_irreps(Rs: list[tuple[int, ...]], p0: ParityForP0 = "sh") -> o3.Irreps:
    """Convert an old-style ``Rs`` list to ``o3.Irreps``, keeping the order and the multiplicities.

    Args:
        Rs: list of ``(mul, l)`` or ``(mul, l, p)``, with integers ``mul >= 0``, ``l >= 0`` and ``p`` in {1, -1, 0}.
            ``(mul, l)`` is the same as ``(mul, l, 0)``.
        p0: what ``p = 0`` becomes, a convention: ``"sh"`` (``(-1)**l``, the default; exact only for features
            built directly from scalars and spherical harmonics), ``"even"`` (``+1``) or ``"error"``.

    Returns:
        The equivalent ``o3.Irreps`` (not simplified: ``[(1, 0), (1, 0)]`` gives ``1x0e+1x0e``).

    Example:
        >>> rs_to_irreps([(4, 0), (4, 1), (4, 2)])
        4x0e+4x1o+4x2e
        >>> rs_to_irreps([(1, 1, 1), (2, 0, -1)])
        1x1e+2x0o
    """
    if p0 not in ("sh", "even", "error"):
        raise ValueError(f"p0 must be 'sh', 'even' or 'error', got {p0!r}")
    if not isinstance(Rs, (list, tuple)):
        raise TypeError(f"Rs must be a list of (mul, l) or (mul, l, p) tuples, got {type(Rs).__name__}")
    entries = []
    for i, entry in enumerate(Rs):
        if not isinstance(entry, (list, tuple)) or len(entry) not in (2, 3):
            raise ValueError(f"Rs[{i}] must be a tuple (mul, l) or (mul, l, p), got {entry!r}")
        mul, l, p = (*entry, 0) if len(entry) == 2 else entry
        for name, value in (("mul", mul), ("l", l), ("p", p)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Rs[{i}] = {entry!r}: {name} must be an int, got {type(value).__name__}")
        if mul < 0 or l < 0:
            raise ValueError(f"Rs[{i}] = {entry!r}: mul and l must be >= 0")
        if p not in (1, -1, 0):
            raise ValueError(f"Rs[{i}] = {entry!r}: p must be 1, -1 or 0, got {p}")
        if p == 0:
            if p0 == "error":
                raise ValueError(f"Rs[{i}] = {entry!r} has no parity (p=0) and p0='error'")
            p = (-1) ** l if p0 == "sh" else 1
        entries.append((mul, (l, p)))
    return o3.Irreps(entries)


def irreps_to_rs(irreps: o3.Irreps | str) -> list[tuple[int, int, int]]:
    """The old ``Rs`` list ``[(mul, l, p), ...]`` of an irreps, every parity explicit.

    Example:
        >>> irreps_to_rs("2x0e + 1x1o")
        [(2, 0, 1), (1, 1, -1)]
    """
    return [(mul, ir.l, ir.p) for mul, ir in o3.Irreps(irreps)]
