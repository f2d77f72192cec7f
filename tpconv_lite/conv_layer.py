"""The tensor-product convolution layer of EigenFold's score model (DiffDock's layer, with optional attention).

One layer updates the features of every node ``i`` from its incoming edges ``j -> i``:

1. ``lin_in``: an equivariant linear map of the node features to the (smaller) irreps of the tensor product;
2. messages: ``tp(x_j, Y(r_ij), fc(e_ij))``, a tensor product of the source's features with the spherical harmonics
   of the edge, whose weights come from an MLP ``fc`` of the invariant edge features ``e_ij``;
3. aggregation onto the targets: a ``mean`` (or ``sum``, ``max``) of the messages, or, with ``attention=True``, a
   softmax-weighted sum whose weights compare a query of the target with a key of the edge;
4. ``lin_out``: back to the output irreps;
5. residual: ``+ lin_self(x_i)``, or the input zero-padded to the output width; then an optional batch norm.

The constructor and ``forward`` take exactly the arguments of the original (EigenFold, ``model/resi_score_model.py``),
and the submodules carry the same names and shapes, so a ``state_dict`` saved from the original loads with
``load_state_dict`` (strict) and gives the same outputs. The keys, in the original's order, are::

    lin_in.weight, lin_in.bias, lin_in.output_mask,
    tp.weight, tp.output_mask, tp._compiled_main_left_right._w3j_{l1}_{l2}_{l3} ...,
    lin_out.weight, lin_out.bias, lin_out.output_mask,
    [lin_self.weight, lin_self.bias, lin_self.output_mask]                 with lin_self=True
    [h_q.weight, h_q.bias, h_q.output_mask,
     tp_k.weight, tp_k.output_mask, tp_k._compiled_main_left_right._w3j_{l1}_{l2}_{l3} ...,
     fc_k.{0,3,6}.{weight,bias}]                                           with attention=True
    fc.{0,3,6}.{weight,bias},
    [dot.weight, dot.output_mask]                                          with attention=True
    [batch_norm.weight, batch_norm.bias, batch_norm.running_mean, batch_norm.running_var]   with batch_norm=True

(``fc_k`` is the key MLP: the original writes ``self.fc_k = self.fc = ...`` and then rebinds ``fc`` to the value
MLP. This layer registers ``fc`` right after ``tp``, so its ``state_dict()`` lists the same keys in another order;
loading goes by name.) The learnable parameters are the ``weight`` of ``lin_in``, ``lin_out``, ``lin_self``, ``h_q``
and ``dot``, the MLPs, and the batch norm's ``weight`` and ``bias``. The rest are e3nn buffers: the ``bias`` of
``Linear`` is empty (no biases), ``tp.weight`` and ``tp_k.weight`` are empty (their weights come from the MLPs, per
edge), ``output_mask`` marks the outputs that some path reaches, and ``_w3j_{l1}_{l2}_{l3}`` are the Wigner 3j
coefficients of the tensor-product paths whose three degrees are all >= 1 (``_w3j_1_1_1`` and ``_w3j_1_2_1`` for
the score model's irreps). This layer holds the same e3nn modules, so every buffer matches too. The 3j are computed
in the default dtype when the layer is built and are loaded with the ``state_dict``: for float64 accuracy
(equivariance to ~1e-15), build the layer, and the original, under ``torch.set_default_dtype(torch.float64)``.

Speed. The messages are not computed by calling ``tp`` (e3nn's path-by-path code) but by
:func:`~tpconv_lite.fast_tp.linear_weighted_tensor_product`, from the same modules and buffers: the MLP's last
linear layer is evaluated in blocks, one per output irrep of the tensor product, and the product runs with the edge
axis last. With attention, the keys and values share their Clebsch-Gordan couplings
(:func:`~tpconv_lite.fast_tp.linear_weighted_tensor_products`), and the logits ``dot(query_i, key_ij)`` go through
the matrix of ``dot`` (:func:`~tpconv_lite.fast_tp.bilinear_matrix`). Outputs and gradients equal the original's up
to float rounding (1e-7 relative in float32); on a dense graph of 128 residues, forward and backward take less than
half the time (``python -m tpconv_lite.bench``). Without autograd (sampling), the edges go through in chunks of
``edge_chunk``, so that no per-edge weight tensor grows with the graph.

Four behaviours of the original are kept on purpose and stated here so they do not surprise:

- with attention, ``reduce`` is ignored: the messages are summed with softmax weights (no square root, unlike e3nn's
  transformer guide), the shift by the largest logit keeping the exponentials finite;
- batch norm only runs on the residual path: ``residual=False`` returns ``lin_out``'s output directly;
- ``reduce="max"`` takes the maximum of each component separately, which is equivariant for the ``0e`` features
  only (a rotation mixes the components of a vector; an inversion flips the sign of ``0o`` and odd vectors);
- ``ones`` and ``node_feature_dim`` are accepted and unused.

Where the original would fail obscurely or silently, this layer raises instead: wrong shapes, dtypes or devices,
out-of-range edges, ``out_nodes`` different from the number of nodes together with a residual, and a zero-padding
residual whose irreps do not line up (which would break equivariance).
"""

from __future__ import annotations

import torch
from e3nn import o3
from e3nn.nn import BatchNorm
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from tpconv_lite.fast_tp import bilinear_matrix, linear_weighted_tensor_product, linear_weighted_tensor_products
from tpconv_lite.graph import edge_softmax, scatter


def _edge_mlp(n_edge_features: int, fc_dim: int, n_out: int, dropout: float) -> nn.Sequential:
    """The MLP from invariant edge features to tensor-product weights: (E, n_edge_features) -> (E, n_out)."""
    return nn.Sequential(
        nn.Linear(n_edge_features, fc_dim),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(fc_dim, fc_dim),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(fc_dim, n_out),
    )


def _cat(parts: list[Tensor]) -> Tensor:
    """``torch.cat(parts)``, without a copy when there is one part."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _padding_lines_up(irreps_in: o3.Irreps, irreps_out: o3.Irreps) -> bool:
    """Whether zero-padding (or cutting) features of ``irreps_in`` to the width of ``irreps_out`` is equivariant.

    It is when the irreps of the narrower side, copy by copy, are the first irreps of the wider side.
    """
    copies_in = [ir for mul, ir in irreps_in for _ in range(mul)]
    copies_out = [ir for mul, ir in irreps_out for _ in range(mul)]
    if irreps_in.dim <= irreps_out.dim:
        return copies_out[: len(copies_in)] == copies_in
    return copies_in[: len(copies_out)] == copies_out


class TensorProductConvLayer(nn.Module):
    """Equivariant graph convolution: a tensor product of node features and edge harmonics, weighted per edge.

    Args:
        in_irreps: irreps of the input node features.
        in_tp_irreps: irreps of the features entering the tensor product (after ``lin_in``).
        out_tp_irreps: irreps of the tensor product's output.
        sh_irreps: irreps of the edge spherical harmonics.
        out_irreps: irreps of the output node features.
        n_edge_features: width of the invariant edge features.
        batch_norm: end with an e3nn ``BatchNorm`` of ``out_irreps`` (on the residual path only).
        dropout: dropout probability inside the edge MLPs.
        node_feature_dim: unused; accepted as in the original.
        fc_dim: hidden width of the edge MLPs.
        lin_self: residual through a learned ``o3.Linear(in_irreps, out_irreps)`` instead of zero-padding.
        attention: aggregate with a softmax over the incoming edges (keys have half the multiplicities of
            ``in_tp_irreps``) instead of ``reduce``.

    Attributes:
        checkpointing: recompute the message passing during backward instead of storing its intermediates, in
            training mode (True by default, as in the original). Outputs and gradients are the same either way.
        edge_chunk: with autograd off (under ``torch.no_grad()``, as when sampling), compute the messages of at
            most this many edges at a time (16384 by default; 0: all at once). The largest per-edge block of
            weights then stays under 21 MB at EigenFold's sizes, where all edges at once take 115 MB for a dense
            graph of 300 residues and 2.9 GB for 1500: the weights no longer grow with the graph, and on a
            CPU glibc's allocator no longer maps fresh memory, page by page, at each call for blocks above 32 MiB
            (a cost that grows with the graph). The same numbers either way.

    Example:
        >>> layer = TensorProductConvLayer("4x0e", "2x0e", "2x0e + 1x1o", "1x0e + 1x1o", "4x0e + 1x1o", 3)
        >>> edge_index = torch.tensor([[0, 1], [1, 0]])
        >>> layer(torch.randn(2, 4), edge_index, torch.randn(2, 3), torch.randn(2, 4)).shape
        torch.Size([2, 7])
    """

    def __init__(
        self,
        in_irreps: o3.Irreps | str,
        in_tp_irreps: o3.Irreps | str,
        out_tp_irreps: o3.Irreps | str,
        sh_irreps: o3.Irreps | str,
        out_irreps: o3.Irreps | str,
        n_edge_features: int,
        batch_norm: bool = False,
        dropout: float = 0.0,
        node_feature_dim: int = 4,
        fc_dim: int = 32,
        lin_self: bool = False,
        attention: bool = False,
    ) -> None:
        super().__init__()
        self.in_irreps = o3.Irreps(in_irreps)
        self.sh_irreps = o3.Irreps(sh_irreps)
        self.out_irreps = o3.Irreps(out_irreps)
        self.n_edge_features = n_edge_features
        self.attention = attention
        self.checkpointing = True
        self.edge_chunk = 16384

        self.lin_in = o3.Linear(self.in_irreps, in_tp_irreps, internal_weights=True)
        self.tp = o3.FullyConnectedTensorProduct(in_tp_irreps, self.sh_irreps, out_tp_irreps, shared_weights=False)
        self.fc = _edge_mlp(n_edge_features, fc_dim, self.tp.weight_numel, dropout)
        self.lin_out = o3.Linear(out_tp_irreps, self.out_irreps, internal_weights=True)
        self.lin_self = o3.Linear(self.in_irreps, self.out_irreps, internal_weights=True) if lin_self else None
        if attention:
            key_irreps = o3.Irreps([(mul // 2, ir) for mul, ir in o3.Irreps(in_tp_irreps)])
            self.h_q = o3.Linear(in_tp_irreps, key_irreps)
            self.tp_k = o3.FullyConnectedTensorProduct(in_tp_irreps, self.sh_irreps, key_irreps, shared_weights=False)
            self.fc_k = _edge_mlp(n_edge_features, fc_dim, self.tp_k.weight_numel, dropout)
            self.dot = o3.FullyConnectedTensorProduct(key_irreps, key_irreps, "0e")
        self.batch_norm = BatchNorm(self.out_irreps) if batch_norm else None
        self._padding_lines_up = _padding_lines_up(self.in_irreps, self.out_irreps)
        self._leading_scalars = 0  # the scalars 0e at the start of in_irreps: the most that end_scalars may take
        for mul, ir in self.in_irreps:
            if ir != o3.Irrep("0e"):
                break
            self._leading_scalars += mul

    def forward(
        self,
        node_attr: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor,
        edge_sh: Tensor,
        ones: Tensor | None = None,
        residual: bool = True,
        out_nodes: int | None = None,
        reduce: str = "mean",
        *,
        end_scalars: int = 0,
    ) -> Tensor:
        """Update the node features from the incoming edges.

        Args:
            node_attr: (N, in_irreps.dim) node features.
            edge_index: (2, E) long, row 0 sources ``j`` (< N), row 1 targets ``i`` (< out_nodes, and < N with
                attention, whose queries come from the targets' features).
            edge_attr: (E, n_edge_features) invariant edge features.
            edge_sh: (E, sh_irreps.dim) spherical harmonics of the edge vectors.
            ones: unused; accepted as in the original.
            residual: add the input (through ``lin_self`` or zero-padded) and apply the batch norm.
            out_nodes: number of target nodes (default N); must be N when ``residual`` is True.
            reduce: ``"mean"``, ``"sum"`` or ``"max"`` over the incoming messages (ignored with attention).
            end_scalars: ``k``, to append the scalars of both ends to the edge features here. EigenFold's model
                feeds each layer ``cat([e, node_attr[src, :k], node_attr[dst, :k]])``; with ``end_scalars=k``,
                ``edge_attr`` is ``e`` alone, (E, n_edge_features - 2k), and the edge MLPs' first linear layer
                maps the three parts separately, the ends once per node: the same numbers up to float rounding,
                without the (E, n_edge_features) concatenation. The first ``k`` components of ``in_irreps`` must be
                scalars ``0e``.

        Returns:
            (out_nodes, out_irreps.dim) node features. Nodes without incoming edges get zero messages.
        """
        out_nodes = self._check_inputs(
            node_attr, edge_index, edge_attr, edge_sh, residual, out_nodes, reduce, end_scalars
        )
        node_attr_in = self.lin_in(node_attr)
        edge_src, edge_dst = edge_index
        ends = node_attr[:, :end_scalars] if end_scalars else None

        aggregate = self._attend if self.attention else self._convolve
        args = (node_attr_in, edge_src, edge_dst, edge_sh, edge_attr, ends, out_nodes, reduce)
        if self.training and self.checkpointing:
            out = checkpoint(aggregate, *args, use_reentrant=False)
        else:
            out = aggregate(*args)
        out = self.lin_out(out)

        if not residual:
            return out
        if self.lin_self is not None:
            out = out + self.lin_self(node_attr)
        else:
            out = out + F.pad(node_attr, (0, out.shape[-1] - node_attr.shape[-1]))
        if self.batch_norm is not None:
            out = self.batch_norm(out)
        return out

    def _convolve(
        self,
        node_attr_in: Tensor,
        edge_src: Tensor,
        edge_dst: Tensor,
        edge_sh: Tensor,
        edge_attr: Tensor,
        ends: Tensor | None,
        out_nodes: int,
        reduce: str,
    ) -> Tensor:
        """Messages ``tp(x_j, Y_ij, fc(e_ij))`` reduced onto the targets: (out_nodes, out_tp_irreps.dim).

        The same numbers as calling ``tp`` on ``fc``'s output, up to float rounding, computed by
        :func:`~tpconv_lite.fast_tp.linear_weighted_tensor_product`: the MLP's last linear layer is evaluated block
        by block, in the order in which the tensor product uses its weights. With autograd off, the messages are
        computed ``edge_chunk`` edges at a time (:meth:`_edge_slices`) and reduced together.
        """

        def messages(edges: slice) -> Tensor:  # (number of edges, out_tp_irreps.dim)
            src, dst = edge_src[edges], edge_dst[edges]
            hidden = self._hidden(self.fc, edge_attr[edges], ends, src, dst)
            sources = node_attr_in.index_select(0, src)  # node_attr_in[src]; see _hidden
            return linear_weighted_tensor_product(self.tp, sources, edge_sh[edges], hidden, self.fc[-1])

        all_messages = _cat([messages(edges) for edges in self._edge_slices(len(edge_src))])
        return scatter(all_messages, edge_dst, dim=0, dim_size=out_nodes, reduce=reduce)

    def _attend(
        self,
        node_attr_in: Tensor,
        edge_src: Tensor,
        edge_dst: Tensor,
        edge_sh: Tensor,
        edge_attr: Tensor,
        ends: Tensor | None,
        out_nodes: int,
        reduce: str,
    ) -> Tensor:
        """Values weighted by a softmax of ``dot(query_i, key_ij)`` over the incoming edges: (out_nodes, dim).

        ``reduce`` is ignored: the weights of each target already sum to one. With autograd off, the logits and
        values are computed ``edge_chunk`` edges at a time (:meth:`_edge_slices`), the softmax over all of them.
        """
        # dot(query_i, key_ij) for every edge, through the matrix of the bilinear map `dot`: a product per node
        query_m = torch.einsum("ni,ijo->njo", self.h_q(node_attr_in), bilinear_matrix(self.dot))  # (N, key dim, 1)

        def logits_and_values(edges: slice) -> tuple[Tensor, Tensor]:  # (number of edges, 1) and (..., dim)
            src, dst = edge_src[edges], edge_dst[edges]
            keys, values = linear_weighted_tensor_products(
                [(tp, self._hidden(fc, edge_attr[edges], ends, src, dst), fc[-1]) for tp, fc in
                 ((self.tp_k, self.fc_k), (self.tp, self.fc))],
                node_attr_in.index_select(0, src),
                edge_sh[edges],
            )  # fmt: skip
            return (query_m.index_select(0, dst) * keys.unsqueeze(-1)).sum(1), values

        chunks = [logits_and_values(edges) for edges in self._edge_slices(len(edge_src))]
        logits, values = _cat([chunk[0] for chunk in chunks]), _cat([chunk[1] for chunk in chunks])
        alpha = edge_softmax(logits, edge_dst, out_nodes)
        return scatter(alpha * values, edge_dst, dim=0, dim_size=out_nodes)

    def _edge_slices(self, n_edges: int) -> list[slice]:
        """When autograd is off and there are more than ``edge_chunk`` edges, the fewest slices of at most that many,
        of equal sizes (to one edge); else one slice of all edges."""
        if torch.is_grad_enabled() or not self.edge_chunk or n_edges <= self.edge_chunk:
            return [slice(None)]
        n_slices = -(-n_edges // self.edge_chunk)
        bounds = [n_edges * i // n_slices for i in range(n_slices + 1)]
        return [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]

    @staticmethod
    def _hidden(
        mlp: nn.Sequential, edge_attr: Tensor, ends: Tensor | None, edge_src: Tensor, edge_dst: Tensor
    ) -> Tensor:
        """``mlp[:-1]``, the edge MLP but its last linear layer, of the edge features: (E, fc_dim).

        With ``ends`` (N, k), the features are ``cat([edge_attr, ends[edge_src], ends[edge_dst]])``: the first linear
        layer maps the three parts with the matching columns of its weight, ``ends`` once per node, and adds them.

        The per-node rows go to the edges with ``index_select``: the same gather as ``by_source[edge_src]``, whose
        backward pass sums into the nodes with ``index_add_``, several times faster on a CPU than the accumulating
        ``index_put_`` of indexing.
        """
        if ends is None:
            return mlp[:-1](edge_attr)
        first, m, k = mlp[0], edge_attr.shape[1], ends.shape[1]
        by_source = F.linear(ends, first.weight[:, m : m + k])  # (N, fc_dim)
        by_target = F.linear(ends, first.weight[:, m + k :])
        pre = F.linear(edge_attr, first.weight[:, :m], first.bias)
        pre = pre + by_source.index_select(0, edge_src) + by_target.index_select(0, edge_dst)
        return mlp[1:-1](pre)

    def _check_inputs(
        self,
        node_attr: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor,
        edge_sh: Tensor,
        residual: bool,
        out_nodes: int | None,
        reduce: str,
        end_scalars: int,
    ) -> int:
        """Raise a ValueError/TypeError naming what was expected and what came; return the number of targets."""
        tensors = {"node_attr": node_attr, "edge_index": edge_index, "edge_attr": edge_attr, "edge_sh": edge_sh}
        for name, x in tensors.items():
            if not isinstance(x, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        parameter = self.fc[0].weight
        for name, x in tensors.items():
            if x.device != parameter.device:
                raise ValueError(f"{name} is on {x.device} but the layer's parameters are on {parameter.device}")
        for name in ("node_attr", "edge_attr", "edge_sh"):
            if tensors[name].dtype != parameter.dtype:
                raise TypeError(f"{name} must have the parameters' dtype {parameter.dtype}, got {tensors[name].dtype}")

        if node_attr.dim() != 2 or node_attr.shape[1] != self.in_irreps.dim:
            raise ValueError(
                f"node_attr must have shape (N, {self.in_irreps.dim}) for in_irreps {self.in_irreps}, "
                f"got {tuple(node_attr.shape)}"
            )
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
        if edge_index.dtype != torch.long:
            raise TypeError(f"edge_index must have dtype torch.int64, got {edge_index.dtype}")
        n, e = node_attr.shape[0], edge_index.shape[1]
        if not isinstance(end_scalars, int) or not 0 <= 2 * end_scalars <= self.n_edge_features:
            raise ValueError(
                f"end_scalars must be an integer from 0 to n_edge_features / 2 = {self.n_edge_features // 2}, "
                f"got {end_scalars!r}"
            )
        if end_scalars > self._leading_scalars:
            raise ValueError(
                f"end_scalars={end_scalars} appends the first {end_scalars} node features to the edge features, so "
                f"they must be scalars 0e; in_irreps is {self.in_irreps}"
            )
        width = self.n_edge_features - 2 * end_scalars
        if edge_attr.shape != (e, width):
            what = "n_edge_features" if not end_scalars else f"n_edge_features - 2 end_scalars = {width}"
            raise ValueError(f"edge_attr must have shape (E, {what}) = ({e}, {width}), got {tuple(edge_attr.shape)}")
        if edge_sh.shape != (e, self.sh_irreps.dim):
            raise ValueError(
                f"edge_sh must have shape (E, {self.sh_irreps.dim}) = ({e}, {self.sh_irreps.dim}) for sh_irreps "
                f"{self.sh_irreps}, got {tuple(edge_sh.shape)}"
            )
        if reduce not in ("mean", "sum", "max"):
            raise ValueError(f"reduce must be 'mean', 'sum' or 'max', got {reduce!r}")

        if out_nodes is None:
            out_nodes = n
        elif int(out_nodes) != out_nodes or out_nodes < 1:
            raise ValueError(f"out_nodes must be None or a positive integer, got {out_nodes!r}")
        out_nodes = int(out_nodes)
        if residual and out_nodes != n:
            raise ValueError(
                f"the residual adds node_attr ({n} rows) to the output ({out_nodes} rows): out_nodes must be {n}, "
                f"got {out_nodes}; pass residual=False"
            )
        if residual and self.lin_self is None and not self._padding_lines_up:
            raise ValueError(
                f"a zero-padded residual needs in_irreps {self.in_irreps} and out_irreps {self.out_irreps} to start "
                "with the same irreps; use lin_self=True or residual=False"
            )

        if e:
            edge_src, edge_dst = edge_index
            n_targets = min(n, out_nodes) if self.attention else out_nodes
            bounds = (("edge_index[0] (sources)", edge_src, n), ("edge_index[1] (targets)", edge_dst, n_targets))
            for name, index, size in bounds:
                low, high = (int(value) for value in torch.aminmax(index))
                if low < 0 or high >= size:
                    raise ValueError(f"{name} must lie in [0, {size}), got values in [{low}, {high}]")
        return out_nodes
