"""The point convolution of e3nn's benzene example.

Each atom ``i`` sums, over its neighbours ``j`` within ``max_radius``, the tensor product of the neighbour's
features with a filter made of a learned radial function and the spherical harmonics of the edge direction:

    ``f'_i = 1 / sqrt(num_neighbors) * sum_{j in n(i)} R(|r_ij|) Y(r_ij / |r_ij|) (x) f_j``,   ``r_ij = pos_j - pos_i``.

The vector points from the centre ``i`` to the neighbour ``j``, as in e3nn's examples (``pos[edge_src] -
pos[edge_dst]``) and in the old e3nn of the 2019 tutorial. ``R`` gives one weight per path of the tensor product,
so ``(x)`` is an ``o3.FullyConnectedTensorProduct`` whose weights change from edge to edge.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from e3nn import o3
from torch import Tensor

from tpconv_lite.graph import edge_geometry, radius_graph, scatter
from tpconv_lite.radial import RadialMLP


class PointConvolution(torch.nn.Module):
    """``f'_i = 1/sqrt(num_neighbors) * sum_j R(r_ij) Y(r_ij_hat) (x) f_j`` on a point cloud.

    Normalisation: the sum is divided by ``sqrt(num_neighbors)``, a fixed number (the typical neighbour count of
    the data), as in e3nn's examples, and not averaged over each atom's own neighbours. If the ``n`` messages of
    an atom are roughly independent with unit second moment, their sum has second moment ``n``, so the constant
    keeps outputs near unit scale. Dividing by each atom's own count ``n_i`` (or its square root) would adapt to
    each atom, but it jumps when a neighbour crosses ``max_radius`` (``sum / n`` becomes ``sum / (n + 1)``) even when
    the radial function brings that neighbour's message smoothly to zero; a constant keeps the convolution a smooth
    function of the positions.

    A zero-length edge (two atoms at the same place) has no direction: its spherical harmonics are taken at the
    zero vector, ``Y = (1, 0, ..., 0)`` (only ``l = 0`` survives, which is equivariant). Passing the zero vector to
    ``o3.spherical_harmonics(..., normalize=True)`` gives the same values but gradients of about 1e12, so the
    edge geometry comes from :func:`~tpconv_lite.graph.edge_geometry`, which normalises the directions with a safe
    divisor and evaluates the harmonics with ``normalize=False``.

    Precision: e3nn computes the Clebsch-Gordan coefficients of the tensor product in the default dtype, and
    ``.double()`` only casts them. For float64 accuracy (equivariance errors near 1e-14 rather than 1e-7) build the
    module while ``torch.get_default_dtype()`` is float64.

    Args:
        irreps_in: irreps of the input features ``f_j``, e.g. ``"2x0e"``.
        irreps_out: irreps of the output features; each must be reachable from ``irreps_in (x) irreps_sh``.
        irreps_sh: irreps of the filter's spherical harmonics (each ``l`` with parity ``(-1)^l``), or ``lmax``.
        max_radius: graph cutoff and end of the radial basis.
        num_neighbors: the typical number of neighbours, the normaliser above.
        number_of_basis: radial basis size.
        radial_hidden: width of the hidden layers of the radial network.
        radial_layers: number of hidden layers of the radial network.
        basis: radial basis (see :class:`~tpconv_lite.radial.RadialMLP`).
        cutoff: whether the basis goes to zero at ``max_radius``.
        act: activation of the radial network.

    Example:
        >>> conv = PointConvolution("2x0e", "4x0e + 4x1o + 4x2e", max_radius=2.0, num_neighbors=2.0)
        >>> conv(torch.randn(5, 2), torch.randn(5, 3)).shape
        torch.Size([5, 36])
    """

    def __init__(
        self,
        irreps_in: o3.Irreps | str,
        irreps_out: o3.Irreps | str,
        irreps_sh: o3.Irreps | str | int = "0e + 1o + 2e",
        *,
        max_radius: float,
        num_neighbors: float,
        number_of_basis: int = 10,
        radial_hidden: int = 100,
        radial_layers: int = 2,
        basis: str = "smooth_finite",
        cutoff: bool = True,
        act: Callable[[Tensor], Tensor] = torch.nn.functional.silu,
    ) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        if isinstance(irreps_sh, int):
            irreps_sh = o3.Irreps.spherical_harmonics(irreps_sh)
        self.irreps_sh = o3.Irreps(irreps_sh)
        if any(ir.p != (-1) ** ir.l for _, ir in self.irreps_sh):
            raise ValueError(f"irreps_sh must have parity (-1)^l for each l, like 0e + 1o + 2e; got {self.irreps_sh}")
        if not num_neighbors > 0:
            raise ValueError(f"num_neighbors must be positive, got {num_neighbors}")
        self.max_radius = float(max_radius)
        self.num_neighbors = float(num_neighbors)

        self.tp = o3.FullyConnectedTensorProduct(self.irreps_in, self.irreps_sh, self.irreps_out, shared_weights=False)
        reached = {ins.i_out for ins in self.tp.instructions}
        unreachable = [f"{mul}x{ir}" for i, (mul, ir) in enumerate(self.irreps_out) if i not in reached]
        if unreachable:
            raise ValueError(
                f"irreps_out {unreachable} cannot be produced from {self.irreps_in} (x) {self.irreps_sh}; "
                "they would always be zero"
            )
        self.radial = RadialMLP(self.tp.weight_numel, max_radius, number_of_basis, radial_hidden, radial_layers,
                                basis, cutoff, act)

    def forward(self, x: Tensor, pos: Tensor, edge_index: Tensor | None = None, batch: Tensor | None = None) -> Tensor:
        """Convolve.

        Args:
            x: (N, irreps_in.dim) node features.
            pos: (N, 3) positions, same dtype and device as ``x``.
            edge_index: (2, E) long, row 0 the neighbours ``j``, row 1 the centres ``i``; None builds the radius
                graph of ``pos`` with ``max_radius``.
            batch: (N,) graph index of each node, used only to build the graph (so only with ``edge_index=None``).

        Returns:
            (N, irreps_out.dim) node features; zero for nodes without neighbours.
        """
        self._check_inputs(x, pos, edge_index, batch)
        if edge_index is None:
            edge_index = radius_graph(pos, self.max_radius, batch)
        src, dst = edge_index  # messages go from the neighbour j = src to the centre i = dst
        _, edge_length, edge_sh = edge_geometry(pos, edge_index, self.irreps_sh)  # r_ij = pos_j - pos_i, guarded
        messages = self.tp(x[src], edge_sh, self.radial(edge_length))  # R(r_ij) Y(r_ij_hat) (x) f_j
        return scatter(messages, dst, dim=0, dim_size=x.shape[0]) / self.num_neighbors**0.5

    def _check_inputs(self, x: Tensor, pos: Tensor, edge_index: Tensor | None, batch: Tensor | None) -> None:
        """Raise a ValueError/TypeError naming what was expected when the inputs do not fit together."""
        if x.dim() != 2 or x.shape[1] != self.irreps_in.dim:
            raise ValueError(f"x must have shape (N, {self.irreps_in.dim}) for {self.irreps_in}, got {tuple(x.shape)}")
        if pos.shape != (x.shape[0], 3):
            raise ValueError(f"pos must have shape ({x.shape[0]}, 3) to match x, got {tuple(pos.shape)}")
        weight = next(self.parameters())
        for name, t in (("x", x), ("pos", pos)):
            if t.dtype != weight.dtype or t.device != weight.device:
                raise TypeError(
                    f"{name} is {t.dtype} on {t.device} but the module is {weight.dtype} on {weight.device}; "
                    "move one to the other (e.g. module.to(x))"
                )
        if edge_index is None:
            return
        if batch is not None:
            raise ValueError("batch is only used to build the graph; pass it with edge_index=None")
        if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.dtype != torch.long:
            raise ValueError(
                f"edge_index must be a (2, E) long tensor, got {edge_index.dtype} of shape {tuple(edge_index.shape)}"
            )
        if edge_index.device != x.device:
            raise ValueError(f"edge_index is on {edge_index.device} but x is on {x.device}")
        if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= x.shape[0]):
            raise ValueError(
                f"edge_index must hold node indices in [0, {x.shape[0]}), "
                f"got values from {int(edge_index.min())} to {int(edge_index.max())}"
            )
