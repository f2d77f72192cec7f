"""Rotations and the matrices by which they act on irreps: the helpers that library code and tests share.

:func:`random_o3` draws a uniformly random rotation (or rotoinversion), :func:`wigner_D` gives the matrix by which it
acts on features of given irreps, and :func:`default_dtype` sets torch's default dtype for a ``with`` block (e3nn
computes its constants in it). :mod:`tpconv_lite.testing` builds its equivariance checker on them, and
:mod:`tpconv_lite.diffusion` uses :func:`random_o3` for random orientations; a library module never imports the
test helper.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from e3nn import o3
from torch import Tensor


def random_o3(inversion: bool = False, *, generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
    """A uniformly random rotation matrix, times -1 when ``inversion`` is True.

    Returns:
        (3, 3) orthogonal matrix with determinant +1 (or -1 with ``inversion``).
    """
    q = torch.randn(4, generator=generator, dtype=torch.float64)
    rotation = o3.quaternion_to_matrix(q / q.norm()).to(dtype)
    return -rotation if inversion else rotation


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Set torch's default dtype inside a ``with`` block, and restore it after.

    e3nn computes its constants (Clebsch-Gordan coefficients, rotation generators) in the default dtype. A module
    built under the float32 default keeps float32-rounded constants even after ``.double()``, which limits any
    float64 check to about 1e-7. Build the modules of a float64 check inside ``with default_dtype(torch.float64):``.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def wigner_D(irreps: o3.Irreps | str, rotation: Tensor) -> Tensor:
    """The matrix by which ``rotation`` (3, 3), proper or improper, acts on features of ``irreps``.

    Built in float64 (see :func:`default_dtype`): ``o3.Irreps.D_from_matrix`` under the float32 default is only good
    to about 3e-7, even for a float64 rotation.

    Returns:
        (irreps.dim, irreps.dim) tensor in float64.
    """
    with default_dtype(torch.float64):
        return o3.Irreps(irreps).D_from_matrix(rotation.to(torch.float64))
