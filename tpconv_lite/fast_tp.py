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

Step 2 is an autograd function with a backward pass written by hand (``_WeightedSum``): autograd would run three
small operations per row ``U``, where the gradients need one multiply-add per component ``k`` and one per output
copy ``w``. The couplings ``Y_o`` depend on the inputs and the paths, not on the weights:
:func:`linear_weighted_tensor_products` evaluates several products of the same inputs (EigenFold's keys and values)
and computes them once. :func:`bilinear_matrix` serves the attention logits: a tensor product with shared weights is
a bilinear map, and with its matrix a product on every edge of a per-node query becomes a product per node and a
dot product per edge.

All of them give ``tp``'s outputs and gradients up to float rounding (~1e-15 in float64, ~1e-7 relative in
float32). They read the Wigner 3j symbols from ``tp``'s buffers, so a ``tp`` loaded from a ``state_dict`` is
evaluated with the loaded numbers. Paths whose three degrees are not all >= 1 have no buffer: there e3nn's code
multiplies by ``1 / sqrt(dimension)`` (``1`` for ``0 x 0 -> 0``), which is the 3j symbol of those degrees, and so
does this module.

The building blocks these functions name are public as well, so that chapter 10, which shows the functions, can
run them: :func:`check_tensor_product` (the checks of the inputs), :func:`weight_rows` (where each block ``W_o``
sits in e3nn's weight vector), :func:`edge_last_product` (steps 1 and 2) and :class:`EdgeLast` (a transpose whose
gradient is contiguous).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from e3nn import o3
from torch import Tensor, nn

if TYPE_CHECKING:
    from e3nn.o3._tensor_product._instruction import Instruction


@functools.lru_cache(maxsize=None)
def weight_rows(
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


class EdgeLast(torch.autograd.Function):
    """``x.T`` as a contiguous copy, whose gradient is a contiguous copy too.

    With a plain ``x.T`` the backward pass would hand every edge-last operation a transposed (strided) gradient, and
    each of them would run on strided memory or copy it.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        """(a, b) -> (b, a), contiguous."""
        return x.T.contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        """(b, a) -> (a, b), contiguous: the gradient of ``forward``."""
        return grad.T.contiguous()


def check_tensor_product(tp: o3.TensorProduct, x1: Tensor, x2: Tensor) -> None:
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


def _couplings(tp: o3.TensorProduct, i_out: int, x1_blocks: list[Tensor], x2_blocks: list[Tensor]) -> list[Tensor]:
    """The Clebsch-Gordan couplings ``y_p[U_p, k, e]`` of the paths ``p`` into output ``i_out``, in e3nn's order.

    Stacked along ``U``, they are ``Y_o`` of the module docstring: within a path, ``U_p`` runs over ``(u, v)`` in
    row-major order, the order of the rows of ``weight_rows``. An output that no path reaches gets an empty list.
    """
    couplings = []
    for ins in tp.instructions:
        if ins.i_out != i_out:
            continue
        c = _coupling(tp, ins, x1_blocks[0])  # (d1, d2, k)
        d1, d2, k = c.shape
        a, b = x1_blocks[ins.i_in1], x2_blocks[ins.i_in2]  # (u, d1, E), (v, d2, E)
        (u, _, n_edges), v = a.shape, len(b)
        q = (c.transpose(1, 2).reshape(d1 * k, d2) @ b).view(1, v, d1, k, n_edges)  # sum_j C[i, j, k] b[v, j]
        if d1 == 1:  # a scalar first input: nothing to sum over
            y = a.view(u, 1, 1, n_edges) * q.view(1, v, k, n_edges)
        else:
            y = (a.view(u, 1, d1, 1, n_edges) * q).sum(2)  # (u, v, k, E): sum_i a[u, i] q[v, i, k]
        couplings.append(y.view(u * v, k, n_edges))
    return couplings


class _WeightedSum(torch.autograd.Function):
    """``out[w, k, e] = sum_U W[w, U, e] Y[U, k, e]``, edge axis last, with a backward pass of few large operations.

    ``Y`` comes as the per-path blocks ``y_p`` that stack into it along ``U``, so that it is never copied into one
    tensor. Forward adds one ``U`` at a time (``U`` multiply-adds into ``out``, which stays small). Left to
    autograd, each of them would cost three operations going backward; here the gradients are sums over ``k`` and
    over ``w``, the two short axes: ``dW[w, U] = sum_k dout[w, k] Y[U, k]`` and ``dY[U, k] = sum_w W[w, U] dout[w, k]``.
    """

    @staticmethod
    def forward(ctx, w: Tensor, *ys: Tensor) -> Tensor:
        ctx.save_for_backward(w, *ys)
        out = w.new_zeros(w.shape[0], ys[0].shape[1], w.shape[2])
        for w_u, y_u in zip(w.unbind(1), [y_u for y in ys for y_u in y.unbind(0)]):
            out.addcmul_(w_u.unsqueeze(1), y_u)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        w, *ys = ctx.saved_tensors
        grad_w = w.new_empty(w.shape) if ctx.needs_input_grad[0] else None
        grad_ys = []
        start = 0
        for i, y in enumerate(ys):
            block = slice(start, start + len(y))
            start = block.stop
            if grad_w is not None:  # (w, U_p, E): one multiply-add per component k
                pairs = [(g_k.unsqueeze(1), y_k) for g_k, y_k in zip(grad.unbind(1), y.unbind(1))]
                _sum_of_products(pairs, out=grad_w[:, block])
            if ctx.needs_input_grad[1 + i]:  # (U_p, k, E): one multiply-add per output copy w
                pairs = [(w_w.unsqueeze(1), g_w) for w_w, g_w in zip(w[:, block].unbind(0), grad.unbind(0))]
                grad_ys.append(_sum_of_products(pairs))
            else:
                grad_ys.append(None)
        return grad_w, *grad_ys


def _sum_of_products(pairs: list[tuple[Tensor, Tensor]], out: Tensor | None = None) -> Tensor:
    """``sum(a * b for a, b in pairs)``, accumulated in place (into ``out`` when given)."""
    (a, b), *rest = pairs
    total = torch.mul(a, b) if out is None else torch.mul(a, b, out=out)
    for a, b in rest:
        total.addcmul_(a, b)
    return total


def edge_last_product(
    tp: o3.TensorProduct, x1: Tensor, x2: Tensor, weights: list[Tensor], shared: dict | None = None
) -> Tensor:
    """The tensor product with the edge axis last.

    Args:
        tp: the e3nn tensor product (its irreps, paths and 3j buffers are used, not its forward).
        x1: (irreps_in1.dim, E).
        x2: (irreps_in2.dim, E).
        weights: one ``(mul_o * U_o, E)`` block per output irrep, rows ordered as ``weight_rows`` says.
        shared: couplings already computed from the same ``x1`` and ``x2`` by a tensor product with the same
            inputs, keyed by the paths into an output irrep; new ones are added (see
            :func:`linear_weighted_tensor_products`).

    Returns:
        (irreps_out.dim, E).
    """
    n_edges = x1.shape[-1]
    x1_blocks = [x1[s].view(mul, ir.dim, n_edges) for s, (mul, ir) in zip(tp.irreps_in1.slices(), tp.irreps_in1)]
    x2_blocks = [x2[s].view(mul, ir.dim, n_edges) for s, (mul, ir) in zip(tp.irreps_in2.slices(), tp.irreps_in2)]
    shared = {} if shared is None else shared
    outputs = []
    for i_out, (mul_out, ir_out) in enumerate(tp.irreps_out):
        paths = tuple((ins.i_in1, ins.i_in2, ins.path_weight) for ins in tp.instructions if ins.i_out == i_out)
        if (ir_out, paths) not in shared:
            shared[ir_out, paths] = _couplings(tp, i_out, x1_blocks, x2_blocks)
        ys = shared[ir_out, paths]  # [(U_p, k, E) for each path p]
        if not ys:
            outputs.append(x1.new_zeros(mul_out * ir_out.dim, n_edges))
            continue
        w = weights[i_out].view(mul_out, sum(len(y) for y in ys), n_edges)  # (w, U, E)
        outputs.append(_WeightedSum.apply(w, *ys).view(mul_out * ir_out.dim, n_edges))
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
    check_tensor_product(tp, x1, x2)
    if not isinstance(weight, Tensor) or weight.shape != (*x1.shape[:-1], tp.weight_numel):
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight must have shape {(*x1.shape[:-1], tp.weight_numel)}, got {shape}")
    batch = x1.shape[:-1]
    rows = weight_rows(tp.irreps_out, tuple(tp.instructions), weight.device)
    weight = weight.reshape(-1, tp.weight_numel)
    grouped = weight[:, torch.cat(rows)].T.contiguous()  # one gather, one transpose
    weights = list(torch.split(grouped, [len(r) for r in rows]))
    x1, x2 = EdgeLast.apply(x1.reshape(-1, x1.shape[-1])), EdgeLast.apply(x2.reshape(-1, x2.shape[-1]))
    out = EdgeLast.apply(edge_last_product(tp, x1, x2, weights))
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
    return linear_weighted_tensor_products([(tp, hidden, linear)], x1, x2)[0]


def linear_weighted_tensor_products(
    products: Sequence[tuple[o3.TensorProduct, Tensor, nn.Linear]], x1: Tensor, x2: Tensor
) -> list[Tensor]:
    """``[tp(x1, x2, linear(hidden)) for tp, hidden, linear in products]``: several products of the same inputs.

    The Clebsch-Gordan couplings ``Y_o`` (see the module docstring) depend only on ``x1``, ``x2`` and the paths into
    an output irrep, not on the weights: products whose paths into an output irrep are the same (same inputs, same
    normalisation) share them, and they are computed once. EigenFold's attention is the case in point: its keys and
    values are two tensor products of the same source features and edge harmonics, with weights from two MLPs and
    output multiplicities in the ratio 1 : 2.

    Args:
        products: ``(tp, hidden, linear)`` triples as in :func:`linear_weighted_tensor_product`, all of whose
            ``tp`` have the same ``irreps_in1`` and ``irreps_in2``; ``hidden`` is (E, linear.in_features).
        x1: (E, irreps_in1.dim).
        x2: (E, irreps_in2.dim).

    Returns:
        One (E, tp.irreps_out.dim) tensor per product.
    """
    if not products:
        raise ValueError("products must hold at least one (tp, hidden, linear) triple, got none")
    first = products[0][0]
    for tp, hidden, linear in products:
        check_tensor_product(tp, x1, x2)
        if tp.irreps_in1 != first.irreps_in1 or tp.irreps_in2 != first.irreps_in2:
            raise ValueError(
                f"the products must share their inputs' irreps, got {first.irreps_in1} x {first.irreps_in2} and "
                f"{tp.irreps_in1} x {tp.irreps_in2}"
            )
        if not isinstance(linear, nn.Linear) or linear.out_features != tp.weight_numel:
            raise ValueError(f"linear must be an nn.Linear with out_features = tp.weight_numel = {tp.weight_numel}")
        if x1.dim() != 2 or not isinstance(hidden, Tensor) or hidden.shape != (x1.shape[0], linear.in_features):
            shape = tuple(hidden.shape) if isinstance(hidden, Tensor) else type(hidden).__name__
            raise ValueError(
                f"x1 must have shape (E, {tp.irreps_in1.dim}) and hidden ({x1.shape[0]}, {linear.in_features}), "
                f"got {tuple(x1.shape)} and {shape}"
            )
    x1, x2 = EdgeLast.apply(x1), EdgeLast.apply(x2)
    shared: dict = {}  # the couplings, computed by the first product that needs them
    outputs = []
    for tp, hidden, linear in products:
        rows = weight_rows(tp.irreps_out, tuple(tp.instructions), hidden.device)
        hidden_t, a, b = hidden.T, linear.weight, linear.bias  # hidden_t: (in_features, E)
        weights = [a[r] @ hidden_t if b is None else torch.addmm(b[r, None], a[r], hidden_t) for r in rows]
        outputs.append(EdgeLast.apply(edge_last_product(tp, x1, x2, weights, shared)))
    return outputs


def bilinear_matrix(tp: o3.TensorProduct) -> Tensor:
    """The matrix ``M`` of a tensor product with shared weights: ``tp(x1, x2)[o] = sum_ij x1[i] M[i, j, o] x2[j]``.

    With its weights fixed, a tensor product is a bilinear map, and its values on pairs of basis vectors are its
    matrix (differentiable with respect to the weights). Evaluating ``tp(x1[index], x2)`` on many rows through ``M``
    costs one product per row of ``x1`` and a dot product per row of ``x2``: EigenFold's attention logits
    ``dot(query[target], key)``, one per edge, are ``((query @ M)[target] * key).sum()``.

    Args:
        tp: an ``o3.TensorProduct`` with shared weights (e.g. ``o3.FullyConnectedTensorProduct(a, b, "0e")``).

    Returns:
        (irreps_in1.dim, irreps_in2.dim, irreps_out.dim), in the dtype and on the device of ``tp``'s weights.
    """
    if not isinstance(tp, o3.TensorProduct) or not tp.internal_weights:
        raise ValueError(f"tp must be an o3.TensorProduct with internal (shared) weights, got {tp!r}")
    d1, d2 = tp.irreps_in1.dim, tp.irreps_in2.dim
    options = {"dtype": tp.weight.dtype, "device": tp.weight.device}
    pairs = torch.eye(d1, **options).repeat_interleave(d2, dim=0), torch.eye(d2, **options).repeat(d1, 1)  # (d1 d2, d)
    return tp(*pairs).view(d1, d2, tp.irreps_out.dim)
