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
# # 6. Equivariant attention
#
# The convolution of chapter 4 weighs every neighbour by a function of the geometry alone: two neighbours at the same
# distance and in the same direction count the same, whatever they carry. *Attention* {footcite:p}`vaswani2017attention`
# lets the features decide too: each node asks a question (a *query*), each incoming edge offers an answer (a *key*),
# and the better they match, the more that edge's message (its *value*) counts. The SE(3)-Transformer
# {footcite:p}`fuchs2020se3` made this equivariant, and e3nn's transformer guide {footcite:p}`geiger2022e3nn`
# implements its formula (1) in a screenful of code. This chapter follows the guide step by step on a small random
# graph, meets the same computation as the package's `EquivariantAttention`, and then checks, one at a time, the
# details that make it well behaved: a square root for the scale, a cutoff weight for smoothness, a shifted softmax for
# large scores, and no NaN where a node has nothing to attend to.

# %% [markdown]
# ```{admonition} Run this chapter
# :class: tip
# Locally: `make execute` in a clone of the repository, or open `tutorials/06_attention.ipynb` in Jupyter.
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
import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace, soft_unit_step
from e3nn.nn import FullyConnectedNet
from torch import Tensor, nn

import tpconv_lite
from tpconv_lite.diagrams import box_diagram
from tpconv_lite.graph import edge_geometry, radius_graph, scatter
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
# ## Goals
#
# By the end of this chapter you can
# 1. compute equivariant attention by hand: queries per node, keys and values per edge from tensor products with the
#    spherical harmonics, a learned dot product to a scalar, a softmax over the incoming edges, a weighted sum;
# 2. use `tpconv_lite.graph.edge_softmax` and `tpconv_lite.attention.EquivariantAttention`, and check them against
#    the steps;
# 3. explain, and measure, why the values are weighted by $\sqrt{\alpha_{ij}}$ rather than $\alpha_{ij}$;
# 4. show that the output is continuous when a point crosses the cutoff, and what breaks it;
# 5. say why the softmax subtracts its largest score, and why a node without neighbours must give zeros, not NaN;
# 6. recognise the same softmax in the tensor-product convolution layer of chapter 8.

# %% [markdown]
# ## The formula
#
# Formula (1) of the SE(3)-Transformer paper is ordinary attention. On a graph, for the edges $j \to i$ (source $j$,
# target $i$) and with keys and values that depend on the edge, as in the paper's layer, it reads
#
# $$
# f'_i = \sum_{j \in n(i)} \alpha_{ij}\, v_{ij}, \qquad
# \alpha_{ij} = \frac{\exp(q_i^\top k_{ij})}{\sum_{j' \in n(i)} \exp(q_i^\top k_{ij'})} .
# $$
#
# The weights $\alpha_{ij}$ of each target are positive and sum to one: a *softmax* over its incoming edges. The
# query $q_i$ depends on the target's features only; the key $k_{ij}$ and the value $v_{ij}$ depend on the source's
# features *and* on the edge vector $r_{ij} = x_j - x_i$, through the same kind of filter as chapter 4's convolution:
# a tensor product with the spherical harmonics $Y(\hat r_{ij})$ whose weights are a learned function of $|r_{ij}|$.
# The score $q_i^\top k_{ij}$ must not change when the input is rotated, so it is a scalar, `0e`. Who is who:
#
# | SE(3)-Transformer | e3nn guide, `EquivariantAttention` | `TensorProductConvLayer` (chapter 8, EigenFold) |
# |---|---|---|
# | query $q_i = W_Q f_i$ | `h_q = o3.Linear(irreps_input, irreps_query)` | `h_q` |
# | key $k_{ij} = W_K(r_{ij}) f_j$ | `tp_k(f_j, Y(r_ij), fc_k(emb(\|r_ij\|)))` | `tp_k`, `fc_k` |
# | value $v_{ij} = W_V(r_{ij}) f_j$ | `tp_v(f_j, Y(r_ij), fc_v(emb(\|r_ij\|)))` | `tp`, `fc` (its messages) |
# | score $q_i^\top k_{ij}$ | `dot = o3.FullyConnectedTensorProduct(irreps_query, irreps_key, "0e")` | `dot` |
# | softmax $\alpha_{ij}$ | `edge_softmax(scores, edge_dst, N, weight=cutoff)` | `edge_softmax(scores, edge_dst, N)` |
# | output $\sum_j \alpha_{ij} v_{ij}$ | $\sum_j \sqrt{\alpha_{ij}}\, v_{ij}$ | $\sum_j \alpha_{ij} v_{ij}$ |
#
# Two differences from the paper are deliberate: the score is a *learned* bilinear form (`dot` has weights) rather
# than a plain inner product, and the output uses $\sqrt{\alpha_{ij}}$, for a reason measured below. The paper's layer
# also adds a self-interaction of node $i$'s own features; here that is left to the surrounding network (chapter 8's
# layer has a residual).

# %% [markdown]
# Who feeds whom, for one edge $j \to i$ (drawn by `tpconv_lite.diagrams.box_diagram`): the query comes from the
# target alone, the key and the value from the source and the edge, and only the score, a scalar, meets the query.

# %% tags=["hide-input"]
box_diagram(
    {
        "fi": (0, 2.2, "$f_i$ (target)"),
        "fj": (0, 0.4, "$f_j$ (source)"),
        "r": (0, -1.4, "$r_{ij} = x_j - x_i$"),
        "edge": (3.4, -1.4, "$Y(\\hat r_{ij})$, emb$(|r_{ij}|)$"),
        "q": (3.4, 2.2, "$q_i$ = h_q$(f_i)$"),
        "k": (6.8, 1.0, "$k_{ij}$ = tp_k$(f_j, Y; $fc_k$)$"),
        "v": (6.8, -0.6, "$v_{ij}$ = tp_v$(f_j, Y; $fc_v$)$"),
        "score": (10.2, 2.2, "dot$(q_i, k_{ij})$: 0e"),
        "alpha": (13.6, 2.2, "$\\alpha_{ij}$ = edge_softmax"),
        "out": (13.6, -0.6, "$f'_i = \\sum_j \\sqrt{\\alpha_{ij}}\\, v_{ij}$"),
    },
    [("fi", "q"), ("fj", "k"), ("fj", "v"), ("r", "edge"), ("edge", "k"), ("edge", "v"), ("q", "score"),
     ("k", "score"), ("score", "alpha"), ("alpha", "out"), ("v", "out")],
    width=2.9,
    colors={"q": "#d9ead3", "k": "#cfe2f3", "v": "#fce5cd"},
    title="Attention on the edges into node i",
)
plt.show()

# %% [markdown]
# ## Step by step, on a random graph
#
# The guide's example: irreps for the inputs, the queries, the keys and the outputs (the values share the outputs'
# irreps). They are arbitrary; only the scores are forced to be `0e`.

# %%
# NBVAL_CHECK_OUTPUT
irreps_input = o3.Irreps("10x0e + 5x1o")
irreps_query = o3.Irreps("11x0e + 4x1o")
irreps_key = o3.Irreps("12x0e + 3x1o")
irreps_output = o3.Irreps("14x0e + 6x1o")  # also the irreps of the values
for name, irreps in [("input", irreps_input), ("query", irreps_query), ("key", irreps_key), ("output", irreps_output)]:
    print(f"{name:7s} {str(irreps):14s} dim {irreps.dim}")

# %% [markdown]
# Three random graphs of 20 nodes each, batched into one: standard normal positions and features, and a radius graph
# with cutoff $r_\text{max} = 1.3$ that never links two graphs (chapter 4). Edges go from `edge_src` ($j$) to
# `edge_dst` ($i$), and $r_{ij}$ = `pos[edge_src] - pos[edge_dst]`.

# %%
# NBVAL_CHECK_OUTPUT
generator = torch.Generator().manual_seed(0)
num_graphs, num_nodes = 3, 20
pos = torch.randn(num_graphs * num_nodes, 3, generator=generator, dtype=torch.float64).to(device)
f = torch.randn(num_graphs * num_nodes, irreps_input.dim, generator=generator, dtype=torch.float64).to(device)
batch = (torch.arange(num_graphs * num_nodes) % num_graphs).to(device)

max_radius = 1.3
edge_index = radius_graph(pos, max_radius, batch)
edge_src, edge_dst = edge_index
edge_vec = pos[edge_src] - pos[edge_dst]  # r_ij, from the target i to the source j
edge_length = edge_vec.norm(dim=1)
n = f.shape[0]
receiving = torch.bincount(edge_dst, minlength=n) > 0
between_graphs = int((batch[edge_src] != batch[edge_dst]).sum())
print("nodes:", n, "| edges:", edge_index.shape[1], "| between graphs:", between_graphs)
print("nodes with no incoming edge:", int((~receiving).sum()))

# %% [markdown]
# A sparse graph: several nodes have no neighbour within 1.3, which will matter later.
#
# ### Queries, per node
#
# The query is an equivariant linear map of the target's own features (modules are built under the float64 default,
# as explained in chapter 1):

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    h_q = o3.Linear(irreps_input, irreps_query).to(device)
q = h_q(f)  # (N, irreps_query.dim)
print(h_q)
print("q:", tuple(q.shape))

# %% [markdown]
# `o3.Linear` is the equivariant linear map that later chapters use everywhere (chapter 8's `lin_in`, `lin_out`,
# `lin_self`). It connects each irrep of the input only to copies of *the same* irrep in the output, with one learned
# matrix per irrep type that mixes the copies ($11 \times 10$ for the `0e`, $4 \times 5$ for the `1o`, shared by the
# three components of each vector), and nothing between different irreps: a rotation acts the same way on every copy
# of an irrep, so such a matrix commutes with it, whereas a map from `0e` to `1o` would have to pick a direction.

# %%
# NBVAL_CHECK_OUTPUT
print("weights of h_q:", h_q.weight.numel(), "= 10 x 11 + 5 x 4:", h_q.weight.numel() == 10 * 11 + 5 * 4)
print(check_equivariance(h_q, [f], [irreps_input], irreps_query))
vectors_only = torch.zeros_like(f)
vectors_only[:, irreps_input.slices()[1]] = f[:, irreps_input.slices()[1]]
print("no path from vectors to scalars:", bool((h_q(vectors_only)[:, irreps_query.slices()[0]] == 0).all()))

# %% [markdown]
# ### Radial embedding and cutoff weight, per edge
#
# The keys and values need weights that depend on the edge length. As in chapter 2, the length is first expanded on a
# basis: ten `smooth_finite` bumps with `cutoff=True`, which all vanish, with every derivative, at $0$ and at
# $r_\text{max}$, multiplied by $\sqrt{10}$ so that the radial network sees inputs of about unit scale.
#
# The guide adds a second, separate function of the length: a *cutoff weight*
# $w_{ij} = u\big(10\,(1 - |r_{ij}|/r_\text{max})\big)$, with e3nn's `soft_unit_step` $u(x) = e^{-1/x}$ for $x > 0$
# and $0$ otherwise. It lies between 0 and 1, reaches 0 at $r_\text{max}$ with every derivative, and will multiply the
# exponentials of the softmax. Both are later additions: the first version of the guide, the one this chapter's
# source reproduces, had no cutoff weight and passed `cutoff=False`, whose last bump is centred *on* $r_\text{max}$.

# %%
# NBVAL_CHECK_OUTPUT
number_of_basis = 10
edge_length_embedded = soft_one_hot_linspace(
    edge_length, 0.0, max_radius, number_of_basis, basis="smooth_finite", cutoff=True
).mul(number_of_basis**0.5)  # (E, 10)
edge_weight_cutoff = soft_unit_step(10 * (1 - edge_length / max_radius))  # (E,)
print("embedding:", tuple(edge_length_embedded.shape), "| cutoff weight:", tuple(edge_weight_cutoff.shape))

ends = torch.tensor([0.0, max_radius, 2 * max_radius], dtype=torch.float64)
embedding_at_ends = soft_one_hot_linspace(ends, 0.0, max_radius, number_of_basis, basis="smooth_finite", cutoff=True)
print("embedding is zero at 0, r_max and beyond:", bool((embedding_at_ends == 0).all()))
without_cutoff = soft_one_hot_linspace(ends, 0.0, max_radius, number_of_basis, basis="smooth_finite", cutoff=False)
print("with cutoff=False it is not zero at r_max:", bool(without_cutoff[1].abs().max() > 0.5))
weight_at_ends = soft_unit_step(10 * (1 - ends / max_radius))
print("cutoff weight at 0, r_max, 2 r_max:", [round(w, 3) for w in weight_at_ends.tolist()])
print("cutoff weights of the edges in (0, 1):", bool(((edge_weight_cutoff > 0) & (edge_weight_cutoff < 1)).all()))

# %% [markdown]
# ### Spherical harmonics, keys and values, per edge
#
# The direction of each edge enters through its spherical harmonics up to $l = 3$ (`component` normalisation, chapter
# 3). A key is a tensor product of the source's features with them, `tp_k`, whose weights come per edge from a small
# radial network `fc_k` (10 inputs, 16 hidden neurons, `silu`, no biases); the values are built the same way by
# `tp_v` and `fc_v`. These are $W_K(r_{ij})$ and $W_V(r_{ij})$ of the paper.

# %%
# NBVAL_CHECK_OUTPUT
irreps_sh = o3.Irreps.spherical_harmonics(3)
edge_sh = o3.spherical_harmonics(irreps_sh, edge_vec, normalize=True, normalization="component")  # (E, 16)

with default_dtype(torch.float64):
    tp_k = o3.FullyConnectedTensorProduct(irreps_input, irreps_sh, irreps_key, shared_weights=False).to(device)
    fc_k = FullyConnectedNet([number_of_basis, 16, tp_k.weight_numel], act=nn.functional.silu).to(device)
    tp_v = o3.FullyConnectedTensorProduct(irreps_input, irreps_sh, irreps_output, shared_weights=False).to(device)
    fc_v = FullyConnectedNet([number_of_basis, 16, tp_v.weight_numel], act=nn.functional.silu).to(device)

k = tp_k(f[edge_src], edge_sh, fc_k(edge_length_embedded))  # (E, irreps_key.dim)
v = tp_v(f[edge_src], edge_sh, fc_v(edge_length_embedded))  # (E, irreps_output.dim)
print("sh:", irreps_sh, "| k:", tuple(k.shape), "| v:", tuple(v.shape))
print("weights per edge: tp_k", tp_k.weight_numel, "| tp_v", tp_v.weight_numel)

# %% [markdown]
# ### The score: a learned dot product to `0e`
#
# `dot` is a fully connected tensor product of a query and a key with a single `0e` output: every pair of equal
# irreps (`0e` with `0e`, `1o` with `1o`) contributes through its invariant path, each with a learned weight. The
# paper's plain inner product $q_i^\top k_{ij}$ is one fixed choice of these weights (queries and keys with the same
# irreps, each channel paired with itself only).

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    dot = o3.FullyConnectedTensorProduct(irreps_query, irreps_key, "0e").to(device)
scores = dot(q[edge_dst], k)  # (E, 1), one scalar per edge
print(dot)
print("scores:", tuple(scores.shape), "| weights of dot:", dot.weight.numel(), "= 11 x 12 + 4 x 3")

# %% [markdown]
# ### Softmax over the incoming edges, and the output
#
# The guide's softmax, written out: the exponential of each score, multiplied by the cutoff weight; the denominator
# $z_i$ is a scatter-sum of the exponentials onto the targets; each exponential divided by its target's $z_i$ gives
# $\alpha_{ij}$. The output sums the values with weights $\sqrt{\alpha_{ij}}$:

# %%
# NBVAL_CHECK_OUTPUT
exp = edge_weight_cutoff[:, None] * scores.exp()  # (E, 1), the numerators
z = scatter(exp, edge_dst, dim=0, dim_size=n)  # (N, 1), the denominators
alpha = exp / z[edge_dst]  # (E, 1)
f_out = scatter(alpha.sqrt() * v, edge_dst, dim=0, dim_size=n)  # (N, irreps_output.dim)

alpha_sums = scatter(alpha, edge_dst, dim=0, dim_size=n)
print("alpha:", tuple(alpha.shape), "| f_out:", tuple(f_out.shape), "labelled", irreps_output)
sums_to_one = torch.allclose(alpha_sums[receiving], torch.ones_like(alpha_sums[receiving]))
print("alpha sums to 1 at every receiving node:", sums_to_one)
print("nodes with no incoming edge get zeros:", bool((f_out[~receiving] == 0).all()))

# %% [markdown]
# That is the whole layer. Written this way it has three weak spots, which the package's version removes and the rest
# of the chapter demonstrates: `scores.exp()` overflows for large scores; a node whose incoming edges all have cutoff
# weight 0 divides 0 by 0; and the square root has an infinite derivative at $\alpha_{ij} = 0$.

# %% [markdown]
# ## The package's pieces
#
# ### `edge_softmax`
#
# The softmax of each target's incoming scores is unchanged when one constant is subtracted from all of them, so the
# package subtracts each target's *largest* score first (a scatter-max). Every exponential is then at most 1, and
# nothing can overflow. The subtracted constant is detached: the softmax does not depend on it, so its gradient is
# zero anyway. A target whose exponentials all vanish (every edge at the cutoff) gets a denominator of 1 instead of 0,
# hence zero weights (today's guide does the same with `z[z == 0] = 1`). The code needs `scatter` and `Tensor`,
# imported above.

# %%
# Package code: tpconv_lite.graph.edge_softmax
def edge_softmax(logits: Tensor, index: Tensor, num_nodes: int, weight: Tensor | None = None) -> Tensor:
    """Softmax of the edge logits over the incoming edges of each target node.

    The largest logit of each target is subtracted first (a constant shift, which leaves the softmax unchanged), so
    every exponential is at most 1 and nothing overflows. Only edges with a positive ``weight`` count for that
    maximum: a cut-off edge with a large logit would otherwise push the live exponentials into underflow. The shift
    is detached: its gradient is zero anyway.

    Args:
        logits: (E, ...) one score (or one per head, channel, ...) per edge.
        index: (E,) long target node of each edge (``edge_index[1]``).
        num_nodes: number of target nodes, > ``index.max()``. Nodes with no incoming edge simply get no weight.
        weight: optional (E,) non-negative factor multiplying each exponential, e.g. a smooth cutoff of the edge
            length. A node whose exponentials are all zero gets zero weights (not 0 / 0).

    Returns:
        (E, ...) weights ``alpha``, summing to 1 over the incoming edges of each target (where ``weight`` leaves
        at least one non-zero exponential).

    Example:
        >>> edge_softmax(torch.tensor([0.0, 0.0, 1000.0]), torch.tensor([0, 0, 2]), num_nodes=3)
        tensor([0.5000, 0.5000, 1.0000])
    """
    if logits.dim() == 0 or logits.shape[0] != index.shape[0]:
        raise ValueError(
            f"logits must have one row per edge: expected shape ({index.shape[0]}, ...) to match index, "
            f"got {tuple(logits.shape)}"
        )
    live = logits.detach()
    if weight is not None:
        if weight.shape != (logits.shape[0],):
            raise ValueError(f"weight must have shape ({logits.shape[0]},), one per edge, got {tuple(weight.shape)}")
        weight = weight.view(-1, *[1] * (logits.dim() - 1))
        live = live.masked_fill(weight <= 0, float("-inf"))  # a cut-off edge must not set the shift
    largest = scatter(live, index, dim=0, dim_size=num_nodes, reduce="max")
    largest = torch.where(torch.isfinite(largest), largest, torch.zeros_like(largest))  # every edge cut off
    shifted = logits - largest[index]
    if weight is not None:  # cut-off edges: exp(0) * 0 = 0, never exp(large) * 0 = inf * 0
        shifted = shifted.masked_fill(weight <= 0, 0.0)
    exp = shifted.exp() if weight is None else shifted.exp() * weight
    total = scatter(exp, index, dim=0, dim_size=num_nodes)
    total = torch.where(total > 0, total, torch.ones_like(total))  # all exponentials cut off: 0 / 1, not 0 / 0
    return exp / total[index]


# %% [markdown]
# On our graph it gives the weights of the step-by-step softmax, and so does the package's function:

# %%
# NBVAL_CHECK_OUTPUT
alpha_package = edge_softmax(scores, edge_dst, n, weight=edge_weight_cutoff)
print("edge_softmax == step-by-step alpha:", torch.allclose(alpha_package, alpha, rtol=1e-12, atol=1e-15))
print("the chapter's == the package's:",
      torch.equal(alpha_package, tpconv_lite.edge_softmax(scores, edge_dst, n, weight=edge_weight_cutoff)))

# %% [markdown]
# ### A square root with a finite gradient
#
# $\frac{d}{d\alpha}\sqrt{\alpha} = \frac{1}{2\sqrt\alpha}$ is infinite at $\alpha = 0$, and an edge whose cutoff
# weight is exactly 0 has $\alpha_{ij} = 0$: autograd multiplies that infinity by zeros further back and produces
# NaN. The package's square root returns 0 with gradient 0 there. (The inner `where` keeps the discarded branch
# finite too, because `torch.where` sends gradients through both branches.) Today's guide writes `alpha.relu().sqrt()`
# for the same purpose: the backward pass of ReLU returns 0 wherever its input is not positive, infinity or not.

# %%
# Package code: tpconv_lite.attention._sqrt_or_zero
def _sqrt_or_zero(x: Tensor) -> Tensor:
    """``sqrt(x)`` for ``x >= 0``, with gradient 0 instead of infinity where ``x == 0``."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


# %%
# NBVAL_CHECK_OUTPUT
a = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64, requires_grad=True)
a.sqrt().sum().backward()
print("torch.sqrt:    gradient", a.grad.tolist())
a.grad = None
_sqrt_or_zero(a).sum().backward()
print("_sqrt_or_zero: gradient", a.grad.tolist(), "| values equal:", torch.equal(_sqrt_or_zero(a), a.sqrt()))
a.grad = None
a.relu().sqrt().sum().backward()
print("relu, sqrt:    gradient", a.grad.tolist())

# %% [markdown]
# ### `EquivariantAttention`
#
# The layer holds the six modules built above under the same names, and its `forward` is the step-by-step
# computation with the two functions above in place of the plain softmax and square root. It also needs `math`,
# `soft_one_hot_linspace`, `soft_unit_step`, `FullyConnectedNet` and `nn`, imported at the top.

# %%
# Package code: tpconv_lite.attention.EquivariantAttention
class EquivariantAttention(nn.Module):
    """SE(3)-Transformer attention on a radius graph, as in e3nn's transformer guide.

    For an edge ``j -> i`` with vector ``r_ij = pos[j] - pos[i]``:

    - query ``q_i = h_q(f_i)`` (an equivariant linear map of the target's features);
    - key ``k_ij = tp_k(f_j, Y(r_ij), fc_k(|r_ij|))`` and value ``v_ij = tp_v(f_j, Y(r_ij), fc_v(|r_ij|))``:
      tensor products of the source's features with the spherical harmonics of the edge, weighted by radial MLPs;
    - logit ``dot(q_i, k_ij)``: a learned invariant (``0e``) bilinear form;
    - ``alpha_ij``: :func:`edge_softmax` of the logits, each exponential multiplied by the smooth cutoff
      ``soft_unit_step(10 (1 - |r_ij| / max_radius))``;
    - output ``f'_i = sum_j sqrt(alpha_ij) v_ij`` (the square root keeps the output at unit scale).

    The radial embedding and the cutoff both go to zero at ``max_radius`` and the radial MLPs have no biases, so an
    edge reaching the cutoff contributes nothing: the output is continuous as points cross ``max_radius``.

    Args:
        irreps_input: irreps of the node features ``f``.
        irreps_query: irreps of the queries (and the first input of ``dot``).
        irreps_key: irreps of the keys.
        irreps_output: irreps of the values and of the output.
        max_radius: cutoff radius of the graph.
        lmax: largest degree of the edge spherical harmonics.
        number_of_basis: size of the radial embedding.
        radial_neurons: hidden width of the radial MLPs.

    Example:
        >>> att = EquivariantAttention("4x0e + 2x1o", "4x0e + 1x1o", "4x0e + 1x1o", "3x0e + 2x1o", max_radius=1.5)
        >>> pos = torch.randn(5, 3)
        >>> edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])
        >>> att(torch.randn(5, 10), pos, edge_index).shape
        torch.Size([5, 9])
    """

    def __init__(
        self,
        irreps_input: o3.Irreps | str,
        irreps_query: o3.Irreps | str,
        irreps_key: o3.Irreps | str,
        irreps_output: o3.Irreps | str,
        max_radius: float,
        lmax: int = 3,
        number_of_basis: int = 10,
        radial_neurons: int = 16,
    ) -> None:
        super().__init__()
        if not max_radius > 0:
            raise ValueError(f"max_radius must be positive, got {max_radius}")
        self.irreps_input = o3.Irreps(irreps_input)
        self.irreps_output = o3.Irreps(irreps_output)
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.max_radius = float(max_radius)
        self.number_of_basis = number_of_basis

        self.h_q = o3.Linear(self.irreps_input, irreps_query)
        self.tp_k = o3.FullyConnectedTensorProduct(self.irreps_input, self.irreps_sh, irreps_key, shared_weights=False)
        self.fc_k = FullyConnectedNet([number_of_basis, radial_neurons, self.tp_k.weight_numel], act=nn.functional.silu)
        self.tp_v = o3.FullyConnectedTensorProduct(
            self.irreps_input, self.irreps_sh, self.irreps_output, shared_weights=False
        )
        self.fc_v = FullyConnectedNet([number_of_basis, radial_neurons, self.tp_v.weight_numel], act=nn.functional.silu)
        self.dot = o3.FullyConnectedTensorProduct(irreps_query, irreps_key, "0e")

    def forward(self, features: Tensor, pos: Tensor, edge_index: Tensor) -> Tensor:
        """Attend from every node to its incoming edges.

        Args:
            features: (N, irreps_input.dim) node features.
            pos: (N, 3) positions.
            edge_index: (2, E) long, row 0 sources ``j``, row 1 targets ``i`` (e.g. from ``radius_graph``).

        Returns:
            (N, irreps_output.dim); zero for nodes without incoming edges.
        """
        n = features.shape[0]
        if features.dim() != 2 or features.shape[1] != self.irreps_input.dim:
            raise ValueError(
                f"features must have shape (N, {self.irreps_input.dim}) for {self.irreps_input}, "
                f"got {tuple(features.shape)}"
            )
        if pos.shape != (n, 3):
            raise ValueError(f"pos must have shape ({n}, 3), one point per node, got {tuple(pos.shape)}")
        if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.dtype != torch.long:
            raise ValueError(
                f"edge_index must be a (2, E) long tensor, got {edge_index.dtype} of shape {tuple(edge_index.shape)}"
            )
        alpha, v = self.weights_and_values(features, pos, edge_index)
        return scatter(_sqrt_or_zero(alpha) * v, edge_index[1], dim=0, dim_size=n)

    def weights_and_values(
        self, features: Tensor, pos: Tensor, edge_index: Tensor, cutoff_weight: bool = True
    ) -> tuple[Tensor, Tensor]:
        """The attention weights and the values of every edge, before the weighted sum that ends ``forward``.

        Args:
            features, pos, edge_index: as in ``forward`` (not checked again here).
            cutoff_weight: multiply each exponential by the smooth cutoff; False leaves it out (an experiment of
                chapter 6: the output then jumps when a point crosses ``max_radius``).

        Returns:
            ``alpha`` (E, 1), summing to 1 over the incoming edges of each target, and the values
            ``v`` (E, irreps_output.dim).
        """
        edge_src, edge_dst = edge_index
        edge_length_embedded, edge_weight_cutoff, edge_sh = self.edge_inputs(pos, edge_index)
        k = self.tp_k(features[edge_src], edge_sh, self.fc_k(edge_length_embedded))
        v = self.tp_v(features[edge_src], edge_sh, self.fc_v(edge_length_embedded))
        weight = edge_weight_cutoff if cutoff_weight else None
        alpha = edge_softmax(self.dot(self.h_q(features)[edge_dst], k), edge_dst, features.shape[0], weight=weight)
        return alpha, v

    def edge_inputs(self, pos: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """What the layer computes from the geometry of each edge ``j -> i``, with ``r_ij = pos[j] - pos[i]``.

        Returns:
            ``edge_length_embedded`` (E, number_of_basis), the smooth radial basis of ``|r_ij|`` scaled by
            ``sqrt(number_of_basis)``; ``edge_weight_cutoff`` (E,), which falls smoothly to 0 at ``max_radius``; and
            ``edge_sh`` (E, irreps_sh.dim), the spherical harmonics of ``r_ij`` (from
            :func:`~tpconv_lite.graph.edge_geometry`, which keeps the gradient finite at a zero-length edge).
        """
        _, edge_length, edge_sh = edge_geometry(pos, edge_index, self.irreps_sh)
        edge_length_embedded = soft_one_hot_linspace(
            edge_length, 0.0, self.max_radius, self.number_of_basis, basis="smooth_finite", cutoff=True
        ).mul(math.sqrt(self.number_of_basis))
        edge_weight_cutoff = soft_unit_step(10 * (1 - edge_length / self.max_radius))
        return edge_length_embedded, edge_weight_cutoff, edge_sh


# %% [markdown]
# Build it with the guide's settings and load the weights of the six step-by-step modules into it: a `ModuleDict`
# with the same names has the same `state_dict` keys, and a strict load would fail on any mismatch. Same weights, same
# output; and the package's class, given the same `state_dict`, agrees to the last bit:

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    attention = EquivariantAttention(irreps_input, irreps_query, irreps_key, irreps_output, max_radius).to(device)
    package_attention = tpconv_lite.EquivariantAttention(
        irreps_input, irreps_query, irreps_key, irreps_output, max_radius
    ).to(device)
steps = nn.ModuleDict({"h_q": h_q, "tp_k": tp_k, "fc_k": fc_k, "tp_v": tp_v, "fc_v": fc_v, "dot": dot})
attention.load_state_dict(steps.state_dict())
package_attention.load_state_dict(attention.state_dict())
print("parameters:", [name for name, _ in attention.named_parameters()])
with torch.no_grad():
    out = attention(f, pos, edge_index)
    print("module == step by step:", torch.allclose(out, f_out, rtol=1e-12, atol=1e-14))
    print("the chapter's class == the package's:", torch.equal(package_attention(f, pos, edge_index), out))

# %% [markdown]
# The later sections need to switch pieces off, so the layer also exposes its forward stopped before its last line:
# `weights_and_values` returns the weights $\alpha_{ij}$ and the values $v_{ij}$, and can leave out the cutoff
# weight. `forward` is that method followed by the weighted sum $\sum_j \sqrt{\alpha_{ij}}\, v_{ij}$; the edge
# embedding, cutoff weight and harmonics inside it come from `edge_inputs`.

# %%
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    alpha_fn, v_fn = attention.weights_and_values(f, pos, edge_index)
    by_method = scatter(alpha_fn.sqrt() * v_fn, edge_dst, dim=0, dim_size=n)
print("alpha:", tuple(alpha_fn.shape), "| values:", tuple(v_fn.shape))
print("sum_j sqrt(alpha_ij) v_ij == the module:", torch.allclose(by_method, out, rtol=1e-12, atol=1e-14))
print("alpha == the steps above:", torch.allclose(alpha_fn, alpha, rtol=1e-12, atol=1e-15))

# %% [markdown]
# ## Why $\sqrt{\alpha}$: the scale of the output
#
# Suppose a target has $n$ incoming edges whose values are independent, with mean 0 and variance 1 per component.
# A weighted sum $\sum_j c_j v_{ij}$ then has variance $\sum_j c_j^2$. With the softmax weights, $c_j = \alpha_{ij}$,
# that is $\sum_j \alpha_{ij}^2$: about $1/n$ when the weights are even, so the output shrinks as $1/\sqrt{n}$ with
# the number of neighbours (a weighted *mean* averages the noise away). With $c_j = \sqrt{\alpha_{ij}}$ it is
# $\sum_j \alpha_{ij} = 1$, whatever $n$ and however the weights are spread: the output keeps the scale of one value,
# as every e3nn module is designed to do at initialisation.
#
# First, the guide's own check, made less anecdotal: mean and standard deviation of the output over 20 random
# graphs, each with freshly initialised weights, over the nodes that receive at least one edge. A fresh
# initialisation is cheap: e3nn draws all these weights from a standard normal (its normalisation lives in constants,
# not in the weights), so re-drawing the parameters of one layer is the same as building a new one.

# %%
def redraw(layer: nn.Module, generator: torch.Generator) -> None:
    """A fresh initialisation: e3nn's Linear, tensor products and FullyConnectedNet draw every weight from N(0, 1)."""
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype))


with default_dtype(torch.float64):
    trial_layer = EquivariantAttention(irreps_input, irreps_query, irreps_key, irreps_output, max_radius).to(device)

generator = torch.Generator().manual_seed(1)
outputs = {"sqrt(alpha)": [], "alpha": []}
values = []
for trial in range(20):
    redraw(trial_layer, generator)
    pos_t = torch.randn(num_graphs * num_nodes, 3, generator=generator, dtype=torch.float64).to(device)
    f_t = torch.randn(num_graphs * num_nodes, irreps_input.dim, generator=generator, dtype=torch.float64).to(device)
    edge_index_t = radius_graph(pos_t, max_radius, batch)
    receiving_t = torch.bincount(edge_index_t[1], minlength=n) > 0
    with torch.no_grad():
        alpha_t, v_t = trial_layer.weights_and_values(f_t, pos_t, edge_index_t)
    for name, c in [("sqrt(alpha)", alpha_t.sqrt()), ("alpha", alpha_t)]:
        outputs[name].append(scatter(c * v_t, edge_index_t[1], dim=0, dim_size=n)[receiving_t])
    values.append(v_t)

# %%
# NBVAL_IGNORE_OUTPUT
seed_graph_std = {}
for name, chunks in [("values v_ij", values)] + list(outputs.items()):
    everything = torch.cat(chunks)
    seed_graph_std[name] = everything.std().item()
    print(f"{name:12s} mean {everything.mean().item():+.3f}  std {everything.std().item():.3f}")

# %% [markdown]
# The values themselves are close to unit scale (not exactly: edges near the cutoff get small radial weights), and
# the $\sqrt{\alpha}$ output keeps that scale, while the $\alpha$ output is smaller. The exact numbers depend on the
# random draws, so the checked cell states the claim, not the digits:

# %%
# NBVAL_CHECK_OUTPUT
print("std with sqrt(alpha) within [0.5, 2]:", 0.5 <= seed_graph_std["sqrt(alpha)"] <= 2)
print("std with alpha smaller than with sqrt(alpha):", seed_graph_std["alpha"] < seed_graph_std["sqrt(alpha)"])

# %% [markdown]
# Those graphs mix nodes with one to a handful of neighbours. To see the dependence on $n$, use *star* graphs: a
# centre at the origin and $n$ sources placed uniformly at random in the ball of radius $r_\text{max}$ around it,
# every source linked to the centre. Forty stars for each $n$, all in one graph, eight initialisations:

# %%
def star_graphs(ns: list[int], num_stars: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`num_stars` stars for each n in `ns`: features, positions, edges (sources -> centre) and the centres' indices."""
    pos_list, edge_list, centres, start = [], [], [], 0
    for num in ns:
        for _ in range(num_stars):
            direction = nn.functional.normalize(torch.randn(num, 3, generator=generator, dtype=torch.float64), dim=1)
            radius = max_radius * torch.rand(num, 1, generator=generator, dtype=torch.float64) ** (1 / 3)
            pos_list.append(torch.cat([torch.zeros(1, 3, dtype=torch.float64), radius * direction]))
            edge_list.append(torch.stack([torch.arange(start + 1, start + num + 1), torch.full((num,), start)]))
            centres.append(start)
            start += num + 1
    f = torch.randn(start, irreps_input.dim, generator=generator, dtype=torch.float64)
    return f.to(device), torch.cat(pos_list).to(device), torch.cat(edge_list, dim=1).to(device), torch.tensor(centres)


ns = [1, 2, 4, 8, 16, 32]
num_stars = 40
per_n = {"sqrt(alpha)": [[] for _ in ns], "alpha": [[] for _ in ns]}
for trial in range(8):
    redraw(trial_layer, generator)
    f_s, pos_s, edge_index_s, centres = star_graphs(ns, num_stars, generator)
    with torch.no_grad():
        alpha_s, v_s = trial_layer.weights_and_values(f_s, pos_s, edge_index_s)
    for name, c in [("sqrt(alpha)", alpha_s.sqrt()), ("alpha", alpha_s)]:
        centre_out = scatter(c * v_s, edge_index_s[1], dim=0, dim_size=f_s.shape[0])[centres.to(device)]
        for i, chunk in enumerate(centre_out.split(num_stars)):
            per_n[name][i].append(chunk)
std_by_n = {name: [torch.cat(chunks).std().item() for chunks in lists] for name, lists in per_n.items()}

fig, ax = plt.subplots(figsize=(5.5, 3.4))
ax.plot(ns, std_by_n["sqrt(alpha)"], marker="o", label=r"values weighted by $\sqrt{\alpha_{ij}}$ (package)")
ax.plot(ns, std_by_n["alpha"], marker="s", label=r"values weighted by $\alpha_{ij}$")
ax.plot(ns, [std_by_n["alpha"][0] / k**0.5 for k in ns], "k:", label=r"$\propto 1/\sqrt{n}$ (even weights)")
ax.set_xscale("log", base=2)
ax.set_xticks(ns, [str(k) for k in ns])
ax.set_ylim(0, 1.25)
ax.set_xlabel("number of incoming edges n")
ax.set_ylabel("std of the output (feature units)")
ax.set_title("Output scale of attention vs number of neighbours")
ax.legend(fontsize=8, loc="lower left")
plt.tight_layout()
plt.show()

# %%
# NBVAL_IGNORE_OUTPUT
for name, stds in std_by_n.items():
    print(f"{name:12s}", "  ".join(f"n={k}: {s:.2f}" for k, s in zip(ns, stds)))

# %%
# NBVAL_IGNORE_OUTPUT
ratio_sqrt = std_by_n["sqrt(alpha)"][ns.index(32)] / std_by_n["sqrt(alpha)"][ns.index(2)]
ratio_alpha = std_by_n["alpha"][ns.index(32)] / std_by_n["alpha"][ns.index(2)]
glue("ratio_sqrt", ratio_sqrt)
glue("ratio_alpha", ratio_alpha)
glue("drop_alpha", 100 * (1 - ratio_alpha), display=False)

# %% [markdown]
# With $\sqrt\alpha$ the scale barely moves: from two neighbours to 32, the standard deviation changes by a factor
# {glue:text}`ratio_sqrt:.2f`. With $\alpha$ it falls steadily, by {glue:text}`drop_alpha:.0f`% over the same range
# (a factor {glue:text}`ratio_alpha:.2f`), though more slowly than $1/\sqrt n$, because the weights are not even
# (the cutoff weight and the scores favour some edges, and $\sum_j \alpha_{ij}^2$ lies between $1/n$ and 1). With one
# neighbour the two are the same curve by construction ($\alpha = 1$), so $n = 1$ tests nothing; the checks compare
# $n = 32$ with $n = 2$, with bounds that leave room for the spread over initialisations.

# %%
# NBVAL_CHECK_OUTPUT
print("sqrt(alpha): std(n=32) / std(n=2) within [0.8, 1.25]:", 0.8 <= ratio_sqrt <= 1.25)
print("alpha: std drops by more than 30% from n=2 to n=32:", ratio_alpha < 0.7)
shrinks = all(a > b for a, b in zip(std_by_n["alpha"][1:], std_by_n["alpha"][2:]))
print("std with alpha shrinks with n from n=2 on:", shrinks)

# %% [markdown]
# ## Smooth across the cutoff
#
# A radius graph changes abruptly: an edge exists at $|r_{ij}| < r_\text{max}$ and not beyond. Forces, scores and
# other gradients of a network are only meaningful if its output does not jump when that happens. The layer takes care
# of it in two ways. The radial embedding vanishes at $r_\text{max}$ and the radial networks have no biases and
# $\text{silu}(0) = 0$, so the key and the value of an edge go to zero as it reaches the cutoff. But a zero key does
# not give a zero weight: its score is $0$ and its exponential $e^0 = 1$ still takes a share of the softmax, away from
# the other edges. That is what the cutoff weight is for: it multiplies the exponential itself, so the edge's share
# fades out smoothly.
#
# The experiment of the guide: nodes 0 and 1 sit 0.8 apart and always see each other; node 2 moves along a line,
# from 1.0 to 1.6 away from node 0 (and always more than $r_\text{max}$ from node 1). All 241 positions go in one batch.

# %%
def moving_node(distance: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Node 0 at the origin, node 1 at 0.8 on y, node 2 at `distance` on -y: features, positions and radius graph."""
    frames = torch.zeros(len(distance), 3, 3, dtype=torch.float64)
    frames[:, 1, 1] = 0.8
    frames[:, 2, 1] = -distance
    pos = frames.reshape(-1, 3).to(device)
    batch = torch.arange(len(distance)).repeat_interleave(3).to(device)
    return f[:3].repeat(len(distance), 1), pos, radius_graph(pos, max_radius, batch)


distance = torch.linspace(1.0, 1.6, 241, dtype=torch.float64)
curves = {}
with torch.no_grad():
    f_m, pos_m, edge_index_m = moving_node(distance)
    for cutoff_weight in (True, False):
        alpha_m, v_m = attention.weights_and_values(f_m, pos_m, edge_index_m, cutoff_weight=cutoff_weight)
        curves[cutoff_weight] = scatter(alpha_m.sqrt() * v_m, edge_index_m[1], dim=0, dim_size=f_m.shape[0])[0::3, 0]

fig, ax = plt.subplots(figsize=(5.5, 3.4))
ax.plot(distance, curves[True].cpu(), label="with the cutoff weight (package)")
ax.plot(distance, curves[False].cpu(), "--", label="without the cutoff weight")
ax.axvline(max_radius, color="grey", linestyle=":", label=r"$r_\mathrm{max}$")
ax.set_xlabel("distance of node 2 from node 0 (length units)")
ax.set_ylabel("first 0e output of node 0 (feature units)")
ax.set_title("Node 2 crosses the cutoff")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# The two curves differ everywhere inside the cutoff, since the cutoff weight also shifts the balance between node
# 0's two edges, but only one of them is continuous: with the weight, the output flattens smoothly onto its value
# without node 2; without it, it jumps when node 2's edge disappears. (The wiggles come from the ten bumps of the
# radial embedding, seen through untrained radial networks.) Just inside and just outside the cutoff:

# %%
# NBVAL_CHECK_OUTPUT
crossing = torch.tensor([max_radius - 1e-3, max_radius + 1e-3], dtype=torch.float64)
with torch.no_grad():
    f_c, pos_c, edge_index_c = moving_node(crossing)
    print("edges just inside / just outside:", int((edge_index_c[1] < 3).sum()), "/", int((edge_index_c[1] >= 3).sum()))
    inside, outside = attention(f_c, pos_c, edge_index_c).split(3)
    print("with the cutoff weight, no jump:", torch.allclose(inside, outside, rtol=0, atol=1e-12))
    alpha_c, v_c = attention.weights_and_values(f_c, pos_c, edge_index_c, cutoff_weight=False)
    inside, outside = scatter(alpha_c.sqrt() * v_c, edge_index_c[1], dim=0, dim_size=6).split(3)
    print("without it, node 0 jumps by more than 1e-3:", bool((inside[0] - outside[0]).abs().max() > 1e-3))
    edge_2_to_0 = (edge_index_c[0] == 2) & (edge_index_c[1] == 0)
    print("the value of the edge 2 -> 0 is ~0 just inside:", bool(v_c[edge_2_to_0].abs().max() < 1e-12),
          "| yet without the cutoff weight its alpha is above 0.1:", bool(alpha_c[edge_2_to_0] > 0.1))

# %% [markdown]
# ## A stable softmax
#
# `exp` overflows to infinity early: beyond about 710 in float64, 89 in float32 and 11 in float16. The scores of an
# untrained layer are small, but nothing bounds them during training, and in mixed precision 11 is not far. Once
# `exp` returns `inf`, the plain softmax divides `inf` by `inf`:

# %%
# NBVAL_CHECK_OUTPUT
for dtype in (torch.float16, torch.float32, torch.float64):
    print(f"{str(dtype):14s} exp overflows beyond {math.log(torch.finfo(dtype).max):.2f}")

# %% [markdown]
# Shift our graph's scores by 1000 (as a large bias in `dot` would): each target's softmax is unchanged in exact
# arithmetic. The plain formula returns NaN; `edge_softmax` returns finite weights, equal to `torch.softmax` applied
# to each target's scores one target at a time, with finite gradients.

# %%
# NBVAL_CHECK_OUTPUT
def plain_softmax(logits: Tensor, index: Tensor, num_nodes: int) -> Tensor:
    """The softmax of the guide, without the shift: exp / scatter-sum of exp."""
    exp = logits.exp()
    return exp / scatter(exp, index, dim=0, dim_size=num_nodes)[index]


def softmax_node_by_node(logits: Tensor, index: Tensor, num_nodes: int) -> Tensor:
    """torch.softmax over the incoming edges of one node at a time: slow and obviously right."""
    alpha = torch.zeros_like(logits)
    for node in range(num_nodes):
        incoming = index == node
        alpha[incoming] = torch.softmax(logits[incoming], dim=0)
    return alpha


large = (scores.detach() + 1000.0).requires_grad_(True)
alpha_plain = plain_softmax(large, edge_dst, n)
alpha_stable = edge_softmax(large, edge_dst, n)
print("plain softmax finite:", bool(torch.isfinite(alpha_plain).all()), "| has NaN:", bool(alpha_plain.isnan().any()))
print("edge_softmax finite:", bool(torch.isfinite(alpha_stable).all()))
print("edge_softmax == torch.softmax per node:",
      torch.allclose(alpha_stable, softmax_node_by_node(large.detach(), edge_dst, n), rtol=0, atol=1e-14))
print("unchanged by the shift:", torch.allclose(alpha_stable, edge_softmax(scores.detach(), edge_dst, n), atol=1e-14))
(alpha_stable * torch.randn(alpha_stable.shape, generator=generator, dtype=torch.float64).to(device)).sum().backward()
print("gradients finite:", bool(torch.isfinite(large.grad).all()))

# %% [markdown]
# ## Nothing to attend to: zeros, not NaN
#
# A node without incoming edges should get a zero output, and training should not produce NaN from it. Two
# situations occur. A node with *no edge at all* (13 of our 60) is harmless even for the plain formula: no edge
# ever divides by its $z_i = 0$. The trap is a node whose edges all have *cutoff weight 0*. That happens whenever the
# edges do not come from the layer's own radius graph (a graph built with a larger radius, or built once and reused
# while the points move, or a $k$-nearest-neighbour graph), and even in a radius graph just inside the cutoff, where
# $e^{-1/x}$ underflows to 0. Three nodes show it, every ordered pair linked: node 2 is 2.0 and 1.5 away from the
# others, beyond the cutoff; node 0 sees node 1 (0.5 away) and node 2 (beyond), and so does node 1.
#
# The plain version (the guide's softmax and `alpha.sqrt()`) gives $0/0$ = NaN at node 2 in the forward pass. Nodes
# 0 and 1 have finite outputs, but their gradients are NaN: the edge from node 2 has $\alpha = 0$, where the square
# root's derivative is infinite.

# %%
# NBVAL_CHECK_OUTPUT
def plain_attention(layer: EquivariantAttention, f: Tensor, pos: Tensor, edge_index: Tensor) -> Tensor:
    """The layer with the guide's plain softmax and square root: exp(score) w / z, then alpha.sqrt()."""
    edge_src, edge_dst = edge_index
    embedded, weight, edge_sh = layer.edge_inputs(pos, edge_index)
    k = layer.tp_k(f[edge_src], edge_sh, layer.fc_k(embedded))
    v = layer.tp_v(f[edge_src], edge_sh, layer.fc_v(embedded))
    exp = weight[:, None] * layer.dot(layer.h_q(f)[edge_dst], k).exp()
    alpha = exp / scatter(exp, edge_dst, dim=0, dim_size=f.shape[0])[edge_dst]
    return scatter(alpha.sqrt() * v, edge_dst, dim=0, dim_size=f.shape[0])


pos_3 = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64, device=device)
edge_index_3 = torch.tensor([[1, 2, 0, 2, 0, 1], [0, 0, 1, 1, 2, 2]], device=device)  # every ordered pair
for name, layer_fn in [("plain", plain_attention), ("package", lambda layer, *args: layer(*args))]:
    f_3 = f[:3].clone().requires_grad_(True)
    out_3 = layer_fn(attention, f_3, pos_3, edge_index_3)
    node_2 = "NaN" if out_3[2].isnan().any() else "zeros" if (out_3[2] == 0).all() else "other"
    out_3[:2].square().sum().backward()  # only the finite outputs of nodes 0 and 1
    finite = bool(torch.isfinite(out_3[:2]).all())
    print(f"{name:8s} output of node 2: {node_2} | outputs of nodes 0, 1 finite: {finite}"
          f" | their gradients have NaN: {bool(f_3.grad.isnan().any())}")

# %% [markdown]
# The package's layer gives node 2 zeros and finite gradients everywhere, and so it does for the nodes of our random
# graph that have no edge at all, in the forward and the backward pass, including the positions' gradients:

# %%
# NBVAL_CHECK_OUTPUT
f_g, pos_g = f.clone().requires_grad_(True), pos.clone().requires_grad_(True)
out_g = attention(f_g, pos_g, edge_index)
out_g.square().sum().backward()
print("isolated nodes get zeros:", bool((out_g[~receiving] == 0).all()),
      "| others do not:", bool((out_g[receiving] != 0).any()))
print("gradients finite:", bool(torch.isfinite(f_g.grad).all() and torch.isfinite(pos_g.grad).all()))

# %% [markdown]
# ## Equivariance
#
# Queries, keys and values are equivariant, the score is invariant, so the weights $\alpha_{ij}$ are invariant and
# the output turns like the values. The checker confirms it for the chapter's layer, the package's, and the weights
# of `weights_and_values`, under random rotations, rotations with inversion and translations (all modules were built
# under the float64 default, so the tolerance is float64's):

# %%
# NBVAL_CHECK_OUTPUT
attention.eval()
package_attention.eval()
kinds_in = [str(irreps_input), "cartesian_points", None]  # the edge list is left alone
inputs = [f, pos, edge_index]
reports = {
    "EquivariantAttention (chapter)": check_equivariance(attention, inputs, kinds_in, irreps_output),
    "EquivariantAttention (package)": check_equivariance(package_attention, inputs, kinds_in, irreps_output),
    "weights_and_values: alpha": check_equivariance(
        lambda *args: attention.weights_and_values(*args)[0], inputs, kinds_in, "0e"
    ),
}
for name, report in reports.items():
    print(f"{name:32s} {report}")

# %%
# NBVAL_IGNORE_OUTPUT
for name, report in reports.items():
    print(f"{name:32s} {report.details()}")

# %% [markdown]
# ## The same softmax in chapter 8's layer
#
# The tensor-product convolution layer of EigenFold {footcite:p}`jing2023eigenfold` and DiffDock
# {footcite:p}`corso2023diffdock`, `tpconv_lite.TensorProductConvLayer`, has an optional attention branch built from
# the same parts: a query `h_q` of the target, a key `tp_k`/`fc_k` of the edge, a score `dot` to `0e`, and the
# layer's own messages `tp`/`fc` as the values. Its keys have half the multiplicities of the tensor product's input,
# its radial networks take the model's edge features (in chapter 9: Gaussians of the distance, which never vanish,
# with embeddings of the sequence offset and the time) and there is no cutoff weight. Its softmax is `edge_softmax`,
# the same shift by the largest score that the original code writes out by hand. And, like the original, it sums
# $\alpha_{ij} v_{ij}$ without the square root: a weighted *mean* of the messages, which matches that layer's
# default `reduce="mean"` without attention. Checked on a small example (`residual=False` leaves only `lin_out` after
# the aggregation; `eval()` turns off checkpointing):

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    conv_layer = tpconv_lite.TensorProductConvLayer(
        "4x0e + 2x1o", "4x0e + 2x1o", "4x0e + 2x1o", "0e + 1o + 2e", "4x0e + 2x1o", n_edge_features=6, attention=True
    ).to(device).eval()
x_c = torch.randn(n, conv_layer.in_irreps.dim, generator=generator, dtype=torch.float64).to(device)
edge_attr = torch.randn(edge_index.shape[1], 6, generator=generator, dtype=torch.float64).to(device)
edge_sh_2 = o3.spherical_harmonics("0e + 1o + 2e", edge_vec, normalize=True, normalization="component")
with torch.no_grad():
    layer_out = conv_layer(x_c, edge_index, edge_attr, edge_sh_2, residual=False)
    x_in = conv_layer.lin_in(x_c)
    keys = conv_layer.tp_k(x_in[edge_src], edge_sh_2, conv_layer.fc_k(edge_attr))
    messages = conv_layer.tp(x_in[edge_src], edge_sh_2, conv_layer.fc(edge_attr))
    alpha_c = edge_softmax(conv_layer.dot(conv_layer.h_q(x_in)[edge_dst], keys), edge_dst, n)
    for name, c in [("alpha", alpha_c), ("sqrt(alpha)", alpha_c.sqrt())]:
        by_hand = conv_layer.lin_out(scatter(c * messages, edge_dst, dim=0, dim_size=n))
        same = torch.allclose(layer_out, by_hand, atol=1e-12)
        print(f"TensorProductConvLayer == lin_out(sum {name} * messages):", same)
print("irreps of its keys:", conv_layer.tp_k.irreps_out)

# %% [markdown]
# Which weighting is right depends on what follows: a weighted mean keeps the scale of one message only when the
# messages are strongly correlated, $\sqrt{\alpha}$ keeps it when they are independent (at initialisation). Chapter 8
# keeps the original's choice, so that its weights load and reproduce the original's outputs.

# %% [markdown]
# ## Summary
#
# - Equivariant attention: a query $q_i$ = `h_q`$(f_i)$ per node; a key and a value per edge, tensor products of the
#   source's features with $Y(\hat r_{ij})$ weighted by radial networks of $|r_{ij}|$; a learned invariant score
#   `dot`$(q_i, k_{ij})$; a softmax over each node's incoming edges; $f'_i = \sum_j \sqrt{\alpha_{ij}}\, v_{ij}$.
# - $\sqrt{\alpha}$ keeps the output at the scale of one value ($\sum_j \alpha_{ij} = 1$); $\alpha$ shrinks it as the
#   number of neighbours grows ($\sum_j \alpha_{ij}^2 \le 1$).
# - Continuity across the cutoff needs the cutoff weight on the exponentials: a key that goes to zero still takes a
#   share $e^0$ of the softmax.
# - `edge_softmax` subtracts each node's largest score (no overflow), divides $0$ by $1$ where all exponentials are
#   cut off, and `_sqrt_or_zero` has gradient 0 at $\alpha = 0$: zeros, not NaN, forward and backward.
# - `EquivariantAttention` is E(3)-equivariant to float64 precision; chapter 8's `TensorProductConvLayer` uses the same
#   softmax with $\alpha$ instead of $\sqrt{\alpha}$.
#
# Next, chapter 7 looks inside the tensor products that every layer so far is made of, and computes them faster.

# %% [markdown]
# ## Exercises
#
# **1.** Set the keys to zero by zeroing the last layer of `fc_k` of a copy of the layer. What do the weights
# $\alpha_{ij}$ become, and what is the layer then? Compare with chapter 4's options for normalising a sum of
# messages, and check your formula on the random graph.

# %% tags=["hide-cell"]
# NBVAL_CHECK_OUTPUT
# Solution 1: with k = 0 every score dot(q, 0) is 0, so alpha_ij = w_ij / sum_j' w_ij': only the cutoff weights are
# left. The layer becomes a convolution, f'_i = sum_j sqrt(w_ij / W_i) v_ij with W_i = sum_j w_ij; for edges well
# inside the cutoff (w_ij all about equal) that is sum_j v_ij / sqrt(n_i), the per-atom sqrt(n_i) normalisation of
# chapter 4 (which jumps at the cutoff; here the weights w_ij make it continuous).
with default_dtype(torch.float64):
    no_keys = EquivariantAttention(irreps_input, irreps_query, irreps_key, irreps_output, max_radius).to(device)
no_keys.load_state_dict(attention.state_dict())
with torch.no_grad():
    no_keys.fc_k.layer1.weight.zero_()
    w = soft_unit_step(10 * (1 - edge_length / max_radius))
    alpha_w = (w / scatter(w, edge_dst, dim=0, dim_size=n)[edge_dst])[:, None]
    _, v_w = no_keys.weights_and_values(f, pos, edge_index)
    print("alpha = w / sum w:", torch.allclose(no_keys.weights_and_values(f, pos, edge_index)[0], alpha_w, atol=1e-14))
    expected = scatter(alpha_w.sqrt() * v_w, edge_dst, dim=0, dim_size=n)
    print("f' = sum sqrt(w / W) v:", torch.allclose(no_keys(f, pos, edge_index), expected, atol=1e-12))

# %% [markdown]
# **2.** Make the attention ten times sharper: multiply the weights of `dot` by 10, so every score is ten times
# larger. Predict what happens to the effective number of neighbours $1/\sum_j \alpha_{ij}^2$ and to the output's
# standard deviation with $\sqrt{\alpha}$ and with $\alpha$, then check it on star graphs with 16 neighbours.

# %% tags=["hide-cell"]
# NBVAL_IGNORE_OUTPUT
# Solution 2: sharper scores concentrate alpha on fewer edges, so 1/sum alpha^2 drops towards 1. The output with
# sqrt(alpha) keeps variance sum_j alpha_ij = 1 and does not care; the output with alpha has variance sum_j alpha_ij^2,
# which grows towards 1 (one edge takes everything), so its std grows towards the sqrt(alpha) one.
f_e, pos_e, edge_index_e, centres_e = star_graphs([16], num_stars=40, generator=generator)
results = {}
for scale in (1.0, 10.0):
    with torch.no_grad():
        trial_layer.dot.weight.mul_(scale)
        alpha_e, v_e = trial_layer.weights_and_values(f_e, pos_e, edge_index_e)
        trial_layer.dot.weight.div_(scale)
    n_eff = 1 / scatter(alpha_e.square(), edge_index_e[1], dim=0, dim_size=f_e.shape[0])[centres_e.to(device)]
    stds = [scatter(c * v_e, edge_index_e[1], dim=0, dim_size=f_e.shape[0])[centres_e.to(device)].std().item()
            for c in (alpha_e.sqrt(), alpha_e)]
    results[scale] = (n_eff.mean().item(), *stds)
    print(f"dot x {scale:2.0f}: effective neighbours {results[scale][0]:.1f} of 16, "
          f"std with sqrt(alpha) {stds[0]:.2f}, with alpha {stds[1]:.2f}")

# %% tags=["hide-cell"]
# NBVAL_CHECK_OUTPUT
print("sharper: fewer effective neighbours:", results[10.0][0] < results[1.0][0])
print("sharper: std with alpha grows:", results[10.0][2] > results[1.0][2])
print("std with sqrt(alpha) within [0.5, 2] both times:", all(0.5 <= r[1] <= 2 for r in results.values()))

# %% [markdown]
# ## References
#
# Attention and the transformer: {footcite:t}`vaswani2017attention`; its equivariant form: the SE(3)-Transformer
# {footcite:p}`fuchs2020se3` and e3nn's transformer guide, part of e3nn {footcite:p}`geiger2022e3nn`. Why a softmax
# subtracts its maximum: the chapter on numerical computation of {footcite:t}`goodfellow2016deep`. The layer of chapter
# 8 comes from EigenFold {footcite:p}`jing2023eigenfold`, which took it from DiffDock {footcite:p}`corso2023diffdock`.
#
# ```{footbibliography}
# ```
