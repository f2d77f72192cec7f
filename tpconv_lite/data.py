"""Small molecules and point clouds used by the chapters.

Benzene is the molecule of e3nn's 2019 tutorial "Nuts and Bolts of e3nn": six carbons on a hexagon of radius
1.40272 Å and six hydrogens at 2.49029 Å, in the ``z = 0`` plane, with one-hot features ``[hydrogen, carbon]``.
The tutorial lists the coordinates rounded to five decimals; here they are computed from the two radii, so the
hexagon is exact (a 60 degree rotation maps the molecule onto itself to machine precision) and agrees with the
tutorial's table to 1e-5 Å.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Molecule(NamedTuple):
    """A point cloud with per-atom features.

    Attributes:
        pos: (N, 3) positions in Å.
        x: (N, F) node features.
        symbols: N chemical symbols.
    """

    pos: Tensor
    x: Tensor
    symbols: list[str]


_C_RADIUS = 1.40272  # Å, distance of each carbon from the ring centre
_H_RADIUS = 2.49029  # Å, distance of each hydrogen from the ring centre


def benzene(dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Molecule:
    """Benzene, C6H6: carbons 0-5, then hydrogens 6-11, hydrogen ``6 + k`` bonded to carbon ``k``.

    Atom ``k`` of each ring sits at angle ``90 + 60 k`` degrees in the xy plane, so a rotation by 60 degrees about
    z sends atom ``k`` to atom ``k + 1`` (mod 6) of the same element.

    Returns:
        Molecule with ``pos`` (12, 3), ``x`` (12, 2) one-hot ``[H, C]``, and ``symbols``.
    """
    angles = torch.deg2rad(90.0 + 60.0 * torch.arange(6, dtype=torch.float64))
    ring = torch.stack([torch.cos(angles), torch.sin(angles), torch.zeros(6, dtype=torch.float64)], dim=1)
    pos = torch.cat([_C_RADIUS * ring, _H_RADIUS * ring])
    x = torch.cat([torch.tensor([[0.0, 1.0]]).repeat(6, 1), torch.tensor([[1.0, 0.0]]).repeat(6, 1)])
    return Molecule(pos.to(dtype=dtype, device=device), x.to(dtype=dtype, device=device), ["C"] * 6 + ["H"] * 6)
