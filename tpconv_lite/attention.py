"""Equivariant attention over the edges of a graph (formula (1) of the SE(3)-Transformer).

Each target node ``i`` mixes the values ``v_ij`` of its incoming edges with weights ``alpha_ij`` that sum to one:

    alpha_ij = w_ij exp(q_i . k_ij) / sum_j' w_ij' exp(q_i . k_ij')

where ``q_i`` is the query of the target, ``k_ij`` the key of the edge and ``w_ij`` an optional cutoff weight that
goes smoothly to zero at the cutoff radius, so an edge fades out instead of vanishing abruptly.

- :func:`~tpconv_lite.graph.edge_softmax` (in :mod:`tpconv_lite.graph`, next to ``scatter``) is the softmax over
  the incoming edges of every node, computed stably: the largest logit of each node is subtracted before
  exponentiating, so logits of 1000 give the same weights as logits of 0.
- :class:`EquivariantAttention` is the full layer of e3nn's transformer guide: queries from the node features, keys
  and values from tensor products of the source features with the spherical harmonics of the edge, a learned dot
  product, and an output ``sum_j sqrt(alpha_ij) v_ij``.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace, soft_unit_step
from e3nn.nn import FullyConnectedNet
from torch import Tensor, nn

from tpconv_lite.graph import edge_geometry, edge_softmax, scatter


def _sqrt_or_zero(x: Tensor) -> Tensor:
    """``sqrt(x)`` for ``x >= 0``, with gradient 0 instead of infinity where ``x == 0``."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


class EquivariantAttention(nn.Module):
    """SE(3)-Transformer attention on a radius graph, as in e3nn's transformer guide.

    For an edge ``j -> i`` with vector ``r_ij = pos[j] - pos[i]``:

    - query ``q_i = h_q(f_i)`` (an equivariant linear map of the target's features);
    - key ``k_ij = tp_k(f_j, Y(r_ij), fc_k(|r_ij|))`` and value ``v_ij = tp_v(f_j, Y(r_ij), fc_v(|r_ij|))``:
      tensor products of the source's features with the spherical harmonics of the edge, weighted by radial MLPs;
    - logit ``dot(q_i, k_ij)``: a learned invariant (``0e``) bilinear form;
    - ``alpha_ij``: :func:`edge_softmax` of the logits, each exponential multiplied by the smooth cutoff
      ``soft_unit_step(10 (1 - |r_ij| / max_radius))``;
    - output ``f'_i = sum_j sqrt(alpha_ij) v_ij`` (the square root keeps the output at unit scale).

    The radial embedding and the cutoff both go to zero at ``max_radius`` and the radial MLPs have no biases, so an
    edge reaching the cutoff contributes nothing: the output is continuous as points cross ``max_radius``.

    Args:
        irreps_input: irreps of the node features ``f``.
        irreps_query: irreps of the queries (and the first input of ``dot``).
        irreps_key: irreps of the keys.
        irreps_output: irreps of the values and of the output.
        max_radius: cutoff radius of the graph.
        lmax: largest degree of the edge spherical harmonics.
        number_of_basis: size of the radial embedding.
        radial_neurons: hidden width of the radial MLPs.

    Example:
        >>> att = EquivariantAttention("4x0e + 2x1o", "4x0e + 1x1o", "4x0e + 1x1o", "3x0e + 2x1o", max_radius=1.5)
        >>> pos = torch.randn(5, 3)
        >>> edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])
        >>> att(torch.randn(5, 10), pos, edge_index).shape
        torch.Size([5, 9])
    """

    def __init__(
        self,
        irreps_input: o3.Irreps | str,
        irreps_query: o3.Irreps | str,
        irreps_key: o3.Irreps | str,
        irreps_output: o3.Irreps | str,
        max_radius: float,
        lmax: int = 3,
        number_of_basis: int = 10,
        radial_neurons: int = 16,
    ) -> None:
        super().__init__()
        if not max_radius > 0:
            raise ValueError(f"max_radius must be positive, got {max_radius}")
        self.irreps_input = o3.Irreps(irreps_input)
        self.irreps_output = o3.Irreps(irreps_output)
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.max_radius = float(max_radius)
        self.number_of_basis = number_of_basis

        self.h_q = o3.Linear(self.irreps_input, irreps_query)
        self.tp_k = o3.FullyConnectedTensorProduct(self.irreps_input, self.irreps_sh, irreps_key, shared_weights=False)
        self.fc_k = FullyConnectedNet([number_of_basis, radial_neurons, self.tp_k.weight_numel], act=nn.functional.silu)
        self.tp_v = o3.FullyConnectedTensorProduct(
            self.irreps_input, self.irreps_sh, self.irreps_output, shared_weights=False
        )
        self.fc_v = FullyConnectedNet([number_of_basis, radial_neurons, self.tp_v.weight_numel], act=nn.functional.silu)
        self.dot = o3.FullyConnectedTensorProduct(irreps_query, irreps_key, "0e")

    def forward(self, features: Tensor, pos: Tensor, edge_index: Tensor) -> Tensor:
        """Attend from every node to its incoming edges.

        Args:
            features: (N, irreps_input.dim) node features.
            pos: (N, 3) positions.
            edge_index: (2, E) long, row 0 sources ``j``, row 1 targets ``i`` (e.g. from ``radius_graph``).

        Returns:
            (N, irreps_output.dim); zero for nodes without incoming edges.
        """
        n = features.shape[0]
        if features.dim() != 2 or features.shape[1] != self.irreps_input.dim:
            raise ValueError(
                f"features must have shape (N, {self.irreps_input.dim}) for {self.irreps_input}, "
                f"got {tuple(features.shape)}"
            )
        if pos.shape != (n, 3):
            raise ValueError(f"pos must have shape ({n}, 3), one point per node, got {tuple(pos.shape)}")
        if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.dtype != torch.long:
            raise ValueError(
                f"edge_index must be a (2, E) long tensor, got {edge_index.dtype} of shape {tuple(edge_index.shape)}"
            )
        alpha, v = self.weights_and_values(features, pos, edge_index)
        return scatter(_sqrt_or_zero(alpha) * v, edge_index[1], dim=0, dim_size=n)

    def weights_and_values(
        self, features: Tensor, pos: Tensor, edge_index: Tensor, cutoff_weight: bool = True
    ) -> tuple[Tensor, Tensor]:
        """The attention weights and the values of every edge, before the weighted sum that ends ``forward``.

        Args:
            features, pos, edge_index: as in ``forward`` (not checked again here).
            cutoff_weight: multiply each exponential by the smooth cutoff; False leaves it out (an experiment of
                chapter 6: the output then jumps when a point crosses ``max_radius``).

        Returns:
            ``alpha`` (E, 1), summing to 1 over the incoming edges of each target, and the values
            ``v`` (E, irreps_output.dim).
        """
        edge_src, edge_dst = edge_index
        edge_length_embedded, edge_weight_cutoff, edge_sh = self.edge_inputs(pos, edge_index)
        k = self.tp_k(features[edge_src], edge_sh, self.fc_k(edge_length_embedded))
        v = self.tp_v(features[edge_src], edge_sh, self.fc_v(edge_length_embedded))
        weight = edge_weight_cutoff if cutoff_weight else None
        alpha = edge_softmax(self.dot(self.h_q(features)[edge_dst], k), edge_dst, features.shape[0], weight=weight)
        return alpha, v

    def edge_inputs(self, pos: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """What the layer computes from the geometry of each edge ``j -> i``, with ``r_ij = pos[j] - pos[i]``.

        Returns:
            ``edge_length_embedded`` (E, number_of_basis), the smooth radial basis of ``|r_ij|`` scaled by
            ``sqrt(number_of_basis)``; ``edge_weight_cutoff`` (E,), which falls smoothly to 0 at ``max_radius``; and
            ``edge_sh`` (E, irreps_sh.dim), the spherical harmonics of ``r_ij`` (from
            :func:`~tpconv_lite.graph.edge_geometry`, which keeps the gradient finite at a zero-length edge).
        """
        _, edge_length, edge_sh = edge_geometry(pos, edge_index, self.irreps_sh)
        edge_length_embedded = soft_one_hot_linspace(
            edge_length, 0.0, self.max_radius, self.number_of_basis, basis="smooth_finite", cutoff=True
        ).mul(math.sqrt(self.number_of_basis))
        edge_weight_cutoff = soft_unit_step(10 * (1 - edge_length / self.max_radius))
        return edge_length_embedded, edge_weight_cutoff, edge_sh
