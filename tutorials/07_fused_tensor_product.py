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
# # 7. The fused tensor product
#
# Chapter 3 coupled two features with Clebsch-Gordan coefficients, one *path* $l_1 \otimes l_2 \to l_3$ at a time.
# With every degree up to $L$ in both inputs and in the output there are about $L^3$ paths, and a path costs about
# $L^3$ multiplications per feature: a full tensor product costs $O(L^6)$. The library e3x
# {footcite:p}`unke2024e3x` has a second tensor product, `FusedTensor`, that computes a weighted sum of (nearly) all
# those paths for $O(L^4)$. Its trick: write every irrep as a small matrix, and couple irreps by multiplying
# matrices. This chapter builds that idea up from the Clebsch-Gordan coefficients, reads the package's PyTorch
# version line by line, and measures what it gains in speed and what it gives up in freedom.

# %% [markdown]
# ```{admonition} Run this chapter
# :class: tip
# Locally: `make execute` in a clone of the repository, or open `tutorials/07_fused_tensor_product.ipynb` in Jupyter.
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
import functools
import itertools
import math
import time
from pathlib import Path

import e3nn
import matplotlib.pyplot as plt
import numpy as np
import torch
from e3nn import o3
from sympy.physics.wigner import wigner_6j  # sympy comes with torch
from torch import Tensor, nn

import tpconv_lite
from tpconv_lite import bench
from tpconv_lite.fused import TRUNCATED_NORMAL_STD, Layout, e3x_irreps, e3x_to_irreps, irreps_to_e3x
from tpconv_lite.irreps import irreps_to_rs
from tpconv_lite.testing import check_equivariance, default_dtype, random_o3, wigner_D

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
# 1. explain why irreps of degrees $0, \dots, 2\tilde l$ together are one $(2\tilde l+1) \times (2\tilde l+1)$
#    matrix, and why multiplying two such matrices is an equivariant way to couple irreps;
# 2. read `tpconv_lite.FusedTensorProduct`, e3x's `FusedTensor` in PyTorch, and move features between e3x's layout
#    `(..., P, (L+1)**2, F)` and e3nn's `(..., irreps.dim)`;
# 3. say exactly which path weights the fused product can express (products of per-degree weights, times a fixed
#    6j symbol) and how many parameters it has next to a full tensor product;
# 4. time both on your CPU and say from which degree on the fused product is worth it.
#
# The names, in e3x and here (and, for the feature labels, in the 2019 e3nn of chapter 1):
#
# | idea | e3x (JAX) | tpconv_lite / e3nn 0.6 |
# |---|---|---|
# | fused tensor product | `e3x.nn.FusedTensor(max_degree, include_pseudotensors)` | `FusedTensorProduct(num_features, max_degree1, max_degree2, max_degree, num_parity1, num_parity2, include_pseudotensors)` |
# | full tensor product, one weight per path and feature | `e3x.nn.Tensor(max_degree, include_pseudotensors)` | `o3.TensorProduct(irreps, irreps, irreps, [(i1, i2, i3, "uuu", True), ...])` |
# | features | array `(..., P, (L+1)**2, F)`: parity channel, degree and order, feature | `layout="e3x"`, the same array |
# | the same features, labelled | (no labels: the shape says it all) | `layout="irreps"`: `(..., irreps.dim)` with `e3x_irreps(F, L, P)` = `Fx0e+Fx0o+Fx1e+Fx1o+...`; 2019: `Rs = [(F, 0, 1), (F, 0, -1), (F, 1, 1), ...]` |
# | converting | | `e3x_to_irreps(x)`, `irreps_to_e3x(x, irreps)` |
# | coupling coefficients | `e3x.so3.clebsch_gordan(l1, l2, l3)` | `sqrt(2 l3 + 1) * o3.wigner_3j(l1, l2, l3)` (same basis for $l \le 1$, see below) |
# | weights | `kernel_e1, kernel_o1, kernel_e2, kernel_o2, kernel_eee, kernel_ooe, kernel_eoo, kernel_oeo` | the same names and shapes |
# | initialisation | `e3x.nn.initializers.fused_tensor_normal` | `FusedTensorProduct.reset_parameters` |

# %% [markdown]
# ## Irreps as matrices
#
# Take a matrix $X$ of size $(2\tilde l + 1) \times (2\tilde l + 1)$ and let rotations act on it from both sides,
# $X \mapsto D^{\tilde l}(R)\, X\, D^{\tilde l}(R)^\top$. This is the tensor product of two degree-$\tilde l$ irreps
# (chapter 3), and the Clebsch-Gordan coefficients of $\tilde l \otimes \tilde l \to l$ split it into irreps of the
# degrees $l = 0, 1, \dots, 2\tilde l$, each once. Count the numbers: $(2\tilde l + 1)^2 = \sum_{l=0}^{2\tilde l}
# (2l + 1)$. So a stack of irreps of degrees $0$ to $2\tilde l$, one of each, *is* such a matrix, and back; and an
# irrep of any degree $l \le 2\tilde l$ is a "matrix irrep" of size $2\tilde l + 1$. e3x picks the smallest size
# that holds every degree it needs, $\tilde l = \lceil \max(L_1, L_2, L_3) / 2 \rceil$ (the *matrix degree*,
# `matrix_degree` in the code and `l~` in printed output).

# %%
# NBVAL_CHECK_OUTPUT
for matrix_degree in range(5):
    size = 2 * matrix_degree + 1
    degrees = range(2 * matrix_degree + 1)
    print(f"l~={matrix_degree}: {size}x{size} = {size * size} numbers = degrees 0..{2 * matrix_degree}:",
          " + ".join(str(2 * l + 1) for l in degrees), "=", sum(2 * l + 1 for l in degrees))

# %% [markdown]
# The change of basis is a matrix with one row per irrep component $(l, m)$ and one column per matrix entry
# $(a, b)$: row $(l, m)$ holds the coefficients $C^{l m}_{\tilde l a, \tilde l b}$. e3x normalises them so that the
# rows are orthonormal, which in e3nn's terms is `o3.wigner_3j(l~, l~, l)` times $\sqrt{2l+1}$. The package builds
# it once per $(\tilde l, L)$ and caches it:

# %%
# Package code: tpconv_lite.fused._matrix_basis
@functools.lru_cache(maxsize=None)
def _matrix_basis(matrix_degree: int, max_degree: int) -> Tensor:
    d = 2 * matrix_degree + 1
    blocks = [
        math.sqrt(2 * l + 1) * o3.wigner_3j(matrix_degree, matrix_degree, l, dtype=torch.float64).reshape(d * d, -1).T
        for l in range(max_degree + 1)
    ]
    return torch.cat(blocks)


# %% [markdown]
# and keeps one copy on each device and dtype it is asked for:

# %%
# Package code: tpconv_lite.fused._matrix_basis_on
@functools.lru_cache(maxsize=None)
def _matrix_basis_on(matrix_degree: int, max_degree: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    return _matrix_basis(matrix_degree, max_degree).to(device=device, dtype=dtype)


# %%
# Package code: tpconv_lite.fused.matrix_basis
def matrix_basis(matrix_degree: int, max_degree: int) -> Tensor:
    """The change of basis between irreps of degree ``0..max_degree`` and ``(2 l~ + 1, 2 l~ + 1)`` matrices.

    Row ``(l, m)`` holds the Clebsch-Gordan coefficients ``C^{l m}_{l~ a, l~ b}`` (e3x's normalisation: e3nn's
    ``wigner_3j`` times ``sqrt(2l+1)``) flattened over ``(a, b)``. The rows are orthonormal, and with
    ``max_degree = 2 l~`` the matrix is square, hence orthogonal.

    Args:
        matrix_degree: ``l~``.
        max_degree: largest degree, at most ``2 l~``.

    Returns:
        ((max_degree+1)**2, (2 l~ + 1)**2) tensor in float64.
    """
    if not 0 <= max_degree <= 2 * matrix_degree:
        raise ValueError(f"max_degree must be in [0, 2 * matrix_degree = {2 * matrix_degree}], got {max_degree}")
    return _matrix_basis(matrix_degree, max_degree).clone()


# %% [markdown]
# With all degrees $0..2\tilde l$ the basis is square and orthogonal: no information is lost either way. And the
# chapter's function and the package's agree:

# %%
# NBVAL_CHECK_OUTPUT
for matrix_degree in [1, 2, 3]:
    basis = matrix_basis(matrix_degree, 2 * matrix_degree)
    n = basis.shape[0]
    identity = torch.eye(n, dtype=torch.float64)
    orthogonal = all(torch.allclose(product, identity, atol=1e-12) for product in [basis @ basis.T, basis.T @ basis])
    same = torch.equal(basis, tpconv_lite.fused.matrix_basis(matrix_degree, 2 * matrix_degree))
    print(f"l~={matrix_degree}: basis {tuple(basis.shape)}, orthogonal: {orthogonal} | same as the package: {same}")

# %% [markdown]
# What do the basis matrices look like? Each row of `basis`, reshaped to $(2\tilde l+1) \times (2\tilde l+1)$, is the
# matrix of one irrep component. For $\tilde l = 1$ they are old friends: degree 0 is the identity (the trace part of
# a 3×3 matrix), degree 1 the antisymmetric matrices (a cross product), degree 2 the symmetric traceless matrices.
# For larger $\tilde l$ the pattern continues: even degrees are symmetric, odd degrees antisymmetric.

# %%
fig, axes = plt.subplots(2, 5, figsize=(9, 4), layout="constrained")
panels = [(1, 0, 0), (1, 1, 0), (1, 1, 2), (1, 2, 0), (1, 2, 2)] + [(2, l, l) for l in range(5)]  # (l~, l, component)
for ax, (matrix_degree, l, k) in zip(axes.flat, panels):
    d = 2 * matrix_degree + 1
    element = matrix_basis(matrix_degree, 2 * matrix_degree)[l * l + k].reshape(d, d)
    image = ax.imshow(element.numpy(), cmap="RdBu_r", vmin=-0.75, vmax=0.75)
    ax.set_title(f"$\\tilde l$={matrix_degree}: l={l}, comp. {k}", fontsize=9)
    ax.set_xticks(range(d))
    ax.set_yticks(range(d))
    ax.set_xlabel("column b", fontsize=8)
    ax.set_ylabel("row a", fontsize=8)
fig.colorbar(image, ax=axes, shrink=0.8, label="coefficient C (dimensionless)")
fig.suptitle("Matrix irreps: rows of matrix_basis as matrices (top $\\tilde l$ = 1, bottom $\\tilde l$ = 2)")
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
for matrix_degree in [1, 2, 3]:
    d = 2 * matrix_degree + 1
    basis = matrix_basis(matrix_degree, 2 * matrix_degree).reshape(-1, d, d)
    pattern = all(
        torch.allclose(basis[l * l + k], (-1) ** l * basis[l * l + k].T, atol=1e-12)
        and (l == 0 or abs(float(basis[l * l + k].trace())) < 1e-12)
        for l in range(2 * matrix_degree + 1) for k in range(2 * l + 1)
    )
    identity = torch.allclose(basis[0], torch.eye(d, dtype=torch.float64) / math.sqrt(d), atol=1e-12)
    print(f"l~={matrix_degree}: even l symmetric, odd l antisymmetric, l>0 traceless: {pattern};",
          f"l=0 is I/sqrt({d}): {identity}")

# %% [markdown]
# ### Vectors to matrices, with weights
#
# e3x does not only change the basis: on the way it multiplies every degree by a learnable weight, one per degree and
# feature, and adds all degrees of one parity into a single matrix,
#
# $$X_{ab} = \sum_{l=0}^{L} w_l \sum_{m} C^{l m}_{\tilde l a, \tilde l b}\, x_{l m} .$$
#
# The way back, from a matrix to irreps, projects on the same rows and weights each degree again. The features sit
# on the last axis (e3x's layout, below), so a weight of shape `(L+1, F)` is repeated over the $2l+1$ components of
# each degree first:

# %%
# Package code: tpconv_lite.fused._per_component
def _per_component(weight: Tensor) -> Tensor:
    """(L+1, F) weights per degree -> ((L+1)**2, F), degree ``l``'s row repeated ``2l+1`` times."""
    num_degrees = weight.shape[0]
    repeats = 2 * torch.arange(num_degrees, device=weight.device) + 1
    return weight.repeat_interleave(repeats, dim=0, output_size=num_degrees**2)


# %%
# Package code: tpconv_lite.fused._weights_and_rows
def _weights_and_rows(weight: Tensor, basis: Tensor, components: Tensor | None) -> tuple[Tensor, Tensor]:
    """(L+1, F) weights per degree -> the weights per component and the matching rows of ``basis``: for all
    (L+1)**2 components of degrees ``0..L``, or for the n listed in ``components``; (n, F) and (n, basis columns)."""
    weight = _per_component(weight)
    if components is None:
        return weight, basis[: weight.shape[0]]
    return weight[components], basis[components]


# %%
# Package code: tpconv_lite.fused.vector_to_matrix
def vector_to_matrix(x: Tensor, weight: Tensor, basis: Tensor, components: Tensor | None = None) -> Tensor:
    """Weight each degree of ``x`` and add all degrees up as one matrix per feature: ``X = sum_l w_l C^l . x_l``.

    Args:
        x: (..., n, F) irreps of one parity: all n = (L+1)**2 components of degrees ``0..L``, or those listed in
            ``components``.
        weight: (L+1, F), one weight per degree and feature.
        basis: :func:`matrix_basis` with at least (L+1)**2 rows.
        components: (n,) the indices of the components that ``x`` holds; None for all of them.

    Returns:
        (..., F, 2 l~ + 1, 2 l~ + 1).
    """
    d = math.isqrt(basis.shape[1])
    weight, rows = _weights_and_rows(weight, basis, components)
    return ((x * weight).transpose(-1, -2) @ rows).unflatten(-1, (d, d))


# %%
# Package code: tpconv_lite.fused.matrix_to_vector
def matrix_to_vector(z: Tensor, weight: Tensor, basis: Tensor, components: Tensor | None = None) -> Tensor:
    """Project matrices on the irreps of degree ``0..L`` and weight each degree: :func:`vector_to_matrix` undone.

    Args:
        z: (..., F, 2 l~ + 1, 2 l~ + 1).
        weight: (L+1, F), one weight per degree and feature.
        basis: :func:`matrix_basis` with at least (L+1)**2 rows.
        components: (n,) the indices of the components to compute; None for all (L+1)**2.

    Returns:
        (..., n, F).
    """
    weight, rows = _weights_and_rows(weight, basis, components)
    return (z.flatten(-2) @ rows.T).transpose(-1, -2) * weight


# %% [markdown]
# With unit weights the round trip is the identity, for the full set of degrees $0..2\tilde l$ and for fewer (the
# rows are orthonormal either way):

# %%
# NBVAL_CHECK_OUTPUT
basis = matrix_basis(2, 4)
for max_degree in [1, 2, 4]:
    x = torch.randn(6, (max_degree + 1) ** 2, 3, dtype=torch.float64)  # 6 samples, degrees 0..L, 3 features
    ones = torch.ones(max_degree + 1, 3, dtype=torch.float64)
    X = vector_to_matrix(x, ones, basis)
    print(f"L={max_degree}: x {tuple(x.shape)} -> X {tuple(X.shape)} -> back equals x:",
          torch.allclose(matrix_to_vector(X, ones, basis), x, atol=1e-12))

# %% [markdown]
# And the matrix turns the way it should: rotating the irreps $x \mapsto D(R)\, x$ (one Wigner block per degree)
# conjugates the matrix, $X \mapsto D^{\tilde l}(R)\, X\, D^{\tilde l}(R)^\top$, whatever the weights:

# %%
# NBVAL_CHECK_OUTPUT
generator = torch.Generator().manual_seed(1)
for matrix_degree in [1, 2, 3]:
    max_degree = 2 * matrix_degree
    basis = matrix_basis(matrix_degree, max_degree)
    R = random_o3(inversion=False, generator=generator)
    D_vector = wigner_D(o3.Irreps.spherical_harmonics(max_degree), R)  # acts on degrees 0..2l~
    D_matrix = wigner_D(f"{matrix_degree}e", R)  # acts on rows and columns of X
    x = torch.randn(4, (max_degree + 1) ** 2, 2, dtype=torch.float64, generator=generator)
    weight = torch.randn(max_degree + 1, 2, dtype=torch.float64, generator=generator)
    rotated = vector_to_matrix(torch.einsum("ij,njf->nif", D_vector, x), weight, basis)
    print(f"l~={matrix_degree}: X(D x) == D~ X(x) D~^T:",
          torch.allclose(rotated, D_matrix @ vector_to_matrix(x, weight, basis) @ D_matrix.T, atol=1e-12))

# %% [markdown]
# ## Coupling by matrix multiplication
#
# Here is the whole idea. If $X$ and $Y$ both turn by conjugation, so does their product:
#
# $$(D X D^\top)(D Y D^\top) = D\, (X Y)\, D^\top \qquad (D^\top D = 1).$$
#
# So $Z = XY$ is again a matrix irrep, and its degrees are equivariant bilinear functions of $x$ and $y$: tensor
# product paths. One matrix product of size $n = 2\tilde l + 1$ costs $n^3 \sim L^3$ per feature, and the changes of
# basis cost $(L+1)^2 n^2 \sim L^4$; a full tensor product costs $\sim L^6$.
#
# The smallest case shows it best. For $\tilde l = 1$, the matrix of a vector $u$ (a degree-1 irrep) is, up to a
# factor, the cross-product matrix $[u]_\times$ with $[u]_\times v = u \times v$. The product of two of them,
# $[u]_\times [v]_\times = v u^\top - (u \cdot v) I$, holds the dot product in its trace, the cross product in its
# antisymmetric part and the symmetric traceless outer product in the rest: all three paths $1 \otimes 1 \to 0, 1, 2$
# in one 3×3 matrix product.

# %%
# NBVAL_CHECK_OUTPUT
def cross_matrix(u: Tensor) -> Tensor:
    """(3,) -> (3, 3) matrix [u]x with [u]x v = u x v."""
    zero = torch.zeros((), dtype=u.dtype)
    return torch.stack([torch.stack([zero, -u[2], u[1]]), torch.stack([u[2], zero, -u[0]]),
                        torch.stack([-u[1], u[0], zero])])


u, v = torch.randn(2, 3, dtype=torch.float64)
basis = matrix_basis(1, 2)
as_irreps = lambda w: torch.cat([torch.zeros(1, dtype=w.dtype), w])[:, None]  # (4, 1): degree 0 empty, degree 1 = w
ones = torch.ones(2, 1, dtype=torch.float64)
X, Y = vector_to_matrix(as_irreps(u), ones, basis)[0], vector_to_matrix(as_irreps(v), ones, basis)[0]
print("X(u) == -[u]x / sqrt 2:", torch.allclose(X, -cross_matrix(u) / math.sqrt(2), atol=1e-12))
print("X(u) X(v) == (v u^T - (u.v) I) / 2:",
      torch.allclose(X @ Y, (torch.outer(v, u) - (u @ v) * torch.eye(3, dtype=torch.float64)) / 2, atol=1e-12))

# %% [markdown]
# Back to irreps: each degree of $XY$ is a fixed multiple of the Clebsch-Gordan coupling of chapter 3, in e3x's
# normalisation $(u \otimes v)^{l}_k = \sqrt{2l+1} \sum_{ij} C_{ijk} u_i v_j$ with $C$ = `o3.wigner_3j(1, 1, l)`:

# %%
# NBVAL_CHECK_OUTPUT
z = matrix_to_vector((X @ Y)[None], torch.ones(3, 1, dtype=torch.float64), basis)[:, 0]  # degrees 0, 1, 2
for l in range(3):
    coupled = math.sqrt(2 * l + 1) * torch.einsum("i,j,ijk->k", u, v, o3.wigner_3j(1, 1, l, dtype=torch.float64))
    ratio = (z[l * l:(l + 1) ** 2] @ coupled) / (coupled @ coupled)
    print(f"degree {l} of XY = {float(ratio):+.4f} * (u (x) v)^{l}:",
          torch.allclose(z[l * l:(l + 1) ** 2], ratio * coupled, atol=1e-12))

# %% [markdown]
# In general, the degree-$l_3$ part of $X(x^{l_1})\, Y(y^{l_2})$ is $K \cdot (x^{l_1} \otimes y^{l_2})^{l_3}$ with a
# constant $K(l_1, l_2, l_3; \tilde l)$ that recoupling theory {footcite:p}`edmonds1957angular` writes with a *6j
# symbol*; with the normalisations of this chapter (we check it numerically below),
#
# $$K(l_1, l_2, l_3; \tilde l) = (-1)^{l_3} \sqrt{(2l_1+1)(2l_2+1)}
#   \begin{Bmatrix} l_1 & l_2 & l_3 \\ \tilde l & \tilde l & \tilde l \end{Bmatrix} .$$
#
# Above, $K(1, 1, l; 1) = -1, -\tfrac12, +\tfrac12$. A 6j symbol vanishes outside the triangle rule, as it must,
# but it also has a few zeros *inside* it. Such a path is allowed by symmetry and yet the matrix product never
# produces it. Up to $\tilde l = 2$ (degrees up to 4) there is none; from $\tilde l = 3$ on, a few paths drop out:

# %%
# NBVAL_CHECK_OUTPUT
def triangles(max_degree: int) -> list[tuple[int, int, int]]:
    """All (l1, l2, l3) up to max_degree with |l1 - l2| <= l3 <= l1 + l2."""
    return [(a, b, c) for a, b, c in itertools.product(range(max_degree + 1), repeat=3) if abs(a - b) <= c <= a + b]


for matrix_degree in [1, 2, 3, 4]:
    max_degree = 2 * matrix_degree
    missing = [t for t in triangles(max_degree) if wigner_6j(*t, matrix_degree, matrix_degree, matrix_degree) == 0]
    print(f"l~={matrix_degree} (degrees up to {max_degree}): {len(triangles(max_degree))} triangles (l1, l2, l3),",
          f"missing: {missing}")

# %% [markdown]
# So a fused product with degrees 5 or 6 ($\tilde l = 3$) has no $3 \otimes 5 \to 5$ path (nor its permutations), and
# one with degrees 7 or 8 has no $5 \otimes 6 \to 7$. e3x's `FusedTensor` computes the same thing (the cross-check at
# the end of this chapter includes $3 \otimes 5 \to 5$), so it has the same gaps, although its documentation speaks of
# "all valid coupling paths".
#
# ### Parity: which matrix a piece sits in
#
# The matrix basis does not see parity: a `1o` and a `1e` irrep give the same kind of matrix. So e3x keeps the two
# parities apart. Each input is split into an even matrix and an odd one, $X^{+}, X^{-}$ from $x$ and
# $Y^{+}, Y^{-}$ from $y$, each with its own weights per degree. Four products follow, and parities multiply:
#
# | product | parity | output weights |
# |---|---|---|
# | $Z^{++} = X^{+} Y^{+}$ | even | `kernel_eee` |
# | $Z^{--} = X^{-} Y^{-}$ | even | `kernel_ooe` |
# | $Z^{+-} = X^{+} Y^{-}$ | odd | `kernel_eoo` |
# | $Z^{-+} = X^{-} Y^{+}$ | odd | `kernel_oeo` |
#
# Each $Z$ goes back to irreps with one weight per degree, and the output is $z^{+} = z^{++} + z^{--}$ and
# $z^{-} = z^{+-} + z^{-+}$. Under inversion $X^{-} \mapsto -X^{-}$, so $Z^{+-}$ and $Z^{-+}$ flip sign and $Z^{++}$,
# $Z^{--}$ do not: the parities come out right.

# %% [markdown]
# ## Two layouts
#
# e3x stores a batch of features as an array of shape `(..., P, (L+1)**2, F)`: a parity axis, then the $2l+1$
# components of every degree $l = 0..L$ one after the other, then $F$ features. With $P = 2$, channel 0 holds the
# even irreps ($0e, 1e, 2e, \dots$) and channel 1 the odd ones. With $P = 1$ the one channel holds only the
# *tensors*, the irreps of parity $(-1)^l$ ($0e, 1o, 2e, \dots$, those of the spherical harmonics); the others
# ($0o, 1e, 2o, \dots$) are the *pseudotensors*. `e3x_irreps(F, L, P)` names the same numbers in e3nn's terms, and
# `e3x_to_irreps` / `irreps_to_e3x` reorder them into e3nn's flat layout and back (every block `F x ir`,
# multiplicity-major as in chapter 1):

# %%
# NBVAL_CHECK_OUTPUT
for num_parity in [2, 1]:
    x = torch.randn(10, num_parity, 9, 4)  # 10 samples, P channels, degrees 0..2, F = 4
    flat, irreps = e3x_to_irreps(x)
    print(f"P={num_parity}: {tuple(x.shape)} -> {tuple(flat.shape)}, irreps {irreps};",
          "round trip exact:", torch.equal(irreps_to_e3x(flat, irreps), x))
    block = irreps.slices()[[str(ir) for _, ir in irreps].index("1o")]
    vectors = flat[:, block].view(10, 4, 3)  # (samples, F, 3): multiplicity-major
    channel = 1 if num_parity == 2 else 0
    print(f"  the 1o vectors are x[:, {channel}, 1:4, :]:", torch.equal(vectors, x[:, channel, 1:4, :].transpose(1, 2)))
print("as a 2019 Rs list:", irreps_to_rs(e3x_irreps(2, 1, 2)))

# %% [markdown]
# The two layouts hold the same numbers, but only the second one carries labels that the rest of e3nn (and the
# book's checker) understands. `FusedTensorProduct(..., layout="irreps")` takes and returns the flat layout.
#
# One more difference to know about when comparing numbers with e3x: the *basis* inside each degree. For $l = 0, 1$
# e3x (with its default `cartesian_order=True`) and e3nn agree, $l = 1$ being $(x, y, z)$. For $l \ge 2$ the two
# libraries' real spherical harmonics differ by an orthogonal matrix that is not a permutation (e3nn's middle
# component points along $y$, e3x's along $z$). The package works entirely in e3nn's basis, where e3x's Clebsch-Gordan
# coefficients are $\sqrt{2l_3+1}$ `o3.wigner_3j(l1, l2, l3)`.

# %% [markdown]
# A one-channel input holds tensors only: its even irreps are the components of even degree, its odd irreps
# those of odd degree. Rather than multiply the missing parity by zeros, the module takes each parity's
# components apart and converts only those, with the matching rows of the basis (the `components` argument
# of the two functions above); an output of tensors only is put back together the same way. The indices,
# cached per degree and device:

# %%
# Package code: tpconv_lite.fused._parity_components
@functools.lru_cache(maxsize=None)
def _parity_components(max_degree: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The components of degrees ``0..L``: the indices of those of even degree, of those of odd degree, and the
    order that puts ``cat(even part, odd part)`` back in place (three int64 tensors on ``device``)."""
    degrees = torch.arange(max_degree + 1)
    degree_of_component = torch.repeat_interleave(degrees, 2 * degrees + 1)
    even, odd = (torch.nonzero(degree_of_component % 2 == parity).squeeze(-1) for parity in (0, 1))
    return even.to(device), odd.to(device), torch.argsort(torch.cat((even, odd))).to(device)


# %%
# NBVAL_CHECK_OUTPUT
even, odd, order = _parity_components(2, torch.device("cpu"))
print("components of even degree (0 and 2):", even.tolist(), "| of odd degree (1):", odd.tolist())
components = torch.arange(9.0)
print("split, then put back in place:", torch.equal(torch.cat((components[even], components[odd]))[order], components))

# %% [markdown]
# ## The module
#
# Here is the package's class. Its heart is `_fused`: split each input into parities, four calls to
# `vector_to_matrix`, the four matrix products, four calls to `matrix_to_vector`, two sums. The four products are
# computed as two, $X_+ [Y_+\ Y_-]$ and $X_- [Y_+\ Y_-]$, whose halves are $X_+ Y_+, X_+ Y_-$ and $X_- Y_+, X_- Y_-$:
# for matrices this small, a few wider products run faster than many square ones. The rest is bookkeeping: shapes
# and parities checked with clear errors, the two layouts, one-channel inputs (split by degree, as above), and e3x's
# initialisation.

# %%
# Package code: tpconv_lite.fused.FusedTensorProduct
class FusedTensorProduct(nn.Module):
    """e3x's ``FusedTensor``: a weighted sum of the tensor-product paths of ``x`` and ``y``, feature by feature.

    Each degree of each parity of each input has one weight per feature (``kernel_e1, kernel_o1`` for ``x``,
    ``kernel_e2, kernel_o2`` for ``y``), and so has each degree of each of the four products (``kernel_eee``:
    even x even -> even, ``kernel_ooe``, ``kernel_eoo``, ``kernel_oeo``), all of shape (degrees, F) as in e3x. With
    one-channel inputs some weights multiply nothing (for example ``kernel_o1`` at even degrees); as in e3x they
    start at zero.

    The output has ``P3 = 2`` parity channels if ``include_pseudotensors``, else one channel of tensors (the
    pseudotensors are dropped). As in e3x, two one-channel inputs with ``0`` among ``max_degree1``, ``max_degree2``,
    ``max_degree`` cannot make pseudotensors, and then ``P3 = 1`` whatever ``include_pseudotensors`` says.

    Args:
        num_features: F, the same for both inputs and the output.
        max_degree1: L1, the largest degree of ``x``.
        max_degree2: L2, the largest degree of ``y``.
        max_degree: L3, the largest degree of the output, at most ``L1 + L2``; default ``max(L1, L2)``.
        num_parity1: P1, the parity channels of ``x``: 2 (even, odd) or 1 (tensors only).
        num_parity2: P2, the same for ``y``.
        include_pseudotensors: keep the pseudotensors of the output.
        layout: ``"e3x"``: ``x`` (..., P1, (L1+1)**2, F), ``y`` (..., P2, (L2+1)**2, F), output
            (..., P3, (L3+1)**2, F); ``"irreps"``: ``x`` (..., irreps_in1.dim), ``y`` (..., irreps_in2.dim), output
            (..., irreps_out.dim), with the irreps of :func:`e3x_irreps`.

    Example:
        >>> tp = FusedTensorProduct(8, 2, 1)
        >>> tp(torch.randn(5, 2, 9, 8), torch.randn(5, 2, 4, 8)).shape
        torch.Size([5, 2, 9, 8])
        >>> tp.irreps_out
        8x0e+8x0o+8x1e+8x1o+8x2e+8x2o
    """

    def __init__(
        self,
        num_features: int,
        max_degree1: int,
        max_degree2: int,
        max_degree: int | None = None,
        num_parity1: int = 2,
        num_parity2: int = 2,
        include_pseudotensors: bool = True,
        layout: Layout = "e3x",
    ) -> None:
        super().__init__()
        if layout not in ("e3x", "irreps"):
            raise ValueError(f"layout must be 'e3x' or 'irreps', got {layout!r}")
        self.irreps_in1 = e3x_irreps(num_features, max_degree1, num_parity1)
        self.irreps_in2 = e3x_irreps(num_features, max_degree2, num_parity2)
        max_degree = max(max_degree1, max_degree2) if max_degree is None else max_degree
        if isinstance(max_degree, bool) or not isinstance(max_degree, int) or max_degree < 0:
            raise ValueError(f"max_degree must be None or an int >= 0, got {max_degree!r}")
        if max_degree > max_degree1 + max_degree2:
            raise ValueError(
                f"max_degree can be at most max_degree1 + max_degree2 = {max_degree1 + max_degree2}, got {max_degree}"
            )
        if num_parity1 == num_parity2 == 1 and 0 in (max_degree1, max_degree2, max_degree):
            include_pseudotensors = False
        self.num_features = num_features
        self.max_degree1, self.max_degree2, self.max_degree = max_degree1, max_degree2, max_degree
        self.num_parity1, self.num_parity2 = num_parity1, num_parity2
        self.num_parity3 = 2 if include_pseudotensors else 1
        self.irreps_out = e3x_irreps(num_features, max_degree, self.num_parity3)
        self.layout = layout
        self.largest_degree = max(max_degree1, max_degree2, max_degree)
        self.matrix_degree = math.ceil(self.largest_degree / 2)

        def kernel(max_degree: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(max_degree + 1, num_features))

        self.kernel_e1, self.kernel_o1 = kernel(max_degree1), kernel(max_degree1)
        self.kernel_e2, self.kernel_o2 = kernel(max_degree2), kernel(max_degree2)
        self.kernel_eee, self.kernel_ooe = kernel(max_degree), kernel(max_degree)
        self.kernel_eoo, self.kernel_oeo = kernel(max_degree), kernel(max_degree)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """e3x's ``fused_tensor_normal``: truncated normals whose variances keep the output variance near one.

        Input kernels get variance ``sqrt(2 l~ + 1) / min(L1 + 1, L2 + 1)``; output kernels ``1/2`` when both inputs
        have two channels, ``2`` (``1`` for ``l = 0``) when both have one channel and degrees above 0, else ``1``.
        Weights that can only multiply zeros start at zero. With ``max_degree = max(L1, L2)`` the measured output
        variance is 0.9 to 1.1 in most settings (0.6 for one-channel inputs of degree 1); with a larger
        ``max_degree`` it falls, in e3x too (about 0.37 for ``L1 = L2 = 2``, ``max_degree = 4``).
        """
        l1, l2, l3 = self.max_degree1, self.max_degree2, self.max_degree
        var_in = math.sqrt(2 * self.matrix_degree + 1) / min(l1 + 1, l2 + 1)
        var_out = torch.ones(l3 + 1, 1)
        if self.num_parity1 == self.num_parity2 == 2:
            var_out /= 2
        elif self.num_parity1 == self.num_parity2 == 1 and l1 > 0 and l2 > 0:
            var_out[1:] = 2.0
        even = (torch.arange(self.largest_degree + 1) % 2 == 0).unsqueeze(-1)
        one_channel1, one_channel2 = self.num_parity1 == 1, self.num_parity2 == 1
        everything = torch.ones(1, 1, dtype=torch.bool)
        odd_output = everything.expand(l3 + 1, 1).clone()
        odd_output[0] = not (one_channel1 and one_channel2)  # tensors x tensors make no pseudoscalar
        for weight, variance, mask in (
            (self.kernel_e1, var_in, even[: l1 + 1] if one_channel1 else everything),
            (self.kernel_o1, var_in, ~even[: l1 + 1] if one_channel1 else everything),
            (self.kernel_e2, var_in, even[: l2 + 1] if one_channel2 else everything),
            (self.kernel_o2, var_in, ~even[: l2 + 1] if one_channel2 else everything),
            (self.kernel_eee, var_out, everything),
            (self.kernel_ooe, var_out, everything),
            (self.kernel_eoo, var_out, odd_output),
            (self.kernel_oeo, var_out, odd_output),
        ):
            sample = nn.init.trunc_normal_(torch.empty(weight.shape, dtype=torch.float64), a=-2.0, b=2.0)
            scale = torch.as_tensor(variance, dtype=torch.float64).sqrt() / TRUNCATED_NORMAL_STD
            weight.copy_(sample * scale * mask)

    def _check(self, name: str, x: Tensor, num_parity: int, max_degree: int, index: int) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 3:
            raise ValueError(f"{name} must have shape (..., P, (L+1)**2, F), got shape {tuple(x.shape)}")
        expected = (
            (-3, "parity channels", num_parity, f"num_parity{index}"),
            (-2, "degree components", (max_degree + 1) ** 2, f"(max_degree{index}+1)**2"),
            (-1, "features", self.num_features, "num_features"),
        )
        for axis, meaning, size, origin in expected:
            if x.shape[axis] != size:
                raise ValueError(
                    f"{name}: axis {axis} ({meaning}) must have size {origin} = {size}, got shape {tuple(x.shape)}"
                )

    @staticmethod
    def _split_parities(x: Tensor, max_degree: int) -> tuple[tuple[Tensor, Tensor | None], ...]:
        """(..., P, (L+1)**2, F) -> the even and the odd irreps, each with the indices of the components it holds.

        Two channels: each channel, all its components (None). One channel (tensors): the components of even
        degree, and those of odd degree.
        """
        if x.shape[-3] == 2:
            return (x[..., 0, :, :], None), (x[..., 1, :, :], None)
        x = x.squeeze(-3)
        even, odd, _ = _parity_components(max_degree, x.device)
        return (x.index_select(-2, even), even), (x.index_select(-2, odd), odd)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """The fused tensor product of ``x`` and ``y``; shapes as set by ``layout`` (see the class docstring)."""
        if self.layout == "irreps":
            x, y = irreps_to_e3x(x, self.irreps_in1), irreps_to_e3x(y, self.irreps_in2)
            return e3x_to_irreps(self._fused(x, y))[0]
        return self._fused(x, y)

    def _fused(self, x: Tensor, y: Tensor) -> Tensor:
        self._check("x", x, self.num_parity1, self.max_degree1, 1)
        self._check("y", y, self.num_parity2, self.max_degree2, 2)
        basis = _matrix_basis_on(self.matrix_degree, self.largest_degree, x.device, x.dtype)
        (x_even, x_even_at), (x_odd, x_odd_at) = self._split_parities(x, self.max_degree1)
        (y_even, y_even_at), (y_odd, y_odd_at) = self._split_parities(y, self.max_degree2)
        xe = vector_to_matrix(x_even, self.kernel_e1, basis, x_even_at)
        xo = vector_to_matrix(x_odd, self.kernel_o1, basis, x_odd_at)
        ye = vector_to_matrix(y_even, self.kernel_e2, basis, y_even_at)
        yo = vector_to_matrix(y_odd, self.kernel_o2, basis, y_odd_at)
        # the four products as two, X+ [Y+ Y-] and X- [Y+ Y-]: fewer and wider matrix products run faster
        d, y_both = ye.shape[-1], torch.cat((ye, yo), dim=-1)
        from_xe, from_xo = xe @ y_both, xo @ y_both
        even_at = odd_at = None  # with pseudotensors, every component of both parities
        if self.num_parity3 == 1:  # tensors only: the even degrees of the even products, the odd of the odd ones
            even_at, odd_at, order = _parity_components(self.max_degree, x.device)
        even = (matrix_to_vector(from_xe[..., :d], self.kernel_eee, basis, even_at)
                + matrix_to_vector(from_xo[..., d:], self.kernel_ooe, basis, even_at))  # fmt: skip
        odd = (matrix_to_vector(from_xe[..., d:], self.kernel_eoo, basis, odd_at)
               + matrix_to_vector(from_xo[..., :d], self.kernel_oeo, basis, odd_at))  # fmt: skip
        if self.num_parity3 == 2:
            return torch.stack((even, odd), dim=-3)
        return torch.cat((even, odd), dim=-2).index_select(-2, order).unsqueeze(-3)

    def extra_repr(self) -> str:
        return f"{self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out}, matrix_degree={self.matrix_degree}"


# %% [markdown]
# (`_matrix_basis_on`, defined above, is the cached `_matrix_basis` on the input's device and dtype;
# `TRUNCATED_NORMAL_STD` is the standard deviation of a standard normal truncated to $(-2, 2)$, as in e3x's
# initialiser.) Built from the same seed, the chapter's class and the package's have the same weights and give the same output, in both layouts:

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(3)
ours = FusedTensorProduct(8, 2, 1)
torch.manual_seed(3)
package = tpconv_lite.FusedTensorProduct(8, 2, 1)
x, y = torch.randn(5, 2, 9, 8), torch.randn(5, 2, 4, 8)
print(ours)
print("output", tuple(ours(x, y).shape), "| same as the package:", torch.equal(ours(x, y), package(x, y)))
flat = FusedTensorProduct(8, 2, 1, layout="irreps")
flat.load_state_dict(ours.state_dict())
print("irreps layout gives the same numbers:",
      torch.allclose(flat(e3x_to_irreps(x)[0], e3x_to_irreps(y)[0]), e3x_to_irreps(ours(x, y))[0], atol=1e-6))
print("parameters:", {name: tuple(p.shape) for name, p in ours.named_parameters()})

# %% [markdown]
# Bad shapes fail with a message that names the axis:

# %%
# NBVAL_CHECK_OUTPUT
for bad_x, bad_y in [(torch.randn(5, 2, 4, 8), y), (x, torch.randn(5, 1, 4, 8)), (x, torch.randn(5, 2, 4, 3))]:
    try:
        ours(bad_x, bad_y)
    except ValueError as error:
        print("ValueError:", error)

# %% [markdown]
# ## Equivariance
#
# The book's checker needs labelled features, so the checks use `layout="irreps"`. In float64 (the modules are built
# under the float64 default, chapter 1), for a few settings: both inputs with two parity channels; a one-channel $x$
# with a two-channel $y$ and an output of higher degree without pseudotensors; and degrees 5 ($\tilde l = 3$, where
# the first 6j zeros appear).

# %%
# NBVAL_CHECK_OUTPUT
settings = {  # name: (F, L1, L2, L3, P1, P2, include_pseudotensors)
    "F=4, L=2, two channels": (4, 2, 2, 2, 2, 2, True),
    "F=3, L1=3 one channel, L2=1, L3=4, no pseudotensors": (3, 3, 1, 4, 1, 2, False),
    "F=2, L=5 one channel (l~=3)": (2, 5, 5, 5, 1, 1, True),
}
reports = {}
for name, (F, l1, l2, l3, p1, p2, pseudo) in settings.items():
    with default_dtype(torch.float64):
        tp = FusedTensorProduct(F, l1, l2, l3, p1, p2, pseudo, layout="irreps").eval()
    x = torch.randn(6, tp.irreps_in1.dim, dtype=torch.float64)
    y = torch.randn(6, tp.irreps_in2.dim, dtype=torch.float64)
    irreps = [str(tp.irreps_in1), str(tp.irreps_in2), str(tp.irreps_out)]
    reports[name] = check_equivariance(tp, [x, y], irreps[:2], irreps[2])
    print(f"{name}: {tp.irreps_in1} x {tp.irreps_in2} -> {tp.irreps_out}")
    print(" ", reports[name])

# %%
# NBVAL_IGNORE_OUTPUT
for name, report in reports.items():
    print(name)
    print(report.details())

# %% [markdown]
# The check can fail. Feed the e3x layout to the checker as if it were e3nn's (flatten the array and use the labels
# of `e3x_irreps`), and the numbers sit under the wrong labels:

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    tp_e3x = FusedTensorProduct(4, 2, 2).eval()
irreps = str(tp_e3x.irreps_in1)


def flattened_without_reordering(x: Tensor, y: Tensor) -> Tensor:
    """Wrong on purpose: e3x arrays flattened as they are, without e3x_to_irreps."""
    return tp_e3x(x.view(-1, 2, 9, 4), y.view(-1, 2, 9, 4)).flatten(-3)


x, y = torch.randn(2, 6, tp_e3x.irreps_in1.dim, dtype=torch.float64)
report = check_equivariance(flattened_without_reordering, [x, y], [irreps, irreps], irreps)
print("e3x layout labelled as irreps:", report)

# %% [markdown]
# ## Which paths, and which weights
#
# A full tensor product (e3x's `Tensor`, or e3nn's `o3.TensorProduct` with `"uuu"` instructions) gives every path
# $(l_1 p_1) \otimes (l_2 p_2) \to (l_3 p_3)$ its own weight per feature. The fused product has weights only per
# degree: for a path in, say, $Z^{++}$, the input weight of $l_1$, the input weight of $l_2$, the output weight of
# $l_3$, and the constant $K$ of the matrix product. So its *effective* weight for that path should be
#
# $$w_\text{path} = w^{x+}_{l_1}\, w^{y+}_{l_2}\, w^{++}_{l_3}\, K(l_1, l_2, l_3; \tilde l) ,$$
#
# a product. Let us measure the effective weights instead of believing it. With one feature, feed one input irrep
# into each side at a time; every output irrep must then be a multiple of the Clebsch-Gordan coupling, and the
# multiple is the path's weight. The function works for any bilinear equivariant module with the irreps layout, so
# it measures e3nn's full product too.

# %%
def irrep_blocks(irreps: o3.Irreps) -> list[tuple[slice, o3.Irrep]]:
    """Slice and irrep of every block of ``irreps`` (one channel each in this section)."""
    return [(s, ir) for s, (_, ir) in zip(irreps.slices(), irreps)]


def path_weights(
    tp: nn.Module, parameters: dict[str, Tensor] | None = None
) -> tuple[list[tuple[o3.Irrep, o3.Irrep, o3.Irrep]], Tensor, float]:
    """Measure the weight of every path of a bilinear module with one channel per irrep.

    Row k of the batch holds random numbers in one block of each input only; an output block ir3 must then equal
    w * sqrt(2 l3 + 1) * wigner_3j(l1, l2, l3) contracted with the two blocks, and w is the path's weight.

    Args:
        tp: the module, with ``irreps_in1``, ``irreps_in2``, ``irreps_out`` and a forward ``tp(x, y)``.
        parameters: used instead of the module's own (a dict like ``dict(tp.named_parameters())``), for autograd.

    Returns:
        The paths (ir1, ir2, ir3) allowed by the selection rules, their weights (n_paths,), and the largest residual
        of the fit (zero for an equivariant module), forbidden output blocks included.
    """
    generator = torch.Generator().manual_seed(0)
    pairs = list(itertools.product(irrep_blocks(tp.irreps_in1), irrep_blocks(tp.irreps_in2)))
    x = torch.zeros(len(pairs), tp.irreps_in1.dim, dtype=torch.float64)
    y = torch.zeros(len(pairs), tp.irreps_in2.dim, dtype=torch.float64)
    for k, ((s1, _), (s2, _)) in enumerate(pairs):
        x[k, s1] = torch.randn(s1.stop - s1.start, dtype=torch.float64, generator=generator)
        y[k, s2] = torch.randn(s2.stop - s2.start, dtype=torch.float64, generator=generator)
    z = tp(x, y) if parameters is None else torch.func.functional_call(tp, parameters, (x, y))
    paths, weights, residual = [], [], 0.0
    for k, ((s1, ir1), (s2, ir2)) in enumerate(pairs):
        for s3, ir3 in irrep_blocks(tp.irreps_out):
            if ir3 not in ir1 * ir2:
                residual = max(residual, float(z[k, s3].detach().abs().max()))
                continue
            C = math.sqrt(2 * ir3.l + 1) * o3.wigner_3j(ir1.l, ir2.l, ir3.l, dtype=torch.float64)
            coupled = torch.einsum("i,j,ijk->k", x[k, s1], y[k, s2], C)
            w = (z[k, s3] @ coupled) / (coupled @ coupled)
            residual = max(residual, float((z[k, s3] - w * coupled).detach().abs().max()))
            paths.append((ir1, ir2, ir3))
            weights.append(w)
    return paths, torch.stack(weights), residual


# %% [markdown]
# With every kernel set to one, the measured weights are the constants $K$, and they match the 6j formula above, for
# matrices of size 3, 5 and 7:

# %%
# NBVAL_CHECK_OUTPUT
def unit_kernels(tp: FusedTensorProduct) -> FusedTensorProduct:
    with torch.no_grad():
        for parameter in tp.parameters():
            parameter.fill_(1.0)
    return tp


for max_degree in [2, 4, 6]:
    with default_dtype(torch.float64):
        tp = unit_kernels(FusedTensorProduct(1, max_degree, max_degree, layout="irreps"))
    with torch.no_grad():
        paths, K, residual = path_weights(tp)
    n = tp.matrix_degree
    formula = torch.tensor([(-1) ** c.l * math.sqrt((2 * a.l + 1) * (2 * b.l + 1))
                            * float(wigner_6j(a.l, b.l, c.l, n, n, n)) for a, b, c in paths], dtype=torch.float64)
    zero = [f"{a} x {b} -> {c}" for (a, b, c), k in zip(paths, K) if abs(k) < 1e-12]
    print(f"L={max_degree} (l~={n}): {len(paths)} paths, every output a multiple of the coupling: {residual < 1e-12},"
          f" K == 6j formula: {torch.allclose(K, formula, atol=1e-12)}, zero paths: {zero}")

# %% [markdown]
# Now random kernels. For $L = 2$ with one feature, the fused product has $8 \times 3 = 24$ weights and 60 paths;
# every one of the 60 measured path weights is the product of three kernel entries and $K$:

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    tp, unit = FusedTensorProduct(1, 2, 2, layout="irreps"), unit_kernels(FusedTensorProduct(1, 2, 2, layout="irreps"))
with torch.no_grad():
    K = path_weights(unit)[1]
    paths, weights, residual = path_weights(tp)
    x_kernel = {1: tp.kernel_e1[:, 0], -1: tp.kernel_o1[:, 0]}
    y_kernel = {1: tp.kernel_e2[:, 0], -1: tp.kernel_o2[:, 0]}
    out_kernel = {(1, 1): tp.kernel_eee[:, 0], (-1, -1): tp.kernel_ooe[:, 0],
                  (1, -1): tp.kernel_eoo[:, 0], (-1, 1): tp.kernel_oeo[:, 0]}
    product = torch.stack([x_kernel[a.p][a.l] * y_kernel[b.p][b.l] * out_kernel[a.p, b.p][c.l] for a, b, c in paths])
print("paths:", len(paths), "| parameters:", sum(p.numel() for p in tp.parameters()))
print("w_path == w_x[l1] * w_y[l2] * w_out[l3] * K for every path:", torch.allclose(weights, product * K, atol=1e-12))

# %% [markdown]
# ### How many path weights can it reach?
#
# The effective weights are a function of the kernels, $\mathbb{R}^{8(L+1)} \to \mathbb{R}^{\#\text{paths}}$. The
# rank of its Jacobian at a random point is the dimension of the set of weight vectors that the fused product can
# reach. It is at most $8(L+1)$, and four directions are lost to rescalings that change nothing (scale $X^{+}$ by
# $\alpha$ and divide `kernel_eee` and `kernel_eoo` by $\alpha$, and likewise for $X^{-}$, $Y^{+}$, $Y^{-}$), so
# expect $8(L+1) - 4$. A full product reaches every weight vector: its rank is the number of paths.

# %%
# NBVAL_CHECK_OUTPUT
def full_tensor_product(num_features: int, max_degree: int) -> o3.TensorProduct:
    """e3nn's equivalent of e3x's Tensor: every path of e3x_irreps(F, L, 2) with its own weight per feature."""
    irreps = e3x_irreps(num_features, max_degree, 2)
    instructions = [(i1, i2, i3, "uuu", True) for (i1, (_, ir1)), (i2, (_, ir2)), (i3, (_, ir3))
                    in itertools.product(enumerate(irreps), repeat=3) if ir3 in ir1 * ir2]
    return o3.TensorProduct(irreps, irreps, irreps, instructions)


def weight_rank(tp: nn.Module) -> int:
    """Rank of the Jacobian of the measured path weights with respect to all parameters of ``tp``."""
    names = [name for name, _ in tp.named_parameters()]

    def weights_at(*parameters: Tensor) -> Tensor:
        return path_weights(tp, dict(zip(names, parameters)))[1]

    point = tuple(p.detach() for p in tp.parameters())
    jacobian = torch.autograd.functional.jacobian(weights_at, point, vectorize=True)  # one block per parameter
    return int(torch.linalg.matrix_rank(torch.cat([block.flatten(1) for block in jacobian], dim=1)))


print(f"{'L':>2} {'paths':>6} {'fused params':>13} {'fused rank':>11} {'8(L+1)-4':>9} {'full rank':>10}")
for max_degree in [1, 2, 3]:
    with default_dtype(torch.float64):
        fused = FusedTensorProduct(1, max_degree, max_degree, layout="irreps")
        full = full_tensor_product(1, max_degree)
    n_paths = len(path_weights(fused)[0])
    print(f"{max_degree:>2} {n_paths:>6} {sum(p.numel() for p in fused.parameters()):>13} {weight_rank(fused):>11}"
          f" {8 * (max_degree + 1) - 4:>9} {weight_rank(full):>10}")

# %% [markdown]
# For $L = 1, 2, 3$ the fused product's path weights fill a set of dimension 12, 20, 28 inside the space of all path
# weights, of dimension 20, 60, 136: almost every full product is out of its reach. What the rank means concretely: within one product, say
# $Z^{++}$ with $L = 1$, the five paths' weights divided by $K$ have the form $a_{l_1} b_{l_2} c_{l_3}$, and such
# products obey equations like $w_{011}\, w_{101}\, w_{110} = w_{000}\, w_{111}^2$ (both sides are
# $a_0 a_1^2\, b_0 b_1^2\, c_0 c_1^2$). The fused product satisfies it for any kernels; a full product with random
# weights does not:

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    modules = {"fused": FusedTensorProduct(1, 1, 1, layout="irreps"), "full": full_tensor_product(1, 1)}
    unit = unit_kernels(FusedTensorProduct(1, 1, 1, layout="irreps"))
with torch.no_grad():
    K = path_weights(unit)[1]
for name, tp in modules.items():
    with torch.no_grad():
        paths, weights, residual = path_weights(tp)
    w = {(a.l, b.l, c.l): float(wt / k) for (a, b, c), wt, k in zip(paths, weights, K) if a.p == b.p == 1}
    holds = math.isclose(w[0, 1, 1] * w[1, 0, 1] * w[1, 1, 0], w[0, 0, 0] * w[1, 1, 1] ** 2, rel_tol=1e-9)
    print(f"{name}: {len(paths)} paths, couplings equivariant: {residual < 1e-12},",
          f"w011 w101 w110 == w000 w111^2: {holds}")

# %% [markdown]
# In a network the gap is smaller than these numbers suggest, since linear layers before and after a tensor product
# (e3x's `Dense`, e3nn's `o3.Linear`) mix the features. But the per-path freedom of a single layer is gone.
#
# ### Parameters
#
# Per feature, the fused product has $8(L+1)$ weights: four input kernels of $L+1$ degrees and four output kernels
# (here $L_1 = L_2 = L_3 = L$). The full product has one weight per path, and the number of paths grows like $L^3$:

# %%
# NBVAL_CHECK_OUTPUT
F = 8
print(f"F = {F}, both inputs and the output e3x_irreps(F, L, 2)")
print(f"{'L':>2} {'paths':>6} {'full weights':>13} {'fused weights':>14} {'full / fused':>13}")
e3nn_agrees = []
for max_degree in range(1, 9):
    irreps = e3x_irreps(F, max_degree, 2)
    n_paths = sum(ir3 in ir1 * ir2 for (_, ir1), (_, ir2), (_, ir3) in itertools.product(irreps, repeat=3))
    fused_weights = sum(p.numel() for p in FusedTensorProduct(F, max_degree, max_degree).parameters())
    if max_degree <= 2:  # building the larger full products takes a while (see below)
        e3nn_agrees.append(full_tensor_product(F, max_degree).weight_numel == F * n_paths)
    print(f"{max_degree:>2} {n_paths:>6} {F * n_paths:>13} {fused_weights:>14} {F * n_paths / fused_weights:>13.1f}")
print("e3nn's weight_numel equals F * paths for L = 1, 2:", all(e3nn_agrees))

# %% [markdown]
# ## Cost
#
# Count the multiply-adds per sample and feature. The full product contracts, for every path, a dense
# Clebsch-Gordan block of $(2l_1+1)(2l_2+1)(2l_3+1)$ numbers (that is what e3nn does). The fused product does eight
# changes of basis of $(L+1)^2 n^2$ each ($n = 2\tilde l+1$) and four matrix products of $n^3$ each:

# %%
# NBVAL_CHECK_OUTPUT
def multiply_adds(max_degree: int) -> tuple[int, int]:
    """Multiply-adds per sample and feature: (full product, fused product), all degrees up to L, P = 2."""
    full = 4 * sum((2 * a + 1) * (2 * b + 1) * (2 * c + 1) for a, b, c in triangles(max_degree))  # 4 parity pairs
    n = 2 * math.ceil(max_degree / 2) + 1
    fused = 8 * (max_degree + 1) ** 2 * n**2 + 4 * n**3
    return full, fused


for max_degree in range(1, 9):
    full, fused = multiply_adds(max_degree)
    print(f"L={max_degree}: full {full:>7}, fused {fused:>6}, ratio {full / fused:5.1f}")

# %%
count_ratio = {l: multiply_adds(l)[0] / multiply_adds(l)[1] for l in range(1, 9)}
glue("count_first_ahead", min(l for l, r in count_ratio.items() if r > 1), display=False)
glue("count_ratio_8", count_ratio[8], display=False)

# %% [markdown]
# In this count the fused product is ahead from $L =$ {glue:text}`count_first_ahead` and
# {glue:text}`count_ratio_8:.0f` times cheaper at $L = 8$, with the slopes
# $L^6$ and $L^4$ taking over only slowly. Measured times also pay for memory traffic and Python overhead (e3nn runs
# one small contraction per path), so let us measure: $F = 8$ features, a batch of 256, both parities ($P = 2$: an
# even and an odd copy of every degree, so four parity pairs per path), on one CPU thread, the forward pass alone and
# forward plus backward (gradients for the inputs and the weights). Chapter 10's benchmark times another setting,
# tensors of one parity only ($P = 1$), where the full product has a quarter of the paths: the two chapters' ratios
# differ for that reason. Both use the book's timer, `bench.time_side_by_side`: the two products run alternately,
# after a warm-up call, and each time is the fastest of a few calls; forward plus backward is
# `bench.forward_backward`, the training step of chapters 8 and 10.
#
# Honest sizing: e3nn *builds* a full product by generating and optimising code for each path, which takes seconds
# above $L = 6$ (1040 and 1476 paths at $L = 7, 8$), and its forward passes there are slow too. To keep
# the chapter under a minute the full product is timed up to `full_max_degree = 6`; set it to 8 to time every
# degree (it adds the longest builds and passes of all).

# %%
# NBVAL_IGNORE_OUTPUT
F, batch, degrees, full_max_degree = 8, 256, range(1, 9), 6
times = {name: {} for name in ["fused fwd", "full fwd", "fused fwd+bwd", "full fwd+bwd"]}
cpu = torch.device("cpu")
threads = torch.get_num_threads()
torch.set_num_threads(1)
try:
    for max_degree in degrees:
        fused = FusedTensorProduct(F, max_degree, max_degree, layout="irreps")
        x = torch.randn(batch, fused.irreps_in1.dim, requires_grad=True)
        y = torch.randn(batch, fused.irreps_in2.dim, requires_grad=True)
        projection = torch.randn(batch, fused.irreps_out.dim)
        modules = {"fused": fused}
        if max_degree <= full_max_degree:
            start = time.perf_counter()
            modules["full"] = full_tensor_product(F, max_degree)
            print(f"L={max_degree}: building the full product took {time.perf_counter() - start:.2f} s")
        repeats = 5 if max_degree <= 4 else 3
        with torch.no_grad():
            forward = {name: functools.partial(tp, x, y) for name, tp in modules.items()}
            timed = bench.time_side_by_side(forward, 1, repeats, cpu)
        steps = {name: functools.partial(bench.forward_backward, tp, [x, y], projection)
                 for name, tp in modules.items()}
        timed_steps = bench.time_side_by_side(steps, 1, repeats, cpu)
        for name in modules:
            times[f"{name} fwd"][max_degree] = timed[name]["min"]
            times[f"{name} fwd+bwd"][max_degree] = timed_steps[name]["min"]
finally:
    torch.set_num_threads(threads)


def columns(kind: str, max_degree: int) -> str:
    """'fused ms, full ms, full/fused' for kind 'fwd' or 'fwd+bwd'; dashes where the full product was not timed."""
    fused = times[f"fused {kind}"][max_degree]
    full = times[f"full {kind}"].get(max_degree)
    if full is None:
        return f"{1e3 * fused:9.2f} {'-':>9} {'-':>10}"
    return f"{1e3 * fused:9.2f} {1e3 * full:9.2f} {full / fused:10.1f}"


print(f"\n{'':>3} {'forward (ms)':^30} | {'forward + backward (ms)':^30}")
print(f"{'L':>3} {'fused':>9} {'full':>9} {'full/fused':>10} | {'fused':>9} {'full':>9} {'full/fused':>10}")
for max_degree in degrees:
    print(f"{max_degree:>3} {columns('fwd', max_degree)} | {columns('fwd+bwd', max_degree)}")

# %% [markdown]
# On a log-log plot a cost $\propto L^k$ is a straight line of slope $k$. The grey lines have the slopes 4 and 6:

# %%
# NBVAL_IGNORE_OUTPUT
fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
styles = {"fused fwd": ("C0", "-"), "fused fwd+bwd": ("C0", "--"), "full fwd": ("C3", "-"),
          "full fwd+bwd": ("C3", "--")}
for name, measured in times.items():
    ls = np.array(list(measured))
    ax.loglog(ls, 1e3 * np.array(list(measured.values())), marker="o", color=styles[name][0], ls=styles[name][1],
              label=name)
grid = np.arange(2, 9)
for power, anchor in [(4, times["fused fwd"][4]), (6, times["full fwd"][4])]:
    ax.loglog(grid, 1e3 * anchor * (grid / 4) ** power, color="grey", lw=1, ls=":")
    ax.annotate(f"$\\propto L^{power}$", (grid[-1], 1e3 * anchor * (grid[-1] / 4) ** power), color="grey", fontsize=9,
                ha="right", va="bottom")
ax.set_xticks(list(degrees), [str(l) for l in degrees])
ax.set_xlabel("max degree L (inputs and output)")
ax.set_ylabel("time per call (ms), batch 256, F = 8, 1 thread")
ax.set_title("Fused vs full tensor product on this CPU")
ax.legend(fontsize=8)
plt.show()

def slope_of(name: str) -> float:
    """Least-squares slope of log time against log L, over L >= 3."""
    ls = [l for l in times[name] if l >= 3]
    return float(np.polyfit(np.log(ls), np.log([times[name][l] for l in ls]), 1)[0])


for name, measured in times.items():
    ls = [l for l in measured if l >= 3]
    print(f"{name}: fitted slope over L = {ls[0]}..{ls[-1]}: {slope_of(name):.1f}")
faster = [l for l in times["full fwd"] if times["fused fwd"][l] < times["full fwd"][l]]
print("fused forward faster than full at L =", faster)
glue("fused_first_faster", faster[0] if faster else "none", display=False)
glue("fused_ratio_6", times["full fwd"][6] / times["fused fwd"][6], display=False)
glue("fused_slope_fwd", slope_of("fused fwd"), display=False)
glue("full_slope_fwd", slope_of("full fwd"), display=False)

# %%
# NBVAL_CHECK_OUTPUT
print("fused forward faster than full at every L from 3 to 6:", all(l in faster for l in range(3, 7)))
print("fused forward more than 5 times faster at L = 6:", times["full fwd"][6] / times["fused fwd"][6] > 5)
print("fitted slopes below the asymptotic 4 and 6:", slope_of("fused fwd") < 4 and slope_of("full fwd") < 6)

# %% [markdown]
# What to read from it (your numbers will differ; these are the trends on the CPU that built this page). The fused
# product wins from small degrees on: here its forward pass is faster from $L =$ {glue:text}`fused_first_faster`,
# and {glue:text}`fused_ratio_6:.0f` times faster at $L = 6$. The fitted slopes,
# {glue:text}`fused_slope_fwd:.1f` (fused) and {glue:text}`full_slope_fwd:.1f` (full), are well below 4 and 6: at these sizes neither product is in its asymptotic regime, and fixed costs
# per call and per path weigh a lot (the multiply-add counts above do not follow their slopes yet either). On GPUs
# and TPUs the picture shifts: e3x's documentation finds its `Tensor` usually faster there for $L \le 4$, thanks to
# its simpler implementation, and `FusedTensor` often much faster for $L > 4$, or on CPUs. Other routes to cheaper
# tensor products exist, such as rotating each edge so that the coupling reduces to SO(2)
# {footcite:p}`passaro2023reducing`; a systematic comparison {footcite:p}`xie2025price` finds that such speed-ups
# generally cost expressivity, as here, and that measured run times can differ a lot from the asymptotic ones.

# %% [markdown]
# ## Cross-checked against e3x
#
# Everything above was derived from the formulas. Does it give e3x's numbers? e3x runs on JAX, which is not a
# dependency of the book, so the package ships the answer: `tpconv_lite/assets/e3x_fused.npz` holds inputs, the
# kernels of an initialised `e3x.nn.FusedTensor` and its outputs, for three settings (one with the vanishing
# $3 \otimes 5 \to 5$ path), written by `tests/make_e3x_reference.py` in a separate environment with jax and e3x
# (the command is in the script and in `tpconv_lite/assets/README.md`). Inputs and outputs are stored in e3nn's
# basis of spherical harmonics; e3x's real harmonics differ from e3nn's by a rotation within each degree $l \ge 2$,
# which the script applies both ways. Copying the kernels into `FusedTensorProduct`, by their e3x names, must give
# the stored outputs:

# %%
# NBVAL_CHECK_OUTPUT
e3x_reference = np.load(Path(tpconv_lite.__file__).parent / "assets" / "e3x_fused.npz")
print("made with jax {}, e3x {}".format(*e3x_reference["versions"]))
for i, (p1, p2, l1, l2, l3, pseudo) in enumerate(e3x_reference["cases"].tolist()):
    tp = FusedTensorProduct(4, l1, l2, l3, p1, p2, bool(pseudo)).double()
    with torch.no_grad():
        for name, parameter in tp.named_parameters():
            parameter.copy_(torch.from_numpy(e3x_reference[f"case{i}__kernel__{name}"]))
        ours = tp(*(torch.from_numpy(e3x_reference[f"case{i}__{k}"]) for k in ("x", "y")))
    expected = torch.from_numpy(e3x_reference[f"case{i}__output"])
    agree = ours.shape == expected.shape and bool(((ours - expected).abs().max() < 1e-12 * expected.abs().max()))
    print(f"P={p1},{p2} L={l1},{l2}->{l3} pseudotensors={bool(pseudo)}: same output as e3x (1e-12 relative):", agree)

# %% [markdown]
# The package's test suite goes further with e3x itself, in `tests/test_fused_e3x.py` (skipped unless jax and e3x
# are importable): it checks that the change of basis is the identity for $l \le 1$ and not a permutation beyond,
# that e3x's Clebsch-Gordan coefficients in e3nn's basis are $\sqrt{2 l_3 + 1}$ `o3.wigner_3j`, and compares six
# settings. To run it without touching the project's environment:
#
# ```bash
# pip install --target /tmp/e3x-site jax e3x
# PYTHONPATH=/tmp/e3x-site .venv/bin/python -m pytest tests/test_fused_e3x.py
# ```

# %% [markdown]
# ## Summary
#
# - Irreps of degrees $0..2\tilde l$, one of each, are a $(2\tilde l+1) \times (2\tilde l+1)$ matrix: the
#   Clebsch-Gordan coefficients of $\tilde l \otimes \tilde l$ are an orthogonal change of basis (`matrix_basis`).
#   Rotations act on the matrix by conjugation, so products of such matrices are equivariant, and one matrix product
#   computes many tensor-product paths at once.
# - `FusedTensorProduct` (e3x's `FusedTensor`) weights each degree on the way in (`vector_to_matrix`), multiplies
#   the even and odd matrices of the two inputs in four combinations, and weights each degree on the way out
#   (`matrix_to_vector`). Features are `(..., P, (L+1)**2, F)` or, with `layout="irreps"`, e3nn's flat layout with
#   the irreps `e3x_irreps(F, L, P)`.
# - It is equivariant under rotations and inversion; every path allowed by the selection rules is present up to
#   degree 4, but 6j-symbol zeros remove a few from $\tilde l = 3$ on ($3 \otimes 5 \to 5$, $5 \otimes 6 \to 7$).
# - Its path weights factorise, $w = w^{x}_{l_1} w^{y}_{l_2} w^{\text{out}}_{l_3} K$: $8(L+1)$ weights per feature
#   reach a set of dimension $8(L+1) - 4$, where a full product has one free weight per path ($\sim L^3$).
# - It costs $O(L^4)$ instead of $O(L^6)$; on a CPU it is faster from small degrees on, by more than an order of
#   magnitude at $L = 6$.
#
# Next, chapter 8 returns to e3nn's tensor product with per-edge weights and builds the convolution layer of
# EigenFold and DiffDock around it.

# %% [markdown]
# ## Exercises
#
# **1.** Make the fused product compute exactly the cross product of two vectors. Take `FusedTensorProduct(1, 1, 1,
# layout="irreps")`, put a vector $u$ into the `1o` block of $x$ and $v$ into the `1o` block of $y$, and choose the
# kernels so that the `1e` block of the output is $u \times v$ and every other block is zero. Hint: $K(1, 1, 1; 1) =
# -\tfrac12$, and e3x's coupling of two vectors into degree 1 is $(u \times v)/\sqrt 2$.

# %% tags=["hide-cell"]
# NBVAL_CHECK_OUTPUT
# Solution 1: only odd x odd -> even carries u x v, so keep kernel_o1[1], kernel_o2[1] and kernel_ooe[1] and zero
# everything else. The output is then kernel_ooe[1] * K * (u x v) / sqrt 2 (with unit input weights), so
# kernel_ooe[1] = -2 sqrt 2.
with default_dtype(torch.float64):
    cross = FusedTensorProduct(1, 1, 1, layout="irreps")
with torch.no_grad():
    for parameter in cross.parameters():
        parameter.zero_()
    cross.kernel_o1[1], cross.kernel_o2[1], cross.kernel_ooe[1] = 1.0, 1.0, -2 * math.sqrt(2)
blocks = {str(ir): s for s, ir in irrep_blocks(cross.irreps_in1)}  # 0e, 0o, 1e, 1o
u, v = torch.randn(2, 5, 3, dtype=torch.float64)
x, y = torch.zeros(2, 5, cross.irreps_in1.dim, dtype=torch.float64)
x[:, blocks["1o"]], y[:, blocks["1o"]] = u, v
z = cross(x, y)
print("1e block == u x v:", torch.allclose(z[:, blocks["1e"]], torch.linalg.cross(u, v), atol=1e-12))
print("everything else zero:", bool(z[:, [i for i in range(z.shape[1]) if i not in range(2, 5)]].abs().max() < 1e-12))

# %% [markdown]
# **2.** e3x's initialisation aims at outputs of about unit variance for unit-variance inputs. Check it for
# $L_1 = L_2 = 2$ with the default output degree $L_3 = 2$, then with $L_3 = 4$. Average the mean square of the
# output over a few re-initialisations (`reset_parameters()`), with $F = 64$. What happens, and why might it?

# %% tags=["hide-cell"]
# NBVAL_CHECK_OUTPUT
# Solution 2: with L3 = max(L1, L2) the mean square is close to one; with L3 = 4 it drops to about 0.35, because
# the output variance falls with the degree: degree 4 is reached by the one path 2 x 2 -> 4 alone, degree 3 by few.
# The initialisation only looks at L3 through the matrix size; e3x behaves the same way.
torch.manual_seed(4)
for max_degree in [2, 4]:
    tp = FusedTensorProduct(64, 2, 2, max_degree).double()
    per_degree = torch.zeros(max_degree + 1, dtype=torch.float64)
    for _ in range(8):
        tp.reset_parameters()
        x, y = torch.randn(2, 32, 2, 9, 64, dtype=torch.float64)
        with torch.no_grad():
            z = tp(x, y)
        per_degree += torch.stack([z[..., l * l:(l + 1) ** 2, :].pow(2).mean() for l in range(max_degree + 1)]) / 8
    overall = float((per_degree * (2 * torch.arange(max_degree + 1) + 1)).sum() / (max_degree + 1) ** 2)
    print(f"L3={max_degree}: mean square in 0.8..1.2: {0.8 < overall < 1.2}, below 0.5: {overall < 0.5}")
print("by degree for L3=4:", [round(float(v), 1) for v in per_degree])

# %% [markdown]
# ## References
#
# The fused tensor product and its initialisation are from E3x {footcite:p}`unke2024e3x`; e3nn
# {footcite:p}`geiger2022e3nn` provides the Clebsch-Gordan coefficients and the full tensor product we compared with;
# 6j symbols and recoupling are treated in Edmonds' classic text {footcite:p}`edmonds1957angular`.
#
# ```{footbibliography}
# ```
