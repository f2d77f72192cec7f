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
# # 4. The benzene convolution
#
# The 2019 tutorial "Nuts and Bolts of e3nn" {footcite:p}`geiger2019e3nn` builds one operation on benzene: a
# convolution whose filter is a learned function of the distance times the spherical harmonics of the direction,
#
# $$
# \text{E(3)Convolution}_i = \sum_{j \in n_i} \rho(r_{ij})\, Y(\hat r_{ij}) \otimes I_j ,
# $$
#
# the operation of Tensor Field Networks {footcite:p}`thomas2018tensor`. Chapters 1 to 3 made the pieces: irreps,
# radial networks, spherical harmonics and tensor products. This chapter assembles them on the tutorial's benzene with
# the tutorial's settings, one step at a time, then meets the same computation as the package's `PointConvolution`,
# and finally asks what benzene's symmetry says about the output.

# %% [markdown]
# ```{admonition} Run this chapter
# :class: tip
# Locally: `make execute` in a clone of the repository, or open `tutorials/04_benzene_convolution.ipynb` in Jupyter.
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
from functools import partial

import e3nn
import matplotlib.pyplot as plt
import torch
from e3nn import o3

import tpconv_lite
from tpconv_lite.graph import radius_graph, scatter
from tpconv_lite.radial import RadialMLP
from tpconv_lite.testing import check_equivariance, default_dtype, wigner_D

try:
    from myst_nb import glue  # numbers quoted in the text are glued from the outputs of cells
except ImportError:  # e.g. in Colab, where there is no book to glue them into

    def glue(name: str, value: object, display: bool = True) -> None:
        if display:
            print(value)


try:  # the compiled PyTorch Geometric packages are optional: tpconv_lite.graph has a pure-torch backend
    import torch_cluster
    import torch_scatter
except (ImportError, OSError):
    torch_cluster = torch_scatter = None

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(0)
print(f"torch {torch.__version__}, e3nn {e3nn.__version__}, tpconv_lite {tpconv_lite.__version__}, device {device}")
print("torch_cluster and torch_scatter importable:", torch_cluster is not None)

# %% [markdown]
# ## Goals
#
# By the end of this chapter you can
# 1. compute $f'_i = \frac{1}{\sqrt{z}} \sum_{j} \rho(|r_{ij}|)\, Y(\hat r_{ij}) \otimes f_j$ by hand: radius graph,
#    edge vectors, spherical harmonics, radial weights, one tensor product per edge, scatter, normalisation;
# 2. avoid two traps of `torch_cluster.radius_graph`, and say why the book divides by a fixed $\sqrt{z}$ rather than
#    by each atom's neighbour count;
# 3. use `tpconv_lite.convolution.PointConvolution`, load weights into it, and check it is E(3)-equivariant;
# 4. predict from benzene's symmetry which output components must vanish, and see that they do;
# 5. translate the 2019 `Kernel` and `Convolution` into today's code.

# %% [markdown]
# ## The formula and the tutorial's settings
#
# In the book's notation an edge $j \to i$ carries a message from the neighbour $j$ (the source) to the centre $i$
# (the target), $r_{ij} = x_j - x_i$ points from the centre to the neighbour, and
#
# $$
# f'_i = \frac{1}{\sqrt{z}} \sum_{j \in n(i)} \rho(|r_{ij}|)\; Y\!\left(\frac{r_{ij}}{|r_{ij}|}\right) \otimes f_j ,
# \qquad n(i) = \{\, j \ne i : |r_{ij}| < r_\text{max} \,\}.
# $$
#
# $Y$ are the spherical harmonics of the direction, $\rho$ is a small network that turns the length into one weight
# per path of the tensor product $\otimes$, and $z$ is a fixed normaliser (more on it in step 6). The tutorial's
# settings, then and now:
#
# | what | 2019 (e3nn < 0.2) | here |
# |---|---|---|
# | input features (H, C one-hot) | `Rs_in = [(2, 0)]` | `"2x0e"` |
# | filter | `sh=None`: the kernel picks every allowed $l$ | `"0e + 1o + 2e"` (named explicitly) |
# | output | `Rs_out = [(4, 0), (4, 1), (4, 2)]` | `"4x0e + 4x1o + 4x2e"` |
# | radial basis | `CosineBasisModel`, `max_radius=3.0`, `number_of_basis=3` | `basis="seed_cosine"` (chapter 2) |
# | radial network | `h=100`, `L=2`, `act=Softplus(beta=5)` | `RadialMLP.tutorial_2019(out_dim)` |
#
# The filter holds degrees 0, 1 and 2 because those are the $l$ that can turn a scalar into a scalar, a vector and
# an $l=2$ feature: $0 \otimes l_\text{filter} \to l_\text{out}$ needs $l_\text{filter} = l_\text{out}$.

# %%
# NBVAL_CHECK_OUTPUT
irreps_in = tpconv_lite.rs_to_irreps([(2, 0)])
irreps_out = tpconv_lite.rs_to_irreps([(4, 0), (4, 1), (4, 2)])
irreps_sh = o3.Irreps.spherical_harmonics(lmax=2)
max_radius = 3.0

molecule = tpconv_lite.benzene(device=device)
pos, x = molecule.pos, molecule.x
num_atoms = pos.shape[0]
print("in:", irreps_in, "| filter:", irreps_sh, "| out:", irreps_out, f"({irreps_out.dim} numbers per atom)")
print("pos:", tuple(pos.shape), "| x:", tuple(x.shape), "| atoms:", "".join(molecule.symbols))

# %% [markdown]
# ## Step 1: who is a neighbour? The radius graph
#
# The 2019 `Convolution` had no neighbour list: it evaluated its kernel on all $N^2$ pairs of points (each atom
# with itself included) and let the radial function decide. Today a *radius graph* lists the pairs closer than
# $r_\text{max}$ as an `edge_index` of shape `(2, E)`: row 0 the sources $j$, row 1 the targets $i$. The usual tool
# is `torch_cluster.radius_graph` from PyTorch Geometric {footcite:p}`fey2019fast`; `tpconv_lite.graph.radius_graph`
# calls it when it is installed and has a pure-torch backend (a distance matrix) otherwise. The two list the same
# edges, though not in the same order, so compare them as sets of pairs:

# %%
# NBVAL_CHECK_OUTPUT
def edge_set(edge_index: torch.Tensor) -> set[tuple[int, int]]:
    """The edges of a (2, E) edge_index as a set of (source, target) pairs: order does not matter."""
    return set(map(tuple, edge_index.T.tolist()))


edge_index = radius_graph(pos, max_radius, backend="torch")  # pure torch, on any machine
print("edges:", edge_index.shape[1], "| first five (source, target):", edge_index.T[:5].tolist())

# %%
# NBVAL_IGNORE_OUTPUT
# the compiled backend, where installed (this cell's output depends on it; its asserts check the claims)
if torch_cluster is not None:
    from_pyg = torch_cluster.radius_graph(pos, max_radius)
    assert edge_set(from_pyg) == edge_set(edge_index)
    print("torch_cluster finds the same edges: True | in the same order:", torch.equal(from_pyg, edge_index))
else:
    print("torch_cluster is not installed: nothing to compare")

# %% [markdown]
# How many neighbours has each atom? Count the edges that arrive at it: a `scatter` (step 5) of ones.

# %%
# NBVAL_CHECK_OUTPUT
src, dst = edge_index
num_neighbors_per_atom = scatter(torch.ones_like(dst, dtype=pos.dtype), dst, dim_size=num_atoms)
print("neighbours of each carbon:", num_neighbors_per_atom[:6].int().tolist())
print("neighbours of each hydrogen:", num_neighbors_per_atom[6:].int().tolist())
print("mean:", edge_index.shape[1] / num_atoms)

# %%
distances = torch.cdist(pos, pos)  # (12, 12) Å; carbon k is atom k, its hydrogen atom 6 + k
for name, (a, b) in {"cc_ortho": (0, 1), "cc_meta": (0, 2), "cc_para": (0, 3), "ch": (0, 6), "ch_ortho": (0, 7),
                     "hh_ortho": (6, 7)}.items():
    glue(f"d_{name}", float(distances[a, b]), display=False)
glue("d_outside", float(distances[distances > max_radius].min()), display=False)
glue("n_carbon", int(num_neighbors_per_atom[0]), display=False)
glue("n_hydrogen", int(num_neighbors_per_atom[6]), display=False)
glue("n_edges", edge_index.shape[1], display=False)

# %% [markdown]
# A carbon sees its two ring neighbours ({glue:text}`d_cc_ortho:.2f` Å), the two next ones
# ({glue:text}`d_cc_meta:.2f` Å), the opposite carbon ({glue:text}`d_cc_para:.2f` Å), its own hydrogen
# ({glue:text}`d_ch:.2f` Å) and the two hydrogens of its neighbours ({glue:text}`d_ch_ortho:.2f` Å):
# {glue:text}`n_carbon`. A hydrogen sees its carbon, the two next carbons and the two next hydrogens
# ({glue:text}`d_hh_ortho:.2f` Å): {glue:text}`n_hydrogen`. Everything else is at least
# {glue:text}`d_outside:.2f` Å away.
#
# ### Two traps of `torch_cluster.radius_graph`
#
# Called directly, torch_cluster has two behaviours that silently change the graph. `tpconv_lite.graph` handles
# both, which is why the book always goes through it.
#
# 1. **A neighbour cap.** `max_num_neighbors` defaults to 32: an atom with more neighbours keeps 32 of them, and
#    which 32 depends on the order of the points in memory, not on the distance. A 12-atom molecule never hits the
#    cap; a protein with a 10 Å cutoff does. `tpconv_lite.graph.radius_graph` keeps every neighbour unless you ask
#    for a cap (and then keeps the nearest, in the pure-torch backend).
# 2. **An unsorted `batch`.** Several molecules are batched by concatenating their atoms and passing a `batch`
#    vector (molecule index of each atom). torch_cluster assumes that vector is sorted; if it is not, it returns
#    edges between different molecules without a warning. `tpconv_lite.graph` sorts, builds, and maps the indices
#    back.

# %%
# NBVAL_CHECK_OUTPUT
generator = torch.Generator().manual_seed(0)
cloud = torch.rand(60, 3, generator=generator, dtype=torch.float64).to(device)  # 60 points in a unit cube
print("60 points, radius 2.0 (everyone is everyone's neighbour):")
print("  tpconv_lite:", radius_graph(cloud, 2.0).shape[1], "edges = 60 x 59")

# %%
# NBVAL_IGNORE_OUTPUT
# the compiled backend, where installed (this cell's output depends on it; its asserts check the claims)
if torch_cluster is not None:
    capped = torch_cluster.radius_graph(cloud, 2.0)
    assert capped.shape[1] == 60 * 32
    print("torch_cluster, default cap:", capped.shape[1], "edges = 60 x 32")
    nearest = radius_graph(cloud, 2.0, max_num_neighbors=32, backend="torch")  # the pure backend keeps the nearest
    print("torch_cluster keeps the 32 nearest:", edge_set(capped) == edge_set(nearest))
else:
    print("torch_cluster is not installed: nothing to compare")

# %%
# NBVAL_CHECK_OUTPUT
# Two molecules, each in its own coordinates (so they overlap in space), their atoms listed in a shuffled order.
two = torch.cat([pos, pos + torch.tensor([0.5, 0.0, 0.0], dtype=pos.dtype, device=device)])
batch = torch.arange(2, device=device).repeat_interleave(num_atoms)
shuffle = torch.randperm(2 * num_atoms, generator=generator).to(device)
two, batch = two[shuffle], batch[shuffle]
ours = radius_graph(two, max_radius, batch)
print("two benzenes, unsorted batch:")
between = int((batch[ours[0]] != batch[ours[1]]).sum())
print("  tpconv_lite:", ours.shape[1], "edges = 2 x 78, between molecules:", between)

# %%
# NBVAL_IGNORE_OUTPUT
# the compiled backend, where installed (this cell's output depends on it; its asserts check the claims)
if torch_cluster is not None:
    theirs = torch_cluster.radius_graph(two, max_radius, batch)
    print("torch_cluster, unsorted batch: the same edges:", edge_set(theirs) == edge_set(ours),
          "| edges between molecules:", bool((batch[theirs[0]] != batch[theirs[1]]).any()))
else:
    print("torch_cluster is not installed: nothing to compare")

# %% [markdown]
# ## Step 2: edge vectors and spherical harmonics
#
# For every edge, the vector from the centre to the neighbour, $r_{ij} = x_j - x_i$, is `pos[src] - pos[dst]`.
# This is the sign of the 2019 code (`geometry[b] - geometry[a]` for output point `a`) and of e3nn's example
# models; e3nn's convolution guide happens to use the opposite one. Either works, as long as you pick one
# (exercise 1 shows what the choice changes). Six distances occur:

# %%
# NBVAL_CHECK_OUTPUT
edge_vec = pos[src] - pos[dst]  # (E, 3), r_ij from the centre i = dst to the neighbour j = src
edge_length = edge_vec.norm(dim=1)
lengths, counts = torch.unique(edge_length.round(decimals=2), return_counts=True)
print("edge_vec:", tuple(edge_vec.shape))
print("distance (Å) : edges  ", {f"{d:.2f}": int(c) for d, c in zip(lengths.tolist(), counts.tolist())})

# %% [markdown]
# The filter's angular part is $Y(\hat r_{ij})$ for $l = 0, 1, 2$: $1 + 3 + 5 = 9$ numbers per edge. With
# `normalization="component"` (chapter 3) each block has squared norm $2l+1$, so $Y_0 = 1$ and $Y_1 = \sqrt3\,\hat r$
# in e3nn's $(x, y, z)$ order:

# %%
# NBVAL_CHECK_OUTPUT
edge_sh = o3.spherical_harmonics(irreps_sh, edge_vec, normalize=True, normalization="component")  # (E, 9)
print("edge_sh:", tuple(edge_sh.shape), "labelled", irreps_sh)
print("Y_0 = 1:", torch.allclose(edge_sh[:, 0], torch.ones_like(edge_length)))
print("Y_1 = sqrt(3) r_hat:", torch.allclose(edge_sh[:, 1:4], 3**0.5 * edge_vec / edge_length[:, None]))
print("|Y_2|^2 = 5:", torch.allclose(edge_sh[:, 4:].pow(2).sum(1), torch.full_like(edge_length, 5.0)))

# %% [markdown]
# ## Step 3: the tensor product, and the radial weights it needs
#
# The message along an edge is a tensor product of the neighbour's features with the filter,
# `o3.FullyConnectedTensorProduct(irreps_in, irreps_sh, irreps_out)`. Its weights must depend on the edge length,
# so they cannot be parameters of the module: with `shared_weights=False` the module owns no weights and takes a
# `(E, tp.weight_numel)` tensor of them at every call, one row per edge. Build it first, since it knows how many
# weights it needs (float64 modules are built under a float64 default, as explained in chapter 1):

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    tp = o3.FullyConnectedTensorProduct(irreps_in, irreps_sh, irreps_out, shared_weights=False).to(device)
print(tp)
print("weights per edge:", tp.weight_numel, "| parameters of tp itself:", sum(p.numel() for p in tp.parameters()))
for ins in tp.instructions:
    ir1, ir2, ir_out = tp.irreps_in1[ins.i_in1], tp.irreps_in2[ins.i_in2], tp.irreps_out[ins.i_out]
    print(f"  path {ir1} x {ir2} -> {ir_out}: {ins.path_shape[0]} x {ins.path_shape[2]} weights")

# %% [markdown]
# Three paths of $2 \times 4$ weights: 24 numbers per edge. They are the $c$ of the tutorial's radial model
# $\rho_c(r_{ij}) = W_{ch}\, \sigma(W_{hb} B_b(r_{ij}))$, "unintuitively the number of paths". Chapter 2 built that
# network; `RadialMLP.tutorial_2019(24)` has the tutorial's settings (3 squared-cosine bumps up to 3.0 Å, two hidden
# layers of 100, softplus with $\beta = 5$):

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    radial = RadialMLP.tutorial_2019(tp.weight_numel).to(device)
edge_weights = radial(edge_length)  # (E, 24): R_c(|r_ij|), one row per edge
print("layer sizes:", radial.net.hs, "| basis:", radial.basis, "| edge weights:", tuple(edge_weights.shape))
same_length = (edge_length - edge_length[0]).abs() < 1e-12
print("edges of equal length get equal weights:", torch.allclose(edge_weights[same_length], edge_weights[0]))

# %% [markdown]
# The 2019 radial function has no cutoff: the last bump is centred on 3.0 Å, and beyond the bumps (4.5 Å) the
# network still answers, with the constant $\rho(\infty)$ = MLP(0), which is not zero since softplus(0) is not. The
# old all-pairs convolution therefore had no finite range, and our radius graph at 3.0 Å cuts a function that is
# not zero there. For benzene this never matters (no distance lies near 3.0 Å), but remember it for step 6.

# %%
# NBVAL_CHECK_OUTPUT
far = torch.tensor([2.99, 4.5, 5.0, 50.0], dtype=torch.float64, device=device)
weights_far = radial(far)
print("|R(2.99 Å)| > 0.1:", bool(weights_far[0].norm() > 0.1))
print("R(4.5) = R(5) = R(50), not zero:", torch.allclose(weights_far[1:], weights_far[1].expand(3, -1)),
      bool(weights_far[1].norm() > 0.1))

# %% [markdown]
# ## Step 4: one tensor product per edge
#
# Lift the neighbour's features to its edges with `x[src]`, and apply the tensor product to every edge at once,
# each with its own weights: `tp(x[src], edge_sh, edge_weights)` gives one message per edge, labelled `irreps_out`.

# %%
# NBVAL_CHECK_OUTPUT
messages = tp(x[src], edge_sh, edge_weights)  # (E, 36): R(|r_ij|) Y(r_ij_hat) (x) f_j
print("messages:", tuple(messages.shape), "labelled", irreps_out)

# %% [markdown]
# With scalar inputs the filter cannot do much: the $l$ block of a message is a number times $Y_l(\hat r_{ij})$.
# Each of the four `1o` channels of a message is therefore parallel to its edge, and each `2e` channel is a multiple
# of $Y_2$. Richer inputs (the vectors of a first convolution) let the product mix directions, once chapter 5 has
# given us the nonlinearities that make stacking layers worthwhile.

# %%
# NBVAL_CHECK_OUTPUT
vectors = messages[:, 4:16].reshape(-1, 4, 3)  # (E, 4 channels, xyz)
tensors = messages[:, 16:].reshape(-1, 4, 5)  # (E, 4 channels, 5 components)
r_hat = edge_vec / edge_length[:, None]
cross = torch.linalg.cross(vectors, r_hat[:, None].expand_as(vectors))
print("l=1 messages are parallel to r_ij:", bool(cross.abs().max() < 1e-12))
along_y2 = (tensors * edge_sh[:, None, 4:]).sum(-1, keepdim=True) / 5 * edge_sh[:, None, 4:]  # projection on Y_2
print("l=2 messages are multiples of Y_2(r_ij_hat):", torch.allclose(tensors, along_y2, atol=1e-12))

# %% [markdown]
# ## Step 5: sum the messages arriving at each atom
#
# A *scatter* adds the rows of `messages` that share a target: `out[i] = sum of messages[e] for dst[e] == i`. This
# is the "aggregate" step of message passing {footcite:p}`gilmer2017neural`. `torch_scatter.scatter` does it in a
# compiled kernel; `tpconv_lite.graph.scatter` calls it when present and `index_add_` otherwise. Same numbers (up to
# the order of the additions):

# %%
# NBVAL_CHECK_OUTPUT
summed = scatter(messages, dst, dim=0, dim_size=num_atoms, backend="torch")  # (N, 36)
print("summed:", tuple(summed.shape))

# %%
# NBVAL_IGNORE_OUTPUT
# the compiled backend, where installed (this cell's output depends on it; its asserts check the claims)
if torch_scatter is not None:
    compiled = torch_scatter.scatter(messages, dst, dim=0, dim_size=num_atoms)
    assert torch.allclose(compiled, summed)
    print("torch_scatter agrees: True")
else:
    print("torch_scatter is not installed: nothing to compare")

# %% [markdown]
# Pass `dim_size`: without it, the output has `dst.max() + 1` rows, one short when the last atom has no neighbour.
#
# ## Step 6: normalise by the number of neighbours
#
# A sum of $n$ messages grows with $n$: if they are roughly independent with second moment $m$, the sum has second
# moment $n\,m$. Two cures are common:
#
# - **per atom**, divide atom $i$'s sum by its own neighbour count $n_i$ (a mean, `scatter(..., reduce="mean")`,
#   as the DiffDock/EigenFold layer of chapter 8 does) or by $\sqrt{n_i}$;
# - **a constant**, divide every sum by $\sqrt{z}$ with $z$ the typical neighbour count of the data, as e3nn's
#   convolution guide and example networks do. For benzene $z =$ {glue:text}`n_edges` $/ 12 = 6.5$.
#
# The numbers for benzene (second moments, averaged over atoms and components):

# %%
# NBVAL_CHECK_OUTPUT
z = edge_index.shape[1] / num_atoms  # 6.5, the mean neighbour count
options = {
    "messages": messages,
    "sum": summed,
    "sum / sqrt(z)": summed / z**0.5,
    "sum / n_i (mean)": summed / num_neighbors_per_atom[:, None],
    "sum / sqrt(n_i)": summed / num_neighbors_per_atom[:, None].sqrt(),
}
print(f"{'':18s} {'carbons':>8s} {'hydrogens':>10s}")
for name, value in options.items():
    if name == "messages":
        carbons, hydrogens = value[dst < 6], value[dst >= 6]
    else:
        carbons, hydrogens = value[:6], value[6:]
    print(f"{name:18s} {carbons.pow(2).mean():8.2f} {hydrogens.pow(2).mean():10.2f}")
single = float(messages.pow(2).mean().detach())
ratios = [float(options[name].pow(2).mean().detach()) / single for name in ("sum / sqrt(z)", "sum / sqrt(n_i)")]
print("sum / sqrt(z) and sum / sqrt(n_i) within a factor 2 of one message:", all(0.5 < q < 2 for q in ratios))

# %% [markdown]
# Dividing by $\sqrt{z}$ or by $\sqrt{n_i}$ brings the sum back to the scale of a single message; the mean makes
# the second moment about $n_i$ times smaller still, as expected for roughly independent messages. (Everything is
# small here: one-hot features and the untrained 2019 radial network are not unit-scaled.) Scale does not decide
# between the two, though. A per-atom count is a step function of the positions: when a neighbour crosses
# $r_\text{max}$, $n_i$ changes by one and the normalised sum of all the other messages jumps with it, even when the
# radial function brings that neighbour's message smoothly to zero. A constant $z$ keeps the convolution a smooth
# function of the positions, which matters when forces or scores are its gradients. The package therefore divides
# by a fixed `num_neighbors`; we will watch the difference once we have the module. (With the 2019 radial function,
# which does not vanish at 3.0 Å, the convolution jumps at the cutoff whatever the normaliser.)
#
# Putting the six steps together, for benzene with the tutorial's settings:

# %%
# NBVAL_CHECK_OUTPUT
def convolve_by_hand(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Steps 1 to 6: f'_i = 1/sqrt(z) sum_j R(|r_ij|) Y(r_ij_hat) (x) f_j, with the tp and radial built above."""
    src, dst = radius_graph(pos, max_radius)
    edge_vec = pos[src] - pos[dst]
    edge_sh = o3.spherical_harmonics(irreps_sh, edge_vec, normalize=True, normalization="component")
    messages = tp(x[src], edge_sh, radial(edge_vec.norm(dim=1)))
    return scatter(messages, dst, dim=0, dim_size=x.shape[0]) / z**0.5


by_hand = convolve_by_hand(x, pos)
print("output:", tuple(by_hand.shape), "labelled", irreps_out, "| equals the steps above:",
      torch.allclose(by_hand, summed / z**0.5))

# %% [markdown]
# ## The package module: `PointConvolution`
#
# `tpconv_lite.convolution.PointConvolution` is the same computation as one module: it owns the tensor product and
# the radial network, builds the radius graph unless you pass `edge_index`, and divides by a fixed `num_neighbors`.
# Two details differ from the steps above. An edge of length zero (two atoms at the same place) has no direction;
# the module gives it the harmonics of the zero vector, $Y = (1, 0, \dots, 0)$, by normalising with a safe divisor,
# because `normalize=True` there gives correct values but gradients of about $10^{12}$; the book's one edge-geometry
# helper, `tpconv_lite.graph.edge_geometry`, does that for every layer. And it checks its inputs, with error messages
# that say what was expected. It needs:

# %%
from collections.abc import Callable

from torch import Tensor

from tpconv_lite.graph import edge_geometry


# %%
# Package code: tpconv_lite.convolution.PointConvolution
class PointConvolution(torch.nn.Module):
    """``f'_i = 1/sqrt(num_neighbors) * sum_j R(r_ij) Y(r_ij_hat) (x) f_j`` on a point cloud.

    Normalisation: the sum is divided by ``sqrt(num_neighbors)``, a fixed number (the typical neighbour count of
    the data), as in e3nn's examples, and not averaged over each atom's own neighbours. If the ``n`` messages of
    an atom are roughly independent with unit second moment, their sum has second moment ``n``, so the constant
    keeps outputs near unit scale. Dividing by each atom's own count ``n_i`` (or its square root) would adapt to
    each atom, but it jumps when a neighbour crosses ``max_radius`` (``sum / n`` becomes ``sum / (n + 1)``) even when
    the radial function brings that neighbour's message smoothly to zero; a constant keeps the convolution a smooth
    function of the positions.

    A zero-length edge (two atoms at the same place) has no direction: its spherical harmonics are taken at the
    zero vector, ``Y = (1, 0, ..., 0)`` (only ``l = 0`` survives, which is equivariant). Passing the zero vector to
    ``o3.spherical_harmonics(..., normalize=True)`` gives the same values but gradients of about 1e12, so the
    edge geometry comes from :func:`~tpconv_lite.graph.edge_geometry`, which normalises the directions with a safe
    divisor and evaluates the harmonics with ``normalize=False``.

    Precision: e3nn computes the Clebsch-Gordan coefficients of the tensor product in the default dtype, and
    ``.double()`` only casts them. For float64 accuracy (equivariance errors near 1e-14 rather than 1e-7) build the
    module while ``torch.get_default_dtype()`` is float64.

    Args:
        irreps_in: irreps of the input features ``f_j``, e.g. ``"2x0e"``.
        irreps_out: irreps of the output features; each must be reachable from ``irreps_in (x) irreps_sh``.
        irreps_sh: irreps of the filter's spherical harmonics (each ``l`` with parity ``(-1)^l``), or ``lmax``.
        max_radius: graph cutoff and end of the radial basis.
        num_neighbors: the typical number of neighbours, the normaliser above.
        number_of_basis: radial basis size.
        radial_hidden: width of the hidden layers of the radial network.
        radial_layers: number of hidden layers of the radial network.
        basis: radial basis (see :class:`~tpconv_lite.radial.RadialMLP`).
        cutoff: whether the basis goes to zero at ``max_radius``.
        act: activation of the radial network.

    Example:
        >>> conv = PointConvolution("2x0e", "4x0e + 4x1o + 4x2e", max_radius=2.0, num_neighbors=2.0)
        >>> conv(torch.randn(5, 2), torch.randn(5, 3)).shape
        torch.Size([5, 36])
    """

    def __init__(
        self,
        irreps_in: o3.Irreps | str,
        irreps_out: o3.Irreps | str,
        irreps_sh: o3.Irreps | str | int = "0e + 1o + 2e",
        *,
        max_radius: float,
        num_neighbors: float,
        number_of_basis: int = 10,
        radial_hidden: int = 100,
        radial_layers: int = 2,
        basis: str = "smooth_finite",
        cutoff: bool = True,
        act: Callable[[Tensor], Tensor] = torch.nn.functional.silu,
    ) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        if isinstance(irreps_sh, int):
            irreps_sh = o3.Irreps.spherical_harmonics(irreps_sh)
        self.irreps_sh = o3.Irreps(irreps_sh)
        if any(ir.p != (-1) ** ir.l for _, ir in self.irreps_sh):
            raise ValueError(f"irreps_sh must have parity (-1)^l for each l, like 0e + 1o + 2e; got {self.irreps_sh}")
        if not num_neighbors > 0:
            raise ValueError(f"num_neighbors must be positive, got {num_neighbors}")
        self.max_radius = float(max_radius)
        self.num_neighbors = float(num_neighbors)

        self.tp = o3.FullyConnectedTensorProduct(self.irreps_in, self.irreps_sh, self.irreps_out, shared_weights=False)
        reached = {ins.i_out for ins in self.tp.instructions}
        unreachable = [f"{mul}x{ir}" for i, (mul, ir) in enumerate(self.irreps_out) if i not in reached]
        if unreachable:
            raise ValueError(
                f"irreps_out {unreachable} cannot be produced from {self.irreps_in} (x) {self.irreps_sh}; "
                "they would always be zero"
            )
        self.radial = RadialMLP(self.tp.weight_numel, max_radius, number_of_basis, radial_hidden, radial_layers,
                                basis, cutoff, act)

    def forward(self, x: Tensor, pos: Tensor, edge_index: Tensor | None = None, batch: Tensor | None = None) -> Tensor:
        """Convolve.

        Args:
            x: (N, irreps_in.dim) node features.
            pos: (N, 3) positions, same dtype and device as ``x``.
            edge_index: (2, E) long, row 0 the neighbours ``j``, row 1 the centres ``i``; None builds the radius
                graph of ``pos`` with ``max_radius``.
            batch: (N,) graph index of each node, used only to build the graph (so only with ``edge_index=None``).

        Returns:
            (N, irreps_out.dim) node features; zero for nodes without neighbours.
        """
        self._check_inputs(x, pos, edge_index, batch)
        if edge_index is None:
            edge_index = radius_graph(pos, self.max_radius, batch)
        src, dst = edge_index  # messages go from the neighbour j = src to the centre i = dst
        _, edge_length, edge_sh = edge_geometry(pos, edge_index, self.irreps_sh)  # r_ij = pos_j - pos_i, guarded
        messages = self.tp(x[src], edge_sh, self.radial(edge_length))  # R(r_ij) Y(r_ij_hat) (x) f_j
        return scatter(messages, dst, dim=0, dim_size=x.shape[0]) / self.num_neighbors**0.5

    def _check_inputs(self, x: Tensor, pos: Tensor, edge_index: Tensor | None, batch: Tensor | None) -> None:
        """Raise a ValueError/TypeError naming what was expected when the inputs do not fit together."""
        if x.dim() != 2 or x.shape[1] != self.irreps_in.dim:
            raise ValueError(f"x must have shape (N, {self.irreps_in.dim}) for {self.irreps_in}, got {tuple(x.shape)}")
        if pos.shape != (x.shape[0], 3):
            raise ValueError(f"pos must have shape ({x.shape[0]}, 3) to match x, got {tuple(pos.shape)}")
        weight = next(self.parameters())
        for name, t in (("x", x), ("pos", pos)):
            if t.dtype != weight.dtype or t.device != weight.device:
                raise TypeError(
                    f"{name} is {t.dtype} on {t.device} but the module is {weight.dtype} on {weight.device}; "
                    "move one to the other (e.g. module.to(x))"
                )
        if edge_index is None:
            return
        if batch is not None:
            raise ValueError("batch is only used to build the graph; pass it with edge_index=None")
        if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.dtype != torch.long:
            raise ValueError(
                f"edge_index must be a (2, E) long tensor, got {edge_index.dtype} of shape {tuple(edge_index.shape)}"
            )
        if edge_index.device != x.device:
            raise ValueError(f"edge_index is on {edge_index.device} but x is on {x.device}")
        if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= x.shape[0]):
            raise ValueError(
                f"edge_index must hold node indices in [0, {x.shape[0]}), "
                f"got values from {int(edge_index.min())} to {int(edge_index.max())}"
            )


# %% [markdown]
# Build it with the tutorial's settings and $z = 6.5$. Its only parameters are the radial network's, so loading the
# `state_dict` of our hand-made `radial` makes the two computations identical:

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    conv = PointConvolution(
        irreps_in, irreps_out, irreps_sh, max_radius=max_radius, num_neighbors=z,
        number_of_basis=3, radial_hidden=100, radial_layers=2, basis="seed_cosine", cutoff=False,
        act=partial(torch.nn.functional.softplus, beta=5.0),
    ).to(device)
print("parameters:", [name for name, _ in conv.named_parameters()])
conv.radial.load_state_dict(radial.state_dict())
with torch.no_grad():
    out = conv(x, pos)
print("module == by hand:", torch.allclose(out, by_hand.detach(), atol=1e-12))

with default_dtype(torch.float64):  # the package's own class, with the same settings and weights
    package_conv = tpconv_lite.convolution.PointConvolution(
        irreps_in, irreps_out, irreps_sh, max_radius=max_radius, num_neighbors=z,
        number_of_basis=3, radial_hidden=100, radial_layers=2, basis="seed_cosine", cutoff=False,
        act=partial(torch.nn.functional.softplus, beta=5.0),
    ).to(device)
package_conv.load_state_dict(conv.state_dict())
with torch.no_grad():
    print("the chapter's class == the package's:", torch.equal(package_conv(x, pos), out))

# %% [markdown]
# The zero-length-edge guard, in three lines: put two atoms at the same place and differentiate. e3nn's
# `normalize=True` divides by `max(|r|, 1e-12)`, the module's safe divisor by 1:

# %%
# NBVAL_CHECK_OUTPUT
zero_edge = torch.zeros(1, 3, dtype=torch.float64, device=device, requires_grad=True)
e3nn_grad = torch.autograd.grad(o3.spherical_harmonics("1o", zero_edge, normalize=True).sum(), zero_edge)[0]
stacked = torch.zeros(2, 3, dtype=torch.float64, device=device, requires_grad=True)  # two atoms at one place
module_grad = torch.autograd.grad(conv(x[[0, 6]], stacked).pow(2).sum(), stacked)[0]
finite = bool(module_grad.isfinite().all() and module_grad.abs().max() < 10)
print(f"normalize=True: |gradient| about 1e{math.log10(e3nn_grad.abs().max()):.0f}",
      "| the module: finite, below 10:", finite)

# %% [markdown]
# ### Why a constant: crossing the cutoff
#
# Take a radial function that does vanish at the cutoff (the module's defaults: the `smooth_finite` basis and
# `silu`, chapter 2), and move one neighbour of an atom across $r_\text{max} = 2$ Å while another neighbour stays at
# 1.2 Å. The module gives the constant version; the per-atom mean averages the same messages over each atom's own
# edges, `scatter(messages, dst, reduce="mean")`, from the module's own tensor product and radial network. A `batch`
# vector runs all 201 positions in one call.

# %%
with default_dtype(torch.float64):
    smooth_conv = PointConvolution(irreps_in, irreps_out, irreps_sh, max_radius=2.0, num_neighbors=2.0).to(device)


def three_atoms(distance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A centre at the origin, a neighbour at 1.2 Å on x, one at `distance` on y: (3B, 2) x, (3B, 3) pos, batch."""
    frames = torch.zeros(len(distance), 3, 3, dtype=torch.float64, device=device)
    frames[:, 1, 0] = 1.2
    frames[:, 2, 1] = distance
    batch = torch.arange(len(distance), device=device).repeat_interleave(3)
    return x[[0, 6, 6]].repeat(len(distance), 1), frames.reshape(-1, 3), batch  # a carbon and two hydrogens


def per_atom_mean(
    conv: PointConvolution, x: torch.Tensor, pos: torch.Tensor, batch: torch.Tensor
) -> torch.Tensor:
    """(N, irreps_out.dim): each atom's messages averaged over its own edges, with the pieces of `conv`."""
    src, dst = radius_graph(pos, conv.max_radius, batch)
    edge_vec = pos[src] - pos[dst]
    edge_sh = o3.spherical_harmonics(conv.irreps_sh, edge_vec, normalize=True, normalization="component")
    messages = conv.tp(x[src], edge_sh, conv.radial(edge_vec.norm(dim=1)))
    return scatter(messages, dst, dim=0, dim_size=x.shape[0], reduce="mean")


distance = torch.linspace(1.5, 2.5, 201, dtype=torch.float64, device=device)
with torch.no_grad():
    xs, positions, batch = three_atoms(distance)
    centre_constant = smooth_conv(xs, positions, batch=batch)[0::3]  # the centre atom of every frame
    centre_mean = per_atom_mean(smooth_conv, xs, positions, batch)[0::3]

fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.plot(distance.cpu(), centre_constant.norm(dim=1).cpu(), label=r"sum / $\sqrt{z}$ (package)")
ax.plot(distance.cpu(), centre_mean.norm(dim=1).cpu(), label=r"sum / $n_i$ (per-atom mean)")
ax.axvline(2.0, color="grey", linestyle=":", label=r"$r_\mathrm{max}$")
ax.set_xlabel("distance of the moving neighbour (Å)")
ax.set_ylabel(r"$|f\,'_\mathrm{centre}|$ (feature units)")
ax.set_title("Crossing the cutoff: constant vs per-atom normalisation")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Just inside and just outside the cutoff the moving neighbour's message is already zero. The constant version does
# not move; the per-atom mean doubles, because the message it averages with that zero leaves, and its count drops
# from 2 to 1:

# %%
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    crossing = torch.tensor([2.0 - 1e-6, 2.0 + 1e-6], dtype=torch.float64, device=device)
    xs, positions, batch = three_atoms(crossing)
    inside, outside = smooth_conv(xs, positions, batch=batch)[0::3]
    mean_inside, mean_outside = per_atom_mean(smooth_conv, xs, positions, batch)[0::3]
print("constant: no jump at the cutoff:", torch.allclose(inside, outside, atol=1e-12))
print("per-atom mean: |after| / |before| = %.3f" % (mean_outside.norm() / mean_inside.norm()))

# %% [markdown]
# ## Equivariance
#
# Rotate or invert benzene and translate it: the output must turn with $D(R)$ of `4x0e + 4x1o + 4x2e`, and not notice
# the translation. The book's checker tries four random elements of O(3), two of them with inversion, each with a
# random translation. Check the module, the hand-made version, and a randomly distorted benzene (whose geometry has
# no symmetry that could hide an error):

# %%
# NBVAL_CHECK_OUTPUT
conv.eval()
distorted = pos + 0.1 * torch.randn(pos.shape, generator=generator, dtype=torch.float64).to(device)
kinds_in, kind_out = [str(irreps_in), "cartesian_points"], str(irreps_out)
reports = {
    "PointConvolution, benzene": check_equivariance(conv, [x, pos], kinds_in, kind_out),
    "PointConvolution, distorted": check_equivariance(conv, [x, distorted], kinds_in, kind_out),
    "by hand, benzene": check_equivariance(convolve_by_hand, [x, pos], kinds_in, kind_out),
}
for name, report in reports.items():
    print(f"{name:28s} {report}")

# %%
# NBVAL_IGNORE_OUTPUT
for name, report in reports.items():
    print(f"{name:28s} {report.details()}")

# %% [markdown]
# ## What benzene's symmetry allows
#
# Equivariance has a consequence you can see without training anything. Suppose an operation $g$ (a rotation, a
# mirror, the inversion) maps the molecule onto itself, carrying atom $k$ to atom $\pi(k)$ of the same element.
# Then $g$ applied to the input gives the same input, renumbered, and equivariance says
#
# $$
# f'_{\pi(k)} = D(g)\, f'_k .
# $$
#
# Benzene has many such operations (its point group is $D_{6h}$, 24 of them). The rotation by 60° about the ring's
# axis sends atom $k$ to atom $k+1$ of its ring; the output must permute *and* rotate:

# %%
# NBVAL_CHECK_OUTPUT
R60 = o3.matrix_z(torch.tensor(torch.pi / 3, dtype=torch.float64)).to(device)
next_atom = torch.tensor([(k + 1) % 6 for k in range(6)] + [6 + (k + 1) % 6 for k in range(6)], device=device)
print("R60 maps atom k to atom k+1:", torch.allclose(pos @ R60.T, pos[next_atom], atol=1e-12))
D60 = wigner_D(irreps_out, R60).to(device)
print("out[k+1] == D(R60) out[k]:", torch.allclose(out[next_atom], out @ D60.T, atol=1e-12))

# %% [markdown]
# When $g$ leaves atom $k$ where it is, $\pi(k) = k$ and the equation becomes a constraint: $f'_k = D(g) f'_k$.
# Only the components that $D(g)$ leaves unchanged can be non-zero; the others are *forced* to zero, whatever the
# weights. An equivariant network cannot output less symmetry than its input has
# {footcite:p}`smidt2021finding`. Three kinds of operation of benzene do this:
#
# - **The mirror plane of the ring** ($z \to -z$) leaves every atom in place. A `1o` feature's $z$ component flips
#   under it, so it must be zero at every atom. Of the five `2e` components, in e3nn's order
#   $xz,\ xy,\ y^2 - \tfrac12(x^2+z^2),\ yz,\ z^2 - x^2$ (up to constants), the two with one factor $z$ flip: $xz$
#   and $yz$ vanish.
# - **The $C_2$ axis and the vertical mirror through each atom.** The line from the ring's centre through atom $k$
#   is a 2-fold rotation axis, and the plane containing that line and the $z$ axis is a mirror. In the atom's own
#   frame ($y$ along the line, "radial"; $x$ tangential; $z$ normal to the ring) the $C_2$ rotation sends
#   $(x, y, z) \to (-x, y, -z)$ and the mirror $x \to -x$. Together with the ring's mirror they leave only the
#   radial `1o` component, and the two `2e` components that are even in $x$, $y$ and $z$ separately:
#   $y^2 - \tfrac12(x^2+z^2)$ and $z^2 - x^2$.
# - **The inversion centre** (every position $x \mapsto -x$) sends atom $k$ to atom $k+3$. For an irrep of parity $p$, $D(-I) = p$, so
#   atom $k+3$ carries the *opposite* `1o` features and the *same* `0e` and `2e` features as atom $k$.
#
# First, the components in e3nn's order, checked against their polynomials:

# %%
# NBVAL_CHECK_OUTPUT
u = torch.nn.functional.normalize(torch.randn(5, 3, generator=generator, dtype=torch.float64), dim=1)
ux, uy, uz = u.T
polynomials = torch.stack([ux * uz, ux * uy, uy**2 - (ux**2 + uz**2) / 2, uy * uz, uz**2 - ux**2], dim=1)
ratio = o3.spherical_harmonics(2, u, normalize=False, normalization="component") / polynomials
print("Y_2 = constants x (xz, xy, y^2-(x^2+z^2)/2, yz, z^2-x^2):", torch.allclose(ratio, ratio[0].expand(5, -1)))

# %% [markdown]
# Now the output of the convolution, in the global frame and in each atom's own frame (rotate atom $k$'s features by
# $-60k$° about $z$, which brings atom $k$ onto the $+y$ axis where atom 0 sits). "zero" means below $10^{-12}$ at
# all twelve atoms and four channels; "free" means not forced, and indeed non-zero:

# %%
# NBVAL_CHECK_OUTPUT
angles = torch.atan2(pos[:, 1], pos[:, 0]) - torch.pi / 2  # atom k of each ring sits at 90 + 60 k degrees
local = torch.stack([wigner_D(irreps_out, o3.matrix_z(-a).to(device)) @ f for a, f in zip(angles.cpu(), out)])
names = ["0e"] + [f"1o {c}" for c in "xyz"] + [f"2e {c}" for c in ["xz", "xy", "y²-(x²+z²)/2", "yz", "z²-x²"]]


def by_component(features: torch.Tensor) -> torch.Tensor:
    """(12, 36) -> (12, 4 channels, 9 components: 0e, 1o xyz, 2e), to look at one component over all channels."""
    scalars, vecs, tens = features[:, :4, None], features[:, 4:16].reshape(-1, 4, 3), features[:, 16:].reshape(-1, 4, 5)
    return torch.cat([scalars, vecs, tens], dim=2)


largest = torch.stack([by_component(f).abs().amax(dim=(0, 1)) for f in (out, local)])  # (2 frames, 9 components)
print(f"{'component':16s} {'global frame':>12s} {'own frame':>10s}")
for name, (in_global, in_own) in zip(names, largest.T.tolist()):
    print(f"{name:16s} {'zero' if in_global < 1e-12 else 'free':>12s} {'zero' if in_own < 1e-12 else 'free':>10s}")
print("each 'free' component exceeds 1e-3 somewhere:", bool(((largest < 1e-12) | (largest > 1e-3)).all()))

# %% [markdown]
# And the inversion centre pairs atom $k$ with atom $k+3$:

# %%
# NBVAL_CHECK_OUTPUT
opposite = torch.tensor([(k + 3) % 6 for k in range(6)] + [6 + (k + 3) % 6 for k in range(6)], device=device)
print("atoms k and k+3 are inverted images:", torch.allclose(pos[opposite], -pos, atol=1e-12))
print("l=1 opposite:", torch.allclose(out[opposite, 4:16], -out[:, 4:16], atol=1e-12))
print("l=0 and l=2 equal:", torch.allclose(out[opposite, :4], out[:, :4], atol=1e-12),
      torch.allclose(out[opposite, 16:], out[:, 16:], atol=1e-12))

# %% [markdown]
# The picture: two of the four `1o` output channels drawn as arrows at the atoms. Every arrow lies on the line
# through the ring's centre, the arrows turn with the ring, and opposite atoms carry opposite arrows. Whether an
# arrow points in or out, and how long it is, differs from channel to channel and from carbon to hydrogen: the
# symmetry fixes the directions, the (here random) weights fix the signs and sizes.

# %%
p = pos.cpu()
fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
for channel, ax in enumerate(axes):
    arrows = out[:, 4 + 3 * channel : 7 + 3 * channel].cpu()  # (x, y, z) of channel `channel` of 4x1o; z is 0
    for k in range(6):  # C-C and C-H bonds
        for a, b in [(k, (k + 1) % 6), (k, k + 6)]:
            ax.plot(*torch.stack([p[a], p[b]])[:, :2].T, color="lightgrey", zorder=1)
    colours = ["black" if s == "C" else "darkgrey" for s in molecule.symbols]
    ax.scatter(p[:, 0], p[:, 1], c=colours, s=[70 if s == "C" else 35 for s in molecule.symbols], zorder=2)
    scale = 0.6 / arrows.norm(dim=1).max()  # the longest arrow is drawn 0.6 Å long
    ax.quiver(p[:, 0], p[:, 1], scale * arrows[:, 0], scale * arrows[:, 1], color="tab:red",
              angles="xy", scale_units="xy", scale=1, width=0.01, zorder=3)
    ax.set_aspect("equal")
    ax.set_xlim(-3.3, 3.3)
    ax.set_ylim(-3.3, 3.3)
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    ax.set_title(f"channel {channel}")
fig.suptitle("l=1 outputs of the benzene convolution (longest arrow drawn 0.6 Å long)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## From `Kernel` and `Convolution` to `PointConvolution`
#
# The 2019 code split the same computation differently: a `Kernel` turned every relative vector into a full
# `(dim_out, dim_in)` matrix, and `Convolution` contracted those matrices with the features of all points. Today
# nobody builds the matrix: the tensor product applies it to the features directly, edge by edge.
#
# | 2019 (e3nn < 0.2) | e3nn 0.6 / tpconv_lite |
# |---|---|
# | `RadialModel = partial(CosineBasisModel, max_radius=3.0, number_of_basis=3, h=100, L=2, act=sp)` | `RadialMLP.tutorial_2019(tp.weight_numel)` |
# | `K = partial(Kernel, RadialModel=RadialModel, sh=sh)`: $Y$, the radial model and Clebsch-Gordan coefficients in one `(dim_out, dim_in)` matrix per pair | `o3.spherical_harmonics(irreps_sh, edge_vec, ...)` + `o3.FullyConnectedTensorProduct(irreps_in, irreps_sh, irreps_out, shared_weights=False)` fed with `radial(edge_length)` |
# | filter degrees chosen inside `Kernel` from `Rs_in` and `Rs_out` (every allowed $l$) | `irreps_sh = "0e + 1o + 2e"`, named by you |
# | `Convolution(K, Rs_in, Rs_out)` | `PointConvolution(irreps_in, irreps_out, irreps_sh, max_radius=..., num_neighbors=...)` |
# | all $N^2$ pairs, `geometry[b] - geometry[a]` | `radius_graph(pos, max_radius)`, `pos[src] - pos[dst]` |
# | `einsum("zabij,zbj->zai", k, features)` | `scatter(tp(x[src], edge_sh, weights), dst, dim_size=N)` |
# | `n_norm` argument, divides by `sqrt(n_norm)` | `num_neighbors`, divides by `sqrt(num_neighbors)` |
# | `features[batch, point, channel]`, equal-size molecules | `x[N, irreps.dim]` and a `batch` vector, any sizes |

# %% [markdown]
# ## Summary
#
# - The convolution $f'_i = \frac{1}{\sqrt z}\sum_j \rho(|r_{ij}|)\, Y(\hat r_{ij}) \otimes f_j$ is six steps: radius
#   graph, edge vectors `pos[src] - pos[dst]`, spherical harmonics, radial weights `(E, weight_numel)`, a tensor
#   product with `shared_weights=False`, and a scatter to the targets divided by a constant.
# - Go through `tpconv_lite.graph`: torch_cluster called directly caps neighbours at 32 and mixes molecules whose
#   `batch` vector is not sorted.
# - A fixed $\sqrt z$ keeps the convolution smooth when atoms cross the cutoff; a per-atom mean does not.
# - `PointConvolution` is the same computation in one module; it is E(3)-equivariant to float64 precision.
# - Symmetry forces outputs to zero: on benzene, every `1o` output is radial, the $xz$ and $yz$ parts of `2e`
#   vanish, and opposite atoms carry opposite vectors.
#
# Next, chapter 5 adds what a single convolution lacks: nonlinearities that respect the irreps, so that layers can
# be stacked.

# %% [markdown]
# ## Exercises
#
# **1.** e3nn's convolution guide writes `edge_vec = pos[edge_dst] - pos[edge_src]`, the opposite sign. Predict how
# `conv`'s output on benzene changes if you flip the sign of every edge vector (use $Y_l(-r) = (-1)^l Y_l(r)$), then
# check. Can you change the radial network's weights so that the flipped convolution gives the original output?

# %% tags=["hide-cell"]
# NBVAL_CHECK_OUTPUT
# Solution 1: with 2x0e inputs, output block l comes only from the path 0e x l -> l, which uses Y_l: the l=1
# block changes sign, l=0 and l=2 do not. Negating the 8 radial weights of the l=1 path (weights 8:16, in the order
# of tp.instructions) undoes the flip, so a trained network does not care which sign you choose.
def convolve_flipped(conv: PointConvolution, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    src, dst = radius_graph(pos, conv.max_radius)
    edge_vec = pos[dst] - pos[src]  # the other sign
    edge_sh = o3.spherical_harmonics(conv.irreps_sh, edge_vec, normalize=True, normalization="component")
    messages = conv.tp(x[src], edge_sh, conv.radial(edge_vec.norm(dim=1)))
    return scatter(messages, dst, dim=0, dim_size=x.shape[0]) / conv.num_neighbors**0.5


with torch.no_grad():
    flipped = convolve_flipped(conv, x, pos)
    print("l=1 flips:", torch.allclose(flipped[:, 4:16], -out[:, 4:16], atol=1e-12))
    print("l=0 unchanged:", torch.allclose(flipped[:, :4], out[:, :4]),
          "| l=2 unchanged:", torch.allclose(flipped[:, 16:], out[:, 16:]))
    last_layer = conv.radial.net[-1].weight  # (hidden, 24): the columns are the 24 path weights
    last_layer[:, 8:16] *= -1
    print("negated l=1 weights undo the flip:", torch.allclose(convolve_flipped(conv, x, pos), out, atol=1e-12))
    last_layer[:, 8:16] *= -1  # put them back

# %% [markdown]
# **2.** Make hydrogen 6 a different element: give it a third one-hot feature, so the input becomes `3x0e`. Which of
# benzene's symmetries survive (look at the line through atoms 0, 3, 6, 9)? Predict which zeros and pairings of the
# last section still hold, then build a `PointConvolution("3x0e", ...)` with the tutorial's settings and check.

# %% tags=["hide-cell"]
# NBVAL_CHECK_OUTPUT
# Solution 2: what survives is C2v: the ring's mirror plane (z -> -z), the C2 axis along the line through atoms
# 0, 3, 6, 9 (the y axis), and the mirror x -> -x that contains it. So: 1o z components are still 0 everywhere;
# atoms 0, 3, 6, 9 (on the axis) still have only a y (radial) 1o component; the mirror x -> -x pairs atoms 1 <-> 5,
# 2 <-> 4, 7 <-> 11, 8 <-> 10 with out[mirror] = D(mirror) out. The inversion centre and the 60 degree rotation are
# gone, so the k <-> k+3 pairing fails.
x3 = torch.cat([x, torch.zeros(num_atoms, 1, dtype=x.dtype, device=device)], dim=1)
x3[6] = torch.tensor([0.0, 0.0, 1.0])
with default_dtype(torch.float64):
    conv3 = PointConvolution(
        "3x0e", irreps_out, irreps_sh, max_radius=max_radius, num_neighbors=z, number_of_basis=3,
        radial_hidden=100, radial_layers=2, basis="seed_cosine", cutoff=False,
        act=partial(torch.nn.functional.softplus, beta=5.0),
    ).to(device)
with torch.no_grad():
    out3 = conv3(x3, pos)
vec3 = out3[:, 4:16].reshape(-1, 4, 3)
mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)).to(device)
mirror_image = torch.tensor([0, 5, 4, 3, 2, 1, 6, 11, 10, 9, 8, 7], device=device)
print("1o z still zero:", bool(vec3[..., 2].abs().max() < 1e-12))
print("atoms 0, 3, 6, 9: 1o along y only:", bool(vec3[[0, 3, 6, 9]][..., [0, 2]].abs().max() < 1e-12))
print("mirror pairs:", torch.allclose(out3[mirror_image], out3 @ wigner_D(irreps_out, mirror).to(device).T, atol=1e-12))
print("inversion pairing still holds:", torch.allclose(out3[opposite, 4:16], -out3[:, 4:16], atol=1e-12))

# %% [markdown]
# ## References
#
# Further reading: e3nn's convolution guide and the e3nn paper {footcite:p}`geiger2022e3nn` for today's API; Tensor
# Field Networks {footcite:p}`thomas2018tensor` and 3D steerable CNNs {footcite:p}`weiler2018steerable` for filters
# built from radial functions and spherical harmonics; {footcite:t}`smidt2021finding` for what symmetry lets an
# equivariant network output.
#
# ```{footbibliography}
# ```
