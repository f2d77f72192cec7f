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

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from e3nn import o3
from torch import Tensor

Kind = o3.Irreps | str | None

CARTESIAN_POINTS = "cartesian_points"


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


def _as_tuple(out: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    return (out,) if isinstance(out, Tensor) else tuple(out)


@dataclass
class EquivarianceReport:
    """Largest error ``|f(g x) - g f(x)|`` of each output, over all trials.

    ``str(report)`` gives one ``"<output>: equivariant: True"`` line per output: stable text, fit for a
    ``# NBVAL_CHECK_OUTPUT`` cell. The numbers themselves are in ``errors`` (they vary with the machine).
    """

    names: list[str]
    errors: list[float]
    tolerances: list[float]

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
        tol: largest accepted error, relative to ``max(1, max |f(x)|)``; default 1e-9 in float64, 1e-4 otherwise.
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
    errors = [0.0] * len(kinds_out)
    for trial in range(n_trials):
        rotation = random_o3(inversion=inversion and trial % 2 == 1, generator=generator)
        shift = torch.randn(3, generator=generator, dtype=torch.float64) if translation else torch.zeros(3)
        moved = [_act(x, k, rotation, shift) for x, k in zip(inputs, irreps_in)]
        with torch.no_grad():
            out_of_moved = _as_tuple(fn(*moved))
        for i, (a, b, k) in enumerate(zip(out_of_moved, reference, kinds_out)):
            diff = (a - _act(b, k, rotation, shift)).abs()
            errors[i] = max(errors[i], float(diff.max()) if diff.numel() else 0.0)

    names, tolerances = [], []
    for out, kind in zip(reference, kinds_out):
        names.append("invariant" if kind is None else kind if kind == CARTESIAN_POINTS else str(o3.Irreps(kind)))
        scale = max(1.0, float(out.abs().max())) if out.numel() else 1.0
        default = 1e-9 if out.dtype == torch.float64 else 1e-4
        tolerances.append((default if tol is None else tol) * scale)
    if len(names) > 1:
        names = [f"output {i} ({n})" for i, n in enumerate(names)]
    return EquivarianceReport(names, errors, tolerances)


def assert_equivariant(*args, **kwargs) -> EquivarianceReport:
    """:func:`check_equivariance`, raising ``AssertionError`` with the details when an output is not equivariant."""
    report = check_equivariance(*args, **kwargs)
    if not report.ok:
        raise AssertionError(f"not equivariant:\n{report.details()}")
    return report
