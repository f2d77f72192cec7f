"""Regenerate tpconv_lite/assets/e3x_fused.npz: outputs of e3x's FusedTensor, for chapter 7 and tests/test_fused.py.

e3x (JAX) is not a dependency of the book; this script runs it once, in a separate environment, and stores inputs,
kernels and outputs, so that the comparison with ``tpconv_lite.fused.FusedTensorProduct`` runs everywhere:

    python -m venv /tmp/e3x-venv && /tmp/e3x-venv/bin/pip install "jax[cpu]" e3x torch e3nn numpy
    PYTHONPATH=. /tmp/e3x-venv/bin/python tests/make_e3x_reference.py tpconv_lite/assets/e3x_fused.npz

Everything is float64. Inputs and outputs are stored in e3nn's real basis of spherical harmonics (the basis of
``FusedTensorProduct``) and in e3x's layout ``(batch, parity, (L+1)**2, features)``; the script converts them to
e3x's basis and back with the change of basis of tests/test_fused_e3x.py. Keys: ``cases`` (one row ``P1, P2, L1,
L2, L3, include_pseudotensors`` per case), and for case ``i``: ``case{i}__x``, ``case{i}__y``,
``case{i}__output`` and ``case{i}__kernel__{name}`` (the parameters of e3x's module, by its names, which are those
of ``FusedTensorProduct``); ``versions`` (jax, e3x).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from e3nn import o3

CASES = [  # (P1, P2, L1, L2, L3, include_pseudotensors)
    (2, 2, 2, 2, 2, True),
    (1, 2, 3, 2, 4, True),
    (2, 2, 3, 5, 5, True),  # includes the path 3 x 5 -> 5 that the fused product loses
]
NUM_FEATURES, BATCH = 4, 6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="path of the .npz to write")
    args = parser.parse_args(argv)
    import e3x  # imported here: collecting this file (pytest --doctest-modules) must not need JAX
    import jax

    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy

    max_degree = max(max(case[2:5]) for case in CASES)
    points = np.random.default_rng(0).normal(size=(400, 3))
    e3x_sh = np.asarray(e3x.so3.spherical_harmonics(jnp.asarray(points), max_degree, normalization="4pi"))
    e3nn_sh = o3.spherical_harmonics(
        list(range(max_degree + 1)), torch.from_numpy(points), normalize=True, normalization="component"
    ).numpy()
    q = np.zeros(((max_degree + 1) ** 2,) * 2)  # e3x_sh = e3nn_sh @ q, one orthogonal block per degree
    for l in range(max_degree + 1):
        block = slice(l**2, (l + 1) ** 2)
        q[block, block] = np.linalg.lstsq(e3nn_sh[:, block], e3x_sh[:, block], rcond=None)[0]
    np.testing.assert_allclose(e3nn_sh @ q, e3x_sh, atol=1e-12)

    def to_e3x(x: np.ndarray) -> np.ndarray:
        n = x.shape[-2]
        return np.einsum("...nf,nm->...mf", x, q[:n, :n])

    def to_e3nn(x: np.ndarray) -> np.ndarray:
        n = x.shape[-2]
        return np.einsum("...mf,nm->...nf", x, q[:n, :n])

    rng = np.random.default_rng(1)
    arrays = {"cases": np.array(CASES, dtype=np.int64), "versions": np.array([jax.__version__, e3x.__version__])}
    for i, (p1, p2, l1, l2, l3, pseudo) in enumerate(CASES):
        x = rng.normal(size=(BATCH, p1, (l1 + 1) ** 2, NUM_FEATURES))
        y = rng.normal(size=(BATCH, p2, (l2 + 1) ** 2, NUM_FEATURES))
        x_e3x, y_e3x = jnp.asarray(to_e3x(x)), jnp.asarray(to_e3x(y))
        fused = e3x.nn.FusedTensor(max_degree=l3, include_pseudotensors=bool(pseudo), param_dtype=jnp.float64)
        params = fused.init(jax.random.PRNGKey(i), x_e3x, y_e3x)["params"]
        output = np.asarray(fused.apply({"params": params}, x_e3x, y_e3x))
        arrays.update({f"case{i}__x": x, f"case{i}__y": y, f"case{i}__output": to_e3nn(output)})
        arrays.update({f"case{i}__kernel__{name}": np.asarray(value) for name, value in params.items()})
    np.savez_compressed(args.output, **arrays)
    print(f"wrote {args.output}: {len(CASES)} cases, jax {jax.__version__}, e3x {e3x.__version__}")


if __name__ == "__main__":
    main()
