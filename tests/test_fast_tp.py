"""Tests of tpconv_lite.fast_tp against e3nn's own tensor product modules."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3
from torch import nn

from tpconv_lite.fast_tp import (
    bilinear_matrix,
    linear_weighted_tensor_product,
    linear_weighted_tensor_products,
    tensor_product,
)
from tpconv_lite.testing import check_equivariance

# (irreps_in1, irreps_in2, irreps_out): the score model's default layer, multiplicities > 1 in the second input,
# degrees up to 4, an output that no path reaches (3x2o from 1x0e x ...), and a single scalar path
IRREPS_CASES = [
    ("16x0e + 4x1o + 4x1e + 4x0o", "1x0e + 1x1o + 1x2e", "16x0e + 4x1o + 4x1e + 4x0o"),
    ("3x0e + 2x1o + 2x2e", "2x0e + 1x1e + 3x2o", "2x0o + 3x1o + 2x2e + 1x3o + 2x4e"),
    ("2x1o + 1x3e", "1x1o + 2x2e", "1x0e + 2x2o + 3x3e + 1x4o"),
    ("4x0e", "1x0e + 1x1o", "2x0e + 3x1o + 3x2o"),
    ("2x0e", "1x0e", "3x0e"),
]


def build(irreps, dtype=torch.float64, **kwargs):
    """The tensor product, built under ``dtype`` so that its 3j buffers are exact in that dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return o3.FullyConnectedTensorProduct(*irreps, shared_weights=False, **kwargs)
    finally:
        torch.set_default_dtype(previous)


def inputs_for(tp, n, dtype=torch.float64, seed=0, n_hidden=None):
    """Random x1, x2 and weights (or hidden features) with n rows."""
    generator = torch.Generator().manual_seed(seed)
    width = tp.weight_numel if n_hidden is None else n_hidden
    return [
        torch.randn(n, dim, generator=generator, dtype=dtype) for dim in (tp.irreps_in1.dim, tp.irreps_in2.dim, width)
    ]


def outputs_and_grads(fn, inputs, parameters=()):
    """``fn(*inputs)`` and the gradients of a random projection of it w.r.t. the inputs and the parameters."""
    inputs = [x.clone().requires_grad_(True) for x in inputs]
    out = fn(*inputs)
    projection = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    grads = torch.autograd.grad((out * projection).sum(), [*inputs, *parameters])
    return [out.detach(), *grads]


def relative_difference(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


@pytest.mark.parametrize("irreps", IRREPS_CASES, ids=lambda irreps: " x ".join(irreps))
def test_tensor_product_matches_e3nn_in_float64(irreps):
    tp = build(irreps)
    inputs = inputs_for(tp, 23)
    ours = outputs_and_grads(lambda x1, x2, w: tensor_product(tp, x1, x2, w), inputs)
    expected = outputs_and_grads(tp, inputs)
    assert ours[0].shape == (23, tp.irreps_out.dim)
    for name, a, b in zip(["output", "x1", "x2", "weight"], ours, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("irreps", IRREPS_CASES, ids=lambda irreps: " x ".join(irreps))
def test_linear_weighted_tensor_product_matches_e3nn_in_float64(irreps):
    tp = build(irreps)
    linear = nn.Linear(5, tp.weight_numel, dtype=torch.float64)
    inputs = inputs_for(tp, 23, n_hidden=5)
    parameters = (linear.weight, linear.bias)
    ours = outputs_and_grads(lambda *args: linear_weighted_tensor_product(tp, *args, linear), inputs, parameters)
    expected = outputs_and_grads(lambda x1, x2, h: tp(x1, x2, linear(h)), inputs, parameters)
    for name, a, b in zip(["output", "x1", "x2", "hidden", "linear.weight", "linear.bias"], ours, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("irreps", IRREPS_CASES[:2], ids=["score model", "degrees up to 4"])
def test_float32_matches_e3nn_to_1e_5_relative(irreps):
    """The rounding differs (other summation orders), the numbers do not: relative differences stay ~1e-7."""
    tp = build(irreps, torch.float32)
    linear = nn.Linear(16, tp.weight_numel)
    inputs = inputs_for(tp, 500, torch.float32, n_hidden=16)
    parameters = (linear.weight, linear.bias)
    ours = outputs_and_grads(lambda *args: linear_weighted_tensor_product(tp, *args, linear), inputs, parameters)
    expected = outputs_and_grads(lambda x1, x2, h: tp(x1, x2, linear(h)), inputs, parameters)
    for a, b in zip(ours, expected):
        assert relative_difference(a, b) <= 1e-5
    weights = inputs_for(tp, 500, torch.float32, seed=2)
    ours = outputs_and_grads(lambda x1, x2, w: tensor_product(tp, x1, x2, w), weights)
    for a, b in zip(ours, outputs_and_grads(tp, weights)):
        assert relative_difference(a, b) <= 1e-5


def test_products_sharing_their_couplings_match_e3nn_in_float64():
    """EigenFold's keys and values: two products of the same inputs, output multiplicities 1 : 2, shared couplings."""
    irreps_in1, irreps_in2, _ = IRREPS_CASES[0]
    value_tp = build((irreps_in1, irreps_in2, "16x0e + 4x1o + 4x1e + 4x0o"))
    key_tp = build((irreps_in1, irreps_in2, "8x0e + 2x1o + 2x1e + 2x0o"))
    other_tp = build((irreps_in1, irreps_in2, "3x1o + 2x2e"))  # other outputs: its own couplings
    tps = (key_tp, value_tp, other_tp)
    linears = [nn.Linear(5, tp.weight_numel, dtype=torch.float64) for tp in tps]
    x1, x2, _ = inputs_for(value_tp, 19)
    hiddens = [torch.randn(19, 5, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i in range(3)]
    parameters = [p for linear in linears for p in (linear.weight, linear.bias)]

    def ours(x1, x2, *hiddens):
        return torch.cat(linear_weighted_tensor_products(list(zip(tps, hiddens, linears)), x1, x2), dim=1)

    def expected(x1, x2, *hiddens):
        return torch.cat([tp(x1, x2, linear(h)) for tp, h, linear in zip(tps, hiddens, linears)], dim=1)

    inputs = [x1, x2, *hiddens]
    for a, b in zip(outputs_and_grads(ours, inputs, parameters), outputs_and_grads(expected, inputs, parameters)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_products_must_share_their_inputs():
    a = build(("2x0e + 1x1o", "1x0e + 1x1o", "2x0e"))
    b = build(("1x0e + 1x1o + 1x0e", "1x0e + 1x1o", "2x0e"))  # the same dimension, other irreps
    x1, x2, _ = inputs_for(a, 4)
    h = torch.zeros(4, 3, dtype=torch.float64)
    linears = [nn.Linear(3, tp.weight_numel, dtype=torch.float64) for tp in (a, b)]
    with pytest.raises(
        ValueError, match=r"share their inputs' irreps, got 2x0e\+1x1o x 1x0e\+1x1o and 1x0e\+1x1o\+1x0e"
    ):
        linear_weighted_tensor_products([(a, h, linears[0]), (b, h, linears[1])], x1, x2)
    with pytest.raises(ValueError, match=r"at least one \(tp, hidden, linear\) triple, got none"):
        linear_weighted_tensor_products([], x1, x2)


def test_weighted_sum_backward_passes_gradcheck():
    """The hand-written backward pass against finite differences, with respect to every input."""
    tp = build(IRREPS_CASES[1])
    linear = nn.Linear(3, tp.weight_numel, dtype=torch.float64)
    inputs = [x.requires_grad_(True) for x in inputs_for(tp, 3, n_hidden=3)]
    assert torch.autograd.gradcheck(lambda *args: linear_weighted_tensor_product(tp, *args, linear), inputs)


def test_bilinear_matrix_gives_the_tensor_product():
    """``tp(x1, x2) = x1 M x2`` for a product with shared weights, and its gradient reaches the weights."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        tp = o3.FullyConnectedTensorProduct("3x0e + 2x1o + 1x2e", "2x0e + 2x1o + 1x2e", "2x0e + 1x1o").double()
    x1, x2 = (
        torch.randn(7, tp.irreps_in1.dim, dtype=torch.float64),
        torch.randn(7, tp.irreps_in2.dim, dtype=torch.float64),
    )
    m = bilinear_matrix(tp)
    assert m.shape == (tp.irreps_in1.dim, tp.irreps_in2.dim, tp.irreps_out.dim)
    torch.testing.assert_close(torch.einsum("ei,ijo,ej->eo", x1, m, x2), tp(x1, x2), rtol=0, atol=1e-12)
    (grad_m,) = torch.autograd.grad(torch.einsum("ei,ijo,ej->eo", x1, m, x2).sum(), tp.weight)
    (grad_tp,) = torch.autograd.grad(tp(x1, x2).sum(), tp.weight)
    torch.testing.assert_close(grad_m, grad_tp, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"internal \(shared\) weights"):
        bilinear_matrix(build(IRREPS_CASES[0]))


def test_reads_the_3j_buffers_of_the_module():
    """A state_dict with other 3j values changes e3nn's output; it changes ours the same way."""
    tp = build(IRREPS_CASES[0])
    state = tp.state_dict()
    names = [name for name in state if "_w3j_" in name]
    assert names == ["_compiled_main_left_right._w3j_1_1_1", "_compiled_main_left_right._w3j_1_2_1"]
    tp.load_state_dict({k: 2 * v if k in names else v for k, v in state.items()})
    x1, x2, w = inputs_for(tp, 7)
    torch.testing.assert_close(tensor_product(tp, x1, x2, w), tp(x1, x2, w), rtol=0, atol=1e-10)
    assert not torch.allclose(tensor_product(tp, x1, x2, w), tensor_product(build(IRREPS_CASES[0]), x1, x2, w))


def test_without_specialised_code():
    """With ``_specialized_code=False`` e3nn keeps a 3j buffer for the paths with a degree 0 too."""
    tp = build(IRREPS_CASES[1], _specialized_code=False)
    assert "_w3j_1_0_1" in dict(tp._compiled_main_left_right.named_buffers())
    x1, x2, w = inputs_for(tp, 9)
    torch.testing.assert_close(tensor_product(tp, x1, x2, w), tp(x1, x2, w), rtol=0, atol=1e-10)


def test_batch_dimensions_and_empty_batches():
    tp = build(IRREPS_CASES[1])
    x1, x2, w = inputs_for(tp, 12)
    batched = [x.view(3, 4, -1) for x in (x1, x2, w)]
    out = tensor_product(tp, *batched)
    assert out.shape == (3, 4, tp.irreps_out.dim)
    torch.testing.assert_close(out, tp(*batched), rtol=0, atol=1e-10)
    empty = [x[:0].requires_grad_(True) for x in (x1, x2, w)]
    out = tensor_product(tp, *empty)
    assert out.shape == (0, tp.irreps_out.dim)
    out.sum().backward()
    assert all(x.grad.shape == x.shape for x in empty)
    linear = nn.Linear(3, tp.weight_numel, dtype=torch.float64)
    assert linear_weighted_tensor_product(tp, x1[:0], x2[:0], torch.zeros(0, 3, dtype=torch.float64), linear).shape == (
        0,
        tp.irreps_out.dim,
    )


def test_linear_without_bias():
    tp = build(IRREPS_CASES[2])
    linear = nn.Linear(4, tp.weight_numel, bias=False, dtype=torch.float64)
    x1, x2, h = inputs_for(tp, 6, n_hidden=4)
    expected = tp(x1, x2, linear(h))
    torch.testing.assert_close(linear_weighted_tensor_product(tp, x1, x2, h, linear), expected, rtol=0, atol=1e-10)


def test_equivariant():
    tp = build(IRREPS_CASES[1])
    linear = nn.Linear(4, tp.weight_numel, dtype=torch.float64)
    x1, x2, h = inputs_for(tp, 6, n_hidden=4)

    def f(x1, x2, h):
        return linear_weighted_tensor_product(tp, x1, x2, h, linear)

    report = check_equivariance(f, [x1, x2, h], [tp.irreps_in1, tp.irreps_in2, None], tp.irreps_out)
    assert report.ok, report.details()


def test_bad_inputs_raise():
    tp = build(IRREPS_CASES[3])
    x1, x2, w = inputs_for(tp, 5)
    with pytest.raises(ValueError, match=r"x1 must have shape \(\.\.\., 4\) for 4x0e, got \(5, 3\)"):
        tensor_product(tp, x1[:, :3], x2, w)
    with pytest.raises(ValueError, match=r"same batch shape"):
        tensor_product(tp, x1, x2[:4], w)
    with pytest.raises(ValueError, match=rf"weight must have shape \(5, {tp.weight_numel}\), got \(5, 3\)"):
        tensor_product(tp, x1, x2, w[:, :3])
    with pytest.raises(TypeError, match=r"x2 must be a torch.Tensor, got list"):
        tensor_product(tp, x1, x2.tolist(), w)
    with pytest.raises(TypeError, match=r"o3.TensorProduct, got Linear"):
        tensor_product(nn.Linear(2, 2), x1, x2, w)
    shared = o3.FullyConnectedTensorProduct(*IRREPS_CASES[3])
    with pytest.raises(ValueError, match=r"shared_weights=False"):
        tensor_product(shared, x1, x2, w)
    elementwise = o3.ElementwiseTensorProduct("2x1o", "2x1o")  # 'uuu' paths without weights
    with pytest.raises(ValueError, match=r"'uvw' paths"):
        tensor_product(elementwise, torch.zeros(5, 6), torch.zeros(5, 6), torch.zeros(5, 0))
    with pytest.raises(ValueError, match=rf"out_features = tp.weight_numel = {tp.weight_numel}"):
        linear_weighted_tensor_product(tp, x1, x2, torch.zeros(5, 3), nn.Linear(3, 2))
    linear = nn.Linear(3, tp.weight_numel, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"hidden \(5, 3\), got \(5, 4\) and \(5, 2\)"):
        linear_weighted_tensor_product(tp, x1, x2, torch.zeros(5, 2), linear)
