"""Regenerate tests/eigenfold_harmonic_reference.npz from EigenFold's own numpy code (used by tests/test_harmonic.py).

    git clone https://github.com/bjing2016/EigenFold /tmp/EigenFold   # or: git archive of a mirror
    python tests/make_eigenfold_reference.py /tmp/EigenFold

Needs numpy, scipy and torch; EigenFold's sampling.py imports torch_geometric only for a base class, which is
stubbed. EigenFold stores P in float32 (FLOAT_TYPE) and its CPU sampler mixes numpy and torch arrays and fails;
this script sets FLOAT_TYPE to float64 and runs the sampler's torch path on the CPU in float64, with its random
draws taken from a seeded torch.Generator in the order tpconv_lite.harmonic draws them. Nothing of EigenFold is
stored in this repository but the numbers.
"""

import argparse
import sys
import types
from pathlib import Path

import numpy as np
import torch

A = 3 / 3.8**2
TIMES = [0.003, 0.01, 0.3, 7.0, 300.0]
STEPS = [0.0, 0.37, 0.999]
LENGTHS = [7, 40]
SEED = 7


class Data(types.SimpleNamespace):
    """The fields of a PyG HeteroData that EigenFold's ForwardDiffusionKernel reads, with data["resi"]."""

    def __getitem__(self, key):
        return self.resi


def fake_score(Y: torch.Tensor, t: float, score_norm: float) -> torch.Tensor:
    """A deterministic stand-in for the score model (the same function is in tests/test_harmonic.py)."""
    return -0.5 * Y / (1 + t) + 0.1 * score_norm * torch.tanh(Y)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("eigenfold", type=Path, help="a checkout of bjing2016/EigenFold")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("eigenfold_harmonic_reference.npz"))
    root = parser.parse_args()
    sys.path.insert(0, str(root.eigenfold))
    stub = types.ModuleType("torch_geometric.transforms")
    stub.BaseTransform = object
    sys.modules["torch_geometric"] = types.SimpleNamespace(transforms=stub)
    sys.modules["torch_geometric.transforms"] = stub
    import diffusion.sde as ef_sde

    ef_sde.FLOAT_TYPE = np.float64
    from diffusion import PolymerSDE
    from diffusion import sampling as ef_sampling
    from diffusion import schedule as ef_schedule

    out: dict[str, np.ndarray] = {"times": np.array(TIMES), "steps": np.array(STEPS), "lengths": np.array(LENGTHS)}
    for n in LENGTHS:
        sde = PolymerSDE(N=n, a=A, b=0)
        out[f"{n}/D"], out[f"{n}/P"] = sde.D, sde.P
        out[f"{n}/eigens"] = np.stack([sde.eigens(t)[1:] for t in TIMES])
        out[f"{n}/rmsd"] = np.array([sde.rmsd(t) for t in TIMES])
        out[f"{n}/KL_H"] = np.array([sde.KL_H(t) for t in TIMES])
        out[f"{n}/score_norm"] = np.array([[sde.score_norm(t, k, adj) for k in (None, 3) for adj in (False, True)]
                                           for t in TIMES])  # fmt: skip
        rng = np.random.default_rng(n)
        x, z = 5 * rng.standard_normal((n, 3)), rng.standard_normal((n, 3))
        out[f"{n}/x"], out[f"{n}/z"] = x, z
        samples = []
        for t in TIMES:
            np.random.randn = lambda *shape: z.copy()
            samples.append(np.stack(sde.sample(t, x.copy(), score=True, k=3, adj=True)))
        out[f"{n}/sample_k3_adj"] = np.stack(samples)
        for name in ("EntropySchedule", "RateSchedule"):
            for alpha, beta in ((0, 1), (1, 3)):
                sched = getattr(ef_schedule, name)(sde, Hf=2, rmsd_max=0, step=0.5, cutoff=5, kmin=5, tmin=0.01,
                                                   alpha=alpha, beta=beta)  # fmt: skip
                out[f"{n}/{name}/{alpha}/{beta}/ts"], out[f"{n}/{name}/{alpha}/{beta}/ks"] = sched.ts, sched.ks
        sde.make_schedule(Hf=2, step=0.5, tmin=0.01)
        out[f"{n}/table"] = np.stack([sde.ts, sde.rmsds, sde.hs])
        args = argparse.Namespace(train_skew=0, train_Hf=2, train_rmsd_max=0, train_tmin=0.01, train_kmin=5,
                                  train_cutoff=5, cuda_diffuse=False)  # fmt: skip
        kernel, draws = ef_sampling.ForwardDiffusionKernel(args), []
        for step in STEPS:
            resi = types.SimpleNamespace(num_nodes=n, pos=torch.tensor(x))
            data = Data(skip=False, sde=sde, resi_sde=sde, resi=resi)
            np.random.rand, np.random.randn = (lambda: step), (lambda *shape: z.copy())
            kernel(data)
            draws.append([data.t, data.k, data.score_norm, data.rmsd])
            out[f"{n}/kernel/{step}"] = np.stack([resi.pos.numpy(), resi.score.numpy()])
        out[f"{n}/kernel"] = np.array(draws)
        out[f"{n}/reverse_sample"] = reverse_sample(sde, ef_sde, ef_sampling, ef_schedule)
    np.savez_compressed(root.out, **out)
    print(f"wrote {root.out}")


def reverse_sample(sde, ef_sde, ef_sampling, ef_schedule) -> np.ndarray:
    """EigenFold's reverse_sample (rate schedule, alpha=1, beta=3) with fake_score and seeded torch noise."""
    sched = ef_schedule.RateSchedule(sde, Hf=2, rmsd_max=0, step=0.5, cutoff=5, kmin=5, tmin=0.01, alpha=1, beta=3)
    generator = torch.Generator().manual_seed(SEED)
    randn = torch.randn

    class Float64:  # stands for the `.float()` of EigenFold's `torch.*(..., device='cuda').float()`
        def __init__(self, x):
            self.x = x

        def float(self):
            return self.x

    class CpuTorch:
        def __getattr__(self, name):
            return getattr(torch, name)

        def tensor(self, x, device=None):
            return Float64(torch.tensor(x, dtype=torch.float64))

        def zeros(self, *shape, device=None):
            return Float64(torch.zeros(*shape, dtype=torch.float64))

        def randn(self, *shape, device=None):
            return Float64(randn(shape, generator=generator, dtype=torch.float64))

    P, D = sde.P, sde.D
    sde.P, sde.D, sde.use_cuda = torch.tensor(P), torch.tensor(D), True
    ef_sde.torch = CpuTorch()
    ef_sampling.torch.randn = lambda *shape, device=None: randn(shape, generator=generator, dtype=torch.float64)
    try:
        def score_func(Y, t, k):
            return fake_score(Y, t, float(sde.score_norm(t, k, adj=True)))

        Y = ef_sampling.reverse_sample(argparse.Namespace(train_cutoff=5), score_func, sde, sched, tqdm_=False)
    finally:
        ef_sampling.torch.randn, ef_sde.torch = randn, torch
        sde.P, sde.D, sde.use_cuda = P, D, False
    return np.asarray(Y)


if __name__ == "__main__":
    main()
