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
# # 1. From Rs lists to Irreps
#
# In 2019, e3nn's tutorial "Nuts and Bolts of e3nn" {footcite:p}`geiger2019e3nn` opened with one sentence:
# *everything starts with a representation list*. Every tensor that flows through an equivariant network comes with
# a label that says how it changes when the input is rotated or reflected. The label has changed its spelling since
# then, from the `Rs` list `[(2, 0)]` to the string `"2x0e"`, but not its meaning. This chapter teaches that label.

# %% [markdown]
# ```{admonition} Run this chapter
# :class: tip
# Locally: `make execute` in a clone of the repository, or open `tutorials/01_irreps.ipynb` in Jupyter.
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
import e3nn
import matplotlib.pyplot as plt
import torch
from e3nn import o3

import tpconv_lite
from tpconv_lite.testing import check_equivariance

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
# 1. say what an irrep $(l, p)$ is, how big it is, and what rotations and inversion do to it;
# 2. read and write an `o3.Irreps` string, slice a feature tensor by it, sort and simplify it;
# 3. translate an old e3nn `Rs` list into today's `Irreps`, with `tpconv_lite.rs_to_irreps`;
# 4. load benzene as a point cloud with features, rotate and invert its features with `D_from_matrix`, and check
#    numerically that you did it right, with the one equivariance checker the whole book uses.

# %% [markdown]
# ## One irrep: a degree and a parity
#
# Rotate a molecule and ask how a quantity attached to it changes. A charge does not change: it is a *scalar*. A
# dipole moment turns with the molecule: it is a *vector*. The quadrupole moment (a symmetric traceless 3×3 matrix)
# mixes its five independent numbers among themselves. These are the first three *irreducible representations*
# (irreps) of the rotation group: degree $l = 0, 1, 2$, of dimension $2l + 1$. Every quantity that transforms linearly
# under rotations splits into pieces of this kind; that is why a network only ever needs irreps.
#
# Rotations are not all of it. The group O(3) also contains the *inversion* $x \mapsto -x$, and irreps of O(3) carry a
# second label, the *parity* $p = \pm 1$: under inversion, a feature of parity $p$ is multiplied by $p$. A position
# or a dipole flips sign, so it is `1o` ("odd"); an angular momentum $r \times v$ does not, so it is `1e` ("even"), a
# *pseudovector*. In e3nn an irrep is written `"{l}{e|o}"`:

# %%
# NBVAL_CHECK_OUTPUT
for name in ["0e", "0o", "1o", "1e", "2e"]:
    ir = o3.Irrep(name)
    print(f"{name}: l={ir.l}, p={ir.p:+d}, dim={ir.dim}")

# %% [markdown]
# What does inversion do? `D_from_matrix(R)` returns the matrix $D(R)$ by which the irrep transforms under an
# orthogonal matrix $R$. For the inversion $R = -I$ the answer should be $p$ times the identity:

# %%
# NBVAL_CHECK_OUTPUT
inversion = -torch.eye(3, dtype=torch.float64)
for name in ["1o", "1e", "2e", "2o"]:
    D = o3.Irrep(name).D_from_matrix(inversion)
    print(f"{name}: D(-I) = {int(D[0, 0].round()):+d} * identity:", torch.allclose(D, D[0, 0] * torch.eye(D.shape[0], dtype=D.dtype)))

# %% [markdown]
# And for a rotation, a `1o` feature must turn exactly like a position. In e3nn 0.6 the three components of an
# $l=1$ irrep are ordered $(x, y, z)$, so $D(R)$ should be $R$ itself:

# %%
# NBVAL_CHECK_OUTPUT
R = o3.rand_matrix(dtype=torch.float64)
print("D(R) == R for 1o:", torch.allclose(o3.Irrep("1o").D_from_matrix(R), R, atol=1e-6))
print("D(R) == R for 1e:", torch.allclose(o3.Irrep("1e").D_from_matrix(R), R, atol=1e-6))
print("D(-R) == -R for 1o:", torch.allclose(o3.Irrep("1o").D_from_matrix(-R), -R, atol=1e-6))
print("D(-R) == +R for 1e:", torch.allclose(o3.Irrep("1e").D_from_matrix(-R), R, atol=1e-6))

# %% [markdown]
# Why `atol=1e-6` and not the 1e-15 that float64 promises? `D_from_matrix` builds its generators in torch's
# *default* dtype, float32, whatever the dtype of $R$. Its largest error here:

# %%
# NBVAL_IGNORE_OUTPUT
d_error = float((o3.Irrep("1o").D_from_matrix(R) - R).abs().max())
print(f"max |D(R) - R| = {d_error:.1e}")
glue("d_error", d_error, display=False)

# %% [markdown]
# We will meet this again below; the book's checker works around it.

# %% [markdown]
# ## Many irreps: `o3.Irreps`
#
# A feature vector stacks many irreps. `o3.Irreps("2x0e + 3x1o + 1x2e")` says: two scalars, then three vectors, then
# one $l=2$ irrep, $2 \cdot 1 + 3 \cdot 3 + 1 \cdot 5 = 16$ numbers in all. The number in front is the
# *multiplicity*, the number of *channels* of that irrep.

# %%
# NBVAL_CHECK_OUTPUT
irreps = o3.Irreps("2x0e + 3x1o + 1x2e")
print("irreps:", irreps)
print("dim:", irreps.dim, "| number of irreps:", irreps.num_irreps, "| degrees:", irreps.ls, "| lmax:", irreps.lmax)
for mul, ir in irreps:
    print(f"  {mul} x {ir}: {mul * ir.dim} numbers")

# %% [markdown]
# ### Slicing a feature tensor
#
# A batch of features is a tensor of shape `(N, irreps.dim)`. `irreps.slices()` says which columns belong to each
# block. Inside a block `mul x ir`, e3nn stores the channels one after the other ("multiplicity-major"): columns
# `[0:3]` of the `3x1o` block are vector 0, `[3:6]` vector 1, and so on. Reshape to `(N, mul, 2l+1)` to see them:

# %%
# NBVAL_CHECK_OUTPUT
x = irreps.randn(4, -1)  # 4 nodes, 16 numbers each
for (mul, ir), sl in zip(irreps, irreps.slices()):
    block = x[:, sl].reshape(x.shape[0], mul, ir.dim)
    print(f"{mul}x{ir}: columns {sl.start}:{sl.stop}, block shape {tuple(block.shape)}")

vectors = x[:, irreps.slices()[1]].reshape(4, 3, 3)
print("second vector of node 0 is columns 5:8:", torch.equal(vectors[0, 1], x[0, 5:8]))

# %% [markdown]
# ### Sort and simplify
#
# Operations that pair irreps (chapter 3) want them grouped. `sort()` orders the irreps by degree and parity and also
# returns the permutation it applied; `simplify()` merges neighbours that are equal.

# %%
# NBVAL_CHECK_OUTPUT
messy = o3.Irreps("1o + 0e + 1o + 2x0e")
sorted_irreps, p, inv = messy.sort()
print("messy:          ", messy)
print("sorted:         ", sorted_irreps, "  permutation of the irreps:", p)
print("sorted+simplify:", sorted_irreps.simplify())
print("dims agree:", messy.dim == sorted_irreps.simplify().dim)

# %% [markdown]
# ## Rs lists, then and now
#
# The 2019 API wrote the same information as a list of tuples, `Rs = [(mul, l)]` or `Rs = [(mul, l, p)]`. In the
# three-element form `p` was `1` (even), `-1` (odd) or `0`, which meant *parity not tracked*: the network only knew
# about rotations. Today every irrep has a parity, so converting an old list forces one choice: what does `p = 0`
# become? There is no right answer, only a convention, because a network that ignored inversions never gave its
# features a parity. `tpconv_lite.rs_to_irreps` chooses $(-1)^l$, the parity of the spherical harmonics of that
# degree (`0e, 1o, 2e, ...`). That is exact for features built directly from scalars and spherical harmonics, such as
# the output of one convolution of scalar inputs with spherical-harmonic filters, and only for those: further down a
# rotation-only network, the $1 \otimes 1 \to 1$ product of two vectors is their cross product, a pseudovector `1e`
# under O(3), which the rule would label `1o` (a check below shows it). The choice is explicit (`p0="even"` or
# `p0="error"` change it; explicit `(mul, l, p)` entries are kept) and the function rejects malformed lists. This is
# the package's code:

# %%
from typing import Literal

ParityForP0 = Literal["sh", "even", "error"]

# %%
# Package code: tpconv_lite.irreps.rs_to_irreps
def rs_to_irreps(Rs: list[tuple[int, ...]], p0: ParityForP0 = "sh") -> o3.Irreps:
    """Convert an old-style ``Rs`` list to ``o3.Irreps``, keeping the order and the multiplicities.

    Args:
        Rs: list of ``(mul, l)`` or ``(mul, l, p)``, with integers ``mul >= 0``, ``l >= 0`` and ``p`` in {1, -1, 0}.
            ``(mul, l)`` is the same as ``(mul, l, 0)``.
        p0: what ``p = 0`` becomes, a convention: ``"sh"`` (``(-1)**l``, the default; exact only for features
            built directly from scalars and spherical harmonics), ``"even"`` (``+1``) or ``"error"``.

    Returns:
        The equivalent ``o3.Irreps`` (not simplified: ``[(1, 0), (1, 0)]`` gives ``1x0e+1x0e``).

    Example:
        >>> rs_to_irreps([(4, 0), (4, 1), (4, 2)])
        4x0e+4x1o+4x2e
        >>> rs_to_irreps([(1, 1, 1), (2, 0, -1)])
        1x1e+2x0o
    """
    if p0 not in ("sh", "even", "error"):
        raise ValueError(f"p0 must be 'sh', 'even' or 'error', got {p0!r}")
    if not isinstance(Rs, (list, tuple)):
        raise TypeError(f"Rs must be a list of (mul, l) or (mul, l, p) tuples, got {type(Rs).__name__}")
    entries = []
    for i, entry in enumerate(Rs):
        if not isinstance(entry, (list, tuple)) or len(entry) not in (2, 3):
            raise ValueError(f"Rs[{i}] must be a tuple (mul, l) or (mul, l, p), got {entry!r}")
        mul, l, p = (*entry, 0) if len(entry) == 2 else entry
        for name, value in (("mul", mul), ("l", l), ("p", p)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Rs[{i}] = {entry!r}: {name} must be an int, got {type(value).__name__}")
        if mul < 0 or l < 0:
            raise ValueError(f"Rs[{i}] = {entry!r}: mul and l must be >= 0")
        if p not in (1, -1, 0):
            raise ValueError(f"Rs[{i}] = {entry!r}: p must be 1, -1 or 0, got {p}")
        if p == 0:
            if p0 == "error":
                raise ValueError(f"Rs[{i}] = {entry!r} has no parity (p=0) and p0='error'")
            p = (-1) ** l if p0 == "sh" else 1
        entries.append((mul, (l, p)))
    return o3.Irreps(entries)


# %% [markdown]
# The lists of the 2019 tutorial, next to their modern spelling (the function above and the package's agree):

# %%
# NBVAL_CHECK_OUTPUT
seed_lists = {
    "input features (H, C one-hot)": [(2, 0)],
    "convolution output": [(4, 0), (4, 1), (4, 2)],
    "explicit parities": [(1, 0, 1), (1, 1, -1), (1, 1, 1)],
    "a pseudoscalar": [(3, 0, -1)],
}
print(f"{'what':32s} {'old Rs list':36s} new Irreps")
for what, Rs in seed_lists.items():
    new = rs_to_irreps(Rs)
    assert new == tpconv_lite.rs_to_irreps(Rs)
    print(f"{what:32s} {str(Rs):36s} {new}")

# %% [markdown]
# Where the convention breaks: in a rotation-only network, two `l = 1` features combine into a third by the cross
# product (chapter 3), and its Rs entry is `(1, 1)` like theirs, which the rule turns into `1o`. Under inversion the
# two vectors change sign and their cross product does not: it is a `1e`. The checker rejects the `1o` label and
# accepts `1e`; and O(3) has no `1o x 1o -> 1o` coupling at all (a tensor product asked for one gets no path and no
# weight), so a deep network converted by the rule loses every such path. Label those entries yourself.

# %%
# NBVAL_CHECK_OUTPUT
def cross_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.linalg.cross(a, b)


a, b = torch.randn(2, 5, 3, dtype=torch.float64)
print("rule:", rs_to_irreps([(1, 1)]), "| as 1o:", check_equivariance(cross_product, [a, b], ["1o", "1o"], "1o"))
print("as 1e:", check_equivariance(cross_product, [a, b], ["1o", "1o"], "1e"))
missing = o3.FullyConnectedTensorProduct("1o", "1o", "1o")
print("1o x 1o -> 1o: paths", len(missing.instructions), "| weights", missing.weight_numel)

# %% [markdown]
# Bad lists fail loudly, naming the entry at fault:

# %%
# NBVAL_CHECK_OUTPUT
for bad in [[(2, -1)], [(2, 0, 5)], [(2.0, 1)], [(1, 2, 3, 4)], [(1, 1)]]:
    try:
        rs_to_irreps(bad, p0="error") if bad == [(1, 1)] else rs_to_irreps(bad)
    except (ValueError, TypeError) as error:
        print(f"{str(bad):16s} -> {type(error).__name__}: {error}")

# %% [markdown]
# ## Benzene: a point cloud with features
#
# The 2019 tutorial's running example is benzene: six carbons on a hexagon, six hydrogens further out, all in the
# plane $z=0$. Each atom carries a one-hot feature, `[1, 0]` for hydrogen and `[0, 1]` for carbon: two scalars per
# atom, `Rs = [(2, 0)]`, today `"2x0e"`. `tpconv_lite.benzene()` returns positions (in Å), features and symbols.

# %%
# NBVAL_CHECK_OUTPUT
molecule = tpconv_lite.benzene()
pos, features = molecule.pos, molecule.x
irreps_features = o3.Irreps("2x0e")
print("pos:", tuple(pos.shape), pos.dtype, "| features:", tuple(features.shape), "labelled", irreps_features)
print("symbols:", "".join(molecule.symbols))
print("C-C bond: %.5f A, C-H bond: %.5f A" % ((pos[0] - pos[1]).norm(), (pos[0] - pos[6]).norm()))

# %% [markdown]
# The coordinates are built from the two ring radii of the tutorial's table, so the hexagon is exact; they agree with
# the table's five-decimal numbers to 1e-5 Å:

# %%
# NBVAL_CHECK_OUTPUT
table = torch.tensor(
    [[0.0, 1.40272, 0.0], [-1.21479, 0.70136, 0.0], [-1.21479, -0.70136, 0.0],
     [0.0, -1.40272, 0.0], [1.21479, -0.70136, 0.0], [1.21479, 0.70136, 0.0],
     [0.0, 2.49029, 0.0], [-2.15666, 1.24515, 0.0], [-2.15666, -1.24515, 0.0],
     [0.0, -2.49029, 0.0], [2.15666, -1.24515, 0.0], [2.15666, 1.24515, 0.0]],
    dtype=torch.float64,
)
print("max |difference| to the 2019 table below 1e-5 A:", bool((pos - table).abs().max() < 1e-5))

# %%
fig = plt.figure(figsize=(5, 4.5))
ax = fig.add_subplot(projection="3d")
colours = ["black" if s == "C" else "lightgrey" for s in molecule.symbols]
ax.scatter(*pos.T.numpy(), c=colours, s=[300 if s == "C" else 120 for s in molecule.symbols], edgecolors="k")
for k in range(6):  # C-C and C-H bonds
    for a, b in [(k, (k + 1) % 6), (k, k + 6)]:
        ax.plot(*torch.stack([pos[a], pos[b]]).T.numpy(), color="grey")
ax.set_xlabel("x (Å)")
ax.set_ylabel("y (Å)")
ax.set_zlabel("z (Å)")
ax.set_zlim(-1.5, 1.5)
ax.set_title("Benzene: carbon (black), hydrogen (grey)")
plt.show()

# %% [markdown]
# ## Rotating and inverting features
#
# Now the point of the labels. Take an orthogonal matrix $R$ (a rotation, or a rotation followed by inversion). The
# positions become $x R^\top$. A feature tensor labelled by irreps becomes $f\, D(R)^\top$, with
# $D(R)$ = `irreps.D_from_matrix(R)`, a block-diagonal matrix with one block per irrep. For benzene's `2x0e`
# features, $D(R)$ is the 2×2 identity: one-hot atom types do not care how the molecule is turned. A more interesting
# feature is the position of each atom relative to the ring's centre, a vector per atom, `1x1o`:

# %%
# NBVAL_CHECK_OUTPUT
def relative_positions(pos: torch.Tensor) -> torch.Tensor:
    """(N, 3) positions -> (N, 3) positions relative to their centroid, a 1x1o feature per atom."""
    return pos - pos.mean(dim=0, keepdim=True)


R = o3.rand_matrix(dtype=torch.float64)
for name, g in [("rotation", R), ("rotation + inversion", -R)]:
    moved = relative_positions(pos @ g.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    expected = relative_positions(pos) @ o3.Irreps("1x1o").D_from_matrix(g).T
    print(f"{name}: features move like 1o: {torch.allclose(moved, expected, atol=1e-6)}")

# %% [markdown]
# ### One checker for the whole book
#
# That cell is the pattern of every equivariance check in this book: transform the input, run the function; run the
# function, transform the output; compare. `tpconv_lite.testing.check_equivariance` does it for any function, with
# several random elements of O(3) (every second one includes the inversion) and random translations, in float64.
# Each input and output is labelled by its irreps, by `"cartesian_points"` (positions: rotated *and* translated), or by
# `None` (left alone, such as an edge list). It prints one stable line per output, fit for a checked notebook cell;
# the numbers are in `.details()`.

# %%
# NBVAL_CHECK_OUTPUT
print(check_equivariance(relative_positions, [pos], ["cartesian_points"], "1x1o"))

# %% [markdown]
# A checker is only worth something if it can fail. Label the same output as a pseudovector `1e`, or forget that
# positions are translated, and it says so:

# %%
# NBVAL_CHECK_OUTPUT
print("labelled 1e:", check_equivariance(relative_positions, [pos], ["cartesian_points"], "1x1e"))
print("raw positions labelled 1o:", check_equivariance(lambda p: p, [pos], ["cartesian_points"], "1x1o"))

# %% [markdown]
# The errors themselves vary in the last digits from machine to machine, so they go in an unchecked cell:

# %%
# NBVAL_IGNORE_OUTPUT
print(check_equivariance(relative_positions, [pos], ["cartesian_points"], "1x1o").details())
print(check_equivariance(relative_positions, [pos], ["cartesian_points"], "1x1e").details())

# %% [markdown]
# ### Getting float64 right
#
# Earlier, `D_from_matrix` agreed with $R$ only to {glue:text}`d_error:.0e`. That is a float32 error, and it would
# hide real bugs of the same size in a float64 check. The cause: e3nn computes its constants (rotation generators,
# Clebsch-Gordan coefficients) in torch's *default* dtype, float32 unless you change it. The cure is to build them
# while the default is float64, and the package has a small context manager for that:

# %%
from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor


# %%
# Package code: tpconv_lite.rotations.default_dtype
@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Set torch's default dtype inside a ``with`` block, and restore it after.

    e3nn computes its constants (Clebsch-Gordan coefficients, rotation generators) in the default dtype. A module
    built under the float32 default keeps float32-rounded constants even after ``.double()``, which limits any
    float64 check to about 1e-7. Build the modules of a float64 check inside ``with default_dtype(torch.float64):``.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# %%
# Package code: tpconv_lite.rotations.wigner_D
def wigner_D(irreps: o3.Irreps | str, rotation: Tensor) -> Tensor:
    """The matrix by which ``rotation`` (3, 3), proper or improper, acts on features of ``irreps``.

    Built in float64 (see :func:`default_dtype`): ``o3.Irreps.D_from_matrix`` under the float32 default is only good
    to about 3e-7, even for a float64 rotation.

    Returns:
        (irreps.dim, irreps.dim) tensor in float64.
    """
    with default_dtype(torch.float64):
        return o3.Irreps(irreps).D_from_matrix(rotation.to(torch.float64))


# %%
# NBVAL_CHECK_OUTPUT
error_default = (o3.Irrep("1o").D_from_matrix(R) - R).abs().max()
error_float64 = (wigner_D("1o", R) - R).abs().max()
print("D_from_matrix error above 1e-9:", bool(error_default > 1e-9), "| wigner_D error below 1e-14:", bool(error_float64 < 1e-14))
print("default dtype restored:", torch.get_default_dtype())

# %% [markdown]
# The same holds for every e3nn module with constants inside: a tensor product (chapter 3) built under the float32
# default keeps float32-rounded coefficients even after `.double()`. Every float64 check in this book therefore builds
# its modules inside `with default_dtype(torch.float64):`.

# %% [markdown]
# ### A rotation that maps benzene onto itself
#
# Rotating benzene by 60° about the $z$ axis sends carbon $k$ to carbon $k+1$ and hydrogen $k$ to hydrogen $k+1$:
# the molecule is unchanged, only the atom numbering moves. An equivariant feature must then be *permuted and rotated*:
# the feature of atom $k+1$ after the move equals $D(R)$ times the feature of atom $k$ before. Check it with the
# relative positions:

# %%
# NBVAL_CHECK_OUTPUT
angle = torch.tensor(torch.pi / 3, dtype=torch.float64)
R60 = o3.matrix_z(angle)
shift = torch.tensor([(k + 1) % 6 for k in range(6)] + [6 + (k + 1) % 6 for k in range(6)])
print("molecule maps onto itself:", torch.allclose((pos @ R60.T)[torch.argsort(shift)], pos, atol=1e-12))
f = relative_positions(pos)
print("feature of atom k+1 == D(R) feature of atom k:", torch.allclose(f[shift], f @ wigner_D("1o", R60).T, atol=1e-12))

# %% [markdown]
# ## Summary
#
# - An irrep $(l, p)$ has $2l+1$ components; rotations mix them through $D(R)$, inversion multiplies them by $p$.
#   `1o` is a vector, `1e` a pseudovector, `0o` a pseudoscalar.
# - `o3.Irreps("2x0e + 3x1o")` stacks irreps with multiplicities; features are `(N, irreps.dim)` tensors, sliced by
#   `irreps.slices()`, multiplicity-major inside a block.
# - The old `Rs = [(mul, l, p)]` lists carry the same information; `rs_to_irreps` converts them, turning the old
#   "no parity" `p = 0` into $(-1)^l$. That is a convention, exact only for features built directly from scalars and
#   spherical harmonics: a rotation-only network's cross product is a `1e`, which the rule labels `1o`.
# - Equivariance is checked numerically, in float64, with `tpconv_lite.testing.check_equivariance`, which can fail and
#   tells you when it does.
#
# Next, chapter 2 turns distances into features: radial bases.

# %% [markdown]
# ## Exercises
#
# **1.** The outer product $u v^\top$ of two vectors has 9 numbers. Which irreps are they? Write your answer as an
# `Irreps` string, then check it with `o3.FullTensorProduct("1o", "1o").irreps_out`. What changes if $u$ is a
# vector and $v$ a pseudovector?

# %% tags=["hide-cell"]
# NBVAL_CHECK_OUTPUT
# Solution 1: 9 = 1 + 3 + 5: the trace (a scalar), the antisymmetric part (the cross product, a pseudovector),
# and the symmetric traceless part (l = 2). Parities multiply: odd x odd = even, odd x even = odd.
print("1o x 1o =", o3.FullTensorProduct("1o", "1o").irreps_out)
print("1o x 1e =", o3.FullTensorProduct("1o", "1e").irreps_out)

# %% [markdown]
# **2.** Write a function `dipole(pos, charges)` returning $\sum_i q_i (x_i - \bar x)$ for a molecule, with
# $\bar x$ the centroid. Which irreps label its output? Check your answer with `check_equivariance`, giving benzene
# charges $-0.1$ on C and $+0.1$ on H. Why is the result zero, and does the check still mean something?

# %% tags=["hide-cell"]
# NBVAL_CHECK_OUTPUT
# Solution 2: the dipole is a vector that flips under inversion: 1x1o. Benzene's is zero by symmetry (the 60 degree
# rotation maps it to itself, and only the zero vector in the plane is unchanged by it), so the check compares
# zeros with zeros and proves little. A distorted molecule makes the check meaningful.
def dipole(pos: torch.Tensor, charges: torch.Tensor) -> torch.Tensor:
    return (charges[:, None] * (pos - pos.mean(0))).sum(0, keepdim=True)


charges = torch.tensor([-0.1] * 6 + [0.1] * 6, dtype=torch.float64)
print("benzene dipole is zero:", bool(dipole(pos, charges).abs().max() < 1e-12))
distorted = pos + 0.1 * torch.randn(pos.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
print(check_equivariance(dipole, [distorted, charges], ["cartesian_points", None], "1x1o"))

# %% [markdown]
# ## References
#
# Further reading: the e3nn paper {footcite:p}`geiger2022e3nn` for the library; Tensor Field Networks
# {footcite:p}`thomas2018tensor` and 3D steerable CNNs {footcite:p}`weiler2018steerable` for the idea of features
# labelled by irreps.
#
# ```{footbibliography}
# ```
