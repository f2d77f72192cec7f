# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 11. EigenFold's harmonic diffusion
#
# Chapter 9 trained the score model with a textbook diffusion that adds the same isotropic noise to every residue.
# EigenFold {footcite:p}`jing2023eigenfold` does something better suited to a chain. Its noise is the motion of a
# *Gaussian polymer*: beads joined by springs, kicked around by heat. After a long time any chain becomes a random
# polymer coil, the *prior* that sampling starts from; on the way, the springs keep consecutive residues about 3.8 Å
# apart. Because the springs are linear, the motion splits into independent *eigenmodes*, from the gentle bend of
# the whole chain to the zig-zag of neighbouring residues, and each forgets the structure at its own pace. This
# chapter builds the process on real protein chains, mode by mode: the prior, the modes, the forward kernel and why
# EigenFold samples its times uniformly in RMSD, the schedule of the reverse process, the score norm; and then it
# trains a small model on real chains and samples from it.

# %% [markdown]
# ```{admonition} Run this chapter
# :class: tip
# Locally: `make execute` in a clone of the repository, or open `tutorials/11_harmonic_diffusion.ipynb` in Jupyter.
# In Colab: the rocket icon at the top of the page. The first code cell installs what Colab lacks; everywhere
# else it does nothing.
# ```

# %% tags=["hide-cell"]
# NBVAL_SKIP
# Colab only: install e3nn and tpconv_lite, and torch-scatter/torch-cluster wheels when some match Colab's torch.
# Colab's own torch is kept: this cell never installs or pins torch. TPCONV_LITE_SOURCE, when set, replaces the
# repository (`make colab-check` points it at a local checkout).
import sys

if "google.colab" in sys.modules:
    import os
    import subprocess

    import torch

    def pip(*args: str) -> bool:
        return subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args]).returncode == 0

    source = os.environ.get("TPCONV_LITE_SOURCE", "git+https://github.com/tpconv-lite/tpconv-lite@main")
    if not pip("e3nn>=0.5.6,<0.7", f"tpconv_lite[proteins] @ {source}"):
        raise RuntimeError(f"pip could not install tpconv_lite from {source} (its messages are above)")
    torch_version = ".".join(torch.__version__.split("+")[0].split(".")[:2]) + ".0"
    variant = "cu" + torch.version.cuda.replace(".", "") if torch.version.cuda else "cpu"
    wheels = f"https://data.pyg.org/whl/torch-{torch_version}+{variant}.html"
    if not pip("--only-binary=:all:", "torch-scatter", "torch-cluster", "-f", wheels):
        print("No torch-scatter/torch-cluster wheels for this torch: tpconv_lite uses its pure-torch backend.")

# %%
# NBVAL_IGNORE_OUTPUT
import math
import time
from argparse import Namespace

import e3nn
import matplotlib.pyplot as plt
import torch
from torch import Tensor

import tpconv_lite
from tpconv_lite.conditioning import LM_EDGE_DIM, LM_NODE_DIM, chain_conditioning
from tpconv_lite.diagrams import draw_chains
from tpconv_lite.diffusion import score_matching_loss
from tpconv_lite.harmonic import (
    EntropySchedule,
    ForwardDiffusionKernel,
    HarmonicConfig,
    HarmonicDiffusion,
    HarmonicSDE,
    NoisedChain,
    PolymerSDE,
    RateSchedule,
    Schedule,
    harmonic_loss,
)
from tpconv_lite.metrics import ca_ca_distances, kabsch_rmsd, radius_of_gyration
from tpconv_lite.proteins import load_dataset
from tpconv_lite.score_model import ChainBatch, ResiLevelTensorProductScoreModel, ScoreModelConfig

try:
    from myst_nb import glue  # stores a number for the text of the book
except ImportError:  # Colab: print it instead

    def glue(name: str, value: object, display: bool = True) -> None:
        print(f"{name}: {value}")


device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(0)
torch.set_num_threads(1)  # tiny tensors: more threads mostly wait for each other (see chapter 9)
chapter_start = time.perf_counter()
print(f"torch {torch.__version__}, e3nn {e3nn.__version__}, tpconv_lite {tpconv_lite.__version__}, device {device}")

# %% [markdown]
# Like chapter 9, this chapter runs on the CPU even where `device` is a GPU, and on one thread: its chains are too
# short to keep a GPU, or a second thread, busy. The settings are the same everywhere.
#
# ## Goals
#
# By the end of this chapter you can
# 1. load the book's real protein chains and say what their alpha-carbon traces look like next to samples of the
#    polymer prior;
# 2. write down the matrix $J$ of the polymer, its eigenvalues and eigenmodes, and draw them;
# 3. noise a chain mode by mode, say which modes EigenFold keeps at each time, and why it draws its training times
#    uniformly in RMSD;
# 4. build the entropy schedule of the reverse process and check what each of its steps does;
# 5. say what the adjusted score and its `score_norm` are, and train and sample the score model on real chains.
#
# EigenFold's code and this book's, side by side (the module docstring of `tpconv_lite.harmonic` lists every
# deliberate difference):
#
# | EigenFold | tpconv_lite |
# |---|---|
# | `diffusion/sde.py`: `HarmonicSDE`, `PolymerSDE` (numpy) | `tpconv_lite.harmonic.HarmonicSDE`, `PolymerSDE` (torch, float64, any device), same methods |
# | `diffusion/schedule.py`: `EntropySchedule`, `RateSchedule` (scipy root find) | the same names, a bisection instead of scipy |
# | `diffusion/sampling.py`: `ForwardDiffusionKernel`, `reverse_sample` | `ForwardDiffusionKernel`, `HarmonicDiffusion.noised_batch` and `.reverse_sample`, batched over lengths |
# | `utils/training.py`: `loss_func` | `harmonic_loss` |
# | `args` (`train_Hf`, `train_cutoff`, `inf_step`, ...) | `HarmonicConfig`, same names and defaults |
# | OmegaFold embeddings (`lm_node_dim = 256`, `lm_edge_dim = 128`) | `tpconv_lite.conditioning`: one-hot residue type, secondary structure, sequence separation |

# %% [markdown]
# ## Real chains
#
# The book's dataset (`tpconv_lite.proteins.load_dataset`) holds 50 protein chains from the Protein Data Bank
# {footcite:p}`berman2000pdb` at alpha-carbon resolution: for each residue the position of its CA atom in Å, its
# amino acid, and its secondary structure computed by DSSP {footcite:p}`kabsch1983dssp` in three states (`H` helix,
# `E` strand, `-` other). They are split by protein into training and test chains.

# %%
# NBVAL_CHECK_OUTPUT
train_chains, test_chains = load_dataset("train"), load_dataset("test")
lengths = [len(c) for c in train_chains + test_chains]
print(f"{len(train_chains)} training and {len(test_chains)} test chains, {min(lengths)} to {max(lengths)} residues")
chain = min(train_chains, key=len)
print(f"{chain.name}: {len(chain)} residues, pos {tuple(chain.pos.shape)} {chain.pos.dtype}")
print(chain.sequence)
print(chain.ss)
bonds = torch.cat([ca_ca_distances(c.pos.double()) for c in train_chains])
in_window = ((bonds > 3.6) & (bonds < 4.0)).double().mean().item()
print(f"CA-CA distances: mean {bonds.mean():.2f} Å, {100 * in_window:.1f}% between 3.6 and 4.0 Å")
glue("n_train", len(train_chains), display=False)
glue("n_test", len(test_chains), display=False)
glue("bond_window", round(100 * in_window, 1), display=False)

# %% [markdown]
# Consecutive alpha carbons sit 3.8 Å apart, because the peptide bond between them is planar and rigid:
# {glue:text}`bond_window:.1f`% of the distances in the {glue:text}`n_train` training chains lie between 3.6 and
# 4.0 Å. Everything else about the chain, how it turns and folds, is what a structure predictor has to learn.
#
# ## The polymer prior
#
# EigenFold's prior is a Gaussian polymer, the bead-and-spring chain of polymer physics
# {footcite:p}`rouse1953theory`. Its density is
#
# $$
# p(x) \propto \exp\Big(-\frac{a}{2} \sum_{i=1}^{N-1} \lvert x_{i+1} - x_i \rvert^2\Big)
#      = \exp\Big(-\frac{1}{2} \sum_{c \in \{x, y, z\}} x_c^\top J\, x_c\Big),
# $$
#
# where $x_c$ is one coordinate of all $N$ residues and $J$ is the Laplacian matrix of the chain graph, $a$ times
# (degree on the diagonal, $-1$ for each bond). Each bond vector $x_{i+1} - x_i$ is then an independent Gaussian
# with variance $1/a$ per coordinate, so its mean square length is $3/a$: EigenFold sets $a = 3 / 3.8^2$ so that the
# bonds of the prior have the right length on average. (`b` weighs optional springs between residues $i$ and $i+2$,
# of opposite sign; EigenFold's published model uses $b = 0$.) The package builds $J$ from the list of bonds:

# %%
# Package code: tpconv_lite.harmonic.PolymerSDE
class PolymerSDE(HarmonicSDE):
    """:class:`HarmonicSDE` of a chain of N residues: edges ``(i, i+1)`` with ``a``, antiedges ``(i, i+2)`` with ``b``.

    Example:
        >>> sde = PolymerSDE(N=4, a=1.0, b=0.0)
        >>> sde.J.round(decimals=9) + 0.0  # + 0.0 turns -0. into 0.
        tensor([[ 1., -1.,  0.,  0.],
                [-1.,  2., -1.,  0.],
                [ 0., -1.,  2., -1.],
                [ 0.,  0., -1.,  1.]], dtype=torch.float64)
    """

    def __init__(
        self,
        N: int,
        a: float,
        b: float,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        if isinstance(N, bool) or not isinstance(N, int) or N < 1:
            raise ValueError(f"N must be an integer >= 1, got {N!r}")
        super().__init__(
            N=N,
            edges=zip(range(N - 1), range(1, N)),
            antiedges=zip(range(N - 2), range(2, N)),
            a=a,
            b=b,
            dtype=dtype,
            device=device,
        )

# %%
# NBVAL_CHECK_OUTPUT
print(PolymerSDE(N=5, a=1.0, b=0.0).J.round(decimals=9) + 0.0)  # + 0.0 turns -0. into 0.
config = HarmonicConfig()
print(f"EigenFold's a = 3 / 3.8^2 = {config.sde_a:.6f} per Å^2, b = {config.sde_b}")

# %% [markdown]
# The row sums of $J$ are zero: moving the whole chain does not stretch a spring, so the prior says nothing about
# where the chain is. EigenFold removes that freedom by keeping every chain centred. The prior's samples are drawn
# below for the chain above, through `sample` at a time so large that the kernel has forgotten its start (the next
# sections explain why that is the prior).

# %%
# NBVAL_CHECK_OUTPUT
sde = PolymerSDE(N=len(chain), a=config.sde_a, b=config.sde_b)
generator = torch.Generator().manual_seed(0)
prior = torch.stack([sde.sample(1e9, generator=generator) for _ in range(200)])  # (200, N, 3)
prior_bonds = ca_ca_distances(prior)
print(f"prior: mean square bond {prior_bonds.pow(2).mean():.1f} Å^2 (3 / a = {3 / config.sde_a:.2f}), "
      f"{100 * ((prior_bonds > 3.6) & (prior_bonds < 4.0)).double().mean():.0f}% of bonds in 3.6-4.0 Å")
real_pos = chain.pos.double() - chain.pos.double().mean(dim=0)
prior_rg = radius_of_gyration(prior)
print(f"radius of gyration: real chain {radius_of_gyration(real_pos):.1f} Å, prior {prior_rg.mean():.1f} "
      f"+- {prior_rg.std():.1f} Å")
glue("prior_rg", round(prior_rg.mean().item()), display=False)
glue("real_rg", round(radius_of_gyration(real_pos).item()), display=False)

# %% [markdown]
# The prior gets the mean square bond right and nothing else: its bond lengths spread widely around 3.8 Å, and a
# typical sample is a loose coil with a radius of gyration of {glue:text}`prior_rg:.0f` Å, where the folded chain
# has {glue:text}`real_rg:.0f` Å. Drawn side by side:

# %%
draw_chains({chain.name: real_pos, "prior sample 1": prior[0], "prior sample 2": prior[1]},
            f"A real chain of {len(chain)} residues and two samples of the polymer prior")

# %% [markdown]
# ## The eigenmodes
#
# $J$ is symmetric, so $J = P\, \mathrm{diag}(D)\, P^\top$ with orthonormal eigenvectors, the columns of $P$. In the
# coordinates $P^\top x$ the prior is a product of independent Gaussians, one per mode $j$, of variance $1/D_j$. For
# the chain ($b = 0$) the modes are known exactly: $D_j = a\,(2 - 2\cos(\pi j / N))$ and
# $P_{ij} \propto \cos(\pi j (i + \tfrac12) / N)$, a cosine with $j$ half-waves along the chain. Mode 0, with
# $D_0 = 0$, is the centre of mass.

# %%
# NBVAL_CHECK_OUTPUT
j = torch.arange(len(chain), dtype=torch.float64)
exact_D = config.sde_a * (2 - 2 * torch.cos(math.pi * j / len(chain)))
cosines = torch.cos(math.pi * j[None, :] * (j[:, None] + 0.5) / len(chain))
cosines = cosines / cosines.norm(dim=0)
print("eigenvalues are a (2 - 2 cos(pi j / N)):", bool((sde.D - exact_D).abs().max() < 1e-12))
print("eigenvectors are the cosines (up to sign):", bool(((sde.P * cosines).sum(dim=0).abs() - 1).abs().max() < 1e-9))
print(f"D_1 = {sde.D[1]:.2e}, D_{len(chain) - 1} = {sde.D[-1]:.3f} per Å^2")

# %%
fig, (ax_modes, ax_D) = plt.subplots(1, 2, figsize=(10, 3.2))
for mode in (1, 2, 3, 10):
    ax_modes.plot(sde.P[:, mode] * torch.sign(sde.P[0, mode]), label=f"mode {mode}")
ax_modes.set_xlabel("residue i"), ax_modes.set_ylabel("P[i, j]"), ax_modes.legend(fontsize=8)
ax_modes.set_title("eigenmodes: cosines along the chain")
ax_D.semilogy(j[1:], sde.D[1:], ".", markersize=3)
ax_D.set_xlabel("mode j"), ax_D.set_ylabel("eigenvalue D_j (1/Å²)"), ax_D.set_title("eigenvalues")
plt.tight_layout()
plt.show()

# %% [markdown]
# The low modes are the overall shape of the chain, the high ones its local detail. Projecting the real chain on its
# first $k$ modes (`project`) shows how much of its structure the smooth modes hold:

# %%
# NBVAL_CHECK_OUTPUT
projections = {k: sde.project(real_pos, k, center=True) for k in (3, 10, 30)}
for k, pos in projections.items():
    print(f"first {k:2d} modes: RMSD to the chain {kabsch_rmsd(pos, real_pos):4.1f} Å")
glue("rmsd_10_modes", round(kabsch_rmsd(projections[10], real_pos).item(), 1), display=False)
glue("n_modes", len(chain) - 1, display=False)
draw_chains({f"first {k} modes": pos for k, pos in projections.items()} | {"all modes": real_pos},
            "The real chain projected on its first k eigenmodes")

# %% [markdown]
# Ten smooth modes, out of {glue:text}`n_modes`, already place the residues within {glue:text}`rmsd_10_modes:.1f` Å
# (RMSD) of their positions. This is the idea behind EigenFold's *cascading
# resolution*: generate the few smooth modes first, then add detail.

# %% [markdown]
# ## The forward kernel, mode by mode
#
# EigenFold noises a chain with the Ornstein-Uhlenbeck process {footcite:p}`uhlenbeck1930theory` whose stationary
# law is the prior: $dx = -\tfrac12 J x\, dt + dW$, a drift that pulls along the springs and Brownian kicks. In the
# eigenbasis it is one independent scalar process per mode and coordinate, and its kernel (the law of $x_t$ given
# $x_0$) is known in closed form:
#
# $$
# (P^\top x_t)_j = e^{-D_j t/2}\, (P^\top x_0)_j + \sqrt{\lambda_j(t)}\; z_j, \qquad
# \lambda_j(t) = \frac{1 - e^{-D_j t}}{D_j}, \qquad z_j \sim \mathcal N(0, I_3).
# $$
#
# As $t \to \infty$, $\lambda_j \to 1/D_j$: the prior, whatever $x_0$ was. The mode $j$ has forgotten $x_0$ on a
# time scale $1/D_j$, so the local zig-zag (large $D_j$) is gone almost at once and the overall shape (small $D_j$)
# lasts longest. Written out by hand for the real chain, the formula gives exactly what `sample` returns for the
# same $z$:

# %%
# NBVAL_CHECK_OUTPUT
t = 2.0
z = torch.randn(len(chain), 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
z[0] = 0  # the centre of mass gets no noise
modes_t = torch.exp(-sde.D * t / 2)[:, None] * (sde.P.T @ real_pos) + sde.eigens(t)[:, None].sqrt() * z
by_hand = sde.P @ modes_t
print("sample() is the formula:", torch.allclose(sde.sample(t, real_pos, noise=z), by_hand, rtol=0, atol=1e-12))
print("eigens(t) = (1 - exp(-D t)) / D:",
      torch.allclose(sde.eigens(t)[1:], (1 - torch.exp(-sde.D[1:] * t)) / sde.D[1:], rtol=1e-12, atol=0))

# %% [markdown]
# EigenFold's kernel adds one twist. A mode with $D_j t \ge 5$ (`train_cutoff`) keeps less than $e^{-5} < 1\%$ of
# its variance from $x_0$: it is prior noise and nothing else, and the network has nothing to learn from it. So the
# kernel keeps only the first $k$ modes, those with $D_j t < 5$ (at least `train_kmin = 5`), and sets the others to
# zero. At large $t$ the noised chain is a smooth curve on a handful of modes; as $t$ falls, finer modes come in.

# %%
def modes_kept(t: float) -> int:
    """EigenFold's k for this chain at time t: the modes with D_j t < train_cutoff, at least train_kmin."""
    return min(len(chain) - 1, max(config.train_kmin, int((sde.D * t < config.train_cutoff).sum()) - 1))


times = torch.logspace(-2.5, 3.5, 200, dtype=torch.float64)
fig, (ax_signal, ax_k) = plt.subplots(1, 2, figsize=(10, 3.2))
for mode in (1, 3, 10, 30, len(chain) - 1):
    ax_signal.semilogx(times, torch.exp(-sde.D[mode] * times), label=f"mode {mode}")
ax_signal.set_xlabel("t"), ax_signal.set_ylabel("exp(-D_j t)"), ax_signal.legend(fontsize=8)
ax_signal.set_title("fraction of each mode's variance that is signal")
ax_k.loglog(times, [modes_kept(t) for t in times])
ax_k.set_xlabel("t"), ax_k.set_ylabel("modes kept, k"), ax_k.set_title("EigenFold's cut-off: D_j t < 5, k >= 5")
plt.tight_layout()
plt.show()

# %%
noise_times = (0.01, 0.3, 3.0, 30.0)
generator = torch.Generator().manual_seed(2)
noised = {f"t = {t:g}, k = {modes_kept(t)}": sde.sample(t, real_pos, k=modes_kept(t), generator=generator)
          for t in noise_times}
draw_chains(noised, f"{chain.name} noised by the forward kernel")

# %% [markdown]
# ### Why the time is uniform in RMSD
#
# Which times should training visit? The diffusion time spans orders of magnitude, from `train_tmin = 0.01` to the
# time `tmax` at which the KL divergence from the prior of the kernel started at the origin, `KL_H(t)` (in nats,
# summed over the non-centre modes), has fallen to `train_Hf = 2`. What changes with $t$ in a way that matters to the network is how
# far the residues have moved: the RMSD of the noise, `rmsd(t)` $= \sqrt{3\, \mathrm{mean}_j\, \lambda_j(t)}$.
# EigenFold's `ForwardDiffusionKernel` draws that RMSD uniformly between `rmsd(train_tmin)` and `rmsd(tmax)`, and
# reads the time off a table of the entropy schedule (next section) by linear interpolation. Two more of
# EigenFold's options, off by default, change the draw: `train_skew` $= s \neq 0$ draws the position in the RMSD
# range from a mixture of the uniform law and a Beta(2, 1) (for $s > 0$) or Beta(1, 2) (for $s < 0$, towards small
# noise) with weight $1 - 2/(1 + e^{|s|})$, and `train_rmsd_max` caps the largest RMSD. One option is ours, not
# EigenFold's, and also off by default: with probability `train_band_weight` the RMSD is drawn uniformly across a
# band, from `rmsd(train_band_tmin)` to `rmsd(train_band_tmax)`, so that those noise levels are trained more often
# while every level is still visited. Chapter 12's pretrained model trains with `train_skew = -5` and a band from
# $t$ = 0.002 to 10, drawn half of the time.
# Two small helpers first: a uniform number from a generator, and numpy's `interp` for one point.

# %%
# Package code: tpconv_lite.harmonic._rand
def _rand(generator: torch.Generator | None, dtype: torch.dtype) -> float:
    """One uniform number in [0, 1), drawn on the generator's device."""
    where = generator.device if generator is not None else "cpu"
    return torch.rand((), generator=generator, dtype=dtype, device=where).item()

# %%
# Package code: tpconv_lite.harmonic._interp
def _interp(x: float, xp: Tensor, fp: Tensor) -> float:
    """``numpy.interp`` for one point: piecewise linear through ``(xp, fp)``, ``xp`` increasing, clamped outside."""
    if x <= xp[0]:
        return fp[0].item()
    if x >= xp[-1]:
        return fp[-1].item()
    i = int(torch.searchsorted(xp, torch.tensor(x, dtype=xp.dtype, device=xp.device), right=True)) - 1
    x0, x1, f0, f1 = xp[i].item(), xp[i + 1].item(), fp[i].item(), fp[i + 1].item()
    return f0 + (f1 - f0) / (x1 - x0) * (x - x0)

# %%
# Package code: tpconv_lite.harmonic.ForwardDiffusionKernel
class ForwardDiffusionKernel:
    """EigenFold's training kernel: a time uniform in RMSD, the modes below the cut-off, the adjusted score.

    Args:
        args: a :class:`HarmonicConfig` (or an object with its fields).

    Example:
        >>> kernel = ForwardDiffusionKernel(HarmonicConfig())
        >>> sde = PolymerSDE(N=12, a=3 / 3.8**2, b=0)
        >>> sde.make_schedule(Hf=2, step=0.5, tmin=0.01)
        >>> draw = kernel(torch.zeros(12, 3), sde, generator=torch.Generator().manual_seed(0))
        >>> draw.pos.shape, draw.k >= 5, 0.01 <= draw.t <= sde.ts[-1].item()
        (torch.Size([12, 3]), True, True)
    """

    def __init__(self, args: HarmonicConfig | Namespace) -> None:
        config = HarmonicConfig.from_args(args)
        self.Hf, self.tmin = config.train_Hf, config.train_tmin
        self.kmin, self.cutoff = config.train_kmin, config.train_cutoff
        self.skew, self.rmsd_max = config.train_skew, config.train_rmsd_max
        self.band = (config.train_band_tmin, config.train_band_tmax, config.train_band_weight)

    def __call__(self, pos: Tensor, sde: HarmonicSDE, generator: torch.Generator | None = None) -> NoisedChain:
        """Noise one chain ``pos`` (n, 3) with ``sde`` (n points, ``make_schedule`` done)."""
        if not hasattr(sde, "ts"):
            raise ValueError("the SDE has no schedule table: call sde.make_schedule(...) first")
        if pos.shape != (sde.N, 3):
            raise ValueError(f"pos must have shape ({sde.N}, 3) for this SDE, got {tuple(pos.shape)}")
        step = _rand(generator, sde.dtype)
        if step > 2 / (1 + math.exp(abs(self.skew))):  # Beta(2, 1) or Beta(1, 2) by inverting its CDF
            u = _rand(generator, sde.dtype)
            step = math.sqrt(u) if self.skew > 0 else 1 - math.sqrt(1 - u)
        rmsd_max = _interp(self.Hf, sde.hs.flip(0), sde.rmsds.flip(0))
        if self.rmsd_max > 0:
            rmsd_max = min(rmsd_max, self.rmsd_max)
        rmsd_min = sde.rmsd(self.tmin).item()
        band_tmin, band_tmax, band_weight = self.band
        if band_weight > 0 and _rand(generator, sde.dtype) < band_weight:  # the band, within the training range
            rmsd_max = min(rmsd_max, sde.rmsd(band_tmax).item())
            rmsd_min = min(max(rmsd_min, sde.rmsd(band_tmin).item()), rmsd_max)
            step = _rand(generator, sde.dtype)
        rmsd = rmsd_max * step + rmsd_min * (1 - step)
        t = _interp(rmsd, sde.rmsds, sde.ts)
        k = int((sde.D * t < self.cutoff).sum()) - 1
        k = min(sde.N - 1, max(self.kmin, k))
        x_t, score = sde.sample(t, pos, score=True, k=k, center=True, adj=True, generator=generator)
        norm = sde.score_norm(t, k, adj=True).item()
        return NoisedChain(pos=x_t, score=score, t=t, k=k, step=step, rmsd=rmsd, score_norm=norm)

# %%
# NBVAL_CHECK_OUTPUT
sde.make_schedule(Hf=config.train_Hf, step=config.inf_step, tmin=config.train_tmin)
tmax = sde.ts[-1].item()
print(f"tmax = {tmax:.1f}: KL_H(tmax) = {sde.KL_H(tmax):.6f} nats")
print(f"rmsd(train_tmin) = {sde.rmsd(config.train_tmin):.3f} Å, rmsd(tmax) = {sde.rmsd(tmax):.2f} Å")
kernel, generator = ForwardDiffusionKernel(config), torch.Generator().manual_seed(3)
draws = [kernel(chain.pos, sde, generator) for _ in range(2000)]
draw_t = torch.tensor([d.t for d in draws], dtype=torch.float64)
draw_rmsd = torch.tensor([d.rmsd for d in draws], dtype=torch.float64)
interp_error = (sde.rmsd(draw_t) / draw_rmsd - 1).abs().max().item()
print(f"rmsd(t) of the drawn times vs the drawn RMSD: within {100 * interp_error:.1f}%")
# how often would a uniform time land where the noise has moved the residues by less than 1 Å?
grid = torch.logspace(math.log10(config.train_tmin), math.log10(tmax), 100001, dtype=torch.float64)
t_1A = grid[torch.searchsorted(sde.rmsd(grid), torch.tensor(1.0, dtype=torch.float64))].item()
rmsd_min, rmsd_max = sde.rmsd(config.train_tmin).item(), sde.rmsd(tmax).item()
below_uniform_t = (t_1A - config.train_tmin) / (tmax - config.train_tmin)
below_uniform_rmsd = (1 - rmsd_min) / (rmsd_max - rmsd_min)
below_log_uniform = math.log(t_1A / config.train_tmin) / math.log(tmax / config.train_tmin)
print(f"RMSD < 1 Å for t < {t_1A:.2f}: {100 * below_uniform_t:.1f}% of times uniform in t, "
      f"{100 * below_log_uniform:.0f}% of times uniform in log t, {100 * below_uniform_rmsd:.0f}% uniform in RMSD")
glue("below_log_uniform", round(100 * below_log_uniform), display=False)
glue("tmax", round(tmax), display=False)
glue("rmsd_max", round(rmsd_max, 1), display=False)
glue("below_uniform_t", round(100 * below_uniform_t, 1), display=False)
glue("below_uniform_rmsd", round(100 * below_uniform_rmsd), display=False)
glue("interp_error", round(100 * interp_error, 1), display=False)

# %%
fig, (ax_rmsd, ax_hist) = plt.subplots(1, 2, figsize=(10, 3.2))
ax_rmsd.semilogx(grid[::100], sde.rmsd(grid[::100]))
ax_rmsd.set_xlabel("t"), ax_rmsd.set_ylabel("rmsd(t) (Å)"), ax_rmsd.set_title("RMSD of the noise")
ax_hist.hist(torch.log10(draw_t), bins=40)
ax_hist.set_xlabel("log10 t of the kernel's draws"), ax_hist.set_ylabel("draws")
ax_hist.set_title("2000 draws, uniform in RMSD")
plt.tight_layout()
plt.show()

# %% [markdown]
# For this chain `tmax` is {glue:text}`tmax:.0f`, where the noise has moved the residues by
# {glue:text}`rmsd_max:.1f` Å. A time drawn uniformly in $[0.01, t_\text{max}]$ would almost never look at the
# fine scale: only {glue:text}`below_uniform_t:.1f`% of such draws move the residues by less than 1 Å, against
# {glue:text}`below_uniform_rmsd:.0f`% of draws uniform in RMSD. A log-uniform time errs the other way: it spends
# {glue:text}`below_log_uniform:.0f`% of its draws there, where the residues have barely moved. The RMSD is the
# scale at which the network must work, in Å, and drawing it uniformly spreads the training evenly over scales. (The linear interpolation in EigenFold's
# table is close: `rmsd(t)` of the drawn times is within {glue:text}`interp_error:.1f`% of the drawn RMSD.)
#
# ## The entropy schedule
#
# Sampling runs the process backwards from `tmax` to `train_tmin`, in steps. EigenFold's `EntropySchedule` makes
# each step lower the log variance $\log \lambda_j(t)$ of every mode by at most `step` (0.5), that is, its entropy
# by at most $\tfrac32 \times 0.5$ nats: the next time is the smallest $t'$ with
# $\log \lambda_j(t) - \log \lambda_j(t') \le$ `step` for all $j$. Solving for $t'$ gives
# one formula per mode, and the schedule takes their maximum:

# %%
# Package code: tpconv_lite.harmonic.EntropySchedule
class EntropySchedule(Schedule):
    """Steps that lower the KL of every mode by at most ``step`` nats: the next time is the largest of
    ``-log(1 - exp(-step) (1 - exp(-D_j t))) / D_j`` over the non-centre modes.

    Example:
        >>> sched = EntropySchedule(PolymerSDE(N=10, a=3 / 3.8**2, b=0), Hf=2, step=0.5, tmin=0.01, cutoff=5)
        >>> sched.N, round(sched.tmax, 3), bool(sched.ts[-1] <= 0.01 < sched.ts[-2])
        (14, 7.899, True)
    """

    def populate(self, ts: list[float], step: float, tmin: float, cutoff: float, kmin: int) -> list[float]:
        keep = math.exp(-step)
        while ts[-1] > tmin:
            t_next = -torch.log1p(keep * torch.expm1(-self.D * ts[-1])) / self.D
            ts.append(t_next.max().item())
        return ts

# %%
# NBVAL_CHECK_OUTPUT
schedules = {
    "entropy": EntropySchedule(sde, Hf=2, step=0.5, cutoff=5, kmin=5, tmin=0.01),
    "rate": RateSchedule(sde, Hf=2, step=0.5, cutoff=5, kmin=5, tmin=0.01),
    "rate, alpha=1, beta=3": RateSchedule(sde, Hf=2, step=0.5, cutoff=5, kmin=5, tmin=0.01, alpha=1, beta=3),
}
entropy = schedules["entropy"]
log_lambda = sde.eigens(entropy.ts)[:, 1:].log()
drop = log_lambda[:-1] - log_lambda[1:]  # (steps, modes): how much each step lowers each mode's log variance
print(f"entropy schedule: {entropy.N} steps from t = {entropy.tmax:.1f} to {entropy.tmin:.4f}")
print(f"  largest drop of log variance per step: {drop.max(dim=1).values.min():.6f} to {drop.max():.6f}")
print(f"  monotone: {bool((entropy.dt > 0).all())}, ends at the first time <= tmin: "
      f"{bool(entropy.ts[-1] <= 0.01 < entropy.ts[-2])}")
print(f"  modes k: {entropy.ks[0].item()} at tmax -> {entropy.ks[-1].item()} at the end, never decreasing: "
      f"{bool((entropy.dk >= 0).all())}")
for name, sched in schedules.items():
    print(f"{name:>22s} schedule: {sched.N:3d} steps")
glue("entropy_steps", entropy.N, display=False)
glue("rate_steps", schedules["rate"].N, display=False)
glue("rate_ab_steps", schedules["rate, alpha=1, beta=3"].N, display=False)

# %%
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.semilogy(entropy.ts, ".-", label="t")
ax.set_xlabel("step"), ax.set_ylabel("t"), ax.set_title("entropy schedule")
ax_k = ax.twinx()
ax_k.plot(entropy.ks, color="C1", label="k")
ax_k.set_ylabel("modes kept, k", color="C1")
plt.tight_layout()
plt.show()

# %% [markdown]
# The entropy schedule takes {glue:text}`entropy_steps` steps for this chain, taking large steps in $t$ at first and
# small ones at the end. EigenFold's inference command uses the other one, the `RateSchedule` (`inf_type='rate'`),
# whose steps are `step` times the smallest variance among the kept modes: {glue:text}`rate_steps` steps, and
# {glue:text}`rate_ab_steps` with the paper's `alpha = 1, beta = 3`, which add Langevin noise and shrink the steps
# accordingly. Each step of the sampler first injects the modes that enter (`inject`: the kernel's noise at that
# time, along the new modes only), then moves $Y$ by
#
# $$
# \Delta Y = \Big[-(1 + \alpha\beta)\,\tfrac12 J Y + (1 + \tfrac{\alpha\beta}{2})\, s_\theta(Y, t)\Big]\Delta t
#            + \sqrt{(1 + \alpha)\,\Delta t}\; z,
# $$
#
# projected on the kept modes; with $\alpha = 0$ it is Euler–Maruyama on the reverse-time SDE
# {footcite:p}`song2021score`.
#
# ## The score and its norm
#
# What does the network predict? The score of the kernel, $\nabla \log p_t(x_t \mid x_0)
# = -P\, z / \sqrt{\lambda}$ on the kept modes, is what denoising score matching {footcite:p}`vincent2011connection`
# regresses on. EigenFold trains on the *adjusted* score (`adj=True`), the kernel's score plus $J x_t$, that is,
# minus the prior's score $-J x_t$. It is what the data adds to the prior, zero for a chain that looks like the
# prior, and the sampler adds the prior's part back (the $-\tfrac12 J Y$ term). Both are gradients, checked with
# autograd:

# %%
# NBVAL_CHECK_OUTPUT
t, k = 0.5, 20
z = torch.randn(len(chain), 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
xt, adjusted = sde.sample(t, real_pos, score=True, k=k, adj=True, noise=z)
kept_modes = slice(1, k + 1)


def log_kernel(x: Tensor) -> Tensor:
    """log p_t(x | x_0) on the kept modes, up to a constant."""
    mean = torch.exp(-t * sde.D[kept_modes] / 2)[:, None] * (sde.P.T @ real_pos)[kept_modes]
    return -0.5 * (((sde.P.T @ x)[kept_modes] - mean) ** 2 / sde.eigens(t)[kept_modes][:, None]).sum()


x = xt.clone().requires_grad_(True)
log_prior = -0.5 * (x * (sde.J @ x)).sum()
(gradient,) = torch.autograd.grad(log_kernel(x) - log_prior, x)
print("adjusted score = grad(log kernel - log prior):", torch.allclose(adjusted, gradient, rtol=1e-10, atol=1e-10))

# %% [markdown]
# Its size changes by orders of magnitude with $t$. `score_norm(t, k, adj=True)`,
# $\sqrt{\tfrac1N \sum_{j=1}^{k} e^{-D_j t} / \lambda_j(t)}$, is its root mean square per coordinate when $x_0$
# is itself drawn from the prior; the model multiplies its output by it, so the network predicts numbers of order
# one, and EigenFold's loss divides by it:

# %%
# Package code: tpconv_lite.harmonic.harmonic_loss
def harmonic_loss(data: ChainBatch, pred: Tensor, score: Tensor) -> tuple[Tensor, Tensor]:
    """EigenFold's loss ``mean((score - pred)^2 / score_norm^2)`` and base loss ``mean(score^2 / score_norm^2)``.

    Args:
        data: the batch the model read (its ``score_norm`` (B,) and ``resi.batch`` (N,)).
        pred: (N, 3) model output.
        score: (N, 3) true (adjusted) score from :meth:`HarmonicDiffusion.noised_batch`.

    Returns:
        ``(loss, base_loss)``, 0-d tensors; the base loss is that of predicting zero, about 1.
    """
    return score_matching_loss(score, pred, data.score_norm[data.resi.batch])

# %%
# NBVAL_IGNORE_OUTPUT
generator = torch.Generator().manual_seed(5)
ratios = {}
for t in (0.03, 1.0, 30.0):
    k = modes_kept(t)
    prior_scores = torch.stack([sde.sample(t, x0, score=True, k=k, adj=True, generator=generator)[1]
                                for x0 in prior[:100]])
    real_scores = torch.stack([sde.sample(t, real_pos, score=True, k=k, adj=True, generator=generator)[1]
                               for _ in range(100)])
    norm = sde.score_norm(t, k, adj=True)
    ratios[t] = (prior_scores.pow(2).mean().sqrt() / norm).item(), (real_scores.pow(2).mean().sqrt() / norm).item()
    print(f"t = {t:5g}, k = {k:2d}: score_norm {norm:7.3f}; RMS / score_norm: x0 from the prior "
          f"{ratios[t][0]:.2f}, the real chain {ratios[t][1]:.2f}")
glue("ratio_prior", max(abs(r[0] - 1) for r in ratios.values()) * 100, display=False)
glue("ratio_real", max(abs(r[1] - 1) for r in ratios.values()) * 100, display=False)

# %% [markdown]
# With $x_0$ from the prior, the RMS of the adjusted score matches `score_norm` within
# {glue:text}`ratio_prior:.0f`% (100 draws per time), and for the real chain within {glue:text}`ratio_real:.0f`%:
# the size of the score is set by the noise, hardly by the structure, and dividing by `score_norm` leaves numbers of
# order one at every time. A model that predicts zero scores the *base loss* $\mathrm{mean}(s^2) /
# \mathrm{score\_norm}^2$, about 1; what the network must learn is the direction of the score.

# %% [markdown]
# ## A short training run on real chains
#
# EigenFold conditions the model on OmegaFold's embeddings of the sequence, which this book cannot compute. In their
# place, `tpconv_lite.conditioning` gives each residue a one-hot amino acid and secondary structure
# ({glue:text}`lm_node_dim` numbers) and each pair the one-hot of its sequence separation, clipped at $\pm 32$ as
# AlphaFold's relative positions {footcite:p}`jumper2021alphafold` ({glue:text}`lm_edge_dim` numbers). That is the
# one departure from EigenFold in what is learned: a model on these features knows the secondary structure but
# nothing of the evolutionary signal a language model extracts. `HarmonicDiffusion` keeps one `PolymerSDE`, with its
# eigendecomposition and schedules, per chain length, and batches chains of any lengths for the model.
#
# To train on two CPU cores in seconds, the model is small and the chains are cut into random windows of 40
# residues: every window is a real piece of protein, with real bonds, turns and helices, and 40 residues keep the
# graph (all pairs, as in EigenFold) at 1560 edges. EigenFold trains on whole chains of up to 256 residues for days
# on a GPU; chapter 12 trains for longer.

# %%
# NBVAL_CHECK_OUTPUT
glue("lm_node_dim", LM_NODE_DIM, display=False)
glue("lm_edge_dim", LM_EDGE_DIM, display=False)
window = 40


def random_window(chain, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """A random window of `window` residues of a chain: (positions (w, 3), node features, pair features)."""
    start = torch.randint(len(chain) - window + 1, (), generator=generator).item()
    piece = slice(start, start + window)
    node, pair = chain_conditioning(chain.sequence[piece], chain.ss[piece])
    return chain.pos[piece], node, pair


diffusion = HarmonicDiffusion(HarmonicConfig())
model_config = ScoreModelConfig(resi_conv_layers=2, resi_ns=8, resi_nv=2, resi_ntps=4, resi_ntpv=2, resi_fc_dim=8,
                                t_emb_dim=8, radius_emb_dim=16, lm_node_dim=LM_NODE_DIM, lm_edge_dim=LM_EDGE_DIM)
torch.manual_seed(0)
model = ResiLevelTensorProductScoreModel(model_config)
for layer in model.conv_layers:
    layer.checkpointing = False  # small graphs: recomputing the messages in the backward pass would only cost time
pos, node, pair = zip(*[random_window(c, torch.Generator().manual_seed(i)) for i, c in enumerate(train_chains[:4])])
data, score = diffusion.noised_batch(pos, node, pair, generator=torch.Generator().manual_seed(0))
print(f"node_attr {tuple(data.resi.node_attr.shape)}, edge_attr_ {tuple(data.resi.edge_attr_.shape)}, "
      f"score {tuple(score.shape)} {score.dtype}")
print(f"{sum(p.numel() for p in model.parameters())} parameters")

# %% [markdown]
# The loop is EigenFold's: a batch of noised chains, the loss, gradients clipped at norm 1, Adam.

# %%
# NBVAL_IGNORE_OUTPUT
N_STEPS = 120
optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
generator = torch.Generator().manual_seed(1)
history = {"loss": [], "base_loss": []}
start = time.perf_counter()
model.train()
for step in range(N_STEPS):
    batch = [random_window(train_chains[i], generator) for i in torch.randint(len(train_chains), (4,),
                                                                               generator=generator).tolist()]
    data, score = diffusion.noised_batch(*zip(*batch), generator=generator)
    loss, base_loss = harmonic_loss(data, model(data), score)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    history["loss"].append(loss.item())
    history["base_loss"].append(base_loss.item())
model.eval()
print(f"{N_STEPS} steps in {time.perf_counter() - start:.0f} s")
glue("n_steps", N_STEPS, display=False)

# %%
def running_mean(values: list[float], width: int = 20) -> Tensor:
    return torch.tensor(values).unfold(0, width, 1).mean(dim=1)


fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(running_mean(history["loss"]), label="loss")
ax.plot(running_mean(history["base_loss"]), label="base loss (predict zero)")
ax.set_xlabel("step"), ax.set_ylabel("loss (running mean of 20)"), ax.legend()
ax.set_title("training on 40-residue windows of real chains")
plt.tight_layout()
plt.show()

# %% [markdown]
# Did it learn anything? On windows of the test chains, which it never saw, the loss and base loss over three seeds
# of the noise:

# %%
# NBVAL_IGNORE_OUTPUT
evaluation = {"loss": [], "base_loss": []}
with torch.no_grad():
    for seed in range(3):
        generator = torch.Generator().manual_seed(100 + seed)
        batch = [random_window(c, generator) for c in test_chains]
        data, score = diffusion.noised_batch(*zip(*batch), generator=generator)
        loss, base_loss = harmonic_loss(data, model(data), score)
        evaluation["loss"].append(loss.item())
        evaluation["base_loss"].append(base_loss.item())
loss_mean, loss_std = torch.tensor(evaluation["loss"]).mean().item(), torch.tensor(evaluation["loss"]).std().item()
base_mean, base_std = torch.tensor(evaluation["base_loss"]).mean(), torch.tensor(evaluation["base_loss"]).std()
print(f"test windows: loss {loss_mean:.3f} +- {loss_std:.3f}, base loss {base_mean:.3f} +- {base_std:.3f}")
ratio = torch.tensor(evaluation["loss"]) / torch.tensor(evaluation["base_loss"])
print(f"loss / base loss: {ratio.mean():.3f} +- {ratio.std():.3f}, below 1 for every seed: {bool((ratio < 1).all())}")
glue("test_ratio", ratio.mean().item(), display=False)
glue("test_ratio_std", ratio.std().item(), display=False)
glue("test_loss", loss_mean, display=False)
glue("test_loss_std", loss_std, display=False)
glue("test_base", base_mean.item(), display=False)
glue("test_base_std", base_std.item(), display=False)

# %% [markdown]
# On the test windows the loss is {glue:text}`test_loss:.3f` ± {glue:text}`test_loss_std:.3f` against a base loss
# of {glue:text}`test_base:.3f` ± {glue:text}`test_base_std:.3f` (mean and standard deviation over three noise
# seeds, one training run); the noise level moves both together, and their ratio is
# {glue:text}`test_ratio:.3f` ± {glue:text}`test_ratio_std:.3f`. After {glue:text}`n_steps` small steps the model
# has learned a little of the score, not to fold.
#
# ### Sampling
#
# `reverse_sample` runs the sampler for a batch of conditionings, each chain on its own schedule, and returns one
# structure each. Four samples for the first 40 residues of a test chain:

# %%
# NBVAL_IGNORE_OUTPUT
target = test_chains[0]
node, pair = chain_conditioning(target.sequence[:window], target.ss[:window])
start = time.perf_counter()
samples = diffusion.reverse_sample(model, [node] * 4, [pair] * 4, generator=torch.Generator().manual_seed(0))
schedule = diffusion.schedule(window)
print(f"{len(samples)} samples of {window} residues, {schedule.N} steps of the {diffusion.config.inf_type} schedule, "
      f"in {time.perf_counter() - start:.1f} s")
sample_bonds = torch.cat([ca_ca_distances(y) for y in samples])
glue("sample_bonds", 100 * ((sample_bonds > 3.6) & (sample_bonds < 4.0)).double().mean().item(), display=False)
print(f"CA-CA distances: mean {sample_bonds.mean():.2f} Å, "
      f"{100 * ((sample_bonds > 3.6) & (sample_bonds < 4.0)).double().mean():.0f}% in 3.6-4.0 Å")
draw_chains({f"{target.name} 1-{window}": target.pos[:window].double()} | {f"sample {i}": y for i, y in
            enumerate(samples[:3])}, "A test window and samples of the briefly trained model")

# %% [markdown]
# Only {glue:text}`sample_bonds:.0f`% of the sampled bonds are in the 3.6–4.0 Å window. Most of that is the model:
# {glue:text}`n_steps` steps do not teach it the bond length. But even a perfect model would not give back the
# {glue:text}`bond_window:.1f`% of real chains, because the sampler stops at `train_tmin = 0.01`, after one last
# step of noise, and that noise stays in. Noising the real training chains to $t = 0.01$ shows how much it is:

# %%
# NBVAL_CHECK_OUTPUT
generator = torch.Generator().manual_seed(6)
for t_end, name in ((0.01, "noised_bonds_tmin"), (0.001, "noised_bonds_small_t")):
    noised_bonds = []
    for c in train_chains:
        c_sde = diffusion.sde(len(c))
        noised_bonds.append(ca_ca_distances(c_sde.sample(t_end, c.pos.double(), generator=generator)))
    noised_bonds = torch.cat(noised_bonds)
    fraction = ((noised_bonds > 3.6) & (noised_bonds < 4.0)).double().mean().item()
    print(f"real chains noised to t = {t_end}: {100 * fraction:.0f}% of CA-CA distances in 3.6-4.0 Å")
    glue(name, round(100 * fraction), display=False)

# %% [markdown]
# At $t = 0.01$ only {glue:text}`noised_bonds_tmin:.0f`% of the real chains' bonds stay in the window, against
# {glue:text}`noised_bonds_small_t:.0f`% at $t = 0.001$. For sharper
# samples, `HarmonicConfig` has two options beyond EigenFold's: `inf_tmin` ends sampling at a smaller time, and
# `inf_noise_last_step=False` makes the last step noise-free. A model must then also be trained down to that time
# (`train_tmin`).
#
# ## Summary
#
# - EigenFold's prior is a Gaussian polymer, $p(x) \propto \exp(-\tfrac12 x^\top J x)$ with $J$ $a$ times the
#   Laplacian of the chain: bonds of mean square length $3/a = 3.8^2$ Å², and otherwise a loose coil.
# - $J$'s eigenmodes are cosines along the chain; the low ones hold the overall shape (ten of them place the
#   residues of a real chain within a few Å), the high ones the local detail.
# - The forward process $dx = -\tfrac12 J x\,dt + dW$ is independent per mode: mode $j$ keeps
#   $e^{-D_j t/2}$ of its start and gains variance $\lambda_j(t) = (1 - e^{-D_j t})/D_j$. EigenFold keeps only the
#   modes with $D_j t < 5$, so noised chains are smooth at large $t$ and sampling goes coarse to fine.
# - Training times are uniform in the RMSD of the noise, between `train_tmin` and the time where the KL to the
#   prior is 2 nats; uniform times would almost never train the fine scale.
# - The entropy schedule lowers each mode's log variance by at most `step` per step; the rate schedule, EigenFold's
#   default for inference, steps by a fraction of the smallest kept variance.
# - The network predicts the adjusted score (the kernel's score minus the prior's), scaled by `score_norm`, its RMS
#   under the prior; `harmonic_loss` divides by it, so predicting zero costs about 1.
# - `HarmonicDiffusion` batches chains of any lengths with one eigendecomposition per length; with one-hot sequence
#   features in place of OmegaFold's, the score model trains on real chains on a CPU.
#
# Next, chapter 12 trains the model with the command line `python -m tpconv_lite.train`, and judges its samples.
#
# ## Exercises
#
# **1.** EigenFold's `HarmonicSDE` can add springs of weight $-b$ between residues $i$ and $i+2$ (`sde_b`). Show
# that for $b > a/4$ the matrix $J$ of a long chain has negative eigenvalues, so the "prior" no longer exists.
# Hint: for smooth modes, $D_j \approx (a - 4b)(\pi j / N)^2$.

# %% tags=["hide-cell"]
# NBVAL_CHECK_OUTPUT
# Solution 1: J = a L1 - b L2, where L1 is the Laplacian of the bonds (i, i+1) and L2 that of the pairs (i, i+2).
# On a smooth cosine of wave number q = pi j / N, L1 gives 2 - 2 cos q ~ q^2 and L2 gives 2 - 2 cos 2q ~ 4 q^2,
# so D_j ~ (a - 4 b) q^2: negative for the smoothest modes as soon as b > a / 4.
a = config.sde_a
for b_over_a in (0.2, 0.25, 0.3):
    D = PolymerSDE(N=200, a=a, b=b_over_a * a).D
    print(f"b = {b_over_a:.2f} a: {int((D[1:] < -1e-12).sum()):3d} negative eigenvalues, "
          f"smallest non-centre eigenvalue {D[1:].min():+.1e}")

# %% [markdown]
# **2.** At `tmax`, where the KL to the prior is `train_Hf = 2` nats, how many modes does EigenFold's kernel keep
# (before `train_kmin`) for chains of 50, 100, 200 and 400 residues? Why is it nearly the same for all lengths?

# %% tags=["hide-cell"]
# NBVAL_CHECK_OUTPUT
# Solution 2: for smooth modes D_j ~ a (pi j / N)^2, so D_j t = (j / N)^2 a pi^2 t: the KL and the cut-off D_j t < 5
# depend on t only through c = a pi^2 t / N^2. KL_H = 2 fixes c at nearly the same value for every long chain, and
# with it the number of j with c j^2 < 5.
for n in (50, 100, 200, 400):
    n_sde = PolymerSDE(N=n, a=config.sde_a, b=0)
    n_tmax = EntropySchedule(n_sde, Hf=2, step=0.5, cutoff=5, kmin=5, tmin=0.01).tmax
    kept_at_tmax = int((n_sde.D * n_tmax < 5).sum()) - 1
    print(f"N = {n:3d}: tmax = {n_tmax:8.1f}, a pi^2 tmax / N^2 = {config.sde_a * math.pi**2 * n_tmax / n**2:.3f}, "
          f"modes kept {kept_at_tmax}")

# %%
# NBVAL_IGNORE_OUTPUT
print(f"chapter run time: {time.perf_counter() - chapter_start:.0f} s")

# %% [markdown]
# ## References
#
# Further reading: EigenFold {footcite:p}`jing2023eigenfold` for harmonic diffusion, its schedules and its results;
# {footcite:t}`rouse1953theory` for the bead-and-spring polymer and its normal modes;
# {footcite:t}`uhlenbeck1930theory` for the process that noises it; score SDEs {footcite:p}`song2021score` and
# {footcite:t}`vincent2011connection` for the reverse process and denoising score matching; AlphaFold
# {footcite:p}`jumper2021alphafold` for the clipped relative positions; the PDB {footcite:p}`berman2000pdb` and DSSP
# {footcite:p}`kabsch1983dssp` for the data.
#
# ```{footbibliography}
# ```
