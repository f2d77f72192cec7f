"""Cross-check of FusedTensorProduct against e3x's FusedTensor (skipped unless jax and e3x are importable).

e3x is not a dependency of the package. To run these tests without touching the project environment:
``pip install --target /tmp/e3x-site jax e3x`` and ``PYTHONPATH=/tmp/e3x-site pytest tests/test_fused_e3x.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from e3nn import o3

jax = pytest.importorskip("jax", reason="the e3x cross-check needs jax (pip install jax e3x)")
e3x = pytest.importorskip("e3x", reason="the e3x cross-check needs e3x (pip install jax e3x)")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy

from tpconv_lite.fused import FusedTensorProduct  # noqa: E402

MAX_DEGREE = 6


def change_of_basis(max_degree: int) -> np.ndarray:
    """Q with ``e3x_sh = e3nn_sh @ Q``: block diagonal, one orthogonal (2l+1, 2l+1) block per degree.

    Both libraries' spherical harmonics (e3x: ``cartesian_order=True``, ``'4pi'``; e3nn: ``'component'``, the same
    scale) are evaluated at the same points, and each block is solved for by least squares.
    """
    points = np.random.default_rng(0).normal(size=(400, 3))
    e3x_sh = np.asarray(e3x.so3.spherical_harmonics(jnp.asarray(points), max_degree, normalization="4pi"))
    e3nn_sh = o3.spherical_harmonics(
        list(range(max_degree + 1)), torch.from_numpy(points), normalize=True, normalization="component"
    ).numpy()
    q = np.zeros(((max_degree + 1) ** 2,) * 2)
    for l in range(max_degree + 1):
        block = slice(l**2, (l + 1) ** 2)
        q[block, block] = np.linalg.lstsq(e3nn_sh[:, block], e3x_sh[:, block], rcond=None)[0]
    np.testing.assert_allclose(e3nn_sh @ q, e3x_sh, atol=1e-12)
    return q


Q = change_of_basis(MAX_DEGREE)


def to_e3x_basis(x: np.ndarray) -> np.ndarray:
    """(..., (L+1)**2, F) from e3nn's real basis to e3x's."""
    n = x.shape[-2]
    return np.einsum("...nf,nm->...mf", x, Q[:n, :n])


def test_change_of_basis_is_orthogonal_identity_up_to_l1_and_not_a_permutation_beyond():
    np.testing.assert_allclose(Q @ Q.T, np.eye(len(Q)), atol=1e-12)
    np.testing.assert_allclose(Q[:4, :4], np.eye(4), atol=1e-12)  # l = 1 is (x, y, z) in both
    assert np.abs(np.abs(Q[4:9, 4:9]) - np.round(np.abs(Q[4:9, 4:9]))).max() > 0.1


def test_e3x_clebsch_gordan_is_wigner_3j_times_sqrt_2l3_plus_1():
    cg = np.asarray(e3x.so3.clebsch_gordan(3, 3, 3, cartesian_order=True))
    for l1 in range(4):
        for l2 in range(4):
            for l3 in range(abs(l1 - l2), min(l1 + l2, 3) + 1):
                b1, b2, b3 = (slice(l**2, (l + 1) ** 2) for l in (l1, l2, l3))
                in_e3nn_basis = np.einsum("ia,jb,abc,kc->ijk", Q[b1, b1], Q[b2, b2], cg[b1, b2, b3], Q[b3, b3])
                expected = math.sqrt(2 * l3 + 1) * o3.wigner_3j(l1, l2, l3, dtype=torch.float64).numpy()
                np.testing.assert_allclose(in_e3nn_basis, expected, atol=1e-13)


CASES = [  # (P1, P2, L1, L2, L3, include_pseudotensors): e3x compiles every op for every shape, so keep this short
    (2, 2, 2, 2, 2, True),
    (1, 1, 2, 3, 3, True),
    (1, 2, 3, 2, 4, True),
    (1, 1, 0, 2, 2, True),
    (2, 2, 3, 3, 3, False),
    (2, 2, 3, 5, 5, True),  # includes the path 3 x 5 -> 5 that both lose
]


@pytest.mark.parametrize("p1, p2, l1, l2, l3, pseudo", CASES)
def test_same_kernels_same_output_as_e3x(p1, p2, l1, l2, l3, pseudo):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, p1, (l1 + 1) ** 2, 4))
    y = rng.normal(size=(6, p2, (l2 + 1) ** 2, 4))
    x_e3x, y_e3x = jnp.asarray(to_e3x_basis(x)), jnp.asarray(to_e3x_basis(y))
    fused = e3x.nn.FusedTensor(max_degree=l3, include_pseudotensors=pseudo, param_dtype=jnp.float64)
    params = fused.init(jax.random.PRNGKey(0), x_e3x, y_e3x)["params"]
    expected = np.asarray(fused.apply({"params": params}, x_e3x, y_e3x))

    tp = FusedTensorProduct(4, l1, l2, l3, p1, p2, pseudo).double()
    ours = dict(tp.named_parameters())
    assert sorted(ours) == sorted(params)
    with torch.no_grad():
        for name, value in params.items():
            assert ours[name].shape == value.shape, name
            assert torch.equal(ours[name] == 0, torch.from_numpy(np.asarray(value) == 0)), f"{name}: zero pattern"
            ours[name].copy_(torch.from_numpy(np.array(value)))
        got = tp(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    assert got.shape == expected.shape
    error = np.abs(to_e3x_basis(got) - expected).max()
    assert error < 1e-12 * max(1.0, np.abs(expected).max()), error
