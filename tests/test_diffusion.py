"""Tests of the toy diffusion setting: chains, handedness, the VE SDE, the loss, training and sampling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tpconv_lite.diffusion import (
    CHAIN_KINDS,
    HELIX_RISE,
    VESDE,
    beta_hairpin,
    chain_features,
    ideal_helix,
    noised_batch,
    sample_chains,
    score_matching_loss,
    toy_chains,
    toy_model_config,
    train_score_model,
)
from tpconv_lite.metrics import ca_dihedrals, handedness
from tpconv_lite.score_model import ResiLevelTensorProductScoreModel
from tpconv_lite.testing import random_o3


def triple_products(pos: torch.Tensor) -> torch.Tensor:
    """b1 . (b2 x b3) of consecutive bond vectors: positive along a right-handed helix, by the right-hand rule."""
    bonds = pos[1:] - pos[:-1]
    return (bonds[:-2] * torch.cross(bonds[1:-1], bonds[2:], dim=-1)).sum(-1)


def test_dihedral_sign_convention_on_four_points():
    # a-b-c-d with b->c along +z and d turned by +phi about +z from a: the IUPAC dihedral is +phi
    for phi in (30.0, 50.0, 120.0, -75.0):
        rad = math.radians(phi)
        pos = torch.tensor(
            [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [math.cos(rad), math.sin(rad), 1.0]],
            dtype=torch.float64,
        )
        torch.testing.assert_close(ca_dihedrals(pos), torch.tensor([phi], dtype=torch.float64))


def test_ideal_helix_geometry():
    helix = ideal_helix(40)
    bonds = (helix[1:] - helix[:-1]).norm(dim=-1)
    expected = math.sqrt((2 * 2.3 * math.sin(math.radians(50))) ** 2 + 1.5**2)
    torch.testing.assert_close(bonds, torch.full_like(bonds, expected))
    assert abs(expected - 3.8) < 0.05
    # 3.6 residues per turn: residue k + 18 sits exactly 5 turns above residue k, straight up the axis
    torch.testing.assert_close((helix[18:] - helix[:-18]).norm(dim=-1), torch.full((22,), 18 * HELIX_RISE).double())
    torch.testing.assert_close(helix.mean(dim=0), torch.zeros(3, dtype=torch.float64))


def test_right_handed_helix_has_positive_dihedrals_and_its_mirror_negative():
    right, left = ideal_helix(12), ideal_helix(12, right_handed=False)
    assert bool((triple_products(right) > 0).all()) and bool((triple_products(left) < 0).all())
    angles = ca_dihedrals(right)
    assert angles.shape == (9,)
    assert bool(((angles > 45) & (angles < 55)).all()), angles  # the textbook alpha-helix CA dihedral, about +50
    mirror = right * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(ca_dihedrals(mirror), -angles)
    torch.testing.assert_close(ca_dihedrals(left), -angles)
    assert handedness(right) > 0.7 and handedness(left) < -0.7


def test_handedness_is_rotation_invariant_and_batched():
    generator = torch.Generator().manual_seed(0)
    helix = ideal_helix(10)
    rotated = torch.stack([helix @ random_o3(generator=generator).T for _ in range(5)])
    torch.testing.assert_close(handedness(rotated), handedness(helix).expand(5))
    reflected = torch.stack([helix @ random_o3(inversion=True, generator=generator).T for _ in range(5)])
    torch.testing.assert_close(handedness(reflected), -handedness(helix).expand(5))


@pytest.mark.parametrize("n", [3, 4, 9, 10])
def test_beta_hairpin_is_planar_with_ca_ca_bonds(n):
    hairpin = beta_hairpin(n)
    assert hairpin.shape == (n, 3)
    torch.testing.assert_close((hairpin[1:] - hairpin[:-1]).norm(dim=-1), torch.full((n - 1,), 3.8).double())
    distances = torch.cdist(hairpin, hairpin) + 10 * torch.eye(n, dtype=torch.float64)
    assert float(distances.min()) >= 3.8 - 1e-9  # no clashes between the strands
    assert float(hairpin[:, 2].abs().max()) == 0.0
    if n >= 4:
        assert float(handedness(hairpin).abs()) < 1e-12


def test_toy_chains_are_centred_rotated_noisy_and_keep_handedness():
    chains = toy_chains(16, 12, noise=0.1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert len(chains) == 16 and all(c.shape == (12, 3) for c in chains)
    stacked = torch.stack(chains)
    torch.testing.assert_close(stacked.mean(dim=1), torch.zeros(16, 3, dtype=torch.float64))
    assert bool((handedness(stacked) > 0.5).all())
    ideal = torch.cdist(ideal_helix(12), ideal_helix(12))
    deviation = torch.cdist(stacked, stacked) - ideal  # rotation-free comparison with the ideal helix
    assert 0.02 < float(deviation.std()) < 0.3
    orientations = stacked[:, 1] - stacked[:, 0]
    assert float(orientations.std(dim=0).min()) > 0.5  # not all chains share an orientation
    again = toy_chains(16, 12, noise=0.1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(torch.stack(again), stacked)


def test_chain_features():
    node_attr, pair_attr = chain_features(5, "hairpin")
    assert node_attr.shape == (5, len(CHAIN_KINDS)) and pair_attr.shape == (5, 5, 2)
    assert torch.equal(node_attr, torch.tensor([[0.0, 1.0]]).expand(5, 2))
    assert pair_attr[1, 2, 0] == 1 and pair_attr[2, 1, 0] == 1 and pair_attr[1, 3, 0] == 0
    assert pair_attr[1, 3, 1] == 1 and pair_attr[3, 1, 1] == 0 and pair_attr[2, 2].sum() == 0


def test_sde_schedule_and_diffusion_coefficient():
    sde = VESDE(0.1, 10.0)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(sde.sigma(t), torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64))
    ts = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    h = 1e-6
    numeric = (sde.sigma(ts + h) ** 2 - sde.sigma(ts - h) ** 2) / (2 * h)
    torch.testing.assert_close(sde.g2(ts), numeric, rtol=1e-6, atol=0)


def test_perturb_score_and_score_norm():
    sde = VESDE()
    generator = torch.Generator().manual_seed(2)
    n_chains, n = 400, 6
    x0 = torch.randn(n_chains * n, 3, dtype=torch.float64, generator=generator)
    batch = torch.arange(n_chains).repeat_interleave(n)
    t = torch.rand(n_chains, dtype=torch.float64, generator=generator)
    xt, score = sde.perturb(x0, t, batch, generator)
    sigma = sde.sigma(t)[batch][:, None]
    torch.testing.assert_close(score, -(xt - x0) / sigma**2)
    noise = (xt - x0).view(n_chains, n, 3)
    torch.testing.assert_close(noise.mean(dim=1), torch.zeros(n_chains, 3, dtype=torch.float64))
    # score_norm is the root mean square of one coordinate of the true score
    norm = sde.score_norm(t, torch.full((n_chains,), float(n), dtype=torch.float64))
    torch.testing.assert_close(norm, math.sqrt((n - 1) / n) / sde.sigma(t))
    ratio = (score / norm[batch][:, None]) ** 2
    assert abs(float(ratio.mean()) - 1.0) < 0.05


def test_loss_formula_and_predict_zero_baseline():
    generator = torch.Generator().manual_seed(3)
    score, pred = torch.randn(7, 3, generator=generator), torch.randn(7, 3, generator=generator)
    norm = torch.rand(7, generator=generator) + 0.5
    loss, base = score_matching_loss(score, pred, norm)
    manual = sum(float((score[i, k] - pred[i, k]) ** 2 / norm[i] ** 2) for i in range(7) for k in range(3)) / 21
    assert abs(float(loss) - manual) < 1e-5
    torch.testing.assert_close(score_matching_loss(score, torch.zeros(7, 3), norm)[0], base)
    assert float(score_matching_loss(score, score, norm)[0]) == 0.0


def test_noised_batch_base_loss_is_about_one():
    sde = VESDE()
    generator = torch.Generator().manual_seed(4)
    chains = toy_chains(64, 10, generator=generator)
    kinds = ["helix"] * 64
    data, score = noised_batch(chains, kinds, torch.rand(64, generator=generator), sde, generator)
    assert data.resi.pos.shape == (640, 3) and data.num_graphs == 64
    _, base = score_matching_loss(score, torch.zeros_like(score), data.score_norm[data.resi.batch])
    assert 0.9 < float(base) < 1.1


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="kind must be one of"):
        toy_chains(2, 8, kind="sheet")
    with pytest.raises(ValueError, match="n_residues must be an integer >= 3"):
        beta_hairpin(2)
    with pytest.raises(ValueError, match=r"pos must be a tensor of shape \(\.\.\., n, 3\) with n >= 4"):
        ca_dihedrals(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        VESDE(1.0, 0.5)
    with pytest.raises(ValueError, match="score_norm must be positive"):
        score_matching_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match=r"need score \(N, 3\), pred \(N, 3\) and score_norm \(N,\)"):
        score_matching_loss(torch.zeros(2, 3), torch.zeros(3, 3), torch.ones(2))
    with pytest.raises(ValueError, match="one kind per chain"):
        train_score_model(nn.Linear(1, 1), VESDE(), toy_chains(2, 6), ["helix"], 1)


class Oracle(nn.Module):
    """The exact score of a point mass at ``x0``: -(x - x0) / sigma^2, with sigma^2 read from node_t."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0

    def forward(self, data):
        target = self.x0.repeat(data.num_graphs, 1)
        return -(data.resi.pos - target) / data.resi.node_t[:, None]


@pytest.mark.parametrize("ode", [False, True])
def test_sampler_with_exact_score_reaches_the_data_point(ode):
    x0 = ideal_helix(10)
    samples = sample_chains(
        Oracle(x0), VESDE(0.05, 15.0), 4, 10, n_steps=60, ode=ode, generator=torch.Generator().manual_seed(5),
        dtype=torch.float64,
    )  # fmt: skip
    assert samples.shape == (4, 10, 3)
    rmsd = ((samples - x0) ** 2).sum(-1).mean(-1).sqrt()
    assert bool((rmsd < 0.3).all()), rmsd  # from noise of scale 15 Å down to about sigma_min
    torch.testing.assert_close(samples.mean(dim=1), torch.zeros(4, 3, dtype=torch.float64))


def test_training_and_sampling_run_reproducibly():
    sde = VESDE()
    chains = toy_chains(8, 8, generator=torch.Generator().manual_seed(6))
    logs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = ResiLevelTensorProductScoreModel(toy_model_config(sde, resi_conv_layers=1, resi_ns=8))
        logs.append(train_score_model(model, sde, chains, ["helix"] * 8, 3, batch_size=2, progress=False))
    assert len(logs[0]["loss"]) == 3 and all(math.isfinite(v) for v in logs[0]["loss"])
    assert logs[0] == logs[1]
    assert not model.training
    samples = sample_chains(model, sde, 2, 8, n_steps=3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (2, 8, 3) and bool(torch.isfinite(samples).all())
