"""e3nn's tensor product with one set of weights per edge, computed output by output with the edge axis last.

A convolution evaluates ``tp(x_j, Y_ij, w_ij)`` for every edge at once, where ``tp`` is an
``o3.FullyConnectedTensorProduct(..., shared_weights=False)`` and the weights ``w_ij`` come from an MLP of the edge.
e3nn evaluates it path by path: each path ``(l1, l2) -> l3`` takes its block of the ``(E, weight_numel)`` weights
with a slice and runs a small einsum. The slices are free going forward, but going backward each one becomes a
zero-filled ``(E, weight_numel)`` tensor that holds the gradient of its block, and these tensors are added up: a
dozen passes over the largest per-edge tensor of the layer, a third or more of the time of a forward and backward
pass of EigenFold's layer; most of the rest goes to e3nn's per-edge einsums, millions of tiny matrix products.

The functions here compute the same sums in another order. Write ``x1[u, i, e]`` for copy ``u``, component ``i`` of
an irrep of the first input on edge ``e``, and likewise ``x2[v, j, e]``. For each output irrep ``o`` of
multiplicity ``mul_o`` and dimension ``2 l_o + 1``:

1. every path ``p`` into ``o`` couples its two inputs with its Clebsch-Gordan coefficients ``C_p`` (e3nn's Wigner
   3j symbol) and its normalisation ``c_p`` (e3nn's ``path_weight``)::

       y_p[u, v, k, e] = c_p sum_{i, j} C_p[i, j, k] x1[u, i, e] x2[v, j, e]

   and the ``y_p`` of all paths into ``o`` are stacked into ``Y_o[U, k, e]``, ``U`` running over ``(p, u, v)``;
2. the weights of these paths form one block ``W_o[w, U, e]``, and ``out_o[w, k, e] = sum_U W_o[w, U, e] Y_o[U, k, e]``.

The edge axis is last, so every per-edge operation is an elementwise product or a sum over rows of ``E`` contiguous
numbers, which vectorises; with the edge axis first, the same sums are ``E`` tiny matrix products (``torch.bmm`` of
4 x 3 by 3 x 3 matrices), which run one edge at a time.

When the weights are the output of a linear layer ``w = A h + b`` (the last layer of the MLP),
:func:`linear_weighted_tensor_product` gathers the rows of ``A`` and ``b`` that make each block ``W_o`` and computes
``W_o = A[rows_o] h + b[rows_o]`` directly: the weights in e3nn's order are never formed, and no slice of a per-edge
tensor ever reaches autograd. :func:`tensor_product` takes weights in e3nn's order, like ``tp`` itself.

Both give ``tp``'s outputs and gradients up to float rounding (~1e-15 in float64, ~1e-7 relative in float32). They
read the Wigner 3j symbols from ``tp``'s buffers, so a ``tp`` loaded from a ``state_dict`` is evaluated with the
loaded numbers. Paths whose three degrees are not all >= 1 have no buffer: there e3nn's code multiplies by
``1 / sqrt(dimension)`` (``1`` for ``0 x 0 -> 0``), which is the 3j symbol of those degrees, and so does this module.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch
from e3nn import o3
from torch import Tensor, nn

if TYPE_CHECKING:
    from e3nn.o3._tensor_product._instruction import Instruction


@functools.lru_cache(maxsize=None)
def _weight_rows(
    irreps_out: o3.Irreps, instructions: tuple[Instruction, ...], device: torch.device
) -> tuple[Tensor, ...]:
    """For each output irrep, where the entries of its block ``W_o[w, U]`` sit in e3nn's flat weight vector.

    e3nn stores the weights path after path, each path as ``(mul1, mul2, mul_out)`` in row-major order.

    Returns:
        One long tensor per output irrep, of length ``mul_o * U_o`` (empty for an output that no path reaches).
    """
    starts = [0]
    for ins in instructions:
        starts.append(starts[-1] + math.prod(ins.path_shape))
    rows = []
    for i_out, (mul, _) in enumerate(irreps_out):
        blocks = [
            torch.arange(starts[n], starts[n + 1], device=device).view(-1, mul)  # (mul1 * mul2, mul_out): (U_p, w)
            for n, ins in enumerate(instructions)
            if ins.i_out == i_out
        ]
        rows.append(torch.cat(blocks).T.reshape(-1) if blocks else torch.zeros(0, dtype=torch.long, device=device))
    return tuple(rows)


def _coupling(tp: o3.TensorProduct, ins: Instruction, like: Tensor) -> Tensor:
    """``c_p C_p``: the path's Clebsch-Gordan coefficients times its normalisation, shape ``(d1, d2, d_out)``.

    The 3j symbols are the buffers ``tp._compiled_main_left_right._w3j_{l1}_{l2}_{l3}`` (the names in its
    ``state_dict``), cast to the dtype of ``like``, as e3nn's own forward uses them.
    """
    l1, l2, l_out = tp.irreps_in1[ins.i_in1].ir.l, tp.irreps_in2[ins.i_in2].ir.l, tp.irreps_out[ins.i_out].ir.l
    w3j = getattr(tp._compiled_main_left_right, f"_w3j_{l1}_{l2}_{l_out}", None)
    if w3j is None:  # e3nn's specialised code for a path with a degree 0: delta_ij / sqrt(2 l + 1)
        dims = (2 * l1 + 1, 2 * l2 + 1, 2 * l_out + 1)
        dim = max(dims)
        w3j = torch.eye(dim, dtype=like.dtype, device=like.device).view(dims) / math.sqrt(dim)
    return ins.path_weight * w3j.to(like.dtype)


class _EdgeLast(torch.autograd.Function):
    """``x.T`` as a contiguous copy, whose gradient is a contiguous copy too.

    With a plain ``x.T`` the backward pass would hand every edge-last operation a transposed (strided) gradient, and
    each of them would run on strided memory or copy it.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.T.contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.T.contiguous()


def _check(tp: o3.TensorProduct, x1: Tensor, x2: Tensor) -> None:
    """Raise if ``tp`` is not a tensor product with per-sample 'uvw' weights, or the inputs do not fit it."""
    if not isinstance(tp, o3.TensorProduct):
        raise TypeError(f"tp must be an e3nn o3.TensorProduct, got {type(tp).__name__}")
    modes = {(ins.connection_mode, ins.has_weight) for ins in tp.instructions}
    if not modes <= {("uvw", True)}:
        raise ValueError(f"tp's paths must all be weighted 'uvw' paths (FullyConnectedTensorProduct's), got {modes}")
    if tp.shared_weights or tp.internal_weights:
        raise ValueError("tp must take one set of weights per sample (shared_weights=False, internal_weights=False)")
    for name, x, irreps in (("x1", x1, tp.irreps_in1), ("x2", x2, tp.irreps_in2)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != irreps.dim:
            raise ValueError(f"{name} must have shape (..., {irreps.dim}) for {irreps}, got {tuple(x.shape)}")
    if x1.shape[:-1] != x2.shape[:-1]:
        raise ValueError(f"x1 and x2 must have the same batch shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")


def _edge_last_product(tp: o3.TensorProduct, x1: Tensor, x2: Tensor, weights: list[Tensor]) -> Tensor:
    """The tensor product with the edge axis last.

    Args:
        tp: the e3nn tensor product (its irreps, paths and 3j buffers are used, not its forward).
        x1: (irreps_in1.dim, E).
        x2: (irreps_in2.dim, E).
        weights: one ``(mul_o * U_o, E)`` block per output irrep, rows ordered as ``_weight_rows`` says.

    Returns:
        (irreps_out.dim, E).
    """
    n_edges = x1.shape[-1]
    x1_blocks = [x1[s].view(mul, ir.dim, n_edges) for s, (mul, ir) in zip(tp.irreps_in1.slices(), tp.irreps_in1)]
    x2_blocks = [x2[s].view(mul, ir.dim, n_edges) for s, (mul, ir) in zip(tp.irreps_in2.slices(), tp.irreps_in2)]
    outputs = []
    for i_out, (mul_out, ir_out) in enumerate(tp.irreps_out):
        coupled = []
        for ins in tp.instructions:
            if ins.i_out != i_out:
                continue
            c = _coupling(tp, ins, x1)  # (d1, d2, k)
            d1, d2, k = c.shape
            a, b = x1_blocks[ins.i_in1], x2_blocks[ins.i_in2]  # (u, d1, E), (v, d2, E)
            u, v = len(a), len(b)
            q = (c.transpose(1, 2).reshape(d1 * k, d2) @ b).view(1, v, d1, k, n_edges)  # sum_j C[i, j, k] b[v, j]
            y = (a.view(u, 1, d1, 1, n_edges) * q).sum(2)  # (u, v, k, E): sum_i a[u, i] q[v, i, k]
            coupled.append(y.view(u * v, k, n_edges))
        if not coupled:
            outputs.append(x1.new_zeros(mul_out * ir_out.dim, n_edges))
            continue
        y = torch.cat(coupled)  # (U, k, E)
        w = weights[i_out].view(mul_out, y.shape[0], n_edges)  # (w, U, E)
        out = x1.new_zeros(mul_out, ir_out.dim, n_edges)
        for w_u, y_u in zip(w.unbind(1), y.unbind(0)):  # out[w, k] += w[w, U] y[U, k], one U at a time
            out = torch.addcmul(out, w_u.unsqueeze(1), y_u)
        outputs.append(out.view(mul_out * ir_out.dim, n_edges))
    return torch.cat(outputs)


def tensor_product(tp: o3.TensorProduct, x1: Tensor, x2: Tensor, weight: Tensor) -> Tensor:
    """``tp(x1, x2, weight)`` for a tensor product with one set of weights per sample, computed faster.

    Args:
        tp: an ``o3.TensorProduct`` with ``shared_weights=False`` and weighted ``"uvw"`` paths, such as
            ``o3.FullyConnectedTensorProduct(irreps_in1, irreps_in2, irreps_out, shared_weights=False)``.
        x1: (..., irreps_in1.dim).
        x2: (..., irreps_in2.dim), the same batch shape.
        weight: (..., weight_numel) in e3nn's order, the same batch shape.

    Returns:
        (..., irreps_out.dim), equal to ``tp(x1, x2, weight)`` up to float rounding.

    Example:
        >>> tp = o3.FullyConnectedTensorProduct("2x0e + 1x1o", "0e + 1o", "1x0e + 2x1o", shared_weights=False)
        >>> x1, x2, w = torch.randn(5, 5), torch.randn(5, 4), torch.randn(5, tp.weight_numel)
        >>> torch.allclose(tensor_product(tp, x1, x2, w), tp(x1, x2, w), atol=1e-6)
        True
    """
    _check(tp, x1, x2)
    if not isinstance(weight, Tensor) or weight.shape != (*x1.shape[:-1], tp.weight_numel):
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight must have shape {(*x1.shape[:-1], tp.weight_numel)}, got {shape}")
    batch = x1.shape[:-1]
    rows = _weight_rows(tp.irreps_out, tuple(tp.instructions), weight.device)
    weight = weight.reshape(-1, tp.weight_numel)
    grouped = weight[:, torch.cat(rows)].T.contiguous()  # one gather, one transpose
    weights = list(torch.split(grouped, [len(r) for r in rows]))
    x1, x2 = _EdgeLast.apply(x1.reshape(-1, x1.shape[-1])), _EdgeLast.apply(x2.reshape(-1, x2.shape[-1]))
    out = _EdgeLast.apply(_edge_last_product(tp, x1, x2, weights))
    return out.reshape(*batch, tp.irreps_out.dim)


def linear_weighted_tensor_product(
    tp: o3.TensorProduct, x1: Tensor, x2: Tensor, hidden: Tensor, linear: nn.Linear
) -> Tensor:
    """``tp(x1, x2, linear(hidden))``, without forming the weights in e3nn's order.

    Each block of weights is computed from its own rows of the linear layer, ``W_o = A[rows_o] h + b[rows_o]``, with
    the edge axis last (see the module docstring): the same numbers as ``linear(hidden)``, in the order the product
    uses them.

    Args:
        tp: as in :func:`tensor_product`.
        x1: (E, irreps_in1.dim).
        x2: (E, irreps_in2.dim).
        hidden: (E, linear.in_features), e.g. the last hidden layer of an edge MLP.
        linear: an ``nn.Linear`` with ``out_features == tp.weight_numel``.

    Returns:
        (E, irreps_out.dim), equal to ``tp(x1, x2, linear(hidden))`` up to float rounding.

    Example:
        >>> tp = o3.FullyConnectedTensorProduct("2x0e + 1x1o", "0e + 1o", "1x0e + 2x1o", shared_weights=False)
        >>> linear = nn.Linear(8, tp.weight_numel)
        >>> x1, x2, h = torch.randn(5, 5), torch.randn(5, 4), torch.randn(5, 8)
        >>> torch.allclose(linear_weighted_tensor_product(tp, x1, x2, h, linear), tp(x1, x2, linear(h)), atol=1e-6)
        True
    """
    _check(tp, x1, x2)
    if not isinstance(linear, nn.Linear) or linear.out_features != tp.weight_numel:
        raise ValueError(f"linear must be an nn.Linear with out_features = tp.weight_numel = {tp.weight_numel}")
    if x1.dim() != 2 or not isinstance(hidden, Tensor) or hidden.shape != (x1.shape[0], linear.in_features):
        shape = tuple(hidden.shape) if isinstance(hidden, Tensor) else type(hidden).__name__
        raise ValueError(
            f"x1 must have shape (E, {tp.irreps_in1.dim}) and hidden ({x1.shape[0]}, {linear.in_features}), "
            f"got {tuple(x1.shape)} and {shape}"
        )
    rows = _weight_rows(tp.irreps_out, tuple(tp.instructions), hidden.device)
    hidden, a, b = hidden.T, linear.weight, linear.bias  # hidden: (in_features, E)
    weights = [a[r] @ hidden if b is None else torch.addmm(b[r, None], a[r], hidden) for r in rows]  # (mul_o U_o, E)
    return _EdgeLast.apply(_edge_last_product(tp, _EdgeLast.apply(x1), _EdgeLast.apply(x2), weights))
