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
# # 8. The TensorProductConvLayer
#
# The score models of DiffDock {footcite:p}`corso2023diffdock` and EigenFold {footcite:p}`jing2023eigenfold` are
# stacks of one layer, `TensorProductConvLayer`. At heart it is the convolution of chapter 4: a tensor product of each
# neighbour's features with the spherical harmonics of the edge, with weights that depend on the edge. Around that
# heart EigenFold's version puts an MLP that computes the weights from *any* invariant edge features, equivariant
# linear maps before and after the product, a mean over the incoming messages, a residual connection and an optional
# batch norm; an attention variant replaces the mean by a softmax, as in chapter 6. In training it recomputes its
# message passing during the backward pass instead of storing it. This chapter assembles the layer from those pieces,
# checks the assembly against the package's class and against the original's saved weights, stacks layers the way
# EigenFold does, and measures what the recomputation buys.

# %% [markdown]
# ```{admonition} Run this chapter
# :class: tip
# Locally: `make execute` in a clone of the repository, or open `tutorials/08_tensor_product_conv_layer.ipynb` in
# Jupyter. In Colab: the rocket icon at the top of the page. The first code cell installs what Colab lacks;
# everywhere else it does nothing.
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

import e3nn
import matplotlib.pyplot as plt
import torch
from e3nn import o3
from e3nn.nn import BatchNorm
from torch import Tensor, nn
from torch.nn import functional as F

import tpconv_lite
from tpconv_lite import bench
from tpconv_lite.diagrams import box_diagram
from tpconv_lite.graph import edge_softmax, scatter
from tpconv_lite.radial import GaussianSmearing
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
# 1. compute one layer by hand: `lin_in`, the spherical harmonics of the edges, the edge MLP `fc` that gives every
#    edge its own tensor-product weights, the tensor product `tp` per edge, the mean over incoming edges, `lin_out`,
#    the residual and the batch norm; and the attention branch with `h_q`, `tp_k`, `fc_k`, `dot` and a softmax;
# 2. use `tpconv_lite.TensorProductConvLayer`, and load into it a `state_dict` saved by the original EigenFold layer;
# 3. read the irreps and the parameter counts of a stack built like EigenFold's, `0e -> 0e+1o -> 0e+1o+1e ->
#    0e+1o+1e+0o`, and say where its nonlinearity is;
# 4. choose between a zero-padded residual and `lin_self`, use `out_nodes`, and say why `reduce="max"` is not
#    equivariant;
# 5. measure what gradient checkpointing saves in memory and costs in time, and why a stack gains more than a layer.
#
# The pieces, from the 2019 tutorial of chapters 1 to 5 to this layer:
#
# | 2019 e3nn (< 0.2) | EigenFold's layer, e3nn 0.6 / tpconv_lite |
# |---|---|
# | `RadialModel`: path weights from the distance | `fc`: path weights from invariant edge features (distance embedding, node scalars) |
# | `Kernel(Rs_in, Rs_out, RadialModel)` inside `Convolution` | `tp = o3.FullyConnectedTensorProduct(in_tp_irreps, sh_irreps, out_tp_irreps, shared_weights=False)` |
# | sum over neighbours, divided by `sqrt(n_norm)` | `scatter(..., reduce="mean")`: divided by each node's number of incoming edges |
# | `GatedBlock` between convolutions | no gate: the nonlinearity is in `fc`, whose inputs include node scalars |
# | `Rs = [(16, 0, 1), (4, 1, -1)]` | `"16x0e + 4x1o"`, or EigenFold's own `[(16, (0, 1)), (4, (1, -1))]` |
# | (none) | `o3.Linear`: `lin_in`, `lin_out`, `lin_self`; `e3nn.nn.BatchNorm` |

# %% [markdown]
# ## The layer in one formula
#
# For an edge $j \to i$ (source $j$, target $i$) with vector $r_{ij} = x_j - x_i$ and invariant features $e_{ij}$, one
# layer maps node features $f$ to
#
# $$
# f'_i = \mathrm{BN}\Big( \underbrace{f_i \oplus 0}_{\text{residual}} + L_\text{out}\Big(
#     \frac{1}{|n(i)|} \sum_{j \in n(i)} \mathrm{TP}\big(L_\text{in} f_j,\ Y(\hat r_{ij});\ \mathrm{MLP}(e_{ij})\big)
#   \Big) \Big),
# $$
#
# with $L_\text{in}$ and $L_\text{out}$ equivariant linear maps (`lin_in`, `lin_out`), TP a tensor product whose
# weights $\mathrm{MLP}(e_{ij})$ differ from edge to edge (`tp`, `fc`), $n(i)$ the sources of the edges into $i$, the
# residual $f_i \oplus 0$ the input padded with zeros to the output width (or `lin_self(f_i)`), and BN an optional
# batch norm. Chapter 4's convolution is the special case without linear maps, residual and norm, with $e_{ij}$ the
# distance alone and a constant in place of $|n(i)|$.
#
# Its ancestor is DiffDock's layer {footcite:p}`corso2023diffdock`: tensor product, an MLP of the edge features,
# mean, zero-padded residual, batch norm. EigenFold {footcite:p}`jing2023eigenfold` added `lin_in`, `lin_out`,
# `lin_self`, a deeper MLP, attention and checkpointing. (DiffDock's layer also sends its messages the other way,
# from `edge_index[1]` to `edge_index[0]`; EigenFold's, and this book's, go from row 0 to row 1.)
#
# As a block diagram (drawn by `tpconv_lite.diagrams.box_diagram`), the steps that the sections below build one by one:

# %% tags=["hide-input"]
box_diagram(
    {
        "f": (2.3, 0.9, "node features $f$"),
        "lin_in": (0, -1.1, "lin_in: $L_\\mathrm{in} f$"),
        "tp": (0, -2.2, "TP$(L_\\mathrm{in} f_j,\\ Y(\\hat r_{ij});\\ \\mathrm{fc}(e_{ij}))$ per edge"),
        "reduce": (0, -3.3, "mean over $j$, or attention"),
        "lin_out": (0, -4.4, "lin_out"),
        "add": (0, -5.5, "+"),
        "skip": (4.6, -5.5, "$f \\oplus 0$ or lin_self$(f)$"),
        "bn": (0, -6.6, "batch norm (optional)"),
        "out": (0, -7.7, "$f'$"),
    },
    [("f", "lin_in"), ("lin_in", "tp"), ("tp", "reduce"), ("reduce", "lin_out"), ("lin_out", "add"),
     ("f", "skip", "residual"), ("skip", "add"), ("add", "bn"), ("bn", "out")],
    width=4.0,
    colors={"tp": "#cfe2f3", "reduce": "#cfe2f3", "skip": "#fce5cd"},
    title="TensorProductConvLayer",
)
plt.show()

# %% [markdown]
# ## A test graph
#
# A toy protein chain: twelve "residues" on a random walk with 3.8 Å steps (the distance between neighbouring
# alpha carbons), every residue connected to every other, as in EigenFold's residue graphs. We build the second
# layer of the stack of this chapter, which turns `16x0e + 4x1o` into `16x0e + 4x1o + 4x1e`: sixteen scalars and
# four vectors in, four pseudovectors more out. EigenFold calls the multiplicities `ns` (scalars) and `nv` (the rest),
# and those of the tensor product's input and output `ntps` and `ntpv`; its defaults are 32, 4, 16 and 4, DiffDock's
# are `ns=16, nv=4`. Everything is float64 for exact comparisons.

# %%
# NBVAL_CHECK_OUTPUT
ns, nv, ntps, ntpv, fc_dim = 16, 4, 8, 4, 32
irreps_in = o3.Irreps(f"{ns}x0e + {nv}x1o")
irreps_in_tp = o3.Irreps(f"{ntps}x0e + {ntpv}x1o")
irreps_out_tp = o3.Irreps(f"{ntps}x0e + {ntpv}x1o + {ntpv}x1e")
irreps_out = o3.Irreps(f"{ns}x0e + {nv}x1o + {nv}x1e")
irreps_sh = o3.Irreps.spherical_harmonics(lmax=2)

generator = torch.Generator().manual_seed(0)
num_nodes = 12
steps = F.normalize(torch.randn(num_nodes, 3, generator=generator, dtype=torch.float64), dim=1)
pos = (3.8 * steps.cumsum(dim=0)).to(device)  # (N, 3) Å
f = torch.randn(num_nodes, irreps_in.dim, generator=generator, dtype=torch.float64).to(device)  # (N, 28) features
src, dst = torch.where(~torch.eye(num_nodes, dtype=torch.bool, device=device))  # every pair, both directions
edge_index = torch.stack([src, dst])
print("in:", irreps_in, "| tp in:", irreps_in_tp, "| tp out:", irreps_out_tp, "| out:", irreps_out, "| sh:", irreps_sh)
print("nodes:", num_nodes, "| edges:", edge_index.shape[1], "| features:", tuple(f.shape))

# %% [markdown]
# ## Step 1: `lin_in`, an equivariant linear map
#
# `o3.Linear(irreps_in, irreps_in_tp)` first shrinks the features that enter the tensor product, whose cost grows with
# the product of the multiplicities. An equivariant linear map may only mix *channels* of the same irrep, never
# different irreps and never the components of one irrep: a matrix $W$ of shape `(mul_in, mul_out)` per irrep type,
# divided by the square root of `mul_in` to keep the scale. Here $16 \times 8 + 4 \times 4 = 144$ weights, and no
# bias (a bias is only allowed on `0e`, and `o3.Linear` adds none by default):

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    lin_in = o3.Linear(irreps_in, irreps_in_tp).to(device)
print(lin_in)
f_in = lin_in(f)  # (N, 20)
W_scalar = lin_in.weight[: ns * ntps].view(ns, ntps)
W_vector = lin_in.weight[ns * ntps :].view(nv, ntpv)
scalars = f[:, :ns] @ W_scalar / ns**0.5
vectors = torch.einsum("ncm,cd->ndm", f[:, ns:].view(-1, nv, 3), W_vector) / nv**0.5  # (N, channel, xyz)
print("lin_in(f) == per-irrep matrices:", torch.allclose(f_in, torch.cat([scalars, vectors.flatten(1)], dim=1)))

# %% [markdown]
# ## Step 2: the spherical harmonics of the edges
#
# As in chapter 4: $r_{ij}$ = `pos[src] - pos[dst]`, from the target to the source, and $Y(\hat r_{ij})$ for
# $l = 0, 1, 2$ with `normalization="component"`.

# %%
# NBVAL_CHECK_OUTPUT
edge_vec = pos[src] - pos[dst]  # (E, 3)
edge_sh = o3.spherical_harmonics(irreps_sh, edge_vec, normalize=True, normalization="component")  # (E, 9)
print("edge_sh:", tuple(edge_sh.shape), "| Y_0 = 1:", torch.allclose(edge_sh[:, 0], torch.ones_like(edge_sh[:, 0])))

# %% [markdown]
# ## Step 3: the tensor product and the weights it asks for
#
# `tp = o3.FullyConnectedTensorProduct(irreps_in_tp, irreps_sh, irreps_out_tp, shared_weights=False)` combines the
# source's features with the edge's harmonics along every allowed path; each path `mul1 x ir1` $\otimes$ `ir2`
# $\to$ `mul3 x ir3` needs `mul1 * mul3` weights (chapter 3). With `shared_weights=False` they are not parameters of
# `tp` but an input, one row of `weight_numel` numbers per edge:

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    tp = o3.FullyConnectedTensorProduct(irreps_in_tp, irreps_sh, irreps_out_tp, shared_weights=False).to(device)
for ins in tp.instructions:
    ir1, ir2, ir3 = tp.irreps_in1[ins.i_in1], tp.irreps_in2[ins.i_in2], tp.irreps_out[ins.i_out]
    print(f"  {str(ir1):5s} x {str(ir2):5s} -> {str(ir3):5s}: {ins.path_shape[0] * ins.path_shape[2]:3d} weights")
print("weights per edge:", tp.weight_numel, "| parameters of tp:", sum(p.numel() for p in tp.parameters()))

# %% [markdown]
# Not every product of an input irrep with a harmonic has a path: those whose result is not among the output irreps
# are left out. They are:

# %%
# NBVAL_CHECK_OUTPUT
missing = [
    f"{ir1} x {ir2} -> {ir3}"
    for _, ir1 in tp.irreps_in1 for _, ir2 in tp.irreps_in2 for ir3 in ir1 * ir2
    if ir3 not in [ir for _, ir in tp.irreps_out]
]  # fmt: skip
print(len(missing), "products without an output:", ", ".join(missing))

# %% [markdown]
# ## Step 4: `fc`, the MLP that gives each edge its weights
#
# Chapter 4 computed the weights from the distance with a radial network. Here an MLP, `fc`, computes them from a
# vector of invariant edge features $e_{ij}$: `Linear(n_edge_features, fc_dim)`, ReLU, dropout, `Linear(fc_dim,
# fc_dim)`, ReLU, dropout, `Linear(fc_dim, weight_numel)`. Any invariant will do. EigenFold's score model (chapter 9)
# gives each layer `3 ns` of them: `ns` embedded edge features (a Gaussian smearing of the length among them,
# chapter 2), and the `ns` scalar features of each end of the edge. We follow it, with `ns` Gaussians of the length:

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    smearing = GaussianSmearing(0.0, 20.0, ns).to(device)
    fc = nn.Sequential(
        nn.Linear(3 * ns, fc_dim), nn.ReLU(), nn.Dropout(0.0),
        nn.Linear(fc_dim, fc_dim), nn.ReLU(), nn.Dropout(0.0),
        nn.Linear(fc_dim, tp.weight_numel),
    ).to(device)
edge_attr = torch.cat([smearing(edge_vec.norm(dim=1)), f[src, :ns], f[dst, :ns]], dim=1)  # (E, 48) invariants
edge_weights = fc(edge_attr)  # (E, 176): one row of tensor-product weights per edge
print("edge_attr:", tuple(edge_attr.shape), "-> edge weights:", tuple(edge_weights.shape))

# %% [markdown]
# The node scalars inside $e_{ij}$ matter more than they seem. Everything else in the layer is linear in the node
# features: `lin_in`, the tensor product (for fixed weights), the mean, `lin_out`, the residual. Through $e_{ij}$ the
# features also set the weights, through a ReLU MLP: in the layer as EigenFold's score model uses it, this is its only
# nonlinearity, in place of the gates of chapter 5. Two options add others: `attention=True` (a softmax of scores
# that depend on the features) and a batch norm in training mode (it divides by statistics of the batch; in
# evaluation mode it is affine). We will check it on the finished layer.
#
# ## Step 5: one message per edge, and their mean at each target
#
# `tp(f_in[src], edge_sh, edge_weights)` gives the messages, `(E, out_tp_irreps.dim)`. A `scatter` with
# `reduce="mean"` averages those that arrive at the same node: the sum of chapter 4 divided by each node's number of
# incoming edges. (In EigenFold's complete graphs that number is $N - 1$ for every node; in the radius graphs of
# DiffDock it varies, with the jumps at the cutoff discussed in chapter 4.)

# %%
# NBVAL_CHECK_OUTPUT
messages = tp(f_in[src], edge_sh, edge_weights)  # (E, 32)
aggregated = scatter(messages, dst, dim=0, dim_size=num_nodes, reduce="mean")  # (N, 32)
in_degree = scatter(torch.ones_like(dst, dtype=f.dtype), dst, dim=0, dim_size=num_nodes)
summed = scatter(messages, dst, dim=0, dim_size=num_nodes)
print("messages:", tuple(messages.shape), "| aggregated:", tuple(aggregated.shape),
      "| in-degrees:", in_degree.unique().tolist())
print("mean == sum / in-degree:", torch.allclose(aggregated, summed / in_degree[:, None]))

# %% [markdown]
# ## Step 6: `lin_out` and the residual
#
# `lin_out = o3.Linear(out_tp_irreps, out_irreps)` brings the result to the output width. The residual adds the input
# to it. The input is narrower (28 numbers) than the output (40), so it is padded with zeros on the right,
# `F.pad(f, (0, 12))`. This is only equivariant if the padded zeros land on the irreps the input lacks: the input's
# irreps must be the first irreps of the output, copy by copy. Here `16x0e + 4x1o` is the beginning of
# `16x0e + 4x1o + 4x1e`, and the twelve zeros fill the four pseudovectors. (The other choice, `lin_self`, comes
# later.)

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    lin_out = o3.Linear(irreps_out_tp, irreps_out).to(device)
residual = F.pad(f, (0, irreps_out.dim - irreps_in.dim))  # (N, 40)
before_norm = lin_out(aggregated) + residual
print(lin_out)
print("padding lines up:", irreps_out[: len(irreps_in)] == irreps_in, "| output:", tuple(before_norm.shape))

# %% [markdown]
# ## Step 7: batch norm
#
# Last comes e3nn's `BatchNorm(out_irreps)`, optional (DiffDock uses it, EigenFold's score model does not). It
# normalises each channel over the nodes of the batch without breaking equivariance: a `0e` channel has its mean
# subtracted and is divided by its standard deviation, then scaled and shifted by a learned weight and bias; any
# other channel is only divided by the root mean square of its components and scaled by a weight, since subtracting a
# mean vector or adding a bias vector would pick a direction. In training mode it uses the batch's statistics and
# updates running averages; in evaluation mode it uses the running averages. In training mode, by hand:

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    batch_norm = BatchNorm(irreps_out).to(device)
with torch.no_grad():
    batch_norm.weight.uniform_(0.5, 1.5)
    batch_norm.bias.normal_()
eps = batch_norm.eps
x = before_norm
centred = x[:, :ns] - x[:, :ns].mean(dim=0)
norm_scalars = centred / (centred.pow(2).mean(dim=0) + eps).sqrt() * batch_norm.weight[:ns] + batch_norm.bias
others = x[:, ns:].view(num_nodes, 2 * nv, 3)  # the 4 vectors and 4 pseudovectors
norm_others = others / (others.pow(2).mean(dim=(0, 2)) + eps).sqrt()[:, None] * batch_norm.weight[ns:, None]
by_hand = torch.cat([norm_scalars, norm_others.flatten(1)], dim=1)
print("BatchNorm(x) in training mode == formula:", torch.allclose(batch_norm.train()(x), by_hand))

# %% [markdown]
# ## The whole layer, by hand
#
# The steps in one function. The modules go into a `ModuleDict` under the names the layer gives them, so that its
# `state_dict` has the layer's keys (`lin_in.weight`, `fc.0.weight`, ...):

# %%
# NBVAL_CHECK_OUTPUT
parts = nn.ModuleDict(dict(lin_in=lin_in, tp=tp, fc=fc, lin_out=lin_out, batch_norm=batch_norm)).eval()


def layer_by_hand(parts: nn.ModuleDict, f: Tensor, edge_index: Tensor, edge_attr: Tensor, edge_sh: Tensor) -> Tensor:
    """Steps 1 to 7: (N, in_irreps.dim) -> (N, out_irreps.dim), messages averaged, zero-padded residual, batch norm."""
    src, dst = edge_index
    f_in = parts.lin_in(f)
    messages = parts.tp(f_in[src], edge_sh, parts.fc(edge_attr))
    out = parts.lin_out(scatter(messages, dst, dim=0, dim_size=f.shape[0], reduce="mean"))
    return parts.batch_norm(out + F.pad(f, (0, out.shape[1] - f.shape[1])))


with torch.no_grad():
    out_by_hand = layer_by_hand(parts, f, edge_index, edge_attr, edge_sh)
print("output:", tuple(out_by_hand.shape), "labelled", irreps_out)
print("state_dict keys:", list(parts.state_dict())[:4], "...")

# %% [markdown]
# ## The attention branch
#
# With `attention=True` the mean of step 5 becomes a weighted sum whose weights depend on the features, the
# transformer-style attention of chapter 6 {footcite:p}`fuchs2020se3` in EigenFold's variant. Three quantities per
# edge $j \to i$:
#
# - the **value** $v_{ij}$: the message of step 5, from `tp` and `fc`;
# - the **key** $k_{ij}$ = `tp_k(f_in[j], Y(r_ij), fc_k(e_ij))`: a second tensor product with its own MLP, whose
#   output irreps are those of `in_tp_irreps` with half the multiplicities, here `4x0e + 2x1o`;
# - the **query** $q_i$ = `h_q(f_in[i])`: a linear map of the target's own features, to the same irreps.
#
# A learned invariant product, `dot = o3.FullyConnectedTensorProduct(key_irreps, key_irreps, "0e")`, turns
# $(q_i, k_{ij})$ into one number per edge, the logit $a_{ij}$; a softmax over the edges that arrive at $i$ gives
# $\alpha_{ij}$, and $\sum_j \alpha_{ij} v_{ij}$ replaces the mean. Unlike chapter 6 (and e3nn's transformer guide),
# the values are weighted by $\alpha_{ij}$ itself, not $\sqrt{\alpha_{ij}}$, and there is no cutoff factor.
# `edge_softmax` (chapter 6) subtracts the largest logit of each target before exponentiating, as the original does.

# %%
# NBVAL_CHECK_OUTPUT
key_irreps = o3.Irreps([(mul // 2, ir) for mul, ir in irreps_in_tp])
with default_dtype(torch.float64):
    h_q = o3.Linear(irreps_in_tp, key_irreps).to(device)
    tp_k = o3.FullyConnectedTensorProduct(irreps_in_tp, irreps_sh, key_irreps, shared_weights=False).to(device)
    fc_k = nn.Sequential(
        nn.Linear(3 * ns, fc_dim), nn.ReLU(), nn.Dropout(0.0),
        nn.Linear(fc_dim, fc_dim), nn.ReLU(), nn.Dropout(0.0),
        nn.Linear(fc_dim, tp_k.weight_numel),
    ).to(device)
    dot = o3.FullyConnectedTensorProduct(key_irreps, key_irreps, "0e").to(device)

with torch.no_grad():
    queries = h_q(f_in)  # (N, 10)
    keys = tp_k(f_in[src], edge_sh, fc_k(edge_attr))  # (E, 10)
    logits = dot(queries[dst], keys)  # (E, 1)
    alpha = edge_softmax(logits, dst, num_nodes)  # (E, 1)
    attended = scatter(alpha * messages, dst, dim=0, dim_size=num_nodes)  # (N, 32), replaces `aggregated`
print("key irreps:", key_irreps, "| queries:", tuple(queries.shape), "| keys:", tuple(keys.shape),
      "| logits:", tuple(logits.shape), "| attended:", tuple(attended.shape))
alpha_sums = scatter(alpha, dst, dim=0, dim_size=num_nodes)
print("weights of each target sum to 1:", torch.allclose(alpha_sums, torch.ones_like(alpha_sums)))
print("dot is invariant:", check_equivariance(dot, [queries[dst], keys], [key_irreps, key_irreps], "0e"))

# %% [markdown]
# The rest of the layer is unchanged. The attention layer by hand, with the extra modules under their names:

# %%
parts_attention = nn.ModuleDict(
    dict(lin_in=lin_in, tp=tp, fc=fc, lin_out=lin_out, h_q=h_q, tp_k=tp_k, fc_k=fc_k, dot=dot, batch_norm=batch_norm)
).eval()


def attention_layer_by_hand(
    parts: nn.ModuleDict, f: Tensor, edge_index: Tensor, edge_attr: Tensor, edge_sh: Tensor
) -> Tensor:
    """The layer with attention: softmax-weighted values instead of the mean of step 5."""
    src, dst = edge_index
    f_in = parts.lin_in(f)
    values = parts.tp(f_in[src], edge_sh, parts.fc(edge_attr))
    keys = parts.tp_k(f_in[src], edge_sh, parts.fc_k(edge_attr))
    alpha = edge_softmax(parts.dot(parts.h_q(f_in)[dst], keys), dst, f.shape[0])
    out = parts.lin_out(scatter(alpha * values, dst, dim=0, dim_size=f.shape[0]))
    return parts.batch_norm(out + F.pad(f, (0, out.shape[1] - f.shape[1])))


# %% [markdown]
# ## The package's class
#
# `tpconv_lite.conv_layer.TensorProductConvLayer` holds these modules under these names and computes the same
# thing. Its constructor and `forward` take the original's arguments. The constructor builds the modules of steps 1
# to 7, plus those of the attention branch when asked; `forward` checks its inputs (with errors that name what was
# expected), applies `lin_in`, aggregates the messages (their mean, or the attention-weighted sum), then applies
# `lin_out`, the residual and the batch norm. In training mode it runs the message passing (steps 3 to 5, or the
# attention branch) under gradient checkpointing, the subject of the last section. For speed, it computes the
# messages `tp(f_in[src], Y, fc(e))`, and with attention the logits `dot(q[dst], k)`, by other routes than calling
# `tp` and `dot` (chapter 10); the numbers are the same up to rounding, which is why the comparisons below allow a
# tolerance of 1e-12 in float64. Without autograd, as when sampling, it takes the edges `edge_chunk` at a time
# (16384 by default), so that a large graph never holds the per-edge weights of all its edges at once. It needs:

# %%
from torch.utils.checkpoint import checkpoint

from tpconv_lite.fast_tp import bilinear_matrix, linear_weighted_tensor_product, linear_weighted_tensor_products


# %%
# Package code: tpconv_lite.conv_layer._edge_mlp
def _edge_mlp(n_edge_features: int, fc_dim: int, n_out: int, dropout: float) -> nn.Sequential:
    """The MLP from invariant edge features to tensor-product weights: (E, n_edge_features) -> (E, n_out)."""
    return nn.Sequential(
        nn.Linear(n_edge_features, fc_dim),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(fc_dim, fc_dim),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(fc_dim, n_out),
    )


# %%
# Package code: tpconv_lite.conv_layer._padding_lines_up
def _padding_lines_up(irreps_in: o3.Irreps, irreps_out: o3.Irreps) -> bool:
    """Whether zero-padding (or cutting) features of ``irreps_in`` to the width of ``irreps_out`` is equivariant.

    It is when the irreps of the narrower side, copy by copy, are the first irreps of the wider side.
    """
    copies_in = [ir for mul, ir in irreps_in for _ in range(mul)]
    copies_out = [ir for mul, ir in irreps_out for _ in range(mul)]
    if irreps_in.dim <= irreps_out.dim:
        return copies_out[: len(copies_in)] == copies_in
    return copies_in[: len(copies_out)] == copies_out


# %%
# Package code: tpconv_lite.conv_layer._cat
def _cat(parts: list[Tensor]) -> Tensor:
    """``torch.cat(parts)``, without a copy when there is one part."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


# %%
# Package code: tpconv_lite.conv_layer.TensorProductConvLayer
class TensorProductConvLayer(nn.Module):
    """Equivariant graph convolution: a tensor product of node features and edge harmonics, weighted per edge.

    Args:
        in_irreps: irreps of the input node features.
        in_tp_irreps: irreps of the features entering the tensor product (after ``lin_in``).
        out_tp_irreps: irreps of the tensor product's output.
        sh_irreps: irreps of the edge spherical harmonics.
        out_irreps: irreps of the output node features.
        n_edge_features: width of the invariant edge features.
        batch_norm: end with an e3nn ``BatchNorm`` of ``out_irreps`` (on the residual path only).
        dropout: dropout probability inside the edge MLPs.
        node_feature_dim: unused; accepted as in the original.
        fc_dim: hidden width of the edge MLPs.
        lin_self: residual through a learned ``o3.Linear(in_irreps, out_irreps)`` instead of zero-padding.
        attention: aggregate with a softmax over the incoming edges (keys have half the multiplicities of
            ``in_tp_irreps``) instead of ``reduce``.

    Attributes:
        checkpointing: recompute the message passing during backward instead of storing its intermediates, in
            training mode (True by default, as in the original). Outputs and gradients are the same either way.
        edge_chunk: with autograd off (under ``torch.no_grad()``, as when sampling), compute the messages of at
            most this many edges at a time (16384 by default; 0: all at once). The largest per-edge block of
            weights then stays under 21 MB at EigenFold's sizes, where all edges at once take 115 MB for a dense
            graph of 300 residues and 2.9 GB for 1500: the weights no longer grow with the graph, and on a
            CPU glibc's allocator no longer maps fresh memory, page by page, at each call for blocks above 32 MiB
            (a cost that grows with the graph). The same numbers either way.

    Example:
        >>> layer = TensorProductConvLayer("4x0e", "2x0e", "2x0e + 1x1o", "1x0e + 1x1o", "4x0e + 1x1o", 3)
        >>> edge_index = torch.tensor([[0, 1], [1, 0]])
        >>> layer(torch.randn(2, 4), edge_index, torch.randn(2, 3), torch.randn(2, 4)).shape
        torch.Size([2, 7])
    """

    def __init__(
        self,
        in_irreps: o3.Irreps | str,
        in_tp_irreps: o3.Irreps | str,
        out_tp_irreps: o3.Irreps | str,
        sh_irreps: o3.Irreps | str,
        out_irreps: o3.Irreps | str,
        n_edge_features: int,
        batch_norm: bool = False,
        dropout: float = 0.0,
        node_feature_dim: int = 4,
        fc_dim: int = 32,
        lin_self: bool = False,
        attention: bool = False,
    ) -> None:
        super().__init__()
        self.in_irreps = o3.Irreps(in_irreps)
        self.sh_irreps = o3.Irreps(sh_irreps)
        self.out_irreps = o3.Irreps(out_irreps)
        self.n_edge_features = n_edge_features
        self.attention = attention
        self.checkpointing = True
        self.edge_chunk = 16384

        self.lin_in = o3.Linear(self.in_irreps, in_tp_irreps, internal_weights=True)
        self.tp = o3.FullyConnectedTensorProduct(in_tp_irreps, self.sh_irreps, out_tp_irreps, shared_weights=False)
        self.fc = _edge_mlp(n_edge_features, fc_dim, self.tp.weight_numel, dropout)
        self.lin_out = o3.Linear(out_tp_irreps, self.out_irreps, internal_weights=True)
        self.lin_self = o3.Linear(self.in_irreps, self.out_irreps, internal_weights=True) if lin_self else None
        if attention:
            key_irreps = o3.Irreps([(mul // 2, ir) for mul, ir in o3.Irreps(in_tp_irreps)])
            self.h_q = o3.Linear(in_tp_irreps, key_irreps)
            self.tp_k = o3.FullyConnectedTensorProduct(in_tp_irreps, self.sh_irreps, key_irreps, shared_weights=False)
            self.fc_k = _edge_mlp(n_edge_features, fc_dim, self.tp_k.weight_numel, dropout)
            self.dot = o3.FullyConnectedTensorProduct(key_irreps, key_irreps, "0e")
        self.batch_norm = BatchNorm(self.out_irreps) if batch_norm else None
        self._padding_lines_up = _padding_lines_up(self.in_irreps, self.out_irreps)
        self._leading_scalars = 0  # the scalars 0e at the start of in_irreps: the most that end_scalars may take
        for mul, ir in self.in_irreps:
            if ir != o3.Irrep("0e"):
                break
            self._leading_scalars += mul

    def forward(
        self,
        node_attr: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor,
        edge_sh: Tensor,
        ones: Tensor | None = None,
        residual: bool = True,
        out_nodes: int | None = None,
        reduce: str = "mean",
        *,
        end_scalars: int = 0,
    ) -> Tensor:
        """Update the node features from the incoming edges.

        Args:
            node_attr: (N, in_irreps.dim) node features.
            edge_index: (2, E) long, row 0 sources ``j`` (< N), row 1 targets ``i`` (< out_nodes, and < N with
                attention, whose queries come from the targets' features).
            edge_attr: (E, n_edge_features) invariant edge features.
            edge_sh: (E, sh_irreps.dim) spherical harmonics of the edge vectors.
            ones: unused; accepted as in the original.
            residual: add the input (through ``lin_self`` or zero-padded) and apply the batch norm.
            out_nodes: number of target nodes (default N); must be N when ``residual`` is True.
            reduce: ``"mean"``, ``"sum"`` or ``"max"`` over the incoming messages (ignored with attention).
            end_scalars: ``k``, to append the scalars of both ends to the edge features here. EigenFold's model
                feeds each layer ``cat([e, node_attr[src, :k], node_attr[dst, :k]])``; with ``end_scalars=k``,
                ``edge_attr`` is ``e`` alone, (E, n_edge_features - 2k), and the edge MLPs' first linear layer
                maps the three parts separately, the ends once per node: the same numbers up to float rounding,
                without the (E, n_edge_features) concatenation. The first ``k`` components of ``in_irreps`` must be
                scalars ``0e``.

        Returns:
            (out_nodes, out_irreps.dim) node features. Nodes without incoming edges get zero messages.
        """
        out_nodes = self._check_inputs(
            node_attr, edge_index, edge_attr, edge_sh, residual, out_nodes, reduce, end_scalars
        )
        node_attr_in = self.lin_in(node_attr)
        edge_src, edge_dst = edge_index
        ends = node_attr[:, :end_scalars] if end_scalars else None

        aggregate = self._attend if self.attention else self._convolve
        args = (node_attr_in, edge_src, edge_dst, edge_sh, edge_attr, ends, out_nodes, reduce)
        if self.training and self.checkpointing:
            out = checkpoint(aggregate, *args, use_reentrant=False)
        else:
            out = aggregate(*args)
        out = self.lin_out(out)

        if not residual:
            return out
        if self.lin_self is not None:
            out = out + self.lin_self(node_attr)
        else:
            out = out + F.pad(node_attr, (0, out.shape[-1] - node_attr.shape[-1]))
        if self.batch_norm is not None:
            out = self.batch_norm(out)
        return out

    def _convolve(
        self,
        node_attr_in: Tensor,
        edge_src: Tensor,
        edge_dst: Tensor,
        edge_sh: Tensor,
        edge_attr: Tensor,
        ends: Tensor | None,
        out_nodes: int,
        reduce: str,
    ) -> Tensor:
        """Messages ``tp(x_j, Y_ij, fc(e_ij))`` reduced onto the targets: (out_nodes, out_tp_irreps.dim).

        The same numbers as calling ``tp`` on ``fc``'s output, up to float rounding, computed by
        :func:`~tpconv_lite.fast_tp.linear_weighted_tensor_product`: the MLP's last linear layer is evaluated block
        by block, in the order in which the tensor product uses its weights. With autograd off, the messages are
        computed ``edge_chunk`` edges at a time (:meth:`_edge_slices`) and reduced together.
        """

        def messages(edges: slice) -> Tensor:  # (number of edges, out_tp_irreps.dim)
            src, dst = edge_src[edges], edge_dst[edges]
            hidden = self._hidden(self.fc, edge_attr[edges], ends, src, dst)
            sources = node_attr_in.index_select(0, src)  # node_attr_in[src]; see _hidden
            return linear_weighted_tensor_product(self.tp, sources, edge_sh[edges], hidden, self.fc[-1])

        all_messages = _cat([messages(edges) for edges in self._edge_slices(len(edge_src))])
        return scatter(all_messages, edge_dst, dim=0, dim_size=out_nodes, reduce=reduce)

    def _attend(
        self,
        node_attr_in: Tensor,
        edge_src: Tensor,
        edge_dst: Tensor,
        edge_sh: Tensor,
        edge_attr: Tensor,
        ends: Tensor | None,
        out_nodes: int,
        reduce: str,
    ) -> Tensor:
        """Values weighted by a softmax of ``dot(query_i, key_ij)`` over the incoming edges: (out_nodes, dim).

        ``reduce`` is ignored: the weights of each target already sum to one. With autograd off, the logits and
        values are computed ``edge_chunk`` edges at a time (:meth:`_edge_slices`), the softmax over all of them.
        """
        # dot(query_i, key_ij) for every edge, through the matrix of the bilinear map `dot`: a product per node
        query_m = torch.einsum("ni,ijo->njo", self.h_q(node_attr_in), bilinear_matrix(self.dot))  # (N, key dim, 1)

        def logits_and_values(edges: slice) -> tuple[Tensor, Tensor]:  # (number of edges, 1) and (..., dim)
            src, dst = edge_src[edges], edge_dst[edges]
            keys, values = linear_weighted_tensor_products(
                [(tp, self._hidden(fc, edge_attr[edges], ends, src, dst), fc[-1]) for tp, fc in
                 ((self.tp_k, self.fc_k), (self.tp, self.fc))],
                node_attr_in.index_select(0, src),
                edge_sh[edges],
            )  # fmt: skip
            return (query_m.index_select(0, dst) * keys.unsqueeze(-1)).sum(1), values

        chunks = [logits_and_values(edges) for edges in self._edge_slices(len(edge_src))]
        logits, values = _cat([chunk[0] for chunk in chunks]), _cat([chunk[1] for chunk in chunks])
        alpha = edge_softmax(logits, edge_dst, out_nodes)
        return scatter(alpha * values, edge_dst, dim=0, dim_size=out_nodes)

    def _edge_slices(self, n_edges: int) -> list[slice]:
        """When autograd is off and there are more than ``edge_chunk`` edges, the fewest slices of at most that many,
        of equal sizes (to one edge); else one slice of all edges."""
        if torch.is_grad_enabled() or not self.edge_chunk or n_edges <= self.edge_chunk:
            return [slice(None)]
        n_slices = -(-n_edges // self.edge_chunk)
        bounds = [n_edges * i // n_slices for i in range(n_slices + 1)]
        return [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]

    @staticmethod
    def _hidden(
        mlp: nn.Sequential, edge_attr: Tensor, ends: Tensor | None, edge_src: Tensor, edge_dst: Tensor
    ) -> Tensor:
        """``mlp[:-1]``, the edge MLP but its last linear layer, of the edge features: (E, fc_dim).

        With ``ends`` (N, k), the features are ``cat([edge_attr, ends[edge_src], ends[edge_dst]])``: the first linear
        layer maps the three parts with the matching columns of its weight, ``ends`` once per node, and adds them.

        The per-node rows go to the edges with ``index_select``: the same gather as ``by_source[edge_src]``, whose
        backward pass sums into the nodes with ``index_add_``, several times faster on a CPU than the accumulating
        ``index_put_`` of indexing.
        """
        if ends is None:
            return mlp[:-1](edge_attr)
        first, m, k = mlp[0], edge_attr.shape[1], ends.shape[1]
        by_source = F.linear(ends, first.weight[:, m : m + k])  # (N, fc_dim)
        by_target = F.linear(ends, first.weight[:, m + k :])
        pre = F.linear(edge_attr, first.weight[:, :m], first.bias)
        pre = pre + by_source.index_select(0, edge_src) + by_target.index_select(0, edge_dst)
        return mlp[1:-1](pre)

    def _check_inputs(
        self,
        node_attr: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor,
        edge_sh: Tensor,
        residual: bool,
        out_nodes: int | None,
        reduce: str,
        end_scalars: int,
    ) -> int:
        """Raise a ValueError/TypeError naming what was expected and what came; return the number of targets."""
        tensors = {"node_attr": node_attr, "edge_index": edge_index, "edge_attr": edge_attr, "edge_sh": edge_sh}
        for name, x in tensors.items():
            if not isinstance(x, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        parameter = self.fc[0].weight
        for name, x in tensors.items():
            if x.device != parameter.device:
                raise ValueError(f"{name} is on {x.device} but the layer's parameters are on {parameter.device}")
        for name in ("node_attr", "edge_attr", "edge_sh"):
            if tensors[name].dtype != parameter.dtype:
                raise TypeError(f"{name} must have the parameters' dtype {parameter.dtype}, got {tensors[name].dtype}")

        if node_attr.dim() != 2 or node_attr.shape[1] != self.in_irreps.dim:
            raise ValueError(
                f"node_attr must have shape (N, {self.in_irreps.dim}) for in_irreps {self.in_irreps}, "
                f"got {tuple(node_attr.shape)}"
            )
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
        if edge_index.dtype != torch.long:
            raise TypeError(f"edge_index must have dtype torch.int64, got {edge_index.dtype}")
        n, e = node_attr.shape[0], edge_index.shape[1]
        if not isinstance(end_scalars, int) or not 0 <= 2 * end_scalars <= self.n_edge_features:
            raise ValueError(
                f"end_scalars must be an integer from 0 to n_edge_features / 2 = {self.n_edge_features // 2}, "
                f"got {end_scalars!r}"
            )
        if end_scalars > self._leading_scalars:
            raise ValueError(
                f"end_scalars={end_scalars} appends the first {end_scalars} node features to the edge features, so "
                f"they must be scalars 0e; in_irreps is {self.in_irreps}"
            )
        width = self.n_edge_features - 2 * end_scalars
        if edge_attr.shape != (e, width):
            what = "n_edge_features" if not end_scalars else f"n_edge_features - 2 end_scalars = {width}"
            raise ValueError(f"edge_attr must have shape (E, {what}) = ({e}, {width}), got {tuple(edge_attr.shape)}")
        if edge_sh.shape != (e, self.sh_irreps.dim):
            raise ValueError(
                f"edge_sh must have shape (E, {self.sh_irreps.dim}) = ({e}, {self.sh_irreps.dim}) for sh_irreps "
                f"{self.sh_irreps}, got {tuple(edge_sh.shape)}"
            )
        if reduce not in ("mean", "sum", "max"):
            raise ValueError(f"reduce must be 'mean', 'sum' or 'max', got {reduce!r}")

        if out_nodes is None:
            out_nodes = n
        elif int(out_nodes) != out_nodes or out_nodes < 1:
            raise ValueError(f"out_nodes must be None or a positive integer, got {out_nodes!r}")
        out_nodes = int(out_nodes)
        if residual and out_nodes != n:
            raise ValueError(
                f"the residual adds node_attr ({n} rows) to the output ({out_nodes} rows): out_nodes must be {n}, "
                f"got {out_nodes}; pass residual=False"
            )
        if residual and self.lin_self is None and not self._padding_lines_up:
            raise ValueError(
                f"a zero-padded residual needs in_irreps {self.in_irreps} and out_irreps {self.out_irreps} to start "
                "with the same irreps; use lin_self=True or residual=False"
            )

        if e:
            edge_src, edge_dst = edge_index
            n_targets = min(n, out_nodes) if self.attention else out_nodes
            bounds = (("edge_index[0] (sources)", edge_src, n), ("edge_index[1] (targets)", edge_dst, n_targets))
            for name, index, size in bounds:
                low, high = (int(value) for value in torch.aminmax(index))
                if low < 0 or high >= size:
                    raise ValueError(f"{name} must lie in [0, {size}), got values in [{low}, {high}]")
        return out_nodes

# %% [markdown]
# Load the hand-made modules into the class, strictly (every key must match), and compare, without and with
# attention; then the chapter's class with the package's:

# %%
# NBVAL_CHECK_OUTPUT
layer_args = (irreps_in, irreps_in_tp, irreps_out_tp, irreps_sh, irreps_out, 3 * ns)
for attention, hand_parts, by_hand in [(False, parts, layer_by_hand), (True, parts_attention, attention_layer_by_hand)]:
    with default_dtype(torch.float64):
        layer = TensorProductConvLayer(*layer_args, batch_norm=True, fc_dim=fc_dim, attention=attention).to(device)
        package_layer = tpconv_lite.TensorProductConvLayer(
            *layer_args, batch_norm=True, fc_dim=fc_dim, attention=attention
        ).to(device)
    print(f"attention={attention}:", layer.load_state_dict(hand_parts.state_dict()))
    package_layer.load_state_dict(layer.state_dict())
    with torch.no_grad():
        expected = by_hand(hand_parts, f, edge_index, edge_attr, edge_sh)
        out = layer.eval()(f, edge_index, edge_attr, edge_sh)
        out_package = package_layer.eval()(f, edge_index, edge_attr, edge_sh)
    print("  class == by hand:", torch.allclose(out, expected, atol=1e-12),
          "| chapter's class == package's:", torch.allclose(out_package, out, atol=1e-12))

# %% [markdown]
# One more argument, `end_scalars`, serves the score model of chapter 9. EigenFold's model feeds every layer the
# edge scalars followed by the scalars of both ends, `cat([e, x[src, :ns], x[dst, :ns]])`, as `edge_attr` does here:
# an (E, 3 ns) tensor per layer, which each layer's checkpoint keeps until the backward pass. With `end_scalars=ns`
# the layer takes `e` alone, (E, ns), and `_hidden` maps the three parts with the matching columns of the first
# linear layer's weight, the ends once per node instead of once per edge. The numbers are the same, up to rounding:

# %%
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    appended = layer(f, edge_index, edge_attr[:, :ns], edge_sh, end_scalars=ns)
    print("end_scalars=ns == the concatenated edge features:", torch.allclose(appended, out, atol=1e-12))

# %% [markdown]
# And without autograd, the edges in chunks of at most 10 (the class's `_edge_slices`) give the same numbers as all
# at once:

# %%
# NBVAL_CHECK_OUTPUT
layer.edge_chunk = 10
with torch.no_grad():
    n_chunks = len(layer._edge_slices(edge_index.shape[1]))
    chunked = layer(f, edge_index, edge_attr, edge_sh)
layer.edge_chunk = 16384
print(f"{n_chunks} chunks of {edge_index.shape[1]} edges == all at once:", torch.allclose(chunked, out, atol=1e-12))

# %% [markdown]
# From here on the chapter uses the package's class.

# %%
from tpconv_lite import TensorProductConvLayer

# %% [markdown]
# ## Loading the original's weights
#
# A model trained with EigenFold's code saves a `state_dict` whose keys are the attribute names of its layers. The
# package's layer registers the same e3nn modules under the same names, so it loads such a file as it is. To check,
# here is the original layer, written out with its structure and names. The package keeps this transcription as
# `tpconv_lite.reference.ReferenceLayer`, the contender that chapter 10's benchmark times ours against. The only
# changes: the scatters go through `tpconv_lite.graph.scatter` (torch_scatter's, as in the original, when it is installed),
# and the checkpoint names `use_reentrant=True`, the default of the torch versions the original was written for:

# %%
from tpconv_lite import graph


# %%
# Package code: tpconv_lite.reference.ReferenceLayer
class ReferenceLayer(nn.Module):
    """EigenFold's TensorProductConvLayer (``model/resi_score_model.py``), transcribed with its quirks.

    The scatter is torch_scatter's, as in the original, called through ``tpconv_lite.graph.scatter`` (its pure-torch
    twin when torch_scatter is missing); the checkpoint names ``use_reentrant=True``, the default of the torch
    versions the original was written for.
    """

    def __init__(
        self,
        in_irreps,
        in_tp_irreps,
        out_tp_irreps,
        sh_irreps,
        out_irreps,
        n_edge_features,
        batch_norm=False,
        dropout=0.0,
        node_feature_dim=4,
        fc_dim=32,
        lin_self=False,
        attention=False,
    ):
        super().__init__()

        def mlp(n_out):
            return nn.Sequential(
                nn.Linear(n_edge_features, fc_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(fc_dim, fc_dim),
                nn.ReLU(), nn.Dropout(dropout), nn.Linear(fc_dim, n_out),
            )  # fmt: skip

        self.nf = node_feature_dim
        self.lin_in = o3.Linear(in_irreps, in_tp_irreps, internal_weights=True)
        self.tp = tp = o3.FullyConnectedTensorProduct(in_tp_irreps, sh_irreps, out_tp_irreps, shared_weights=False)
        self.lin_out = o3.Linear(out_tp_irreps, out_irreps, internal_weights=True)
        self.lin_self = o3.Linear(in_irreps, out_irreps, internal_weights=True) if lin_self else False
        self.attention = attention
        if attention:
            key_irreps = [(mul // 2, ir) for mul, ir in o3.Irreps(in_tp_irreps)]
            self.h_q = o3.Linear(in_tp_irreps, key_irreps)
            self.tp_k = tp_k = o3.FullyConnectedTensorProduct(in_tp_irreps, sh_irreps, key_irreps, shared_weights=False)
            self.fc_k = self.fc = mlp(tp_k.weight_numel)
            self.dot = o3.FullyConnectedTensorProduct(key_irreps, key_irreps, "0e")
        self.fc = mlp(tp.weight_numel)
        self.batch_norm = BatchNorm(out_irreps) if batch_norm else None

    def forward(
        self, node_attr, edge_index, edge_attr, edge_sh, ones=None, residual=True, out_nodes=None, reduce="mean"
    ):
        backend = "torch" if graph.torch_scatter is None else "pyg"
        node_attr_in = self.lin_in(node_attr)
        edge_src, edge_dst = edge_index
        out_nodes = out_nodes or node_attr.shape[0]
        if self.attention:

            def ckpt_forward(node_attr_in, edge_src, edge_dst, edge_sh, edge_attr):
                q = self.h_q(node_attr_in)
                k = self.tp_k(node_attr_in[edge_src], edge_sh, self.fc_k(edge_attr))
                v = self.tp(node_attr_in[edge_src], edge_sh, self.fc(edge_attr))
                a = self.dot(q[edge_dst], k)
                max_ = scatter(a, edge_dst, dim=0, dim_size=out_nodes, reduce="max", backend=backend)
                a = (a - max_[edge_dst]).exp()
                z = scatter(a, edge_dst, dim=0, dim_size=out_nodes, backend=backend)
                a = a / z[edge_dst]
                return scatter(a * v, edge_dst, dim=0, dim_size=out_nodes, backend=backend)

        else:

            def ckpt_forward(node_attr_in, edge_src, edge_dst, edge_sh, edge_attr):
                tp = self.tp(node_attr_in[edge_src], edge_sh, self.fc(edge_attr))
                return scatter(tp, edge_dst, dim=0, dim_size=out_nodes, reduce=reduce, backend=backend)

        if self.training:
            out = torch.utils.checkpoint.checkpoint(
                ckpt_forward, node_attr_in, edge_src, edge_dst, edge_sh, edge_attr, use_reentrant=True
            )
        else:
            out = ckpt_forward(node_attr_in, edge_src, edge_dst, edge_sh, edge_attr)
        out = self.lin_out(out)
        if not residual:
            return out
        if self.lin_self:
            out = out + self.lin_self(node_attr)
        else:
            out = out + F.pad(node_attr, (0, out.shape[-1] - node_attr.shape[-1]))
        if self.batch_norm:
            out = self.batch_norm(out)
        return out


# %% [markdown]
# Its keys, with every option on. `o3.Linear` stores an empty `bias` and an `output_mask` (which outputs some path
# reaches); the tensor products with `shared_weights=False` store an empty `weight`, and `tp` and `tp_k` store the
# Wigner 3j coefficients of their paths whose three degrees are all at least 1 (`_w3j_1_1_1` for $1 \otimes 1 \to 1$,
# `_w3j_1_2_1` for $1 \otimes 2 \to 1$). One quirk: the original writes `self.fc_k = self.fc = ...` and then rebinds
# `fc`, so the key MLP is saved under `fc_k` and the value MLP under `fc`, in the position `fc` took first.

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    original = ReferenceLayer(*layer_args, batch_norm=True, fc_dim=fc_dim, lin_self=True, attention=True).to(device)
    ours = TensorProductConvLayer(*layer_args, batch_norm=True, fc_dim=fc_dim, lin_self=True, attention=True).to(device)
parameter_names = {name for name, _ in original.named_parameters()}
for name, tensor in original.state_dict().items():
    kind = "parameter" if name in parameter_names else "buffer"
    print(f"  {name:50s} {str(tuple(tensor.shape)):10s} {kind}")
same = {k: v.shape for k, v in original.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
print("same keys and shapes:", same, "| same order:", list(original.state_dict()) == list(ours.state_dict()))


# %% [markdown]
# Same keys, same shapes; only the order differs, because the package registers `fc` right after `tp`. Loading goes
# by name, so the order does not matter. Give the original random weights and batch-norm statistics (so that no
# weight is a harmless 0 or 1), load its `state_dict` into the package's layer strictly, and compare outputs and
# gradients in float64, once with neither attention nor `lin_self` and once with both, in evaluation and in
# training mode (batch statistics, and the checkpoint):

# %%
# NBVAL_CHECK_OUTPUT
def randomize_(module: nn.Module, seed: int) -> None:
    """Random parameters and batch-norm statistics (variances kept positive); the other buffers stay."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        for name, buffer in module.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=g, dtype=buffer.dtype))
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=g, dtype=buffer.dtype) + 0.5)


def output_and_gradients(layer: nn.Module, inputs: tuple[Tensor, ...]) -> dict[str, Tensor]:
    """The output, and the gradients of the node features and of every parameter (by name), of a fixed loss."""
    f = inputs[0].detach().clone().requires_grad_(True)
    layer.zero_grad()
    out = layer(f, *inputs[1:])
    projection = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
    (out * projection).sum().backward()
    return {"output": out.detach(), "input": f.grad, **{name: p.grad for name, p in layer.named_parameters()}}


inputs = (f, edge_index, edge_attr, edge_sh)
for attention, lin_self in [(False, False), (True, True)]:
    options = dict(batch_norm=True, fc_dim=fc_dim, lin_self=lin_self, attention=attention)
    with default_dtype(torch.float64):
        original = ReferenceLayer(*layer_args, **options).to(device)
        ours = TensorProductConvLayer(*layer_args, **options).to(device)
    randomize_(original, seed=1)
    ours.load_state_dict(original.state_dict())  # strict: raises if a key is missing or unexpected
    agree = []
    for training in (False, True):
        a = output_and_gradients(original.train(training), inputs)
        b = output_and_gradients(ours.train(training), inputs)
        agree.append(a.keys() == b.keys() and all(bool((a[k] - b[k]).abs().max() < 1e-10) for k in a))
    print(f"attention={attention!s:5} lin_self={lin_self!s:5}: outputs and gradients equal to 1e-10: "
          f"eval {agree[0]}, train {agree[1]}")

# %% [markdown]
# ## A stack of layers, the EigenFold way
#
# EigenFold's score model stacks `resi_conv_layers` layers (six by default) whose irreps grow along a fixed
# sequence. The code writes each entry as a list of `(l, p)` pairs, the 2019 `Rs` lists of chapter 1 without their
# multiplicities; for its default `order=1`:
#
# | entry | `(l, p)` pairs | irreps |
# |---|---|---|
# | 0 | `[(0, 1)]` | `0e` |
# | 1 | `[(0, 1), (1, -1)]` | `0e + 1o` |
# | 2 | `[(0, 1), (1, -1), (1, 1)]` | `0e + 1o + 1e` |
# | 3 | `[(0, 1), (1, -1), (1, 1), (0, -1)]` | `0e + 1o + 1e + 0o` |
#
# Layer $k$ maps entry $k$ to entry $k + 1$, and the last entry repeats in deeper stacks. A helper, `fill_mults`,
# then gives `0e` the multiplicity `ns` (`ntps` in the tensor product) and every other irrep `nv` (`ntpv`). Each entry
# begins with the one before it, so the zero-padded residual always lines up. The edge features are `3 ns` wide, as
# in step 4. The layer we built by hand is layer 1:

# %%
# NBVAL_CHECK_OUTPUT
irrep_seq = [[(0, 1)], [(0, 1), (1, -1)], [(0, 1), (1, -1), (1, 1)], [(0, 1), (1, -1), (1, 1), (0, -1)]]


def fill_mults(n_scalars: int, n_others: int, irs: list[tuple[int, int]]) -> o3.Irreps:
    """EigenFold's fill_mults: multiplicity n_scalars for 0e, n_others for every other (l, p)."""
    return o3.Irreps([(n_scalars if (l, p) == (0, 1) else n_others, (l, p)) for l, p in irs])


def build_stack(num_layers: int, ns: int, nv: int, ntps: int, ntpv: int, fc_dim: int, **options) -> nn.ModuleList:
    """num_layers TensorProductConvLayers along irrep_seq, as EigenFold's score model builds them."""
    layers = []
    for i in range(num_layers):
        in_seq, out_seq = irrep_seq[min(i, len(irrep_seq) - 1)], irrep_seq[min(i + 1, len(irrep_seq) - 1)]
        layers.append(TensorProductConvLayer(
            in_irreps=fill_mults(ns, nv, in_seq), in_tp_irreps=fill_mults(ntps, ntpv, in_seq),
            out_tp_irreps=fill_mults(ntps, ntpv, out_seq), sh_irreps=irreps_sh, out_irreps=fill_mults(ns, nv, out_seq),
            n_edge_features=3 * ns, fc_dim=fc_dim, **options,
        ))
    return nn.ModuleList(layers)


with default_dtype(torch.float64):
    stack = build_stack(4, ns, nv, ntps, ntpv, fc_dim).to(device).eval()
print(f"{'layer':5s}  {'in_irreps':22s} {'in_tp_irreps':21s} {'out_tp_irreps':21s} out_irreps")
for i, layer in enumerate(stack):
    print(f"{i:<5d}  {str(layer.in_irreps):22s} {str(layer.lin_in.irreps_out):21s} {str(layer.tp.irreps_out):21s} "
          f"{layer.out_irreps}")
print("layer 1 is the layer built by hand:", (stack[1].in_irreps, stack[1].out_irreps) == (irreps_in, irreps_out))

# %% [markdown]
# The parameters, per submodule (`tp` and `tp_k` own none: their weights come from `fc` and `fc_k`), without
# attention and with it:

# %%
# NBVAL_CHECK_OUTPUT
def count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


with default_dtype(torch.float64):
    stack_attention = build_stack(4, ns, nv, ntps, ntpv, fc_dim, attention=True).to(device).eval()
header = f"{'layer':5s} {'tp weights/edge':>15s} {'lin_in':>7s} {'fc':>6s} {'lin_out':>7s} {'total':>6s} |"
print(header, f"{'h_q':>4s} {'fc_k':>5s} {'dot':>4s} {'total with attention':>20s}")
for i, (layer, layer_att) in enumerate(zip(stack, stack_attention)):
    print(f"{i:<5d} {layer.tp.weight_numel:15d} {count(layer.lin_in):7d} {count(layer.fc):6d} "
          f"{count(layer.lin_out):7d} {count(layer):6d} | {count(layer_att.h_q):4d} {count(layer_att.fc_k):5d} "
          f"{count(layer_att.dot):4d} {count(layer_att):20d}")
print(f"{'all':5s} {'':38s} {count(stack):6d} | {'':15s} {count(stack_attention):20d}")
print(f"share of the parameters in fc: {sum(count(layer.fc) for layer in stack) / count(stack):.0%}")

# %%

fig, ax = plt.subplots(figsize=(7, 3.2))
bottom = torch.zeros(len(stack_attention))
for name in ["lin_in", "fc", "lin_out", "h_q", "fc_k", "dot"]:
    counts = torch.tensor([float(count(getattr(layer, name))) for layer in stack_attention])
    ax.bar(range(len(stack_attention)), counts, bottom=bottom, label=name)
    bottom += counts
ax.set_xticks(range(len(stack_attention)), [f"layer {i}" for i in range(len(stack_attention))])
ax.set_ylabel("parameters")
ax.set_title("Parameters per layer and submodule (attention on): fc dominates")
ax.legend(ncols=3, fontsize=8)
plt.show()

# %% [markdown]
# Almost everything is in `fc`, and most of that in its last linear map, which has `(fc_dim + 1) * weight_numel`
# parameters: the price of a separate set of tensor-product weights for every edge. The equivariant parts, `lin_in`
# and `lin_out`, are small. At EigenFold's default sizes (six layers, `ns=32`, `nv=4`, `ntps=16`, `ntpv=4`,
# `fc_dim=128`) the conv layers hold about half a million parameters:

# %%
# NBVAL_CHECK_OUTPUT
eigenfold_stack = build_stack(6, ns=32, nv=4, ntps=16, ntpv=4, fc_dim=128)
print("EigenFold's default conv layers:", count(eigenfold_stack), "parameters, of which in fc:",
      sum(count(layer.fc) for layer in eigenfold_stack))

# %% [markdown]
# ### Running the stack, and where its nonlinearity is
#
# EigenFold's loop gives every layer the same embedded edge features, extended by the current scalar features of the
# two ends of each edge (the first `ns` columns, the `0e` block):

# %%
def run_stack(layers: nn.ModuleList, f: Tensor, pos: Tensor, edge_index: Tensor, **kwargs) -> Tensor:
    """The layers on a graph, each fed [Gaussians of the edge length, scalars of the source, scalars of the target]."""
    src, dst = edge_index
    edge_vec = pos[src] - pos[dst]
    edge_sh = o3.spherical_harmonics(irreps_sh, edge_vec, normalize=True, normalization="component")
    edge_scalars = smearing(edge_vec.norm(dim=1)).to(pos.dtype)
    for layer in layers:
        edge_attr = torch.cat([edge_scalars, f[src, :ns], f[dst, :ns]], dim=1)
        f = layer(f, edge_index, edge_attr, edge_sh, **kwargs)
    return f


# %% [markdown]
# Is the stack more than a linear map of its input? With edge features that ignore the node features, a layer without
# batch norm is linear in them: doubling the input doubles the output. Fed its own scalars through `fc`, it is not:

# %%
# NBVAL_CHECK_OUTPUT
layer = stack[1]
with torch.no_grad():
    fixed = [layer(x, edge_index, edge_attr, edge_sh) for x in (f, 2 * f)]
    fed = [run_stack(nn.ModuleList([layer]), x, pos, edge_index) for x in (f, 2 * f)]
print("edge features fixed:                 layer(2 f) == 2 layer(f):", torch.allclose(fixed[1], 2 * fixed[0]))
print("edge features from the node scalars: layer(2 f) == 2 layer(f):", torch.allclose(fed[1], 2 * fed[0]))

# %% [markdown]
# The ReLUs of `fc` act only on invariants, which chapter 5 showed is always allowed, and the result multiplies
# equivariant tensor products: a gate in disguise, with the tensor-product weights as gates.
#
# ### Equivariance of the stack
#
# Four layers, from sixteen scalars per residue to `16x0e + 4x1o + 4x1e + 4x0o`, checked end to end in float64 under
# rotations, inversions and translations of the chain. The four pseudoscalars `0o` of the last layers come out of
# products like $1o \otimes 1e$; only the inversion tests their sign.

# %%
# NBVAL_CHECK_OUTPUT
f0 = torch.randn(num_nodes, ns, generator=generator, dtype=torch.float64).to(device)  # 16x0e per residue
reports = {}
for attention in (False, True):
    layers = stack_attention if attention else stack
    reports[attention] = check_equivariance(
        lambda f, pos: run_stack(layers, f, pos, edge_index), [f0, pos], [f"{ns}x0e", "cartesian_points"],
        str(layers[-1].out_irreps),
    )
    print(f"stack of 4, attention={attention!s:5}:", reports[attention])

# %%
# NBVAL_IGNORE_OUTPUT
for attention, report in reports.items():
    print(f"attention={attention!s:5}:", report.details())

# %% [markdown]
# ## The options
#
# ### The residual: zero padding or `lin_self`
#
# In every layer of the stack the residual is the zero-padded input: the output minus the output without residual
# (`residual=False` returns what `lin_out` gives) is `F.pad(f)`:

# %%
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    difference = layer(f, edge_index, edge_attr, edge_sh) - layer(f, edge_index, edge_attr, edge_sh, residual=False)
print("output - output without residual == zero-padded input:",
      torch.allclose(difference, F.pad(f, (0, irreps_out.dim - irreps_in.dim))))

# %% [markdown]
# Padding is equivariant only when the irreps line up. Take an input `16x0e + 4x1e` and the output
# `16x0e + 4x1o + 4x1e`: padding would add four pseudovectors to four vectors. Both turn alike under rotations, so a
# check with rotations alone passes; an inversion flips one and not the other:

# %%
# NBVAL_CHECK_OUTPUT
misaligned_in = o3.Irreps(f"{ns}x0e + {nv}x1e")
f_misaligned = torch.randn(num_nodes, misaligned_in.dim, generator=generator, dtype=torch.float64).to(device)


def pad(x: Tensor) -> Tensor:
    return F.pad(x, (0, irreps_out.dim - misaligned_in.dim))


print("rotations only: ", check_equivariance(pad, [f_misaligned], [misaligned_in], irreps_out, inversion=False))
print("with inversions:", check_equivariance(pad, [f_misaligned], [misaligned_in], irreps_out))

# %% [markdown]
# The original adds whatever the padding gives; the package refuses, and points to the alternative: `lin_self=True`
# (EigenFold's `--lin_self` option, off by default) replaces the padding by a learned equivariant linear map
# `o3.Linear(in_irreps, out_irreps)`, right for any irreps, at the cost of $16 \cdot 16 + 4 \cdot 4 = 272$ weights
# here:

# %%
# NBVAL_CHECK_OUTPUT
misaligned_args = (misaligned_in, f"{ntps}x0e + {ntpv}x1e", irreps_out_tp, irreps_sh, irreps_out, 3 * ns)
with default_dtype(torch.float64):
    padded = TensorProductConvLayer(*misaligned_args, fc_dim=fc_dim).to(device).eval()
    learned = TensorProductConvLayer(*misaligned_args, fc_dim=fc_dim, lin_self=True).to(device).eval()
try:
    run_stack(nn.ModuleList([padded]), f_misaligned, pos, edge_index)
except ValueError as error:
    print("zero padding: ValueError:", error)
print("lin_self:", count(learned.lin_self), "weights |", check_equivariance(
    lambda f, pos: run_stack(nn.ModuleList([learned]), f, pos, edge_index),
    [f_misaligned, pos], [misaligned_in, "cartesian_points"], irreps_out,
))

# %% [markdown]
# ### `out_nodes`: messages into another set of nodes
#
# DiffDock also passes messages between two graphs, for instance from the protein's residues to the ligand's atoms
# ({footcite:t}`corso2023diffdock`; its code calls the layer with `out_nodes=lig_node_attr.shape[0]`). Then
# `edge_index[0]` indexes the rows of the `node_attr` passed in (the residues) and `edge_index[1]` the `out_nodes`
# rows of the output (the atoms). An atom has no input row to add, so such a call takes `residual=False`; the package
# raises an error otherwise. Three "atoms" near the chain, listening to all twelve residues:

# %%
# NBVAL_CHECK_OUTPUT
num_atoms = 3
atom_pos = pos.mean(dim=0) + torch.randn(num_atoms, 3, generator=generator, dtype=torch.float64).to(device)
atom_f = torch.randn(num_atoms, ns, generator=generator, dtype=torch.float64).to(device)  # 16x0e per atom
residue, atom = torch.meshgrid(torch.arange(num_nodes), torch.arange(num_atoms), indexing="ij")
cross_index = torch.stack([residue.flatten(), atom.flatten()]).to(device)  # residue j -> atom i, (2, 36)


def residues_to_atoms(f: Tensor, pos: Tensor, atom_f: Tensor, atom_pos: Tensor, residual: bool = False) -> Tensor:
    """Layer 1 of the stack on the cross edges: (12, 28) residue features -> (3, 40) atom updates."""
    src, dst = cross_index
    edge_vec = pos[src] - atom_pos[dst]
    edge_sh = o3.spherical_harmonics(irreps_sh, edge_vec, normalize=True, normalization="component")
    edge_attr = torch.cat([smearing(edge_vec.norm(dim=1)), atom_f[dst, :ns], f[src, :ns]], dim=1)
    return layer(f, cross_index, edge_attr, edge_sh, residual=residual, out_nodes=num_atoms)


with torch.no_grad():
    print("atom updates:", tuple(residues_to_atoms(f, pos, atom_f, atom_pos).shape))
    try:
        residues_to_atoms(f, pos, atom_f, atom_pos, residual=True)
    except ValueError as error:
        print("with the residual: ValueError:", error)
print(check_equivariance(residues_to_atoms, [f, pos, atom_f, atom_pos],
                         [irreps_in, "cartesian_points", f"{ns}x0e", "cartesian_points"], irreps_out))

# %% [markdown]
# ### `reduce`: mean, sum, max
#
# `reduce` picks how step 5 combines the messages that reach a node: `"mean"` (the default), `"sum"` or `"max"`.
# Without the residual, what follows the aggregation is `lin_out`, linear and without bias, so the mean is the sum
# divided by the in-degree (11 for every residue here). Both are equivariant. `"max"` keeps, for each of the
# `out_tp_irreps.dim` numbers separately, its largest value over the incoming messages. For the `0e` numbers that is
# fine: the maximum of invariants is invariant. For a vector it is not: a rotation mixes its components, and the
# largest $x$ component among rotated vectors is not the $x$ component of the rotated largest. The pseudoscalars and
# vectors fail under inversion too, where their maximum becomes minus their minimum. The checker sees it:

# %%
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    mean = layer(f, edge_index, edge_attr, edge_sh, residual=False)
    total = layer(f, edge_index, edge_attr, edge_sh, residual=False, reduce="sum")
print("mean == sum / in-degree:", torch.allclose(mean, total / in_degree[:, None]))
reduce_reports = {}
for reduce in ("mean", "sum", "max"):
    reduce_reports[reduce] = check_equivariance(
        lambda f, pos: run_stack(stack, f, pos, edge_index, reduce=reduce), [f0, pos], [f"{ns}x0e", "cartesian_points"],
        str(stack[-1].out_irreps),
    )
    print(f"stack of 4, reduce={reduce!r:6}:", reduce_reports[reduce])

# %%
# NBVAL_IGNORE_OUTPUT
print("reduce='max':", reduce_reports["max"].details())

# %% [markdown]
# With attention, `reduce` is ignored: the softmax weights of each target already sum to one.

# %%
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    by_reduce = [run_stack(stack_attention, f0, pos, edge_index, reduce=reduce) for reduce in ("mean", "sum", "max")]
print("attention: the same output for every reduce:", all(torch.allclose(by_reduce[0], out) for out in by_reduce))

# %% [markdown]
# ## Checkpointing: memory for time
#
# To compute gradients, autograd keeps intermediates of the forward pass until the backward pass has used them. In
# this layer the big ones live on the edges: the activations of `fc`, the `(E, weight_numel)` weights, the gathered
# source features, the tensor product's internals and the messages. In a complete graph there are $N - 1$ edges per
# node, so these outweigh everything stored per node. In training mode the layer therefore runs its message passing
# (steps 3 to 5, or the attention branch) under `torch.utils.checkpoint` {footcite:p}`chen2016checkpointing`: the
# forward pass keeps only the inputs of that block and frees its intermediates, and the backward pass runs the block
# again to get them back just before it needs them. The original does this in every training step; the package keeps
# that default and adds a switch, `layer.checkpointing`. Outputs and gradients do not change, only memory and time.
#
# What to expect:
#
# - **One layer.** The backward pass starts with the last operations of the forward pass, and soon needs the message
#   passing's intermediates: the recomputation rebuilds all of them at once, so the peak memory is about the same as
#   without checkpointing, and the step is slower.
# - **A stack of $L$ layers.** Without checkpointing, the forward pass ends holding the intermediates of all $L$
#   layers. With it, it holds only the inputs of each block, and the backward pass rebuilds one layer's
#   intermediates at a time. The peak falls from about $L$ times one layer's intermediates towards one layer's (plus
#   what is stored per node); the price is a second forward pass through every message-passing block.
#
# To measure, a float32 stack on a complete graph of 64 residues (4032 edges), one training step (forward and
# backward) at a time, with `checkpointing` off and on. On a GPU, `torch.cuda.max_memory_allocated` gives the peak.
# On a CPU, the PyTorch profiler with `profile_memory=True` records every allocation and release of tensor memory with
# its size; their running sum is the memory held by tensors, and its maximum is the peak of the step. The package's
# `bench.memory_use` measures it that way, and `bench.time_side_by_side` times contenders run alternately after a
# warm-up: the book's one memory meter and one timer, which chapter 10's benchmark uses too.

# %%
import os

os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # keeps the profiler from printing a line at each start and stop

# %% [markdown]
# The graph, and one training step of a stack:

# %%
# NBVAL_CHECK_OUTPUT
big_n = 64
big_steps = F.normalize(torch.randn(big_n, 3, generator=generator), dim=1)
big_pos = (3.8 * big_steps.cumsum(dim=0)).to(device)
big_f = torch.randn(big_n, ns, generator=generator).to(device)  # float32, 16x0e
big_src, big_dst = torch.where(~torch.eye(big_n, dtype=torch.bool, device=device))
big_index = torch.stack([big_src, big_dst])


def training_step(layers: nn.ModuleList) -> Tensor:
    """Forward and backward of a simple loss; the gradients accumulate in the parameters' .grad."""
    out = run_stack(layers, big_f, big_pos, big_index)
    out.square().mean().backward()
    return out.detach()


stacks = {}
for num_layers in (1, 4):
    torch.manual_seed(1)
    stacks[num_layers] = build_stack(num_layers, ns, nv, ntps, ntpv, fc_dim).to(device).train()
print("edges:", big_index.shape[1], "| dtype:", big_f.dtype, "| stacks of", list(stacks), "layers")

# %% [markdown]
# First the claim that nothing but memory and time changes, on the four-layer stack:

# %%
# NBVAL_CHECK_OUTPUT
def outputs_and_gradients(layers: nn.ModuleList, checkpointing: bool) -> list[Tensor]:
    for layer in layers:
        layer.checkpointing = checkpointing
    layers.zero_grad(set_to_none=True)
    return [training_step(layers), *(p.grad for p in layers.parameters())]


plain, checkpointed = (outputs_and_gradients(stacks[4], checkpointing) for checkpointing in (False, True))
print("checkpointing on and off: outputs and gradients the same:",
      all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(plain, checkpointed)))

# %% [markdown]
# Then the measurement. The numbers are your machine's (the page shows those of the machine that built it):

# %%
# NBVAL_IGNORE_OUTPUT
def step_with(layers: nn.ModuleList, checkpointing: bool) -> None:
    for layer in layers:
        layer.checkpointing = checkpointing
    training_step(layers)
    layers.zero_grad(set_to_none=True)


measured = {}
for num_layers, layers in stacks.items():
    contenders = {str(on): functools.partial(step_with, layers, on) for on in (False, True)}
    seconds = bench.time_side_by_side(contenders, warmup=1, repeats=3, device=device)
    for checkpointing in (False, True):
        peak = bench.memory_use(contenders[str(checkpointing)], device)[0]
        measured[num_layers, checkpointing] = (peak, seconds[str(checkpointing)]["min"])
print(f"{'layers':>6s} {'checkpointing':>13s} {'peak memory (MiB)':>18s} {'time per step (ms)':>19s}")
for (num_layers, checkpointing), (peak, seconds) in measured.items():
    print(f"{num_layers:6d} {checkpointing!s:>13s} {peak / 2**20:18.1f} {1000 * seconds:19.0f}")
peak_ratio = {k: measured[k, False][0] / measured[k, True][0] for k in stacks}
time_ratio = {k: measured[k, True][1] / measured[k, False][1] for k in stacks}
for num_layers in stacks:
    print(f"{num_layers} layer(s): checkpointing divides the peak by {peak_ratio[num_layers]:.1f} "
          f"and multiplies the time by {time_ratio[num_layers]:.1f}")
glue("peak_ratio_1", peak_ratio[1], display=False)
glue("peak_ratio_4", peak_ratio[4], display=False)
glue("time_ratio_4", time_ratio[4], display=False)

# %% [markdown]
# On the machine that built this page, checkpointing divides the peak of one layer by {glue:text}`peak_ratio_1:.1f`
# (no gain) and that of four by {glue:text}`peak_ratio_4:.1f`, and makes the four-layer step
# {glue:text}`time_ratio_4:.1f` times as long (wall time of the fastest of three runs; on a busy machine that ratio
# moves from run to run). The memory claims, with bounds that leave room for the allocators of CPU and GPU:

# %%
# NBVAL_CHECK_OUTPUT
print("one layer: about the same peak (ratio within [0.8, 1.25]):", 0.8 <= peak_ratio[1] <= 1.25)
print("four layers: checkpointing lowers the peak by more than a third:", peak_ratio[4] > 1.5)

# %% [markdown]
# The step gets slower since the message passing runs twice. Four layers do not divide the peak by four: the layers differ in size (the peak with checkpointing is set by the largest), the backward pass needs
# room for its own gradients, and what each layer keeps outside its checkpoint, its `(E, 3 ns)` edge features,
# also grows with the number of edges.
#
# Whether the trade is worth it depends on what runs out first. EigenFold trains on whole protein chains with
# complete graphs, where the edges, and the memory, grow with the square of the length: memory runs out first. For
# inference the question does not arise: in evaluation mode nothing is stored for a backward pass, and the layer
# never checkpoints. Chen et al. {footcite:p}`chen2016checkpointing` go further and checkpoint only every
# $\sqrt{L}$-th segment of a deep network, for a memory that grows like $\sqrt{L}$.

# %% [markdown]
# ## Summary
#
# - `TensorProductConvLayer` computes $f'_i = \mathrm{BN}\big(f_i \oplus 0 + L_\text{out}\,\mathrm{mean}_j\,
#   \mathrm{TP}(L_\text{in} f_j, Y(\hat r_{ij}); \mathrm{MLP}(e_{ij}))\big)$: `lin_in`, spherical harmonics, an MLP
#   `fc` from invariant edge features to `tp.weight_numel` weights per edge, the tensor product `tp` per edge, a
#   mean over incoming edges, `lin_out`, a zero-padded (or `lin_self`) residual, an optional batch norm.
# - With `attention=True`, the mean becomes $\sum_j \alpha_{ij} v_{ij}$, with $\alpha$ the softmax over the incoming
#   edges of `dot(h_q(f_i), tp_k(f_j, Y, fc_k(e_ij)))`.
# - The package's class keeps the original's names, so an EigenFold `state_dict` loads strictly and gives the same
#   outputs and gradients, to 1e-10 in float64.
# - Stacked along `0e -> 0e+1o -> 0e+1o+1e -> 0e+1o+1e+0o`, the layers are equivariant under rotations and inversion,
#   with and without attention. Most parameters sit in `fc`; the nonlinearity comes from feeding node scalars to it.
# - Zero padding needs aligned irreps (`lin_self` does not); `out_nodes` sends messages into another node set
#   without residual; `"mean"` and `"sum"` are equivariant, a component-wise `"max"` is not.
# - Checkpointing the message passing trades a second forward pass for memory: nothing for one layer, a
#   substantial gain for a stack.
#
# Next, chapter 9 puts the stack into EigenFold's residue-level score model and trains it on toy chains.

# %% [markdown]
# ## Exercises
#
# **1.** Count the parameters of layer 2 of the stack by hand: `tp.weight_numel` (sum over the paths
# `mul1 x ir1` $\otimes$ `ir2` $\to$ `mul3 x ir3` of `mul1 * mul3`), `lin_in` and `lin_out` (sum of
# `mul_in * mul_out` over equal irreps) and `fc` (three linear maps with biases). Compare with the table.

# %% tags=["hide-cell"]
# NBVAL_CHECK_OUTPUT
# Solution 1: weight_numel = 8*8 + 8*4 + 4*4 + 4*8 + 4*4 + 4*4 (from 0e and 1o inputs, as in step 3) plus the paths
# of the 1e inputs: 1e x 0e -> 1e, 1e x 1o -> 0o and 1o, 1e x 2e -> 1e; then fc = 49*32 + 33*32 + 33*weight_numel.
def linear_weights(irreps_a: o3.Irreps, irreps_b: o3.Irreps) -> int:
    return sum(mul_a * mul_b for mul_a, ir_a in irreps_a for mul_b, ir_b in irreps_b if ir_a == ir_b)


layer_2 = stack[2]
in_tp, out_tp = layer_2.lin_in.irreps_out, layer_2.tp.irreps_out
weight_numel = sum(
    mul1 * mul3 for mul1, ir1 in in_tp for _, ir2 in irreps_sh for mul3, ir3 in out_tp if ir3 in list(ir1 * ir2)
)
by_hand = {
    "tp weights/edge": weight_numel,
    "lin_in": linear_weights(layer_2.in_irreps, in_tp),
    "fc": (3 * ns + 1) * fc_dim + (fc_dim + 1) * fc_dim + (fc_dim + 1) * weight_numel,
    "lin_out": linear_weights(out_tp, layer_2.out_irreps),
}
from_module = {"tp weights/edge": layer_2.tp.weight_numel, "lin_in": count(layer_2.lin_in),
               "fc": count(layer_2.fc), "lin_out": count(layer_2.lin_out)}
print(by_hand, "| matches the modules:", by_hand == from_module)

# %% [markdown]
# **2.** A component-wise `"max"` broke equivariance. Which choice of `out_tp_irreps` makes `reduce="max"` safe
# again? Build layer 1 with `out_tp_irreps="8x0e"`, check it with `reduce="max"`, and explain. What do its vector
# outputs contain?

# %% tags=["hide-cell"]
# NBVAL_CHECK_OUTPUT
# Solution 2: if every number of the tensor product's output is a 0e, the max is over invariants and is invariant.
# lin_out can only map 0e to 0e, so the 1o and 1e outputs get nothing from the messages: the vectors are the
# residual (the input's vectors) and the pseudovectors are zero. An equivariant "max" for vectors would have to
# pick whole messages, for instance the one with the largest norm.
with default_dtype(torch.float64):
    scalar_messages = TensorProductConvLayer(irreps_in, irreps_in_tp, f"{ntps}x0e", irreps_sh, irreps_out, 3 * ns,
                                             fc_dim=fc_dim).to(device).eval()
print(check_equivariance(
    lambda f, pos: run_stack(nn.ModuleList([scalar_messages]), f, pos, edge_index, reduce="max"),
    [f, pos], [irreps_in, "cartesian_points"], irreps_out,
))
with torch.no_grad():
    out = run_stack(nn.ModuleList([scalar_messages]), f, pos, edge_index, reduce="max")
print("vectors == input vectors:", torch.allclose(out[:, ns : ns + 3 * nv], f[:, ns:]),
      "| pseudovectors zero:", bool((out[:, ns + 3 * nv :] == 0).all()))

# %% [markdown]
# ## References
#
# Further reading: DiffDock {footcite:p}`corso2023diffdock` and EigenFold {footcite:p}`jing2023eigenfold` for the
# models built from this layer; {footcite:t}`chen2016checkpointing` for gradient checkpointing; batch normalization
# {footcite:p}`ioffe2015batch` and residual connections {footcite:p}`he2016deep` in ordinary networks; the
# SE(3)-Transformer {footcite:p}`fuchs2020se3` for equivariant attention.
#
# ```{footbibliography}
# ```
