"""Tests of tpconv_lite.score_model: config, structure, equivariance and parity, training, errors, saving."""

from __future__ import annotations

import dataclasses
import io
import math
from argparse import Namespace

import pytest
import torch
from e3nn import o3

from tpconv_lite.diffusion import VESDE, noised_batch, score_matching_loss, toy_chains, toy_model_config
from tpconv_lite.embeddings import sinusoidal_embedding
from tpconv_lite.score_model import ChainBatch, ResiLevelTensorProductScoreModel, ScoreModelConfig
from tpconv_lite.testing import check_equivariance

# EigenFold's utils/parsing.py defaults for the model arguments
EIGENFOLD_DEFAULTS = dict(
    resi_conv_layers=6, resi_ns=32, resi_nv=4, resi_ntps=16, resi_ntpv=4, resi_fc_dim=128, resi_pos_emb_dim=16,
    lin_nf=1, lin_self=False, attention=False, sh_lmax=2, order=1, t_emb_dim=32, t_emb_type="sinusoidal",
    radius_emb_type="gaussian", radius_emb_dim=50, radius_emb_max=50, tmin=0.001, tmax=1e6, no_radius_sqrt=False,
    parity=True, lm_edge_dim=128, lm_node_dim=256,
)  # fmt: skip

SDE = VESDE()


def small_model(seed: int = 0, **overrides) -> ResiLevelTensorProductScoreModel:
    torch.manual_seed(seed)
    settings = dict(resi_conv_layers=3, resi_ns=8, resi_nv=2, resi_ntps=4, resi_ntpv=2, resi_fc_dim=16)
    settings.update(overrides)
    return ResiLevelTensorProductScoreModel(toy_model_config(SDE, **settings))


def small_batch(dtype=torch.float64, seed: int = 0) -> ChainBatch:
    generator = torch.Generator().manual_seed(seed)
    chains = toy_chains(2, 7, generator=generator, dtype=dtype)
    data, _ = noised_batch(chains, ["helix", "hairpin"], torch.tensor([0.3, 0.7], dtype=dtype), SDE, generator)
    return data


def test_defaults_are_eigenfolds_and_namespace_is_accepted():
    config = ScoreModelConfig()
    for name, value in EIGENFOLD_DEFAULTS.items():
        assert getattr(config, name) == value, name
    assert config.dropout == 0.0
    eigenfold_args = Namespace(**EIGENFOLD_DEFAULTS, lr=3e-4, sde_a=3 / 3.8**2, batch=1)  # no dropout, extras
    assert ScoreModelConfig.from_args(eigenfold_args) == config
    assert ScoreModelConfig.from_args(config) is config


def test_default_model_structure():
    model = ResiLevelTensorProductScoreModel(Namespace(**EIGENFOLD_DEFAULTS))
    assert model.sh_irreps == o3.Irreps("1x0e + 1x1o + 1x2e")
    expected = ["32x0e+4x1o", "32x0e+4x1o+4x1e", "32x0e+4x1o+4x1e+4x0o"] + ["32x0e+4x1o+4x1e+4x0o"] * 3
    assert [str(layer.out_irreps) for layer in model.conv_layers] == [str(o3.Irreps(s)) for s in expected]
    assert str(model.conv_layers[0].in_irreps) == "32x0e"
    assert model.conv_layers[0].lin_in.irreps_out == o3.Irreps("16x0e")
    assert model.conv_layers[2].tp.irreps_out == o3.Irreps("16x0e + 4x1o + 4x1e + 4x0o")
    assert model.conv_layers[0].fc[0].in_features == 3 * 32 and model.conv_layers[0].fc[3].in_features == 128
    assert model.resi_node_embedding[0].in_features == 32 + 256
    assert model.resi_edge_embedding[0].in_features == 32 + 50 + 16 + 2 * 128
    assert model.resi_final_tp.irreps_out == o3.Irreps("1x1o + 1x1e")
    torch.testing.assert_close(model.distance_expansion.offset, torch.linspace(0, math.sqrt(50), 50))


def test_order_two_and_parity_free_irreps():
    model = small_model(order=2, parity=False, resi_conv_layers=2)
    assert model.conv_layers[0].out_irreps == o3.Irreps("8x0e + 2x1o + 2x2e")
    assert model.conv_layers[1].out_irreps == o3.Irreps("8x0e + 2x1o + 2x2e + 2x1e + 2x2o")
    assert model.resi_final_tp.irreps_out == o3.Irreps("1x1o")


def test_build_conv_graph_follows_eigenfold_formulas():
    model = small_model().double()
    data = small_batch()
    resi, args = data["resi"], model.args
    node_attr, edge_index, edge_attr, edge_sh = model.build_conv_graph(data)
    src, dst = edge_index
    assert torch.equal(edge_index, resi.edge_index)

    def layer_norm(x):
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)

    t_scaled = 10000 * torch.log(resi.node_t / args.tmin) / math.log(args.tmax / args.tmin)
    t_emb = sinusoidal_embedding(t_scaled, args.t_emb_dim)
    torch.testing.assert_close(node_attr, torch.cat([t_emb, layer_norm(resi.node_attr)], 1))

    length = (resi.pos[src] - resi.pos[dst]).norm(dim=-1)
    centres = torch.linspace(0, math.sqrt(args.radius_emb_max), args.radius_emb_dim)  # a float32 buffer, as in
    spacing = (centres[1] - centres[0]).item()  # EigenFold, then cast by .double()
    centres = centres.double()
    gaussians = torch.exp(-0.5 * (length.sqrt()[:, None] - centres[None, :]) ** 2 / spacing**2)
    offsets = sinusoidal_embedding((dst - src).double(), args.resi_pos_emb_dim)
    expected = torch.cat([gaussians, offsets, t_emb[src], layer_norm(resi.edge_attr_)], 1)
    torch.testing.assert_close(edge_attr, expected)
    sh = o3.spherical_harmonics(model.sh_irreps, resi.pos[src] - resi.pos[dst], True, normalization="component")
    torch.testing.assert_close(edge_sh, sh)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(parity=True),
        dict(parity=False, order=2),
        dict(attention=True, lin_self=True, t_emb_type="fourier"),
        dict(radius_emb_type="sinusoidal", no_radius_sqrt=True),
    ],
)
def test_score_rotates_with_the_input(overrides):
    model = small_model(**overrides).double().eval()
    data = small_batch()

    def predict(pos):
        return model(dataclasses.replace(data, resi=dataclasses.replace(data.resi, pos=pos)))

    report = check_equivariance(predict, [data.resi.pos], ["cartesian_points"], "1x1o", inversion=False)
    assert report.ok, report.details()


@pytest.mark.parametrize("parity", [True, False])
def test_parity_decides_whether_mirror_images_get_mirrored_scores(parity):
    model = small_model(parity=parity).double().eval()
    data = small_batch()

    def predict(pos):
        return model(dataclasses.replace(data, resi=dataclasses.replace(data.resi, pos=pos)))

    report = check_equivariance(predict, [data.resi.pos], ["cartesian_points"], "1x1o", inversion=True)
    if parity:  # the mean of 1o and 1e is not a vector under inversion: errors far above float64 round-off
        assert not report.ok and report.errors[0] > 1e4 * report.tolerances[0], report.details()
    else:
        assert report.ok, report.details()


def test_chains_in_a_batch_do_not_interact_and_score_norm_scales_each():
    model = small_model().double().eval()
    data = small_batch()
    together = model(data)
    for b in range(2):
        mask = data.resi.batch == b
        edges = mask[data.resi.edge_index[0]]
        offset = int(mask.nonzero()[0])
        alone = dataclasses.replace(
            data,
            resi=dataclasses.replace(
                data.resi,
                pos=data.resi.pos[mask],
                node_attr=data.resi.node_attr[mask],
                edge_index=data.resi.edge_index[:, edges] - offset,
                edge_attr_=data.resi.edge_attr_[edges],
                node_t=data.resi.node_t[mask],
                batch=torch.zeros(int(mask.sum()), dtype=torch.long),
            ),
            score_norm=data.score_norm[b : b + 1],
        )
        torch.testing.assert_close(model(alone), together[mask])
    scaled = model(dataclasses.replace(data, score_norm=data.score_norm * torch.tensor([3.0, 1.0]).double()))
    first = data.resi.batch == 0
    torch.testing.assert_close(scaled[first], 3 * together[first])
    torch.testing.assert_close(scaled[~first], together[~first])


def test_loss_decreases_on_a_tiny_problem():
    model = small_model(seed=1, resi_conv_layers=2)
    for layer in model.conv_layers:
        layer.checkpointing = False  # same gradients, less time
    generator = torch.Generator().manual_seed(0)
    chains = toy_chains(8, 6, generator=generator)
    evaluation = noised_batch(chains, ["helix"] * 8, torch.linspace(0.05, 0.95, 8), SDE, generator)

    def evaluation_loss() -> float:
        data, score = evaluation
        with torch.no_grad():
            return float(score_matching_loss(score, model.eval()(data), data.score_norm[data.resi.batch])[0])

    before = evaluation_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        data, score = noised_batch(chains, ["helix"] * 8, torch.rand(8, generator=generator), SDE, generator)
        loss, _ = score_matching_loss(score, model.train()(data), data.score_norm[data.resi.batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluation_loss()
    assert 0.9 < before < 1.1  # an untrained model is about as good as predicting zero
    assert after < 0.9 * before, (before, after)


def test_state_dict_round_trip():
    model = small_model(seed=0, t_emb_type="fourier", attention=True)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert "t_emb_func.W" in state
    copy = small_model(seed=1, t_emb_type="fourier", attention=True)
    data = small_batch(torch.float32)
    assert not torch.allclose(copy.eval()(data), model.eval()(data))
    copy.load_state_dict(state)
    torch.testing.assert_close(copy.eval()(data), model(data))


def test_dropout_reaches_the_layers():
    model = small_model(dropout=0.25)
    assert all(layer.fc[2].p == 0.25 for layer in model.conv_layers)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(order=3), "order must be 1 or 2, got 3"),
        (dict(t_emb_type="cosine"), "t_emb_type must be 'sinusoidal' or 'fourier'"),
        (dict(radius_emb_type="bessel"), "radius_emb_type must be 'gaussian' or 'sinusoidal'"),
        (dict(tmin=1.0, tmax=0.5), "need 0 < tmin < tmax"),
        (dict(resi_ns=0), "resi_ns must be an integer >= 1, got 0"),
        (dict(resi_pos_emb_dim=3), "resi_pos_emb_dim must be an integer >= 4"),
        (dict(dropout=1.0), r"dropout must lie in \[0, 1\)"),
    ],
)
def test_bad_config_raises(overrides, message):
    with pytest.raises(ValueError, match=message):
        ScoreModelConfig(**overrides)


def test_missing_namespace_fields_are_named():
    args = dict(EIGENFOLD_DEFAULTS)
    del args["resi_ns"], args["parity"]
    with pytest.raises(ValueError, match=r"lacks the score model hyperparameters \['resi_ns', 'parity'\]"):
        ResiLevelTensorProductScoreModel(Namespace(**args))


def _with(data: ChainBatch, **fields) -> ChainBatch:
    score_norm = fields.pop("score_norm", data.score_norm)
    return dataclasses.replace(data, resi=dataclasses.replace(data.resi, **fields), score_norm=score_norm)


def test_bad_data_raises_clear_errors():
    model = small_model().double()
    data = small_batch()
    n = data.resi.pos.shape[0]
    cases = [
        (_with(data, pos=data.resi.pos[:, :2]), ValueError, r"data\['resi'\].pos must have shape \(N, 3\)"),
        (_with(data, node_attr=torch.ones(n, 5).double()), ValueError, r"node_attr must have shape \(N, lm_node_dim=2"),
        (_with(data, edge_attr_=data.resi.edge_attr_[:-1]), ValueError, "with the same E"),
        (_with(data, node_t=data.resi.node_t[:-1]), ValueError, f"node_t has {n - 1} rows, pos has {n}"),
        (_with(data, node_t=torch.zeros(n).double()), ValueError, "node_t must be positive and finite"),
        (_with(data, batch=data.resi.batch.float()), TypeError, "batch must be a long tensor"),
        (_with(data, edge_index=data.resi.edge_index + n), ValueError, r"edge_index must hold node indices in \[0, 14"),
        (_with(data, node_attr=data.resi.node_attr.float()), TypeError, "node_attr is torch.float32 but the model is"),
        (_with(data, pos=data.resi.pos.long()), TypeError, "pos must be a floating point tensor"),
        (_with(data, pos=data.resi.pos * math.nan), ValueError, "pos contains NaN"),
        (_with(data, score_norm=torch.ones(1).double()), ValueError, r"or a tensor of shape \(B,\) with B >= 2 chains"),
        (_with(data, score_norm=torch.ones(2, 1).double()), ValueError, "score_norm must be a number"),
        (_with(data, edge_attr_=None), ValueError, r"edge_attr_ must be a tensor of shape \(E, 2 \* lm_edge_dim=4\)"),
        (object(), TypeError, r"data must give data\['resi'\]"),
    ]  # fmt: skip
    for bad, error, message in cases:
        with pytest.raises(error, match=message):
            model(bad)
    with pytest.raises(KeyError, match="only the node type 'resi'"):
        data["atom"]


def test_chain_batch_from_chains():
    pos = [torch.randn(3, 3), torch.randn(2, 3)]
    node_attr = [torch.zeros(3, 1), torch.ones(2, 1)]
    pair = [torch.arange(9.0).view(3, 3, 1), torch.arange(4.0).view(2, 2, 1)]
    data = ChainBatch.from_chains(pos, node_attr, pair, torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.25]))
    resi = data["resi"]
    assert data.num_graphs == 2 and resi.batch.tolist() == [0, 0, 0, 1, 1]
    assert resi.node_t.tolist() == [1.0, 1.0, 1.0, 2.0, 2.0]
    edges = {tuple(e) for e in resi.edge_index.T.tolist()}
    assert edges == {(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (3, 4), (4, 3)}
    for (j, i), attr in zip(resi.edge_index.T.tolist(), resi.edge_attr_.tolist()):
        if j < 3:  # chain 0: pair[j, i] = 3 j + i, then pair[i, j]
            assert attr == [3 * j + i, 3 * i + j]
    with pytest.raises(ValueError, match=r"node_t must be a tensor of shape \(2,\)"):
        ChainBatch.from_chains(pos, node_attr, pair, torch.tensor([1.0]), torch.tensor([0.5, 0.25]))
    with pytest.raises(ValueError, match="need as many node_attr and pair_attr as chains"):
        ChainBatch.from_chains(pos, node_attr[:1], pair, torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match=r"chain 1: need pos \(n, 3\)"):
        ChainBatch.from_chains(pos, [node_attr[0], torch.ones(3, 1)], pair, torch.ones(2), torch.ones(2))


# --- a drop-in for EigenFold's code -------------------------------------------------------------------------------


class EigenFoldLikeData:
    """What EigenFold's ForwardDiffusionKernel leaves for one chain, written by hand: data['resi'] holds the residue
    fields, data.score_norm is a numpy float64, pos is float64 (from numpy) next to float32 features, and no batch."""

    def __init__(self, resi: dict, score_norm) -> None:
        self._resi = Namespace(**resi)
        self.score_norm = score_norm

    def __getitem__(self, key: str) -> Namespace:
        return {"resi": self._resi}[key]


def eigenfold_single_chain(n: int, config: ScoreModelConfig, t: float, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    pos = np.cumsum(rng.normal(size=(n, 3)), axis=0) * 2.0  # float64, as sde.sample returns it
    pair = torch.from_numpy(rng.normal(size=(n, n, config.lm_edge_dim))).float()
    src, dst = torch.where(~torch.eye(n, dtype=torch.bool))
    resi = dict(
        pos=torch.from_numpy(pos),
        node_attr=torch.from_numpy(rng.normal(size=(n, config.lm_node_dim))).float(),
        edge_index=torch.stack([src, dst]),
        edge_attr_=torch.cat([pair[src, dst], pair[dst, src]], dim=-1),
        node_t=torch.ones(n) * t,
    )
    return EigenFoldLikeData(resi, np.float64(0.37)), pair


def test_forward_takes_eigenfolds_single_chain_data_and_sets_pred():
    model = small_model().eval()
    config = model.args
    data, pair = eigenfold_single_chain(9, config, t=0.3)
    resi = data["resi"]
    assert resi.pos.dtype == torch.float64 and not hasattr(resi, "batch")
    with torch.no_grad():
        out = model(data)
        ours = ChainBatch.from_chains([resi.pos.float()], [resi.node_attr], [pair], node_t=torch.tensor([0.3]),
                                      score_norm=torch.tensor([0.37]))  # fmt: skip
        expected = model(ours)
    assert out.shape == (9, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)
    assert data.pred is out and resi.pred is out  # as EigenFold's forward, which loss_func reads
    assert ours.pred is expected and ours.resi.pred is expected
    for score_norm in (0.37, torch.tensor(0.37), torch.tensor([0.37])):  # a number, a 0-d and a (B,) tensor
        data.score_norm = score_norm
        with torch.no_grad():
            torch.testing.assert_close(model(data), out, rtol=0, atol=0)
    data.score_norm = torch.tensor([0.37, 1.0])  # more chains than the data has is fine, as for a (B,) batch
    with torch.no_grad():
        torch.testing.assert_close(model(data), out, rtol=0, atol=0)


def eigenfold_checkpoint(model: ResiLevelTensorProductScoreModel) -> dict:
    """A checkpoint as EigenFold's train.py saves it: the model wrapped as ScoreModel.enn, optimizer and epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    model(small_batch(dtype=torch.float32)).pow(2).sum().backward()
    optimizer.step()
    return {
        "model": {f"enn.{key}": value for key, value in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": None,
        "epoch": 7,
        "best_val_loss": 1.23,
        "best_epoch": 6,
    }


def test_from_eigenfold_loads_a_checkpoint_file_and_args_yaml(tmp_path):
    yaml = pytest.importorskip("yaml")
    model = small_model(seed=3).train()
    checkpoint = eigenfold_checkpoint(model)
    torch.save(checkpoint, tmp_path / "epoch_7.pt")
    args = {f.name: getattr(model.args, f.name) for f in dataclasses.fields(model.args) if f.name != "dropout"}
    args.update(lr=3e-4, splits="splits/limit256.csv", wandb="harmonic-resi", train_cutoff=5)  # not the model's
    (tmp_path / "args.yaml").write_text(yaml.safe_dump(args))

    loaded = ResiLevelTensorProductScoreModel.from_eigenfold(tmp_path / "epoch_7.pt", str(tmp_path / "args.yaml"))
    assert not loaded.training and loaded.args == model.args
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    data, _ = eigenfold_single_chain(8, model.args, t=1.5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(data), model.eval()(data), rtol=0, atol=0)


def test_from_eigenfold_takes_dicts_and_namespaces_and_rejects_other_things():
    model = small_model(seed=4)
    checkpoint = eigenfold_checkpoint(model)
    args = {f.name: getattr(model.args, f.name) for f in dataclasses.fields(model.args)}
    for ckpt, arguments in [(checkpoint, args), (checkpoint["model"], Namespace(**args)), (model.state_dict(), args)]:
        loaded = ResiLevelTensorProductScoreModel.from_eigenfold(ckpt, arguments)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="checkpoint must be EigenFold's"):
        ResiLevelTensorProductScoreModel.from_eigenfold({"optimizer": {}, "epoch": 7}, args)
    with pytest.raises(RuntimeError, match="Missing key"):  # strict: a checkpoint of another architecture
        ResiLevelTensorProductScoreModel.from_eigenfold(checkpoint, {**args, "resi_conv_layers": 4})
    with pytest.raises(ValueError, match="lacks the score model hyperparameters"):
        ResiLevelTensorProductScoreModel.from_eigenfold(checkpoint, {"resi_ns": 8})


def test_two_residues_at_the_same_place_give_finite_gradients():
    """The edge geometry is guarded (tpconv_lite.graph.edge_geometry): no 1e12 gradients at a zero-length edge."""
    model = small_model().double().eval()
    data = small_batch()
    pos = data.resi.pos.clone()
    pos[1] = pos[0]
    pos.requires_grad_(True)
    out = model(_with(data, pos=pos))
    (grad,) = torch.autograd.grad(out.square().sum(), pos)
    assert torch.isfinite(grad).all() and grad.abs().max() < 1e6


@pytest.mark.parametrize(
    "overrides",
    [{}, {"attention": True}, {"lin_self": True, "parity": False}, {"order": 2, "no_radius_sqrt": True},
     {"radius_emb_type": "sinusoidal", "t_emb_type": "fourier"}],
)  # fmt: skip
def test_matches_eigenfolds_model_in_outputs_and_gradients(overrides):
    """ReferenceScoreModel (EigenFold's forward on EigenFold's layers) and ours, with the same weights, in float32."""
    from tpconv_lite.reference import ReferenceScoreModel

    config = dataclasses.replace(toy_model_config(SDE, resi_conv_layers=4, resi_ns=8, resi_nv=2, resi_ntps=4,
                                                  resi_ntpv=2, resi_fc_dim=16), **overrides)  # fmt: skip
    torch.manual_seed(0)
    reference = ReferenceScoreModel(config)
    ours = ResiLevelTensorProductScoreModel(config)
    assert sorted(ours.state_dict()) == sorted(reference.state_dict())
    ours.load_state_dict(reference.state_dict())
    generator = torch.Generator().manual_seed(1)
    n = 9
    pos = (3.8 * torch.randn(n, 3, generator=generator)).cumsum(0)
    node, pair = torch.randn(n, config.lm_node_dim, generator=generator), torch.randn(n, n, config.lm_edge_dim,
                                                                                     generator=generator)
    outputs, grads = {}, {}
    for name, model in (("reference", reference), ("ours", ours)):
        model.train()
        data = ChainBatch.from_chains([pos], [node], [pair], torch.tensor([0.4]), torch.tensor([2.5]))
        data.resi.pos.requires_grad_(True)
        out = model(data)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outputs[name] = out.detach()
        grads[name] = [data.resi.pos.grad] + [p.grad for _, p in sorted(model.named_parameters())]
        assert data.pred is out and data.resi.pred is out
    scale = outputs["reference"].abs().max()
    assert scale > 0
    assert (outputs["ours"] - outputs["reference"]).abs().max() <= 1e-5 * scale
    for mine, theirs in zip(grads["ours"], grads["reference"]):
        if theirs is None:  # a frozen parameter (the Fourier embedding's random frequencies)
            assert mine is None
            continue
        assert (mine - theirs).abs().max() <= 1e-5 * theirs.abs().max() + 1e-12
