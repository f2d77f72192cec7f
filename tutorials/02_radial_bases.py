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
# # 2. Radial bases
#
# The 2019 tutorial {footcite:p}`geiger2019e3nn` builds its convolution filter from two factors, a learned function
# of the edge length $r$ and the spherical harmonics of the edge direction: $W(\vec r) = \rho(r)\, Y(\hat r)$. This
# chapter is about the first factor. A network cannot do much with a single number $r$, so $\rho$ is built in two steps:
# a fixed *basis* spreads $r$ over a few smooth bumps $B_b(r)$, and a small MLP turns those into $c$ weights,
#
# $$\rho_c(r) = W_{ch}\, \sigma\big(W_{hb}\, B_b(r)\big),$$
#
# with $b$ running over the basis functions, $h$ over hidden neurons and $c$ over the weights of the tensor product
# that follows (the tutorial calls them paths; chapter 3 counts them). The tutorial called the whole thing a
# `RadialModel`; here it is `RadialMLP`.

# %% [markdown]
# ```{admonition} Run this chapter
# :class: tip
# Locally: `make execute` in a clone of the repository, or open `tutorials/02_radial_bases.ipynb` in Jupyter.
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

# %% [markdown]
# The package's modules start with `from __future__ import annotations`, and so does this chapter, so that the
# package code shown below runs here exactly as written.

# %%
# NBVAL_IGNORE_OUTPUT
from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import e3nn
import matplotlib.pyplot as plt
import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from e3nn.nn import FullyConnectedNet
from torch import Tensor

import tpconv_lite
from tpconv_lite import radial, radius_graph, scatter

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
# ## Goals
#
# By the end of this chapter you can
# 1. read the 2019 cosine basis, write it as `cosine_basis`, and say how it relates to today's
#    `e3nn.math.soft_one_hot_linspace`;
# 2. choose among today's bases (`gaussian`, `cosine`, `smooth_finite`, `fourier`, `bessel`) knowing which sum to
#    one, which vanish smoothly at the cutoff, and which one is NaN at $r = 0$;
# 3. embed distances with `GaussianSmearing`, as the score model of chapter 9 does;
# 4. build the radial network $\rho_c(r)$ with `RadialMLP`, explain its $\sqrt{n}$ input scaling, rebuild the 2019
#    settings, and make its output go to zero as a neighbour leaves the cutoff sphere.

# %% [markdown]
# ## The 2019 basis: squared cosines
#
# The tutorial put `number_of_basis` centres on `linspace(0, max_radius, number_of_basis)` and wrote the bump as a
# chain of tensor methods. Here is its cell, without its imports and its plot:

# %%
max_radius = 3.0
number_of_basis = 3
radii = torch.linspace(0, max_radius, steps=number_of_basis)
step = radii[1] - radii[0]
basis = lambda x: x.div(step).add(1).relu().sub(2).neg().relu().add(1).mul(math.pi / 2).cos().pow(2)

# %% [markdown]
# What does the chain compute? Write $u = x / \text{step}$. For $-1 \le u \le 1$ the two `relu`s are inactive and
# the argument of the cosine is $\frac{\pi}{2}(2 - u)$, so the bump is $\cos^2(\pi u / 2)$: height 1 at $u = 0$,
# zero with zero slope at $u = \pm 1$. Outside, the `relu`s clamp the argument to $\frac{3\pi}{2}$ (left) or
# $\frac{\pi}{2}$ (right), where $\cos^2$ is zero up to rounding. One bump, of half-width one step:

# %%
# NBVAL_CHECK_OUTPUT
u = torch.linspace(-3, 3, 601, dtype=torch.float64)
bump = torch.where(u.abs() < 1, torch.cos(math.pi / 2 * u).pow(2), torch.zeros_like(u))
print("centres:", radii.tolist(), "| step:", step.item())
print("basis(x) == cos^2(pi x / (2 step)) within one step, 0 beyond:",
      torch.allclose(basis(u * step), bump, atol=1e-15))

# %% [markdown]
# e3nn's old `CosineBasisModel` evaluated this bump at $x = r - c_b$ for every centre $c_b$, giving $B_b(r)$.
# Neighbouring bumps are $\cos^2$ and $\sin^2$ of the same angle, so on $[0, r_{\max}]$ ($r_{\max}$ = `max_radius`)
# they sum to exactly one: a *partition of unity*. Past `max_radius` the last bump still has one step to go; the
# basis has no cutoff.

# %%
# NBVAL_CHECK_OUTPUT
r = torch.tensor([0.0, 0.75, 1.5, 2.25, 3.0, 3.75, 4.5])
B = basis(r[:, None] - radii)  # (7, 3): one bump per centre, as CosineBasisModel evaluated them
for r_k, B_k in zip(r, B):
    print(f"r = {r_k:.2f}: B = [{', '.join(f'{v:.3f}' for v in B_k)}], sum = {B_k.sum():.3f}")

# %% [markdown]
# The package writes the same function directly, with the distance to each centre clamped at one step. Two small
# guards come first; the functions below use them to reject bad input instead of returning NaN.

# %%
# Package code: tpconv_lite.radial._check_basis_args
def _check_basis_args(max_radius: float, number_of_basis: int) -> None:
    """Raise unless ``max_radius`` is a positive finite number and ``number_of_basis`` an integer >= 2."""
    if not (float(max_radius) > 0 and math.isfinite(max_radius)):
        raise ValueError(f"max_radius must be a positive finite number, got {max_radius}")
    if isinstance(number_of_basis, bool) or int(number_of_basis) != number_of_basis or number_of_basis < 2:
        raise ValueError(f"number_of_basis must be an integer >= 2, got {number_of_basis}")


# %%
# Package code: tpconv_lite.radial._check_lengths
def _check_lengths(r: Tensor) -> None:
    """Raise unless ``r`` is a floating tensor of finite, non-negative lengths (one check, one device sync)."""
    if not isinstance(r, Tensor) or not r.is_floating_point():
        raise TypeError(f"r must be a floating point tensor of lengths, got {getattr(r, 'dtype', type(r).__name__)}")
    if not bool(((r >= 0) & torch.isfinite(r)).all()):
        raise ValueError("r must hold finite, non-negative lengths; got a negative, NaN or infinite value")


# %%
# Package code: tpconv_lite.radial.cosine_basis
def cosine_basis(r: Tensor, max_radius: float, number_of_basis: int) -> Tensor:
    """The squared-cosine basis of the 2019 tutorial (e3nn's old ``CosineBasisModel``).

    Centres ``c_b = linspace(0, max_radius, number_of_basis)``, spacing ``step = c_1 - c_0``, and

        ``B_b(r) = cos^2(pi/2 * min(|r - c_b| / step, 1))``,

    a bump of height 1 at ``c_b`` that reaches 0 (to rounding: ``cos(pi/2)^2``), with zero slope, one spacing
    away. Neighbouring bumps add up to ``cos^2 + sin^2 = 1``, so on ``[0, max_radius]`` the basis is a partition
    of unity. It has no cutoff: the last bump is centred on ``max_radius`` and vanishes only at
    ``max_radius + step``.

    Args:
        r: (...) non-negative lengths.
        max_radius: centre of the last bump, > 0.
        number_of_basis: number of bumps, >= 2.

    Returns:
        (..., number_of_basis) basis values in [0, 1].

    Example:
        >>> cosine_basis(torch.tensor([0.0, 0.75]), max_radius=3.0, number_of_basis=3).round(decimals=4)
        tensor([[1.0000, 0.0000, 0.0000],
                [0.5000, 0.5000, 0.0000]])
    """
    _check_basis_args(max_radius, number_of_basis)
    _check_lengths(r)
    centres = torch.linspace(0.0, max_radius, number_of_basis, dtype=r.dtype, device=r.device)
    step = centres[1] - centres[0]
    distance = ((r[..., None] - centres) / step).abs().clamp(max=1.0)
    return torch.cos(math.pi / 2 * distance).pow(2)


# %% [markdown]
# It agrees with the 2019 chain (in float64, to the last bits) and with the package's own function:

# %%
# NBVAL_CHECK_OUTPUT
r = torch.linspace(0, 2 * max_radius, 1201, dtype=torch.float64)
ours = cosine_basis(r, max_radius, number_of_basis)
seed = basis(r[:, None] - radii.double())
print("cosine_basis == the 2019 chain:", bool((ours - seed).abs().max() < 1e-14))
print("cosine_basis == tpconv_lite.radial.cosine_basis:", torch.equal(ours, radial.cosine_basis(r, max_radius, 3)))
inside = r <= max_radius
print("sums to 1 on [0, max_radius]:", bool((ours[inside].sum(-1) - 1).abs().max() < 1e-14))

# %%
r = torch.linspace(0, 5, 501)
B = cosine_basis(r, max_radius, number_of_basis)
fig, ax = plt.subplots(figsize=(6, 3))
for b in range(number_of_basis):
    ax.plot(r, B[:, b], label=f"$B_{b}$, centre {radii[b]:.1f} Å")
ax.plot(r, B.sum(-1), "k--", label="sum")
ax.axvline(max_radius, color="grey", lw=0.8)
ax.set_xlabel("r (Å)")
ax.set_ylabel("$B_b(r)$")
ax.set_title("The 2019 basis: 3 squared cosines up to max_radius = 3 Å")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ### The same bumps in e3nn 0.6
#
# Today e3nn has one function for all its bases, `soft_one_hot_linspace(x, start, end, number, basis, cutoff)`. Its
# `"cosine"` basis is $\cos\big(\frac{\pi}{2}(x - c_b)/\text{step}\big)$ within one step of each centre: the 2019 bump
# *without* the square. e3nn normalises its bases so that the *squares* sum to about one; for this basis they sum to
# exactly one, which is the 2019 partition of unity again. So with `cutoff=False` the old basis is the square of the
# new one.
#
# With `cutoff=True`, e3nn wants every function to vanish outside `[start, end]`: it spreads `number + 2` points over
# the interval and drops both ends, so the centres move inwards and the step shrinks. To get the 2019 centres back,
# move the ends out by one step. Numerically:

# %%
# NBVAL_CHECK_OUTPUT
r = torch.linspace(0, 6, 6001, dtype=torch.float64)
seed_cos = cosine_basis(r, max_radius, number_of_basis)
spacing = max_radius / (number_of_basis - 1)  # 1.5 Å
variants = {
    "cutoff=False, ends 0 and 3   ": soft_one_hot_linspace(r, 0.0, max_radius, 3, "cosine", cutoff=False),
    "cutoff=True,  ends 0 and 3   ": soft_one_hot_linspace(r, 0.0, max_radius, 3, "cosine", cutoff=True),
    "cutoff=True,  ends -1.5 and 4.5": soft_one_hot_linspace(r, -spacing, max_radius + spacing, 3, "cosine", True),
}
for name, e3nn_cos in variants.items():
    peaks = [round(p, 2) for p in r[e3nn_cos.argmax(0)].tolist()]
    same = bool((e3nn_cos.pow(2) - seed_cos).abs().max() < 1e-14)
    print(f"{name}: centres {peaks}, its square is the 2019 basis: {same}")

# %% [markdown]
# ## Today's bases side by side
#
# `soft_one_hot_linspace` offers five families. With centres $c_b$ on a grid of spacing $\text{step}$ and
# $d = (x - c_b)/\text{step}$:
#
# | basis | $B_b(x)$ (before normalisation) | with `cutoff=True` |
# |---|---|---|
# | `gaussian` | $e^{-d^2}$ | centres move inwards, tails remain |
# | `cosine` | $\cos(\pi d / 2)$ for $\lvert d\rvert < 1$ | centres move inwards |
# | `smooth_finite` | $e^{2}\, s(d + 1)\, s(1 - d)$, $s(t) = e^{-1/t}$ for $t > 0$ | centres move inwards |
# | `fourier` | $\cos(\pi b\, x')$, $b = 0..n{-}1$, $x' = \frac{x - \text{start}}{\text{end} - \text{start}}$ | $\sin(\pi b\, x')$, $b = 1..n$, zero outside |
# | `bessel` | $\sqrt{2/c}\, \sin(b \pi x / c) / x$, $b = 1..n$, $c = \text{end} - \text{start}$ | zero outside |
#
# The Bessel functions are the radial basis of DimeNet {footcite:p}`klicpera2020dimenet`, also used by NequIP
# {footcite:p}`batzner2022nequip`. Here they all are, four functions on $[0, 3]$ Å:

# %%
BASIS_NAMES = ["gaussian", "cosine", "smooth_finite", "fourier", "bessel"]
r = torch.linspace(0, 3.6, 361)
fig, axes = plt.subplots(2, 5, figsize=(11, 4.2), sharex=True, sharey=True)
for row, cutoff in enumerate([False, True]):
    for ax, name in zip(axes[row], BASIS_NAMES):
        ax.plot(r, soft_one_hot_linspace(r, 0.0, max_radius, 4, basis=name, cutoff=cutoff))
        ax.axvline(max_radius, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{name}, cutoff={cutoff}", fontsize=9)
        ax.set_ylim(-1.2, 2.2)
for ax in axes[1]:
    ax.set_xlabel("r (Å)")
for ax in axes[:, 0]:
    ax.set_ylabel("$B_b(r)$")
fig.suptitle("soft_one_hot_linspace(r, 0, 3, 4, basis, cutoff): the dashed line is end = 3 Å")
fig.tight_layout()
plt.show()

# %% [markdown]
# ### Which ones sum to one?
#
# Two different promises are at play. The 2019 basis is a partition of unity: $\sum_b B_b(r) = 1$. e3nn's bases are
# normalised so that $\sum_b B_b(r)^2 \approx 1$ *on average* over the interval (the reason comes with the radial
# network, below). Measure both sums over $0 < r \le 3$ Å (Bessel is NaN at exactly 0, see below):

# %%
# NBVAL_CHECK_OUTPUT
r = torch.linspace(0, max_radius, 3001, dtype=torch.float64)[1:]
print(f"{'basis':14s} {'cutoff':6s} {'sum of B: range':>16s} {'sum of B^2: range':>18s} {'mean':>5s}")
rows = [("2019 cosine", False, cosine_basis(r, max_radius, 4))]
for name in BASIS_NAMES:
    for cutoff in (False, True):
        rows.append((name, cutoff, soft_one_hot_linspace(r, 0.0, max_radius, 4, name, cutoff)))
for name, cutoff, B in rows:
    s, s2 = B.sum(-1), B.pow(2).sum(-1)
    ranges = f"[{s.min():5.2f}, {s.max():5.2f}]   [{s2.min():5.2f}, {s2.max():5.2f}]"
    print(f"{name:14s} {cutoff!s:6s} {ranges}   {s2.mean():5.2f}")

# %%
e3nn_means = [float(B.pow(2).sum(-1).mean()) for name, _, B in rows[1:] if name != "bessel"]
glue("mean_sq_low", min(e3nn_means), display=False)
glue("mean_sq_high", max(e3nn_means), display=False)
glue("bessel_mean_sq", float(rows[-1][2].pow(2).sum(-1).mean()), display=False)

# %% [markdown]
# Only the 2019 basis sums to one, and only e3nn's `cosine` without cutoff has squares that sum to exactly one; the
# others keep the mean of $\sum_b B_b^2$ between {glue:text}`mean_sq_low:.2f` and {glue:text}`mean_sq_high:.2f`
# here. With a cutoff every basis except `gaussian` must fall to zero at the end, so its sums dip there. Bessel
# ({glue:text}`bessel_mean_sq:.2f`) keeps a different promise: its functions
# $B_b(r) = \sqrt{2/c}\, \sin(b \pi r / c) / r$ are *orthonormal* with respect to the radial measure of three
# dimensions, $\int_0^c B_a(r) B_b(r)\, r^2\, dr = \delta_{ab}$ on $[0, c]$, which their $1/r$ growth near 0 pays for:

# %%
# NBVAL_CHECK_OUTPUT
r_mid = (torch.arange(30000, dtype=torch.float64) + 0.5) * max_radius / 30000  # midpoints, no r = 0
B_bessel = soft_one_hot_linspace(r_mid, 0.0, max_radius, 4, "bessel", cutoff=False)  # (30000, 4)
gram = (B_bessel[:, :, None] * B_bessel[:, None, :] * r_mid[:, None, None] ** 2).sum(0) * max_radius / 30000
print("Bessel: int_0^c B_a B_b r^2 dr is the identity to 1e-6:",
      torch.allclose(gram, torch.eye(4, dtype=torch.float64), atol=1e-6))

# %% [markdown]
# ### Which ones are smooth at the cutoff?
#
# A basis is smooth at the cutoff when its value *and* its slope go to zero as $r$ approaches `max_radius` from
# inside (beyond it everything is zero). Measure both, largest over the four functions, just inside 3 Å:

# %%
# NBVAL_CHECK_OUTPUT
x = torch.tensor([max_radius - 1e-6], dtype=torch.float64, requires_grad=True)
print(f"{'basis':14s} {'cutoff':6s} {'|B| at 3 Å':>10s} {'|dB/dr| at 3 Å':>15s}")
for name in BASIS_NAMES:
    for cutoff in (False, True):
        B = soft_one_hot_linspace(x, 0.0, max_radius, 4, name, cutoff)[0]
        slopes = torch.stack([torch.autograd.grad(B[b], x, retain_graph=True)[0][0] for b in range(4)])
        print(f"{name:14s} {cutoff!s:6s} {B.abs().max():10.3f} {slopes.abs().max():15.3f}")

# %% [markdown]
# With `cutoff=True`, `cosine`, `fourier` and `bessel` reach zero but arrive with a slope: the function is
# continuous, its derivative jumps. `gaussian` does not even reach zero. Only `smooth_finite` leaves with zero
# value and zero slope; it is built from $e^{-1/t}$, so every derivative vanishes there. That is why the package
# makes it the default. (The 2019 basis is flat at `max_radius + step`, but equal to one at `max_radius`.)

# %% [markdown]
# ### Bessel is NaN at r = 0
#
# $\sin(b\pi r/c)/r$ has the finite limit $b\pi/c$ at $r = 0$, but the computer evaluates $0/0$. A radial network
# sees $r = 0$ whenever a graph has self-loops or two points coincide, and one NaN poisons every gradient. The
# cutoff mask does not help, since $\text{NaN} \times 0$ is NaN:

# %%
# NBVAL_CHECK_OUTPUT
r0 = torch.tensor([0.0, 0.5], dtype=torch.float64, requires_grad=True)
for cutoff in (False, True):
    B = soft_one_hot_linspace(r0, 0.0, max_radius, 4, "bessel", cutoff)
    (grad,) = torch.autograd.grad(B.sum(), r0)
    print(f"cutoff={cutoff}: NaN in B at r=0: {bool(B[0].isnan().any())}, at r=0.5: {bool(B[1].isnan().any())};",
          f"NaN gradient at r=0: {bool(grad[0].isnan())}")

# %% [markdown]
# e3nn's old `BesselRadialModel` added $10^{-8}$ to the denominator. The package leaves `bessel` out of its radial
# network instead, and says so:

# %%
# NBVAL_CHECK_OUTPUT
try:
    tpconv_lite.RadialMLP(out_dim=4, max_radius=3.0, basis="bessel")
except ValueError as error:
    print("ValueError:", error)

# %% [markdown]
# ## Gaussian smearing
#
# A third family goes back to SchNet {footcite:p}`schutt2017schnet`: Gaussians on a grid of offsets. In the form
# that EigenFold {footcite:p}`jing2023eigenfold` and DiffDock {footcite:p}`corso2023diffdock` copy,
# `GaussianSmearing(start, stop, num_gaussians)`, each Gaussian has a standard deviation of one spacing, and there is
# no normalisation and no cutoff. Both models feed its output, together with other edge features, to an MLP.
# EigenFold's score model (chapter 9) embeds the *square root* of each edge length on 50 Gaussians from 0 to
# $\sqrt{50}$. The package's class keeps the original's buffer name `offset` and its attribute `coeff`, so that their
# checkpoints load unchanged:

# %%
# Package code: tpconv_lite.radial.GaussianSmearing
class GaussianSmearing(torch.nn.Module):
    """Gaussians on a grid of offsets: DiffDock's and EigenFold's embedding of distances.

    ``out[e, k] = exp(coeff * (dist[e] - offset[k])^2)`` with ``offset = linspace(start, stop, num_gaussians)``
    (a buffer, so the state_dict matches the originals) and ``coeff = -0.5 / spacing^2``: each Gaussian has a
    standard deviation of one spacing. Unlike the bases above, the Gaussians never reach zero.

    Args:
        start: first offset.
        stop: last offset, > start.
        num_gaussians: number of offsets, >= 2.

    Example:
        >>> GaussianSmearing(0.0, 5.0, 6)(torch.tensor([1.0])).round(decimals=3)
        tensor([[0.6070, 1.0000, 0.6070, 0.1350, 0.0110, 0.0000]])
    """

    def __init__(self, start: float = 0.0, stop: float = 5.0, num_gaussians: int = 50) -> None:
        super().__init__()
        if not stop > start:
            raise ValueError(f"stop must be greater than start, got start={start}, stop={stop}")
        if int(num_gaussians) != num_gaussians or num_gaussians < 2:
            raise ValueError(f"num_gaussians must be an integer >= 2, got {num_gaussians}")
        offset = torch.linspace(start, stop, num_gaussians)
        self.coeff = -0.5 / (offset[1] - offset[0]).item() ** 2
        self.register_buffer("offset", offset)

    def forward(self, dist: Tensor) -> Tensor:
        """Embed distances.

        Args:
            dist: (...) distances, flattened.

        Returns:
            (dist.numel(), num_gaussians) embedding.
        """
        if bool(torch.isnan(dist).any()):
            raise ValueError("dist contains NaN")
        dist = dist.view(-1, 1) - self.offset.view(1, -1)
        return torch.exp(self.coeff * dist.pow(2))


# %% [markdown]
# Check it against its formula, $\exp\big(-\frac{(d - o_k)^2}{2\,\text{spacing}^2}\big)$, and against the package.
# Any input shape is flattened to one row per distance. The Gaussians never reach zero, and in the middle of the grid
# they sum to $\sqrt{2\pi} \approx 2.5066$, the area under one of them in units of the spacing:

# %%
# NBVAL_CHECK_OUTPUT
smearing = GaussianSmearing(start=0.0, stop=5.0, num_gaussians=11)
print("offsets:", smearing.offset.tolist(), "| coeff:", smearing.coeff)
dist = 5 * torch.rand(3, 7)
expected = torch.exp(-0.5 / 0.5**2 * (dist.reshape(-1, 1) - torch.linspace(0, 5, 11)) ** 2)
out = smearing(dist)
print("input", tuple(dist.shape), "-> output", tuple(out.shape), "| formula:", torch.allclose(out, expected))
print("same as tpconv_lite.GaussianSmearing:", torch.equal(out, tpconv_lite.GaussianSmearing(0.0, 5.0, 11)(dist)))
middle = GaussianSmearing(0.0, 5.0, 11).double()(torch.linspace(2.0, 3.0, 5, dtype=torch.float64)).sum(-1)
print("sum in the middle:", [round(s, 4) for s in middle.tolist()], "| sqrt(2 pi) =", round(math.sqrt(2 * math.pi), 4))
print("smallest value at 5 Å (never zero):", bool(smearing(torch.tensor([5.0])).min() > 0))

# %%
r = torch.linspace(0, 6, 601)
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(r, smearing(r), lw=1)
ax.plot(r, smearing(r).sum(-1), "k--", label="sum")
ax.set_xlabel("distance (Å)")
ax.set_ylabel("$\\exp(\\mathrm{coeff}\\,(d - o_k)^2)$")
ax.set_title("GaussianSmearing(0, 5, 11): one Gaussian per 0.5 Å")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## The radial network
#
# Back to $\rho_c(r) = W_{ch}\, \sigma(W_{hb}\, B_b(r))$. e3nn 0.6 has the MLP: `FullyConnectedNet([n, hidden, ...,
# out_dim], act)`, with no biases, weights drawn from $\mathcal N(0, 1)$ and divided by $\sqrt{\text{fan-in}}$ in
# the forward pass, and the activation rescaled (`normalize2mom`) so that a standard normal input gives an output of
# second moment one. `RadialMLP` puts a basis in front of it. Its list of bases is the package's:

# %%
# NBVAL_CHECK_OUTPUT
from tpconv_lite.radial import BASES

print(BASES)

# %%
# Package code: tpconv_lite.radial.RadialMLP
class RadialMLP(torch.nn.Module):
    """The radial network ``R_c(r) = W_ch sigma(W_hb B_b(r))``: edge lengths to tensor-product weights.

    The lengths are embedded on ``number_of_basis`` basis functions, multiplied by ``sqrt(number_of_basis)``, and fed
    to ``e3nn.nn.FullyConnectedNet([number_of_basis] + [hidden] * layers + [out_dim], act)``.

    Why ``sqrt(number_of_basis)``: ``FullyConnectedNet`` initialises its weights as if every input had second moment
    1 (each layer divides by ``sqrt(fan_in)`` and rescales ``act`` with ``normalize2mom`` so a unit-moment input
    stays unit-moment). The bases of ``soft_one_hot_linspace`` are normalised so that their squares *sum* to about 1
    (for ``"cosine"`` without cutoff exactly 1 on ``[0, max_radius]``); one component then has second moment about
    ``1 / number_of_basis``, and the factor brings it back to about 1. The 2019 basis sums to 1 instead, and its
    squares to between 1/2 and 1 (3/4 on average), which the same factor brings to about 3/4.

    The output is zero at ``r >= max_radius`` only if both the basis and the MLP vanish there: a basis with
    ``cutoff=True`` (``"smooth_finite"``: exactly, with every derivative; ``"cosine"``, ``"fourier"``: to rounding;
    ``"gaussian"`` never, its ``cutoff`` only moves its centres) and an activation with ``act(0) = 0`` such as
    ``silu``, since ``FullyConnectedNet`` has no biases. The 2019 settings (:meth:`tutorial_2019`) satisfy neither.

    Args:
        out_dim: number of weights per edge (``tp.weight_numel``).
        max_radius: end of the basis range, > 0.
        number_of_basis: number of basis functions, >= 2.
        hidden: width of the hidden layers.
        layers: number of hidden layers (0 gives a linear map of the basis).
        basis: ``"smooth_finite"``, ``"cosine"``, ``"fourier"``, ``"gaussian"`` (e3nn's ``soft_one_hot_linspace``)
            or ``"seed_cosine"`` (:func:`cosine_basis`). e3nn's ``"bessel"`` is left out: its ``sin(k r) / r`` is
            NaN at ``r = 0``.
        cutoff: passed to ``soft_one_hot_linspace``; must be False for ``"seed_cosine"``, which has no cutoff form.
        act: activation of the hidden layers (normalised by ``FullyConnectedNet``).

    Example:
        >>> R = RadialMLP(out_dim=24, max_radius=2.0)
        >>> R(torch.tensor([0.5, 1.4, 2.0])).shape
        torch.Size([3, 24])
    """

    def __init__(
        self,
        out_dim: int,
        max_radius: float,
        number_of_basis: int = 10,
        hidden: int = 100,
        layers: int = 2,
        basis: str = "smooth_finite",
        cutoff: bool = True,
        act: Callable[[Tensor], Tensor] = torch.nn.functional.silu,
    ) -> None:
        super().__init__()
        _check_basis_args(max_radius, number_of_basis)
        if basis not in BASES:
            raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
        if basis == "seed_cosine" and cutoff:
            raise ValueError("the 2019 basis 'seed_cosine' has no cutoff form; pass cutoff=False")
        if out_dim < 1 or hidden < 1 or layers < 0:
            raise ValueError(f"need out_dim >= 1, hidden >= 1, layers >= 0; got {out_dim}, {hidden}, {layers}")
        self.max_radius = float(max_radius)
        self.number_of_basis = int(number_of_basis)
        self.basis = basis
        self.cutoff = cutoff
        self.net = FullyConnectedNet([self.number_of_basis] + [hidden] * layers + [out_dim], act)

    @classmethod
    def tutorial_2019(cls, out_dim: int) -> RadialMLP:
        """The settings of the 2019 tutorial: 3 squared-cosine bumps up to 3.0, two hidden layers of 100,
        softplus with ``beta=5``."""
        return cls(out_dim, 3.0, 3, hidden=100, layers=2, basis="seed_cosine", cutoff=False,
                   act=partial(torch.nn.functional.softplus, beta=5.0))

    def embed(self, r: Tensor) -> Tensor:
        """The scaled basis ``sqrt(number_of_basis) * B_b(r)``: (E,) lengths to (E, number_of_basis)."""
        if self.basis == "seed_cosine":
            values = cosine_basis(r, self.max_radius, self.number_of_basis)
        else:
            _check_lengths(r)
            values = soft_one_hot_linspace(r, 0.0, self.max_radius, self.number_of_basis, self.basis, self.cutoff)
        return values * self.number_of_basis**0.5

    def forward(self, r: Tensor) -> Tensor:
        """Weights of each edge.

        Args:
            r: (E,) non-negative edge lengths.

        Returns:
            (E, out_dim) weights.
        """
        return self.net(self.embed(r))


# %% [markdown]
# Same seed, same weights, same numbers as the package's class. The weights per edge, `out_dim`, come from the tensor
# product that will use them (`tp.weight_numel`, chapter 3); 24 is the number the 2019 convolution of `2x0e` into
# `4x0e + 4x1o + 4x2e` needs with spherical harmonics up to $l = 2$:

# %%
# NBVAL_CHECK_OUTPUT
out_dim = o3.FullyConnectedTensorProduct(
    "2x0e", o3.Irreps.spherical_harmonics(2), "4x0e + 4x1o + 4x2e", shared_weights=False
).weight_numel
r = torch.tensor([0.0, 0.7, 1.9, 2.99, 3.2])
torch.manual_seed(1)
R = RadialMLP(out_dim, max_radius=3.0)
torch.manual_seed(1)
R_package = tpconv_lite.RadialMLP(out_dim, max_radius=3.0)
print("out_dim:", out_dim, "|", R.net, "|", R.basis, "cutoff:", R.cutoff)
print("lengths", tuple(r.shape), "-> embedding", tuple(R.embed(r).shape), "-> weights", tuple(R(r).shape))
print("same as tpconv_lite.RadialMLP:", torch.equal(R(r), R_package(r)))
print("parameters (no biases):", [name for name, _ in R.named_parameters()])

# %% [markdown]
# On a GPU the module moves like any other (the cell runs on the CPU when there is none):

# %%
# NBVAL_CHECK_OUTPUT
same = torch.allclose(R.to(device)(r.to(device)).cpu(), R.cpu()(r), atol=1e-5)
print("R(r) on the chapter's device agrees with the CPU:", same)

# %% [markdown]
# ### Why multiply by $\sqrt{n}$
#
# `FullyConnectedNet` keeps signals at second moment one *if its inputs have second moment one*: each layer divides
# by $\sqrt{\text{fan-in}}$, which is right for $n$ inputs of unit second moment. An e3nn basis has
# $\sum_b B_b^2 \approx 1$, so one component has a second moment of about $1/n$, and the first layer's output would
# be $\sqrt n$ times too small. The factor $\sqrt n$ in `embed` undoes that. Measure the second moment
# $\langle x^2 \rangle$ of the embedding over $r$ uniform in $[0, r_{\max}]$, with and without the factor,
# and that of the network's output, averaged over 20 random initialisations:

# %%
# NBVAL_CHECK_OUTPUT
def second_moments(R: RadialMLP, inits: int = 20) -> tuple[float, float, float, float]:
    """<x^2> of the embedding and of the output, with and without the sqrt(n) factor, over r in [0, max_radius]."""
    r = torch.linspace(0, R.max_radius, 301, dtype=torch.float64)
    scaled = R.embed(r)
    unscaled = scaled / R.number_of_basis**0.5
    out_scaled, out_unscaled = [], []
    with torch.no_grad():
        for _ in range(inits):  # fresh N(0, 1) weights each time
            for p in R.parameters():
                p.normal_()
            out_scaled.append(R.net(scaled).pow(2).mean())
            out_unscaled.append(R.net(unscaled).pow(2).mean())
    return (scaled.pow(2).mean().item(), unscaled.pow(2).mean().item(),
            torch.stack(out_scaled).mean().item(), torch.stack(out_unscaled).mean().item())


torch.manual_seed(2)
print(f"{'basis (n = 10)':27s} {'embedding with':>14s} {'without':>8s} {'output with':>12s} {'without':>8s}")
for name, cutoff in [("cosine", False), ("smooth_finite", True), ("gaussian", True), ("fourier", True)]:
    m = second_moments(RadialMLP(8, 3.0, number_of_basis=10, basis=name, cutoff=cutoff).double())
    print(f"{name + ', cutoff=' + str(cutoff):27s} {m[0]:14.2f} {m[1]:8.2f} {m[2]:12.2f} {m[3]:8.2f}")
    if name == "cosine":
        output_ratio = m[2] / m[3]

# %%
glue("output_ratio", output_ratio, display=False)

# %% [markdown]
# With the factor, both the embedding and the output sit near one. Without it the embedding is $n = 10$ times too
# small in second moment, as predicted, but the output is {glue:text}`output_ratio:.0f` times too small at
# initialisation, twice as much. The extra factor comes from the activations. `normalize2mom` scales silu so that
# its output has second moment one *for an input of second moment one*; a small input sees only its slope at zero,
# $c / 2$ for silu scaled by $c$, and each of the two hidden layers then passes $(c/2)^2$ of the second moment of a
# small signal:

# %%
# NBVAL_CHECK_OUTPUT
from e3nn.math import normalize2mom

small_signal_gain = (normalize2mom(torch.nn.functional.silu).cst / 2) ** 2  # per layer, in second moment
predicted_ratio = 10 / small_signal_gain**2  # n, and two hidden layers
print(f"small-signal gain of the normalised silu: {small_signal_gain:.2f} per layer")
print(f"predicted output ratio {predicted_ratio:.0f}: within 25% of the measured one:",
      abs(output_ratio / predicted_ratio - 1) < 0.25)

# %%
glue("predicted_ratio", predicted_ratio, display=False)

# %% [markdown]
# The prediction, $n / (c/2)^4 \approx$ {glue:text}`predicted_ratio:.0f`, accounts for the measured ratio. Without
# the factor the network would have to learn a scale that the factor gives for free.
#
# The 2019 network took another route to the same place. Its first layer did *not* divide by $\sqrt{\text{fan-in}}$:
# a comment in e3nn's old `radial.py` says that the normalisation assumes the inputs sum to one, which the squared
# cosines do. `RadialMLP` multiplies by $\sqrt n$ and `FullyConnectedNet` divides by $\sqrt n$, so the first layer
# computes $B\,W$ exactly as in 2019. Rewrite the old forward pass and give it the same weights (old e3nn stored them
# transposed, and its `rescaled_act.Softplus` rescaled softplus to unit second moment just as `normalize2mom` does):

# %%
# NBVAL_CHECK_OUTPUT
def fc_2019(B: Tensor, weights: list[Tensor], act: Callable[[Tensor], Tensor]) -> Tensor:
    """The forward pass of e3nn's 2019 radial FC network, for inputs B that sum to one."""
    x = act(B @ weights[0])  # first layer: no 1/sqrt(fan-in)
    for W in weights[1:-1]:
        x = act(x @ W / W.shape[0] ** 0.5)
    return x @ weights[-1] / weights[-1].shape[0] ** 0.5


torch.manual_seed(3)
R_2019 = RadialMLP.tutorial_2019(out_dim).double()
r = torch.linspace(0, 4.5, 46, dtype=torch.float64)
weights = [layer.weight for layer in R_2019.net]
old = fc_2019(cosine_basis(r, 3.0, 3), weights, R_2019.net.layer0.act)
print("RadialMLP.tutorial_2019 computes the 2019 network:", torch.allclose(R_2019(r), old, atol=1e-12))
m = second_moments(R_2019)
print(f"2019 settings: embedding {m[0]:.2f} (3/4: the squares of a partition of unity), output {m[2]:.2f}")

# %% [markdown]
# ### The 2019 settings, then and now
#
# The tutorial fixed every argument of `CosineBasisModel` except `out_dim` with `functools.partial`, and let the
# kernel call `RadialModel(out_dim)` later. The same trick works with `RadialMLP`, and `RadialMLP.tutorial_2019`
# spells out the settings once: 3 bases up to 3.0, two hidden layers of 100, softplus with $\beta = 5$.
#
# | 2019 (e3nn 0.0.x) | today (e3nn 0.6, `tpconv_lite`) |
# |---|---|
# | `e3nn.radial.CosineBasisModel(out_dim, max_radius, number_of_basis, h, L, act)` | `RadialMLP(out_dim, max_radius, number_of_basis, hidden, layers, basis="seed_cosine", cutoff=False, act=...)` |
# | the lambda chain on `r - radii` | `cosine_basis(r, max_radius, number_of_basis)` |
# | `e3nn.radial.FC(d1, d2, h, L, act)` | `FullyConnectedNet([d1] + [h] * L + [d2], act)`, inputs times $\sqrt{d_1}$ |
# | `rescaled_act.Softplus(beta=5)` | `partial(torch.nn.functional.softplus, beta=5.0)` (`FullyConnectedNet` rescales it) |
# | `partial(CosineBasisModel, max_radius=3.0, number_of_basis=3, h=100, L=2, act=sp)` | `RadialMLP.tutorial_2019`, or `partial(RadialMLP, ...)` as below |
# | `GaussianRadialModel`, `BesselRadialModel` | `basis="gaussian"` (another width), `"bessel"` of `soft_one_hot_linspace` |

# %%
# NBVAL_CHECK_OUTPUT
RadialModel = partial(RadialMLP, max_radius=3.0, number_of_basis=3, hidden=100, layers=2, basis="seed_cosine",
                      cutoff=False, act=partial(torch.nn.functional.softplus, beta=5.0))
torch.manual_seed(4)
from_partial = RadialModel(out_dim)
torch.manual_seed(4)
from_classmethod = RadialMLP.tutorial_2019(out_dim)
r = torch.linspace(0, 4.5, 10)
print(from_partial.net, "| same module:", torch.equal(from_partial(r), from_classmethod(r)))

# %% [markdown]
# ## A neighbour crosses the cutoff
#
# A convolution sums messages over the neighbours within `max_radius`, usually found with `radius_graph`. When a
# neighbour drifts out of that sphere its edge disappears, and its message with it. If $\rho(r)$ is not zero at
# `max_radius`, the summed output *jumps*: the network is a discontinuous function of the positions. An energy
# computed from it is not conserved in a simulation, since the forces (its gradient) never see the jump, and a
# training loss gets a step wherever an edge appears. This is why DimeNet {footcite:p}`klicpera2020dimenet` and
# NequIP {footcite:p}`batzner2022nequip` multiply their Bessel bases by an envelope that goes smoothly to zero at the
# cutoff.
#
# Watch it happen. A centre atom at the origin has two fixed neighbours (1.2 Å and 2 Å away) and a third one that
# moves along $x$ from 2.5 to 3.5 Å. All positions go through `radius_graph` at once, one small graph per position of
# the moving atom (the `batch` vector keeps them apart); the centre's output is the sum of $\rho(r_{ij})$ over its edges.

# %%
def centre_output(R: RadialMLP, distances: Tensor) -> Tensor:
    """(S,) distances of the moving neighbour -> (S, out_dim) summed radial output at the centre atom."""
    frame = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.2, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]], dtype=distances.dtype)
    pos = frame.repeat(len(distances), 1, 1)  # (S, 4, 3)
    pos[:, 3, 0] = distances
    pos = pos.reshape(-1, 3)
    batch = torch.arange(len(distances)).repeat_interleave(4)
    src, dst = radius_graph(pos, R.max_radius, batch)  # edges j -> i with |x_j - x_i| < max_radius
    with torch.no_grad():
        messages = R((pos[src] - pos[dst]).norm(dim=-1))
    return scatter(messages, dst, dim_size=pos.shape[0]).reshape(len(distances), 4, -1)[:, 0]


torch.manual_seed(5)
models = {
    "2019: seed_cosine, softplus": RadialMLP.tutorial_2019(out_dim).double(),
    "default: smooth_finite with cutoff, silu": RadialMLP(out_dim, max_radius=3.0).double(),
}

# %%
distances = torch.linspace(2.5, 3.5, 401, dtype=torch.float64)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
for ax, (name, model) in zip(axes, models.items()):
    ax.plot(distances, centre_output(model, distances)[:, :4])
    ax.axvline(max_radius, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("distance of the moving neighbour (Å)")
    ax.set_ylabel("summed output, channels 0-3")
    ax.set_title(name, fontsize=10)
fig.suptitle("Output at the centre as a neighbour crosses max_radius = 3 Å")
fig.tight_layout()
plt.show()

# %% [markdown]
# Numerically, a billionth of an ångström either side of the cutoff:

# %%
# NBVAL_CHECK_OUTPUT
across = torch.tensor([max_radius - 1e-9, max_radius + 1e-9], dtype=torch.float64)
for name, model in models.items():
    inside, outside = centre_output(model, across)
    jump = (inside - outside).abs().max()
    print(f"{name}: jump above 0.01: {bool(jump > 0.01)}, below 1e-12: {bool(jump < 1e-12)}")

# %% [markdown]
# ### Zero at the cutoff takes two things
#
# A basis that vanishes at `max_radius` is not enough. With a zero embedding, `FullyConnectedNet` (which has no
# biases) feeds zeros to every activation, and the output is zero only if $\sigma(0) = 0$. `silu` qualifies; softplus,
# with $\text{softplus}(0) = \ln 2 / \beta$, does not. So $\rho(r_{\max}) = 0$ needs a basis that goes to
# zero *and* an activation with $\sigma(0) = 0$:

# %%
# NBVAL_CHECK_OUTPUT
softplus5 = partial(torch.nn.functional.softplus, beta=5.0)
cases = [("seed_cosine", False, "softplus", softplus5), ("gaussian", True, "silu", torch.nn.functional.silu),
         ("smooth_finite", True, "softplus", softplus5), ("smooth_finite", True, "silu", torch.nn.functional.silu),
         ("cosine", True, "silu", torch.nn.functional.silu), ("fourier", True, "silu", torch.nn.functional.silu)]
torch.manual_seed(6)
for name, cutoff, act_name, act in cases:
    model = RadialMLP(6, max_radius=3.0, number_of_basis=4, basis=name, cutoff=cutoff, act=act).double()
    at_cutoff = model(torch.tensor([max_radius], dtype=torch.float64)).abs().max()
    print(f"{name:14s} cutoff={cutoff!s:5s} act={act_name:8s} R(max_radius) = 0: {bool(at_cutoff < 1e-12)}")

# %% [markdown]
# Zero at the cutoff is the least to ask for; smooth is better. With `cosine` or `fourier` the output reaches zero with a kink (the slopes
# measured above), so forces, which are derivatives, still jump. `smooth_finite` with `silu`, the package's default,
# is zero with all its derivatives.

# %% [markdown]
# ## Summary
#
# - The 2019 basis is $B_b(r) = \cos^2\big(\frac{\pi}{2}\min(\lvert r - c_b\rvert/\text{step}, 1)\big)$ on centres
#   `linspace(0, max_radius, n)`: a partition of unity with no cutoff, `cosine_basis` in the package. It is the square
#   of e3nn's `soft_one_hot_linspace(..., basis="cosine", cutoff=False)`; with `cutoff=True` the ends must move out by
#   one step.
# - e3nn's bases are normalised so that $\sum_b B_b^2 \approx 1$; only `smooth_finite` with `cutoff=True` vanishes at
#   the cutoff with zero slope; `gaussian` never vanishes; `bessel` is NaN at $r = 0$.
# - `GaussianSmearing` is SchNet's expansion as EigenFold and DiffDock use it: no cutoff, no normalisation.
# - `RadialMLP` is $\rho_c(r) = W_{ch}\,\sigma(W_{hb}\,B_b(r))$: a basis times $\sqrt n$ (unit second moment for
#   `FullyConnectedNet`) and a bias-free MLP. `RadialMLP.tutorial_2019` is the 2019 network, weight for weight.
# - $\rho(r_{\max}) = 0$ needs a vanishing basis *and* $\sigma(0) = 0$; otherwise the output jumps when a
#   neighbour crosses the cutoff.
#
# Next, chapter 3 turns the edge *direction* into features, with spherical harmonics, and combines them with the
# node features in a tensor product weighted by $\rho_c(r)$.

# %% [markdown]
# ## Exercises
#
# **1.** SchNet and old e3nn also used a *shifted* softplus, $\text{softplus}(x) - \ln 2$. Predict whether
# `RadialMLP(6, 3.0, basis="smooth_finite", act=shifted_softplus)` is zero at `max_radius`, and whether the 2019
# basis with the same activation is. Check both.

# %% tags=["hide-cell"]
# NBVAL_CHECK_OUTPUT
# Solution 1: shifted softplus has act(0) = 0, so with smooth_finite (zero at the cutoff) the output vanishes there.
# The 2019 basis is not zero at max_radius (its last bump peaks there), so its output is not; it is zero only from
# max_radius + step = 4.5 on, where every bump has died out.
def shifted_softplus(x: Tensor) -> Tensor:
    return torch.nn.functional.softplus(x) - math.log(2.0)


torch.manual_seed(7)
ends = torch.tensor([3.0, 4.5], dtype=torch.float64)
modern = RadialMLP(6, 3.0, basis="smooth_finite", act=shifted_softplus).double()
old_basis = RadialMLP(6, 3.0, 3, basis="seed_cosine", cutoff=False, act=shifted_softplus).double()
print("smooth_finite: zero at 3.0:", bool(modern(ends[:1]).abs().max() < 1e-12))
print("2019 basis: zero at 3.0:", bool(old_basis(ends[:1]).abs().max() < 1e-12),
      "| zero at 4.5:", bool(old_basis(ends[1:]).abs().max() < 1e-12))

# %% [markdown]
# **2.** The 2019 embedding has second moment $3/4$, not 1. Derive it (hint: between two centres only two bumps are
# nonzero, $\cos^2\theta$ and $\sin^2\theta$, with $\theta$ uniform), then check it numerically for 3, 5 and 20
# basis functions. Does the answer depend on $n$?

# %% tags=["hide-cell"]
# NBVAL_CHECK_OUTPUT
# Solution 2: the scaled embedding has sum_b (sqrt(n) B_b)^2 / n = cos^4 + sin^4 = 1 - sin^2(2 theta) / 2, whose
# mean over theta is 1 - 1/4 = 3/4, whatever n is.
r = torch.linspace(0, 3.0, 30001, dtype=torch.float64)
for n in (3, 5, 20):
    embedding = n**0.5 * cosine_basis(r, 3.0, n)
    print(f"n = {n:2d}: second moment {embedding.pow(2).mean():.3f}")

# %% [markdown]
# ## References
#
# Further reading: e3nn's documentation of `soft_one_hot_linspace` and the e3nn paper {footcite:p}`geiger2022e3nn`;
# DimeNet {footcite:p}`klicpera2020dimenet` for Bessel bases and smooth cutoff envelopes; SchNet
# {footcite:p}`schutt2017schnet` for the Gaussian expansion of distances.
#
# ```{footbibliography}
# ```
