"""Radial bases and the radial network: from an edge length ``r`` to the weights of a tensor product.

A convolution filter ``W(r_vec) = R(|r_vec|) Y(r_hat)`` needs a learned function of the length. It is built in two
steps: a fixed *basis* turns the scalar ``r`` into a short vector of bumps ``B_b(r)``, and a small MLP maps that
vector to one weight per path of the tensor product, ``R_c(r) = W_ch sigma(W_hb B_b(r))``.

Three bases live here:

- :func:`cosine_basis`, the squared-cosine bumps of e3nn's 2019 tutorial "Nuts and Bolts of e3nn". It is the
  square of today's ``e3nn.math.soft_one_hot_linspace(r, 0, max_radius, n, basis="cosine", cutoff=False)``, and,
  shifting the end points by one spacing, of ``soft_one_hot_linspace(r, -step, max_radius + step, n, "cosine",
  cutoff=True)``. Squaring turns e3nn's normalisation (the squares sum to 1) into a partition of unity (the bumps
  sum to 1) on ``[0, max_radius]``.
- the bases of ``e3nn.math.soft_one_hot_linspace``, used by :class:`RadialMLP`;
- :class:`GaussianSmearing`, the Gaussian embedding of distances used by DiffDock and EigenFold.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from e3nn.math import soft_one_hot_linspace
from e3nn.nn import FullyConnectedNet
from torch import Tensor

BASES = ("smooth_finite", "cosine", "fourier", "gaussian", "seed_cosine")


def _check_basis_args(max_radius: float, number_of_basis: int) -> None:
    """Raise unless ``max_radius`` is a positive finite number and ``number_of_basis`` an integer >= 2."""
    if not (float(max_radius) > 0 and math.isfinite(max_radius)):
        raise ValueError(f"max_radius must be a positive finite number, got {max_radius}")
    if isinstance(number_of_basis, bool) or int(number_of_basis) != number_of_basis or number_of_basis < 2:
        raise ValueError(f"number_of_basis must be an integer >= 2, got {number_of_basis}")


def _check_lengths(r: Tensor) -> None:
    """Raise unless ``r`` is a floating tensor of finite, non-negative lengths (one check, one device sync)."""
    if not isinstance(r, Tensor) or not r.is_floating_point():
        raise TypeError(f"r must be a floating point tensor of lengths, got {getattr(r, 'dtype', type(r).__name__)}")
    if not bool(((r >= 0) & torch.isfinite(r)).all()):
        raise ValueError("r must hold finite, non-negative lengths; got a negative, NaN or infinite value")


def cosine_basis(r: Tensor, max_radius: float, number_of_basis: int) -> Tensor:
    """The squared-cosine basis of the 2019 tutorial (e3nn's old ``CosineBasisModel``).

    Centres ``c_b = linspace(0, max_radius, number_of_basis)``, spacing ``step = c_1 - c_0``, and

        ``B_b(r) = cos^2(pi/2 * min(|r - c_b| / step, 1))``,

    a bump of height 1 at ``c_b`` that reaches 0 (to rounding: ``cos(pi/2)^2``), with zero slope, one spacing
    away. Neighbouring bumps add up to ``cos^2 + sin^2 = 1``, so on ``[0, max_radius]`` the basis is a partition
    of unity. It has no cutoff: the last bump is centred on ``max_radius`` and vanishes only at
    ``max_radius + step``.

    Args:
        r: (...) non-negative lengths.
        max_radius: centre of the last bump, > 0.
        number_of_basis: number of bumps, >= 2.

    Returns:
        (..., number_of_basis) basis values in [0, 1].

    Example:
        >>> cosine_basis(torch.tensor([0.0, 0.75]), max_radius=3.0, number_of_basis=3).round(decimals=4)
        tensor([[1.0000, 0.0000, 0.0000],
                [0.5000, 0.5000, 0.0000]])
    """
    _check_basis_args(max_radius, number_of_basis)
    _check_lengths(r)
    centres = torch.linspace(0.0, max_radius, number_of_basis, dtype=r.dtype, device=r.device)
    step = centres[1] - centres[0]
    distance = ((r[..., None] - centres) / step).abs().clamp(max=1.0)
    return torch.cos(math.pi / 2 * distance).pow(2)


class GaussianSmearing(torch.nn.Module):
    """Gaussians on a grid of offsets: DiffDock's and EigenFold's embedding of distances.

    ``out[e, k] = exp(coeff * (dist[e] - offset[k])^2)`` with ``offset = linspace(start, stop, num_gaussians)``
    (a buffer, so the state_dict matches the originals) and ``coeff = -0.5 / spacing^2``: each Gaussian has a
    standard deviation of one spacing. Unlike the bases above, the Gaussians never reach zero.

    Args:
        start: first offset.
        stop: last offset, > start.
        num_gaussians: number of offsets, >= 2.

    Example:
        >>> GaussianSmearing(0.0, 5.0, 6)(torch.tensor([1.0])).round(decimals=3)
        tensor([[0.6070, 1.0000, 0.6070, 0.1350, 0.0110, 0.0000]])
    """

    def __init__(self, start: float = 0.0, stop: float = 5.0, num_gaussians: int = 50) -> None:
        super().__init__()
        if not stop > start:
            raise ValueError(f"stop must be greater than start, got start={start}, stop={stop}")
        if int(num_gaussians) != num_gaussians or num_gaussians < 2:
            raise ValueError(f"num_gaussians must be an integer >= 2, got {num_gaussians}")
        offset = torch.linspace(start, stop, num_gaussians)
        self.coeff = -0.5 / (offset[1] - offset[0]).item() ** 2
        self.register_buffer("offset", offset)

    def forward(self, dist: Tensor) -> Tensor:
        """Embed distances.

        Args:
            dist: (...) distances, flattened.

        Returns:
            (dist.numel(), num_gaussians) embedding.
        """
        if bool(torch.isnan(dist).any()):
            raise ValueError("dist contains NaN")
        dist = dist.view(-1, 1) - self.offset.view(1, -1)
        return torch.exp(self.coeff * dist.pow(2))


class RadialMLP(torch.nn.Module):
    """The radial network ``R_c(r) = W_ch sigma(W_hb B_b(r))``: edge lengths to tensor-product weights.

    The lengths are embedded on ``number_of_basis`` basis functions, multiplied by ``sqrt(number_of_basis)``, and fed
    to ``e3nn.nn.FullyConnectedNet([number_of_basis] + [hidden] * layers + [out_dim], act)``.

    Why ``sqrt(number_of_basis)``: ``FullyConnectedNet`` initialises its weights as if every input had second moment
    1 (each layer divides by ``sqrt(fan_in)`` and rescales ``act`` with ``normalize2mom`` so a unit-moment input
    stays unit-moment). The bases of ``soft_one_hot_linspace`` are normalised so that their squares *sum* to about 1
    (for ``"cosine"`` without cutoff exactly 1 on ``[0, max_radius]``); one component then has second moment about
    ``1 / number_of_basis``, and the factor brings it back to about 1. The 2019 basis sums to 1 instead, and its
    squares to between 1/2 and 1 (3/4 on average), which the same factor brings to about 3/4.

    The output is zero at ``r >= max_radius`` only if both the basis and the MLP vanish there: a basis with
    ``cutoff=True`` (``"smooth_finite"``: exactly, with every derivative; ``"cosine"``, ``"fourier"``: to rounding;
    ``"gaussian"`` never, its ``cutoff`` only moves its centres) and an activation with ``act(0) = 0`` such as
    ``silu``, since ``FullyConnectedNet`` has no biases. The 2019 settings (:meth:`tutorial_2019`) satisfy neither.

    Args:
        out_dim: number of weights per edge (``tp.weight_numel``).
        max_radius: end of the basis range, > 0.
        number_of_basis: number of basis functions, >= 2.
        hidden: width of the hidden layers.
        layers: number of hidden layers (0 gives a linear map of the basis).
        basis: ``"smooth_finite"``, ``"cosine"``, ``"fourier"``, ``"gaussian"`` (e3nn's ``soft_one_hot_linspace``)
            or ``"seed_cosine"`` (:func:`cosine_basis`). e3nn's ``"bessel"`` is left out: its ``sin(k r) / r`` is
            NaN at ``r = 0``.
        cutoff: passed to ``soft_one_hot_linspace``; must be False for ``"seed_cosine"``, which has no cutoff form.
        act: activation of the hidden layers (normalised by ``FullyConnectedNet``).

    Example:
        >>> R = RadialMLP(out_dim=24, max_radius=2.0)
        >>> R(torch.tensor([0.5, 1.4, 2.0])).shape
        torch.Size([3, 24])
    """

    def __init__(
        self,
        out_dim: int,
        max_radius: float,
        number_of_basis: int = 10,
        hidden: int = 100,
        layers: int = 2,
        basis: str = "smooth_finite",
        cutoff: bool = True,
        act: Callable[[Tensor], Tensor] = torch.nn.functional.silu,
    ) -> None:
        super().__init__()
        _check_basis_args(max_radius, number_of_basis)
        if basis not in BASES:
            raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
        if basis == "seed_cosine" and cutoff:
            raise ValueError("the 2019 basis 'seed_cosine' has no cutoff form; pass cutoff=False")
        if out_dim < 1 or hidden < 1 or layers < 0:
            raise ValueError(f"need out_dim >= 1, hidden >= 1, layers >= 0; got {out_dim}, {hidden}, {layers}")
        self.max_radius = float(max_radius)
        self.number_of_basis = int(number_of_basis)
        self.basis = basis
        self.cutoff = cutoff
        self.net = FullyConnectedNet([self.number_of_basis] + [hidden] * layers + [out_dim], act)

    @classmethod
    def tutorial_2019(cls, out_dim: int) -> RadialMLP:
        """The settings of the 2019 tutorial: 3 squared-cosine bumps up to 3.0, two hidden layers of 100,
        softplus with ``beta=5``."""
        return cls(out_dim, 3.0, 3, hidden=100, layers=2, basis="seed_cosine", cutoff=False,
                   act=partial(torch.nn.functional.softplus, beta=5.0))

    def embed(self, r: Tensor) -> Tensor:
        """The scaled basis ``sqrt(number_of_basis) * B_b(r)``: (E,) lengths to (E, number_of_basis)."""
        if self.basis == "seed_cosine":
            values = cosine_basis(r, self.max_radius, self.number_of_basis)
        else:
            _check_lengths(r)
            values = soft_one_hot_linspace(r, 0.0, self.max_radius, self.number_of_basis, self.basis, self.cutoff)
        return values * self.number_of_basis**0.5

    def forward(self, r: Tensor) -> Tensor:
        """Weights of each edge.

        Args:
            r: (E,) non-negative edge lengths.

        Returns:
            (E, out_dim) weights.
        """
        return self.net(self.embed(r))
