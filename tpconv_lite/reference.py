"""EigenFold's convolution layer and score model, transcribed: the references that the tests, the benchmark and
chapter 8 compare with.

:class:`ReferenceLayer` is ``TensorProductConvLayer`` of EigenFold's ``model/resi_score_model.py`` (Jing et al.
2023), kept with its quirks, so that :class:`~tpconv_lite.conv_layer.TensorProductConvLayer` can be checked against
it: the same ``state_dict`` keys, outputs and gradients (tests), and its speed and memory (``python -m
tpconv_lite.bench``). :class:`ReferenceScoreModel` is the same file's ``ResiLevelTensorProductScoreModel``, built
from ``ReferenceLayer`` s, against which :class:`~tpconv_lite.score_model.ResiLevelTensorProductScoreModel` is
checked and timed the same way. They are not meant for models: they have no input checks.
"""

from __future__ import annotations

import math
from argparse import Namespace

import torch
import torch.nn.functional as F
from e3nn import o3
from e3nn.nn import BatchNorm
from torch import Tensor, nn

from tpconv_lite import graph
from tpconv_lite.conv_layer import TensorProductConvLayer
from tpconv_lite.embeddings import sinusoidal_embedding
from tpconv_lite.graph import scatter
from tpconv_lite.score_model import ChainBatch, ResiLevelTensorProductScoreModel, ScoreModelConfig


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


def reference_twin(layer: TensorProductConvLayer) -> ReferenceLayer:
    """A :class:`ReferenceLayer` with the settings of ``layer`` (its own initial weights: load a state_dict)."""
    return ReferenceLayer(
        in_irreps=layer.in_irreps,
        in_tp_irreps=layer.lin_in.irreps_out,
        out_tp_irreps=layer.tp.irreps_out,
        sh_irreps=layer.sh_irreps,
        out_irreps=layer.out_irreps,
        n_edge_features=layer.n_edge_features,
        batch_norm=layer.batch_norm is not None,
        dropout=layer.fc[2].p,
        fc_dim=layer.fc[0].out_features,
        lin_self=layer.lin_self is not None,
        attention=layer.attention,
    )


class ReferenceScoreModel(ResiLevelTensorProductScoreModel):
    """EigenFold's ResiLevelTensorProductScoreModel (``model/resi_score_model.py``): its forward, on ReferenceLayers.

    The modules are those of :class:`~tpconv_lite.score_model.ResiLevelTensorProductScoreModel` (same names, shapes
    and ``state_dict`` keys, so weights load either way), with each conv layer replaced by its
    :func:`reference_twin`. The forward computes what the original computes, in its order: edge lengths through
    ``norm() ** 0.5``, harmonics by ``o3.spherical_harmonics(normalize=True)`` cast to float32, ``score_norm``
    broadcast as ``score_norm[:, None]``; it writes ``data.pred`` and ``data['resi'].pred`` and nothing else, and it
    checks nothing.

    Example:
        >>> config = ScoreModelConfig(resi_conv_layers=2, resi_ns=8, lm_node_dim=2, lm_edge_dim=2)
        >>> reference, ours = ReferenceScoreModel(config), ResiLevelTensorProductScoreModel(config)
        >>> _ = ours.load_state_dict(reference.state_dict())
        >>> pos = [torch.randn(5, 3)]
        >>> data = ChainBatch.from_chains(pos, [torch.ones(5, 2)], [torch.ones(5, 5, 2)],
        ...                               node_t=torch.tensor([0.5]), score_norm=torch.tensor([1.0]))
        >>> torch.allclose(reference(data), ours(data), atol=1e-6)
        True
    """

    def __init__(self, args: ScoreModelConfig | Namespace) -> None:
        super().__init__(args)
        self.conv_layers = nn.ModuleList(reference_twin(layer) for layer in self.conv_layers)

    def forward(self, data: ChainBatch) -> Tensor:
        args, resi = self.args, data["resi"]
        x = self.resi_node_norm(resi.node_attr)
        pair = self.resi_edge_norm(resi.edge_attr_)
        log_t = torch.log(resi.node_t / args.tmin) / math.log(args.tmax / args.tmin)
        node_t_emb = self.t_emb_func(10000 * log_t)
        node_attr = torch.cat([node_t_emb, x], 1)

        src, dst = resi.edge_index
        vec = resi.pos[src] - resi.pos[dst]
        length = vec.norm(dim=-1) if args.no_radius_sqrt else vec.norm(dim=-1) ** 0.5
        if args.radius_emb_type == "gaussian":
            length_emb = self.distance_expansion(length)
        else:
            length_emb = sinusoidal_embedding(10000 * length / self.radius_max, args.radius_emb_dim)
        offset_emb = sinusoidal_embedding(dst - src, args.resi_pos_emb_dim)
        edge_attr = torch.cat([length_emb, offset_emb, node_t_emb[src], pair], 1)
        edge_sh = o3.spherical_harmonics(self.sh_irreps, vec, normalize=True, normalization="component").float()

        node_attr = self.resi_node_embedding(node_attr)
        edge_attr = self.resi_edge_embedding(edge_attr)
        ns = args.resi_ns
        for layer in self.conv_layers:
            node_attr = layer(node_attr, resi.edge_index, torch.cat([edge_attr, node_attr[src, :ns],
                              node_attr[dst, :ns]], -1), edge_sh)  # fmt: skip
        out = self.resi_final_tp(node_attr, node_attr)
        if args.parity:
            out = out.view(-1, 2, 3).mean(1)
        out = out * data.score_norm[:, None]
        data["resi"].pred = out
        data.pred = out
        return out
