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
# # 9. A residue-level score model
#
# EigenFold {footcite:p}`jing2023eigenfold` predicts the structure of a protein by diffusion. It starts from random
# positions of the alpha carbons, one per residue, and removes noise step by step. Each step asks a network for the
# *score*: for every residue, the direction in which its noised position should move to make the whole chain more
# likely. That network, `ResiLevelTensorProductScoreModel`, is a stack of chapter 8's layers between an embedding of
# invariant features and a last tensor product that outputs one vector per residue. This chapter follows a batch of
# chains through it, tensor by tensor; checks that its output turns with the chain; trains it on a CPU on toy helices
# and samples new ones from it; and then runs an experiment on the one symmetry that it deliberately lacks, the
# mirror symmetry.

# %% [markdown]
# ```{admonition} Run this chapter
# :class: tip
# Locally: `make execute` in a clone of the repository, or open `tutorials/09_score_model.ipynb` in Jupyter.
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
import dataclasses
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import e3nn
import matplotlib.pyplot as plt
import torch
from e3nn import o3
from torch import Tensor, nn
from torch.nn import functional as F

import tpconv_lite
from tpconv_lite.diffusion import (
    chain_features,
    ideal_helix,
    noised_batch,
    sample_chains,
    toy_chains,
    toy_model_config,
    train_score_model,
)
from tpconv_lite.graph import scatter
from tpconv_lite.metrics import ca_dihedrals, handedness
from tpconv_lite.score_model import ChainBatch, ResiLevelTensorProductScoreModel, ScoreModelConfig
from tpconv_lite.testing import check_equivariance, default_dtype

try:
    from myst_nb import glue  # numbers quoted in the text are glued from the outputs of cells
except ImportError:  # e.g. in Colab, where there is no book to glue them into

    def glue(name: str, value: object, display: bool = True) -> None:
        if display:
            print(value)


device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(0)
print(f"torch {torch.__version__}, e3nn {e3nn.__version__}, tpconv_lite {tpconv_lite.__version__}, device {device}")

# %% [markdown]
# This chapter runs on the CPU even where `device` is a GPU: its chains have eight residues, far too few to keep a
# GPU busy, and the package's toy training and sampling functions create their tensors on the CPU. The settings are
# the same everywhere, and the whole chapter takes about a minute and a half on two CPU cores, most of it training
# small models, two at a time.
#
# ## Goals
#
# By the end of this chapter you can
# 1. follow a batch of chains through EigenFold's score model with the shape of every tensor: the time embedding,
#    the layer norms, the embeddings of edge lengths and sequence offsets, the embedding MLPs, the conv layers and
#    their irreps, and the final tensor product;
# 2. say what the `parity` option does: why the mean of a `1o` and a `1e` vector turns with the chain but does not
#    reflect with it, and check both with `check_equivariance`;
# 3. set up a toy diffusion (noised ideal helices, a variance-exploding forward process), train the model with
#    EigenFold's loss, and compare it with the loss of predicting zero;
# 4. say how low the loss can go at each noise level, and why it does not go to zero;
# 5. sample chains by integrating the reverse-time SDE and measure their handedness;
# 6. run the chirality experiment: models with `parity` and without, three seeds each, trained the same way, and
#    what each samples, with an interval.
#
# EigenFold's code and this book's, side by side:
#
# | EigenFold | tpconv_lite |
# |---|---|
# | `args` from `utils/parsing.py` | `ScoreModelConfig`, same names and defaults (an EigenFold `Namespace` works too) |
# | `data['resi']` of a PyG `HeteroData` | `ChainBatch`, whose `data['resi']` is a `ResidueGraph` with the same fields |
# | `model/utils.py`: `sinusoidal_embedding`, `GaussianFourierProjection`, `get_timestep_embedding` | `tpconv_lite.embeddings`, with odd sizes fixed |
# | `model/utils.py`: `GaussianSmearing` | `tpconv_lite.radial.GaussianSmearing` (chapter 2) |
# | `irrep_seq` of `(l, p)` pairs, filled to `[(mul, (l, p)), ...]` | `IRREP_SEQUENCES` of `"0e"`, `"1o"`, ..., filled to `o3.Irreps` |
# | `utils/training.py`: `loss_func` | `tpconv_lite.diffusion.score_matching_loss` |
# | a harmonic SDE, OmegaFold embeddings as features | a toy: `VESDE` on ideal helices, one-hot features (teaching only) |

# %% [markdown]
# ## The task: one vector per residue
#
# The model receives the noised positions $x_t$ of the $N$ alpha carbons ("CA") of a chain, with the noise level,
# and returns an `(N, 3)` tensor. In score-based diffusion {footcite:p}`song2021score` this is the score
# $\nabla_x \log p_t(x_t)$ of the noised data distribution; a sampler that follows it carries noise back to data.
# Two symmetries shape it. Rotating a chain does not change how likely it is, so the score must rotate with the chain
# (and moving the chain changes nothing). Mirroring a chain is different: the alpha helices of natural proteins
# are right-handed, made of left-handed (L) amino acids, and their mirror images do not occur. A model that is
# symmetric under reflections cannot know this. EigenFold's option `parity` decides which of the two the model is.
#
# ```{admonition} A teaching setting
# :class: note
# EigenFold diffuses with a *harmonic* SDE, whose noise respects the chain's bonds, and conditions on OmegaFold's
# language-model embeddings of the sequence. This chapter trains the same model in a toy setting that fits in a
# minute on a CPU: short ideal helices, a plain variance-exploding diffusion, one-hot features. What carries over is
# the model, its input format, the scaling by `score_norm` and the loss.
# ```
#
# ## Toy chains
#
# An ideal alpha helix puts residue $k$ at angle $100°\,k$ around the axis (3.6 residues per turn), at height
# $1.5\,k$ Å, at 2.3 Å from the axis: consecutive CAs are then {glue:text}`ca_ca:.2f` Å apart, close to the real
# 3.8 Å. Its handedness shows in the *pseudo-dihedral* angle of four consecutive CAs: {glue:text}`dihedral:+.0f`°
# all along a right-handed helix, the opposite along its mirror image. `handedness` averages the sine of these
# angles: {glue:text}`helix_hand:+.2f` for the ideal helix, the opposite for its mirror image.

# %%
# NBVAL_CHECK_OUTPUT
n_residues = 8
helix = ideal_helix(n_residues)  # (8, 3) Å, float64, centred
mirror_helix = ideal_helix(n_residues, right_handed=False)
bonds = (helix[1:] - helix[:-1]).norm(dim=1)
print("positions:", tuple(helix.shape), "| CA-CA distances (Å):", sorted({round(float(d), 2) for d in bonds}))
print("dihedrals (degrees), right-handed:", ca_dihedrals(helix).round().tolist())
print("dihedrals (degrees), mirror image:", ca_dihedrals(mirror_helix).round().tolist())
print(f"handedness: {float(handedness(helix)):+.2f} and {float(handedness(mirror_helix)):+.2f}")
print(f"root mean square distance of the CAs from the centre: {float(helix.pow(2).sum(1).mean().sqrt()):.1f} Å")

# %%
glue("ca_ca", float(bonds.mean()), display=False)
glue("dihedral", float(ca_dihedrals(helix).mean()), display=False)
glue("helix_hand", float(handedness(helix)), display=False)
glue("chain_rms", float(helix.pow(2).sum(1).mean().sqrt()), display=False)

# %% [markdown]
# The training set: 256 copies of the 8-residue helix, each with 0.1 Å of Gaussian noise on every coordinate,
# centred and turned by a random rotation (a proper one: no copy is mirrored). Every one of them is right-handed:

# %%
# NBVAL_CHECK_OUTPUT
chains = toy_chains(256, n_residues, generator=torch.Generator().manual_seed(123))  # 256 tensors (8, 3), float32
kinds = ["helix"] * len(chains)
print("chains:", len(chains), "x", tuple(chains[0].shape), chains[0].dtype)
print("all right-handed:", bool((handedness(torch.stack(chains)) > 0).all()))

# %% [markdown]
# EigenFold's residues carry OmegaFold embeddings, 256 numbers per residue and 128 per pair of residues. Ours carry
# stand-ins, two numbers each (`chain_features`): per residue a one-hot chain kind (helix or hairpin; every chain
# here is a helix), per pair $(i, j)$ whether the two residues are bonded and whether $i$ comes before $j$.

# %%
# NBVAL_CHECK_OUTPUT
node_features, pair_features = chain_features(n_residues, "helix")
print("node features:", tuple(node_features.shape), "residue 0:", node_features[0].tolist())
print("pair features:", tuple(pair_features.shape), "pair (0, 1):", pair_features[0, 1].tolist(),
      "pair (1, 0):", pair_features[1, 0].tolist(), "pair (0, 5):", pair_features[0, 5].tolist())

# %% [markdown]
# ## Noise: a variance-exploding forward process
#
# Diffusion time $t$ runs from 0 to 1. The forward process adds Gaussian noise of growing scale
# {footcite:p}`song2021score`:
#
# $$
# x_t = x_0 + \sigma(t)\, z, \qquad \sigma(t) = \sigma_\text{min}^{1-t}\, \sigma_\text{max}^{t},
# $$
#
# from $\sigma_\text{min} = 0.2$ Å, a blur of the data, to $\sigma_\text{max} = 5$ Å, more than the size of the
# chain (its CAs lie {glue:text}`chain_rms:.1f` Å from its centre, root mean square), so that at $t = 1$ little of
# its shape is left. (The
# package's default is 8 Å; with 5 Å fewer of the training steps go to noise levels where there is little to learn,
# and in our trials the model learned the handedness of the helices in fewer steps.) The noise $z$ is standard
# normal with the mean of each chain subtracted: the model sees only relative positions and could not predict a
# shift of the centre. The score of this Gaussian kernel is
# $\nabla \log p(x_t \mid x_0) = -(x_t - x_0)/\sigma^2 = -z/\sigma$, and denoising score matching
# {footcite:p}`vincent2011connection` trains the network to predict it. Its size changes by a factor of 25 across
# the noise levels, so EigenFold divides it out: `score_norm` is the root mean square of one coordinate of the true
# score, $\sqrt{(n-1)/n}\,/\,\sigma$ for a chain of $n$ residues (centring removes one of the $n$ degrees of freedom
# per coordinate), the model multiplies its output by it, and the network itself predicts numbers of order one. The
# package's class:

# %%
# Package code: tpconv_lite.diffusion.VESDE
class VESDE:
    """Variance-exploding diffusion ``x_t = x_0 + sigma(t) z``, ``sigma(t) = sigma_min^(1-t) sigma_max^t``.

    Noise is centred per chain (see the module docstring). Times ``t`` lie in [0, 1].

    Args:
        sigma_min: noise scale (Å) at t = 0, > 0; samples keep about this much noise.
        sigma_max: noise scale (Å) at t = 1, > sigma_min; about the size of a chain (8 Å suits 8 residues).
    """

    def __init__(self, sigma_min: float = 0.2, sigma_max: float = 8.0) -> None:
        if not 0 < sigma_min < sigma_max < math.inf:
            raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale at time ``t`` (any shape)."""
        return self.sigma_min ** (1 - t) * self.sigma_max**t

    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion coefficient ``d sigma^2 / dt = 2 sigma(t)^2 log(sigma_max / sigma_min)``."""
        return 2 * self.sigma(t) ** 2 * math.log(self.sigma_max / self.sigma_min)

    def score_norm(self, t: Tensor, n_residues: Tensor) -> Tensor:
        """Root mean square of one coordinate of the true score: ``sqrt((n - 1) / n) / sigma(t)``."""
        return torch.sqrt((n_residues - 1) / n_residues) / self.sigma(t)

    def centred_noise(self, like: Tensor, batch: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Standard normal noise shaped like ``like`` (N, 3), minus its mean over each chain of ``batch``."""
        z = torch.randn(like.shape, generator=generator, dtype=like.dtype)
        return z - scatter(z, batch, reduce="mean")[batch]

    def perturb(
        self, x0: Tensor, t: Tensor, batch: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Sample ``x_t`` from ``x_0`` and return it with the score of the kernel.

        Args:
            x0: (N, 3) clean positions of B stacked chains.
            t: (B,) time of each chain.
            batch: (N,) chain of each residue.
            generator: random generator.

        Returns:
            x_t: (N, 3) noised positions; score: (N, 3) ``-(x_t - x_0) / sigma^2``.
        """
        sigma = self.sigma(t)[batch][:, None]
        z = self.centred_noise(x0, batch, generator)
        return x0 + sigma * z, -z / sigma


# %% [markdown]
# `score_norm` is what it claims to be: over all 256 chains noised to the same time, the root mean square of the
# score's coordinates divided by `score_norm` is 1 (to sampling error), at every noise level.

# %%
# NBVAL_CHECK_OUTPUT
sde = VESDE(sigma_min=0.2, sigma_max=5.0)
x0 = torch.cat(chains)  # (2048, 3)
batch = torch.arange(len(chains)).repeat_interleave(n_residues)  # (2048,) chain of each residue
generator = torch.Generator().manual_seed(0)
for t in (0.0, 0.5, 1.0):
    t_chains = torch.full((len(chains),), t)
    x_t, score = sde.perturb(x0, t_chains, batch, generator)
    norm = sde.score_norm(t_chains, torch.tensor(float(n_residues)))[batch]
    ratio = score.pow(2).mean(dim=1).div(norm.pow(2)).mean().sqrt()
    print(f"t = {t}: sigma = {float(sde.sigma(torch.tensor(t))):.2f} Å, "
          f"rms(score) / score_norm within 3% of 1: {bool(abs(ratio - 1) < 0.03)}")
package_sde = tpconv_lite.diffusion.VESDE(sigma_min=0.2, sigma_max=5.0)
n = torch.tensor(float(n_residues))
print("the package's VESDE agrees:", torch.equal(package_sde.score_norm(t_chains, n), sde.score_norm(t_chains, n)))

# %% [markdown]
# `noised_batch` does the rest: it draws noise for a list of chains at their times, builds their features, and
# packs everything into a `ChainBatch`, the model's input. Its fields are the ones EigenFold reads from
# `data['resi']`: every ordered pair of residues of a chain is an edge (EigenFold's residue graphs are complete too),
# `edge_attr_` holds the pair features of both directions, and `node_t` gives every residue its chain's noise
# level. (EigenFold's `node_t` is a time of its harmonic SDE; here it is $\sigma(t)^2$.) Two chains, at an early and a
# late time:

# %%
# NBVAL_CHECK_OUTPUT
t_pair = torch.tensor([0.3, 0.8])
data, score = noised_batch(chains[:2], kinds[:2], t_pair, sde, torch.Generator().manual_seed(1))
resi = data["resi"]
for name in ("pos", "node_attr", "edge_index", "edge_attr_", "node_t", "batch"):
    print(f"data['resi'].{name:10s} {tuple(getattr(resi, name).shape)}")
print(f"data.score_norm          {tuple(data.score_norm.shape)} | true score {tuple(score.shape)}")
print("node_t == sigma(t)^2 of each residue's chain:", torch.allclose(resi.node_t, sde.sigma(t_pair)[resi.batch] ** 2))
glue("n_nodes", resi.pos.shape[0], display=False)
glue("n_edges", resi.edge_index.shape[1], display=False)

# %% [markdown]
# ## The model, piece by piece
#
# `ScoreModelConfig` holds EigenFold's hyperparameters under their names. `toy_model_config` shrinks them for the
# toy chains: three conv layers instead of six, 16 scalars and 8 copies of each other irrep per node, two-number
# features, and a time range that matches our $\sigma$:

# %%
# NBVAL_CHECK_OUTPUT
config = toy_model_config(sde)
eigenfold = ScoreModelConfig()
print(f"{'hyperparameter':17s} {'EigenFold':>10s} {'here':>8s}")
for field in dataclasses.fields(config):
    ours, theirs = getattr(config, field.name), getattr(eigenfold, field.name)
    if ours != theirs:
        print(f"{field.name:17s} {theirs:>10g} {ours:>8g}")

# %% [markdown]
# The model, and where its parameters are:

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
model = ResiLevelTensorProductScoreModel(config).eval()


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


for name, module in model.named_children():
    if name == "conv_layers":
        for i, layer in enumerate(module):
            print(f"conv_layers[{i}]{'':9s} {count(layer):6d}")
    else:
        print(f"{name:24s} {count(module):6d}")
print(f"{'total':24s} {count(model):6d}")

# %% [markdown]
# We now compute the forward pass by hand on the two-chain batch, in the model's own order, and compare with the
# model at the end. Write $N =$ {glue:text}`n_nodes` residues and $E =$ {glue:text}`n_edges` edges.
#
# ### Step 1: the time embedding
#
# The noise level enters through its logarithm, mapped onto $[0, 10000]$: EigenFold embeds
# $10000 \log(t / t_\text{min}) / \log(t_\text{max} / t_\text{min})$, and `toy_model_config` sets $t_\text{min},
# t_\text{max}$ to $\sigma_\text{min}^2, \sigma_\text{max}^2$ so that our range fills it. The embedding is the
# sinusoidal one of transformers and DDPM {footcite:p}`ho2020ddpm`: $\sin(x\, w_k)$ and $\cos(x\, w_k)$ for
# `dim // 2` frequencies $w_k$ from 1 down to $1/10000$. EigenFold's `model/utils.py` means to pad an odd size with
# a zero column, but calls `F.pad` without importing `F`, so odd sizes fail there; its random-Fourier alternative
# (which also uses an unimported `np`) would return one column short. The package pads both. Its code, with three
# small helpers:

# %%
# Package code: tpconv_lite.embeddings._check_dim
def _check_dim(embedding_dim: int, minimum: int) -> None:
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < minimum:
        raise ValueError(f"embedding_dim must be an integer >= {minimum}, got {embedding_dim!r}")


# %%
# Package code: tpconv_lite.embeddings._check_values
def _check_values(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 1-D tensor of shape (N,), got {shape}")


# %%
# Package code: tpconv_lite.embeddings._pad_odd
def _pad_odd(emb: Tensor, embedding_dim: int) -> Tensor:
    """Append a zero column when ``embedding_dim`` is odd."""
    return F.pad(emb, (0, embedding_dim % 2))


# %%
# Package code: tpconv_lite.embeddings.sinusoidal_embedding
def sinusoidal_embedding(timesteps: Tensor, embedding_dim: int, max_positions: float = 10000) -> Tensor:
    """Transformer-style sinusoidal embedding of a scalar per row.

    Column ``k < half`` holds ``sin(x w_k)``, column ``half + k`` holds ``cos(x w_k)``, with ``half = dim // 2``
    and ``w_k = exp(-k log(max_positions) / (half - 1))``. Inputs are meant to lie in ``[0, max_positions]``.

    Args:
        timesteps: (N,) values; integer tensors are embedded in the default float dtype.
        embedding_dim: number of output columns, >= 4 (the frequency spacing needs ``half >= 2``); odd sizes
            end with a zero column.
        max_positions: the period scale: the slowest frequency is ``1 / max_positions``.

    Returns:
        (N, embedding_dim) tensor in the dtype of ``timesteps`` (or the default float dtype).

    Example:
        >>> sinusoidal_embedding(torch.tensor([0.0]), 4)
        tensor([[0., 0., 1., 1.]])
    """
    _check_values(timesteps, "timesteps")
    _check_dim(embedding_dim, 4)
    if not max_positions > 1:
        raise ValueError(f"max_positions must be > 1, got {max_positions}")
    x = timesteps if timesteps.is_floating_point() else timesteps.to(torch.get_default_dtype())
    half = embedding_dim // 2
    step = math.log(max_positions) / (half - 1)
    frequencies = torch.exp(-step * torch.arange(half, dtype=x.dtype, device=x.device))
    angles = x[:, None] * frequencies[None, :]
    return _pad_odd(torch.cat([torch.sin(angles), torch.cos(angles)], dim=1), embedding_dim)


# %% [markdown]
# The random-Fourier alternative {footcite:p}`tancik2020fourier`, used by score SDEs, draws its frequencies once and
# never trains them; `get_timestep_embedding` picks one of the two by name:

# %%
# Package code: tpconv_lite.embeddings.GaussianFourierProjection
class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a scalar: ``[sin(2 pi x W), cos(2 pi x W)]``.

    ``W`` holds ``embedding_size // 2`` frequencies drawn once from ``N(0, scale**2)``. It is a parameter with
    ``requires_grad=False`` (as in EigenFold), so it is saved in the ``state_dict`` but never trained.

    Args:
        embedding_size: number of output columns, >= 2; odd sizes end with a zero column.
        scale: standard deviation of the frequencies.

    Example:
        >>> GaussianFourierProjection(8)(torch.rand(5)).shape
        torch.Size([5, 8])
    """

    def __init__(self, embedding_size: int = 256, scale: float = 1.0) -> None:
        super().__init__()
        _check_dim(embedding_size, 2)
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.embedding_size = embedding_size
        self.W = nn.Parameter(torch.randn(embedding_size // 2) * scale, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        """Embed ``x`` (N,) as (N, embedding_size)."""
        _check_values(x, "x")
        angles = x[:, None] * self.W[None, :] * 2 * math.pi
        return _pad_odd(torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1), self.embedding_size)


# %%
# Package code: tpconv_lite.embeddings.get_timestep_embedding
def get_timestep_embedding(
    embedding_type: str, embedding_dim: int, embedding_scale: float = 10000
) -> Callable[[Tensor], Tensor]:
    """The timestep embedding called ``embedding_type``: a function from (N,) to (N, embedding_dim).

    Args:
        embedding_type: ``"sinusoidal"`` (:func:`sinusoidal_embedding` with ``max_positions=embedding_scale``) or
            ``"fourier"`` (:class:`GaussianFourierProjection` with ``scale=embedding_scale``, as in EigenFold).
        embedding_dim: number of output columns.
        embedding_scale: see ``embedding_type``.

    Returns:
        A picklable callable; for ``"fourier"`` an ``nn.Module`` (register it in a model to save its ``W``).
    """
    if embedding_type == "sinusoidal":
        _check_dim(embedding_dim, 4)
        return partial(sinusoidal_embedding, embedding_dim=embedding_dim, max_positions=embedding_scale)
    if embedding_type == "fourier":
        return GaussianFourierProjection(embedding_size=embedding_dim, scale=embedding_scale)
    raise ValueError(f"embedding_type must be 'sinusoidal' or 'fourier', got {embedding_type!r}")


# %% [markdown]
# The two chains' noise levels, embedded in `t_emb_dim = 16` columns; the smallest and largest levels land on 0 and
# 10000; and odd sizes now keep their size:

# %%
# NBVAL_CHECK_OUTPUT
def scaled_log_time(node_t: Tensor, config: ScoreModelConfig) -> Tensor:
    """EigenFold's map of the noise level onto [0, 10000]: 10000 log(t / tmin) / log(tmax / tmin)."""
    return 10000 * (torch.log(node_t / config.tmin) / math.log(config.tmax / config.tmin))


t_emb_func = get_timestep_embedding(config.t_emb_type, config.t_emb_dim)
node_t_emb = t_emb_func(scaled_log_time(resi.node_t, config))  # (N, 16)
ends = scaled_log_time(torch.tensor([sde.sigma_min, sde.sigma_max]) ** 2, config)
print("node_t_emb:", tuple(node_t_emb.shape), "| sigma_min^2, sigma_max^2 ->", ends.round().tolist())
print("the same as the model's:", torch.allclose(node_t_emb, model.t_emb_func(scaled_log_time(resi.node_t, config))))
x = torch.linspace(0, 10000, 3)
print("sinusoidal, 5 columns:", tuple(sinusoidal_embedding(x, 5).shape), "| last column zero:",
      bool((sinusoidal_embedding(x, 5)[:, -1] == 0).all()))
print("fourier, 5 columns:", tuple(get_timestep_embedding("fourier", 5)(x).shape))

# %% [markdown]
# ### Step 2: node features
#
# The node input is the time embedding next to the residue features, normalised by a `LayerNorm`
# {footcite:p}`ba2016layer` (in EigenFold the OmegaFold embeddings vary in scale; the norm brings each residue's
# vector to zero mean and unit variance, then applies a learned scale and shift):
# `cat(node_t_emb, LayerNorm(node_attr))`, $(N, 16 + 2)$.

# %%
# NBVAL_CHECK_OUTPUT
node_in = torch.cat([node_t_emb, model.resi_node_norm(resi.node_attr)], dim=1)
print("node input:", tuple(node_in.shape))

# %% [markdown]
# ### Step 3: edge features
#
# Every edge $j \to i$ gets four invariant pieces, in this order:
#
# - its **length**, embedded by Gaussians (`GaussianSmearing`, chapter 2) placed evenly on the *square root* of the
#   length, from 0 to $\sqrt{20\text{ Å}}$ here ($\sqrt{50\text{ Å}}$ in EigenFold). Evenly spaced in $\sqrt{r}$ means
#   finely spaced at short distances, where bonds and contacts are, and coarsely at long ones;
# - its **sequence offset** $i - j$ (`dst - src`), embedded by `sinusoidal_embedding` in `resi_pos_emb_dim = 16`
#   columns. The sine half changes sign with the direction along the chain, the cosine half does not, so the model
#   knows which of two residues comes first;
# - the **time embedding** of the source residue;
# - the **pair features** of both directions, through a second `LayerNorm`.
#
# The spacing of the Gaussians, converted back to Å, at a bond and across the chain:

# %%
# NBVAL_CHECK_OUTPUT
print("distance_expansion:", model.distance_expansion.offset.shape[0], "Gaussians on sqrt(length), from 0 to",
      round(model.radius_max, 2), "(sqrt Å)")
spacing = float(model.distance_expansion.offset[1] - model.distance_expansion.offset[0])  # in sqrt(Å)
for r in (3.8, 15.0):
    print(f"at r = {r:4} Å neighbouring Gaussians are {2 * math.sqrt(r) * spacing:.2f} Å apart")

# %% [markdown]
# (From $d\sqrt{r} = dr / (2\sqrt r)$: a step of `spacing` in $\sqrt r$ is a step of $2\sqrt r \cdot$ `spacing` in
# $r$.) The offsets, and the symmetry of their embedding:

# %%
# NBVAL_CHECK_OUTPUT
src, dst = resi.edge_index
offset = dst - src  # (E,) between -7 and 7
offset_emb = sinusoidal_embedding(offset.float(), config.resi_pos_emb_dim)  # (E, 16)
half = config.resi_pos_emb_dim // 2
backwards = sinusoidal_embedding(-offset.float(), config.resi_pos_emb_dim)
print("offsets from", int(offset.min()), "to", int(offset.max()), "| embedding:", tuple(offset_emb.shape))
print("i - j -> j - i flips the sines:", torch.allclose(backwards[:, :half], -offset_emb[:, :half]),
      "| keeps the cosines:", torch.allclose(backwards[:, half:], offset_emb[:, half:]))

# %% [markdown]
# The four pieces together, with the spherical harmonics of the edge vectors $r_{ij} = x_j - x_i$ (chapter 3), are
# what `model.build_conv_graph` returns:

# %%
# NBVAL_CHECK_OUTPUT
edge_vec = resi.pos[src] - resi.pos[dst]  # (E, 3)
length_emb = model.distance_expansion(edge_vec.norm(dim=1).sqrt())  # (E, 32)
edge_in = torch.cat([length_emb, offset_emb, node_t_emb[src], model.resi_edge_norm(resi.edge_attr_)], dim=1)
edge_sh = o3.spherical_harmonics(model.sh_irreps, edge_vec, normalize=True, normalization="component")  # (E, 9)
print("length:", tuple(length_emb.shape), "+ offset:", tuple(offset_emb.shape), "+ time:",
      tuple(node_t_emb[src].shape), "+ pairs:", tuple(resi.edge_attr_.shape), "-> edge input:", tuple(edge_in.shape))
print("edge_sh:", tuple(edge_sh.shape), model.sh_irreps)
with torch.no_grad():
    graph = model.build_conv_graph(data)
print("the same as build_conv_graph:",
      all(torch.allclose(a, b) for a, b in zip((node_in, resi.edge_index, edge_in, edge_sh), graph)))

# %% [markdown]
# ### Step 4: the embedding MLPs
#
# Two MLPs, three linear layers each with ReLUs between them, turn these into `resi_ns = 16` scalars per node and per
# edge. Everything so far is invariant: the only geometric inputs are lengths. Directions enter in the next step,
# through `edge_sh`.

# %%
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    h = model.resi_node_embedding(node_in)  # (N, 16): the node features, 16x0e
    edge_emb = model.resi_edge_embedding(edge_in)  # (E, 16)
print(model.resi_node_embedding)
print("node features:", tuple(h.shape), "| edge features:", tuple(edge_emb.shape))

# %% [markdown]
# ### Step 5: the conv layers
#
# The node features then pass through `resi_conv_layers` `TensorProductConvLayer`s (chapter 8). Their irreps follow
# a fixed sequence, chosen by `order`: with `order=1`, `0e -> 0e+1o -> 0e+1o+1e -> 0e+1o+1e+0o`, repeating the last
# entry when there are more layers; with `order=2`, the same with `2e` and `2o` added. Scalars `0e` get multiplicity
# `resi_ns` in the node features and `resi_ntps` inside the tensor product, every other irrep `resi_nv` and
# `resi_ntpv`. EigenFold writes the sequence as `(l, p)` pairs and fills in the multiplicities as
# `[(mul, (l, p)), ...]`, a list that `o3.Irreps` still accepts (chapter 1's `Rs` lists, one step later in history):

# %%
# NBVAL_CHECK_OUTPUT
print(f"{'layer':5s} {'in_irreps':22s} {'tensor product: in -> out':36s} out_irreps")
for i, layer in enumerate(model.conv_layers):
    tp_in, tp_out = layer.lin_in.irreps_out, layer.tp.irreps_out
    print(f"{i:<5d} {str(layer.in_irreps):22s} {str(tp_in) + ' -> ' + str(tp_out):36s} {layer.out_irreps}")
eigenfold_style = [(16, (0, 1)), (8, (1, -1)), (8, (1, 1)), (8, (0, -1))]  # fill_mults(ns, nv, irrep_seq[3])
print("EigenFold's list == the last out_irreps:", o3.Irreps(eigenfold_style) == model.conv_layers[-1].out_irreps)

# %% [markdown]
# Each layer computes its tensor-product weights with its MLP `fc` from `3 * resi_ns` invariants per edge:
# the embedded edge features of step 4 and the current scalars of both ends, `cat(edge_emb, h[src, :ns],
# h[dst, :ns])`. The first `ns` columns of the node features are always their `0e` part, since every entry of the
# sequence starts with `0e`. These scalars change from layer to layer, so the edge features do too: the
# nonlinearity of chapter 8, recomputed at each layer.

# %%
# NBVAL_CHECK_OUTPUT
ns = config.resi_ns
with torch.no_grad():
    for i, layer in enumerate(model.conv_layers):
        layer_edge_attr = torch.cat([edge_emb, h[src, :ns], h[dst, :ns]], dim=1)  # (E, 48)
        h = layer(h, resi.edge_index, layer_edge_attr, edge_sh)
        print(f"layer {i}: edge features {tuple(layer_edge_attr.shape)} -> node features {tuple(h.shape)}")

# %% [markdown]
# ### Step 6: the final tensor product
#
# One vector per residue comes from a tensor product of the node features with *themselves*,
# `o3.FullyConnectedTensorProduct(out_irreps, out_irreps, "1x1o + 1x1e")`, with learned weights shared by all
# residues. With `parity=True` (EigenFold's default) it outputs a vector `1o` and a pseudovector `1e`, six numbers,
# and the model returns their mean. With `parity=False` it outputs `1x1o` alone. These are its paths:

# %%
# NBVAL_CHECK_OUTPUT
final_tp = model.resi_final_tp
for target in ("1o", "1e"):
    paths = [f"{final_tp.irreps_in1[ins.i_in1].ir} x {final_tp.irreps_in2[ins.i_in2].ir}"
             for ins in final_tp.instructions if final_tp.irreps_out[ins.i_out].ir == o3.Irrep(target)]
    print(f"-> {target}: {', '.join(paths)}")
print("weights:", final_tp.weight_numel)

# %% [markdown]
# Among them, `1o x 1o -> 1e` is a cross product of two vectors, and `0o x 1o -> 1e` a pseudoscalar (the `0o`
# channels of the last layer) times a vector. Then the mean of the two halves and the scaling by `score_norm`, and
# the hand computation meets the model:

# %%
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    out = final_tp(h, h)  # (N, 6): a 1o and a 1e vector per residue
    pred_by_hand = out.view(-1, 2, 3).mean(dim=1) * data.score_norm[resi.batch][:, None]  # (N, 3)
    pred = model(data)
print("final tp:", tuple(out.shape), final_tp.irreps_out, "-> prediction:", tuple(pred_by_hand.shape))
print("by hand == model(data):", torch.allclose(pred_by_hand, pred, atol=1e-6))

# %% [markdown]
# ## Equivariance, and what `parity` changes
#
# Rotate the chain, and the predicted score must rotate with it. Under a rotation, a `1o` vector and a `1e`
# pseudovector transform alike, by the rotation matrix, so their mean does too. Under the inversion
# $x \mapsto -x$ they part ways: the vector changes sign, the pseudovector does not (chapter 1). Their mean is
# then neither: with `parity=True` the model should rotate its output with the chain but not mirror it.
#
# The checks run in float64, on models built in `with default_dtype(torch.float64):`, with the same hyperparameters as
# above. A helper feeds positions to a model with the rest of a batch fixed:

# %%
def with_positions(data: ChainBatch, pos: Tensor) -> ChainBatch:
    """A copy of `data` with its positions replaced by pos (N, 3)."""
    return dataclasses.replace(data, resi=dataclasses.replace(data.resi, pos=pos))


def predictor(model: nn.Module, data: ChainBatch) -> Callable[[Tensor], Tensor]:
    """pos (N, 3) -> the model's predicted score (N, 3) for `data` at positions pos."""
    return lambda pos: model(with_positions(data, pos))


with default_dtype(torch.float64):
    models64 = {}
    for parity in (True, False):
        torch.manual_seed(1)
        models64[parity] = ResiLevelTensorProductScoreModel(toy_model_config(sde, parity=parity)).eval()
chains64 = [c.double() for c in chains[:2]]
data64, _ = noised_batch(chains64, kinds[:2], torch.tensor([0.3, 0.8], dtype=torch.float64), sde,
                         torch.Generator().manual_seed(1))
pos64 = data64.resi.pos

# %% [markdown]
# Rotations first (`inversion=False`): both models are equivariant.

# %%
# NBVAL_CHECK_OUTPUT
rotation_reports = {}
for parity, model64 in models64.items():
    rotation_reports[parity] = check_equivariance(predictor(model64, data64), [pos64], ["cartesian_points"], "1x1o",
                                                  inversion=False)
    print(f"parity={parity}, rotations:", rotation_reports[parity])

# %% [markdown]
# Now with rotoinversions too (the checker's default, every second trial an improper element). The parity-free
# model passes; the parity model fails, as it should:

# %%
# NBVAL_CHECK_OUTPUT
inversion_reports = {}
for parity, model64 in models64.items():
    inversion_reports[parity] = check_equivariance(predictor(model64, data64), [pos64], ["cartesian_points"],
                                                   "1x1o")
    print(f"parity={parity}, rotations and inversions:", inversion_reports[parity])

# %%
# NBVAL_IGNORE_OUTPUT
for parity in (True, False):
    print(f"parity={parity}, rotations:", rotation_reports[parity].details())
    print(f"parity={parity}, rotations and inversions:", inversion_reports[parity].details())

# %% [markdown]
# The failure is not sloppiness: before the mean, the six numbers of the final tensor product are a perfectly
# equivariant `1x1o + 1x1e`, inversions included. It is the mean that mixes a vector with a pseudovector.

# %%
# NBVAL_CHECK_OUTPUT
def final_tp_output(model: ResiLevelTensorProductScoreModel, data: ChainBatch) -> Tensor:
    """(N, 6) output of the final tensor product, before the mean: steps 1 to 6 by the model's own modules."""
    node_in, edge_index, edge_in, edge_sh = model.build_conv_graph(data)
    h, edge_emb = model.resi_node_embedding(node_in), model.resi_edge_embedding(edge_in)
    src, dst = edge_index
    ns = model.args.resi_ns
    for layer in model.conv_layers:
        h = layer(h, edge_index, torch.cat([edge_emb, h[src, :ns], h[dst, :ns]], dim=1), edge_sh)
    return model.resi_final_tp(h, h)


print("parity=True, before the mean:", check_equivariance(
    lambda pos: final_tp_output(models64[True], with_positions(data64, pos)), [pos64], ["cartesian_points"],
    "1x1o + 1x1e",
))

# %% [markdown]
# ## Training
#
# EigenFold's loss compares the predicted score with the true one, coordinate by coordinate, in units of
# `score_norm`: $\operatorname{mean}\big((s - \hat s)^2 / \mathrm{score\_norm}^2\big)$. Predicting zero gives
# $\operatorname{mean}(s^2 / \mathrm{score\_norm}^2)$, about 1 by the definition of `score_norm`: EigenFold logs it
# next to the loss as `base_loss`, the baseline that a model must beat.

# %%
# Package code: tpconv_lite.diffusion.score_matching_loss
def score_matching_loss(score: Tensor, pred: Tensor, score_norm: Tensor) -> tuple[Tensor, Tensor]:
    """EigenFold's loss and the loss of predicting zero.

    Args:
        score: (N, 3) true score.
        pred: (N, 3) predicted score.
        score_norm: (N,) score scale of each residue's chain, > 0.

    Returns:
        loss ``mean((score - pred)^2 / score_norm^2)`` and base loss ``mean(score^2 / score_norm^2)``, 0-d tensors.
    """
    if score.dim() != 2 or score.shape[1] != 3 or pred.shape != score.shape or score_norm.shape != score.shape[:1]:
        raise ValueError(
            f"need score (N, 3), pred (N, 3) and score_norm (N,), got {tuple(score.shape)}, "
            f"{tuple(pred.shape)}, {tuple(score_norm.shape)}"
        )
    if not bool((score_norm > 0).all()):
        raise ValueError("score_norm must be positive (the loss divides by it)")
    norm2 = score_norm[:, None] ** 2
    return ((score - pred) ** 2 / norm2).mean(), (score**2 / norm2).mean()


# %% [markdown]
# On 256 chains at random times, the untrained model does worse than zero (its outputs are of order one in units of
# `score_norm`, in random directions), and the baseline is close to 1:

# %%
# NBVAL_CHECK_OUTPUT
generator = torch.Generator().manual_seed(2)
data_all, score_all = noised_batch(chains, kinds, torch.rand(len(chains), generator=generator), sde, generator)
with torch.no_grad():
    pred_all = model(data_all)  # (2048, 3)
norm_all = data_all.score_norm[data_all.resi.batch]  # (2048,)
loss, base_loss = score_matching_loss(score_all, pred_all, norm_all)
print("base loss within 0.05 of 1:", bool(abs(base_loss - 1) < 0.05),
      "| untrained loss above it:", bool(loss > base_loss))
package_loss = tpconv_lite.diffusion.score_matching_loss(score_all, pred_all, norm_all)
print("the package's loss agrees:", torch.equal(package_loss[0], loss) and torch.equal(package_loss[1], base_loss))

# %% [markdown]
# `train_score_model` runs EigenFold's training step on the toy data: draw a batch of chains (with replacement) and
# a uniform time for each, noise them, and take one Adam step on the loss, with the gradient norm clipped at 1 as
# in EigenFold. Two settings for speed. The graphs are tiny, so we switch off the layers' gradient checkpointing
# (chapter 8): memory is no concern, and recomputing the messages would only cost time. And we use one CPU thread:
# with operations this small, more threads mostly wait for each other, and on a machine shared with other programs
# they can be many times slower.
#
# The learning rate is high: EigenFold trains with $3 \times 10^{-4}$, one protein per step, for days; we take
# $2 \times 10^{-2}$, about as high as this model tolerates (at $3 \times 10^{-2}$ the loss spiked in our trials),
# to get far in a few hundred steps. Every model of this chapter is trained by the same function, with the same
# data and settings; the seed picks the initial weights and the batches, times and noise of training.
#
# The chirality experiment at the end needs three seeds of each model, with and without parity: six trainings that
# do not depend on each other. So we train all six now, side by side, one per CPU core, each in a process of its
# own (`ProcessPoolExecutor`, with processes forked from this one where the system allows it), and the walkthrough
# from here on uses the first parity model, seed 0. Each process runs the same `train` on one thread, so a model
# does not depend on where it was trained; the cell after the training checks that on a short run.

# %%
N_STEPS, BATCH_SIZE, LR = 650, 16, 2e-2
SEEDS = (0, 1, 2)
torch.set_num_threads(1)


def train(parity: bool, seed: int, n_steps: int = N_STEPS
          ) -> tuple[ResiLevelTensorProductScoreModel, dict[str, list[float]], float]:
    """A fresh model (weights from `seed`) with the toy config and the given parity, trained on `chains` with the
    batches, times and noise of `seed`; and its CPU seconds."""
    torch.manual_seed(seed)
    model = ResiLevelTensorProductScoreModel(toy_model_config(sde, parity=parity))
    for layer in model.conv_layers:
        layer.checkpointing = False
    start = time.process_time()
    log = train_score_model(model, sde, chains, kinds, n_steps, BATCH_SIZE, LR, seed=seed, progress=False)
    return model, log, time.process_time() - start


def train_side_by_side(jobs: list[tuple[bool, int]], n_steps: int = N_STEPS, workers: int = 2) -> dict:
    """`train(parity, seed, n_steps)` for each job, `workers` at a time (at most one per core) in forked processes,
    or one after another in this process where the system has no fork; a dict from job to what `train` returns."""
    workers = min(workers, os.cpu_count() or 1, len(jobs))
    if "fork" in multiprocessing.get_all_start_methods():
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return dict(zip(jobs, pool.map(partial(train, n_steps=n_steps), *zip(*jobs))))
    return {job: train(*job, n_steps) for job in jobs}


def moving_average(values: list[float], window: int = 50) -> Tensor:
    return torch.tensor(values).unfold(0, window, 1).mean(dim=1)


# %%
# NBVAL_IGNORE_OUTPUT
jobs = [(parity, seed) for parity in (True, False) for seed in SEEDS]
start = time.perf_counter()
trained = train_side_by_side(jobs)
print(f"{len(jobs)} models trained in {time.perf_counter() - start:.0f} s, "
      f"{sum(seconds for _, _, seconds in trained.values()):.0f} s of CPU time in all")
model_parity, log_parity, seconds = trained[(True, 0)]
tail = N_STEPS // 10
final_loss = sum(log_parity["loss"][-tail:]) / tail
final_base = sum(log_parity["base_loss"][-tail:]) / tail
smooth_loss, smooth_base = moving_average(log_parity["loss"], 20), moving_average(log_parity["base_loss"], 20)
half_step = int((smooth_loss < smooth_base / 2).nonzero()[0]) + 20  # the last step of the first such window
print(f"{N_STEPS} steps of {BATCH_SIZE} chains in {seconds:.0f} s of CPU time ({1000 * seconds / N_STEPS:.0f} ms/step)")
print(f"last {tail} steps: loss {final_loss:.3f}, predict-zero baseline {final_base:.3f}")
print(f"the loss (mean of 20 steps) is below half the baseline from step {half_step}")
glue("n_steps", N_STEPS, display=False)
glue("final_loss", final_loss, display=False)
glue("half_step", half_step, display=False)

# %%
# NBVAL_CHECK_OUTPUT
here = train(True, 0, n_steps=20)[0]  # 20 steps of the walkthrough's model, in this process
there = train_side_by_side([(True, 0)], n_steps=20)[(True, 0)][0]  # and in a worker process
print("20 steps here and in a worker process give the same weights:",
      all(torch.equal(a, b) for a, b in zip(here.state_dict().values(), there.state_dict().values())))

# %%
# NBVAL_CHECK_OUTPUT
print("loss over the last steps below half the predict-zero baseline:", final_loss < final_base / 2)
print("below half the baseline within the first 200 steps:", half_step <= 200)

# %%
fig, ax = plt.subplots(figsize=(6, 3.2))
steps = torch.arange(1, N_STEPS + 1)
ax.plot(steps, log_parity["loss"], color="C0", alpha=0.25, lw=0.7)
ax.plot(steps[49:], moving_average(log_parity["loss"]), color="C0", label="loss (mean of 50 steps)")
ax.plot(steps[49:], moving_average(log_parity["base_loss"]), color="grey", ls="--", label="predict zero")
ax.set_xlabel("training step")
ax.set_ylabel("loss (units of score_norm²)")
ax.set_ylim(0, 1.5)
ax.set_title("Training the parity model on 8-residue helices (seed 0)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The loss falls below half the baseline by step {glue:text}`half_step` and ends, averaged over the last tenth of the
# {glue:text}`n_steps` steps, at {glue:text}`final_loss:.2f` (the training cell prints this run's numbers; they
# vary a little from machine to machine). It cannot go to zero, and the reason is worth working out, because it
# tells us how good the model is.
#
# ## How low can the loss go?
#
# The target $-z/\sigma$ contains the noise itself, and from $x_t$ alone the best any model can do is predict its
# expectation given $x_t$ (this is why denoising trains a score {footcite:p}`vincent2011connection`). What $x_t$
# does not determine stays in the loss. Part of it stays at **every** noise level. Every training chain is the same
# helix, turned by a random rotation. The noise $z$ has $3(n-1) = 21$ degrees of freedom (its centre is removed),
# and three of them are the directions in which an infinitesimal rotation moves the chain,
# $\delta x_i = \omega \times x_i$. A little noise along those three directions looks exactly like a slightly
# different orientation of the clean chain, which is just as likely: no model can predict those three components,
# at small noise or large. In units of `score_norm`$^2$ the loss averages $(z - \hat z)^2$ over the $3n$ coordinates and
# multiplies by $n / (n - 1)$; three unpredictable components of unit variance cost $3 / (3(n - 1)) = 1/7 \approx
# 0.14$. At low noise a second term joins them: the training chains differ from the ideal helix by $\varepsilon =
# 0.1$ Å per coordinate, which the model cannot tell from the added noise, and of each of the other $3n - 6$
# components a fraction $\varepsilon^2 / (\varepsilon^2 + \sigma^2)$ is unpredictable. For small noise, then,
#
# $$
# L_\text{floor}(\sigma) \approx \frac{3 + (3n - 6)\, \varepsilon^2 / (\varepsilon^2 + \sigma^2)}{3(n - 1)},
# $$
#
# 0.31 at $\sigma = 0.2$ Å, falling to 1/7 above 1 Å. At high noise the approximation fails: the orientation of the
# clean chain is then uncertain by more than a small rotation, and the three directions are no longer known. The exact
# floor comes from the best possible denoiser, which knows the ideal helix. Its simplest form fits the helix to $x_t$ by
# the *proper* rotation that fits it best (the Kabsch algorithm {footcite:p}`kabsch1976solution`, with the determinant
# fixed to $+1$ so that it never mirrors), and then shrinks $x_t$ toward it by $\varepsilon^2 / (\varepsilon^2 +
# \sigma^2)$; this is the small-noise limit. The best denoiser averages the helix over all rotations $Q$, each weighted
# by its likelihood $\exp(-\lVert x_t - Q h \rVert^2 / 2(\sigma^2 + \varepsilon^2))$, the posterior mean of $x_0$. We
# average by importance sampling, half of the rotations near the Kabsch fit and half uniform.

# %%
def kabsch(source: Tensor, target: Tensor) -> Tensor:
    """(B, 3, 3) proper rotations Q that best turn centred `source` (n, 3) onto centred `target` (B, n, 3):
    source @ Q.T is as close to target as a rotation can make it (no reflection)."""
    u, _, vt = torch.linalg.svd(source.T @ target)  # (B, 3, 3)
    flip = torch.ones(target.shape[0], 3, dtype=target.dtype)
    flip[:, 2] = torch.sign(torch.linalg.det(u @ vt))  # -1 would be a reflection: flip the last axis instead
    return (u * flip[:, None, :] @ vt).transpose(1, 2)


DATA_NOISE = 0.1  # Å, the noise of toy_chains around the ideal helix


def posterior_mean(x: Tensor, ideal: Tensor, sigma: float, n_rotations: int = 500,
                   generator: torch.Generator | None = None) -> Tensor:
    """E[x_0 | x_t = x] (B, n, 3) for x_0 = `ideal` (n, 3) turned by a uniform random rotation plus DATA_NOISE,
    x (B, n, 3) centred; by importance sampling over rotations, half near the Kabsch fit and half uniform."""
    s2 = sigma**2 + DATA_NOISE**2
    fit = kabsch(ideal, x)  # (B, 3, 3)
    inertia = torch.linalg.eigvalsh(ideal.pow(2).sum() * torch.eye(3, dtype=x.dtype) - ideal.T @ ideal)[0]
    tau = min(1.5 * math.sqrt(s2 / float(inertia)), 0.6)  # radians: the spread of the rotations near the fit
    omega = tau * torch.randn(x.shape[0], n_rotations, 3, generator=generator, dtype=x.dtype)
    near = o3.axis_angle_to_matrix(omega / omega.norm(dim=-1, keepdim=True), omega.norm(dim=-1)) @ fit[:, None]
    q = torch.cat([near, o3.rand_matrix(x.shape[0], n_rotations, dtype=x.dtype)], dim=1)  # (B, 2M, 3, 3)
    _, angle = o3.matrix_to_axis_angle(q @ fit[:, None].transpose(-1, -2))  # how far from the fit
    haar = 2 * (1 - torch.cos(angle)) / angle**2 / (8 * math.pi**2)  # uniform density in axis-angle coordinates
    near_density = torch.exp(-angle**2 / (2 * tau**2)) / (2 * math.pi * tau**2) ** 1.5 / haar
    rotated = ideal @ q.transpose(-1, -2)  # (B, 2M, n, 3)
    log_weight = -(x[:, None] - rotated).pow(2).sum((-1, -2)) / (2 * s2) - torch.log(0.5 + 0.5 * near_density)
    weight = torch.softmax(log_weight, dim=1)[..., None, None]
    return (weight * (rotated + DATA_NOISE**2 / s2 * (x[:, None] - rotated))).sum(1)


# %% [markdown]
# The three denoisers, and the trained model, on 64 fresh chains that the model never saw, at nine noise levels
# (fresh noise at each):

# %%
# NBVAL_IGNORE_OUTPUT
test_chains = toy_chains(64, n_residues, generator=torch.Generator().manual_seed(3))
ideal64, n_test = helix.double(), len(test_chains)
floor_sigmas, floor_losses = [], {"model": [], "posterior mean": [], "Kabsch fit": [], "small-noise formula": []}
generator = torch.Generator().manual_seed(5)
for i, t in enumerate(torch.linspace(0, 1, 9).tolist()):
    test_data, test_score = noised_batch(test_chains, ["helix"] * n_test, torch.full((n_test,), t), sde,
                                         torch.Generator().manual_seed(10 + i))
    sigma, norm = float(sde.sigma(torch.tensor(t))), test_data.score_norm[test_data.resi.batch]
    x_t = test_data.resi.pos.double().view(n_test, n_residues, 3)
    fitted = ideal64 @ kabsch(ideal64, x_t).transpose(1, 2)
    kabsch_x0 = fitted + DATA_NOISE**2 / (sigma**2 + DATA_NOISE**2) * (x_t - fitted)
    with torch.no_grad():
        predictions = {"model": model_parity(test_data),
                       "posterior mean": -(x_t - posterior_mean(x_t, ideal64, sigma, generator=generator)) / sigma**2,
                       "Kabsch fit": -(x_t - kabsch_x0) / sigma**2}
    for name, pred in predictions.items():
        floor_losses[name].append(float(score_matching_loss(test_score, pred.reshape(-1, 3).float(), norm)[0]))
    floor_losses["small-noise formula"].append(
        (3 + (3 * n_residues - 6) * DATA_NOISE**2 / (DATA_NOISE**2 + sigma**2)) / (3 * (n_residues - 1)))
    floor_sigmas.append(sigma)
print("sigma (Å)           " + " ".join(f"{s:6.2f}" for s in floor_sigmas))
for name, values in floor_losses.items():
    print(f"{name:20s}" + " ".join(f"{v:6.3f}" for v in values))
floor = torch.tensor(floor_losses["posterior mean"])
gap = torch.tensor(floor_losses["model"]) - floor
glue("floor_low", floor_losses["posterior mean"][0], display=False)
glue("floor_high", floor_losses["posterior mean"][-1], display=False)
glue("floor_min", float(floor.min()), display=False)
glue("gap_min", float(gap.min()), display=False)
glue("gap_max", float(gap.max()), display=False)
glue("gap_mean", float(gap.mean()), display=False)

# %%
fig, ax = plt.subplots(figsize=(6, 3.4))
styles = {"model": dict(marker="o", color="C0"), "posterior mean": dict(marker="s", color="black"),
          "Kabsch fit": dict(marker="x", ls="--", color="C2"), "small-noise formula": dict(ls=":", color="grey")}
labels = {"model": "trained model (seed 0)", "posterior mean": "best denoiser (posterior mean): the floor",
          "Kabsch fit": "Kabsch-fit denoiser", "small-noise formula": "small-noise formula"}
for name, values in floor_losses.items():
    ax.plot(floor_sigmas, values, label=labels[name], **styles[name])
ax.axhline(1 / (n_residues - 1), color="lightgrey", lw=0.8)
ax.set_xscale("log")
ax.set_xticks([0.2, 0.5, 1, 2, 5], ["0.2", "0.5", "1", "2", "5"])
ax.minorticks_off()
ax.set_xlabel("noise level σ (Å)")
ax.set_ylabel("loss (units of score_norm²)")
ax.set_ylim(0, 0.6)
ax.set_title("Loss per noise level, and the floor no denoiser can beat")
ax.legend(fontsize=8)
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print("floor above 0.1 at every noise level from 0.2 to 5 Å:", bool((floor > 0.1).all()))
print("floor within 0.03 of the small-noise formula for sigma <= 1 Å:", all(
    abs(a - b) < 0.03 for s, a, b in zip(floor_sigmas, floor, floor_losses["small-noise formula"]) if s <= 1.0))
print("trained model above the floor (to 0.01) at every noise level:", bool((gap > -0.01).all()))
print("and near it: on average less than 0.12 above:", float(gap.mean()) < 0.12)

# %% [markdown]
# The floor is {glue:text}`floor_low:.2f` at $\sigma = 0.2$ Å, follows the small-noise formula down to about 1/7
# by 1 Å, and never falls below {glue:text}`floor_min:.2f` in the chapter's range. At the highest noise levels the
# Kabsch fit is overconfident (the orientation is no longer pinned down) and the posterior mean does better: there
# the floor dips under 1/7, to {glue:text}`floor_high:.2f` at 5 Å, because $x_t$ is then mostly noise and so tells
# much of the noise itself; as $\sigma$ grows far beyond the chain's size the floor would fall towards zero. The
# trained model sits {glue:text}`gap_min:.2f` to {glue:text}`gap_max:.2f` above the floor
# ({glue:text}`gap_mean:.2f` on average): most of its loss is noise that no denoiser could predict.
#
# ## Sampling
#
# To generate a chain, start from noise at $t = 1$ and integrate the reverse-time SDE {footcite:p}`song2021score`
# down to $t = 0$ with the learned score in place of the true one. The start should be a draw from the forward
# process at $t = 1$: a training chain plus noise of scale $\sigma_\text{max}$. Score SDEs start from
# $N(0, \sigma_\text{max}^2)$, which is right when $\sigma_\text{max}$ dwarfs the data. Ours is comparable to the
# chain's size, so `sample_chains` takes the data's variance too, `data_variance`, and starts from
# $N(0, \sigma_\text{max}^2 + \text{data variance})$ per coordinate (centred); the plain start would be
# {glue:text}`prior_narrow:.0%` too narrow in standard deviation. It then takes Euler-Maruyama steps of size
# $\Delta t = 1/100$:
#
# $$
# x \leftarrow x + g(t)^2\, \hat s(x, t)\, \Delta t + g(t) \sqrt{\Delta t}\, z,
# \qquad g(t)^2 = \frac{d\sigma^2}{dt} = 2 \sigma(t)^2 \log \frac{\sigma_\text{max}}{\sigma_\text{min}},
# $$
#
# with fresh centred noise $z$ at every step: each step follows the score a little and adds a little noise back.
# (With `ode=True` it integrates the deterministic probability-flow ODE instead, $x \leftarrow x + \tfrac12 g^2 \hat
# s\, \Delta t$.) With `return_path=True` it also returns every intermediate $x$. A batch of 64 chains at once:

# %%
# NBVAL_CHECK_OUTPUT
data_variance = float(torch.cat(chains).pow(2).mean())  # Å², mean square of one coordinate of the centred chains
n = n_residues
prior_std_ratio = math.sqrt(1 + data_variance * n / (n - 1) / sde.sigma_max**2)
print(f"data variance {data_variance:.1f} Å² per coordinate; the start is {prior_std_ratio:.2f} times wider "
      f"than N(0, sigma_max^2)")

# %%
glue("prior_narrow", 1 - 1 / prior_std_ratio, display=False)

# %%
# NBVAL_IGNORE_OUTPUT
N_SAMPLES = 64
start = time.process_time()
samples_parity, path_parity = sample_chains(model_parity, sde, N_SAMPLES, n_residues, n_steps=100,
                                            data_variance=data_variance, return_path=True,
                                            generator=torch.Generator().manual_seed(100))  # (64, 8, 3), (101, 64, 8, 3)
bond_lengths = (samples_parity[:, 1:] - samples_parity[:, :-1]).norm(dim=-1)
print(f"{N_SAMPLES} chains in {time.process_time() - start:.1f} s | CA-CA distance {bond_lengths.mean():.2f} "
      f"± {bond_lengths.std():.2f} Å (training chains: 3.83)")
glue("bond_mean", float(bond_lengths.mean()), display=False)
glue("bond_std", float(bond_lengths.std()), display=False)

# %%
# NBVAL_CHECK_OUTPUT
print("mean CA-CA distance of the samples within 0.5 Å of the training chains':", abs(float(bond_lengths.mean()) -
                                                                                    float(bonds.mean())) < 0.5)

# %% [markdown]
# Snapshots of the sampling path of the first three chains, from pure noise at $\sigma = 5$ Å down to
# $\sigma_\text{min}$, each turned onto the ideal helix (grey) by the proper rotation that fits it best; a black
# square marks residue 0:

# %%
def align(pos: Tensor, reference: Tensor) -> Tensor:
    """Centred positions (n, 3) turned by the proper rotation that best fits them onto `reference` (n, 3)."""
    return pos @ kabsch(pos, reference[None].to(pos.dtype))[0].T


def draw_chain(ax, chain: Tensor, colour: str, title: str) -> None:
    """One chain on a 3D axis, turned onto the ideal helix (grey), seen from the side; a black square on residue 0."""
    fitted = align(chain.double(), helix)
    ax.plot(*helix.T.numpy(), color="lightgrey", lw=4)
    ax.plot(*fitted.T.numpy(), "-o", color=colour, ms=3)
    ax.plot(*fitted[:1].T.numpy(), "s", color="black", ms=4)
    ax.set_title(title, fontsize=8)
    ax.set(xlim=(-4, 4), ylim=(-4, 4), zlim=(-6, 6), xticks=[-3, 0, 3], yticks=[-3, 0, 3], zticks=[-5, 0, 5])
    ax.set_box_aspect((1, 1, 1.5))
    ax.view_init(elev=12, azim=-60)
    ax.tick_params(labelsize=6, pad=0)
    for axis, name in zip((ax.xaxis, ax.yaxis, ax.zaxis), "xyz"):
        axis.set_label_text(f"{name} (Å)", fontsize=7)
        axis.labelpad = -6


snapshot_steps = (0, 25, 50, 75, 100)  # t = 1, 0.75, 0.5, 0.25, 0
fig, axes = plt.subplots(3, len(snapshot_steps), figsize=(10, 8), subplot_kw=dict(projection="3d"))
for row, chain_index in enumerate(range(3)):
    for ax, step in zip(axes[row], snapshot_steps):
        x_step = path_parity[step, chain_index]
        sigma = float(sde.sigma(torch.tensor(1 - step / 100)))
        draw_chain(ax, x_step, "C1", f"σ = {sigma:.1f} Å, handedness {float(handedness(x_step)):+.2f}")
fig.suptitle("Three chains along the sampling path of the parity model (left to right: σ from 5 Å to 0.2 Å)",
             fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# Training chains and final samples side by side:

# %%
fig, axes = plt.subplots(2, 4, figsize=(9, 6.5), subplot_kw=dict(projection="3d"))
for ax, chain in zip(axes[0], chains[:4]):
    draw_chain(ax, chain, "C0", f"training, handedness {float(handedness(chain)):+.2f}")
for ax, chain in zip(axes[1], samples_parity[:4]):
    draw_chain(ax, chain, "C1", f"sample, handedness {float(handedness(chain)):+.2f}")
fig.suptitle("Training chains (top) and the first samples of the parity model (bottom),\n"
             "each turned onto the ideal right-handed helix (grey)", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# The model has learned the shape: the samples are compact helices of eight residues, their CA-CA distances
# {glue:text}`bond_mean:.2f` ± {glue:text}`bond_std:.2f` Å against {glue:text}`ca_ca:.2f` in the ideal helix, the marks of a small model
# after {glue:text}`n_steps` steps. But not every sample need be right-handed. Those whose handedness is negative
# cannot be turned onto the grey helix by any rotation: they are helices of the wrong hand, something the training
# data never contained.
#
# ## The chirality experiment
#
# How can a model that was only shown right-handed helices produce left-handed ones? For the parity-free model the
# answer is simple: it cannot avoid it. Its output is E(3)-equivariant, so its score at the mirror image of a chain
# is the mirror image of its score at the chain, and the sampler, run from mirrored noise, would produce the mirror
# image of every sample. It gives a chain and its mirror image the same probability, whatever it learned: exactly
# half of its samples are right-handed on average. The parity model is free to prefer one hand, but only through
# the pseudovector half of its output (the paths into `1e` of step 6): it must *learn* to.
#
# The experiment: train both models on three seeds each, in the same way (same data and settings, the same seeds
# for both), sample 64 chains from each of the six models, and count the hands. One seed says little, since the
# fraction varies from seed to seed; we report the mean over seeds with a 95% bootstrap interval that resamples
# both the seeds and the samples of each. EigenFold itself cannot run this experiment from its command line: its
# `--parity` flag is declared with `action='store_true'` and `default=True`, so it is always on.
#
# The six models were trained at the start of the walkthrough. Here each one samples 64 chains, with noise drawn
# from its seed (the same noise for both models of a seed); the walkthrough's model, parity and seed 0, has its
# samples already.

# %%
# NBVAL_IGNORE_OUTPUT
models, samples, paths = {True: {}, False: {}}, {True: {}, False: {}}, {True: {}, False: {}}
for (parity, seed), (trained_model, _, seconds) in trained.items():
    models[parity][seed] = trained_model
    if (parity, seed) == (True, 0):  # the walkthrough's model: its samples above
        samples[parity][seed], paths[parity][seed] = samples_parity, path_parity
        continue
    samples[parity][seed], paths[parity][seed] = sample_chains(
        trained_model, sde, N_SAMPLES, n_residues, n_steps=100, data_variance=data_variance, return_path=True,
        generator=torch.Generator().manual_seed(100 + seed))
print("CPU seconds of training:", {f"parity={parity}, seed {seed}": round(seconds)
                                   for (parity, seed), (_, _, seconds) in trained.items()})


# %%
def bootstrap_interval(right: Tensor, n_resamples: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean of `right` (seeds, samples) over seeds: resample the seeds, then each one's samples."""
    generator = torch.Generator().manual_seed(seed)
    n_seeds, n_samples = right.shape
    which_seed = torch.randint(n_seeds, (n_resamples, n_seeds, 1), generator=generator)
    which_sample = torch.randint(n_samples, (n_resamples, n_seeds, n_samples), generator=generator)
    means = right.float()[which_seed, which_sample].mean(dim=(1, 2))
    return float(means.quantile(0.025)), float(means.quantile(0.975))


# %%
# NBVAL_IGNORE_OUTPUT
right_handed = {parity: torch.stack([handedness(samples[parity][seed]) > 0 for seed in SEEDS]) for parity in
                (True, False)}  # (3, 64) booleans per model
fractions = {}
for parity, right in right_handed.items():
    low, high = bootstrap_interval(right)
    per_seed = right.float().mean(dim=1)
    fractions[parity] = (float(per_seed.mean()), low, high)
    print(f"parity={parity!s:5}: right-handed {fractions[parity][0]:.0%} (95% interval {low:.0%} to {high:.0%}); "
          f"per seed " + ", ".join(f"{f:.0%}" for f in per_seed.tolist()))
    name = "parity" if parity else "free"
    glue(f"right_{name}", fractions[parity][0], display=False)
    glue(f"right_{name}_low", low, display=False)
    glue(f"right_{name}_high", high, display=False)

# %%
# NBVAL_CHECK_OUTPUT
print("parity=False: right-handed fraction within 0.15 of one half:", abs(fractions[False][0] - 0.5) < 0.15)
print("parity=True: right-handed fraction below 75% (no strong preference at this budget):", fractions[True][0] < 0.75)

# %%
fig, ax = plt.subplots(figsize=(6, 3.2))
bins = torch.linspace(-1, 1, 21).numpy()
ax.hist(handedness(torch.stack(chains)).numpy(), bins=bins, density=True, color="lightgrey", label="training chains")
for parity in (True, False):
    h_all = handedness(torch.cat([samples[parity][seed] for seed in SEEDS]))
    ax.hist(h_all.numpy(), bins=bins, density=True, histtype="step", lw=2, label=f"parity={parity}, 3 seeds")
ax.set_xlabel("handedness (mean sine of the CA dihedrals)")
ax.set_ylabel("density")
ax.set_title(f"Handedness of {len(SEEDS) * N_SAMPLES} samples of each model")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Over three seeds, the parity-free model samples {glue:text}`right_free:.0%` right-handed chains (95% interval
# {glue:text}`right_free_low:.0%` to {glue:text}`right_free_high:.0%`), as the theorem demands. The parity model
# samples {glue:text}`right_parity:.0%` ({glue:text}`right_parity_low:.0%` to {glue:text}`right_parity_high:.0%`):
# after {glue:text}`n_steps` steps it has not learned to prefer the hand of its data, although it could. (An
# interval from three seeds is rough: it resamples the seeds that we have, and cannot see the spread of seeds we
# did not run.)
#
# The theorem itself holds to float32 rounding: the parity-free model's score at a mirrored helix is the mirrored
# score. (Here the mirror is $z \mapsto -z$, an inversion followed by a rotation.)

# %%
# NBVAL_CHECK_OUTPUT
reflect = torch.tensor([1.0, 1.0, -1.0])  # the mirror z -> -z
test_data, _ = noised_batch(test_chains, ["helix"] * n_test, torch.full((n_test,), 0.5), sde,
                            torch.Generator().manual_seed(4))
with torch.no_grad():
    pred_free = models[False][0](test_data)
    pred_free_mirrored = models[False][0](with_positions(test_data, test_data.resi.pos * reflect))
scale = pred_free.abs().max()
print("parity-free model's score on a mirrored helix equals the mirrored score:",
      torch.allclose(pred_free_mirrored, pred_free * reflect, atol=1e-4 * scale))


# %% [markdown]
# Has the parity model learned anything about hands? Compare its loss on noised right-handed test helices with its
# loss on their mirror images (the mirrored score as the target), averaged over the three seeds. For the
# parity-free model the two are equal, as the check above implies.

# %%
# NBVAL_IGNORE_OUTPUT
def mirror_losses(model: nn.Module, t: float) -> tuple[float, float]:
    """Loss on noised right-handed test helices at time t, and on their mirror images (with the mirrored score)."""
    data, score = noised_batch(test_chains, ["helix"] * n_test, torch.full((n_test,), t), sde,
                               torch.Generator().manual_seed(4))
    norm = data.score_norm[data.resi.batch]
    with torch.no_grad():
        right = score_matching_loss(score, model(data), norm)[0]
        left = score_matching_loss(score * reflect, model(with_positions(data, data.resi.pos * reflect)), norm)[0]
    return float(right), float(left)


mirror_gap = {}  # (parity, t) -> loss on mirror images minus loss on right-handed, one value per seed
for t in (0.3, 0.5, 0.7):
    sigma = float(sde.sigma(torch.tensor(t)))
    for parity in (True, False):
        pairs = [mirror_losses(models[parity][seed], t) for seed in SEEDS]
        mirror_gap[parity, t] = [left - right for right, left in pairs]
        print(f"sigma = {sigma:.1f} Å, parity={parity!s:5}: loss on right-handed "
              f"{sum(r for r, _ in pairs) / 3:.3f}, on their mirror images {sum(l for _, l in pairs) / 3:.3f}")
glue("mirror_gap_low", sum(mirror_gap[True, 0.3]) / 3, display=False)
glue("mirror_gap_1", sum(mirror_gap[True, 0.5]) / 3, display=False)
glue("mirror_gap_high", sum(mirror_gap[True, 0.7]) / 3, display=False)

# %%
# NBVAL_CHECK_OUTPUT
print("parity=False: the two losses agree to 1e-4 for every seed:",
      all(abs(g) < 1e-4 for t in (0.3, 0.5, 0.7) for g in mirror_gap[False, t]))
print("parity=True: mirror images cost more on average over the seeds, at sigma = 0.5 and 1 Å:",
      all(sum(mirror_gap[True, t]) > 0 for t in (0.3, 0.5)))

# %% [markdown]
# The parity model's loss on mirror images is higher: by {glue:text}`mirror_gap_low:.3f` at $\sigma = 0.5$ Å,
# {glue:text}`mirror_gap_1:.3f` at 1 Å and {glue:text}`mirror_gap_high:.3f` at 1.9 Å, on average over the seeds.
# It has begun to tell mirrored helices from the ones it was trained on, but mostly at low noise, and the gap is
# small next to the loss itself, which is mostly the unpredictable floor computed above.
#
# Where along the sampling path is a sample's hand decided? For each of the 192 paths of each model, compare the
# sign of the handedness of $x_t$ with that of the final sample:

# %%
# NBVAL_IGNORE_OUTPUT
path_sigmas = sde.sigma(torch.linspace(1, 0, 101))
agreement = {}
for parity in (True, False):
    hands = torch.cat([handedness(paths[parity][seed]) for seed in SEEDS], dim=1)  # (101, 192)
    agreement[parity] = ((hands > 0) == (hands[-1] > 0)).float().mean(dim=1)  # (101,)
decided = {parity: float(path_sigmas[int((a >= 0.9).nonzero()[0])]) for parity, a in agreement.items()}
for parity in (True, False):
    print(f"parity={parity!s:5}: agreement with the final hand at sigma = 5 Å {agreement[parity][0]:.0%}, "
          f"90% or more from sigma = {decided[parity]:.2f} Å down")
glue("decided_sigma", decided[True], display=False)
glue("agreement_start", float(agreement[True][0]), display=False)

fig, ax = plt.subplots(figsize=(6, 3.2))
for parity in (True, False):
    ax.plot(path_sigmas.numpy(), agreement[parity].numpy(), label=f"parity={parity}")
ax.set_xscale("log")
ax.set_xticks([0.2, 0.5, 1, 2, 5], ["0.2", "0.5", "1", "2", "5"])
ax.minorticks_off()
ax.invert_xaxis()
ax.set_xlabel("noise level σ along the sampling path (Å)")
ax.set_ylabel("same hand as the final sample")
ax.set_ylim(0.4, 1.02)
ax.set_title(f"When is the hand decided? {len(SEEDS) * N_SAMPLES} paths per model")
ax.legend(fontsize=8)
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print("at sigma_max the hand of x_t is a coin flip (agreement below 75%):", bool(agreement[True][0] < 0.75))
print("the hand is settled (90% agreement) between 0.3 and 3 Å:", all(0.3 < s < 3 for s in decided.values()))

# %% [markdown]
# At the start the hand of $x_t$ agrees with the final one for {glue:text}`agreement_start:.0%` of the parity
# model's paths, a coin flip; from $\sigma \approx$ {glue:text}`decided_sigma:.1f` Å down it agrees for 90% or more.
# The hand is decided at intermediate noise, between a few Å and about 1 Å, and that is where the parity model
# tells the hands apart least well (the gaps above). That is how a model that has learned something about hands
# still samples both of them equally. Whether longer training or a larger model would change this, this chapter
# does not show: its budget is one minute. EigenFold trains for days, on real proteins.
#
# ## Summary
#
# - `ResiLevelTensorProductScoreModel` predicts one vector per residue: a time embedding and layer-normed residue
#   features make the node input; Gaussians on $\sqrt{\text{length}}$, a sinusoidal embedding of the sequence offset,
#   the source's time embedding and layer-normed pair features make the edge input; two MLPs turn them into
#   `resi_ns` scalars each; `TensorProductConvLayer`s grow the irreps along `0e -> 0e+1o -> 0e+1o+1e ->
#   0e+1o+1e+0o`, each computing its weights from `cat(edge features, scalars of both ends)`; a final tensor product
#   of the node features with themselves gives `1x1o + 1x1e`, whose mean is multiplied by `score_norm`.
# - `score_norm`, the root mean square of one coordinate of the true score, lets the network predict numbers of
#   order one at every noise level; EigenFold's loss $\operatorname{mean}((s - \hat s)^2 / \mathrm{score\_norm}^2)$
#   is then about 1 for a model that predicts zero.
# - With `parity=True` the output rotates with the chain but does not reflect with it; with `parity=False` it is
#   E(3)-equivariant. Both are checked with `check_equivariance`, with and without inversions.
# - The loss has a floor at every noise level: the three components of the noise along infinitesimal rotations of
#   the chain look like a change of orientation and cannot be predicted (1/7 of the loss for eight residues), and
#   at low noise the data's own spread adds to them. A denoiser that knows the ideal helix computes it.
# - The sampler starts from the forward process at $t = 1$, $N(0, \sigma_\text{max}^2 + \text{data variance})$.
# - A parity-free model gives mirror images the same probability and samples both hands equally; a parity model
#   can learn the hand of its data, but the signal is weak: in this chapter's budget, over three seeds, it does
#   not prefer either hand.
#
# Next, chapter 10 measures the speed of the layer at the heart of this model, and where the package makes it
# faster.
#
# ## Exercises
#
# **1.** A beta hairpin (`tpconv_lite.diffusion.beta_hairpin`) lies flat in the plane $z = 0$, so the mirror
# $z \mapsto -z$ maps it onto itself. What does that imply for the score predicted by an E(3)-equivariant model at
# the clean hairpin? Check it with the untrained float64 parity-free model, then look at the parity model: which
# components of its prediction break the rule, and which half of the final tensor product (`1o` or `1e`) do they
# come from?

# %% tags=["hide-cell"]
# NBVAL_CHECK_OUTPUT
# Solution 1: an equivariant f must satisfy f(M x) = M f(x) for the mirror M; with M x = x (up to the numbering,
# which M does not change here) that means f(x) = M f(x): no z component. The parity model's 1o half obeys the
# same rule, but a pseudovector transforms with an extra det(M) = -1, so its 1e half must satisfy e = -M e: it
# points along z. Their mean then has z components, which all come from the 1e half. (Curie's principle, and its
# use to find symmetry breaking in Smidt et al.: an equivariant model cannot output less symmetry than it was given.)
from tpconv_lite.diffusion import beta_hairpin

hairpin = beta_hairpin(n_residues)  # (8, 3) float64, z = 0
hairpin_data, _ = noised_batch([hairpin], ["hairpin"], torch.tensor([0.5], dtype=torch.float64), sde)
hairpin_data.resi.pos = hairpin  # the clean hairpin, no noise
with torch.no_grad():
    free = models64[False](hairpin_data)
    with_parity = models64[True](hairpin_data)
    halves = final_tp_output(models64[True], hairpin_data).view(-1, 2, 3)  # (8, 2, 3): the 1o and 1e halves
print("hairpin is planar:", bool((hairpin[:, 2] == 0).all()))
print("parity=False: prediction in the plane:", bool(free[:, 2].abs().max() < 1e-10 * free.abs().max()))
print("parity=True: prediction in the plane:", bool(with_parity[:, 2].abs().max() < 1e-10 * with_parity.abs().max()))
print("  its 1o half is in the plane:", bool(halves[:, 0, 2].abs().max() < 1e-10 * halves.abs().max()),
      "| its 1e half is along z:", bool(halves[:, 1, :2].abs().max() < 1e-10 * halves.abs().max()))

# %% [markdown]
# **2.** With `resi_conv_layers=2` the last node features are `0e + 1o + 1e`, without the pseudoscalars `0o` that the
# third layer adds. List the paths of the final tensor product that produce `1e` in that model. Can a two-layer
# parity model still tell a helix from its mirror image? Check with `check_equivariance` under inversions.

# %% tags=["hide-cell"]
# NBVAL_CHECK_OUTPUT
# Solution 2: the 1e output comes from 0e x 1e, 1o x 1o (a cross product of two vectors), 1e x 0e and 1e x 1e. The
# cross product is enough to make the 1e half differ from a vector, so the model is still not mirror symmetric.
with default_dtype(torch.float64):
    torch.manual_seed(1)
    two_layers = ResiLevelTensorProductScoreModel(toy_model_config(sde, resi_conv_layers=2)).eval()
tp2 = two_layers.resi_final_tp
print("last node features:", two_layers.conv_layers[-1].out_irreps)
print("-> 1e:", ", ".join(f"{tp2.irreps_in1[i.i_in1].ir} x {tp2.irreps_in2[i.i_in2].ir}" for i in tp2.instructions
                          if tp2.irreps_out[i.i_out].ir == o3.Irrep("1e")))
print("rotations:", check_equivariance(predictor(two_layers, data64), [pos64], ["cartesian_points"], "1x1o",
                                       inversion=False))
print("rotations and inversions:", check_equivariance(predictor(two_layers, data64), [pos64], ["cartesian_points"],
                                                      "1x1o"))

# %% [markdown]
# ## References
#
# Further reading: EigenFold {footcite:p}`jing2023eigenfold` for the model, its harmonic diffusion and its results on
# proteins; score SDEs {footcite:p}`song2021score` for the forward and reverse processes and the probability-flow
# ODE; {footcite:t}`vincent2011connection` for why denoising trains a score; DDPM {footcite:p}`ho2020ddpm` for the
# sinusoidal time embedding in diffusion models; DiffDock {footcite:p}`corso2023diffdock` for a sibling model built
# from the same layer; {footcite:t}`smidt2021finding` for what symmetry an equivariant network can and cannot break.
#
# ```{footbibliography}
# ```
