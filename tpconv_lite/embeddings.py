"""Embeddings of scalars (diffusion times, sequence offsets, distances) as feature vectors.

These are the embeddings of EigenFold's ``model/utils.py``, which come from DDPM (Ho et al.) and score SDEs
(Song et al.):

- :func:`sinusoidal_embedding`: ``[sin(x w_k), cos(x w_k)]`` with ``half = dim // 2`` frequencies
  ``w_k = max_positions ** (-k / (half - 1))``, ``k = 0 .. half - 1``, from 1 down to ``1 / max_positions``.
- :class:`GaussianFourierProjection`: ``[sin(2 pi x W_k), cos(2 pi x W_k)]`` with ``dim // 2`` fixed random
  frequencies ``W_k ~ N(0, scale**2)``.
- :func:`get_timestep_embedding`: picks one of the two by name.

An odd ``embedding_dim`` gets a last column of zeros, so the output always has ``embedding_dim`` columns. (EigenFold
meant to do this for the sinusoidal embedding but its pad calls an unimported ``F``; its Fourier projection returns
``dim - 1`` columns.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _check_dim(embedding_dim: int, minimum: int) -> None:
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < minimum:
        raise ValueError(f"embedding_dim must be an integer >= {minimum}, got {embedding_dim!r}")


def _check_values(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 1-D tensor of shape (N,), got {shape}")


def _pad_odd(emb: Tensor, embedding_dim: int) -> Tensor:
    """Append a zero column when ``embedding_dim`` is odd."""
    return F.pad(emb, (0, embedding_dim % 2))


def sinusoidal_embedding(timesteps: Tensor, embedding_dim: int, max_positions: float = 10000) -> Tensor:
    """Transformer-style sinusoidal embedding of a scalar per row.

    Column ``k < half`` holds ``sin(x w_k)``, column ``half + k`` holds ``cos(x w_k)``, with ``half = dim // 2``
    and ``w_k = exp(-k log(max_positions) / (half - 1))``. Inputs are meant to lie in ``[0, max_positions]``.

    Args:
        timesteps: (N,) values; integer tensors are embedded in the default float dtype.
        embedding_dim: number of output columns, >= 4 (the frequency spacing needs ``half >= 2``); odd sizes
            end with a zero column.
        max_positions: the period scale: the slowest frequency is ``1 / max_positions``.

    Returns:
        (N, embedding_dim) tensor in the dtype of ``timesteps`` (or the default float dtype).

    Example:
        >>> sinusoidal_embedding(torch.tensor([0.0]), 4)
        tensor([[0., 0., 1., 1.]])
    """
    _check_values(timesteps, "timesteps")
    _check_dim(embedding_dim, 4)
    if not max_positions > 1:
        raise ValueError(f"max_positions must be > 1, got {max_positions}")
    x = timesteps if timesteps.is_floating_point() else timesteps.to(torch.get_default_dtype())
    half = embedding_dim // 2
    step = math.log(max_positions) / (half - 1)
    frequencies = torch.exp(-step * torch.arange(half, dtype=x.dtype, device=x.device))
    angles = x[:, None] * frequencies[None, :]
    return _pad_odd(torch.cat([torch.sin(angles), torch.cos(angles)], dim=1), embedding_dim)


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a scalar: ``[sin(2 pi x W), cos(2 pi x W)]``.

    ``W`` holds ``embedding_size // 2`` frequencies drawn once from ``N(0, scale**2)``. It is a parameter with
    ``requires_grad=False`` (as in EigenFold), so it is saved in the ``state_dict`` but never trained.

    Args:
        embedding_size: number of output columns, >= 2; odd sizes end with a zero column.
        scale: standard deviation of the frequencies.

    Example:
        >>> GaussianFourierProjection(8)(torch.rand(5)).shape
        torch.Size([5, 8])
    """

    def __init__(self, embedding_size: int = 256, scale: float = 1.0) -> None:
        super().__init__()
        _check_dim(embedding_size, 2)
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.embedding_size = embedding_size
        self.W = nn.Parameter(torch.randn(embedding_size // 2) * scale, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        """Embed ``x`` (N,) as (N, embedding_size)."""
        _check_values(x, "x")
        angles = x[:, None] * self.W[None, :] * 2 * math.pi
        return _pad_odd(torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1), self.embedding_size)


def get_timestep_embedding(
    embedding_type: str, embedding_dim: int, embedding_scale: float = 10000
) -> Callable[[Tensor], Tensor]:
    """The timestep embedding called ``embedding_type``: a function from (N,) to (N, embedding_dim).

    Args:
        embedding_type: ``"sinusoidal"`` (:func:`sinusoidal_embedding` with ``max_positions=embedding_scale``) or
            ``"fourier"`` (:class:`GaussianFourierProjection` with ``scale=embedding_scale``, as in EigenFold).
        embedding_dim: number of output columns.
        embedding_scale: see ``embedding_type``.

    Returns:
        A picklable callable; for ``"fourier"`` an ``nn.Module`` (register it in a model to save its ``W``).
    """
    if embedding_type == "sinusoidal":
        _check_dim(embedding_dim, 4)
        return partial(sinusoidal_embedding, embedding_dim=embedding_dim, max_positions=embedding_scale)
    if embedding_type == "fourier":
        return GaussianFourierProjection(embedding_size=embedding_dim, scale=embedding_scale)
    raise ValueError(f"embedding_type must be 'sinusoidal' or 'fourier', got {embedding_type!r}")
