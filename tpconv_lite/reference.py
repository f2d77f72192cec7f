"""EigenFold's convolution layer, transcribed: the reference that the tests, the benchmark and chapter 8 compare with.

:class:`ReferenceLayer` is ``TensorProductConvLayer`` of EigenFold's ``model/resi_score_model.py`` (Jing et al.
2023), kept with its quirks, so that :class:`~tpconv_lite.conv_layer.TensorProductConvLayer` can be checked against
it: the same ``state_dict`` keys, outputs and gradients (tests), and its speed and memory (``python -m
tpconv_lite.bench``). It is not meant for models: it has no input checks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from e3nn import o3
from e3nn.nn import BatchNorm
from torch import nn

from tpconv_lite import graph
from tpconv_lite.graph import scatter


class ReferenceLayer(nn.Module):
    """EigenFold's TensorProductConvLayer (``model/resi_score_model.py``), transcribed with its quirks.

    The scatter is torch_scatter's, as in the original, called through ``tpconv_lite.graph.scatter`` (its pure-torch
    twin when torch_scatter is missing); the checkpoint names ``use_reentrant=True``, the default of the torch
    versions the original was written for.
    """

    def __init__(
        self,
        in_irreps,
        in_tp_irreps,
        out_tp_irreps,
        sh_irreps,
        out_irreps,
        n_edge_features,
        batch_norm=False,
        dropout=0.0,
        node_feature_dim=4,
        fc_dim=32,
        lin_self=False,
        attention=False,
    ):
        super().__init__()

        def mlp(n_out):
            return nn.Sequential(
                nn.Linear(n_edge_features, fc_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(fc_dim, fc_dim),
                nn.ReLU(), nn.Dropout(dropout), nn.Linear(fc_dim, n_out),
            )  # fmt: skip

        self.nf = node_feature_dim
        self.lin_in = o3.Linear(in_irreps, in_tp_irreps, internal_weights=True)
        self.tp = tp = o3.FullyConnectedTensorProduct(in_tp_irreps, sh_irreps, out_tp_irreps, shared_weights=False)
        self.lin_out = o3.Linear(out_tp_irreps, out_irreps, internal_weights=True)
        self.lin_self = o3.Linear(in_irreps, out_irreps, internal_weights=True) if lin_self else False
        self.attention = attention
        if attention:
            key_irreps = [(mul // 2, ir) for mul, ir in o3.Irreps(in_tp_irreps)]
            self.h_q = o3.Linear(in_tp_irreps, key_irreps)
            self.tp_k = tp_k = o3.FullyConnectedTensorProduct(in_tp_irreps, sh_irreps, key_irreps, shared_weights=False)
            self.fc_k = self.fc = mlp(tp_k.weight_numel)
            self.dot = o3.FullyConnectedTensorProduct(key_irreps, key_irreps, "0e")
        self.fc = mlp(tp.weight_numel)
        self.batch_norm = BatchNorm(out_irreps) if batch_norm else None

    def forward(
        self, node_attr, edge_index, edge_attr, edge_sh, ones=None, residual=True, out_nodes=None, reduce="mean"
    ):
        backend = "torch" if graph.torch_scatter is None else "pyg"
        node_attr_in = self.lin_in(node_attr)
        edge_src, edge_dst = edge_index
        out_nodes = out_nodes or node_attr.shape[0]
        if self.attention:

            def ckpt_forward(node_attr_in, edge_src, edge_dst, edge_sh, edge_attr):
                q = self.h_q(node_attr_in)
                k = self.tp_k(node_attr_in[edge_src], edge_sh, self.fc_k(edge_attr))
                v = self.tp(node_attr_in[edge_src], edge_sh, self.fc(edge_attr))
                a = self.dot(q[edge_dst], k)
                max_ = scatter(a, edge_dst, dim=0, dim_size=out_nodes, reduce="max", backend=backend)
                a = (a - max_[edge_dst]).exp()
                z = scatter(a, edge_dst, dim=0, dim_size=out_nodes, backend=backend)
                a = a / z[edge_dst]
                return scatter(a * v, edge_dst, dim=0, dim_size=out_nodes, backend=backend)

        else:

            def ckpt_forward(node_attr_in, edge_src, edge_dst, edge_sh, edge_attr):
                tp = self.tp(node_attr_in[edge_src], edge_sh, self.fc(edge_attr))
                return scatter(tp, edge_dst, dim=0, dim_size=out_nodes, reduce=reduce, backend=backend)

        if self.training:
            out = torch.utils.checkpoint.checkpoint(
                ckpt_forward, node_attr_in, edge_src, edge_dst, edge_sh, edge_attr, use_reentrant=True
            )
        else:
            out = ckpt_forward(node_attr_in, edge_src, edge_dst, edge_sh, edge_attr)
        out = self.lin_out(out)
        if not residual:
            return out
        if self.lin_self:
            out = out + self.lin_self(node_attr)
        else:
            out = out + F.pad(node_attr, (0, out.shape[-1] - node_attr.shape[-1]))
        if self.batch_norm:
            out = self.batch_norm(out)
        return out
