"""Tests of tpconv_lite.embeddings against the formulas written out element by element."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from tpconv_lite.embeddings import GaussianFourierProjection, get_timestep_embedding, sinusoidal_embedding


def reference_sinusoidal(values: list[float], dim: int, max_positions: float) -> torch.Tensor:
    """sin/cos of x * max_positions ** (-k / (half - 1)), one number at a time."""
    half = dim // 2
    rows = []
    for x in values:
        freqs = [max_positions ** (-k / (half - 1)) for k in range(half)]
        row = [math.sin(x * f) for f in freqs] + [math.cos(x * f) for f in freqs] + [0.0] * (dim % 2)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("dim", [4, 5, 16, 33])
@pytest.mark.parametrize("max_positions", [10000, 50.0])
def test_sinusoidal_matches_formula(dim, max_positions):
    values = [0.0, 1.0, 3.5, 123.0, 9999.0]
    out = sinusoidal_embedding(torch.tensor(values, dtype=torch.float64), dim, max_positions=max_positions)
    assert out.shape == (len(values), dim)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference_sinusoidal(values, dim, max_positions), rtol=1e-12, atol=1e-12)


def test_sinusoidal_odd_dim_pads_one_zero_column():
    out = sinusoidal_embedding(torch.linspace(0, 100, 7), 9)
    assert out.shape == (7, 9)
    assert torch.all(out[:, -1] == 0)
    torch.testing.assert_close(out[:, :8], sinusoidal_embedding(torch.linspace(0, 100, 7), 8))


def test_sinusoidal_integer_input_uses_default_dtype():
    offsets = torch.tensor([-3, -1, 1, 2])
    out = sinusoidal_embedding(offsets, 6)
    assert out.dtype == torch.get_default_dtype()
    torch.testing.assert_close(out, sinusoidal_embedding(offsets.float(), 6))


def test_fourier_matches_formula():
    torch.manual_seed(0)
    module = GaussianFourierProjection(embedding_size=7, scale=3.0).double()
    assert module.W.shape == (3,) and not module.W.requires_grad
    x = torch.tensor([0.0, 0.25, 1.7], dtype=torch.float64)
    out = module(x)
    expected = torch.tensor(
        [
            [math.sin(2 * math.pi * xi * w) for w in module.W.tolist()]
            + [math.cos(2 * math.pi * xi * w) for w in module.W.tolist()]
            + [0.0]
            for xi in x.tolist()
        ],
        dtype=torch.float64,
    )
    assert out.shape == (3, 7)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_fourier_frequencies_have_the_requested_scale():
    torch.manual_seed(1)
    module = GaussianFourierProjection(embedding_size=20000, scale=5.0)
    assert abs(float(module.W.std()) - 5.0) < 0.15
    assert "W" in module.state_dict() and not any(p.requires_grad for p in module.parameters())


def test_get_timestep_embedding_dispatches():
    x = torch.tensor([0.0, 10.0, 5000.0])
    sinusoidal = get_timestep_embedding("sinusoidal", 12, embedding_scale=100)
    torch.testing.assert_close(sinusoidal(x), sinusoidal_embedding(x, 12, max_positions=100))
    pickle.dumps(sinusoidal)  # a model holding it can be pickled whole

    fourier = get_timestep_embedding("fourier", 11, embedding_scale=2.0)
    assert isinstance(fourier, GaussianFourierProjection)
    assert fourier(x).shape == (3, 11)


def test_bad_inputs_raise_clear_errors():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="embedding_type must be 'sinusoidal' or 'fourier', got 'cosine'"):
        get_timestep_embedding("cosine", 8)
    for dim in (0, -4, 3, 2.5):
        with pytest.raises(ValueError, match="embedding_dim must be an integer >= 4"):
            sinusoidal_embedding(x, dim)
    with pytest.raises(ValueError, match="embedding_dim must be an integer >= 2"):
        GaussianFourierProjection(0)
    with pytest.raises(ValueError, match="embedding_dim must be an integer >= 4"):
        get_timestep_embedding("sinusoidal", -1)
    with pytest.raises(ValueError, match=r"timesteps must be a 1-D tensor of shape \(N,\), got \(3, 1\)"):
        sinusoidal_embedding(torch.zeros(3, 1), 8)
    with pytest.raises(ValueError, match="x must be a 1-D tensor"):
        GaussianFourierProjection(8)(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="scale must be > 0"):
        GaussianFourierProjection(8, scale=0.0)
    with pytest.raises(ValueError, match="max_positions must be > 1"):
        sinusoidal_embedding(x, 8, max_positions=1)
