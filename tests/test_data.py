"""tpconv_lite.data: the benzene of the 2019 tutorial."""

from __future__ import annotations

import torch
from e3nn import o3

from tpconv_lite.data import benzene

TABLE = [  # the 2019 tutorial's coordinates (Å), carbons then hydrogens
    [0.0, 1.40272, 0.0], [-1.21479, 0.70136, 0.0], [-1.21479, -0.70136, 0.0],
    [0.0, -1.40272, 0.0], [1.21479, -0.70136, 0.0], [1.21479, 0.70136, 0.0],
    [0.0, 2.49029, 0.0], [-2.15666, 1.24515, 0.0], [-2.15666, -1.24515, 0.0],
    [0.0, -2.49029, 0.0], [2.15666, -1.24515, 0.0], [2.15666, 1.24515, 0.0],
]


def test_benzene_matches_the_tutorial() -> None:
    mol = benzene()
    assert mol.pos.shape == (12, 3) and mol.x.shape == (12, 2) and mol.pos.dtype == torch.float64
    assert (mol.pos - torch.tensor(TABLE, dtype=torch.float64)).abs().max() < 1e-5
    assert mol.symbols == ["C"] * 6 + ["H"] * 6
    assert mol.x[:6].tolist() == [[0.0, 1.0]] * 6 and mol.x[6:].tolist() == [[1.0, 0.0]] * 6


def test_benzene_is_an_exact_hexagon() -> None:
    pos = benzene().pos
    R60 = o3.matrix_z(torch.tensor(torch.pi / 3, dtype=torch.float64))
    moved = pos @ R60.T
    following = [(k + 1) % 6 for k in range(6)] + [6 + (k + 1) % 6 for k in range(6)]
    assert (moved - pos[following]).abs().max() < 1e-14
    assert ((pos[:6] - pos[6:]).norm(dim=1) - 1.08757).abs().max() < 1e-5  # C-H bond length


def test_benzene_dtype_and_device() -> None:
    mol = benzene(dtype=torch.float32, device="cpu")
    assert mol.pos.dtype == torch.float32 and mol.x.dtype == torch.float32
