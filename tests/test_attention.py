"""Tests of tpconv_lite.attention: the stable edge softmax and the SE(3)-Transformer attention layer."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

import tpconv_lite.attention as attention_module
from tpconv_lite.attention import EquivariantAttention, edge_softmax
from tpconv_lite.graph import radius_graph
from tpconv_lite.testing import check_equivariance

IRREPS_INPUT = o3.Irreps("3x0e + 2x1o + 1x1e + 1x0o")
IRREPS_QUERY = o3.Irreps("2x0e + 1x1o + 1x0o")
IRREPS_KEY = o3.Irreps("2x0e + 1x1o + 1x1e")
IRREPS_OUTPUT = o3.Irreps("2x0e + 2x1o + 1x1e + 1x0o")
MAX_RADIUS = 1.3


@pytest.fixture(scope="module")
def attention():
    """A float64 layer. Built under the float64 default dtype so that e3nn's Wigner 3j are float64-accurate."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return EquivariantAttention(IRREPS_INPUT, IRREPS_QUERY, IRREPS_KEY, IRREPS_OUTPUT, MAX_RADIUS, lmax=2).eval()
    finally:
        torch.set_default_dtype(previous)


def per_node_softmax(logits, index, num_nodes):
    """The softmax of each node's incoming logits by torch.softmax, one node at a time (the slow, obvious way)."""
    out = torch.empty_like(logits)
    for node in range(num_nodes):
        mask = index == node
        if mask.any():
            out[mask] = torch.softmax(logits[mask], dim=0)
    return out


def random_edges(num_edges, num_nodes, seed):
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, num_nodes - 2, (num_edges,), generator=generator)  # the last 2 nodes receive nothing
    logits = torch.randn(num_edges, 3, generator=generator, dtype=torch.float64)  # 3 heads
    return logits, index


def test_edge_softmax_equals_torch_softmax_per_node_and_sums_to_one():
    logits, index = random_edges(40, 9, seed=0)
    alpha = edge_softmax(logits, index, num_nodes=9)
    torch.testing.assert_close(alpha, per_node_softmax(logits, index, 9), rtol=0, atol=1e-14)
    sums = torch.zeros(9, 3, dtype=torch.float64).index_add_(0, index, alpha)
    receiving = torch.bincount(index, minlength=9) > 0
    torch.testing.assert_close(sums[receiving], torch.ones_like(sums[receiving]), rtol=0, atol=1e-14)
    assert (sums[~receiving] == 0).all() and not receiving[-2:].any()


def test_edge_softmax_is_stable_for_large_logits():
    logits, index = random_edges(40, 9, seed=1)
    logits = logits + 1000.0
    naive = logits.exp() / torch.zeros(9, 3, dtype=torch.float64).index_add_(0, index, logits.exp())[index]
    assert not torch.isfinite(naive).all()  # exp(1000) overflows: inf / inf
    logits.requires_grad_(True)
    alpha = edge_softmax(logits, index, num_nodes=9)
    torch.testing.assert_close(alpha, per_node_softmax(logits.detach(), index, 9), rtol=0, atol=1e-14)
    (alpha * torch.randn_like(alpha)).sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_edge_softmax_without_edges_and_with_all_weights_zero_has_no_nan():
    empty = torch.zeros(0, 2, dtype=torch.float64, requires_grad=True)
    alpha = edge_softmax(empty, torch.zeros(0, dtype=torch.long), num_nodes=5)
    assert alpha.shape == (0, 2)
    alpha.sum().backward()

    logits = torch.tensor([3.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    weight = torch.tensor([0.0, 0.0, 0.7], dtype=torch.float64, requires_grad=True)
    index = torch.tensor([0, 0, 1])
    alpha = edge_softmax(logits, index, num_nodes=4, weight=weight)
    torch.testing.assert_close(alpha, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    (alpha * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum().backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(weight.grad).all()


def test_edge_softmax_weight_multiplies_the_exponentials():
    logits, index = random_edges(30, 7, seed=2)
    weight = torch.rand(30, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = per_node_softmax(logits + weight.log()[:, None], index, 7)  # w e^a = e^(a + log w)
    torch.testing.assert_close(edge_softmax(logits, index, 7, weight=weight), expected, rtol=0, atol=1e-14)
    torch.testing.assert_close(edge_softmax(logits, index, 7, weight=torch.ones(30, dtype=torch.float64)),
                               edge_softmax(logits, index, 7), rtol=0, atol=0)  # fmt: skip
    torch.autograd.gradcheck(
        lambda a, w: edge_softmax(a, index, 7, weight=w),
        (logits.clone().requires_grad_(True), (weight + 0.1).requires_grad_(True)),
    )


def test_edge_softmax_rejects_mismatched_shapes():
    logits, index = random_edges(10, 5, seed=4)
    with pytest.raises(ValueError, match=r"expected shape \(10, \.\.\.\) to match index, got \(9, 3\)"):
        edge_softmax(logits[1:], index, 5)
    with pytest.raises(ValueError, match=r"weight must have shape \(10,\), one per edge, got \(10, 1\)"):
        edge_softmax(logits, index, 5, weight=torch.ones(10, 1, dtype=torch.float64))


def random_cloud(num_nodes=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pos = torch.randn(num_nodes, 3, generator=generator, dtype=torch.float64)
    features = torch.randn(num_nodes, IRREPS_INPUT.dim, generator=generator, dtype=torch.float64)
    return features, pos


def test_equivariant_under_rotations_inversion_and_translations(attention):
    features, pos = random_cloud()
    pos = 0.6 * pos
    edge_index = radius_graph(pos, MAX_RADIUS)
    assert edge_index.shape[1] > 40
    report = check_equivariance(
        attention, [features, pos, edge_index], [IRREPS_INPUT, "cartesian_points", None], str(IRREPS_OUTPUT)
    )
    assert report.ok, report.details()


def test_isolated_node_gets_zeros_and_nothing_is_nan(attention):
    features, _ = random_cloud(4)
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.2, 0.0], [0.5, 0.2, 0.0], [100.0, 0.0, 0.0]], dtype=torch.float64)
    # node 3 is far from everyone; 1 and 2 coincide: a zero-length edge, whose radial embedding is 0
    edge_index = radius_graph(pos, MAX_RADIUS)
    assert not (edge_index == 3).any() and ((edge_index[0] == 1) & (edge_index[1] == 2)).any()
    features.requires_grad_(True)
    pos.requires_grad_(True)
    out = attention(features, pos, edge_index)
    assert (out[3] == 0).all() and out[:3].abs().sum() > 0
    out.square().sum().backward()
    assert torch.isfinite(features.grad).all() and torch.isfinite(pos.grad).all()


@pytest.mark.parametrize("distance", [0.0, 1e-6, MAX_RADIUS / 2, MAX_RADIUS - 1e-6, MAX_RADIUS, MAX_RADIUS + 1e-6, 3.0])
def test_no_nan_in_backward_at_any_distance(attention, distance):
    """Both edges always exist, however long: at and beyond the cutoff their weight is exactly 0."""
    features = torch.randn(2, IRREPS_INPUT.dim, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([[0.0, 0.0, 0.0], [distance, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    out = attention(features, pos, torch.tensor([[0, 1], [1, 0]]))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(features.grad).all() and torch.isfinite(pos.grad).all()
    if distance >= MAX_RADIUS - 1e-6:  # the cutoff weight underflows to 0: no contribution at all
        assert (out == 0).all()


def outputs_across_the_cutoff(attention, eps):
    """Outputs with node 2 at distance max_radius - eps and max_radius + eps of node 0 (and far from node 1)."""
    features, _ = random_cloud(3, seed=5)
    outputs = []
    for distance in (MAX_RADIUS - eps, MAX_RADIUS + eps):
        pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.8, 0.0], [0.0, -distance, 0.0]], dtype=torch.float64)
        edge_index = radius_graph(pos, MAX_RADIUS)
        outputs.append((attention(features, pos, edge_index), edge_index.shape[1]))
    (inside, edges_inside), (outside, edges_outside) = outputs
    assert edges_inside == edges_outside + 2  # the pair 0 <-> 2 appears and disappears
    return (inside - outside).abs().max().item()


def test_output_is_continuous_across_the_cutoff(attention, monkeypatch):
    with torch.no_grad():
        assert outputs_across_the_cutoff(attention, eps=1e-3) < 1e-12
        assert outputs_across_the_cutoff(attention, eps=0.2) > 1e-3  # the test can see the point move
        # without the cutoff weight on the exponentials, the edge still takes its share of the softmax: a jump
        monkeypatch.setattr(attention_module, "soft_unit_step", torch.ones_like)
        assert outputs_across_the_cutoff(attention, eps=1e-3) > 1e-3


def test_attention_rejects_bad_shapes(attention):
    features, pos = random_cloud(5)
    edge_index = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match=r"features must have shape \(N, 13\) .* got \(5, 12\)"):
        attention(features[:, 1:], pos, edge_index)
    with pytest.raises(ValueError, match=r"pos must have shape \(5, 3\)"):
        attention(features, pos[1:], edge_index)
    with pytest.raises(ValueError, match=r"edge_index must be a \(2, E\) long tensor, got torch.int32"):
        attention(features, pos, edge_index.int())


@pytest.mark.parametrize("dtype, gap", [(torch.float64, 800.0), (torch.float32, 110.0), (torch.float16, 20.0)])
def test_edge_softmax_ignores_cut_off_edges_for_its_shift(dtype: torch.dtype, gap: float) -> None:
    """A cut-off edge (weight 0) with the largest logit must not make the live edges underflow to zero."""
    logits = torch.tensor([0.0, -gap], dtype=dtype, requires_grad=True)
    alpha = edge_softmax(logits, torch.tensor([0, 0]), 1, weight=torch.tensor([0.0, 1.0], dtype=dtype))
    assert alpha.tolist() == [0.0, 1.0]
    alpha.sum().backward()
    assert torch.isfinite(logits.grad).all()
    every_edge_cut = edge_softmax(logits, torch.tensor([0, 0]), 1, weight=torch.zeros(2, dtype=dtype))
    assert every_edge_cut.tolist() == [0.0, 0.0]
