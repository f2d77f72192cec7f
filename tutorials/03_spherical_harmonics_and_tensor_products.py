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
# # 3. Spherical harmonics and tensor products
#
# The 2019 tutorial "Nuts and Bolts of e3nn" {footcite:p}`geiger2019e3nn` wrote its convolution in one line,
#
# $$f'_i = \sum_{j \in n(i)} \rho(r_{ij})\, Y(\hat r_{ij}) \otimes f_j ,$$
#
# and named the two changes that make it equivariant: the filter is a learned radial function $\rho$ times the
# *spherical harmonics* $Y$ of the edge direction, and the element-wise product of an ordinary convolution becomes a
# *tensor product* $\otimes$ built from Clebsch-Gordan coefficients. Chapter 2 built $\rho$. This chapter builds the
# other two pieces, checks every property we need from them, and counts the weights that $\rho$ must produce.

# %% [markdown]
# ```{admonition} Run this chapter
# :class: tip
# Locally: `make execute` in a clone of the repository, or open
# `tutorials/03_spherical_harmonics_and_tensor_products.ipynb` in Jupyter.
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

import e3nn
import matplotlib.pyplot as plt
import numpy as np
import torch
from e3nn import o3

import tpconv_lite
from tpconv_lite import random_o3
from tpconv_lite.graph import radius_graph
from tpconv_lite.radial import RadialMLP
from tpconv_lite.testing import check_equivariance, default_dtype, wigner_D

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
# 1. turn a direction into features with `o3.spherical_harmonics`, choose between its three normalisations and its
#    `normalize` flag, and check that the result is equivariant;
# 2. say what `o3.wigner_3j(l1, l2, l3)` is, which triples it exists for (the selection rules), and why contracting
#    features with it is equivariant;
# 3. list the *paths* of a tensor product and count the weights of `o3.FullyConnectedTensorProduct` by hand;
# 4. give a tensor product one set of weights per edge, computed by a radial network from the edge length: the
#    filter of chapter 4.
#
# The 2019 names and today's, side by side:
#
# | idea | 2019 e3nn (seed tutorial) | e3nn 0.6 |
# |---|---|---|
# | angular part of the filter | `SO3.spherical_harmonics_xyz(Ls, r)` | `o3.spherical_harmonics(ls, r, True, ...)` |
# | its irreps, up to $l=2$ | `[(1, 0), (1, 1), (1, 2)]` | `o3.Irreps.spherical_harmonics(2)` = `1x0e+1x1o+1x2e` |
# | coupling coefficients | `SO3.clebsch_gordan(l_out, l_in, l_filter)` | `o3.wigner_3j(l1, l2, l3)` |
# | the whole filter | `Kernel(Rs_in, Rs_out, RadialModel)` | `FullyConnectedTensorProduct(..., shared_weights=False)` |
# | its number of weights | `n_path` (the radial model's `out_dim`) | `tp.weight_numel` |

# %% [markdown]
# ## Directions as features: spherical harmonics
#
# An edge vector $r_{ij}$ is a `1o` feature (chapter 1). A filter needs more than that: it should be able to weigh
# directions with functions of any angular resolution. The spherical harmonics $Y^l$ are those functions: for each
# degree $l$, $2l+1$ polynomials of $(x, y, z)$ that transform under rotations exactly like an irrep of degree $l$,
#
# $$Y^l(R\, x) = D^l(R)\, Y^l(x) .$$
#
# `o3.spherical_harmonics(ls, x, normalize, normalization)` evaluates them for a batch of vectors `x` of shape
# `(..., 3)`, stacking the degrees `ls` in the last dimension. The irreps of the result are `0e + 1o + 2e + 3o + ...`:
# parity $(-1)^l$, because a polynomial of degree $l$ picks up $(-1)^l$ when $x \mapsto -x$.

# %%
# NBVAL_CHECK_OUTPUT
irreps_sh = o3.Irreps.spherical_harmonics(3)
vectors = torch.randn(5, 3, dtype=torch.float64)
sh = o3.spherical_harmonics([0, 1, 2, 3], vectors, normalize=True, normalization="component")
print("irreps:", irreps_sh, "| dim:", irreps_sh.dim, "| output shape:", tuple(sh.shape))
print("Y(-x) = (-1)^l Y(x):", torch.allclose(
    o3.spherical_harmonics([0, 1, 2, 3], -vectors, normalize=True, normalization="component"),
    sh * torch.cat([torch.full((2 * l + 1,), (-1.0) ** l, dtype=torch.float64) for l in range(4)]),
))

# %% [markdown]
# ### $l = 1$ is the direction itself
#
# The three $l=1$ harmonics are the components of the unit vector $\hat x = x / |x|$, in the order $(x, y, z)$, times
# a constant that depends on the normalisation ($\sqrt 3$ for `"component"`, see below). So the harmonics of an edge
# start with the one feature we already had, and add higher degrees to it. (Before e3nn 0.2.2 the $l=1$ components
# came in a permuted order, and a position had to be reordered before it could be used as a `1o` feature; today no
# reordering is needed.)

# %%
# NBVAL_CHECK_OUTPUT
y1 = o3.spherical_harmonics(1, vectors, normalize=True, normalization="component")
unit = vectors / vectors.norm(dim=1, keepdim=True)
print("Y^1(x) == sqrt(3) * x/|x|, components in the order (x, y, z):", torch.allclose(y1, math.sqrt(3) * unit))

# %% [markdown]
# ### Three normalisations
#
# The polynomials are fixed up to one constant per degree, and e3nn offers three choices (its default is
# `"integral"`; e3nn's networks, and this book, use `"component"`, so always pass the argument):
#
# | `normalization` | on the unit sphere | meaning |
# |---|---|---|
# | `"component"` | $\sum_m Y^l_m(\hat x)^2 = 2l+1$ | each component has mean square 1 over the sphere |
# | `"norm"` | $\sum_m Y^l_m(\hat x)^2 = 1$ | $Y^l(\hat x)$ is a unit vector: `component` $/\sqrt{2l+1}$ |
# | `"integral"` | $\int_{S^2} Y^l_m(\hat x)^2 \, d\Omega = 1$ | orthonormal functions: `component` $/\sqrt{4\pi}$ |
#
# All three make different harmonics orthogonal on the sphere. To check the table we need integrals over the sphere.
# A product of two harmonics of degree at most 3 is a polynomial of degree at most 6, and a product rule integrates
# it exactly: Gauss-Legendre nodes in $z = \cos\theta$ times equally spaced angles $\varphi$.

# %%
def sphere_quadrature(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (2 n^2, 3) on the unit sphere and weights (2 n^2,) summing to 4 pi.

    Exact for polynomials of x, y, z of degree below 2n: Gauss-Legendre with n nodes in z, 2n equal steps in phi.
    """
    z, wz = (torch.tensor(a) for a in np.polynomial.legendre.leggauss(n))
    phi = torch.arange(2 * n, dtype=torch.float64) * math.pi / n
    rho = (1 - z**2).sqrt()
    points = torch.stack(torch.broadcast_tensors(rho[:, None] * phi.cos(), rho[:, None] * phi.sin(), z[:, None]), -1)
    weights = (wz[:, None] * math.pi / n).expand(n, 2 * n)
    return points.reshape(-1, 3), weights.reshape(-1)


points, weights = sphere_quadrature(6)
print("points:", tuple(points.shape), "| weights sum to 4 pi:", bool(abs(weights.sum() - 4 * math.pi) < 1e-12))

# %% [markdown]
# For each normalisation: the sum over $m$ of $Y^l_m(\hat x)^2$ at the quadrature points (it is the same at every
# point, a first sign of rotation invariance), and the matrix of integrals
# $G_{ab} = \int_{S^2} Y_a Y_b \, d\Omega$ over all 16 harmonics up to $l=3$, which must be diagonal:

# %%
# NBVAL_CHECK_OUTPUT
for normalization in ["component", "norm", "integral"]:
    Y = o3.spherical_harmonics([0, 1, 2, 3], points, normalize=True, normalization=normalization)
    sum_m = torch.stack([Y[:, l * l:(l + 1) ** 2].pow(2).sum(1) for l in range(4)], dim=1)  # (points, 4)
    gram = torch.einsum("n,na,nb->ab", weights, Y, Y)
    diagonal = gram.diagonal()
    print(f"{normalization:9s} sum_m Y_lm^2 for l=0..3: {sum_m[0].round(decimals=4).tolist()}"
          f" (same at every point: {bool((sum_m - sum_m[0]).abs().max() < 1e-12)})")
    print(f"{'':9s} integral of Y_lm^2 for l=0..3: {diagonal[[0, 1, 4, 9]].round(decimals=4).tolist()}"
          f" (G diagonal: {bool((gram - torch.diag(diagonal)).abs().max() < 1e-12)})")
print("4 pi =", round(4 * math.pi, 4), "| 1/(4 pi) =", round(1 / (4 * math.pi), 4))

# %% [markdown]
# The three rows are the table: `component` gives $2l+1$ at every point and $4\pi$ for the integrals; `norm` gives 1
# at every point; `integral` gives integrals of 1, and $(2l+1)/4\pi$ at every point.

# %% [markdown]
# ### `normalize=True` or `False`: functions of the direction, or polynomials
#
# With `normalize=True` the vectors are first divided by their length, so only the direction matters. With
# `normalize=False` e3nn evaluates the polynomials at $x$ itself. They are *homogeneous* of degree $l$:
# $Y^l(c\, x) = c^l\, Y^l(x)$, so $Y^l(x) = |x|^l\, Y^l(\hat x)$. The length then enters the feature, and the zero
# vector gives $Y^0 = 1$ and zero for every $l > 0$.

# %%
# NBVAL_CHECK_OUTPUT
c = 2.5
for l in range(4):
    raw = o3.spherical_harmonics(l, vectors, normalize=False, normalization="component")
    scaled = o3.spherical_harmonics(l, c * vectors, normalize=False, normalization="component")
    on_sphere = o3.spherical_harmonics(l, vectors, normalize=True, normalization="component")
    print(f"l={l}: Y(c x) == c^l Y(x): {torch.allclose(scaled, c**l * raw)},"
          f" Y(x) == |x|^l Y(x/|x|): {torch.allclose(raw, vectors.norm(dim=1, keepdim=True) ** l * on_sphere)}")
print("at x = 0:", o3.spherical_harmonics([0, 1, 2], torch.zeros(1, 3), normalize=False, normalization="component"))

# %% [markdown]
# The 2019 tutorial warned that its harmonics could not be differentiated with respect to the geometry, and offered a
# separate `spherical_harmonics_xyz_backwardable` for low $l$. Today's are plain polynomials, and autograd goes
# through them at every degree:

# %%
# NBVAL_CHECK_OUTPUT
x = vectors.clone().requires_grad_(True)
o3.spherical_harmonics(list(range(9)), x, normalize=True, normalization="component").pow(2).sum().backward()
print("gradient through l = 0..8 is finite:", bool(torch.isfinite(x.grad).all()))

# %% [markdown]
# ### Equivariance, checked
#
# The defining property $Y^l(Rx) = D^l(R) Y^l(x)$, for rotations and inversions, is a job for the book's checker. The
# input is a vector, so label it `1o`; or label it `"cartesian_points"` and switch translations off (a translated
# vector is a different direction). Label the output with the wrong parity for $l=3$ and the checker objects.

# %%
# NBVAL_CHECK_OUTPUT
def harmonics(x: torch.Tensor) -> torch.Tensor:
    """(N, 3) vectors -> (N, 16) spherical harmonics l = 0..3, component normalisation."""
    return o3.spherical_harmonics([0, 1, 2, 3], x, normalize=True, normalization="component")


print("input 1o:", check_equivariance(harmonics, [vectors], ["1o"], "0e + 1o + 2e + 3o"))
print("input points, no translation:",
      check_equivariance(harmonics, [vectors], ["cartesian_points"], "0e + 1o + 2e + 3o", translation=False))
print("output labelled 3e:", check_equivariance(harmonics, [vectors], ["1o"], "0e + 1o + 2e + 3e"))

# %%
# NBVAL_IGNORE_OUTPUT
print(check_equivariance(harmonics, [vectors], ["1o"], "0e + 1o + 2e + 3o").details())
print(check_equivariance(harmonics, [vectors], ["1o"], "0e + 1o + 2e + 3e").details())

# %% [markdown]
# ### What they look like
#
# A picture of $Y^l_m$ for $l \le 2$ over all directions. e3nn's own angles put the $y$ axis at the pole: the
# direction $(\sin\alpha \sin\beta,\ \cos\beta,\ \cos\alpha \sin\beta)$ (`o3.angles_to_xyz`) has polar angle
# $\beta$ from $+y$ and azimuth $\alpha$ around $y$. The middle component of each degree is then the one that does
# not depend on $\alpha$, and each degree $l$ changes sign along $l$ circles of the sphere.

# %%
alpha, beta = torch.meshgrid(torch.linspace(0, 2 * math.pi, 73), torch.linspace(0, math.pi, 37), indexing="xy")
Y = o3.spherical_harmonics([0, 1, 2], o3.angles_to_xyz(alpha, beta), normalize=True, normalization="component")
fig, axes = plt.subplots(3, 5, figsize=(9, 4.2), sharex=True, sharey=True, layout="constrained")
for l in range(3):
    for k in range(5):
        ax = axes[l, k]
        if k > 2 * l:
            ax.axis("off")
            continue
        image = ax.contourf(alpha.rad2deg().numpy(), beta.rad2deg().numpy(), Y[..., l * l + k].numpy(),
                            levels=np.linspace(-2.25, 2.25, 10), cmap="RdBu_r")
        ax.set_title(f"l={l}, component {k}" + (f" ({'xyz'[k]})" if l == 1 else ""), fontsize=9)
        ax.set_xticks([0, 180, 360])
        ax.set_yticks([0, 90, 180])
        if k == 0:
            ax.set_ylabel("β (degrees)")
        if l == 2:
            ax.set_xlabel("α (degrees)")
axes[0, 0].invert_yaxis()  # the pole beta = 0 at the top
fig.colorbar(image, ax=axes[:, -1], shrink=0.8, label="Y (component normalisation)")
fig.suptitle("Spherical harmonics l = 0, 1, 2 over all directions")
plt.show()

# %% [markdown]
# ## Coupling two irreps: Clebsch-Gordan coefficients
#
# The filter $Y(\hat r_{ij})$ has degrees $l_2$, the neighbour's feature $f_j$ degrees $l_1$. Their outer product,
# $(2l_1+1)(2l_2+1)$ numbers, is equivariant but not an irrep: rotations act on it through $D^{l_1} \otimes
# D^{l_2}$. A fixed change of basis splits it into irreps of degrees $l_3 = |l_1 - l_2|, \dots, l_1 + l_2$, one of
# each. The coefficients of that change of basis are the Clebsch-Gordan coefficients {footcite:p}`sakurai2017modern`;
# e3nn's real-basis version is `o3.wigner_3j(l1, l2, l3)`, a tensor $C$ of shape $(2l_1+1, 2l_2+1, 2l_3+1)$, and the
# degree-$l_3$ piece of $u \otimes v$ is
#
# $$(u \otimes v)^{l_3}_k = \sum_{i, j} C_{ijk}\, u_i\, v_j .$$
#
# (The 2019 `SO3.clebsch_gordan(l_out, l_in, l_filter)` put the output degree first; `wigner_3j` takes the output
# last, and scales $C$ to unit norm.)

# %%
# NBVAL_CHECK_OUTPUT
C = o3.wigner_3j(1, 2, 3, dtype=torch.float64)
print("wigner_3j(1, 2, 3):", tuple(C.shape), "| norm sum C_ijk^2 = 1:", bool(abs(C.pow(2).sum() - 1) < 1e-12))

# %% [markdown]
# Pass `dtype=torch.float64`, or build under `default_dtype(torch.float64)`: e3nn computes $C$ in float64 and then
# casts it to the requested dtype, float32 by default.
#
# Two familiar cases. For two vectors, $l_3 = 0$ is the dot product and $l_3 = 1$ the cross product, up to constants:
# $C^{110}_{ij} = \delta_{ij}/\sqrt3$ and $C^{111}_{ijk} = \varepsilon_{ijk}/\sqrt6$.

# %%
# NBVAL_CHECK_OUTPUT
levi_civita = torch.zeros(3, 3, 3, dtype=torch.float64)
for i, j, k in [(0, 1, 2), (1, 2, 0), (2, 0, 1)]:
    levi_civita[i, j, k], levi_civita[i, k, j] = 1.0, -1.0
C110 = o3.wigner_3j(1, 1, 0, dtype=torch.float64)[..., 0]
C111 = o3.wigner_3j(1, 1, 1, dtype=torch.float64)
print("C^110 == identity / sqrt 3:", torch.allclose(C110, torch.eye(3, dtype=torch.float64) / math.sqrt(3)))
print("C^111 == epsilon / sqrt 6: ", torch.allclose(C111, levi_civita / math.sqrt(6)))

# %% [markdown]
# ### Why the contraction is equivariant
#
# $C$ is *invariant* when all three of its indices are rotated together:
# $C_{lmn} = \sum_{ijk} C_{ijk}\, D^{l_1}_{il}(R)\, D^{l_2}_{jm}(R)\, D^{l_3}_{kn}(R)$. Multiply both sides by
# $u_l v_m$ and this says: rotate $u$ and $v$ first and then couple, or couple first and then rotate the result, the
# answer is the same.

# %%
# NBVAL_CHECK_OUTPUT
R = random_o3(generator=torch.Generator().manual_seed(3))
rotated = torch.einsum("ijk,il,jm,kn->lmn", C, wigner_D("1o", R), wigner_D("2e", R), wigner_D("3o", R))
print("C invariant under a simultaneous rotation:", bool((rotated - C).abs().max() < 1e-12))


def couple_1_2_3(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(N, 3) and (N, 5) features -> (N, 7): the l=3 piece of u (x) v."""
    return torch.einsum("ijk,ni,nj->nk", C, u, v)


u, v = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
print("1o (x) 2e -> 3o:", check_equivariance(couple_1_2_3, [u, v], ["1o", "2e"], "3o"))
print("1o (x) 2e -> 3e:", check_equivariance(couple_1_2_3, [u, v], ["1o", "2e"], "3e"))

# %% [markdown]
# The last line is the parity rule: under inversion $u \mapsto p_1 u$ and $v \mapsto p_2 v$, so their product picks
# up $p_1 p_2$, and the output irrep must have parity $p_3 = p_1 p_2$. Here $(-1)(+1) = -1$: `3o`, not `3e`.

# %% [markdown]
# ### Selection rules
#
# Which triples $(l_1, p_1), (l_2, p_2), (l_3, p_3)$ can be coupled at all? Exactly those for which an invariant
# tensor $C$ exists. We can count the invariant tensors of any triple without e3nn's formula: they are the vectors
# $c$ with $(D^{1} \otimes D^{2} \otimes D^{3})(g)\, c = c$ for every group element $g$, and a few random rotations
# and rotoinversions are enough to pin them down (a null space, from an eigendecomposition).

# %%
generator = torch.Generator().manual_seed(0)
elements = [random_o3(inversion=k % 2 == 1, generator=generator) for k in range(4)]  # two rotations, two improper
irreps = [o3.Irrep(l, p) for l in range(3) for p in (1, -1)]  # 0e, 0o, 1e, 1o, 2e, 2o
D = {ir: [wigner_D(str(ir), g) for g in elements] for ir in irreps}


def count_invariants(ir1: o3.Irrep, ir2: o3.Irrep, ir3: o3.Irrep) -> int:
    """Number of independent tensors C of shape (dim1, dim2, dim3) that all the ``elements`` leave unchanged.

    C (flattened to c) is unchanged by all of them exactly when sum_g |(D(g) - 1) c|^2 = 0: c lies in the null space
    of the symmetric matrix sum_g (D(g) - 1)^T (D(g) - 1), with D(g) = D1(g) (x) D2(g) (x) D3(g).
    """
    gram = 0.0
    for D1, D2, D3 in zip(D[ir1], D[ir2], D[ir3]):
        M = torch.kron(torch.kron(D1, D2), D3) - torch.eye(ir1.dim * ir2.dim * ir3.dim, dtype=torch.float64)
        gram = gram + M.T @ M
    return int((torch.linalg.eigvalsh(gram) < 1e-9).sum())


def allowed(ir1: o3.Irrep, ir2: o3.Irrep, ir3: o3.Irrep) -> bool:
    """The selection rules: the triangle inequality for l, and the product rule for parity."""
    return abs(ir1.l - ir2.l) <= ir3.l <= ir1.l + ir2.l and ir3.p == ir1.p * ir2.p


# %%
# NBVAL_CHECK_OUTPUT
triples = [(a, b, c) for a in irreps for b in irreps for c in irreps]
counts = {t: count_invariants(*t) for t in triples}
print("triples tested:", len(triples), "| with an invariant:", sum(n > 0 for n in counts.values()))
print("never more than one invariant:", max(counts.values()) == 1)
print("an invariant exists exactly when the rules allow it:", all((n == 1) == allowed(*t) for t, n in counts.items()))

# %% [markdown]
# Why four elements suffice: products of two random rotations come arbitrarily close to every rotation (for almost
# every pair), and one rotoinversion adds the inversion; a tensor that these elements leave unchanged is therefore
# invariant under all of O(3).
#
# e3nn's `wigner_3j` is that invariant. For every allowed triple, the same rotations and rotoinversions (with the
# parities of the three irreps) leave it unchanged:

# %%
# NBVAL_CHECK_OUTPUT
worst = 0.0
for (a, b, c), n in counts.items():
    if n:
        C_abc = o3.wigner_3j(a.l, b.l, c.l, dtype=torch.float64)
        for Da, Db, Dc in zip(D[a], D[b], D[c]):
            worst = max(worst, float((torch.einsum("ijk,il,jm,kn->lmn", C_abc, Da, Db, Dc) - C_abc).abs().max()))
print("wigner_3j is O(3)-invariant for every allowed triple:", worst < 1e-12)

# %% [markdown]
# e3nn does not return zeros for a forbidden triple; it refuses: `wigner_3j(1, 1, 3)` fails an assertion, since no
# $l_3 = 3$ piece exists in the product of two vectors.

# %%
# NBVAL_CHECK_OUTPUT
try:
    o3.wigner_3j(1, 1, 3)
except AssertionError:
    print("wigner_3j(1, 1, 3): AssertionError (|1 - 1| <= 3 <= 1 + 1 is false)")

# %% [markdown]
# ### Paths
#
# A **path** is one allowed triple $(l_1, p_1) \otimes (l_2, p_2) \to (l_3, p_3)$ between a block of the first
# input, a block of the second and a block of the output. The product of two irreps contains every $(l_3, p_3)$ that
# the rules allow, once; e3nn lists them with `o3.FullTensorProduct` (no weights, every path once):

# %%
# NBVAL_CHECK_OUTPUT
for ir1, ir2 in [("1o", "1o"), ("1o", "1e"), ("1o", "2e"), ("2e", "2e")]:
    print(f"{ir1} (x) {ir2} = {o3.FullTensorProduct(ir1, ir2).irreps_out}")

# %% [markdown]
# ## The fully connected tensor product
#
# A network layer needs more than fixed couplings: it must learn how much of each path to use, and it has several
# channels (multiplicities) in each block. `o3.FullyConnectedTensorProduct(irreps_in1, irreps_in2, irreps_out)` takes
# every path between a block `mul1 x ir1` of the first input, a block `mul2 x ir2` of the second and a block
# `mul3 x ir3` of the output, and gives each combination of channels $(u, v, w)$ its own weight:
#
# $$\text{out}^{(w)}_k \mathrel{+}= \alpha_\text{path} \sum_{u,v} W^\text{path}_{uvw} \sum_{i,j} C_{ijk}\,
#   x^{(u)}_i\, y^{(v)}_j .$$
#
# A path therefore carries `mul1 * mul2 * mul3` weights, and `weight_numel` is their sum over paths. The constant
# $\alpha_\text{path}$ is e3nn's normalisation, chosen so that outputs of random inputs have about unit variance.
#
# With one channel everywhere, the `1o (x) 1o -> 1e` path is the cross product, scaled by one weight:

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    cross = o3.FullyConnectedTensorProduct("1o", "1o", "1e")
(instruction,) = cross.instructions
a, b = torch.randn(2, 3, dtype=torch.float64)
expected = cross.weight * instruction.path_weight * torch.linalg.cross(a, b) / math.sqrt(6)
print(cross)
print("tp(a, b) == w * alpha * (a x b) / sqrt 6:", torch.allclose(cross(a, b), expected))

# %% [markdown]
# ### Counting the weights of the 2019 convolution
#
# The tutorial's convolution maps benzene's `Rs_in = [(2, 0)]` to `Rs_out = [(4, 0), (4, 1), (4, 2)]` with a filter
# of spherical harmonics up to $l=2$. In today's spelling: `2x0e` $\otimes$ `0e + 1o + 2e` $\to$
# `4x0e + 4x1o + 4x2e`. By hand: the input has a single block, `2x0e`, and a scalar times $Y^l$ is $Y^l$, so the paths
# are
#
# | path | weights |
# |---|---|
# | `0e` $\otimes$ `0e` $\to$ `0e` | $2 \cdot 1 \cdot 4 = 8$ |
# | `0e` $\otimes$ `1o` $\to$ `1o` | $2 \cdot 1 \cdot 4 = 8$ |
# | `0e` $\otimes$ `2e` $\to$ `2e` | $2 \cdot 1 \cdot 4 = 8$ |
#
# three paths and {glue:text}`seed_weights` weights. The 2019 `Kernel` counted the same thing,
# `n_path += mul_out * mul_in * len(l_filters)`, and called the 24 numbers "paths": the output size of the radial
# model. e3nn's printout follows that habit ("24 paths"); in this book a path is a triple of irreps, and the 24 are
# weights. The same count in code, with the rules written out:

# %%
def count_weights(irreps_in1: str, irreps_in2: str, irreps_out: str) -> tuple[int, int]:
    """(number of paths, number of weights) of a fully connected tensor product, counted from the selection rules."""
    paths = weights = 0
    for mul1, ir1 in o3.Irreps(irreps_in1):
        for mul2, ir2 in o3.Irreps(irreps_in2):
            for mul3, ir3 in o3.Irreps(irreps_out):
                if allowed(ir1, ir2, ir3):
                    paths += 1
                    weights += mul1 * mul2 * mul3
    return paths, weights


# %%
# NBVAL_CHECK_OUTPUT
seed_irreps = ("2x0e", "0e + 1o + 2e", "4x0e + 4x1o + 4x2e")
tp = o3.FullyConnectedTensorProduct(*seed_irreps)
print(tp)
print("by hand (paths, weights):", count_weights(*seed_irreps), "| e3nn:", (len(tp.instructions), tp.weight_numel))
glue("seed_weights", tp.weight_numel, display=False)
for ins in tp.instructions:
    print(f"  {tp.irreps_in1[ins.i_in1].ir} (x) {tp.irreps_in2[ins.i_in2].ir} -> {tp.irreps_out[ins.i_out].ir}:"
          f" weights of shape {ins.path_shape}")

# %% [markdown]
# A second convolution layer would take the `4x0e + 4x1o + 4x2e` features as input. Every input block can now reach
# several outputs, and the count grows quickly:

# %%
# NBVAL_CHECK_OUTPUT
second_irreps = ("4x0e + 4x1o + 4x2e", "0e + 1o + 2e", "4x0e + 4x1o + 4x2e")
tp2 = o3.FullyConnectedTensorProduct(*second_irreps)
print("by hand (paths, weights):", count_weights(*second_irreps), "| e3nn:", (len(tp2.instructions), tp2.weight_numel))

# %% [markdown]
# `tp.visualize()` draws the paths: the two inputs at the top, the output at the bottom, one line per path.

# %%
fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), layout="constrained")
tp.visualize(ax=axes[0])
tp2.visualize(ax=axes[1])
axes[0].set_title(f"first layer: {len(tp.instructions)} paths, {tp.weight_numel} weights")
axes[1].set_title(f"second layer: {len(tp2.instructions)} paths, {tp2.weight_numel} weights")
fig.suptitle("Paths: input 1 (left), input 2 (right), output (below)")
plt.show()

# %% [markdown]
# ### Connection modes: `uvw`, `uvu`, `uuu`
#
# `FullyConnectedTensorProduct` is one case of e3nn's general `o3.TensorProduct(irreps_in1, irreps_in2, irreps_out,
# instructions)`. Each instruction `(i_in1, i_in2, i_out, mode, has_weight)` names one path and, by its *connection
# mode*, says which channels meet. Write $u, v, w$ for the channels of the first input, the second and the output:
#
# | mode | output channel $w$ gets | weights per path | needs |
# |---|---|---|---|
# | `uvw` | $\sum_{u,v} W_{uvw}\, x^{(u)} \otimes y^{(v)}$ (all with all) | `mul1 * mul2 * mul_out` | |
# | `uvu` | $\sum_{v} W_{uv}\, x^{(u)} \otimes y^{(v)}$, $w = u$ | `mul1 * mul2` | `mul_out = mul1` |
# | `uuu` | $W_{u}\, x^{(u)} \otimes y^{(u)}$, $w = u$ (channel-wise) | `mul1` | `mul1 = mul2 = mul_out` |
#
# `FullyConnectedTensorProduct` is `uvw` on every path. `uvu` with `mul2 = 1` (one filter per edge) is the usual
# choice of convolutions that keep their channels apart, and `uuu` is e3x's `Tensor`, which chapter 7 compares
# with its fused product. The counts, by hand and by e3nn, on the same five paths of `4x0e + 4x1o` with itself:

# %%
# NBVAL_CHECK_OUTPUT
def count_weights_by_mode(irreps_in1: str, irreps_in2: str, irreps_out: str, mode: str) -> int:
    """Number of weights of a tensor product with every allowed path in the given connection mode."""
    per_path = {"uvw": lambda m1, m2, m3: m1 * m2 * m3, "uvu": lambda m1, m2, m3: m1 * m2,
                "uuu": lambda m1, m2, m3: m1}[mode]
    return sum(per_path(m1, m2, m3) for m1, ir1 in o3.Irreps(irreps_in1) for m2, ir2 in o3.Irreps(irreps_in2)
               for m3, ir3 in o3.Irreps(irreps_out) if allowed(ir1, ir2, ir3))


def tensor_product(irreps_in1: str, irreps_in2: str, irreps_out: str, mode: str) -> o3.TensorProduct:
    """e3nn's tensor product with every allowed path, each in `mode`, with one set of learned weights."""
    in1, in2, out = o3.Irreps(irreps_in1), o3.Irreps(irreps_in2), o3.Irreps(irreps_out)
    instructions = [(i1, i2, i3, mode, True) for i1, (_, ir1) in enumerate(in1) for i2, (_, ir2) in enumerate(in2)
                    for i3, (_, ir3) in enumerate(out) if allowed(ir1, ir2, ir3)]
    return o3.TensorProduct(in1, in2, out, instructions)


mode_irreps = ("4x0e + 4x1o", "4x0e + 4x1o", "4x0e + 4x1o + 4x1e")
x1, x2 = o3.Irreps(mode_irreps[0]).randn(10, -1), o3.Irreps(mode_irreps[1]).randn(10, -1)
nudged1, nudged2 = x1.clone(), x2.clone()
nudged1[:, 1] += 1.0  # channel 1 of the 0e block of both inputs
nudged2[:, 1] += 1.0
for mode in ("uvw", "uvu", "uuu"):
    tp_mode = tensor_product(*mode_irreps, mode)
    untouched = torch.allclose(tp_mode(x1, x2)[:, 0], tp_mode(nudged1, nudged2)[:, 0])
    print(f"{mode}: {len(tp_mode.instructions)} paths, weights by hand {count_weights_by_mode(*mode_irreps, mode):3d},"
          f" e3nn weight_numel {tp_mode.weight_numel:3d} | output channel 0 ignores input channel 1: {untouched}")

# %% [markdown]
# Only `uuu` keeps channel 0 of the output apart from channel 1 of the inputs: `uvu` mixes the channels of the
# second input, `uvw` all of them.
#
# ### Equivariance of the tensor product
#
# Built under the float64 default (chapter 1: otherwise its Clebsch-Gordan coefficients are float32-rounded), the
# tensor product is equivariant to rounding error, for any weights:

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    tp = o3.FullyConnectedTensorProduct(*seed_irreps)
features = torch.randn(12, 2, dtype=torch.float64)
filters = o3.Irreps(seed_irreps[1]).randn(12, -1, dtype=torch.float64)
report = check_equivariance(tp, [features, filters], list(seed_irreps[:2]), seed_irreps[2])
print(report)

# %%
# NBVAL_IGNORE_OUTPUT
print(report.details())

# %% [markdown]
# ## One set of weights per edge
#
# So far `tp.weight` is one learned vector shared by every call. A convolution filter must depend on the edge
# length instead, $\rho(r_{ij})$: with `shared_weights=False` the tensor product owns no weights, and its forward takes
# them as a third argument of shape `(E, weight_numel)`, one row per edge. The rows come from a radial network of the
# edge length, here the `RadialMLP` of chapter 2 (the 2019 `RadialModel`), which outputs exactly `weight_numel`
# numbers per edge. This is the 2019 `Kernel`, in today's pieces.

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    tp_edge = o3.FullyConnectedTensorProduct(*seed_irreps, shared_weights=False)
    radial = RadialMLP(tp_edge.weight_numel, max_radius=1.5)
print("parameters held by the tensor product:", sum(p.numel() for p in tp_edge.parameters()))
print("weights it expects per edge:", tp_edge.weight_numel)

# %% [markdown]
# On benzene, with the edges of chapter 1 (`edge_index[0]` the neighbour $j$, `edge_index[1]` the centre $i$) and the
# vector $r_{ij} = x_j - x_i$ from the centre to the neighbour, the *messages* $\rho(r_{ij}) Y(\hat r_{ij}) \otimes f_j$
# are one `4x0e + 4x1o + 4x2e` feature per edge:

# %%
# NBVAL_CHECK_OUTPUT
def messages(f: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """(N, 2) features, (N, 3) positions, (2, E) edges -> (E, 36) messages R(r_ij) Y(r_ij/|r_ij|) (x) f_j."""
    src, dst = edge_index
    edge_vec = pos[src] - pos[dst]
    edge_sh = o3.spherical_harmonics(seed_irreps[1], edge_vec, normalize=True, normalization="component")
    return tp_edge(f[src], edge_sh, radial(edge_vec.norm(dim=1)))


molecule = tpconv_lite.benzene()
edge_index = radius_graph(molecule.pos, 1.5)
edge_length = (molecule.pos[edge_index[0]] - molecule.pos[edge_index[1]]).norm(dim=1)
print("edges:", edge_index.shape[1], "| radial weights:", tuple(radial(edge_length).shape))
print("messages:", tuple(messages(molecule.x.double(), molecule.pos, edge_index).shape))

# %% [markdown]
# The messages depend on the positions only through $r_{ij}$, so they are equivariant under rotations, inversions
# *and* translations. The edge list is an input too, left alone by the checker (label `None`): it is computed once,
# because the order of the edges that a graph routine returns may change when the points move.

# %%
# NBVAL_CHECK_OUTPUT
report = check_equivariance(messages, [molecule.x, molecule.pos, edge_index], ["2x0e", "cartesian_points", None],
                            seed_irreps[2])
print(report)

# %%
# NBVAL_IGNORE_OUTPUT
print(report.details())

# %% [markdown]
# Summing the messages over the neighbours of each atom gives the convolution, the subject of chapter 4.

# %% [markdown]
# ## Summary
#
# - `o3.spherical_harmonics(ls, x, normalize, normalization)` turns vectors into features with irreps
#   `0e + 1o + 2e + ...`; $Y^1$ is the direction, in the order $(x, y, z)$. `component`: $\sum_m (Y^l_m)^2 = 2l+1$ on
#   the sphere; `norm`: 1; `integral`: $\int (Y^l_m)^2 = 1$ (e3nn's default; pass it explicitly).
#   `normalize=False` gives homogeneous polynomials, $Y^l(x) = |x|^l Y^l(\hat x)$.
# - `o3.wigner_3j(l1, l2, l3)` is the invariant tensor that couples two irreps into a third. It exists only when
#   $|l_1 - l_2| \le l_3 \le l_1 + l_2$, and with parities the output must have $p_3 = p_1 p_2$.
# - A path is one allowed triple of blocks; `FullyConnectedTensorProduct` gives it `mul1 * mul2 * mul3` weights, and
#   `weight_numel` sums them: 24 for the 2019 convolution, in 3 paths.
# - `shared_weights=False` moves the weights out of the module: a radial network computes one row of
#   `weight_numel` numbers per edge.

# %% [markdown]
# ## Exercises
#
# **1.** After the first layer, suppose the features also carry one vector: `2x0e + 1x1o`. Count by hand the paths and
# weights of `FullyConnectedTensorProduct("2x0e + 1x1o", "0e + 1o + 2e", "4x0e + 4x1o + 4x2e")`, then check with
# `weight_numel`. Which products of `1o` with the filter find no place in the output?

# %% tags=["hide-cell"]
# NBVAL_CHECK_OUTPUT
# Solution 1: the 2x0e block gives the three paths above, 3 * (2 * 1 * 4) = 24 weights. The 1o block gives
# 1o x 0e -> 1o, 1o x 1o -> 0e and 2e, 1o x 2e -> 1o: four paths of 1 * 1 * 4 = 4 weights, 16 in all.
# Total: 7 paths, 40 weights. Left out (not in the output irreps): 1o x 1o -> 1e, 1o x 2e -> 2o and 3o.
exercise = ("2x0e + 1x1o", "0e + 1o + 2e", "4x0e + 4x1o + 4x2e")
tp_exercise = o3.FullyConnectedTensorProduct(*exercise)
print("by hand:", (7, 24 + 16), "| count_weights:", count_weights(*exercise),
      "| e3nn:", (len(tp_exercise.instructions), tp_exercise.weight_numel))
print("1o (x) filter, all outputs:", o3.FullTensorProduct("1o", "0e + 1o + 2e").irreps_out.simplify())

# %% [markdown]
# **2.** The product of two vectors has an $l=1$ piece, the cross product. Show that the path `1o (x) 1o -> 1o` is
# nevertheless forbidden: what does e3nn build for `FullyConnectedTensorProduct("1o", "1o", "1o")`, and what does
# `check_equivariance` say about the cross product labelled `1o`, and labelled `1e`?

# %% tags=["hide-cell"]
# NBVAL_CHECK_OUTPUT
# Solution 2: odd x odd = even, so the l=1 piece is a pseudovector 1e. e3nn builds a tensor product with no path and
# no weight (its output is always zero), and the checker rejects the cross product as a 1o output: under inversion
# a x b does not change sign, while a 1o feature must.
print(o3.FullyConnectedTensorProduct("1o", "1o", "1o"))
u, w = torch.randn(2, 5, 3, dtype=torch.float64)
print("a x b as 1o:", check_equivariance(torch.linalg.cross, [u, w], ["1o", "1o"], "1o"))
print("a x b as 1e:", check_equivariance(torch.linalg.cross, [u, w], ["1o", "1o"], "1e"))

# %% [markdown]
# ## References
#
# Tensor field networks {footcite:p}`thomas2018tensor` introduced filters made of radial functions and spherical
# harmonics combined by Clebsch-Gordan coefficients; Clebsch-Gordan nets {footcite:p}`kondor2018clebsch` and the
# e3nn paper {footcite:p}`geiger2022e3nn` describe tensor products of irreps in general.
#
# ```{footbibliography}
# ```
