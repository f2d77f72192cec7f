"""Equivariant attention over the edges of a graph (formula (1) of the SE(3)-Transformer).

Each target node ``i`` mixes the values ``v_ij`` of its incoming edges with weights ``alpha_ij`` that sum to one:

    alpha_ij = w_ij exp(q_i . k_ij) / sum_j' w_ij' exp(q_i . k_ij')

where ``q_i`` is the query of the target, ``k_ij`` the key of the edge and ``w_ij`` an optional cutoff weight that
goes smoothly to zero at the cutoff radius, so an edge fades out instead of vanishing abruptly.

- :func:`edge_softmax` is the softmax over the incoming edges of every node, computed stably: the largest logit of
  each node is subtracted before exponentiating, so logits of 1000 give the same weights as logits of 0.
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

from tpconv_lite.graph import scatter


def edge_softmax(logits: Tensor, index: Tensor, num_nodes: int, weight: Tensor | None = None) -> Tensor:
    """Softmax of the edge logits over the incoming edges of each target node.

    The largest logit of each target is subtracted first (a constant shift, which leaves the softmax unchanged), so
    every exponential is at most 1 and nothing overflows. Only edges with a positive ``weight`` count for that
    maximum: a cut-off edge with a large logit would otherwise push the live exponentials into underflow. The shift
    is detached: its gradient is zero anyway.

    Args:
        logits: (E, ...) one score (or one per head, channel, ...) per edge.
        index: (E,) long target node of each edge (``edge_index[1]``).
        num_nodes: number of target nodes, > ``index.max()``. Nodes with no incoming edge simply get no weight.
        weight: optional (E,) non-negative factor multiplying each exponential, e.g. a smooth cutoff of the edge
            length. A node whose exponentials are all zero gets zero weights (not 0 / 0).

    Returns:
        (E, ...) weights ``alpha``, summing to 1 over the incoming edges of each target (where ``weight`` leaves
        at least one non-zero exponential).

    Example:
        >>> edge_softmax(torch.tensor([0.0, 0.0, 1000.0]), torch.tensor([0, 0, 2]), num_nodes=3)
        tensor([0.5000, 0.5000, 1.0000])
    """
    if logits.dim() == 0 or logits.shape[0] != index.shape[0]:
        raise ValueError(
            f"logits must have one row per edge: expected shape ({index.shape[0]}, ...) to match index, "
            f"got {tuple(logits.shape)}"
        )
    live = logits.detach()
    if weight is not None:
        if weight.shape != (logits.shape[0],):
            raise ValueError(f"weight must have shape ({logits.shape[0]},), one per edge, got {tuple(weight.shape)}")
        weight = weight.view(-1, *[1] * (logits.dim() - 1))
        live = live.masked_fill(weight <= 0, float("-inf"))  # a cut-off edge must not set the shift
    largest = scatter(live, index, dim=0, dim_size=num_nodes, reduce="max")
    largest = torch.where(torch.isfinite(largest), largest, torch.zeros_like(largest))  # every edge cut off
    shifted = logits - largest[index]
    if weight is not None:  # cut-off edges: exp(0) * 0 = 0, never exp(large) * 0 = inf * 0
        shifted = shifted.masked_fill(weight <= 0, 0.0)
    exp = shifted.exp() if weight is None else shifted.exp() * weight
    total = scatter(exp, index, dim=0, dim_size=num_nodes)
    total = torch.where(total > 0, total, torch.ones_like(total))  # all exponentials cut off: 0 / 1, not 0 / 0
    return exp / total[index]


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
        edge_src, edge_dst = edge_index
        edge_length_embedded, edge_weight_cutoff, edge_sh = self.edge_inputs(pos, edge_index)

        q = self.h_q(features)
        k = self.tp_k(features[edge_src], edge_sh, self.fc_k(edge_length_embedded))
        v = self.tp_v(features[edge_src], edge_sh, self.fc_v(edge_length_embedded))
        alpha = edge_softmax(self.dot(q[edge_dst], k), edge_dst, n, weight=edge_weight_cutoff)
        return scatter(_sqrt_or_zero(alpha) * v, edge_dst, dim=0, dim_size=n)

    def edge_inputs(self, pos: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """What the layer computes from the geometry of each edge ``j -> i``, with ``r_ij = pos[j] - pos[i]``.

        Returns:
            ``edge_length_embedded`` (E, number_of_basis), the smooth radial basis of ``|r_ij|`` scaled by
            ``sqrt(number_of_basis)``; ``edge_weight_cutoff`` (E,), which falls smoothly to 0 at ``max_radius``; and
            ``edge_sh`` (E, irreps_sh.dim), the spherical harmonics of ``r_ij``.
        """
        edge_src, edge_dst = edge_index
        edge_vec = pos[edge_src] - pos[edge_dst]
        edge_length = edge_vec.norm(dim=1)
        edge_length_embedded = soft_one_hot_linspace(
            edge_length, 0.0, self.max_radius, self.number_of_basis, basis="smooth_finite", cutoff=True
        ).mul(math.sqrt(self.number_of_basis))
        edge_weight_cutoff = soft_unit_step(10 * (1 - edge_length / self.max_radius))
        edge_sh = o3.spherical_harmonics(self.irreps_sh, edge_vec, normalize=True, normalization="component")
        return edge_length_embedded, edge_weight_cutoff, edge_sh
