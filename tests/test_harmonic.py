"""Tests of tpconv_lite.harmonic: float64 identities, hand-derived values, EigenFold's numbers, batching, symmetry."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tpconv_lite.conditioning import LM_EDGE_DIM, LM_NODE_DIM, chain_conditioning
from tpconv_lite.harmonic import (
    EntropySchedule,
    ForwardDiffusionKernel,
    HarmonicConfig,
    HarmonicDiffusion,
    HarmonicSDE,
    PolymerSDE,
    RateSchedule,
    harmonic_loss,
    reverse_step,
)
from tpconv_lite.score_model import ResiLevelTensorProductScoreModel, ScoreModelConfig
from tpconv_lite.testing import random_o3

A = 3 / 3.8**2
REFERENCE = Path(__file__).with_name("eigenfold_harmonic_reference.npz")
SEQUENCES = ["MKTAYIAKQR", "GSHMLE", "PEPTIDEWALK"]


def fake_score(Y, t, score_norm):
    """The stand-in score function of tests/make_eigenfold_reference.py."""
    return -0.5 * Y / (1 + t) + 0.1 * score_norm * torch.tanh(Y)


def fake_model(data):
    return fake_score(data.resi.pos, data.resi.node_t[:, None], data.score_norm[data.resi.batch][:, None])


def small_model(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    config = ScoreModelConfig(resi_conv_layers=2, resi_ns=8, resi_nv=2, resi_ntps=4, resi_ntpv=2, resi_fc_dim=8,
                              lm_node_dim=LM_NODE_DIM, lm_edge_dim=LM_EDGE_DIM)  # fmt: skip
    return ResiLevelTensorProductScoreModel(config).to(dtype)


def chains(seed=0):
    g = torch.Generator().manual_seed(seed)
    pos = [torch.cumsum(3.8 * torch.randn(len(s), 3, generator=g, dtype=torch.float64) / math.sqrt(3), 0)
           for s in SEQUENCES]  # fmt: skip
    features = [chain_conditioning(s, dtype=torch.float64) for s in SEQUENCES]
    return pos, [f[0] for f in features], [f[1] for f in features]


# ---------------------------------------------------------------- identities and hand-derived values


@pytest.mark.parametrize("n", [2, 5, 31])
def test_polymer_eigenvalues_are_those_of_the_path_laplacian(n):
    sde = PolymerSDE(N=n, a=A, b=0)
    j = torch.arange(n, dtype=torch.float64)
    torch.testing.assert_close(sde.D, A * (2 - 2 * torch.cos(math.pi * j / n)), rtol=0, atol=1e-14)
    # the eigenvectors are cosines: P[i, j] ~ cos(pi j (i + 1/2) / n)
    cosines = torch.cos(math.pi * j[None, :] * (j[:, None] + 0.5) / n)
    cosines = cosines / cosines.norm(dim=0)
    torch.testing.assert_close((sde.P * cosines).sum(0).abs(), torch.ones(n, dtype=torch.float64))


def test_J_is_built_from_edges_and_antiedges():
    sde = HarmonicSDE(N=4, edges=[(0, 1), (1, 2), (2, 3)], antiedges=[(0, 2)], a=2.0, b=0.5)
    expected = torch.tensor([[1.5, -2, 0.5, 0], [-2, 4, -2, 0], [0.5, -2, 3.5, -2], [0, 0, -2, 2]], dtype=torch.float64)
    torch.testing.assert_close(sde.J, expected)
    torch.testing.assert_close(HarmonicSDE(J=expected).D, sde.D)


def test_stationary_covariance_of_the_non_centre_modes_is_the_pseudo_inverse_of_J():
    sde = PolymerSDE(N=12, a=A, b=0.2 * A)
    assert sde.D[1] > 0
    far = 1e5 / sde.D[1].item()
    non_centre = sde.P[:, 1:]
    covariance = (non_centre * sde.eigens(far)[1:]) @ non_centre.T
    torch.testing.assert_close(covariance, torch.linalg.pinv(sde.J, hermitian=True), rtol=1e-9, atol=1e-9)


def test_eigens_is_accurate_where_D_t_is_small_and_t_on_the_centre_mode():
    sde = PolymerSDE(N=400, a=A, b=0)
    t = 1e-3
    lam = sde.eigens(t)
    exact = torch.from_numpy(-np.expm1(-np.longdouble(t) * sde.D.numpy().astype(np.longdouble)).astype(float))
    torch.testing.assert_close(lam[1:], exact[1:] / sde.D[1:], rtol=1e-14, atol=0)
    assert abs(lam[0].item() - t) < 1e-15 * t


def test_the_sampled_score_is_the_gradient_of_the_kernel_log_density():
    sde = PolymerSDE(N=9, a=A, b=0)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(9, 3, generator=g, dtype=torch.float64) * 4
    for t, k in ((0.05, 3), (2.0, None), (40.0, 6)):
        xt, score = sde.sample(t, x0, score=True, k=k, generator=g)
        _, adjusted = sde.sample(t, x0, score=True, k=k, adj=True, generator=torch.Generator().manual_seed(2))
        kept = slice(1, (k or 8) + 1)  # the non-centre modes that were noised

        def log_density(x, t=t, kept=kept):
            coeff = (sde.P.T @ x)[kept]
            mean = torch.exp(-t * sde.D[kept] / 2)[:, None] * (sde.P.T @ x0)[kept]
            return -0.5 * ((coeff - mean) ** 2 / sde.eigens(t)[kept][:, None]).sum()

        x = xt.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_density(x), x)
        torch.testing.assert_close(score, grad, rtol=1e-10, atol=1e-10)
        # the adjusted score adds J x_t: minus the gradient of the prior's log density -x^T J x / 2
        xt2, _ = sde.sample(t, x0, score=True, k=k, generator=torch.Generator().manual_seed(2))
        x = xt2.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_density(x) + 0.5 * (x * (sde.J @ x)).sum(), x)
        torch.testing.assert_close(adjusted, grad, rtol=1e-10, atol=1e-10)


def test_score_matches_sample_and_score_norm_is_the_rms_of_the_adjusted_score_under_the_prior():
    sde = PolymerSDE(N=6, a=A, b=0)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(6, 3, generator=g, dtype=torch.float64)
    x0 = x0 - x0.mean(0)
    xt, score = sde.sample(0.7, x0, score=True, generator=g)
    torch.testing.assert_close(sde.score(x0, xt, 0.7), score)
    # x0 from the prior: then E|adjusted score|^2 per coordinate is score_norm(adj=True)^2
    n_draws, t, k = 20000, 0.7, 3
    prior = sde.P[:, 1:] @ (torch.randn(5, 3 * n_draws, generator=g, dtype=torch.float64) / sde.D[1:, None].sqrt())
    prior = prior.view(6, 3, n_draws).permute(2, 0, 1)
    scores = torch.stack([sde.sample(t, x, score=True, k=k, adj=True, generator=g)[1] for x in prior[:2000]])
    rms = scores.pow(2).mean().sqrt()
    assert abs(rms / sde.score_norm(t, k, adj=True) - 1) < 0.03


def test_project_is_a_projector():
    sde = PolymerSDE(N=10, a=A, b=0)
    X = torch.randn(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for k, center in ((3, False), (3, True), (9, True), (0, False)):
        once = sde.project(X, k, center=center)
        torch.testing.assert_close(sde.project(once, k, center=center), once)
        torch.testing.assert_close((X - once).T @ once, torch.zeros(3, 3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(sde.project(X, None, center=True), X - X.mean(0))


@pytest.mark.parametrize("cls", [EntropySchedule, RateSchedule])
@pytest.mark.parametrize("n", [2, 15, 80])
def test_schedule_is_monotone_and_ends_at_tmin(cls, n):
    sde = PolymerSDE(N=n, a=A, b=0)
    sched = cls(sde, Hf=2, step=0.5, cutoff=5, kmin=5, tmin=0.01, alpha=1, beta=3)
    assert (sched.dt > 0).all() and (sched.dk >= 0).all()
    assert sched.ts[-1] <= 0.01 < sched.ts[-2] and sched.tmin == sched.ts[-1].item()
    assert abs(sde.KL_H(sched.tmax).item() - 2) < 1e-10
    assert sched.ks[-1] == n - 1 and sched.ks[0] >= min(5, n - 1)
    lam = sde.eigens(sched.ts)[:, 1:]
    if cls is EntropySchedule:  # each step lowers the log variance of every mode by at most `step`, one by exactly
        drop = (lam[:-1].log() - lam[1:].log()).max(dim=1).values
        torch.testing.assert_close(drop, torch.full_like(drop, 0.5))
    else:  # each step is step * the smallest variance of the active modes / (1 + alpha beta / 2)
        active = sde.D[1:] * sched.ts[:-1, None] < 5
        active[:, :5] = True
        expected = 0.5 * torch.where(active, lam[:-1], math.inf).min(dim=1).values / 2.5
        torch.testing.assert_close(sched.dt, expected)


def test_the_kernel_draws_times_uniform_in_rmsd():
    config = HarmonicConfig()
    sde = PolymerSDE(N=30, a=A, b=0)
    sde.make_schedule(Hf=2, step=0.5, tmin=0.01)
    kernel, g = ForwardDiffusionKernel(config), torch.Generator().manual_seed(0)
    draws = [kernel(torch.zeros(30, 3), sde, generator=g) for _ in range(300)]
    rmsd_min, rmsd_max = sde.rmsd(0.01).item(), sde.rmsd(sde.ts[-1]).item()
    for d in draws:
        assert abs(d.rmsd - (rmsd_min + d.step * (rmsd_max - rmsd_min))) < 1e-12
        assert abs(sde.rmsd(d.t).item() / d.rmsd - 1) < 0.02  # linear interpolation on the entropy schedule
        assert d.k == min(29, max(5, int((sde.D[1:] * d.t < 5).sum())))
        assert abs(d.score_norm - sde.score_norm(d.t, d.k, adj=True).item()) < 1e-12
    steps = torch.tensor([d.step for d in draws])
    assert 0.4 < steps.mean() < 0.6 and steps.min() < 0.05 and steps.max() > 0.95



@pytest.mark.parametrize("skew, mean, below_half", [(-5.0, 1 / 3, 0.75), (5.0, 2 / 3, 0.25)])
def test_train_skew_leans_the_noise_levels_like_eigenfold(skew, mean, below_half):
    # |skew| = 5: all but 2 / (1 + e^5) = 1.3% of the draws are Beta(1, 2) (mean 1/3, 75% below 1/2) or Beta(2, 1)
    sde = PolymerSDE(N=30, a=A, b=0)
    sde.make_schedule(Hf=2, step=0.5, tmin=0.01)
    kernel, g = ForwardDiffusionKernel(HarmonicConfig(train_skew=skew)), torch.Generator().manual_seed(1)
    draws = [kernel(torch.zeros(30, 3), sde, generator=g) for _ in range(600)]
    steps = torch.tensor([d.step for d in draws])
    assert abs(steps.mean().item() - mean) < 0.04
    assert abs((steps < 0.5).double().mean().item() - below_half) < 0.05
    rmsd_min, rmsd_max = sde.rmsd(0.01).item(), sde.rmsd(sde.ts[-1]).item()
    for d in draws[:50]:
        assert abs(d.rmsd - (rmsd_min + d.step * (rmsd_max - rmsd_min))) < 1e-12


def test_train_rmsd_max_caps_the_training_rmsd():
    sde = PolymerSDE(N=30, a=A, b=0)
    sde.make_schedule(Hf=2, step=0.5, tmin=0.01)
    assert sde.rmsd(sde.ts[-1]).item() > 4
    kernel, g = ForwardDiffusionKernel(HarmonicConfig(train_rmsd_max=2.0)), torch.Generator().manual_seed(2)
    rmsd_min = sde.rmsd(0.01).item()
    for _ in range(100):
        d = kernel(torch.zeros(30, 3), sde, generator=g)
        assert abs(d.rmsd - (rmsd_min + d.step * (2.0 - rmsd_min))) < 1e-12
        assert abs(sde.rmsd(d.t).item() / d.rmsd - 1) < 0.02


def test_train_band_draws_its_share_of_noise_levels_within_the_band():
    sde = PolymerSDE(N=40, a=A, b=0)
    sde.make_schedule(Hf=2, step=0.5, tmin=0.01)
    low, high = sde.rmsd(1.0).item(), sde.rmsd(5.0).item()
    band = dict(train_band_tmin=1.0, train_band_tmax=5.0)
    only_band = ForwardDiffusionKernel(HarmonicConfig(**band, train_band_weight=1.0))
    g = torch.Generator().manual_seed(3)
    draws = [only_band(torch.zeros(40, 3), sde, generator=g) for _ in range(400)]
    for d in draws:
        assert abs(d.rmsd - (low + d.step * (high - low))) < 1e-12  # uniform in RMSD across the band
        assert 0.98 < d.t < 5.1
    steps = torch.tensor([d.step for d in draws])
    assert abs(steps.mean().item() - 0.5) < 0.05 and steps.min() < 0.05 and steps.max() > 0.95
    # with weight 0.4, 40% of the draws come from the band on top of the uniform draws that fall there anyway
    uniform_share = (high - low) / (sde.rmsd(sde.ts[-1]).item() - sde.rmsd(0.01).item())
    mixed, g = ForwardDiffusionKernel(HarmonicConfig(**band, train_band_weight=0.4)), torch.Generator().manual_seed(4)
    in_band = torch.tensor([low <= mixed(torch.zeros(40, 3), sde, generator=g).rmsd <= high for _ in range(1000)])
    assert abs(in_band.double().mean().item() - (0.4 + 0.6 * uniform_share)) < 0.05


def test_train_band_above_a_short_chains_range_is_cut_to_it():
    sde = PolymerSDE(N=12, a=A, b=0)
    sde.make_schedule(Hf=2, step=0.5, tmin=0.01)
    kernel = ForwardDiffusionKernel(HarmonicConfig(train_band_tmin=1.0, train_band_tmax=1e6, train_band_weight=1.0))
    g, rmsd_max = torch.Generator().manual_seed(5), sde.rmsd(sde.ts[-1]).item()
    for _ in range(100):
        d = kernel(torch.zeros(12, 3), sde, generator=g)
        assert sde.rmsd(1.0).item() - 1e-12 <= d.rmsd <= rmsd_max + 1e-12 and d.t <= sde.ts[-1].item() * 1.001


@pytest.mark.parametrize("band, match", [
    (dict(train_band_weight=1.5), "train_band_weight"),
    (dict(train_band_weight=0.5), "0 < train_band_tmin < train_band_tmax"),
    (dict(train_band_tmin=5.0, train_band_tmax=1.0, train_band_weight=0.5), "0 < train_band_tmin < train_band_tmax"),
    (dict(train_band_tmax=math.inf, train_band_weight=0.5), "finite"),
])
def test_bad_training_band_is_refused(band, match):
    with pytest.raises(ValueError, match=match):
        HarmonicConfig(**band)


@pytest.mark.parametrize("field, value", [("train_skew", math.nan), ("train_skew", True),
                                          ("train_rmsd_max", -1.0), ("train_rmsd_max", math.inf)])  # fmt: skip
def test_bad_skew_or_rmsd_cap_is_refused(field, value):
    with pytest.raises(ValueError, match=field):
        HarmonicConfig(**{field: value})


# ---------------------------------------------------------------- EigenFold's numbers


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE))


def close(mine, theirs, rtol):
    mine = mine.detach().numpy() if torch.is_tensor(mine) else np.asarray(mine)
    scale = np.abs(theirs).max()
    assert np.abs(mine - theirs).max() <= rtol * scale, np.abs(mine - theirs).max() / scale


@pytest.mark.parametrize("n", [7, 40])
def test_eigenfold_numbers(reference, n):
    sde = PolymerSDE(N=n, a=A, b=0)
    times = reference["times"]
    close(sde.D, reference[f"{n}/D"], 1e-14)
    close(torch.stack([sde.eigens(t)[1:] for t in times]), reference[f"{n}/eigens"], 1e-8)
    close(sde.rmsd(torch.tensor(times)), reference[f"{n}/rmsd"], 1e-10)
    close(sde.KL_H(torch.tensor(times)), reference[f"{n}/KL_H"], 1e-10)
    norms = [[sde.score_norm(t, k, adj).item() for k in (None, 3) for adj in (False, True)] for t in times]
    close(np.array(norms), reference[f"{n}/score_norm"], 1e-8)
    # EigenFold's z is in its eigenbasis: flip ours to the same signs
    sign = torch.sign((sde.P * torch.from_numpy(reference[f"{n}/P"])).sum(0))[:, None]
    x, z = torch.from_numpy(reference[f"{n}/x"]), torch.from_numpy(reference[f"{n}/z"])
    for t, expected in zip(times, reference[f"{n}/sample_k3_adj"]):
        xt, score = sde.sample(t, x, score=True, k=3, adj=True, noise=z * sign)
        close(xt, expected[0], 1e-10)
        close(score, expected[1], 1e-9)
    for cls in (EntropySchedule, RateSchedule):
        for alpha, beta in ((0, 1), (1, 3)):
            sched = cls(sde, Hf=2, rmsd_max=0, step=0.5, cutoff=5, kmin=5, tmin=0.01, alpha=alpha, beta=beta)
            key = f"{n}/{cls.__name__}/{alpha}/{beta}"
            assert sched.ts.shape == reference[key + "/ts"].shape
            close(sched.ts, reference[key + "/ts"], 1e-12)
            assert (sched.ks.numpy() == reference[key + "/ks"]).all()
    sde.make_schedule(Hf=2, step=0.5, tmin=0.01)
    close(torch.stack([sde.ts, sde.rmsds, sde.hs]), reference[f"{n}/table"], 1e-10)


@pytest.mark.parametrize("n", [7, 40])
def test_eigenfold_kernel_and_sampler(reference, n, monkeypatch):
    import tpconv_lite.harmonic as harmonic

    diffusion = HarmonicDiffusion(HarmonicConfig(inf_type="rate", alpha=1, beta=3))
    sde = diffusion.sde(n)
    sign = torch.sign((sde.P * torch.from_numpy(reference[f"{n}/P"])).sum(0))[:, None]
    x, z = torch.from_numpy(reference[f"{n}/x"]), torch.from_numpy(reference[f"{n}/z"])
    for step, (t, k, norm, rmsd) in zip(reference["steps"], reference[f"{n}/kernel"]):
        monkeypatch.setattr(harmonic, "_rand", lambda generator, dtype, step=step: float(step))
        monkeypatch.setattr(harmonic, "_randn", lambda shape, generator, dtype, device: z * sign)
        draw = diffusion.kernel(x, sde)
        assert draw.k == k
        close(torch.tensor([draw.t, draw.score_norm, draw.rmsd], dtype=torch.float64), np.array([t, norm, rmsd]), 1e-10)
        close(draw.pos, reference[f"{n}/kernel/{step}"][0], 1e-10)
        close(draw.score, reference[f"{n}/kernel/{step}"][1], 1e-10)
    monkeypatch.undo()
    # EigenFold's sampler with the same noise: ours needs its eigenvectors' signs
    sde.P = sde.P * sign.T
    Y = diffusion.reverse_sample(fake_model, [torch.zeros(n, 1, dtype=torch.float64)],
                                 [torch.zeros(n, n, 1, dtype=torch.float64)],
                                 generator=torch.Generator().manual_seed(7))  # fmt: skip
    close(Y[0], reference[f"{n}/reverse_sample"], 1e-9)


# ---------------------------------------------------------------- batches, symmetry, reproducibility


def test_a_batch_equals_its_chains_one_at_a_time():
    diffusion = HarmonicDiffusion()
    pos, node, pair = chains()
    model = small_model()
    seeds = [11, 12, 13]
    data, score = diffusion.noised_batch(pos, node, pair, generator=[torch.Generator().manual_seed(s) for s in seeds])
    pred = model(data)
    start = 0
    for b, s in enumerate(seeds):
        g = torch.Generator().manual_seed(s)
        one, one_score = diffusion.noised_batch([pos[b]], [node[b]], [pair[b]], generator=g)
        n = pos[b].shape[0]
        torch.testing.assert_close(data.resi.pos[start : start + n], one.resi.pos)
        torch.testing.assert_close(score[start : start + n], one_score)
        torch.testing.assert_close(data.score_norm[b : b + 1], one.score_norm)
        torch.testing.assert_close(pred[start : start + n], model(one))
        start += n
    samples = diffusion.reverse_sample(model, node, pair, generator=[torch.Generator().manual_seed(s) for s in seeds])
    for b, s in enumerate(seeds):
        alone = diffusion.reverse_sample(model, [node[b]], [pair[b]], generator=torch.Generator().manual_seed(s))
        torch.testing.assert_close(samples[b], alone[0])
    assert len(diffusion._sdes) == 3  # one eigendecomposition per length, reused


def test_the_training_loss_is_invariant_when_the_chain_is_rotated():
    # the kernel commutes with rotations (noise rotated along, an isotropic Gaussian either way) ...
    sde = PolymerSDE(N=10, a=A, b=0)
    g = torch.Generator().manual_seed(0)
    x0, z = torch.randn(10, 3, generator=g, dtype=torch.float64), torch.randn(10, 3, generator=g, dtype=torch.float64)
    R = random_o3(generator=g)
    R = R * torch.det(R)  # a proper rotation
    xt, score = sde.sample(1.3, x0, score=True, k=6, adj=True, noise=z)
    xt_r, score_r = sde.sample(1.3, x0 @ R.T, score=True, k=6, adj=True, noise=z @ R.T)
    torch.testing.assert_close(xt_r, xt @ R.T)
    torch.testing.assert_close(score_r, score @ R.T)
    # ... and the model and loss do not see the orientation
    diffusion, model = HarmonicDiffusion(), small_model()
    pos, node, pair = chains()
    data, score = diffusion.noised_batch(pos, node, pair, generator=torch.Generator().manual_seed(5))
    loss, base = harmonic_loss(data, model(data), score)
    data.resi.pos = data.resi.pos @ R.T
    loss_r, base_r = harmonic_loss(data, model(data), score @ R.T)
    torch.testing.assert_close(loss_r, loss)
    torch.testing.assert_close(base_r, base)
    assert 0.2 < base.item() < 5


def test_generators_make_everything_reproducible():
    diffusion, model = HarmonicDiffusion(), small_model()
    pos, node, pair = chains()

    def run(seed):
        data, score = diffusion.noised_batch(pos, node, pair, generator=torch.Generator().manual_seed(seed))
        return torch.cat([data.resi.pos, score, data.resi.node_t[:, None].expand(-1, 3)])

    torch.testing.assert_close(run(1), run(1), rtol=0, atol=0)
    assert not torch.allclose(run(1), run(2))

    def sample(seed):
        return diffusion.reverse_sample(model, node[:1], pair[:1], generator=torch.Generator().manual_seed(seed))[0]

    torch.testing.assert_close(sample(3), sample(3), rtol=0, atol=0)
    assert not torch.allclose(sample(3), sample(4))


def test_sampling_options_end_time_and_last_step_noise():
    pos, node, pair = chains()
    default = HarmonicDiffusion(HarmonicConfig(inf_type="entropy"))
    low = HarmonicDiffusion(HarmonicConfig(inf_type="entropy", inf_tmin=1e-3))
    assert low.schedule(10).tmin <= 1e-3 < 0.01 < default.schedule(10).ts[-2]
    quiet = HarmonicDiffusion(HarmonicConfig(inf_type="entropy", inf_noise_last_step=False))
    g_default, g_quiet = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    y_default = default.reverse_sample(fake_model, node[:1], pair[:1], generator=g_default)[0]
    y_quiet = quiet.reverse_sample(fake_model, node[:1], pair[:1], generator=g_quiet)[0]
    # the quiet run skips exactly the last draw, the noise of the last step
    last_noise = torch.randn(10, 3, generator=g_quiet, dtype=torch.float64)
    torch.testing.assert_close(torch.randn(10, 3, generator=g_quiet), torch.randn(10, 3, generator=g_default))
    sched, sde = default.schedule(10), default.sde(10)
    expected = math.sqrt(sched.dt[-1].item()) * sde.project(last_noise, int(sched.ks[-2]))
    torch.testing.assert_close(y_default - y_quiet, expected)


def test_alpha_windows_set_the_alpha_and_the_step_of_the_times_they_hold():
    sde = PolymerSDE(N=40, a=3 / 3.8**2, b=0)
    settings = dict(Hf=2, step=1.4, cutoff=5, kmin=5, tmin=0.002, alpha=0.5, beta=16)
    plain = RateSchedule(sde, **settings)
    windowed = RateSchedule(sde, **settings, alpha_windows=[(1, 2, 16), (2, math.inf, 0)])
    starts, ends = windowed.ts[:-1], windowed.ts[1:]
    inside = (starts > 1) & (starts <= 2)
    expected = torch.where(inside, 16.0, torch.where(starts > 2, 0.0, 0.5)).to(starts.dtype)
    torch.testing.assert_close(windowed.alphas, expected, rtol=0, atol=0)
    assert torch.equal(plain.alphas, torch.full_like(plain.alphas, 0.5))
    # the steps end on the edges: no step crosses t = 1 or t = 2, and both are times of the schedule
    for edge in (1.0, 2.0):
        assert not ((starts > edge) & (ends < edge)).any() and (windowed.ts == edge).sum() == 1
    # each step is the rate step with its own alpha (the smallest over the kept modes), or shorter where it ends
    # on an edge
    for i in range(windowed.N):
        t, a = starts[i].item(), windowed.alphas[i].item()
        k = max(5, int((windowed.D * t < 5).sum()))
        rate = (1.4 * -torch.expm1(-windowed.D * t) / windowed.D / (1 + a * 16 / 2))[:k].min()
        if ends[i].item() in (1.0, 2.0):
            assert windowed.dt[i] <= rate
        else:
            torch.testing.assert_close(windowed.dt[i], rate)
    # a window with the schedule's own alpha changes nothing above its upper edge, where it only stops a step,
    # and takes at most two steps more (one per edge); alpha 16 inside takes many more steps
    same = RateSchedule(sde, **settings, alpha_windows=[(1, 2, 0.5)])
    above = int((plain.ts > 2).sum())
    assert torch.equal(same.ts[:above], plain.ts[:above]) and same.ts[above] == 2 and same.N <= plain.N + 2
    assert int(inside.sum()) > 4 * int(((plain.ts[:-1] > 1) & (plain.ts[:-1] <= 2)).sum())


def test_the_reverse_step_uses_the_alpha_of_its_window():
    pos, node, pair = chains()
    windows = ((1.0, 2.0, 16.0), (2.0, math.inf, 0.0))
    diffusion = HarmonicDiffusion(HarmonicConfig(inf_step=1.4, alpha=0.5, beta=16, alpha_windows=windows))
    sde, sched = diffusion.sde(10), diffusion.schedule(10)
    y, score, noise = (torch.randn(10, 3, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                       for s in range(3))  # fmt: skip
    for i in range(sched.N):
        a, dt = sched.alphas[i].item(), sched.dt[i].item()
        drift = -(1 + 16 * a) * sde.P @ (sde.D[:, None] * (sde.P.T @ y)) / 2 + (1 + 8 * a) * score
        expected = y + sde.project(drift * dt + math.sqrt((1 + a) * dt) * noise, int(sched.ks[i]))
        torch.testing.assert_close(reverse_step(sde, sched, i, y, score, noise), expected)
    assert {a.item() for a in sched.alphas} == {0.0, 0.5, 16.0}
    y_sample = diffusion.reverse_sample(fake_model, node[:1], pair[:1], generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(y_sample[0]).all()


@pytest.mark.parametrize(
    "windows", [[(1, 0.5, 2)], [(0.5, 1, -1)], [(0.5, 1)], [(0.5, 1, math.nan)], [(0.5, 1, True)], [0.5]]
)
def test_bad_alpha_windows_are_refused(windows):
    with pytest.raises(ValueError, match="alpha window"):
        HarmonicConfig(alpha_windows=windows)


def test_gpu_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    pos, node, pair = chains()
    cpu, gpu = HarmonicDiffusion(), HarmonicDiffusion(device="cuda")
    data, score = cpu.noised_batch(pos, node, pair, generator=torch.Generator().manual_seed(0))
    data_g, score_g = gpu.noised_batch(pos, node, pair, generator=torch.Generator().manual_seed(0))
    assert score_g.device.type == "cuda" and score_g.dtype == torch.float64
    torch.testing.assert_close(score_g.cpu(), score)
    torch.testing.assert_close(data_g.resi.pos.cpu(), data.resi.pos)


# ---------------------------------------------------------------- bad input


def test_bad_input_is_refused_with_a_message():
    with pytest.raises(ValueError, match="N must be"):
        PolymerSDE(N=0, a=A, b=0)
    with pytest.raises(ValueError, match="pair"):
        HarmonicSDE(N=3, edges=[(0, 3)])
    with pytest.raises(ValueError, match="symmetric"):
        HarmonicSDE(J=torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    sde = PolymerSDE(N=5, a=A, b=0)
    with pytest.raises(ValueError, match="shape"):
        sde.sample(1.0, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="infinite"):
        sde.sample(0.0, torch.zeros(5, 3), score=True)
    with pytest.raises(ValueError, match="k must be"):
        sde.project(torch.zeros(5, 3), 7)
    with pytest.raises(ValueError, match="times must be"):
        sde.eigens(-1.0)
    with pytest.raises(ValueError, match="no root"):
        EntropySchedule(sde, Hf=1e6, tmin=0.01)
    with pytest.raises(ValueError, match="make_schedule"):
        ForwardDiffusionKernel(HarmonicConfig())(torch.zeros(5, 3), sde)
    with pytest.raises(ValueError, match="inf_type"):
        HarmonicConfig(inf_type="linear")
    with pytest.raises(ValueError, match="train_kmin"):
        HarmonicConfig(train_kmin=0)
    with pytest.raises(ValueError, match="lacks"):
        HarmonicConfig.from_args(object())
    diffusion = HarmonicDiffusion()
    with pytest.raises(ValueError, match="at least 2 residues"):
        diffusion.sde(1)
    pos, node, pair = chains()
    with pytest.raises(ValueError, match="one torch.Generator per chain"):
        diffusion.noised_batch(pos, node, pair, generator=[torch.Generator()])
    with pytest.raises(ValueError, match="node_attr"):
        diffusion.noised_batch(pos, node[:2], pair)


@pytest.mark.parametrize("blow_up", [lambda pos: 1e3 * pos, lambda pos: pos * float("nan")])
def test_a_reverse_process_that_diverges_stops_with_an_error(blow_up) -> None:
    """Scores that push the chain outwards without bound (or NaN) end the sampling with an error, not a sample."""
    diffusion = HarmonicDiffusion(HarmonicConfig())
    n = 20
    with pytest.raises(RuntimeError, match=r"the reverse diffusion diverged: chain 0 \(20 residues\) reached"):
        diffusion.reverse_sample(lambda data: blow_up(data.resi.pos), [torch.zeros(n, 1, dtype=torch.float64)],
                                 [torch.zeros(n, n, 1, dtype=torch.float64)], generator=torch.Generator().manual_seed(0))
