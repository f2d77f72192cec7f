"""EigenFold's residue-level score model, and the small container it reads its input from.

:class:`ResiLevelTensorProductScoreModel` predicts, for every residue of a protein chain, a 3D vector: the score
``grad_x log p_t(x)`` of the noised alpha-carbon positions ``x``. It is EigenFold's model (Jing et al. 2023,
``model/resi_score_model.py``) with the same hyperparameter names and defaults (:class:`ScoreModelConfig`):

1. scalar features: a timestep embedding of the noise level ``node_t``, the (layer-normed) per-residue and
   per-pair features (language-model embeddings in EigenFold), a sinusoidal embedding of the sequence offset
   ``dst - src``, and a radial embedding of each edge length (Gaussians on ``sqrt(length)`` by default);
2. two MLPs turn these into ``resi_ns`` node and edge scalars;
3. ``resi_conv_layers`` :class:`~tpconv_lite.conv_layer.TensorProductConvLayer` s, whose irreps grow along a fixed
   sequence (``order`` 1: ``0e -> 0e+1o -> 0e+1o+1e -> 0e+1o+1e+0o``), each fed the edge scalars concatenated with
   the scalar features of both ends of the edge;
4. a final tensor product of the node features with themselves gives one vector per residue.

**Parity.** With ``parity=True`` (EigenFold's default) the final product gives a polar vector ``1o`` and an axial
vector ``1e``, and the model returns their mean. Both rotate like vectors, but under inversion ``1o`` changes sign
and ``1e`` does not, so the mean is equivariant under rotations and *not* under reflections: the model can tell a
right-handed helix from its mirror image. With ``parity=False`` it returns ``1o`` alone and is E(3)-equivariant,
reflections included, so it cannot prefer one handedness.

**Input.** The model reads ``data['resi'].pos``, ``.node_attr``, ``.edge_attr_``, ``.edge_index``, ``.node_t``,
``.batch`` and ``data.score_norm``, like EigenFold reads a batched PyG ``HeteroData``. :class:`ChainBatch` holds
exactly these fields, so PyG is not needed. The container lives here because it is this model's input contract;
:mod:`tpconv_lite.diffusion` builds it.

**A drop-in for EigenFold.** :meth:`ResiLevelTensorProductScoreModel.from_eigenfold` loads EigenFold's released
checkpoints (``{'model': ..., 'optimizer': ..., 'epoch': ...}`` as its ``train.py`` saves them, keys under ``enn.``)
with its ``args.yaml``. ``forward`` also takes the single-chain data that EigenFold's ``ForwardDiffusionKernel``
makes: without ``batch`` the residues form one chain; ``pos`` and ``node_t`` are cast to the dtype of the node
features (EigenFold's kernel makes ``pos`` float64 from numpy next to float32 features); ``score_norm`` may be a
number (a numpy scalar there), a 0-d tensor, or one value per chain. Like EigenFold's, ``forward`` writes its output
to ``data.pred`` and ``data['resi'].pred`` (EigenFold's ``loss_func`` reads ``data.pred``); it writes nothing else.

Differences from EigenFold, all deliberate: only ``pred`` is written to ``data`` (EigenFold also stores ``x`` and
``edge_attr``); a (B,) ``score_norm`` is mapped to residues through ``batch`` (EigenFold's ``score_norm[:, None]``
only broadcasts for batches of one chain); the spherical harmonics keep the input dtype (EigenFold casts to
float32) and a zero-length edge gets finite gradients (:func:`~tpconv_lite.graph.edge_geometry`, and a square root
of the length whose gradient is 0 at 0); ``dropout`` reaches the conv layers (EigenFold has no such option).
"""

from __future__ import annotations

import math
import os
import pickle
from argparse import Namespace
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch
from e3nn import o3
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tpconv_lite.conv_layer import TensorProductConvLayer
from tpconv_lite.embeddings import get_timestep_embedding, sinusoidal_embedding
from tpconv_lite.graph import edge_geometry
from tpconv_lite.radial import GaussianSmearing

# The irreps of the node features after each layer (the last entry repeats), before multiplicities are filled in.
IRREP_SEQUENCES = {
    1: [["0e"], ["0e", "1o"], ["0e", "1o", "1e"], ["0e", "1o", "1e", "0o"]],
    2: [["0e"], ["0e", "1o", "2e"], ["0e", "1o", "2e", "1e", "2o"], ["0e", "1o", "2e", "1e", "2o", "0o"]],
}


@dataclass(frozen=True)
class ScoreModelConfig:
    """Hyperparameters of :class:`ResiLevelTensorProductScoreModel`, with EigenFold's names and defaults.

    The defaults are those of EigenFold's ``utils/parsing.py`` (``parse_train_args``); ``lm_node_dim`` and
    ``lm_edge_dim`` are the sizes of the OmegaFold embeddings it reads. ``dropout`` is the one addition.

    Attributes:
        resi_conv_layers: number of conv layers.
        resi_ns: multiplicity of the scalars (``0e``) in the node features, and width of the embedding MLPs.
        resi_nv: multiplicity of every other irrep in the node features.
        resi_ntps: multiplicity of the scalars inside each layer's tensor product.
        resi_ntpv: multiplicity of the other irreps inside each layer's tensor product.
        resi_fc_dim: hidden width of each layer's radial MLP.
        resi_pos_emb_dim: size of the sinusoidal embedding of the sequence offset ``dst - src``.
        lin_nf: the layers' ``node_feature_dim`` is ``min(resi_ns, lin_nf)`` (unused by the layer, kept as in
            EigenFold).
        lin_self: self-interaction ``o3.Linear`` in the residual of each layer.
        attention: attention-weighted aggregation in each layer.
        sh_lmax: largest degree of the edge spherical harmonics.
        order: 1 or 2, the irreps sequence (see ``IRREP_SEQUENCES``).
        t_emb_dim: size of the timestep embedding.
        t_emb_type: ``"sinusoidal"`` or ``"fourier"``.
        radius_emb_type: ``"gaussian"`` or ``"sinusoidal"`` embedding of edge lengths.
        radius_emb_dim: size of the edge length embedding.
        radius_emb_max: largest edge length (Å) the embedding resolves.
        tmin, tmax: ``node_t`` is mapped to ``10000 log(t / tmin) / log(tmax / tmin)`` before its embedding.
        no_radius_sqrt: embed the edge length itself instead of its square root.
        parity: output the mean of a ``1o`` and a ``1e`` vector (chirality-aware) instead of a ``1o`` vector.
        lm_node_dim: size of ``data['resi'].node_attr``.
        lm_edge_dim: ``data['resi'].edge_attr_`` has ``2 * lm_edge_dim`` columns (both directions of a pair).
        dropout: dropout probability in the layers' radial MLPs.
    """

    resi_conv_layers: int = 6
    resi_ns: int = 32
    resi_nv: int = 4
    resi_ntps: int = 16
    resi_ntpv: int = 4
    resi_fc_dim: int = 128
    resi_pos_emb_dim: int = 16
    lin_nf: int = 1
    lin_self: bool = False
    attention: bool = False
    sh_lmax: int = 2
    order: int = 1
    t_emb_dim: int = 32
    t_emb_type: str = "sinusoidal"
    radius_emb_type: str = "gaussian"
    radius_emb_dim: int = 50
    radius_emb_max: float = 50.0
    tmin: float = 0.001
    tmax: float = 1e6
    no_radius_sqrt: bool = False
    parity: bool = True
    lm_node_dim: int = 256
    lm_edge_dim: int = 128
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("resi_conv_layers", "resi_ns", "resi_nv", "resi_ntps", "resi_ntpv", "resi_fc_dim", "lin_nf",
                     "sh_lmax", "lm_node_dim", "lm_edge_dim"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name, minimum in (("resi_pos_emb_dim", 4), ("t_emb_dim", 4), ("radius_emb_dim", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if self.order not in IRREP_SEQUENCES:
            raise ValueError(f"order must be 1 or 2, got {self.order!r}")
        if self.t_emb_type not in ("sinusoidal", "fourier"):
            raise ValueError(f"t_emb_type must be 'sinusoidal' or 'fourier', got {self.t_emb_type!r}")
        if self.radius_emb_type not in ("gaussian", "sinusoidal"):
            raise ValueError(f"radius_emb_type must be 'gaussian' or 'sinusoidal', got {self.radius_emb_type!r}")
        if self.radius_emb_type == "sinusoidal" and self.radius_emb_dim < 4:
            raise ValueError(f"a sinusoidal radius embedding needs radius_emb_dim >= 4, got {self.radius_emb_dim}")
        if not 0 < self.tmin < self.tmax < math.inf:
            raise ValueError(f"need 0 < tmin < tmax < inf, got tmin={self.tmin}, tmax={self.tmax}")
        if not 0 < self.radius_emb_max < math.inf:
            raise ValueError(f"radius_emb_max must be positive and finite, got {self.radius_emb_max}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    @classmethod
    def from_args(cls, args: ScoreModelConfig | Namespace | object) -> ScoreModelConfig:
        """The config read from a config or from any object with the fields as attributes (an argparse Namespace).

        Every field must be present except ``dropout`` (EigenFold's parser has none; it defaults to 0). Extra
        attributes are ignored.
        """
        if isinstance(args, cls):
            return args
        optional = {"dropout"}
        missing = [f.name for f in fields(cls) if f.name not in optional and not hasattr(args, f.name)]
        if missing:
            raise ValueError(f"args lacks the score model hyperparameters {missing} (see ScoreModelConfig)")
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


@dataclass
class ResidueGraph:
    """The residue-level tensors of a batch of chains (EigenFold keeps them in ``data['resi']`` of a HeteroData).

    Residues of all chains are stacked; edges join residues of the same chain, ``edge_index[0]`` the source ``j``,
    ``edge_index[1]`` the target ``i``.

    Attributes:
        pos: (N, 3) alpha-carbon positions in Å.
        node_attr: (N, lm_node_dim) per-residue features.
        edge_index: (2, E) long edges.
        edge_attr_: (E, 2 * lm_edge_dim) per-edge features: ``cat(pair[src, dst], pair[dst, src])`` of a pair
            feature array.
        node_t: (N,) positive noise level (diffusion time) of each residue's chain.
        batch: (N,) long index of each residue's chain; None means one chain.
        pred: (N, 3) the score model's last output, written by its ``forward`` (None before).
    """

    pos: Tensor
    node_attr: Tensor
    edge_index: Tensor
    edge_attr_: Tensor
    node_t: Tensor
    batch: Tensor | None = None
    pred: Tensor | None = None


@dataclass
class ChainBatch:
    """Input of the score model: ``data['resi']`` is a :class:`ResidueGraph`, ``data.score_norm`` is (B,).

    ``score_norm`` is the expected size of one coordinate of the true score of each chain; the model multiplies
    its output by it, so the network itself predicts numbers of order one. ``pred`` is the model's last output,
    (N, 3), written by its ``forward`` as EigenFold's model does (None before).
    """

    resi: ResidueGraph
    score_norm: Tensor
    pred: Tensor | None = None

    def __getitem__(self, key: str) -> ResidueGraph:
        if key != "resi":
            raise KeyError(f"a ChainBatch has only the node type 'resi', got {key!r}")
        return self.resi

    @property
    def num_graphs(self) -> int:
        """Number of chains B."""
        return self.score_norm.shape[0]

    @classmethod
    def from_chains(
        cls,
        pos: Sequence[Tensor],
        node_attr: Sequence[Tensor],
        pair_attr: Sequence[Tensor],
        node_t: Tensor,
        score_norm: Tensor,
    ) -> ChainBatch:
        """Stack B chains into one batch with all ordered pairs ``j != i`` of a chain as edges (as EigenFold does).

        Args:
            pos: B tensors (n_b, 3).
            node_attr: B tensors (n_b, lm_node_dim).
            pair_attr: B tensors (n_b, n_b, lm_edge_dim); edge ``j -> i`` gets ``cat(pair[j, i], pair[i, j])``.
            node_t: (B,) noise level of each chain, given to all its residues.
            score_norm: (B,) score scale of each chain.

        Returns:
            A :class:`ChainBatch` with N = sum of n_b residues and E = sum of n_b (n_b - 1) edges.
        """
        n_chains = len(pos)
        if n_chains == 0 or len(node_attr) != n_chains or len(pair_attr) != n_chains:
            raise ValueError(
                f"need as many node_attr and pair_attr as chains (at least one), got {n_chains} pos, "
                f"{len(node_attr)} node_attr, {len(pair_attr)} pair_attr"
            )
        for name, per_chain in (("node_t", node_t), ("score_norm", score_norm)):
            if not isinstance(per_chain, Tensor) or per_chain.shape != (n_chains,):
                shape = tuple(per_chain.shape) if isinstance(per_chain, Tensor) else type(per_chain).__name__
                raise ValueError(f"{name} must be a tensor of shape ({n_chains},), one value per chain, got {shape}")
        edges, edge_attr, batch, offset = [], [], [], 0
        for b, (p, x, pair) in enumerate(zip(pos, node_attr, pair_attr)):
            n = p.shape[0]
            if p.shape != (n, 3) or x.shape[0] != n or pair.shape[:2] != (n, n):
                raise ValueError(
                    f"chain {b}: need pos (n, 3), node_attr (n, F), pair_attr (n, n, F'), got "
                    f"{tuple(p.shape)}, {tuple(x.shape)}, {tuple(pair.shape)}"
                )
            src, dst = torch.where(~torch.eye(n, dtype=torch.bool, device=p.device))
            edges.append(torch.stack([src, dst]) + offset)
            edge_attr.append(torch.cat([pair[src, dst], pair[dst, src]], dim=-1))
            batch.append(torch.full((n,), b, dtype=torch.long, device=p.device))
            offset += n
        batch = torch.cat(batch)
        resi = ResidueGraph(
            pos=torch.cat(list(pos)),
            node_attr=torch.cat(list(node_attr)),
            edge_index=torch.cat(edges, dim=1),
            edge_attr_=torch.cat(edge_attr),
            node_t=node_t[batch],
            batch=batch,
        )
        return cls(resi=resi, score_norm=score_norm)


def _irreps(irs: list[str], n_scalars: int, n_others: int) -> o3.Irreps:
    """``irs`` with multiplicity ``n_scalars`` for ``0e`` and ``n_others`` for every other irrep, in order."""
    return o3.Irreps([(n_scalars if ir == "0e" else n_others, ir) for ir in irs])


def _embedding_mlp(in_dim: int, width: int) -> nn.Sequential:
    """Three linear layers with ReLUs between them, ``in_dim -> width -> width -> width``."""
    return nn.Sequential(
        nn.Linear(in_dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width)
    )


class ResiLevelTensorProductScoreModel(nn.Module):
    """Per-residue score of noised alpha-carbon positions (see the module docstring).

    Args:
        args: a :class:`ScoreModelConfig`, or an argparse Namespace with its fields (EigenFold's ``args``).

    Attributes:
        checkpointing: in training mode, recompute the embedded node and edge scalars and the edge harmonics
            (:meth:`embed`) during backward instead of keeping the per-edge intermediates (True by default; each
            conv layer has its own ``checkpointing``, for its message passing). The same outputs and gradients.

    Example:
        >>> config = ScoreModelConfig(resi_conv_layers=2, resi_ns=8, lm_node_dim=2, lm_edge_dim=2)
        >>> model = ResiLevelTensorProductScoreModel(config)
        >>> pos = [torch.randn(5, 3)]
        >>> data = ChainBatch.from_chains(pos, [torch.ones(5, 2)], [torch.ones(5, 5, 2)],
        ...                               node_t=torch.tensor([1.0]), score_norm=torch.tensor([1.0]))
        >>> model(data).shape
        torch.Size([5, 3])
    """

    def __init__(self, args: ScoreModelConfig | Namespace) -> None:
        super().__init__()
        self.args = args = ScoreModelConfig.from_args(args)
        self.t_emb_func = get_timestep_embedding(args.t_emb_type, args.t_emb_dim)
        self.sh_irreps = o3.Irreps.spherical_harmonics(lmax=args.sh_lmax)

        ns = args.resi_ns
        self.resi_node_embedding = _embedding_mlp(args.t_emb_dim + args.lm_node_dim, ns)
        edge_in = args.t_emb_dim + args.radius_emb_dim + args.resi_pos_emb_dim + 2 * args.lm_edge_dim
        self.resi_edge_embedding = _embedding_mlp(edge_in, ns)
        self.resi_node_norm = nn.LayerNorm(args.lm_node_dim)
        self.resi_edge_norm = nn.LayerNorm(2 * args.lm_edge_dim)

        # Edge lengths are embedded on [0, radius_max]: the length itself, or its square root (the default).
        self.radius_max = args.radius_emb_max if args.no_radius_sqrt else args.radius_emb_max**0.5
        if args.radius_emb_type == "gaussian":
            self.distance_expansion = GaussianSmearing(0.0, self.radius_max, args.radius_emb_dim)

        sequence = IRREP_SEQUENCES[args.order]
        layers = []
        for i in range(args.resi_conv_layers):
            in_seq, out_seq = sequence[min(i, len(sequence) - 1)], sequence[min(i + 1, len(sequence) - 1)]
            out_irreps = _irreps(out_seq, ns, args.resi_nv)
            layers.append(
                TensorProductConvLayer(
                    in_irreps=_irreps(in_seq, ns, args.resi_nv),
                    in_tp_irreps=_irreps(in_seq, args.resi_ntps, args.resi_ntpv),
                    out_tp_irreps=_irreps(out_seq, args.resi_ntps, args.resi_ntpv),
                    sh_irreps=self.sh_irreps,
                    out_irreps=out_irreps,
                    n_edge_features=3 * ns,
                    batch_norm=False,
                    dropout=args.dropout,
                    node_feature_dim=min(ns, args.lin_nf),
                    fc_dim=args.resi_fc_dim,
                    lin_self=args.lin_self,
                    attention=args.attention,
                )
            )
        self.conv_layers = nn.ModuleList(layers)
        self.resi_final_tp = o3.FullyConnectedTensorProduct(
            out_irreps, out_irreps, "1x1o + 1x1e" if args.parity else "1x1o", internal_weights=True
        )
        self.checkpointing = True

    def embed_length(self, length: Tensor) -> Tensor:
        """Embed edge lengths (E,) as (E, radius_emb_dim): Gaussians or sinusoids on ``sqrt(length)`` by default.

        The square root is taken with a gradient of 0 instead of infinity at a zero length (the same values).
        """
        if self.args.no_radius_sqrt:
            r = length
        else:
            positive = length > 0
            r = torch.where(positive, torch.where(positive, length, 1.0).sqrt(), 0.0)
        if self.args.radius_emb_type == "gaussian":
            return self.distance_expansion(r)
        return sinusoidal_embedding(10000 * r / self.radius_max, self.args.radius_emb_dim)

    def build_conv_graph(self, data: ChainBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The scalar node and edge features and the edge spherical harmonics, before the embedding MLPs.

        Returns:
            The tuple ``(node_attr, edge_index, edge_attr, edge_sh)``:

            - ``node_attr``: (N, t_emb_dim + lm_node_dim), ``[time embedding, normed node_attr]``;
            - ``edge_index``: (2, E) as given;
            - ``edge_attr``: (E, radius_emb_dim + resi_pos_emb_dim + t_emb_dim + 2 lm_edge_dim), ``[length
              embedding, offset embedding, time embedding of the source, normed edge_attr_]``;
            - ``edge_sh``: (E, sh_irreps.dim), spherical harmonics of ``pos[src] - pos[dst]``, component normalized.

        ``pos`` and ``node_t`` are cast to the dtype of ``node_attr`` first.
        """
        resi = data["resi"]
        x = self.resi_node_norm(resi.node_attr)
        pair = self.resi_edge_norm(resi.edge_attr_)
        log_t = torch.log(resi.node_t.to(x.dtype) / self.args.tmin) / math.log(self.args.tmax / self.args.tmin)
        node_t_emb = self.t_emb_func(10000 * log_t)
        node_attr = torch.cat([node_t_emb, x], dim=1)

        src, dst = resi.edge_index
        offset_emb = sinusoidal_embedding((dst - src).to(x.dtype), self.args.resi_pos_emb_dim)
        _, edge_length, edge_sh = edge_geometry(resi.pos.to(x.dtype), resi.edge_index, self.sh_irreps)
        edge_attr = torch.cat([self.embed_length(edge_length), offset_emb, node_t_emb[src], pair], dim=1)
        return node_attr, resi.edge_index, edge_attr, edge_sh

    def forward(self, data: ChainBatch) -> Tensor:
        """Predict the score of ``data['resi'].pos``, and store it in ``data.pred`` and ``data['resi'].pred``.

        Args:
            data: a :class:`ChainBatch`, or any object with the same fields, such as EigenFold's ``HeteroData``.
                ``data['resi'].batch`` may be missing or None (one chain); ``pos`` and ``node_t`` may have any
                floating dtype (they are cast to that of ``node_attr``, which must be the model's); ``data.score_norm``
                is a number, a 0-d tensor (one value for every residue) or a (B,) tensor (one per chain).

        Returns:
            (N, 3) predicted score, already multiplied by each chain's ``score_norm``; the same tensor is assigned
            to ``data.pred`` and ``data['resi'].pred``, as EigenFold's model does.
        """
        score_norm = self._check_input(data)
        if self.training and self.checkpointing:
            node_attr, edge_attr, edge_sh = checkpoint(self.embed, data, use_reentrant=False)
        else:
            node_attr, edge_attr, edge_sh = self.embed(data)

        edge_index = data["resi"].edge_index
        for layer in self.conv_layers:
            # each layer sees cat([edge_attr, node_attr[src, :ns], node_attr[dst, :ns]]), the first ns node features
            # being scalars; the layer appends them itself, without building the concatenation
            node_attr = layer(node_attr, edge_index, edge_attr, edge_sh, end_scalars=self.args.resi_ns)

        out = self.resi_final_tp(node_attr, node_attr)
        if self.args.parity:
            out = out.view(-1, 2, 3).mean(dim=1)  # mean of the 1o and the 1e vector
        out = out * score_norm[:, None]
        data["resi"].pred = out
        data.pred = out
        return out

    def embed(self, data: ChainBatch) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`build_conv_graph`'s scalars through the embedding MLPs, and the edge harmonics.

        Returns:
            ``(node_attr, edge_attr, edge_sh)``: (N, resi_ns), (E, resi_ns), (E, sh_irreps.dim).
        """
        node_attr, _, edge_attr, edge_sh = self.build_conv_graph(data)
        return self.resi_node_embedding(node_attr), self.resi_edge_embedding(edge_attr), edge_sh

    @classmethod
    def from_eigenfold(
        cls,
        checkpoint: str | os.PathLike | Mapping[str, object],
        args: str | os.PathLike | Namespace | Mapping[str, object],
        map_location: str | torch.device = "cpu",
    ) -> ResiLevelTensorProductScoreModel:
        """The model of an EigenFold checkpoint, with its weights.

        Args:
            checkpoint: a path to a file saved by EigenFold's ``train.py`` (``{'model': state_dict, 'optimizer':
                ..., 'epoch': ...}``, the keys under ``enn.`` because ``get_model`` wraps the model), or that dict,
                or a bare state dict (with or without the ``enn.`` prefix). Files are read with
                ``torch.load(weights_only=True)``.
            args: EigenFold's hyperparameters: a path to its ``args.yaml`` (needs PyYAML), or a Namespace, or a
                dict. Keys that are not model hyperparameters (data paths, learning rate, ...) are ignored.
            map_location: where the tensors of a checkpoint file are loaded.

        Returns:
            The model in eval mode, its parameters and buffers loaded strictly (every key must match).

        Example:
            >>> model = ResiLevelTensorProductScoreModel(ScoreModelConfig(resi_conv_layers=2, resi_ns=8))
            >>> saved = {"model": {f"enn.{k}": v for k, v in model.state_dict().items()}, "epoch": 7}
            >>> copy = ResiLevelTensorProductScoreModel.from_eigenfold(saved, vars(model.args))
            >>> all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), model.state_dict().values()))
            True
        """
        model = cls(ScoreModelConfig.from_args(_eigenfold_args(args)))
        model.load_state_dict(_eigenfold_state_dict(checkpoint, map_location))
        return model.eval()

    def _check_input(self, data: ChainBatch) -> Tensor:
        """Raise ValueError/TypeError naming the field when ``data`` does not fit; return the (N,) score_norm."""
        try:
            resi = data["resi"]
        except (KeyError, TypeError) as error:
            raise TypeError(f"data must give data['resi'] (a ChainBatch), got {type(data).__name__}") from error
        args = self.args
        expected = {
            "pos": ("(N, 3)", 2, 3),
            "node_attr": (f"(N, lm_node_dim={args.lm_node_dim})", 2, args.lm_node_dim),
            "edge_index": ("(2, E)", 2, None),
            "edge_attr_": (f"(E, 2 * lm_edge_dim={2 * args.lm_edge_dim})", 2, 2 * args.lm_edge_dim),
            "node_t": ("(N,)", 1, None),
            "batch": ("(N,)", 1, None),
        }
        batch = getattr(resi, "batch", None)
        for name, (text, ndim, last) in expected.items():
            value = getattr(resi, name, None)
            if name == "batch" and value is None:
                continue  # one chain
            if not isinstance(value, Tensor):
                raise ValueError(f"data['resi'].{name} must be a tensor of shape {text}, got {type(value).__name__}")
            if value.dim() != ndim or (last is not None and value.shape[-1] != last):
                raise ValueError(f"data['resi'].{name} must have shape {text}, got {tuple(value.shape)}")
        n, n_edges = resi.pos.shape[0], resi.edge_index.shape[1]
        if resi.edge_index.shape[0] != 2 or resi.edge_attr_.shape[0] != n_edges:
            raise ValueError(
                f"edge_index must be (2, E) and edge_attr_ (E, F) with the same E, got "
                f"{tuple(resi.edge_index.shape)} and {tuple(resi.edge_attr_.shape)}"
            )
        present = {"node_attr", "node_t", "edge_index"} | ({"batch"} if batch is not None else set())
        for name in ("node_attr", "node_t", "batch"):
            if name in present and getattr(resi, name).shape[0] != n:
                raise ValueError(f"data['resi'].{name} has {getattr(resi, name).shape[0]} rows, pos has {n}")
        for name in ("edge_index", "batch"):
            if name in present and getattr(resi, name).dtype != torch.long:
                raise TypeError(f"data['resi'].{name} must be a long tensor, got {getattr(resi, name).dtype}")
        if n_edges and (resi.edge_index.min() < 0 or resi.edge_index.max() >= n):
            raise ValueError(f"edge_index must hold node indices in [0, {n}), got values outside")
        dtype, device = self.resi_node_norm.weight.dtype, self.resi_node_norm.weight.device
        for name in ("node_attr", "edge_attr_"):
            if getattr(resi, name).dtype != dtype:
                raise TypeError(f"data['resi'].{name} is {getattr(resi, name).dtype} but the model is {dtype}")
        for name in ("pos", "node_t"):  # cast to the features' dtype by build_conv_graph
            if not getattr(resi, name).is_floating_point():
                raise TypeError(f"data['resi'].{name} must be a floating point tensor, got {getattr(resi, name).dtype}")
        if not bool((resi.node_t > 0).all()) or not bool(torch.isfinite(resi.node_t).all()):
            raise ValueError("data['resi'].node_t must be positive and finite (its logarithm is embedded)")
        if not bool(torch.isfinite(resi.pos).all()):
            raise ValueError("data['resi'].pos contains NaN or infinite coordinates")
        score_norm = getattr(data, "score_norm", None)
        n_graphs = (int(batch.max()) + 1 if n else 0) if batch is not None else 1
        is_number = isinstance(score_norm, (int, float)) or hasattr(score_norm, "dtype")  # Python or numpy numbers
        if is_number and not isinstance(score_norm, Tensor):
            score_norm = torch.as_tensor(score_norm)  # EigenFold's single chain gives a numpy float64
        if not isinstance(score_norm, Tensor) or score_norm.dim() > 1 or (
            score_norm.dim() == 1 and score_norm.shape[0] < n_graphs
        ):
            shape = tuple(score_norm.shape) if isinstance(score_norm, Tensor) else type(score_norm).__name__
            raise ValueError(
                f"data.score_norm must be a number, a 0-d tensor or a tensor of shape (B,) with B >= {n_graphs} "
                f"chains, got {shape}"
            )
        if not bool(torch.isfinite(score_norm).all()):
            raise ValueError("data.score_norm must be finite")
        score_norm = score_norm.to(device=device, dtype=dtype)
        if score_norm.dim() == 0:
            return score_norm.expand(n)
        return score_norm[batch] if batch is not None else score_norm[:1].expand(n)


def _eigenfold_args(args: str | os.PathLike | Namespace | Mapping[str, object]) -> Namespace | object:
    """EigenFold's hyperparameters as an object with attributes: read ``args.yaml``, or wrap a dict."""
    if isinstance(args, (str, os.PathLike)):
        try:
            import yaml  # PyYAML: needed only to read EigenFold's args.yaml
        except ImportError as error:
            raise ImportError(
                "reading EigenFold's args.yaml needs PyYAML (pip install pyyaml); or pass the arguments as a dict"
            ) from error
        with open(args) as f:
            args = yaml.safe_load(f)
        if not isinstance(args, Mapping):
            raise ValueError(f"args.yaml must hold a mapping of argument names to values, got {type(args).__name__}")
    if isinstance(args, Mapping):
        return Namespace(**args)
    return args


def _eigenfold_state_dict(
    checkpoint: str | os.PathLike | Mapping[str, object], map_location: str | torch.device
) -> dict[str, Tensor]:
    """The model's state dict from an EigenFold checkpoint (file or dict), without the ``enn.`` prefix."""
    if isinstance(checkpoint, (str, os.PathLike)):
        try:
            checkpoint = torch.load(checkpoint, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            raise ValueError(
                f"{checkpoint} holds more than tensors and plain containers, which torch.load(weights_only=True) "
                "refuses; if you trust the file, load it with torch.load(..., weights_only=False) and pass the dict"
            ) from error
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"checkpoint must be a path or a dict, got {type(checkpoint).__name__}")
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            "checkpoint must be EigenFold's {'model': state_dict, 'optimizer': ..., 'epoch': ...} or a state dict "
            f"of tensors, got a dict with keys {sorted(checkpoint)[:8]}"
        )
    for prefix in ("module.", "enn."):  # DistributedDataParallel, then EigenFold's ScoreModel wrapper
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return dict(state)
