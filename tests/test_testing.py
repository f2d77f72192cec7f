"""tpconv_lite.testing: the checker passes equivariant functions and catches the others."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from tpconv_lite.testing import assert_equivariant, check_equivariance, default_dtype, random_o3, wigner_D


def test_random_o3_is_orthogonal_with_the_asked_determinant() -> None:
    gen = torch.Generator().manual_seed(0)
    for inversion in [False, True]:
        R = random_o3(inversion, generator=gen)
        assert R.dtype == torch.float64
        assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-14)
        assert torch.det(R).item() == pytest.approx(-1.0 if inversion else 1.0, abs=1e-12)


def test_wigner_D_is_float64_accurate_and_restores_the_default_dtype() -> None:
    R = random_o3(generator=torch.Generator().manual_seed(1))
    assert (wigner_D("1o", R) - R).abs().max() < 1e-14
    assert (wigner_D("1o", -R) + R).abs().max() < 1e-14
    assert (wigner_D("1e", -R) - R).abs().max() < 1e-14
    assert torch.get_default_dtype() == torch.float32
    D = wigner_D("2x0e + 1x2e", R)
    assert D.shape == (7, 7) and torch.allclose(D @ D.T, torch.eye(7, dtype=torch.float64), atol=1e-13)


def test_tensor_product_is_equivariant_and_mislabelled_output_is_not() -> None:
    with default_dtype(torch.float64):
        tp = o3.FullyConnectedTensorProduct("2x0e + 1x1o", "1x1o", "1x0e + 1x1e + 1x2e")
    x = o3.Irreps("2x0e + 1x1o").randn(5, -1, dtype=torch.float64)
    y = o3.Irreps("1x1o").randn(5, -1, dtype=torch.float64)
    report = assert_equivariant(tp, [x, y], ["2x0e + 1x1o", "1x1o"], "1x0e + 1x1e + 1x2e")
    assert report.ok and max(report.errors) < 1e-12
    assert str(report) == "1x0e+1x1e+1x2e: equivariant: True"
    wrong = check_equivariance(tp, [x, y], ["2x0e + 1x1o", "1x1o"], "1x0o + 1x1o + 1x2o")
    assert not wrong.ok and "equivariant: False" in str(wrong)
    with pytest.raises(AssertionError, match="max error"):
        assert_equivariant(tp, [x, y], ["2x0e + 1x1o", "1x1o"], "1x0o + 1x1o + 1x2o")


def test_rotations_alone_miss_a_parity_error_that_inversion_catches() -> None:
    def cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.linalg.cross(a, b)

    a, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    kinds = ["1o", "1o"]
    assert check_equivariance(cross, [a, b], kinds, "1o", inversion=False).ok  # rotations cannot tell 1o from 1e
    assert not check_equivariance(cross, [a, b], kinds, "1o").ok
    assert check_equivariance(cross, [a, b], kinds, "1e").ok


def test_points_are_translated_and_several_outputs_are_reported() -> None:
    def centre_and_distances(pos: torch.Tensor, labels: torch.Tensor):
        centred = pos - pos.mean(0)
        return centred, centred.norm(dim=1, keepdim=True), labels

    pos = torch.randn(6, 3, dtype=torch.float64)
    labels = torch.arange(6)
    report = check_equivariance(centre_and_distances, [pos, labels], ["cartesian_points", None], ["1o", "0e", None])
    assert report.ok and len(report.errors) == 3
    assert str(report).splitlines()[0] == "output 0 (1x1o): equivariant: True"
    uncentred = check_equivariance(lambda p: p, [pos], ["cartesian_points"], "1o")
    assert not uncentred.ok
    assert check_equivariance(lambda p: p, [pos], ["cartesian_points"], "1o", translation=False).ok
    assert check_equivariance(lambda p: p, [pos], ["cartesian_points"], "cartesian_points").ok


def test_checker_bad_input() -> None:
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="last dimension 3"):
        check_equivariance(lambda v: v, [x], ["1o"], "1o")
    with pytest.raises(ValueError, match="2 entries in irreps_in"):
        check_equivariance(lambda v: v, [x], ["1o", "1o"], "1o")
    with pytest.raises(ValueError, match="returned 1 outputs"):
        check_equivariance(lambda v: v, [x], ["1x0e+1x1o"], ["1x0e+1x1o", "0e"])


def test_float32_constants_limit_a_float64_check() -> None:
    """Why the tests build e3nn modules under default_dtype(float64): .double() does not restore lost digits."""
    torch.manual_seed(0)
    tp32 = o3.FullyConnectedTensorProduct("1x1o", "1x1o", "1x2e").double()
    with default_dtype(torch.float64):
        tp64 = o3.FullyConnectedTensorProduct("1x1o", "1x1o", "1x2e")
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    errors = [check_equivariance(tp, [x, y], ["1o", "1o"], "2e").errors[0] for tp in (tp32, tp64)]
    assert errors[0] > 1e-9 > 1e-13 > errors[1]
    assert torch.get_default_dtype() == torch.float32


def test_an_irreps_object_labels_one_output() -> None:
    """o3.Irreps is a tuple: it must still be read as the label of a single output, not as a list of labels."""
    x = torch.randn(4, 3, dtype=torch.float64)
    report = check_equivariance(lambda v: torch.cat([v, 2 * v], dim=1), [x], [o3.Irreps("1o")], o3.Irreps("2x1o"))
    assert report.ok and report.names == ["2x1o"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_sign_flip_of_a_small_irrep_block_fails_on_its_own_scale(dtype: torch.dtype) -> None:
    """A 0o block of size 7e-5 next to a 1o of size 1: flipping its sign must fail, as the block is judged alone."""

    def vector_and_small_pseudoscalar(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, flip: bool) -> torch.Tensor:
        pseudo = 7e-5 * torch.linalg.det(torch.stack([a, b, c], dim=-2))[:, None]  # (a x b) . c is a 0o
        return torch.cat([a, pseudo.abs() if flip else pseudo], dim=-1)

    vectors = [torch.randn(8, 3, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    kinds = ["1o", "1o", "1o"]
    good = check_equivariance(lambda *v: vector_and_small_pseudoscalar(*v, False), vectors, kinds, "1o + 0o",
                              dtype=dtype)  # fmt: skip
    assert good.ok, good.details()
    flipped = check_equivariance(lambda *v: vector_and_small_pseudoscalar(*v, True), vectors, kinds, "1o + 0o",
                                 dtype=dtype)  # fmt: skip
    assert not flipped.ok and flipped.blocks == ["1x0o"], flipped.details()
    assert str(flipped) == "1x1o+1x0o: equivariant: False"
