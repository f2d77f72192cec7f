"""Tests of tpconv_lite.conv_layer: TensorProductConvLayer against a transcription of EigenFold's layer."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from e3nn import o3
from torch import nn

from tpconv_lite import conv_layer
from tpconv_lite.reference import ReferenceLayer  # EigenFold's layer, transcribed with its quirks
from tpconv_lite.conv_layer import TensorProductConvLayer
from tpconv_lite.testing import check_equivariance

IRREPS = o3.Irreps("4x0e + 2x1o + 2x1e + 2x0o")
TP_IRREPS = o3.Irreps("2x0e + 2x1o + 2x1e + 2x0o")
SH_IRREPS = o3.Irreps.spherical_harmonics(2)
NARROW_IRREPS = o3.Irreps("4x0e + 2x1o")  # zero-padded into IRREPS by the residual
N_EDGE_FEATURES = 6
FC_DIM = 8
N_NODES = 7
N_TARGETS = 4  # out_nodes of the "bipartite" calls: every edge points into the first 4 nodes

LAYER_OPTIONS = list(itertools.product([False, True], repeat=3))  # (attention, lin_self, batch_norm)
LAYER_IDS = [f"attention={a}-lin_self={s}-batch_norm={b}" for a, s, b in LAYER_OPTIONS]
# (residual, reduce, out_nodes): a residual needs out_nodes == N
FORWARD_OPTIONS = [
    (residual, reduce, out_nodes)
    for residual in (True, False)
    for reduce in ("mean", "sum", "max")
    for out_nodes in (None, N_TARGETS)
    if not (residual and out_nodes is not None)
]


@functools.lru_cache(maxsize=None)
def make_layer(cls, attention, lin_self, batch_norm, in_irreps=IRREPS, dropout=0.0):
    """A float64 layer, built once per configuration (building e3nn modules is the slow part of these tests).

    Tests share these layers: each one sets the weights (``randomize_`` or ``load_state_dict``), the mode and the
    ``checkpointing`` flag it relies on. The layer is built under the float64 default dtype: e3nn computes the
    Wigner 3j buffers of its tensor products in the default dtype, and float32 ones would limit equivariance to
    ~1e-7 even after ``.double()``.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return cls(
            o3.Irreps(in_irreps), TP_IRREPS, TP_IRREPS, SH_IRREPS, IRREPS, N_EDGE_FEATURES,
            batch_norm=batch_norm, dropout=dropout, fc_dim=FC_DIM, lin_self=lin_self, attention=attention,
        )  # fmt: skip
    finally:
        torch.set_default_dtype(previous)


def randomize_(module: nn.Module, seed: int) -> None:
    """Random parameters and batch-norm statistics, so no weight is a trivial 0 or 1 (the Wigner 3j stay)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = dict(module.named_parameters())
    tensors.update({k: v for k, v in module.named_buffers() if k.endswith(("running_mean", "running_var"))})
    with torch.no_grad():
        for name, tensor in tensors.items():
            noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
            tensor.copy_(noise.abs() + 0.5 if name.endswith("running_var") else noise)


def make_graph(in_irreps=IRREPS, seed=0, dtype=torch.float64):
    """A random graph on N_NODES nodes; node N_NODES - 1 receives no edge. Returns (x, edge_index, edge_attr, sh)."""
    generator = torch.Generator().manual_seed(seed)
    pos = torch.randn(N_NODES, 3, generator=generator, dtype=dtype)
    src, dst = torch.meshgrid(torch.arange(N_NODES), torch.arange(N_NODES - 1), indexing="ij")
    keep = (src != dst) & (torch.rand(src.shape, generator=generator) < 0.7)
    edge_index = torch.stack([src[keep], dst[keep]])
    edge_attr = torch.randn(edge_index.shape[1], N_EDGE_FEATURES, generator=generator, dtype=dtype)
    edge_vec = pos[edge_index[0]] - pos[edge_index[1]]
    edge_sh = o3.spherical_harmonics(SH_IRREPS, edge_vec, True, normalization="component")
    node_attr = torch.randn(N_NODES, o3.Irreps(in_irreps).dim, generator=generator, dtype=dtype)
    return node_attr, edge_index, edge_attr, edge_sh


def graph_for(out_nodes, seed=0, in_irreps=IRREPS):
    """The graph of ``make_graph``; for ``out_nodes=N_TARGETS`` only its edges into the first N_TARGETS nodes."""
    node_attr, edge_index, edge_attr, edge_sh = make_graph(in_irreps, seed)
    if out_nodes is not None:
        keep = edge_index[1] < out_nodes
        edge_index, edge_attr, edge_sh = edge_index[:, keep], edge_attr[keep], edge_sh[keep]
    return node_attr, edge_index, edge_attr, edge_sh


def output_and_grads(layer, inputs, **kwargs):
    """Forward, then backward of a fixed random projection; the output and the gradients of inputs and parameters."""
    inputs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    layer.zero_grad()
    out = layer(*inputs, **kwargs)
    projection = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    (out * projection).sum().backward()
    grads = {f"input {i}": x.grad for i, x in enumerate(inputs) if x.is_floating_point()}
    grads.update({name: p.grad for name, p in layer.named_parameters()})
    return out.detach(), grads


def assert_same(ours, reference, atol=1e-10):
    torch.testing.assert_close(ours[0], reference[0], rtol=0, atol=atol)
    assert ours[1].keys() == reference[1].keys()
    for name in reference[1]:
        if reference[1][name] is None:  # e.g. the batch norm's parameters when residual=False skips it
            assert ours[1][name] is None, name
            continue
        torch.testing.assert_close(ours[1][name], reference[1][name], rtol=0, atol=atol, msg=f"gradient of {name}")


@pytest.mark.parametrize("attention", [False, True])
def test_state_dict_keys_and_shapes_match_the_original(attention):
    for lin_self, batch_norm in itertools.product([False, True], repeat=2):
        ours = make_layer(TensorProductConvLayer, attention, lin_self, batch_norm).state_dict()
        original = make_layer(ReferenceLayer, attention, lin_self, batch_norm).state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in original.items()}
    # the original's `self.fc_k = self.fc = ...` leaves the key MLP under fc_k and the value MLP under fc
    layer = make_layer(TensorProductConvLayer, attention, False, False)
    assert layer.fc[-1].out_features == layer.tp.weight_numel
    if attention:
        assert layer.fc_k[-1].out_features == layer.tp_k.weight_numel != layer.tp.weight_numel


@pytest.mark.parametrize(("attention", "lin_self", "batch_norm"), LAYER_OPTIONS, ids=LAYER_IDS)
def test_matches_the_original_in_float64(attention, lin_self, batch_norm):
    torch.manual_seed(0)
    reference = make_layer(ReferenceLayer, attention, lin_self, batch_norm)
    randomize_(reference, seed=2)
    ours = make_layer(TensorProductConvLayer, attention, lin_self, batch_norm)
    ours.load_state_dict(reference.state_dict())  # strict: every key matches
    for training in (False, True):
        reference.train(training)
        ours.train(training)
        for residual, reduce, out_nodes in FORWARD_OPTIONS:
            inputs = graph_for(out_nodes)
            kwargs = dict(residual=residual, reduce=reduce, out_nodes=out_nodes)
            assert_same(output_and_grads(ours, inputs, **kwargs), output_and_grads(reference, inputs, **kwargs))
    for name, tensor in reference.state_dict().items():  # the batch-norm statistics moved alike in training
        torch.testing.assert_close(ours.state_dict()[name], tensor, rtol=0, atol=1e-10)


@pytest.mark.parametrize("attention", [False, True])
def test_zero_padded_residual_matches_the_original(attention):
    reference = make_layer(ReferenceLayer, attention, False, True, in_irreps=NARROW_IRREPS)
    randomize_(reference, seed=3)
    ours = make_layer(TensorProductConvLayer, attention, False, True, in_irreps=NARROW_IRREPS)
    ours.load_state_dict(reference.state_dict())
    inputs = make_graph(NARROW_IRREPS)
    assert_same(output_and_grads(ours.eval(), inputs), output_and_grads(reference.eval(), inputs))
    report = check_equivariance(ours, inputs, [NARROW_IRREPS, None, None, SH_IRREPS], str(IRREPS))
    assert report.ok, report.details()


@pytest.mark.parametrize("attention", [False, True])
def test_matches_the_original_with_dropout_in_training(attention):
    reference = make_layer(ReferenceLayer, attention, True, True, dropout=0.3).train()
    randomize_(reference, seed=5)
    ours = make_layer(TensorProductConvLayer, attention, True, True, dropout=0.3).train()
    ours.load_state_dict(reference.state_dict())
    inputs = make_graph()
    torch.manual_seed(5)  # the same dropout masks, drawn in the same order (keys before values)
    expected = output_and_grads(reference, inputs)
    torch.manual_seed(5)
    assert_same(output_and_grads(ours, inputs), expected)


@pytest.mark.parametrize(("attention", "lin_self", "batch_norm"), LAYER_OPTIONS, ids=LAYER_IDS)
def test_equivariant_under_rotations_and_inversion(attention, lin_self, batch_norm):
    torch.manual_seed(0)
    layer = make_layer(TensorProductConvLayer, attention, lin_self, batch_norm)
    randomize_(layer, seed=4)
    layer.eval()
    for residual, reduce, out_nodes in FORWARD_OPTIONS:
        inputs = graph_for(out_nodes)

        def f(node_attr, edge_index, edge_attr, edge_sh):
            kwargs = dict(residual=residual, out_nodes=out_nodes, reduce=reduce)
            return layer(node_attr, edge_index, edge_attr, edge_sh, **kwargs)

        report = check_equivariance(f, inputs, [IRREPS, None, None, SH_IRREPS], str(IRREPS), n_trials=2)
        if reduce == "max" and not attention:
            # a component-wise max does not commute with rotations (nor with the sign flip of 0o under inversion)
            assert not report.ok, f"max reduction unexpectedly equivariant: {report.details()}"
        else:
            assert report.ok, f"residual={residual} reduce={reduce} out_nodes={out_nodes}: {report.details()}"


@pytest.mark.parametrize("attention", [False, True])
def test_checkpointing_changes_neither_outputs_nor_gradients(attention):
    layer = make_layer(TensorProductConvLayer, attention, True, True, dropout=0.3).train()
    randomize_(layer, seed=6)
    inputs = make_graph()
    results = []
    for checkpointing in (True, False):
        layer.checkpointing = checkpointing
        torch.manual_seed(7)  # the same dropout masks; the checkpoint replays them when it recomputes
        results.append(output_and_grads(layer, inputs))
    layer.checkpointing = True
    assert_same(results[0], results[1], atol=1e-12)


@pytest.mark.parametrize("attention", [False, True])
def test_checkpointing_stores_fewer_activations(attention):
    layer = make_layer(TensorProductConvLayer, attention, False, False).train()
    node_attr, edge_index, edge_attr, edge_sh = make_graph()
    node_attr.requires_grad_(True)
    stored = {}
    for checkpointing in (True, False):
        layer.checkpointing = checkpointing
        numel = []

        def pack(tensor):
            numel.append(tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            layer(node_attr, edge_index, edge_attr, edge_sh).sum().backward()
        stored[checkpointing] = sum(numel)
    layer.checkpointing = True
    assert stored[True] < stored[False] / 2, stored


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize(("residual", "reduce", "out_nodes"), FORWARD_OPTIONS)
def test_edge_chunks_change_nothing_without_autograd(attention, residual, reduce, out_nodes):
    layer = make_layer(TensorProductConvLayer, attention, True, False).eval()
    randomize_(layer, seed=8)
    inputs = graph_for(out_nodes)
    n_edges, default = inputs[1].shape[1], layer.edge_chunk
    outputs = {}
    with torch.no_grad():
        for size in (0, 1, 5, n_edges - 1, n_edges):
            layer.edge_chunk = size
            outputs[size] = layer(*inputs, residual=residual, reduce=reduce, out_nodes=out_nodes)
    layer.edge_chunk = default
    for size in (1, 5, n_edges - 1, n_edges):
        torch.testing.assert_close(outputs[size], outputs[0], rtol=0, atol=1e-12, msg=f"edge_chunk={size}")


@pytest.mark.parametrize("attention", [False, True])
def test_edge_chunks_only_without_autograd(attention, monkeypatch):
    """At most 5 edges a chunk: ceil(E / 5) calls of the tensor product (sizes within one) under no_grad, one call of
    all E with autograd."""
    layer = make_layer(TensorProductConvLayer, attention, False, False).eval()
    randomize_(layer, seed=9)
    node_attr, edge_index, edge_attr, edge_sh = make_graph()
    edge_attr = edge_attr[:, : N_EDGE_FEATURES - 4]  # the ends' scalars are appended by the layer (end_scalars=2)
    name = "linear_weighted_tensor_products" if attention else "linear_weighted_tensor_product"
    calls = []

    def counted(*args):
        calls.append(len(args[1]))  # the edges of this call: the rows of the source features
        return original(*args)

    original = getattr(conv_layer, name)
    monkeypatch.setattr(conv_layer, name, counted)
    inputs, default = (node_attr, edge_index, edge_attr, edge_sh), layer.edge_chunk
    layer.edge_chunk = 5
    try:
        with torch.no_grad():
            chunked = layer(*inputs, end_scalars=2)
        n_chunks = len(calls)
        whole = layer(*inputs, end_scalars=2)
    finally:
        layer.edge_chunk = default
    assert n_chunks == -(-edge_index.shape[1] // 5) and max(calls[:n_chunks]) - min(calls[:n_chunks]) <= 1
    assert sum(calls[:n_chunks]) == edge_index.shape[1] and calls[n_chunks:] == [edge_index.shape[1]]
    torch.testing.assert_close(chunked, whole.detach(), rtol=0, atol=1e-12)


def test_attention_ignores_reduce():
    layer = make_layer(TensorProductConvLayer, True, False, False).eval()
    inputs = make_graph()
    out = {reduce: layer(*inputs, reduce=reduce) for reduce in ("mean", "sum", "max")}
    torch.testing.assert_close(out["mean"], out["sum"], rtol=0, atol=0)
    torch.testing.assert_close(out["mean"], out["max"], rtol=0, atol=0)


def test_batch_norm_runs_only_with_the_residual():
    with_norm = make_layer(TensorProductConvLayer, False, False, True).eval()
    randomize_(with_norm, seed=8)
    without_norm = make_layer(TensorProductConvLayer, False, False, False).eval()
    unexpected = without_norm.load_state_dict(with_norm.state_dict(), strict=False).unexpected_keys
    assert sorted(unexpected) == [f"batch_norm.{k}" for k in ("bias", "running_mean", "running_var", "weight")]
    inputs = make_graph()
    expected = without_norm(*inputs, residual=False)
    torch.testing.assert_close(with_norm(*inputs, residual=False), expected, rtol=0, atol=0)
    assert not torch.allclose(with_norm(*inputs), without_norm(*inputs))


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("case", ["zero-length edges", "isolated nodes", "no edges"])
def test_no_nan(attention, training, case):
    layer = make_layer(TensorProductConvLayer, attention, False, True).train(training)
    node_attr, edge_index, edge_attr, edge_sh = make_graph()
    pos = torch.randn(N_NODES, 3, dtype=torch.float64)
    if case == "zero-length edges":
        pos[1] = pos[0]
        edge_index = torch.tensor([[0, 1, 2, 2], [1, 0, 0, 1]])
    elif case == "isolated nodes":
        edge_index = torch.tensor([[0, 1], [1, 0]])  # nodes 2..6 neither send nor receive
    else:
        edge_index = torch.zeros(2, 0, dtype=torch.long)
    pos.requires_grad_(True)
    edge_vec = pos[edge_index[0]] - pos[edge_index[1]]
    edge_sh = o3.spherical_harmonics(SH_IRREPS, edge_vec, True, normalization="component")
    edge_attr = torch.randn(edge_index.shape[1], N_EDGE_FEATURES, dtype=torch.float64)
    node_attr.requires_grad_(True)
    out = layer(node_attr, edge_index, edge_attr, edge_sh)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    assert torch.isfinite(node_attr.grad).all() and torch.isfinite(pos.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)
    if case != "zero-length edges":  # nodes without incoming edges: lin_out of zero messages, plus the residual
        layer.eval()
        messages = layer.lin_out(torch.zeros(1, TP_IRREPS.dim, dtype=torch.float64))
        isolated = layer.batch_norm(messages + node_attr[2:].detach())
        torch.testing.assert_close(layer(node_attr, edge_index, edge_attr, edge_sh)[2:], isolated)


def _bad(node_attr, edge_index, edge_attr, edge_sh, **kwargs):
    return (node_attr, edge_index, edge_attr, edge_sh), kwargs


BAD_INPUTS = {
    "node_attr width": (
        lambda x, ei, ea, sh: _bad(x[:, :-1], ei, ea, sh),
        ValueError,
        r"node_attr must have shape \(N, 18\) .* got \(7, 17\)",
    ),
    "node_attr 1-D": (lambda x, ei, ea, sh: _bad(x[0], ei, ea, sh), ValueError, r"got \(18,\)"),
    "edge_sh width": (
        lambda x, ei, ea, sh: _bad(x, ei, ea, sh[:, :4]),
        ValueError,
        r"edge_sh must have shape \(E, 9\) = \(\d+, 9\) .* got \(\d+, 4\)",
    ),
    "edge_sh rows": (lambda x, ei, ea, sh: _bad(x, ei, ea, sh[1:]), ValueError, r"edge_sh must have shape"),
    "edge_attr width": (
        lambda x, ei, ea, sh: _bad(x, ei, ea[:, :5], sh),
        ValueError,
        r"edge_attr must have shape \(E, n_edge_features\) = \(\d+, 6\), got \(\d+, 5\)",
    ),
    "edge_index shape": (
        lambda x, ei, ea, sh: _bad(x, ei.T, ea, sh),
        ValueError,
        r"edge_index must have shape \(2, E\), got \(\d+, 2\)",
    ),
    "edge_index dtype": (lambda x, ei, ea, sh: _bad(x, ei.int(), ea, sh), TypeError, r"torch.int64, got torch.int32"),
    "edge_index float": (lambda x, ei, ea, sh: _bad(x, ei.double(), ea, sh), TypeError, r"got torch.float64"),
    "source out of range": (
        lambda x, ei, ea, sh: _bad(x, torch.cat([ei[:1] + N_NODES, ei[1:]]), ea, sh),
        ValueError,
        r"edge_index\[0\] \(sources\) must lie in \[0, 7\)",
    ),
    "negative target": (
        lambda x, ei, ea, sh: _bad(x, torch.cat([ei[:1], ei[1:] - N_NODES]), ea, sh),
        ValueError,
        r"edge_index\[1\] \(targets\) must lie in \[0, 7\)",
    ),
    "target beyond out_nodes": (
        lambda x, ei, ea, sh: _bad(x, ei, ea, sh, residual=False, out_nodes=2),
        ValueError,
        r"targets\) must lie in \[0, 2\)",
    ),
    "out_nodes with residual": (
        lambda x, ei, ea, sh: _bad(x, ei, ea, sh, out_nodes=N_NODES + 1),
        ValueError,
        r"out_nodes must be 7, got 8",
    ),
    "out_nodes zero": (lambda x, ei, ea, sh: _bad(x, ei, ea, sh, out_nodes=0), ValueError, r"positive integer"),
    "reduce": (lambda x, ei, ea, sh: _bad(x, ei, ea, sh, reduce="min"), ValueError, r"'mean', 'sum' or 'max'"),
    "dtype": (lambda x, ei, ea, sh: _bad(x.float(), ei, ea, sh), TypeError, r"dtype torch.float64, got torch.float32"),
    "device": (lambda x, ei, ea, sh: _bad(x.to("meta"), ei, ea, sh), ValueError, r"node_attr is on meta but"),
    "not a tensor": (
        lambda x, ei, ea, sh: _bad(x.tolist(), ei, ea, sh),
        TypeError,
        r"node_attr must be a torch.Tensor, got list",
    ),
}


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_a_clear_error(case, attention):
    layer = make_layer(TensorProductConvLayer, attention, False, False)
    modify, error, message = BAD_INPUTS[case]
    args, kwargs = modify(*make_graph())
    with pytest.raises(error, match=message):
        layer(*args, **kwargs)


def test_attention_targets_must_be_nodes():
    """With attention the queries come from the targets' own features, so targets must be among the N nodes."""
    layer = make_layer(TensorProductConvLayer, True, False, False)
    node_attr, edge_index, edge_attr, edge_sh = make_graph()
    edge_index = edge_index.clone()
    edge_index[1, 0] = N_NODES  # a valid target of out_nodes = N + 1 rows, but it has no features to query
    with pytest.raises(ValueError, match=r"targets\) must lie in \[0, 7\)"):
        layer(node_attr, edge_index, edge_attr, edge_sh, residual=False, out_nodes=N_NODES + 1)


def test_misaligned_zero_padding_raises():
    """Padding 2x1o + ... into 4x0e + ... would add vectors to scalars; lin_self=True is the way out."""
    misaligned = o3.Irreps("2x1o + 4x0e")
    for lin_self, raises in ((False, True), (True, False)):
        layer = make_layer(TensorProductConvLayer, False, lin_self, False, in_irreps=misaligned)
        inputs = make_graph(misaligned)
        if raises:
            with pytest.raises(ValueError, match=r"zero-padded residual needs in_irreps 2x1o\+4x0e"):
                layer(*inputs)
            assert layer(*inputs, residual=False).shape == (N_NODES, IRREPS.dim)
        else:
            assert layer(*inputs).shape == (N_NODES, IRREPS.dim)
