"""Benchmarks of the book's code: ``python -m tpconv_lite.bench [--quick] [--json PATH] [--device DEVICE]``.

Five sections, each a function that returns plain data (dicts, lists, floats) so that a notebook can plot it;
:func:`run_benchmarks` runs them all and :func:`format_report` prints them:

1. :func:`bench_conv_layer`: EigenFold's convolution layer as the original writes it
   (:class:`~tpconv_lite.reference.ReferenceLayer`: e3nn's tensor products and torch_scatter) against
   :class:`~tpconv_lite.conv_layer.TensorProductConvLayer` loaded with the same ``state_dict``, on the score
   model's default layer and dense residue graphs (every ordered pair of residues is an edge). Forward alone is timed as inference (eval mode, no autograd); forward + backward with
   checkpointing (train mode: the original always checkpoints in training) and without (eval mode). Next to each
   timing: the largest relative difference of the outputs and of the gradients, ``max |ours - ref| / max |ref|``.
2. :func:`bench_fused`: e3x's fused tensor product (:class:`~tpconv_lite.fused.FusedTensorProduct`) against the
   full channel-wise tensor product (every path ``l1 x l2 -> l3`` up to ``L``, feature ``u`` with feature ``u``:
   e3nn's ``"uuu"`` paths), forward, for ``L = 1..8``, with the slopes of ``log time`` against ``log L``; and
   against e3x's own jitted ``FusedTensor`` where jax and e3x are installed.
3. :func:`bench_graph`: ``tpconv_lite.graph``'s pure-torch backend against torch_cluster / torch_scatter, for
   ``radius_graph`` and ``scatter``, on uniform clouds of up to 10**4 points (the compiled side is skipped when
   the packages are missing).
4. :func:`bench_memory`: the peak tensor memory of forward + backward of both layers, with and without
   checkpointing (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the allocations and frees recorded by
   ``torch.profiler``, replayed in order).
5. :func:`bench_score_model`: EigenFold's whole score model (:class:`~tpconv_lite.reference.ReferenceScoreModel`,
   built from the reference layer) against :class:`~tpconv_lite.score_model.ResiLevelTensorProductScoreModel` with
   the same ``state_dict``, at EigenFold's sizes on one chain with the dense graph: the training step, its peak
   memory, and the sampler's step; with the matrix-product operations of our step, their rate, and that rate as a
   fraction of ``torch.mm``'s (:func:`matmul_rate`); and the floor under our steps, their matrix products timed
   alone (:func:`products_alone`).

Timing: in each case the contenders run alternately in one process, after warm-up runs, and each reports the
median, min and max of its repeats (wall clock; CUDA is synchronised). The measuring tools are public, and the
chapters use them rather than writing their own: :func:`time_side_by_side` (the book's one timer),
:func:`memory_use` (its one memory meter) and :func:`forward_backward` (the training step they measure). The
machine's load matters on a shared computer: the report includes the load average and the number of threads.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version

import torch
from e3nn import o3
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from tqdm import tqdm

import tpconv_lite
from tpconv_lite import graph
from tpconv_lite.conv_layer import TensorProductConvLayer
from tpconv_lite.fused import FusedTensorProduct, e3x_irreps, e3x_to_irreps
from tpconv_lite.graph import edge_geometry, radius_graph, scatter
from tpconv_lite.harmonic import HarmonicConfig, HarmonicDiffusion, reverse_step
from tpconv_lite.reference import ReferenceLayer, ReferenceScoreModel
from tpconv_lite.score_model import ChainBatch, ResiLevelTensorProductScoreModel, ScoreModelConfig

# The score model's default layer (EigenFold's defaults: ns = 32, nv = 4, ntps = 16, ntpv = 4, fc_dim = 128,
# sh_lmax = 2); from the fourth layer on, the irreps no longer grow.
DEFAULT_LAYER = dict(
    in_irreps="32x0e + 4x1o + 4x1e + 4x0o",
    in_tp_irreps="16x0e + 4x1o + 4x1e + 4x0o",
    out_tp_irreps="16x0e + 4x1o + 4x1e + 4x0o",
    sh_irreps="1x0e + 1x1o + 1x2e",
    out_irreps="32x0e + 4x1o + 4x1e + 4x0o",
    n_edge_features=96,
    fc_dim=128,
)


@dataclass(frozen=True)
class Settings:
    """Sizes and repeats of one benchmark run (see ``QUICK`` and ``FULL``)."""

    conv_sizes: tuple[int, ...]
    fused_degrees: tuple[int, ...]
    fused_features: int
    fused_batch: int
    graph_sizes: tuple[int, ...]
    memory_sizes: tuple[int, ...]
    score_sizes: tuple[int, ...]
    warmup: int
    repeats: int


QUICK = Settings((64, 128), (1, 2, 3, 4), 8, 256, (100, 1000, 10_000), (64,), (64,), warmup=1, repeats=3)
FULL = Settings(
    (64, 128, 256), tuple(range(1, 9)), 16, 512, (100, 1000, 3000, 10_000), (128,), (150, 300), warmup=2, repeats=7
)


def machine_info(device: str | torch.device = "cpu") -> dict:
    """Versions, threads, processor or GPU, and the load average: what a timing depends on."""
    device = torch.device(device)
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    optional = {}
    for name in ("torch_scatter", "torch_cluster"):
        module = getattr(graph, name)
        optional[name] = getattr(module, "__version__", "installed") if module is not None else None
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "e3nn": version("e3nn"),
        "tpconv_lite": tpconv_lite.__version__,
        "graph_backend": os.environ.get("TPCONV_GRAPH_BACKEND", "auto"),
        **optional,
    }


# --- timing and comparison helpers ------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stats(seconds: Sequence[float]) -> dict:
    ordered = sorted(seconds)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return {"median": median, "min": ordered[0], "max": ordered[-1], "runs": len(ordered)}


def time_side_by_side(
    contenders: dict[str, Callable[[], object]], warmup: int, repeats: int, device: torch.device
) -> dict[str, dict]:
    """Run the contenders alternately (the order flips every round); the wall-clock seconds of each, in statistics.

    Args:
        contenders: name -> a function of no arguments, the work to time.
        warmup: untimed runs of each contender first.
        repeats: timed runs of each (>= 1).
        device: CUDA work is synchronised before and after each run.

    Returns:
        name -> ``{"median", "min", "max", "runs"}``, seconds.

    Example:
        >>> timings = time_side_by_side({"sum": lambda: torch.ones(100).sum()}, 1, 3, torch.device("cpu"))
        >>> sorted(timings["sum"]), timings["sum"]["runs"]
        (['max', 'median', 'min', 'runs'], 3)"""
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    seconds = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            _synchronize(device)
            start = time.perf_counter()
            contenders[name]()
            _synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return {name: _stats(values) for name, values in seconds.items()}


def relative_difference(ours: Tensor, reference: Tensor) -> float:
    """``max |ours - reference| / max |reference|`` (0 when both are all zeros)."""
    ours, reference = ours.detach(), reference.detach()
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    error = float((ours - reference).abs().max()) if reference.numel() else 0.0
    return error / scale if scale > 0 else error


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ``log y`` against ``log x`` (None with fewer than two points)."""
    if len(xs) < 2:
        return None
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


# --- 1. the convolution layer ------------------------------------------------------------------------------------


def dense_residue_graph(
    n_nodes: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> list[Tensor]:
    """Inputs of the default layer on a chain of ``n_nodes`` residues where every ordered pair is an edge.

    The alpha carbons follow a random walk of 3.8 Å steps; node and edge features are standard normal.

    Returns:
        ``[node_attr (N, 60), edge_index (2, N(N-1)), edge_attr (E, 96), edge_sh (E, 9)]``.
    """
    generator = torch.Generator().manual_seed(seed)
    pos = random_walk_chain(n_nodes, generator)
    src, dst = torch.meshgrid(torch.arange(n_nodes), torch.arange(n_nodes), indexing="ij")
    edge_index = torch.stack([src[src != dst], dst[src != dst]])
    _, _, edge_sh = edge_geometry(pos, edge_index, DEFAULT_LAYER["sh_irreps"])
    node_attr = torch.randn(n_nodes, o3.Irreps(DEFAULT_LAYER["in_irreps"]).dim, generator=generator)
    edge_attr = torch.randn(edge_index.shape[1], DEFAULT_LAYER["n_edge_features"], generator=generator)
    return [
        node_attr.to(device, dtype),
        edge_index.to(device),
        edge_attr.to(device, dtype),
        edge_sh.to(device, dtype),
    ]


def default_layers(
    attention: bool, device: torch.device | str = "cpu"
) -> tuple[ReferenceLayer, TensorProductConvLayer]:
    """The reference layer (default initialisation) and ours with its ``state_dict``, both float32."""
    reference = ReferenceLayer(**DEFAULT_LAYER, attention=attention).to(device)
    ours = TensorProductConvLayer(**DEFAULT_LAYER, attention=attention).to(device)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def forward_backward(layer: nn.Module, inputs: list[Tensor], projection: Tensor) -> list[Tensor]:
    """Forward, then backward of ``(out * projection).sum()``: the output and the gradients of inputs and parameters.

    The one training step the book times and measures (chapters 8 and 10, :func:`bench_conv_layer`,
    :func:`bench_memory`); ``projection`` (a fixed random tensor shaped like the output) makes the gradients those
    of a generic loss. Returns ``[output, grads of the floating inputs..., grads of the parameters by name...]``.

    ``.backward()`` rather than ``torch.autograd.grad``, which the original's reentrant checkpoint does not support.
    """
    for x in inputs + list(layer.parameters()):
        x.grad = None
    out = layer(*inputs)
    (out * projection).sum().backward()
    grads = [x.grad for x in inputs if x.is_floating_point()]
    grads += [p.grad for _, p in sorted(layer.named_parameters())]  # the two layers register them in other orders
    return [out.detach(), *grads]


def bench_conv_layer(
    sizes: Sequence[int] = (64, 128),
    attention: Sequence[bool] = (False, True),
    warmup: int = 1,
    repeats: int = 3,
    device: str | torch.device = "cpu",
    tick: Callable[[str], None] | None = None,
) -> list[dict]:
    """Time the reference layer and ours (see the module docstring); one row per case.

    Returns:
        Rows with ``n_nodes, n_edges, attention, pass ("forward" or "forward+backward"), checkpointing (None for
        forward), reference, ours`` (seconds: median, min, max, runs), ``speedup`` (ratio of the medians),
        ``speedup_of_fastest`` (ratio of the fastest runs, less sensitive to a busy machine) and
        ``output_difference, gradient_difference`` (largest relative differences).
    """
    device = torch.device(device)
    rows = []
    for with_attention in attention:
        reference, ours = default_layers(with_attention, device)
        for n in sizes:
            inputs = dense_residue_graph(n, device)
            case = {"n_nodes": n, "n_edges": inputs[1].shape[1], "attention": with_attention}
            reference.eval()
            ours.eval()
            with torch.no_grad():
                results = {"reference": reference(*inputs), "ours": ours(*inputs)}
                timings = time_side_by_side(
                    {"reference": lambda: reference(*inputs), "ours": lambda: ours(*inputs)}, warmup, repeats, device
                )
            difference = relative_difference(results["ours"], results["reference"])
            rows.append({**case, "pass": "forward", "checkpointing": None, **_compared(timings, difference, None)})
            if tick:
                tick(f"conv N={n} attention={with_attention} forward")

            inputs = [x.requires_grad_(True) if x.is_floating_point() else x for x in inputs]
            projection = torch.randn(n, ours.out_irreps.dim, generator=torch.Generator().manual_seed(1)).to(device)
            for checkpointing in (False, True):
                reference.train(checkpointing)  # the original checkpoints whenever it is training
                ours.train(checkpointing)
                layers, results = {"reference": reference, "ours": ours}, {}

                def step(name: str) -> None:
                    results[name] = forward_backward(layers[name], inputs, projection)

                contenders = {name: functools.partial(step, name) for name in layers}
                timings = time_side_by_side(contenders, warmup, max(repeats, 1), device)
                output, *grads = (
                    relative_difference(a, b) for a, b in zip(results["ours"], results["reference"]) if b is not None
                )
                row = {**case, "pass": "forward+backward", "checkpointing": checkpointing}
                rows.append({**row, **_compared(timings, output, max(grads))})
                if tick:
                    tick(f"conv N={n} attention={with_attention} checkpointing={checkpointing}")
    return rows


def _compared(timings: dict[str, dict], output_difference: float, gradient_difference: float | None) -> dict:
    return {
        "reference": timings["reference"],
        "ours": timings["ours"],
        "speedup": timings["reference"]["median"] / timings["ours"]["median"],
        "speedup_of_fastest": timings["reference"]["min"] / timings["ours"]["min"],
        "output_difference": output_difference,
        "gradient_difference": gradient_difference,
    }


# --- 2. fused versus full tensor product -------------------------------------------------------------------------


def full_channelwise_tensor_product(num_features: int, max_degree: int) -> o3.TensorProduct:
    """Every path ``l1 x l2 -> l3`` (all degrees up to ``max_degree``, tensors only: parity ``(-1)**l``), feature
    by feature (``"uuu"``), one weight per path and feature: what the fused product approximates with fewer weights.
    """
    irreps = e3x_irreps(num_features, max_degree, 1)
    paths = [
        (i1, i2, i_out, "uuu", True)
        for i1, (_, ir1) in enumerate(irreps)
        for i2, (_, ir2) in enumerate(irreps)
        for i_out, (_, ir_out) in enumerate(irreps)
        if ir_out in ir1 * ir2
    ]
    return o3.TensorProduct(irreps, irreps, irreps, paths)


def e3x_fused_tensor(max_degree: int, x: Tensor, y: Tensor) -> Callable[[], object] | None:
    """e3x's own ``FusedTensor`` (JAX, jitted) of ``x`` and ``y``, as a function of no arguments to time; None when
    jax or e3x is not installed (neither is a dependency: ``pip install jax e3x``).

    ``x`` and ``y`` are (batch, 1, (max_degree + 1)**2, F), e3x's layout and :class:`FusedTensorProduct`'s; they are
    copied to JAX once. The first call compiles.
    """
    try:
        import e3x
        import jax
    except ImportError:
        return None
    module = e3x.nn.FusedTensor(max_degree=max_degree, include_pseudotensors=False)
    x_jax, y_jax = (jax.numpy.asarray(t.detach().cpu().numpy()) for t in (x, y))
    params = module.init(jax.random.PRNGKey(0), x_jax, y_jax)
    apply = jax.jit(module.apply)
    return lambda: apply(params, x_jax, y_jax).block_until_ready()


def bench_fused(
    degrees: Sequence[int] = (1, 2, 3, 4),
    num_features: int = 8,
    batch: int = 256,
    warmup: int = 1,
    repeats: int = 3,
    device: str | torch.device = "cpu",
    tick: Callable[[str], None] | None = None,
) -> dict:
    """Forward time of the fused and of the full channel-wise tensor product of two inputs of degrees up to ``L``,
    and of e3x's own jitted ``FusedTensor`` where jax and e3x are installed (:func:`e3x_fused_tensor`).

    Returns:
        ``{"rows": [{"max_degree", "paths", "full", "fused", "e3x"}, ...], "slope_full", "slope_fused"}``: times in
        seconds (``e3x`` None without e3x), slopes of ``log(median time)`` against ``log L`` fitted over ``L >= 2``
        (at ``L = 1`` the fixed cost of a call dominates).
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for max_degree in degrees:
        full = full_channelwise_tensor_product(num_features, max_degree).to(device)
        fused = FusedTensorProduct(num_features, max_degree, max_degree, max_degree, 1, 1, False).to(device)
        x, y = (torch.randn(batch, 1, (max_degree + 1) ** 2, num_features, generator=generator) for _ in range(2))
        x, y = x.to(device), y.to(device)
        (x_flat, _), (y_flat, _) = e3x_to_irreps(x), e3x_to_irreps(y)  # the same numbers in e3nn's layout
        contenders = {"full": lambda: full(x_flat, y_flat), "fused": lambda: fused(x, y)}
        e3x_fused = e3x_fused_tensor(max_degree, x, y)
        if e3x_fused is not None:
            contenders["e3x"] = e3x_fused
        with torch.no_grad():
            timings = time_side_by_side(contenders, warmup, repeats, device)
        rows.append({"max_degree": max_degree, "paths": len(full.instructions), "e3x": None, **timings})
        if tick:
            tick(f"fused L={max_degree}")
    fit = [row for row in rows if row["max_degree"] >= 2]
    return {
        "num_features": num_features,
        "batch": batch,
        "rows": rows,
        "slope_full": _slope([r["max_degree"] for r in fit], [r["full"]["median"] for r in fit]),
        "slope_fused": _slope([r["max_degree"] for r in fit], [r["fused"]["median"] for r in fit]),
    }


# --- 3. graph backends -------------------------------------------------------------------------------------------

DENSITY = 0.01  # points per Å**3, about the density of residues in a protein
RADIUS = 8.0  # Å: about 20 neighbours per point at that density


def bench_graph(
    sizes: Sequence[int] = (100, 1000, 10_000),
    warmup: int = 1,
    repeats: int = 3,
    device: str | torch.device = "cpu",
    tick: Callable[[str], None] | None = None,
) -> list[dict]:
    """Pure torch against torch_cluster / torch_scatter on uniform clouds at ``DENSITY`` with radius ``RADIUS``.

    Returns:
        Rows with ``operation`` (``radius_graph``, ``scatter sum/mean/max`` of 64 features per edge),
        ``n_points, n_edges, torch`` (seconds) and ``compiled`` (seconds, or None when the package is missing) and
        ``ratio`` (pure torch / compiled, medians).
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    packages = {"radius_graph": graph.torch_cluster}
    packages.update({f"scatter {reduce}": graph.torch_scatter for reduce in ("sum", "mean", "max")})
    rows = []
    for n in sizes:
        pos = (torch.rand(n, 3, generator=generator) * (n / DENSITY) ** (1 / 3)).to(device)
        edge_index = radius_graph(pos, RADIUS, backend="torch")
        features = torch.randn(edge_index.shape[1], 64, generator=generator).to(device)

        def run(operation: str, backend: str) -> Tensor:
            if operation == "radius_graph":
                return radius_graph(pos, RADIUS, backend=backend)
            return scatter(features, edge_index[1], 0, n, operation.removeprefix("scatter "), backend=backend)

        for operation, package in packages.items():
            contenders = {"torch": functools.partial(run, operation, "torch")}
            if package is not None and _runs(functools.partial(run, operation, "pyg")):
                contenders["compiled"] = functools.partial(run, operation, "pyg")
            timings = time_side_by_side(contenders, warmup, repeats, device)
            compiled = timings.get("compiled")
            rows.append({
                "operation": operation,
                "n_points": n,
                "n_edges": edge_index.shape[1],
                "torch": timings["torch"],
                "compiled": compiled,
                "ratio": timings["torch"]["median"] / compiled["median"] if compiled else None,
            })  # fmt: skip
        if tick:
            tick(f"graph N={n}")
    return rows


def _runs(fn: Callable[[], object]) -> bool:
    """Whether ``fn()`` runs: a compiled package built without CUDA raises a RuntimeError on CUDA tensors."""
    try:
        fn()
    except RuntimeError:
        return False
    return True


# --- 4. memory ---------------------------------------------------------------------------------------------------


def memory_use(fn: Callable[[], object], device: str | torch.device = "cpu") -> tuple[int, int]:
    """Bytes of tensor memory allocated by ``fn``, above what was allocated before: the peak, and what is left.

    What is left after a forward pass whose output is kept is what autograd saved for the backward pass (plus the
    output): the memory each layer of a deep model holds until its backward runs.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: ``torch.profiler`` records each allocation and each free
    of tensor memory, inside an operator or not; adding them up in time order gives the memory in use after each
    of them, and its maximum. It cannot size a free of memory allocated before it started: ``fn`` should leave
    such memory alone (the bench's callers hold on to it).

    Returns:
        ``(peak, in_use_at_the_end)``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, torch.cuda.memory_allocated(device) - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        fn()
    # the raw events: ``profiler.events()`` would first build the tree of operators, at several times the cost
    events = [event for event in profiler.profiler.kineto_results.events() if event.name() == "[memory]"]
    in_use = peak = 0
    for event in sorted(events, key=lambda event: event.start_ns()):
        in_use += event.nbytes()
        peak = max(peak, in_use)
    return peak, in_use


def _append_output(outputs: list, layer: nn.Module, inputs: list[Tensor]) -> None:
    outputs.append(layer(*inputs))


def bench_memory(
    sizes: Sequence[int] = (64,),
    attention: Sequence[bool] = (False, True),
    device: str | torch.device = "cpu",
    tick: Callable[[str], None] | None = None,
) -> list[dict]:
    """Memory of both layers with checkpointing (train mode) and without (eval mode), see :func:`memory_use`.

    Returns:
        Rows with ``n_nodes, attention, checkpointing`` and, in bytes, ``saved`` (left allocated after the forward
        pass, output included: what the layer holds until its backward) and ``peak`` (during forward + backward),
        each ``{"reference": ..., "ours": ...}``.
    """
    device = torch.device(device)
    rows = []
    for with_attention in attention:
        reference, ours = default_layers(with_attention, device)
        for n in sizes:
            inputs = [x.requires_grad_(True) if x.is_floating_point() else x for x in dense_residue_graph(n, device)]
            projection = torch.randn(n, ours.out_irreps.dim, generator=torch.Generator().manual_seed(1)).to(device)
            for checkpointing in (False, True):
                row = {"n_nodes": n, "attention": with_attention, "checkpointing": checkpointing}
                row.update(saved={}, peak={})
                for name, layer in (("reference", reference), ("ours", ours)):
                    layer.train(checkpointing)
                    outputs = []  # keeps the output, and with it the autograd graph, alive after the forward pass
                    forward = functools.partial(_append_output, outputs, layer, inputs)
                    row["saved"][name] = memory_use(forward, device)[1]
                    outputs.clear()
                    step = functools.partial(forward_backward, layer, inputs, projection)
                    row["peak"][name] = memory_use(step, device)[0]
                    for x in inputs + list(layer.parameters()):
                        x.grad = None
                rows.append(row)
                if tick:
                    tick(f"memory N={n} attention={with_attention} checkpointing={checkpointing}")
    return rows


# --- 5. the score model ------------------------------------------------------------------------------------------


def random_walk_chain(n_residues: int, generator: torch.Generator) -> Tensor:
    """(n, 3) float64 alpha carbons on a random walk of 3.8 Å steps."""
    steps = torch.randn(n_residues, 3, generator=generator, dtype=torch.float64)
    return (3.8 * steps / steps.norm(dim=1, keepdim=True)).cumsum(0)


def score_model_batch(
    n_residues: int, config: ScoreModelConfig, device: torch.device | str = "cpu", seed: int = 0
) -> ChainBatch:
    """One chain of ``n_residues`` for the score model, EigenFold's dense graph (all ``n (n - 1)`` ordered pairs).

    Standard normal residue and pair features of the config's sizes, ``node_t`` = 0.5 and ``score_norm`` = 1.
    """
    generator = torch.Generator().manual_seed(seed)
    pos = random_walk_chain(n_residues, generator).float()
    node = torch.randn(n_residues, config.lm_node_dim, generator=generator)
    pair = torch.randn(n_residues, n_residues, config.lm_edge_dim, generator=generator)
    data = ChainBatch.from_chains([pos], [node], [pair], torch.tensor([0.5]), torch.tensor([1.0]))
    resi = data.resi
    for name in ("pos", "node_attr", "edge_index", "edge_attr_", "node_t", "batch"):
        setattr(resi, name, getattr(resi, name).to(device))
    data.score_norm = data.score_norm.to(device)
    return data


def default_score_models(
    device: torch.device | str = "cpu", config: ScoreModelConfig | None = None
) -> tuple[ReferenceScoreModel, ResiLevelTensorProductScoreModel]:
    """EigenFold's model (:class:`~tpconv_lite.reference.ReferenceScoreModel`, default initialisation with seed 0)
    and ours with its ``state_dict``, float32, at EigenFold's sizes (``ScoreModelConfig()``) unless ``config`` says
    otherwise."""
    config = config or ScoreModelConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference = ReferenceScoreModel(config).to(device)
    ours = ResiLevelTensorProductScoreModel(config).to(device)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def training_step(model: nn.Module, data: ChainBatch, projection: Tensor) -> list[Tensor]:
    """Forward and backward of ``(model(data) * projection).sum()`` in train mode: the output and the gradients of
    the parameters, by name (the score model's counterpart of :func:`forward_backward`)."""
    model.train()
    for p in model.parameters():
        p.grad = None
    out = model(data)
    (out * projection).sum().backward()
    return [out.detach(), *(p.grad for _, p in sorted(model.named_parameters()))]


def sampler_step(model: nn.Module, data: ChainBatch, diffusion: HarmonicDiffusion, noise: Tensor) -> Tensor:
    """One step of the reverse diffusion: the model in eval mode without autograd, then
    :func:`~tpconv_lite.harmonic.reverse_step` (the chain's first step of the schedule)."""
    model.eval()
    n = data.resi.pos.shape[0]
    with torch.no_grad():
        score = model(data)
    sde, schedule = diffusion.sde(n), diffusion.schedule(n)
    return reverse_step(sde, schedule, 0, data.resi.pos.to(sde.dtype), score.to(sde.dtype), noise)


def matmul_rate(size: int = 1024, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """FLOP/s of ``torch.mm`` of two (size, size) float32 matrices: ``2 size**3`` operations, the fastest of
    ``repeats`` runs, on the current threads."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device) for _ in range(2))
    timing = time_side_by_side({"mm": lambda: torch.mm(a, b)}, 2, repeats, device)["mm"]
    return 2 * size**3 / timing["min"]


def counted_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of the matrix products, convolutions and attention ``fn`` runs, forward and
    backward, as ``torch.utils.flop_counter.FlopCounterMode`` counts them (elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


_PRODUCTS = ("mm.default", "addmm.default", "bmm.default", "baddbmm.default")


class _ProductRecorder(TorchDispatchMode):
    """Records the two matrices of every ``mm``, ``addmm``, ``bmm`` and ``baddbmm`` that runs under it: shapes,
    strides, dtype and device, whoever calls them (linear layers, einsum, autograd's backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.products: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's signature)
        if str(func).removeprefix("aten.") in _PRODUCTS:
            a, b = [x for x in args if isinstance(x, Tensor)][-2:]  # addmm/baddbmm: the bias comes first
            self.products.append((tuple(a.shape), a.stride(), tuple(b.shape), b.stride(), a.dtype, a.device))
        return func(*args, **(kwargs or {}))


def _random_strided(
    shape: tuple[int, ...], stride: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Random numbers laid out with these shape and strides (an expanded operand's zero strides included)."""
    storage = 1 + sum((size - 1) * step for size, step in zip(shape, stride)) if all(shape) else 0
    return torch.randn(storage, dtype=dtype, device=device).as_strided(shape, stride)


def products_alone(fn: Callable[[], object], repeats: int = 3) -> dict:
    """The matrix products that ``fn`` runs, each timed alone: what ``fn`` would take if nothing else cost time.

    ``fn`` runs once while :class:`_ProductRecorder` notes its products (forward and backward, recomputations
    included). Each distinct product then runs alone on random operands of the same shapes, strides, dtype and
    device, without the bias of ``addmm``, in three ways: as laid out in ``fn``; ``C = A B`` with contiguous
    operands; and ``C^T = B^T A^T`` with contiguous operands (the same sums, the result stored transposed). A
    matrix library's speed depends on the layout: on the book's 2-core CPU, a product with a long edge axis ran up
    to 2.3 times as fast when the edges indexed the rows of the result rather than its columns. Timed alone, the
    products take within about 15% of their time inside ``fn`` (either way): an estimate, not a bound.

    Args:
        fn: the work, a function of no arguments.
        repeats: timed runs of each way (after one warm-up run); each way's fastest run counts, as befits a floor.

    Returns:
        ``{"products", "flops", "as_laid_out", "faster_layout"}``: the number of products, their floating-point
        operations (``2 m k n`` each, times the batch), and the seconds of all of them run alone, as laid out and
        each in the fastest of the three ways.

    Example:
        >>> a, b = torch.randn(64, 32), torch.randn(32, 16)
        >>> floor = products_alone(lambda: torch.nn.functional.linear(a, b.T, torch.zeros(16)), repeats=1)
        >>> floor["products"], floor["flops"], 0 < floor["faster_layout"] <= floor["as_laid_out"]
        (1, 65536, True)
    """
    recorder = _ProductRecorder()
    with recorder:
        fn()
    seconds: dict[tuple, tuple[float, float]] = {}
    as_laid_out = faster_layout = 0.0
    flops = 0
    for key in recorder.products:
        shape_a, stride_a, shape_b, stride_b, dtype, device = key
        if key not in seconds:
            a = _random_strided(shape_a, stride_a, dtype, device)
            b = _random_strided(shape_b, stride_b, dtype, device)
            a_c, b_c, a_t, b_t = a.contiguous(), b.contiguous(), a.mT.contiguous(), b.mT.contiguous()
            ways = {
                "as laid out": lambda: torch.matmul(a, b),
                "C = A B": lambda: torch.matmul(a_c, b_c),
                "C^T = B^T A^T": lambda: torch.matmul(b_t, a_t),
            }
            fastest = {way: timing["min"] for way, timing in time_side_by_side(ways, 1, repeats, device).items()}
            seconds[key] = (fastest["as laid out"], min(fastest.values()))
        as_laid_out += seconds[key][0]
        faster_layout += seconds[key][1]
        flops += 2 * math.prod(shape_a) * shape_b[-1]
    return {"products": len(recorder.products), "flops": flops, "as_laid_out": as_laid_out,
            "faster_layout": faster_layout}  # fmt: skip


def bench_score_model(
    sizes: Sequence[int] = (150, 300),
    warmup: int = 1,
    repeats: int = 3,
    device: str | torch.device = "cpu",
    tick: Callable[[str], None] | None = None,
) -> list[dict]:
    """EigenFold's score model against ours, same weights, EigenFold's sizes, one chain with the dense graph.

    For each size: the training step (:func:`training_step`; EigenFold's layers checkpoint in training, ours too,
    and ``ours, no checkpoint`` has the ``checkpointing`` of its embedding and its layers off), its peak tensor
    memory (:func:`memory_use`), and the sampler's step (:func:`sampler_step`).

    Returns:
        Rows with ``n_residues, n_edges, pass ("training step" or "sampler step")``, the timings ``reference``,
        ``ours`` (and ``ours, no checkpoint`` for training), ``speedup`` (reference / ours, medians),
        ``speedup_of_fastest``, ``output_difference``, ``gradient_difference`` and, for training, ``peak`` (bytes,
        per contender), ``flops`` (counted in our step: :func:`counted_flops`) and ``flop_rate`` (those operations
        per second of our median step); for both passes, ``products``: our step's matrix products timed alone
        (:func:`products_alone`), an estimated floor under our time, so that ``reference /
        products["faster_layout"]`` estimates the most that any code doing our products could gain over the
        reference on this machine.
    """
    device = torch.device(device)
    reference, ours = default_score_models(device)
    ours_no_checkpoint = ResiLevelTensorProductScoreModel(ours.args).to(device)
    ours_no_checkpoint.load_state_dict(ours.state_dict())
    ours_no_checkpoint.checkpointing = False
    for layer in ours_no_checkpoint.conv_layers:
        layer.checkpointing = False
    models = {"reference": reference, "ours": ours, "ours, no checkpoint": ours_no_checkpoint}
    diffusion = HarmonicDiffusion(HarmonicConfig(), device=device)
    rows = []
    for n in sizes:
        data = score_model_batch(n, ours.args, device)
        case = {"n_residues": n, "n_edges": data.resi.edge_index.shape[1]}
        projection = torch.randn(n, 3, generator=torch.Generator().manual_seed(1)).to(device)
        results = {}

        def train(name: str) -> None:
            results[name] = training_step(models[name], data, projection)

        timings = time_side_by_side({name: functools.partial(train, name) for name in models}, warmup, repeats, device)
        differences = [
            [relative_difference(a, b) for a, b in zip(results[name], results["reference"])]
            for name in ("ours", "ours, no checkpoint")
        ]
        peak = {name: memory_use(functools.partial(train, name), device)[0] for name in models}
        flops = counted_flops(functools.partial(train, "ours"))
        row = {**case, "pass": "training step", **_compared(timings, max(d[0] for d in differences),
                                                              max(max(d[1:]) for d in differences))}  # fmt: skip
        row.update({"ours, no checkpoint": timings["ours, no checkpoint"], "peak": peak, "flops": flops})
        row["flop_rate"] = flops / timings["ours"]["median"]
        row["products"] = products_alone(functools.partial(train, "ours"))
        rows.append(row)
        if tick:
            tick(f"score model N={n} training step")

        noise = torch.randn(n, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(device)
        steps = {
            name: functools.partial(sampler_step, models[name], data, diffusion, noise)
            for name in ("reference", "ours")  # without autograd, "ours, no checkpoint" is ours again
        }
        outputs = {name: step() for name, step in steps.items()}
        timings = time_side_by_side(steps, warmup, repeats, device)
        difference = relative_difference(outputs["ours"], outputs["reference"])
        row = {**case, "pass": "sampler step", **_compared(timings, difference, None)}
        row["products"] = products_alone(steps["ours"])
        rows.append(row)
        if tick:
            tick(f"score model N={n} sampler step")
    return rows


# --- all of it ---------------------------------------------------------------------------------------------------


def run_benchmarks(
    quick: bool = True, device: str = "cpu", progress: bool = True, settings: Settings | None = None
) -> dict:
    """All five sections with ``QUICK`` or ``FULL`` settings (or ``settings``); a dict a notebook can plot.

    Returns:
        ``{"machine", "settings", "conv_layer", "fused", "graph", "memory", "score_model", "matmul_rate"}``, see
        each ``bench_*`` function and :func:`matmul_rate` (FLOP/s of a 1024 x 1024 float32 ``torch.mm``).
    """
    settings = settings or (QUICK if quick else FULL)
    device = torch.device(device)
    total = 6 * len(settings.conv_sizes) + len(settings.fused_degrees) + len(settings.graph_sizes)
    total += 4 * len(settings.memory_sizes) + 2 * len(settings.score_sizes)
    bar = tqdm(total=total, desc="tpconv_lite.bench", file=sys.stderr) if progress else None

    def tick(description: str) -> None:
        if bar is not None:
            bar.set_postfix_str(description)
            bar.update()

    repeats = {"warmup": settings.warmup, "repeats": settings.repeats, "device": device, "tick": tick}
    try:
        results = {
            "machine": machine_info(device),
            "settings": asdict(settings),
            "conv_layer": bench_conv_layer(settings.conv_sizes, **repeats),
            "fused": bench_fused(settings.fused_degrees, settings.fused_features, settings.fused_batch, **repeats),
            "graph": bench_graph(settings.graph_sizes, **repeats),
            "memory": bench_memory(settings.memory_sizes, device=device, tick=tick),
            "score_model": bench_score_model(settings.score_sizes, **repeats),
            "matmul_rate": matmul_rate(device=device),
        }
    finally:
        if bar is not None:
            bar.close()
    results["machine"]["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return results


def _ms(stats: dict | None) -> str:
    if stats is None:
        return "-"
    return f"{1e3 * stats['median']:9.2f} [{1e3 * stats['min']:.2f}-{1e3 * stats['max']:.2f}]"


def _ratio(numerator: dict, denominator: dict) -> str:
    return f"{numerator['median'] / denominator['median']:.2f}x"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(x).rjust(w) for x, w in zip(line, widths)) for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_report(results: dict) -> str:
    """The results of :func:`run_benchmarks` as text tables (times in ms: median [min-max])."""
    m = results["machine"]
    load = " ".join(f"{x:.2f}" for x in m["load_average"]) if m.get("load_average") else "n/a"
    parts = [
        f"machine: {m['gpu'] or m['cpu']} ({m['device']}), {m['threads']} torch threads of {m['cpu_count']} CPUs, "
        f"load average {load}",
        f"versions: python {m['python']}, torch {m['torch']}, e3nn {m['e3nn']}, tpconv_lite {m['tpconv_lite']}, "
        f"torch_scatter {m['torch_scatter'] or 'missing'}, torch_cluster {m['torch_cluster'] or 'missing'}, "
        f"TPCONV_GRAPH_BACKEND={m['graph_backend']}",
        "",
        "1. TensorProductConvLayer (ours) vs EigenFold's layer (reference), default score-model layer, dense graphs, "
        "float32",
    ]
    rows = []
    for r in results["conv_layer"]:
        checkpointing = "-" if r["checkpointing"] is None else ("on" if r["checkpointing"] else "off")
        grad = "-" if r["gradient_difference"] is None else f"{r['gradient_difference']:.1e}"
        rows.append([
            r["n_nodes"], r["n_edges"], "yes" if r["attention"] else "no", r["pass"], checkpointing,
            _ms(r["reference"]), _ms(r["ours"]), f"{r['speedup']:.2f}x", f"{r['speedup_of_fastest']:.2f}x",
            f"{r['output_difference']:.1e}", grad,
        ])  # fmt: skip
    header = ["N", "E", "attention", "pass", "checkpoint", "reference ms", "ours ms", "speedup", "(fastest)"]
    header += ["out diff", "grad diff"]
    parts.append(_table(header, rows))

    fused = results["fused"]
    parts += ["", f"2. Fused vs full channel-wise tensor product, forward, F={fused['num_features']}, "
              f"batch={fused['batch']}"]  # fmt: skip
    rows = [
        [r["max_degree"], r["paths"], _ms(r["full"]), _ms(r["fused"]), _ratio(r["full"], r["fused"]), _ms(r["e3x"]),
         _ratio(r["fused"], r["e3x"]) if r["e3x"] else "-"]
        for r in fused["rows"]
    ]  # fmt: skip
    parts.append(_table(["L", "paths", "full ms", "fused ms", "full/fused", "e3x ms", "fused/e3x"], rows))
    slopes = [f"{name} {fused['slope_' + name]:.2f}" for name in ("full", "fused") if fused["slope_" + name]]
    parts.append("log-log slopes over L >= 2: " + (", ".join(slopes) if slopes else "n/a"))

    parts += ["", f"3. tpconv_lite.graph: pure torch vs torch_cluster/torch_scatter, {DENSITY} points/A^3, r={RADIUS}"]
    rows = [
        [r["operation"], r["n_points"], r["n_edges"], _ms(r["torch"]), _ms(r["compiled"]),
         "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"]
        for r in results["graph"]
    ]  # fmt: skip
    parts.append(_table(["operation", "N", "E", "torch ms", "compiled ms", "torch/compiled"], rows))

    parts += ["", "4. Tensor memory (MB): saved = left after forward, kept until backward; peak = forward+backward"]
    rows = [
        [r["n_nodes"], "yes" if r["attention"] else "no", "on" if r["checkpointing"] else "off"]
        + [f"{r[kind][name] / 2**20:.1f}" for kind in ("saved", "peak") for name in ("reference", "ours")]
        for r in results["memory"]
    ]
    header = ["N", "attention", "checkpoint", "saved reference", "saved ours", "peak reference", "peak ours"]
    parts.append(_table(header, rows))

    rate = results["matmul_rate"]
    parts += ["", "5. ResiLevelTensorProductScoreModel (ours) vs EigenFold's model (reference), EigenFold's sizes, one "
              "chain, dense graph, float32"]  # fmt: skip
    rows = []
    for r in results["score_model"]:
        training = r["pass"] == "training step"
        grad = "-" if r["gradient_difference"] is None else f"{r['gradient_difference']:.1e}"
        rows.append([
            r["n_residues"], r["n_edges"], r["pass"], _ms(r["reference"]), _ms(r["ours"]),
            _ms(r["ours, no checkpoint"]) if training else "-", f"{r['speedup']:.2f}x",
            _ratio(r["reference"], r["ours, no checkpoint"]) if training else "-",
            f"{r['output_difference']:.1e}", grad,
        ])  # fmt: skip
    header = ["N", "E", "pass", "reference ms", "ours ms", "ours no-ckpt ms", "speedup", "(no-ckpt)"]
    parts.append(_table(header + ["out diff", "grad diff"], rows))
    rows = [
        [r["n_residues"]] + [f"{r['peak'][name] / 2**20:.0f}" for name in ("reference", "ours", "ours, no checkpoint")]
        + [f"{r['peak']['ours'] / r['peak']['reference']:.2f}", f"{r['flops'] / 1e9:.1f}",
           f"{r['flop_rate'] / 1e9:.1f}", f"{r['flop_rate'] / rate:.0%}"]
        for r in results["score_model"] if r["pass"] == "training step"
    ]  # fmt: skip
    header = ["N", "peak reference MB", "peak ours MB", "peak no-ckpt MB", "ours/reference", "GFLOP", "GFLOP/s"]
    parts.append(_table(header + ["of torch.mm"], rows))
    parts.append(f"torch.mm, 1024 x 1024 float32: {rate / 1e9:.1f} GFLOP/s; GFLOP counts the matrix products of our "
                 "training step (torch.utils.flop_counter)")  # fmt: skip
    rows = [
        [r["n_residues"], r["pass"], r["products"]["products"], f"{r['products']['flops'] / 1e9:.1f}",
         f"{1e3 * r['ours']['median']:.1f}", f"{1e3 * r['products']['as_laid_out']:.1f}",
         f"{1e3 * r['products']['faster_layout']:.1f}", f"{1e3 * r['reference']['median']:.1f}",
         f"{r['reference']['median'] / r['products']['faster_layout']:.2f}x"]
        for r in results["score_model"]
    ]  # fmt: skip
    header = ["N", "pass", "products", "GFLOP", "ours ms", "products alone ms", "(faster layout)", "reference ms"]
    parts.append(_table(header + ["ceiling"], rows))
    parts.append("products alone: our step's matrix products, each run alone (no other work), as laid out and each in "
                 "its faster layout; ceiling = reference / faster layout, about the most any code doing these "
                 "products could gain")  # fmt: skip
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> dict:
    """The command line: run, print the report, optionally write the results as JSON."""
    parser = argparse.ArgumentParser(prog="python -m tpconv_lite.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (under a minute on 2 CPUs)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available")
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # keeps the profiler from printing a line at each start and stop
    results = run_benchmarks(quick=args.quick, device=str(device), progress=not args.no_progress)
    print(format_report(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
