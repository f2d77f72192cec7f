"""The one equivariance checker of the book and the tests.

A function ``f`` is E(3)-equivariant when transforming its inputs by an element ``g`` of E(3) (a rotation or
rotoinversion ``R`` and a translation ``t``) transforms its outputs by the same ``g``: ``f(g . x) = g . f(x)``.
How ``g`` acts on a tensor depends on what the tensor is; each input and output is labelled by one of

- an irreps (``o3.Irreps`` or a string such as ``"2x0e + 1x1o"``): the last dimension is multiplied by
  ``irreps.D_from_matrix(R)``;
- ``"cartesian_points"``: (..., 3) positions, rotated and translated, ``x @ R.T + t``;
- ``None``: left alone (indices, edge lists, invariant bookkeeping).

:func:`check_equivariance` compares ``f(g . x)`` with ``g . f(x)`` for a few random ``g`` (proper rotations and,
with ``inversion=True``, rotoinversions) in float64 and reports the largest error of each output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from e3nn import o3
from torch import Tensor

from tpconv_lite.rotations import default_dtype, random_o3, wigner_D

__all__ = ["assert_equivariant", "check_equivariance", "default_dtype", "EquivarianceReport", "random_o3", "wigner_D"]

Kind = o3.Irreps | str | None

CARTESIAN_POINTS = "cartesian_points"
BLOCK_FLOOR = 0.1  # an irrep block's scale is at least this fraction of its output's largest entry


def _act(x: Tensor, kind: Kind, rotation: Tensor, shift: Tensor) -> Tensor:
    """Apply the group element ``(rotation, shift)`` to ``x`` according to ``kind``."""
    if kind is None:
        return x
    rotation = rotation.to(device=x.device, dtype=x.dtype)
    if isinstance(kind, str) and kind == CARTESIAN_POINTS:
        if x.shape[-1] != 3:
            raise ValueError(f"a 'cartesian_points' tensor must have last dimension 3, got shape {tuple(x.shape)}")
        return x @ rotation.T + shift.to(device=x.device, dtype=x.dtype)
    irreps = o3.Irreps(kind)
    if x.shape[-1] != irreps.dim:
        raise ValueError(f"a tensor labelled {irreps} must have last dimension {irreps.dim}, got shape {tuple(x.shape)}")
    return x @ wigner_D(irreps, rotation).to(device=x.device, dtype=x.dtype).T


def _blocks(out: Tensor, kind: Kind) -> list[tuple[str, slice]]:
    """The irrep blocks of an output, ``(label, slice of the last dimension)``; one block for other kinds."""
    if kind is None or (isinstance(kind, str) and kind == CARTESIAN_POINTS):
        return [("all", slice(None))]
    irreps = o3.Irreps(kind)
    return [(str(o3.Irreps([(mul, ir)])), block) for (mul, ir), block in zip(irreps, irreps.slices())]


def _as_tuple(out: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    return (out,) if isinstance(out, Tensor) else tuple(out)


@dataclass
class EquivarianceReport:
    """Largest error ``|f(g x) - g f(x)|`` of each output, over all trials, against its tolerance.

    Each irrep block of an output (each ``mul x ir`` of its irreps) is judged against its own tolerance, relative to
    that block's own scale (see :func:`check_equivariance`); ``errors`` and ``tolerances`` hold, for each output, the
    block with the largest ratio of the two, and ``blocks`` names it.

    ``str(report)`` gives one ``"<output>: equivariant: True"`` line per output: stable text, fit for a
    ``# NBVAL_CHECK_OUTPUT`` cell. The numbers themselves are in ``errors`` (they vary with the machine).
    """

    names: list[str]
    errors: list[float]
    tolerances: list[float]
    blocks: list[str] | None = None

    @property
    def ok(self) -> bool:
        return all(e <= t for e, t in zip(self.errors, self.tolerances))

    def __str__(self) -> str:
        return "\n".join(f"{n}: equivariant: {e <= t}" for n, e, t in zip(self.names, self.errors, self.tolerances))

    def details(self) -> str:
        """Like ``str(report)`` with the error and tolerance of each output."""
        return "\n".join(
            f"{n}: max error {e:.1e} (tolerance {t:.0e})" for n, e, t in zip(self.names, self.errors, self.tolerances)
        )


def check_equivariance(
    fn: Callable[..., Tensor | Sequence[Tensor]],
    inputs: Sequence[Tensor],
    irreps_in: Sequence[Kind],
    irreps_out: Kind | Sequence[Kind],
    *,
    n_trials: int = 4,
    inversion: bool = True,
    translation: bool = True,
    dtype: torch.dtype | None = torch.float64,
    tol: float | None = None,
    seed: int = 0,
) -> EquivarianceReport:
    """Measure how far ``fn`` is from E(3)-equivariance.

    Args:
        fn: called as ``fn(*inputs)``; returns a tensor or a tuple of tensors. Put modules in ``eval()`` mode
            (dropout is equivariant only in distribution), and build e3nn modules of a float64 check inside
            ``with default_dtype(torch.float64):`` so that their constants are float64 too.
        inputs: the arguments of ``fn``. Floating tensors are cast to ``dtype`` (float64 by default; None keeps them).
        irreps_in: one kind per input: an irreps, ``"cartesian_points"`` or None (see the module docstring).
        irreps_out: one kind per output (a single kind when ``fn`` returns one tensor).
        n_trials: number of random group elements; with ``inversion`` every second one is a rotoinversion.
        inversion: also test improper elements (parity).
        translation: also translate ``"cartesian_points"`` inputs and outputs.
        dtype: computation dtype.
        tol: largest accepted error of an irrep block, relative to that block's scale: ``max |f_b(x)|`` over the
            block, but at least ``BLOCK_FLOOR`` (0.1) times ``max |f(x)|`` over the whole output, so that a block
            which is zero, or nearly so, by construction is not held to rounding noise. Default 1e-9 in float64,
            1e-4 otherwise. A small block (a ``0o`` of size 1e-4 next to scalars of size 1) is thus judged on its
            own scale: a sign flip of it fails, where one tolerance relative to the largest output would pass it.
        seed: seed of the random group elements, so a report is reproducible.

    Returns:
        An :class:`EquivarianceReport` with one error per output.
    """
    if len(inputs) != len(irreps_in):
        raise ValueError(f"got {len(inputs)} inputs but {len(irreps_in)} entries in irreps_in")
    if dtype is not None:
        inputs = [x.to(dtype) if isinstance(x, Tensor) and x.is_floating_point() else x for x in inputs]
    single_output = isinstance(irreps_out, o3.Irreps) or not isinstance(irreps_out, (list, tuple))
    kinds_out = [irreps_out] if single_output else list(irreps_out)

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        reference = _as_tuple(fn(*inputs))
    if len(reference) != len(kinds_out):
        raise ValueError(f"fn returned {len(reference)} outputs but irreps_out describes {len(kinds_out)}")
    slices = [_blocks(out, kind) for out, kind in zip(reference, kinds_out)]
    errors = [[0.0] * len(blocks) for blocks in slices]
    for trial in range(n_trials):
        rotation = random_o3(inversion=inversion and trial % 2 == 1, generator=generator)
        shift = torch.randn(3, generator=generator, dtype=torch.float64) if translation else torch.zeros(3)
        moved = [_act(x, k, rotation, shift) for x, k in zip(inputs, irreps_in)]
        with torch.no_grad():
            out_of_moved = _as_tuple(fn(*moved))
        for i, (a, b, k) in enumerate(zip(out_of_moved, reference, kinds_out)):
            diff = (a - _act(b, k, rotation, shift)).abs()
            for j, (_, block) in enumerate(slices[i]):
                part = diff[..., block]
                errors[i][j] = max(errors[i][j], float(part.max()) if part.numel() else 0.0)

    names, worst_errors, tolerances, worst_blocks = [], [], [], []
    for out, kind, blocks, block_errors in zip(reference, kinds_out, slices, errors):
        names.append("invariant" if kind is None else kind if kind == CARTESIAN_POINTS else str(o3.Irreps(kind)))
        relative = (1e-9 if out.dtype == torch.float64 else 1e-4) if tol is None else tol
        overall = float(out.abs().max()) if out.numel() else 0.0
        candidates = []
        for (label, block), error in zip(blocks, block_errors):
            part = out[..., block]
            scale = max(float(part.abs().max()) if part.numel() else 0.0, BLOCK_FLOOR * overall)
            candidates.append((error / scale if scale > 0 else (math.inf if error > 0 else 0.0), error,
                               relative * scale, label))  # fmt: skip
        _, error, tolerance, label = max(candidates, key=lambda c: c[0]) if candidates else (0, 0.0, 0.0, "")
        worst_errors.append(error)
        tolerances.append(tolerance)
        worst_blocks.append(label)
    if len(names) > 1:
        names = [f"output {i} ({n})" for i, n in enumerate(names)]
    return EquivarianceReport(names, worst_errors, tolerances, worst_blocks)


def assert_equivariant(*args, **kwargs) -> EquivarianceReport:
    """:func:`check_equivariance`, raising ``AssertionError`` with the details when an output is not equivariant."""
    report = check_equivariance(*args, **kwargs)
    if not report.ok:
        raise AssertionError(f"not equivariant:\n{report.details()}")
    return report
