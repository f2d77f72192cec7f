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
# # 10. Performance
#
# Chapter 8 built the convolution layer of EigenFold's score model {footcite:p}`jing2023eigenfold` and promised that
# `TensorProductConvLayer` computes the same numbers as the original, faster. This chapter measures that promise. It
# counts the arithmetic and the memory traffic of one edge, measures what this machine can do per second, runs the
# package's benchmark, and opens the one place where the package departs from e3nn's code: the per-edge tensor
# product of `tpconv_lite.fast_tp`.

# %% [markdown]
# ```{admonition} Run this chapter
# :class: tip
# Locally: `make execute` in a clone of the repository, or open `tutorials/10_performance.ipynb` in Jupyter.
# In Colab: the rocket icon at the top of the page. The first code cell installs what Colab lacks; everywhere
# else it does nothing. Timings depend on the machine and on what else runs on it: your numbers will differ from
# the ones printed here, and that is the point of measuring them.
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
import os
import time
from collections.abc import Sequence

import e3nn
import matplotlib.pyplot as plt
import torch
from e3nn import o3
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from torch import Tensor, nn

import tpconv_lite
from tpconv_lite import bench
from tpconv_lite.fast_tp import EdgeLast, check_tensor_product, edge_last_product, weight_rows

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(0)
print(f"torch {torch.__version__}, e3nn {e3nn.__version__}, tpconv_lite {tpconv_lite.__version__}, device {device}")
info = bench.machine_info(device)
print(f"{info['gpu'] or info['cpu']}: {info['threads']} torch threads, load average {info['load_average']}")
os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # keeps the profiler from printing a line at each start and stop

try:
    from myst_nb import glue  # numbers quoted in the text are glued from the outputs of cells
except ImportError:  # e.g. in Colab, where there is no book to glue them into

    def glue(name: str, value: object, display: bool = True) -> None:
        if display:
            print(value)

# %% [markdown]
# ## Goals
#
# By the end of this chapter you can
# 1. count the floating-point operations (FLOP) and the bytes that one edge costs in the radial MLP and in the tensor
#    product, and compare them with this machine's measured matrix-multiply speed and copy bandwidth;
# 2. run `tpconv_lite.bench` from a notebook or the command line and read its numbers: times, ratios, slopes;
# 3. say what checkpointing trades, with numbers;
# 4. explain how `tpconv_lite.fast_tp` evaluates e3nn's per-edge tensor product, and check that it gives the
#    original's outputs and gradients.

# %% [markdown]
# ## The layer we time
#
# The benchmark times the score model's default layer (EigenFold's defaults, kept in `bench.DEFAULT_LAYER`) on
# *dense* residue graphs: every ordered pair of $N$ residues is an edge, $E = N(N-1)$. Two contenders hold the same
# weights: `reference.ReferenceLayer`, the original layer transcribed with its quirks, and the package's
# `TensorProductConvLayer`, loaded with the reference's `state_dict` by `bench.default_layers`.

# %%
# NBVAL_CHECK_OUTPUT
for key, value in bench.DEFAULT_LAYER.items():
    print(f"{key:16s} {value}")
reference, ours = bench.default_layers(attention=False)
tp = reference.tp
print("tensor product paths:", len(tp.instructions), "| weights per edge (weight_numel):", tp.weight_numel)
node_attr, edge_index, edge_attr, edge_sh = bench.dense_residue_graph(64)
print("N = 64 residues -> E =", edge_index.shape[1], "edges")

# %% [markdown]
# ## Where the time goes
#
# Per edge $j \to i$ the layer does two things whose cost grows with $E$ (everything else is per node):
#
# 1. the **radial MLP** `fc` turns the 96 invariant edge features into the tensor product's 528 weights through two
#    hidden layers of `fc_dim = 128`: $96 \to 128 \to 128 \to 528$;
# 2. the **tensor product** couples the source's features $x_j$ with the edge's harmonics $Y(r_{ij})$, path by path,
#    and weighs each path with those weights.
#
# A linear map $a \to b$ costs $a b$ multiply-adds, 2 FLOP each. For a path $(l_1, l_2) \to l_3$ of multiplicities
# $u, v, w$, the product first forms $y[u, v, k] = \sum_{i,j} C[i, j, k]\, x_1[u, i]\, x_2[v, j]$, one multiply-add
# per nonzero Clebsch-Gordan coefficient $C$ and per pair $(u, v)$, then mixes with the weights,
# $\text{out}[w, k] \mathrel{+}= \sum_{u,v} W[u, v, w]\, y[u, v, k]$, $u v w (2 l_3 + 1)$ multiply-adds. The
# instructions of e3nn's tensor product list the paths and their shapes, so the count is a short loop:

# %%
# NBVAL_CHECK_OUTPUT
def tensor_product_flop(tp: o3.TensorProduct) -> int:
    """FLOP of one sample of a weighted 'uvw' tensor product: 2 per multiply-add, zeros of C skipped."""
    multiply_adds = 0
    for ins in tp.instructions:
        (u, ir1), (v, ir2), (w, ir3) = tp.irreps_in1[ins.i_in1], tp.irreps_in2[ins.i_in2], tp.irreps_out[ins.i_out]
        nonzero = int((o3.wigner_3j(ir1.l, ir2.l, ir3.l).abs() > 1e-10).sum())
        multiply_adds += u * v * nonzero + u * v * w * ir3.dim
    return 2 * multiply_adds


mlp_widths = [bench.DEFAULT_LAYER["n_edge_features"], 128, 128, tp.weight_numel]
mlp_flop = sum(2 * a * b for a, b in zip(mlp_widths[:-1], mlp_widths[1:]))
tp_flop = tensor_product_flop(tp)
print("radial MLP:", " -> ".join(map(str, mlp_widths)), f"= {mlp_flop} FLOP per edge")
print(f"tensor product: {tp_flop} FLOP per edge")
print(f"the MLP does {mlp_flop / tp_flop:.0f} times the arithmetic of the tensor product")

# %% [markdown]
# Arithmetic is half of the story; the other half is moving numbers. Per edge, in float32 (4 bytes), the MLP reads
# its 96 inputs and writes 128 + 128 + 528 activations; its weight matrices are shared by all edges and stay in
# cache, so for many edges they cost nothing per edge. The tensor product reads $x_j$ (44 numbers after `lin_in`),
# $Y$ (9) and the 528 weights, and writes 44 outputs. The ratio FLOP / byte is the *arithmetic intensity*:

# %%
# NBVAL_CHECK_OUTPUT
dims = {name: o3.Irreps(bench.DEFAULT_LAYER[name]).dim for name in ("in_tp_irreps", "sh_irreps", "out_tp_irreps")}
mlp_bytes = 4 * sum(mlp_widths)
tp_bytes = 4 * (dims["in_tp_irreps"] + dims["sh_irreps"] + tp.weight_numel + dims["out_tp_irreps"])
print(f"radial MLP:     {mlp_bytes} bytes per edge, intensity {mlp_flop / mlp_bytes:.0f} FLOP/byte")
print(f"tensor product: {tp_bytes} bytes per edge, intensity {tp_flop / tp_bytes:.1f} FLOP/byte")

# %%
glue("mlp_intensity", mlp_flop / mlp_bytes, display=False)
glue("mlp_over_tp", mlp_flop / tp_flop, display=False)

# %% [markdown]
# Whether {glue:text}`mlp_intensity:.0f` FLOP/byte is "a lot" depends on the machine. The *roofline model* {footcite:p}`williams2009roofline`
# compares a kernel's intensity with the machine's *ridge point*, its peak FLOP/s divided by its bandwidth in
# bytes/s: below the ridge, memory limits the kernel; above, arithmetic does. Measure both here with the bench's own
# timer, `bench.time_side_by_side` (warm-up runs, then the median of the repeats): a large float32 matrix product,
# $2n^3$ FLOP, and a large copy, which reads and writes every byte once.

# %%
# NBVAL_IGNORE_OUTPUT
n = 1024
a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
source, target = torch.randn(2**24, device=device), torch.empty(2**24, device=device)  # 64 MB each
timings = bench.time_side_by_side(
    {"matmul": lambda: a @ b, "copy": lambda: target.copy_(source)}, warmup=2, repeats=5, device=device
)
peak_flops = 2 * n**3 / timings["matmul"]["median"]
bandwidth = 2 * source.numel() * 4 / timings["copy"]["median"]
print(f"matrix multiply ({n}x{n}, float32): {peak_flops / 1e9:.1f} GFLOP/s")
print(f"copy (64 MB): {bandwidth / 1e9:.1f} GB/s")
print(f"ridge point: {peak_flops / bandwidth:.1f} FLOP/byte")

# %% [markdown]
# On a laptop or a small cloud CPU the ridge sits at a few FLOP per byte; on a GPU at a few tens. The MLP lies above
# it: it should run near the matrix-multiply speed. The tensor product lies below it: at best it streams its
# per-edge numbers through memory once. What do these roofs predict for one forward pass over the 16256 edges of a
# dense graph of 128 residues?

# %%
# NBVAL_IGNORE_OUTPUT
edges = 128 * 127  # estimates, not bounds: see below
for name, flop, nbytes in [("radial MLP", mlp_flop, mlp_bytes), ("tensor product", tp_flop, tp_bytes)]:
    compute, memory = edges * flop / peak_flops, edges * nbytes / bandwidth
    bound = "compute" if compute > memory else "memory"
    print(f"{name:15s} about {1e3 * max(compute, memory):6.1f} ms ({bound}-bound: "
          f"{1e3 * compute:.1f} ms of arithmetic, {1e3 * memory:.1f} ms of memory traffic)")

# %% [markdown]
# These are *estimates* of the floors, not bounds: the "peak" above is the speed of one 1024 × 1024 matrix product,
# which is neither the machine's true peak (other shapes, or more threads, can run faster) nor the speed of the
# MLP's own products, $(E, 96) \times (96, 128)$ and so on, which can be faster or slower; a measurement can even beat
# such an estimate (exercise 2). Keep them in mind for the measured times below: a large gap between an estimate
# and a measurement is overhead (many small kernels, intermediate tensors, Python), and overhead is what a faster
# implementation removes.

# %% [markdown]
# ## Running the benchmark
#
# `tpconv_lite.bench` has five sections, one function each, and `bench.run_benchmarks(quick=True)` runs them all
# with the settings of `python -m tpconv_lite.bench --quick`: the layer on dense graphs of 64 and 128 residues,
# without and with attention; the fused tensor product of chapter 7 against the full one for $L = 1..4$; the
# pure-torch graph backend against torch_cluster and torch_scatter up to $10^4$ points; the memory of forward +
# backward; and the whole score model of chapter 9 at EigenFold's sizes against EigenFold's model, on a chain of 64
# residues (the full run: 150 and 300), with the matrix-product operations of its training step counted and set
# against the rate of `torch.mm`. On two CPU cores it takes about a minute. It returns plain dicts and lists, and
# `bench.format_report` prints them as the command line does: times in ms as median [min-max] of the repeats.

# %%
# NBVAL_IGNORE_OUTPUT
start = time.perf_counter()
results = bench.run_benchmarks(quick=True, device=str(device), progress=False)
print(f"bench.run_benchmarks(quick=True): {time.perf_counter() - start:.0f} s\n")
print(bench.format_report(results))
conv_rows, fused, graph_rows, memory_rows, score_rows = (
    results[key] for key in ("conv_layer", "fused", "graph", "memory", "score_model")
)

# %% [markdown]
# Every row of the layer's table also records how far our outputs and gradients are from the reference's, as
# `max |ours - ref| / max |ref|`: a speed-up that changed the numbers would be worth nothing.

# %%
# NBVAL_CHECK_OUTPUT
print("cases timed:", len(conv_rows))
print("outputs agree in every case (rel. diff < 1e-5):", all(row["output_difference"] < 1e-5 for row in conv_rows))
gradients = [row["gradient_difference"] for row in conv_rows if row["gradient_difference"] is not None]
print("gradients agree in every case (rel. diff < 1e-5):", all(g < 1e-5 for g in gradients))

# %% [markdown]
# The left panel shows the speed-up of each case, the reference's median time over ours (above 1: ours is
# faster), with the package's targets: 1.5 for forward alone, 2 for forward and backward. The middle one shows the
# fused and the full channel-wise tensor product against the maximal degree $L$ on log-log axes, for tensors of one
# parity ($P = 1$, no pseudotensors; chapter 7 times both parities, $P = 2$, where the full product has four times
# the paths, so the two chapters' ratios differ, at $L = 1$ even in sign), where a power law
# $t \propto L^s$ is a straight line of slope $s$. Counting paths, the full product grows like $L^6$ at large $L$
# (chapter 7), the fused one like $L^4$ at most; at these small sizes fixed costs still flatten both. The right one
# shows the graph backends: pure torch's time over the compiled packages' (below 1: pure torch is faster).

# %%
fig, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 4))
labels = [f"N={r['n_nodes']}{' att' if r['attention'] else ''}\n{'fwd' if r['checkpointing'] is None else 'f+b'}"
          + ("" if r["checkpointing"] is None else f" ckpt {'on' if r['checkpointing'] else 'off'}") for r in conv_rows]
colors = ["tab:blue" if r["checkpointing"] is None else "tab:orange" for r in conv_rows]
left.bar(range(len(conv_rows)), [r["speedup"] for r in conv_rows], color=colors)
for target, color in [(1.5, "tab:blue"), (2.0, "tab:orange")]:
    left.axhline(target, color=color, lw=0.8, ls="--")
left.axhline(1.0, color="k", lw=0.8)
left.set_xticks(range(len(conv_rows)), labels, fontsize=6, rotation=90)
left.set_ylabel("speed-up: time reference / time ours")
left.set_title("Convolution layer, dense graphs")
degrees = [r["max_degree"] for r in fused["rows"]]
for name, marker in [("full", "o"), ("fused", "s")]:
    times = [1e3 * r[name]["median"] for r in fused["rows"]]
    middle.loglog(degrees, times, marker=marker, label=f"{name} (slope {fused['slope_' + name]:.1f} over L>=2)")
middle.set_xticks(degrees, [str(d) for d in degrees])
middle.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
middle.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
middle.yaxis.set_minor_formatter(NullFormatter())
middle.set_xlabel("maximal degree L")
middle.set_ylabel("forward time (ms)")
middle.set_title(f"Tensor products, F={fused['num_features']}, batch={fused['batch']}")
middle.legend(fontsize=8)
for operation in dict.fromkeys(r["operation"] for r in graph_rows):
    rows = [r for r in graph_rows if r["operation"] == operation and r["ratio"] is not None]
    if rows:
        right.loglog([r["n_points"] for r in rows], [r["ratio"] for r in rows], marker="o", label=operation)
right.axhline(1.0, color="k", lw=0.8)
right.set_xlabel("number of points N")
right.set_ylabel("time pure torch / time compiled")
right.set_title("Graph backends" + ("" if any(r["ratio"] for r in graph_rows) else " (compiled packages missing)"))
if any(r["ratio"] for r in graph_rows):
    right.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %%
# NBVAL_IGNORE_OUTPUT
forward_rows = [r for r in conv_rows if r["checkpointing"] is None]
step_rows = [r for r in conv_rows if r["checkpointing"] is not None]
met_forward = sum(r["speedup"] >= 1.5 for r in forward_rows)
met_step = sum(r["speedup"] >= 2.0 for r in step_rows)
print(f"forward: {met_forward} of {len(forward_rows)} cases reach the 1.5x target; "
      f"forward + backward: {met_step} of {len(step_rows)} reach 2x")
glue("met_forward", met_forward, display=False)
glue("n_forward", len(forward_rows), display=False)
glue("met_step", met_step, display=False)
glue("n_step", len(step_rows), display=False)
glue("best_forward", max(r["speedup"] for r in forward_rows), display=False)
glue("best_step", max(r["speedup"] for r in step_rows), display=False)

# %%
# NBVAL_CHECK_OUTPUT
training, sampling = score_rows
print("score model: outputs agree (rel. diff < 1e-5):", all(r["output_difference"] < 1e-5 for r in score_rows))
peak = training["peak"]
print("score model: our training step needs less peak memory:", peak["ours"] < peak["reference"])

# %%
# NBVAL_IGNORE_OUTPUT
glue("score_n", training["n_residues"], display=False)
glue("score_train_speedup", training["speedup"], display=False)
glue("score_sampler_speedup", sampling["speedup"], display=False)
glue("score_peak_ratio", training["peak"]["ours"] / training["peak"]["reference"], display=False)
glue("score_flop_fraction", training["flop_rate"] / results["matmul_rate"], display=False)
for name, row in (("train", training), ("sampler", sampling)):
    glue(f"score_{name}_products_ms", 1e3 * row["products"]["faster_layout"], display=False)
    glue(f"score_{name}_ceiling", row["reference"]["median"] / row["products"]["faster_layout"], display=False)
print(f"training step {training['speedup']:.2f}x, sampler step {sampling['speedup']:.2f}x, peak memory "
      f"{training['peak']['ours'] / training['peak']['reference']:.2f} of the reference's, matrix products at "
      f"{training['flop_rate'] / results['matmul_rate']:.0%} of torch.mm's rate")
for name, row in (("training step", training), ("sampler step", sampling)):
    products, reference_time = row["products"], row["reference"]["median"]
    print(f"{name}: our {products['products']} matrix products alone {1e3 * products['as_laid_out']:.0f} ms as laid "
          f"out, {1e3 * products['faster_layout']:.0f} ms each in its faster layout; the whole step "
          f"{1e3 * row['ours']['median']:.0f} ms; ceiling {reference_time / products['faster_layout']:.2f}x")

# %% [markdown]
# The whole model gains less than its layers. On this run, on a chain of {glue:text}`score_n` residues, our
# training step was {glue:text}`score_train_speedup:.2f` times as fast as EigenFold's and needed
# {glue:text}`score_peak_ratio:.2f` of its peak memory; the sampler's step (a forward pass in eval mode, then one
# reverse-diffusion step) was {glue:text}`score_sampler_speedup:.2f` times as fast. Our step's matrix products ran at
# {glue:text}`score_flop_fraction:.0%` of the rate of one large `torch.mm`. Most of a forward pass is the radial
# MLPs' matrix products, which the two models share, and the sampler runs forward passes only: the tensor products
# that `fast_tp` speeds up are the smaller part there. The memory comes from what the checkpoints keep: the
# score model passes each layer the edge scalars alone (`end_scalars`, chapter 8) and recomputes its edge
# embedding during the backward pass, so that no (E, 3 ns) or (E, 354) tensor waits for the backward pass.
#
# How much more could a faster implementation gain? `bench.products_alone` gives a floor: it records every matrix
# product a step runs (forward, backward and the checkpoints' recomputation) and times each alone, on random
# operands of the same shapes, as laid out and in its faster layout (the result stored with the edges along its rows
# or along its columns, which a matrix library does not run equally fast). Our training step's products took
# {glue:text}`score_train_products_ms:.0f` ms that way, the sampler step's {glue:text}`score_sampler_products_ms:.0f`
# ms. Any code that does these products, with every other operation free, could be at most about
# {glue:text}`score_train_ceiling:.1f` and {glue:text}`score_sampler_ceiling:.1f` times as fast as EigenFold's model:
# the ceiling that the benchmark prints (products timed alone take within about 15% of their time inside the step,
# either way, so it is an estimate, not a bound). The products are the model's arithmetic, the radial MLPs above all, and
# they stay whatever the code: the numbers must be EigenFold's.
#
# On the run that built this page, {glue:text}`met_forward` of the {glue:text}`n_forward` forward cases reached the
# forward target of 1.5 (the best speed-up was {glue:text}`best_forward:.2f`), and {glue:text}`met_step` of the
# {glue:text}`n_step` forward + backward cases reached 2 (best {glue:text}`best_step:.2f`). A target missed on a
# page built on a busy machine is not a verdict: repeat the full benchmark on a quiet one.
#
# What to expect on a quiet machine: forward and backward gain more than forward alone. Most of e3nn's waste is in
# its backward pass (below), while most of a forward pass goes to the matrix products of the radial MLPs, which are
# the same in both layers: compare the MLP's estimated floor above with the forward times at $N = 128$. The
# pure-torch `scatter` with `reduce="max"` is much faster than torch_scatter's on a CPU, and the cell-list radius
# graph keeps up with torch_cluster's. Three repeats are noisy: if another program shares your cores, single
# medians can jump by a factor of two or more. Run the full benchmark, with more repeats and larger sizes, before
# you trust a ratio, and certainly before you trust a slope fitted to three points.

# %% [markdown]
# ## What checkpointing trades
#
# In training, the layer runs its message passing under `torch.utils.checkpoint` {footcite:p}`chen2016checkpointing`:
# the forward pass keeps only the inputs of the checkpointed function and throws its intermediates away, and the
# backward pass computes them again. Less memory held between the passes, one extra forward pass of time.
# The benchmark's memory section, `bench.bench_memory`, measures both kinds of memory: what a layer leaves allocated
# after its forward pass (held until its backward runs, for every layer of a deep model at once) and the peak during
# forward and backward. On a CPU its meter, `bench.memory_use` (chapter 8), adds up every allocation and free that
# the PyTorch profiler records, in time order, so a peak inside one operator counts too.

# %%
# NBVAL_IGNORE_OUTPUT
print(f"{'attention':9s} {'checkpoint':10s} {'saved ref MB':>12s} {'saved ours MB':>13s} {'peak ref MB':>11s} "
      f"{'peak ours MB':>12s}")
for row in memory_rows:
    saved, peak = row["saved"], row["peak"]
    print(f"{'yes' if row['attention'] else 'no':9s} {'on' if row['checkpointing'] else 'off':10s} "
          f"{saved['reference'] / 2**20:12.1f} {saved['ours'] / 2**20:13.1f} {peak['reference'] / 2**20:11.1f} "
          f"{peak['ours'] / 2**20:12.1f}")
for row in conv_rows:
    if row["checkpointing"]:
        off = next(r for r in conv_rows if r["checkpointing"] is False and r["n_nodes"] == row["n_nodes"]
                   and r["attention"] == row["attention"])
        print(f"N={row['n_nodes']}, attention={row['attention']!s:5s}: forward+backward with checkpointing takes "
              f"{row['ours']['median'] / off['ours']['median']:.2f}x the time without (ours)")

# %%
# NBVAL_CHECK_OUTPUT
for attention in (False, True):
    off, on = (next(r for r in memory_rows if r["attention"] == attention and r["checkpointing"] == c)
               for c in (False, True))
    for name in ("reference", "ours"):
        print(f"attention={attention!s:5s} {name:9s}: checkpointing keeps less than a tenth after forward:",
              on["saved"][name] < off["saved"][name] / 10, "| its peak is within 10% of the peak without:",
              on["peak"][name] <= 1.1 * off["peak"][name])

# %% [markdown]
# The saved memory drops to almost nothing: what is left is the layer's small `(N, 60)` output and the inputs it
# already had. The peak does not drop, since the backward pass recomputes the intermediates and so holds them for a
# moment anyway; checkpointing helps a *deep* model, where without it every layer's intermediates are held at once.
# The price is the extra forward pass: if backward costs about twice forward, the factor on the forward + backward
# time is about 4/3. On a busy machine the measured factor scatters far around that, which is why the benchmark
# prints the minimum and maximum next to every median.

# %% [markdown]
# ## How the fast layer differs
#
# `ReferenceLayer` and `TensorProductConvLayer` hold the same modules; they differ in how their message functions
# use them:
#
# | | reference (EigenFold) | `TensorProductConvLayer` |
# |---|---|---|
# | messages | `self.tp(x[src], edge_sh, self.fc(edge_attr))` | `linear_weighted_tensor_product(self.tp, x[src], edge_sh, self.fc[:-1](edge_attr), self.fc[-1])` |
# | keys and values (attention) | two calls of e3nn's tensor products | one call of `linear_weighted_tensor_products`: the couplings are shared |
# | logits (attention) | `self.dot(q[dst], k)`, a tensor product per edge | `((q @ M)[dst] * k).sum()`, with `M = bilinear_matrix(self.dot)` |
# | scatter | torch_scatter | `tpconv_lite.graph.scatter` (torch_scatter or pure torch) |
# | checkpoint | `use_reentrant=True` | `use_reentrant=False`, switchable by `layer.checkpointing` |
#
# e3nn's `FullyConnectedTensorProduct` with per-edge weights evaluates its paths one at a time: each takes its block
# of the `(E, 528)` weight tensor with a slice and runs a small einsum with the edge axis first. Going forward,
# slices are free. Going backward, the gradient of each slice is a zero-filled `(E, 528)` tensor with one block
# filled in, and the twelve of them are added up: a dozen passes over the largest per-edge tensor of the layer.
# And an einsum with the edge axis first is $E$ tiny matrix products (a 4×3 by 3×3 one per edge), which run one edge
# at a time.
#
# `tpconv_lite.fast_tp` computes the same sums in another order:
#
# 1. the **edge axis goes last**: every per-edge tensor is laid out as `(features, E)`, so each per-edge operation
#    is an elementwise product or a sum over rows of $E$ contiguous numbers, which vectorises;
# 2. **paths are grouped by output irrep**: the Clebsch-Gordan couplings of all the paths into one output irrep form
#    one tensor $Y_o[U, k, e]$, $U$ running over (path, $u$, $v$), contracted with one block of weights
#    $W_o[w, U, e]$: $\text{out}_o[w, k, e] = \sum_U W_o[w, U, e]\, Y_o[U, k, e]$. This weighted sum has its
#    backward pass written by hand (`_WeightedSum`): one multiply-add per component $k$ for the gradient of $W_o$,
#    one per output copy $w$ for that of $Y_o$, where autograd would run three small operations per row $U$;
# 3. **the weights are never formed in e3nn's order**: they are the output of the MLP's last linear layer
#    $w = A h + b$, so each block $W_o = A[\text{rows}_o] h + b[\text{rows}_o]$ is computed directly from its own rows
#    of $A$. No slice of a per-edge tensor ever reaches autograd, and nothing is zero-filled in the backward pass;
# 4. **what does not depend on the weights is computed once**: the couplings $Y_o$ depend on $x_j$, $Y(r_{ij})$ and
#    the paths only. The keys and the values of the attention are tensor products of the same inputs with the same
#    paths (output multiplicities 8 and 16 of the same irreps), so they share them;
# 5. **a bilinear map is a matrix**: `dot` has weights shared by all edges, so
#    $\text{dot}(q, k) = \sum_{ij} q_i M_{ij} k_j$ for one matrix $M$ (22×22 here), which `bilinear_matrix` reads
#    off by evaluating `dot` on pairs of basis vectors. The logits then cost a product $q M$ per *node* and a dot
#    product of 22 numbers per edge, instead of a tensor product per edge.
#
# Here are the functions the layer calls; the helpers they name are public functions of the same module, imported at
# the top (`weight_rows` finds the rows of each block, `edge_last_product` does steps 1 and 2, `EdgeLast` is a
# transpose whose gradient is contiguous, `check_tensor_product` checks the inputs):

# %%
# Package code: tpconv_lite.fast_tp.linear_weighted_tensor_products
def linear_weighted_tensor_products(
    products: Sequence[tuple[o3.TensorProduct, Tensor, nn.Linear]], x1: Tensor, x2: Tensor
) -> list[Tensor]:
    """``[tp(x1, x2, linear(hidden)) for tp, hidden, linear in products]``: several products of the same inputs.

    The Clebsch-Gordan couplings ``Y_o`` (see the module docstring) depend only on ``x1``, ``x2`` and the paths into
    an output irrep, not on the weights: products whose paths into an output irrep are the same (same inputs, same
    normalisation) share them, and they are computed once. EigenFold's attention is the case in point: its keys and
    values are two tensor products of the same source features and edge harmonics, with weights from two MLPs and
    output multiplicities in the ratio 1 : 2.

    Args:
        products: ``(tp, hidden, linear)`` triples as in :func:`linear_weighted_tensor_product`, all of whose
            ``tp`` have the same ``irreps_in1`` and ``irreps_in2``; ``hidden`` is (E, linear.in_features).
        x1: (E, irreps_in1.dim).
        x2: (E, irreps_in2.dim).

    Returns:
        One (E, tp.irreps_out.dim) tensor per product.
    """
    if not products:
        raise ValueError("products must hold at least one (tp, hidden, linear) triple, got none")
    first = products[0][0]
    for tp, hidden, linear in products:
        check_tensor_product(tp, x1, x2)
        if tp.irreps_in1 != first.irreps_in1 or tp.irreps_in2 != first.irreps_in2:
            raise ValueError(
                f"the products must share their inputs' irreps, got {first.irreps_in1} x {first.irreps_in2} and "
                f"{tp.irreps_in1} x {tp.irreps_in2}"
            )
        if not isinstance(linear, nn.Linear) or linear.out_features != tp.weight_numel:
            raise ValueError(f"linear must be an nn.Linear with out_features = tp.weight_numel = {tp.weight_numel}")
        if x1.dim() != 2 or not isinstance(hidden, Tensor) or hidden.shape != (x1.shape[0], linear.in_features):
            shape = tuple(hidden.shape) if isinstance(hidden, Tensor) else type(hidden).__name__
            raise ValueError(
                f"x1 must have shape (E, {tp.irreps_in1.dim}) and hidden ({x1.shape[0]}, {linear.in_features}), "
                f"got {tuple(x1.shape)} and {shape}"
            )
    x1, x2 = EdgeLast.apply(x1), EdgeLast.apply(x2)
    shared: dict = {}  # the couplings, computed by the first product that needs them
    outputs = []
    for tp, hidden, linear in products:
        rows = weight_rows(tp.irreps_out, tuple(tp.instructions), hidden.device)
        hidden_t, a, b = hidden.T, linear.weight, linear.bias  # hidden_t: (in_features, E)
        weights = [a[r] @ hidden_t if b is None else torch.addmm(b[r, None], a[r], hidden_t) for r in rows]
        outputs.append(EdgeLast.apply(edge_last_product(tp, x1, x2, weights, shared)))
    return outputs


# %%
# Package code: tpconv_lite.fast_tp.linear_weighted_tensor_product
def linear_weighted_tensor_product(
    tp: o3.TensorProduct, x1: Tensor, x2: Tensor, hidden: Tensor, linear: nn.Linear
) -> Tensor:
    """``tp(x1, x2, linear(hidden))``, without forming the weights in e3nn's order.

    Each block of weights is computed from its own rows of the linear layer, ``W_o = A[rows_o] h + b[rows_o]``, with
    the edge axis last (see the module docstring): the same numbers as ``linear(hidden)``, in the order the product
    uses them.

    Args:
        tp: as in :func:`tensor_product`.
        x1: (E, irreps_in1.dim).
        x2: (E, irreps_in2.dim).
        hidden: (E, linear.in_features), e.g. the last hidden layer of an edge MLP.
        linear: an ``nn.Linear`` with ``out_features == tp.weight_numel``.

    Returns:
        (E, irreps_out.dim), equal to ``tp(x1, x2, linear(hidden))`` up to float rounding.

    Example:
        >>> tp = o3.FullyConnectedTensorProduct("2x0e + 1x1o", "0e + 1o", "1x0e + 2x1o", shared_weights=False)
        >>> linear = nn.Linear(8, tp.weight_numel)
        >>> x1, x2, h = torch.randn(5, 5), torch.randn(5, 4), torch.randn(5, 8)
        >>> torch.allclose(linear_weighted_tensor_product(tp, x1, x2, h, linear), tp(x1, x2, linear(h)), atol=1e-6)
        True
    """
    return linear_weighted_tensor_products([(tp, hidden, linear)], x1, x2)[0]


# %%
# Package code: tpconv_lite.fast_tp.bilinear_matrix
def bilinear_matrix(tp: o3.TensorProduct) -> Tensor:
    """The matrix ``M`` of a tensor product with shared weights: ``tp(x1, x2)[o] = sum_ij x1[i] M[i, j, o] x2[j]``.

    With its weights fixed, a tensor product is a bilinear map, and its values on pairs of basis vectors are its
    matrix (differentiable with respect to the weights). Evaluating ``tp(x1[index], x2)`` on many rows through ``M``
    costs one product per row of ``x1`` and a dot product per row of ``x2``: EigenFold's attention logits
    ``dot(query[target], key)``, one per edge, are ``((query @ M)[target] * key).sum()``.

    Args:
        tp: an ``o3.TensorProduct`` with shared weights (e.g. ``o3.FullyConnectedTensorProduct(a, b, "0e")``).

    Returns:
        (irreps_in1.dim, irreps_in2.dim, irreps_out.dim), in the dtype and on the device of ``tp``'s weights.
    """
    if not isinstance(tp, o3.TensorProduct) or not tp.internal_weights:
        raise ValueError(f"tp must be an o3.TensorProduct with internal (shared) weights, got {tp!r}")
    d1, d2 = tp.irreps_in1.dim, tp.irreps_in2.dim
    options = {"dtype": tp.weight.dtype, "device": tp.weight.device}
    pairs = torch.eye(d1, **options).repeat_interleave(d2, dim=0), torch.eye(d2, **options).repeat(d1, 1)  # (d1 d2, d)
    return tp(*pairs).view(d1, d2, tp.irreps_out.dim)


# %% [markdown]
# First, the functions on their own: with the same linear layers, they give what e3nn's tensor products give on
# those layers' outputs, and the matrix of `dot` gives what `dot` gives.

# %%
# NBVAL_CHECK_OUTPUT
generator = torch.Generator().manual_seed(0)
x1, x2 = torch.randn(200, dims["in_tp_irreps"], generator=generator), torch.randn(200, 9, generator=generator)
hidden, linear = torch.randn(200, 128, generator=generator), ours.fc[-1]
with torch.no_grad():
    fast, e3nn_way = linear_weighted_tensor_product(tp, x1, x2, hidden, linear), tp(x1, x2, linear(hidden))
print("same as tp(x1, x2, linear(h)) (rel. diff < 1e-5):", bench.relative_difference(fast, e3nn_way) < 1e-5)

_, attention_layer = bench.default_layers(attention=True)
key_tp, key_linear = attention_layer.tp_k, attention_layer.fc_k[-1]
with torch.no_grad():
    keys, values = linear_weighted_tensor_products([(key_tp, hidden, key_linear), (tp, hidden, linear)], x1, x2)
    e3nn_keys = key_tp(x1, x2, key_linear(hidden))
print("keys and values with shared couplings, same as e3nn's (rel. diff < 1e-5):",
      bench.relative_difference(keys, e3nn_keys) < 1e-5 and bench.relative_difference(values, e3nn_way) < 1e-5)

dot = attention_layer.dot
queries = torch.randn(200, dot.irreps_in1.dim, generator=generator)
with torch.no_grad():
    m = bilinear_matrix(dot)
    logits = ((queries @ m[:, :, 0]) * keys).sum(1, keepdim=True)
print("matrix of dot:", tuple(m.shape), "| q M k == dot(q, k) (rel. diff < 1e-5):",
      bench.relative_difference(logits, dot(queries, keys)) < 1e-5)

# %% [markdown]
# Now the e3nn backward pass that the fast path avoids. The profiler lists every operator autograd runs; count the
# `slice_backward` operators (each allocates a zero-filled tensor of its input's full size) in one forward and
# backward pass of each layer. Both layers slice small tensors elsewhere (inside `o3.Linear`, for instance); the
# difference is one per path of the tensor product:

# %%
# NBVAL_IGNORE_OUTPUT
inputs = [x.requires_grad_(True) if x.is_floating_point() else x for x in bench.dense_residue_graph(32)]
for name, layer in [("reference", reference.eval()), ("ours", ours.eval())]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        layer(*inputs).sum().backward()
    counts = {event.key: event.count for event in profiler.key_averages()}
    print(f"{name:9s}: slice_backward x {counts.get('aten::slice_backward', 0):2d}, "
          f"bmm x {counts.get('aten::bmm', 0):2d}, einsum x {counts.get('aten::einsum', 0):2d}")

# %% [markdown]
# And the check that matters: with identical weights, the package's layer and the reference give the same outputs
# and the same gradients, for every input and every parameter, with and without attention, with checkpointing
# (training mode) and without. Float32 rounding differs between the two orders of summation, so "equal" means a
# relative difference below $10^{-5}$.

# %%
# NBVAL_CHECK_OUTPUT
def outputs_and_gradients(layer: nn.Module, inputs: list[Tensor], projection: Tensor) -> tuple[Tensor, dict]:
    """The layer's output, and the gradients of (output * projection).sum() by name: inputs, then parameters."""
    layer.zero_grad()
    for x in inputs:
        x.grad = None
    out = layer(*inputs)
    (out * projection).sum().backward()
    grads = {f"input {i}": x.grad for i, x in enumerate(inputs) if x.is_floating_point()}
    return out.detach(), grads | {name: p.grad for name, p in layer.named_parameters()}


inputs = [x.requires_grad_(True) if x.is_floating_point() else x for x in bench.dense_residue_graph(24, seed=1)]
projection = torch.randn(24, ours.out_irreps.dim, generator=torch.Generator().manual_seed(2))
for attention in (False, True):
    reference_layer, our_layer = bench.default_layers(attention)
    for training in (False, True):
        reference_layer.train(training)
        our_layer.train(training)
        out_ref, grads_ref = outputs_and_gradients(reference_layer, inputs, projection)
        out_ours, grads_ours = outputs_and_gradients(our_layer, inputs, projection)
        same_out = bench.relative_difference(out_ours, out_ref) < 1e-5
        same_grads = grads_ours.keys() == grads_ref.keys() and all(
            bench.relative_difference(grads_ours[k], grads_ref[k]) < 1e-5 for k in grads_ref
        )
        print(f"attention={attention!s:5s} checkpointing={training!s:5s}: outputs equal (rel. diff < 1e-5): "
              f"{same_out}, {len(grads_ref)} gradients equal: {same_grads}")

# %% [markdown]
# ## Running the full benchmark
#
# From a terminal, in the repository's environment:
#
# ```bash
# python -m tpconv_lite.bench --quick              # small sizes, few repeats
# python -m tpconv_lite.bench --json results.json  # full sizes; also write the results as JSON
# python -m tpconv_lite.bench --device cuda        # on a GPU (CUDA is synchronised around each timing)
# ```
#
# The full run (no `--quick`) adds graphs of 256 residues, degrees up to $L = 8$ with 16 features, a cloud of 3000
# points, memory at 128 residues, and seven repeats instead of three; it takes several minutes on two cores. The
# report starts with the machine, the thread count and the load average: on a shared computer, a timing taken while
# other programs run says little, so the contenders always run alternately, in one process, and each reports its
# median with the minimum and maximum.

# %% [markdown]
# ## Summary
#
# - Per edge, the radial MLP does about {glue:text}`mlp_over_tp:.0f` times the arithmetic of the tensor product, at
#   an intensity of about {glue:text}`mlp_intensity:.0f` FLOP/byte: compute-bound. The tensor product moves more bytes than it does FLOP: memory-bound.
# - Measure the machine before judging a time: a large matrix product gives its FLOP/s, a large copy its bytes/s,
#   and their ratio, the ridge point, says which kind of kernel is limited by what {footcite:p}`williams2009roofline`.
# - `tpconv_lite.bench` times the package against the original side by side and records how far their outputs
#   and gradients are apart; the chapter runs all of its five sections with the `--quick` settings, the whole score
#   model included.
# - Checkpointing {footcite:p}`chen2016checkpointing` drops what a layer holds between forward and backward to
#   almost nothing, for one extra forward pass.
# - `fast_tp` computes e3nn's per-edge tensor product with the edge axis last, paths grouped by output irrep, the
#   MLP's last layer folded in and a hand-written backward pass for the weighted sum, which removes e3nn's
#   zero-filled slice gradients. With attention, keys and values share their couplings, and the logits go through
#   the matrix of the bilinear map `dot`. Outputs and gradients are equal to float rounding.
#
# This is the last chapter of the core path: the package's layers, their tests and their benchmark are now yours
# to change and measure.

# %% [markdown]
# ## Exercises
#
# **1.** A layer of the radial MLP, $a \to b$ on $E$ edges, reads an $(E, a)$ input and a weight matrix, and writes
# an $(E, b)$ output. Write its arithmetic intensity as a function of $E$ (float32), and compute it for the last
# layer, $128 \to 528$, at $E = 1, 100, 16256$. Where does it cross this machine's ridge point?

# %% tags=["hide-cell"]
# NBVAL_IGNORE_OUTPUT
# Solution 1: FLOP = 2 E a b; bytes = 4 (E a + a b + b + E b) (input, weights, bias, output). For E = 1 the weights
# dominate and the intensity is about 0.5 FLOP/byte (a matrix-vector product, memory-bound); for large E it tends
# to 2 a b / (4 (a + b)) = 52 FLOP/byte.
def linear_intensity(n_edges: int, a: int, b: int) -> float:
    return 2 * n_edges * a * b / (4 * (n_edges * a + a * b + b + n_edges * b))


ridge = peak_flops / bandwidth
for n_edges in (1, 100, 16256):
    print(f"E = {n_edges:5d}: {linear_intensity(n_edges, 128, 528):5.1f} FLOP/byte")
crossing = next((e for e in range(1, 100_000) if linear_intensity(e, 128, 528) > ridge), None)
print(f"ridge point {ridge:.1f} FLOP/byte: compute-bound from E = {crossing} edges on")

# %% [markdown]
# **2.** Predict, before you measure: is the radial MLP's forward pass on a dense graph of 96 residues compute- or
# memory-bound on this machine, and how long should it take at least? Then time `ours.fc` on `edge_attr` with
# `bench.time_side_by_side` and compare. How close to the estimated floor does PyTorch get?

# %% tags=["hide-cell"]
# NBVAL_IGNORE_OUTPUT
# Solution 2: at about 55 FLOP/byte the MLP sits above the ridge point of a CPU: compute-bound, so the estimated floor
# is E * mlp_flop / peak_flops. It is an estimate, not a bound: peak_flops is the speed of a 1024 x 1024 product, and
# the MLP's own products, taller and thinner, may run faster (over 100% of the "peak") or, with their ReLUs and
# per-call costs, slower.
edge_features = bench.dense_residue_graph(96)[2]
with torch.no_grad():
    measured = bench.time_side_by_side({"fc": lambda: ours.fc(edge_features)}, 1, 5, torch.device("cpu"))["fc"]
floor = edge_features.shape[0] * mlp_flop / peak_flops
print(f"estimated floor {1e3 * floor:.1f} ms, measured {1e3 * measured['median']:.1f} ms: "
      f"{floor / measured['median']:.0%} of the 1024 x 1024 product's speed")

# %% [markdown]
# ## References
#
# Further reading: EigenFold {footcite:p}`jing2023eigenfold` and DiffDock {footcite:p}`corso2023diffdock` for the
# layer; the e3nn paper {footcite:p}`geiger2022e3nn` for its tensor products; Passaro and Zitnick
# {footcite:p}`passaro2023reducing` for a way to make tensor products cheaper by changing the maths, not only the
# order of the sums.
#
# ```{footbibliography}
# ```
