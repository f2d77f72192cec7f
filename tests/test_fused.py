from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from e3nn import o3

import tpconv_lite
from tpconv_lite.fused import (
    FusedTensorProduct,
    e3x_irreps,
    e3x_to_irreps,
    irreps_to_e3x,
    matrix_basis,
    matrix_to_vector,
    vector_to_matrix,
)
from tpconv_lite.testing import assert_equivariant, random_o3, wigner_D

torch.manual_seed(0)


def irrep_blocks(irreps: o3.Irreps) -> list[tuple[slice, o3.Irrep]]:
    return [(s, ir) for s, (_, ir) in zip(irreps.slices(), irreps)]


@pytest.mark.parametrize("num_parity", [1, 2])
def test_layout_conversion_puts_each_irrep_where_e3nn_expects_it(num_parity):
    x = torch.randn(4, num_parity, 9, 3)
    flat, irreps = e3x_to_irreps(x)
    assert irreps == e3x_irreps(3, 2, num_parity)
    assert flat.shape == (4, irreps.dim)
    for s, ir in irrep_blocks(irreps):
        channel = 0 if num_parity == 1 or ir.p == 1 else 1
        block = x[:, channel, ir.l**2 : (ir.l + 1) ** 2, :]  # (batch, 2l+1, F)
        assert ir.p == (-1) ** ir.l or num_parity == 2  # one channel holds tensors only
        torch.testing.assert_close(flat[:, s].view(4, 3, 2 * ir.l + 1), block.transpose(1, 2), rtol=0, atol=0)
    torch.testing.assert_close(irreps_to_e3x(flat, irreps), x, rtol=0, atol=0)


def test_e3x_irreps_order():
    assert str(e3x_irreps(2, 3, 2)) == "2x0e+2x0o+2x1e+2x1o+2x2e+2x2o+2x3e+2x3o"
    assert str(e3x_irreps(5, 3, 1)) == "5x0e+5x1o+5x2e+5x3o"


@pytest.mark.parametrize("irreps", ["4x0e+4x1e", "4x0e+2x1o", "4x1o+4x0e", "4x0e+4x0o+4x1o+4x1e"])
def test_irreps_to_e3x_rejects_irreps_of_another_layout(irreps):
    with pytest.raises(ValueError, match="not the irreps of an e3x feature tensor"):
        irreps_to_e3x(torch.zeros(o3.Irreps(irreps).dim), irreps)


def test_layout_conversion_errors():
    with pytest.raises(ValueError, match="last dimension 16"):
        irreps_to_e3x(torch.zeros(2, 15), "4x0e+4x1o")
    with pytest.raises(ValueError, match=r"\(L\+1\)\*\*2 components"):
        e3x_to_irreps(torch.zeros(2, 1, 5, 4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        e3x_to_irreps([[[0.0]]])


@pytest.mark.parametrize("matrix_degree", [0, 1, 2, 3])
def test_matrix_basis_is_orthogonal_and_round_trip_with_unit_weights_is_identity(matrix_degree):
    full = 2 * matrix_degree
    basis = matrix_basis(matrix_degree, full)
    torch.testing.assert_close(basis @ basis.T, torch.eye((full + 1) ** 2, dtype=torch.float64))
    torch.testing.assert_close(basis.T @ basis, torch.eye((2 * matrix_degree + 1) ** 2, dtype=torch.float64))
    for max_degree in range(full + 1):
        x = torch.randn(3, (max_degree + 1) ** 2, 5, dtype=torch.float64)
        ones = torch.ones(max_degree + 1, 5, dtype=torch.float64)
        matrices = vector_to_matrix(x, ones, basis)
        assert matrices.shape == (3, 5, 2 * matrix_degree + 1, 2 * matrix_degree + 1)
        torch.testing.assert_close(matrix_to_vector(matrices, ones, basis), x)


@pytest.mark.parametrize("matrix_degree", [1, 2])
def test_vector_to_matrix_turns_rotations_into_conjugations(matrix_degree):
    """X(D x) = D~ X(x) D~^T: the matrix of a rotated irrep is the rotated matrix."""
    max_degree = 2 * matrix_degree
    basis = matrix_basis(matrix_degree, max_degree)
    rotation = random_o3(generator=torch.Generator().manual_seed(1))
    d_vector = wigner_D(o3.Irreps.spherical_harmonics(max_degree), rotation)
    d_matrix = wigner_D(f"{matrix_degree}e", rotation)
    x = torch.randn(7, (max_degree + 1) ** 2, 2, dtype=torch.float64)
    weight = torch.randn(max_degree + 1, 2, dtype=torch.float64)
    rotated_x = torch.einsum("ij,bjf->bif", d_vector, x)
    expected = d_matrix @ vector_to_matrix(x, weight, basis) @ d_matrix.T
    torch.testing.assert_close(vector_to_matrix(rotated_x, weight, basis), expected)


EQUIVARIANCE_CASES = [  # (P1, P2, L1, L2, L3, include_pseudotensors)
    (2, 2, 1, 1, 1, True),
    (2, 2, 2, 2, 2, True),
    (1, 1, 2, 3, 3, True),
    (1, 2, 3, 1, 4, True),
    (2, 1, 4, 4, 4, True),
    (2, 2, 3, 3, 3, False),
    (1, 1, 0, 2, 2, True),
    (1, 1, 4, 3, 2, False),
]


@pytest.mark.parametrize("p1, p2, l1, l2, l3, pseudo", EQUIVARIANCE_CASES)
def test_equivariant_under_rotations_and_inversion(p1, p2, l1, l2, l3, pseudo):
    tp = FusedTensorProduct(3, l1, l2, l3, p1, p2, pseudo, layout="irreps").double().eval()
    x = torch.randn(5, tp.irreps_in1.dim, dtype=torch.float64)
    y = torch.randn(5, tp.irreps_in2.dim, dtype=torch.float64)
    assert tp(x, y).abs().max() > 0.1  # not trivially equivariant
    irreps = [str(tp.irreps_in1), str(tp.irreps_in2), str(tp.irreps_out)]  # an o3.Irreps is a tuple: pass strings
    assert_equivariant(tp, [x, y], irreps[:2], irreps[2], n_trials=4)


def test_the_two_layouts_compute_the_same_thing():
    torch.manual_seed(1)
    tp = FusedTensorProduct(4, 2, 3, 3, 2, 1)
    tp_irreps = FusedTensorProduct(4, 2, 3, 3, 2, 1, layout="irreps")
    tp_irreps.load_state_dict(tp.state_dict())
    x, y = torch.randn(6, 2, 9, 4), torch.randn(6, 1, 16, 4)
    expected, irreps = e3x_to_irreps(tp(x, y))
    assert irreps == tp_irreps.irreps_out
    got = tp_irreps(e3x_to_irreps(x)[0], e3x_to_irreps(y)[0])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    "p1, p2, l1, l2, l3, pseudo",
    [
        (2, 2, 2, 2, 2, True),
        (2, 2, 1, 3, 4, True),
        (2, 2, 4, 4, 4, True),
        (1, 1, 3, 2, 3, True),
        (1, 2, 2, 4, 3, False),
    ],
)
def test_every_allowed_path_couples_and_no_other(p1, p2, l1, l2, l3, pseudo):
    """Feed one input irrep to each side; the output irreps that respond are exactly those in ir1 x ir2."""
    tp = FusedTensorProduct(2, l1, l2, l3, p1, p2, pseudo, layout="irreps").double()
    pairs = list(itertools.product(irrep_blocks(tp.irreps_in1), irrep_blocks(tp.irreps_in2)))
    x = torch.randn(len(pairs), tp.irreps_in1.dim, dtype=torch.float64)
    y = torch.randn(len(pairs), tp.irreps_in2.dim, dtype=torch.float64)
    keep_x, keep_y = torch.zeros_like(x), torch.zeros_like(y)  # row i keeps only the irreps of pair i
    for i, ((s1, _), (s2, _)) in enumerate(pairs):
        keep_x[i, s1], keep_y[i, s2] = 1, 1
    with torch.no_grad():
        z = tp(x * keep_x, y * keep_y)
    for i, ((_, ir1), (_, ir2)) in enumerate(pairs):
        for s3, ir3 in irrep_blocks(tp.irreps_out):
            norm = z[i, s3].norm().item()
            if ir3 in ir1 * ir2:
                assert norm > 1e-6, f"path {ir1} x {ir2} -> {ir3} is missing"
            else:
                assert norm < 1e-12, f"forbidden path {ir1} x {ir2} -> {ir3} gives {norm}"


def test_path_3x5_to_5_vanishes_at_matrix_degree_3():
    """A non-trivial zero of the 6j symbol {3 5 5; 3 3 3}: the fused product loses this path (so does e3x)."""
    tp = FusedTensorProduct(2, 3, 5, 5, 1, 1, layout="irreps").double()
    assert tp.matrix_degree == 3
    (s3, _), (s5, _) = irrep_blocks(tp.irreps_in1)[3], irrep_blocks(tp.irreps_in2)[5]
    x = torch.zeros(1, tp.irreps_in1.dim, dtype=torch.float64)
    y = torch.zeros(1, tp.irreps_in2.dim, dtype=torch.float64)
    x[:, s3], y[:, s5] = torch.randn(s3.stop - s3.start), torch.randn(s5.stop - s5.start)
    with torch.no_grad():
        z = tp(x, y)
    norms = {str(ir): z[:, s].norm().item() for s, ir in irrep_blocks(tp.irreps_out)}
    assert norms["5e"] < 1e-12  # allowed by the triangle and parity rules (3o x 5o -> 2e..8e), yet missing
    assert min(norms["2e"], norms["3e"], norms["4e"]) > 1e-6


@pytest.mark.parametrize("p1, p2, l1, l2", [(2, 2, 2, 3), (1, 2, 3, 3), (1, 1, 2, 2)])
def test_without_pseudotensors_the_output_is_the_tensor_part(p1, p2, l1, l2):
    full = FusedTensorProduct(3, l1, l2, num_parity1=p1, num_parity2=p2)
    tensors_only = FusedTensorProduct(3, l1, l2, num_parity1=p1, num_parity2=p2, include_pseudotensors=False)
    tensors_only.load_state_dict(full.state_dict())
    assert tensors_only.num_parity3 == 1
    assert all(ir.p == (-1) ** ir.l for _, ir in tensors_only.irreps_out)
    x, y = torch.randn(4, p1, (l1 + 1) ** 2, 3), torch.randn(4, p2, (l2 + 1) ** 2, 3)
    z, z_tensors = full(x, y), tensors_only(x, y)
    assert z.shape[-3] == 2 and z_tensors.shape[-3] == 1
    dropped = []
    for l in range(max(l1, l2) + 1):
        block = slice(l**2, (l + 1) ** 2)
        torch.testing.assert_close(z_tensors[..., 0, block, :], z[..., l % 2, block, :])
        dropped.append(z[..., (l + 1) % 2, block, :])
    assert max(d.abs().max() for d in dropped) > 0.1  # the pseudotensors that were dropped are not zero


def test_one_channel_inputs_with_a_scalar_side_make_no_pseudotensors():
    tp = FusedTensorProduct(3, 0, 2, num_parity1=1, num_parity2=1, include_pseudotensors=True)
    assert tp.num_parity3 == 1 and tp.irreps_out == e3x_irreps(3, 2, 1)
    assert FusedTensorProduct(3, 1, 2, num_parity1=1, num_parity2=1).num_parity3 == 2


def test_bad_inputs_raise_clear_errors():
    tp = FusedTensorProduct(4, 2, 1)
    x, y = torch.randn(3, 2, 9, 4), torch.randn(3, 2, 4, 4)
    with pytest.raises(ValueError, match=r"y: axis -1 \(features\) must have size num_features = 4"):
        tp(x, torch.randn(3, 2, 4, 5))
    degree_error = r"x: axis -2 \(degree components\) must have size \(max_degree1\+1\)\*\*2 = 9"
    with pytest.raises(ValueError, match=degree_error):
        tp(torch.randn(3, 2, 4, 4), y)
    with pytest.raises(ValueError, match=r"x: axis -3 \(parity channels\) must have size num_parity1 = 2"):
        tp(torch.randn(3, 1, 9, 4), y)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., P, \(L\+1\)\*\*2, F\)"):
        tp(torch.randn(9, 4), y)
    with pytest.raises(TypeError, match="torch.Tensor"):
        tp(x.tolist(), y)
    tp_irreps = FusedTensorProduct(4, 2, 1, layout="irreps")
    with pytest.raises(ValueError, match="last dimension"):
        tp_irreps(torch.randn(3, tp_irreps.irreps_in1.dim + 1), torch.randn(3, tp_irreps.irreps_in2.dim))
    with pytest.raises(ValueError, match="at most max_degree1 \\+ max_degree2 = 3"):
        FusedTensorProduct(4, 2, 1, max_degree=4)
    with pytest.raises(ValueError, match="num_parity must be 1"):
        FusedTensorProduct(4, 2, 1, num_parity2=3)
    with pytest.raises(ValueError, match="num_features must be an int >= 1"):
        FusedTensorProduct(0, 2, 1)
    with pytest.raises(ValueError, match="layout must be"):
        FusedTensorProduct(4, 2, 1, layout="e3nn")


def test_all_kernels_get_gradients():
    tp = FusedTensorProduct(3, 2, 2)
    tp(torch.randn(4, 2, 9, 3), torch.randn(4, 2, 9, 3)).pow(2).sum().backward()
    for name, parameter in tp.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().max() > 0, name


def test_weights_that_multiply_nothing_start_at_zero():
    tp = FusedTensorProduct(5, 3, 2, num_parity1=1, num_parity2=1)
    assert (tp.kernel_e1[1::2] == 0).all() and (tp.kernel_o1[0::2] == 0).all() and (tp.kernel_e1[0::2] != 0).all()
    assert (tp.kernel_o2[0::2] == 0).all() and (tp.kernel_eoo[0] == 0).all() and (tp.kernel_oeo[0] == 0).all()
    assert (tp.kernel_eee != 0).all()


@pytest.mark.parametrize(
    "p1, p2, l1, l2",
    [(2, 2, 0, 0), (2, 2, 2, 2), (2, 2, 4, 3), (1, 1, 2, 2), (1, 1, 0, 2), (1, 2, 2, 2)],
)
def test_initialisation_keeps_unit_variance(p1, p2, l1, l2):
    """e3x's fused_tensor_normal: unit-variance inputs give outputs of variance about one (for L3 = max(L1, L2))."""
    torch.manual_seed(2)
    tp = FusedTensorProduct(64, l1, l2, num_parity1=p1, num_parity2=p2).double()
    mean_squares = []
    for _ in range(16):  # 16 x 64 draws of the weights: the spread comes from them, not from the inputs
        tp.reset_parameters()
        x = torch.randn(32, p1, (l1 + 1) ** 2, 64, dtype=torch.float64)
        y = torch.randn(32, p2, (l2 + 1) ** 2, 64, dtype=torch.float64)
        with torch.no_grad():
            mean_squares.append(tp(x, y).pow(2).mean())
    assert 0.7 < torch.stack(mean_squares).mean() < 1.4  # over 20 seeds the means stay within 0.78..1.22


def test_same_output_as_the_shipped_e3x_reference():
    """tpconv_lite/assets/e3x_fused.npz holds e3x FusedTensor outputs (tests/make_e3x_reference.py wrote it)."""
    import numpy as np

    reference = np.load(Path(tpconv_lite.__file__).parent / "assets" / "e3x_fused.npz")
    cases = reference["cases"].tolist()
    assert len(cases) == 3 and any(case[3] == 5 for case in cases)
    for i, (p1, p2, l1, l2, l3, pseudo) in enumerate(cases):
        tp = FusedTensorProduct(4, l1, l2, l3, p1, p2, bool(pseudo)).double()
        names = {name for name, _ in tp.named_parameters()}
        stored = {key.split("__kernel__")[1] for key in reference.files if key.startswith(f"case{i}__kernel__")}
        assert names == stored
        with torch.no_grad():
            for name, parameter in tp.named_parameters():
                kernel = torch.from_numpy(reference[f"case{i}__kernel__{name}"])
                assert torch.equal(parameter == 0, kernel == 0), f"{name}: zero pattern"  # the same masked paths
                parameter.copy_(kernel)
            ours = tp(torch.from_numpy(reference[f"case{i}__x"]), torch.from_numpy(reference[f"case{i}__y"]))
        expected = torch.from_numpy(reference[f"case{i}__output"])
        assert ours.shape == expected.shape
        assert (ours - expected).abs().max() < 1e-12 * expected.abs().max(), i
