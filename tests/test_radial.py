from __future__ import annotations

import math

import pytest
import torch
from e3nn.math import soft_one_hot_linspace

from tpconv_lite.radial import GaussianSmearing, RadialMLP, cosine_basis

torch.manual_seed(0)


def seed_basis(r: torch.Tensor, max_radius: float, number_of_basis: int) -> torch.Tensor:
    """The 2019 tutorial's lambda chain, applied as e3nn's old FiniteElementModel did: to ``r - centre``."""
    radii = torch.linspace(0, max_radius, steps=number_of_basis, dtype=r.dtype)
    step = radii[1] - radii[0]
    x = r[:, None] - radii[None, :]
    return x.div(step).add(1).relu().sub(2).neg().relu().add(1).mul(math.pi / 2).cos().pow(2)


@pytest.mark.parametrize("max_radius, n", [(3.0, 3), (2.5, 7)])
def test_cosine_basis_is_the_seed_lambda(max_radius, n):
    r = torch.linspace(0, 2 * max_radius, 1001, dtype=torch.float64)
    torch.testing.assert_close(cosine_basis(r, max_radius, n), seed_basis(r, max_radius, n), atol=1e-15, rtol=0)


def test_cosine_basis_shape_and_partition_of_unity():
    r = 3.0 * torch.rand(4, 5, dtype=torch.float64)
    b = cosine_basis(r, 3.0, 6)
    assert b.shape == (4, 5, 6)
    torch.testing.assert_close(b.sum(-1), torch.ones(4, 5, dtype=torch.float64))


@pytest.mark.parametrize("max_radius, n", [(3.0, 3), (1.7, 8)])
def test_cosine_basis_is_the_square_of_e3nn_cosine_without_cutoff(max_radius, n):
    r = torch.linspace(0, 2 * max_radius, 997, dtype=torch.float64)
    e3nn_cos = soft_one_hot_linspace(r, 0.0, max_radius, n, basis="cosine", cutoff=False)
    torch.testing.assert_close(cosine_basis(r, max_radius, n), e3nn_cos.pow(2), atol=1e-15, rtol=0)
    # e3nn's normalisation: the squares sum to 1 on [0, max_radius], so the 2019 bumps themselves sum to 1
    inside = r <= max_radius
    torch.testing.assert_close(e3nn_cos[inside].pow(2).sum(-1), torch.ones(int(inside.sum()), dtype=torch.float64))


def test_square_relation_with_cutoff_needs_the_ends_moved_by_one_step():
    max_radius, n = 3.0, 3
    step = max_radius / (n - 1)
    r = torch.linspace(0, 6.0, 601, dtype=torch.float64)
    shifted = soft_one_hot_linspace(r, -step, max_radius + step, n, basis="cosine", cutoff=True)
    torch.testing.assert_close(cosine_basis(r, max_radius, n), shifted.pow(2), atol=1e-15, rtol=0)
    same_ends = soft_one_hot_linspace(r, 0.0, max_radius, n, basis="cosine", cutoff=True)
    assert (cosine_basis(r, max_radius, n) - same_ends.pow(2)).abs().max() > 0.1


def test_gaussian_smearing_formula_and_state_dict():
    smearing = GaussianSmearing(start=0.5, stop=4.0, num_gaussians=8)
    dist = 5 * torch.rand(3, 7)
    offset = torch.linspace(0.5, 4.0, 8)
    coeff = -0.5 / (0.5) ** 2
    expected = torch.exp(coeff * (dist.reshape(-1, 1) - offset) ** 2)
    torch.testing.assert_close(smearing(dist), expected)
    assert smearing.coeff == pytest.approx(coeff)
    assert list(smearing.state_dict()) == ["offset"]
    other = GaussianSmearing(start=0.5, stop=4.0, num_gaussians=8)
    other.load_state_dict({"offset": offset})
    torch.testing.assert_close(other.offset, offset)


@pytest.mark.parametrize("basis, cutoff", [("smooth_finite", True), ("cosine", False), ("fourier", True),
                                           ("gaussian", False), ("seed_cosine", False)])
def test_radial_mlp_shapes(basis, cutoff):
    R = RadialMLP(out_dim=24, max_radius=2.0, number_of_basis=5, hidden=16, layers=2, basis=basis, cutoff=cutoff)
    r = 2.5 * torch.rand(11)
    assert R.embed(r).shape == (11, 5)
    assert R(r).shape == (11, 24)
    assert R(r[:0]).shape == (0, 24)


def test_tutorial_2019_settings():
    R = RadialMLP.tutorial_2019(out_dim=24)
    assert R.net.hs == [3, 100, 100, 24]
    assert (R.max_radius, R.number_of_basis, R.basis, R.cutoff) == (3.0, 3, "seed_cosine", False)
    z = torch.linspace(-3, 3, 13)
    act = R.net.layer0.act  # e3nn wraps the activation in normalize2mom
    torch.testing.assert_close(act(z) / act.cst, torch.nn.functional.softplus(z, beta=5.0))
    r = torch.tensor([0.0, 1.2, 3.0])
    torch.testing.assert_close(R.embed(r), 3**0.5 * cosine_basis(r, 3.0, 3))


def test_embedding_has_unit_second_moment_for_the_e3nn_cosine_basis():
    R = RadialMLP(out_dim=4, max_radius=2.0, number_of_basis=8, basis="cosine", cutoff=False).double()
    r = torch.linspace(0, 2.0, 10_001, dtype=torch.float64)
    assert R.embed(r).pow(2).mean().item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("basis, atol", [("smooth_finite", 0.0), ("cosine", 1e-12), ("fourier", 1e-12)])
def test_cutoff_basis_with_silu_vanishes_at_max_radius(basis, atol):
    R = RadialMLP(out_dim=6, max_radius=2.0, number_of_basis=4, hidden=8, basis=basis, cutoff=True).double()
    at_and_beyond = torch.tensor([2.0, 2.3, 7.0], dtype=torch.float64)
    assert R(at_and_beyond).abs().max().item() <= atol
    approaching = R(torch.tensor([1.9, 1.99, 1.999], dtype=torch.float64)).abs().amax(dim=1)
    assert approaching[0] > approaching[1] > approaching[2]
    assert R(torch.tensor([1.0], dtype=torch.float64)).abs().max() > 1e-3


def test_what_breaks_the_cutoff():
    r = torch.tensor([2.0], dtype=torch.float64)
    gaussian = RadialMLP(out_dim=6, max_radius=2.0, number_of_basis=4, basis="gaussian", cutoff=True).double()
    softplus = RadialMLP(out_dim=6, max_radius=2.0, number_of_basis=4, basis="smooth_finite", cutoff=True,
                         act=torch.nn.functional.softplus).double()
    assert gaussian(r).abs().max() > 1e-3  # Gaussians never reach zero
    assert softplus(r).abs().max() > 1e-3  # no biases, but softplus(0) != 0


@pytest.mark.parametrize("basis, cutoff", [("smooth_finite", True), ("cosine", True), ("fourier", False),
                                           ("gaussian", True), ("seed_cosine", False)])
def test_gradients_are_finite_at_zero(basis, cutoff):
    R = RadialMLP(out_dim=5, max_radius=2.0, number_of_basis=4, hidden=8, basis=basis, cutoff=cutoff).double()
    r = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64, requires_grad=True)
    R(r).pow(2).sum().backward()
    assert torch.isfinite(r.grad).all()


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_bad_lengths_raise(bad):
    r = torch.tensor([0.5, bad])
    with pytest.raises(ValueError, match="non-negative"):
        cosine_basis(r, 3.0, 3)
    with pytest.raises(ValueError, match="non-negative"):
        RadialMLP(out_dim=3, max_radius=2.0)(r)


def test_bad_settings_raise():
    r = torch.rand(3)
    for max_radius, n in [(0.0, 3), (-1.0, 3), (3.0, 1), (3.0, 2.5)]:
        with pytest.raises(ValueError):
            cosine_basis(r, max_radius, n)
        with pytest.raises(ValueError):
            RadialMLP(out_dim=3, max_radius=max_radius, number_of_basis=n)
    with pytest.raises(ValueError, match="basis must be one of"):
        RadialMLP(out_dim=3, max_radius=2.0, basis="bessel")
    with pytest.raises(ValueError, match="cutoff=False"):
        RadialMLP(out_dim=3, max_radius=2.0, basis="seed_cosine")
    with pytest.raises(TypeError):
        cosine_basis(torch.tensor([1, 2]), 3.0, 3)


def test_gaussian_smearing_bad_input_raises():
    with pytest.raises(ValueError, match="NaN"):
        GaussianSmearing()(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="stop"):
        GaussianSmearing(start=2.0, stop=2.0)
    with pytest.raises(ValueError, match="num_gaussians"):
        GaussianSmearing(num_gaussians=1)
