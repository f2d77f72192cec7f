"""Graphs on point clouds, scatter reductions from edges to nodes, the softmax over a node's edges, edge geometry.

Edge convention (torch_cluster's ``flow="source_to_target"``): ``edge_index[0]`` holds the source ``j``
(the neighbour), ``edge_index[1]`` the target ``i`` (the centre that receives the message).

Every function takes ``backend``:

- ``"auto"`` (default): ``torch_cluster`` / ``torch_scatter`` when importable, pure torch otherwise;
- ``"torch"``: always pure torch: a grid of cubes of side ``r`` (a cell list) for ``radius_graph``, so that only
  nearby pairs are measured, chunked ``cdist`` for ``knn_graph`` (and for radii too large for the grid to help),
  ``index_add_`` and ``scatter_reduce_`` for ``scatter``;
- ``"pyg"``: always the compiled packages (an ``ImportError`` if they are missing).

The environment variable ``TPCONV_GRAPH_BACKEND`` (``torch`` or ``pyg``) replaces ``"auto"``, which lets a whole
notebook or test run be switched without touching its code.

Two differences from calling torch_cluster directly, both deliberate:

- No silent neighbour cap. ``torch_cluster.radius_graph`` keeps at most 32 neighbours by default, and which 32
  depends on memory order, not distance, so a symmetric molecule can get an asymmetric graph. Here
  ``max_num_neighbors=None`` (the default) keeps every neighbour; an explicit cap keeps the nearest ones in the pure
  backend (torch_cluster keeps the first ones found).
- ``batch`` need not be sorted. torch_cluster assumes sorted batch vectors and silently returns wrong edges
  otherwise; the wrapper sorts and maps the indices back.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from e3nn import o3
from torch import Tensor

try:
    import torch_cluster
except (ImportError, OSError):  # OSError: a wheel built against another torch
    torch_cluster = None
try:
    import torch_scatter
except (ImportError, OSError):
    torch_scatter = None

Backend = Literal["auto", "torch", "pyg"]
Reduce = Literal["sum", "mean", "max"]

_CHUNK = 2048  # rows of the distance matrix computed at once by the pure backend (2048 x N floats)
_GRID_MIN_POINTS = 512  # below this, the whole distance matrix costs less than sorting the points into cubes


def _use_compiled(backend: str, module: object, name: str) -> bool:
    """Resolve ``backend`` to True (compiled package) or False (pure torch)."""
    if backend == "auto":
        backend = os.environ.get("TPCONV_GRAPH_BACKEND", "auto")
    if backend == "torch":
        return False
    if backend == "pyg":
        if module is None:
            raise ImportError(f"backend='pyg' needs {name}, which is not importable; use backend='torch' or install it")
        return True
    if backend == "auto":
        return module is not None
    raise ValueError(f"backend must be 'auto', 'torch' or 'pyg', got {backend!r}")


def _check_points(pos: Tensor, batch: Tensor | None) -> Tensor:
    """Validate ``pos`` (N, 3) and ``batch`` (N,); return ``batch`` (zeros when None)."""
    if not isinstance(pos, Tensor) or pos.dim() != 2 or pos.shape[1] != 3:
        shape = tuple(pos.shape) if isinstance(pos, Tensor) else type(pos).__name__
        raise ValueError(f"pos must be a tensor of shape (N, 3), got {shape}")
    if not pos.is_floating_point():
        raise TypeError(f"pos must be a floating point tensor, got {pos.dtype}")
    if not torch.isfinite(pos).all():
        raise ValueError("pos contains NaN or infinite coordinates")
    if batch is None:
        return torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
    if batch.shape != (pos.shape[0],) or batch.dtype != torch.long:
        raise ValueError(
            f"batch must be a long tensor of shape ({pos.shape[0]},) to match pos, "
            f"got {batch.dtype} of shape {tuple(batch.shape)}"
        )
    if batch.device != pos.device:
        raise ValueError(f"batch is on {batch.device} but pos is on {pos.device}")
    if batch.numel() and batch.min() < 0:
        raise ValueError("batch must hold non-negative graph indices")
    return batch


def _sorted_call(fn, pos: Tensor, batch: Tensor) -> Tensor:
    """Call a torch_cluster graph builder, which needs a sorted ``batch``, and map indices back."""
    if batch.numel() < 2 or bool((batch[1:] >= batch[:-1]).all()):
        return fn(pos, batch)
    perm = torch.argsort(batch, stable=True)
    return perm[fn(pos[perm], batch[perm])]


def _pairs(pos: Tensor, batch: Tensor, loop: bool, keep) -> Tensor:
    """Pure-torch edge finder: ``keep(dist, mask)`` picks edges from one chunk of targets.

    ``dist`` is (C, N), distances from C targets to all N points, with ``inf`` for pairs in different graphs (and
    on the diagonal when ``loop`` is False). ``keep`` returns a boolean (C, N) mask of the edges to keep.
    """
    n = pos.shape[0]
    sources, targets = [], []
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        dist = torch.cdist(pos[start:stop], pos)
        other_graph = batch[start:stop, None] != batch[None, :]
        dist = dist.masked_fill(other_graph, float("inf"))
        if not loop:
            rows = torch.arange(stop - start, device=pos.device)
            dist[rows, rows + start] = float("inf")
        target, source = keep(dist).nonzero(as_tuple=True)
        sources.append(source)
        targets.append(target + start)
    if not sources:
        return torch.empty(2, 0, dtype=torch.long, device=pos.device)
    return torch.stack([torch.cat(sources), torch.cat(targets)])


def _cell_list_pairs(pos: Tensor, batch: Tensor, r: float, loop: bool) -> tuple[Tensor, Tensor] | None:
    """Pure-torch radius search on a grid of cubes of side ``r``: (2, E) edges and their (E,) squared lengths.

    A point's neighbours within ``r`` lie in its own cube or in one of the 26 around it. The points are sorted by a
    cube label that runs fastest along z, so the three cubes ``z-1, z, z+1`` of a column are consecutive in that
    order: for each point, nine ranges of the sorted points (one per column ``x+dx, y+dy``) hold all candidates,
    found by binary search. The work grows like the number of candidates, about 6 times the number of edges for
    evenly spread points, instead of like N**2.

    Returns None when the grid prunes too little (more than a quarter of all pairs are candidates, e.g. when ``r``
    is comparable to the size of the cloud) or has too many cubes for its int64 labels: the chunked distance
    matrix is then as cheap, or the only safe way, and it uses bounded memory.
    """
    n = pos.shape[0]
    low, high = pos.min(dim=0).values, pos.max(dim=0).values
    if float(((high - low) / r).max()) >= 2**20:  # a million cubes along an axis: labels could overflow
        return None
    cube = ((pos - low) / r).floor().long() + 1  # >= 1, and a free layer of cubes on each side
    size_x, size_y, size_z = (int(m) + 2 for m in cube.max(dim=0).values)
    if (int(batch.max()) + 1) * size_x * size_y * size_z >= 2**62:
        return None
    label = ((batch * size_x + cube[:, 0]) * size_y + cube[:, 1]) * size_z + cube[:, 2]
    order = torch.argsort(label, stable=True)
    label, coords = label[order], pos[order].T.contiguous()  # from here on, points are numbered in sorted order

    columns = torch.tensor([(dx * size_y + dy) * size_z for dx in (-1, 0, 1) for dy in (-1, 0, 1)], device=pos.device)
    lowest = label[:, None] + columns - 1  # (N, 9): the label of cube (x+dx, y+dy, z-1) of each point
    first = torch.searchsorted(label, lowest)
    count = torch.searchsorted(label, lowest + 2, right=True) - first  # points in cubes z-1..z+1 of the column
    n_candidates = int(count.sum())
    if n_candidates > n * n / 4:
        return None

    first, count = first.flatten(), count.flatten()
    target = torch.repeat_interleave(count.view(n, 9).sum(dim=1))  # the target of each candidate
    skip = first - (count.cumsum(0) - count)  # candidate k of range m is point k + skip[m]
    source = torch.arange(n_candidates, device=pos.device) + torch.repeat_interleave(skip, count)
    squared = sum((c.index_select(0, source) - c.index_select(0, target)).square() for c in coords)
    keep = squared < r * r
    if not loop:
        keep &= source != target
    kept = keep.nonzero().squeeze(1)
    edges = torch.stack([source.index_select(0, kept), target.index_select(0, kept)])
    return order[edges], squared.index_select(0, kept)


def _nearest_per_target(edge_index: Tensor, length: Tensor, cap: int) -> Tensor:
    """Keep the ``cap`` shortest edges into each target (any increasing function of the length will do)."""
    by_length = torch.argsort(length, stable=True)
    by_target = by_length[torch.argsort(edge_index[1, by_length], stable=True)]  # by target, then by length
    targets = edge_index[1, by_target]
    rank = torch.arange(len(targets), device=targets.device) - torch.searchsorted(targets, targets)
    return edge_index[:, by_target[rank < cap]]


def radius_graph(
    pos: Tensor,
    r: float,
    batch: Tensor | None = None,
    loop: bool = False,
    max_num_neighbors: int | None = None,
    *,
    backend: Backend = "auto",
) -> Tensor:
    """Edges between points closer than ``r`` (strictly), within the same graph of ``batch``.

    Args:
        pos: (N, 3) positions.
        r: cutoff radius, > 0.
        batch: (N,) long graph index of each point, or None for a single graph. Need not be sorted.
        loop: include self-edges ``i -> i``.
        max_num_neighbors: keep at most this many sources per target (the nearest, in the pure backend);
            None keeps all.
        backend: ``"auto"``, ``"torch"`` or ``"pyg"`` (see the module docstring).

    Returns:
        (2, E) long ``edge_index``: row 0 sources ``j``, row 1 targets ``i``, with ``|pos[j] - pos[i]| < r``.

    Example:
        >>> pos = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [5.0, 0, 0]])
        >>> radius_graph(pos, 1.5, backend="torch")
        tensor([[1, 0],
                [0, 1]])
    """
    batch = _check_points(pos, batch)
    if not (float(r) > 0 and float(r) < float("inf")):
        raise ValueError(f"r must be a positive finite radius, got {r}")
    if max_num_neighbors is not None and max_num_neighbors < 1:
        raise ValueError(f"max_num_neighbors must be None or >= 1, got {max_num_neighbors}")
    if pos.shape[0] == 0:
        return torch.empty(2, 0, dtype=torch.long, device=pos.device)

    if _use_compiled(backend, torch_cluster, "torch_cluster"):
        cap = pos.shape[0] if max_num_neighbors is None else max_num_neighbors

        def build(p: Tensor, b: Tensor) -> Tensor:
            return torch_cluster.radius_graph(p, float(r), b, loop, max_num_neighbors=cap, flow="source_to_target")

        return _sorted_call(build, pos, batch)

    found = _cell_list_pairs(pos, batch, float(r), loop) if pos.shape[0] >= _GRID_MIN_POINTS else None
    if found is not None:
        edge_index, squared_length = found
        if max_num_neighbors is None:
            return edge_index
        return _nearest_per_target(edge_index, squared_length, max_num_neighbors)

    def keep(dist: Tensor) -> Tensor:
        within = dist < r
        if max_num_neighbors is None or max_num_neighbors >= dist.shape[1]:
            return within
        nearest = dist.topk(max_num_neighbors, dim=1, largest=False).indices
        capped = torch.zeros_like(within).scatter_(1, nearest, True)
        return within & capped

    return _pairs(pos, batch, loop, keep)


def knn_graph(
    pos: Tensor,
    k: int,
    batch: Tensor | None = None,
    loop: bool = False,
    *,
    backend: Backend = "auto",
) -> Tensor:
    """Edges from each point's ``k`` nearest neighbours (within its graph) to the point.

    Args:
        pos: (N, 3) positions.
        k: number of neighbours per target, >= 1 (fewer when a graph has fewer points).
        batch: (N,) long graph index of each point, or None. Need not be sorted.
        loop: count the point itself among its neighbours.
        backend: ``"auto"``, ``"torch"`` or ``"pyg"``.

    Returns:
        (2, E) long ``edge_index``: row 0 sources (the neighbours), row 1 targets.
        Ties between equidistant neighbours may be broken differently by the two backends.
    """
    batch = _check_points(pos, batch)
    if int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k}")
    if pos.shape[0] == 0:
        return torch.empty(2, 0, dtype=torch.long, device=pos.device)

    if _use_compiled(backend, torch_cluster, "torch_cluster"):

        def build(p: Tensor, b: Tensor) -> Tensor:
            return torch_cluster.knn_graph(p, int(k), b, loop, flow="source_to_target")

        return _sorted_call(build, pos, batch)

    def keep(dist: Tensor) -> Tensor:
        nearest = dist.topk(min(int(k), dist.shape[1]), dim=1, largest=False)
        mask = torch.zeros_like(dist, dtype=torch.bool).scatter_(1, nearest.indices, True)
        return mask & torch.isfinite(dist)  # never link across graphs, even when a graph has < k points

    return _pairs(pos, batch, loop, keep)


def scatter(
    src: Tensor,
    index: Tensor,
    dim: int = 0,
    dim_size: int | None = None,
    reduce: Reduce = "sum",
    *,
    backend: Backend = "auto",
) -> Tensor:
    """Reduce the slices of ``src`` along ``dim`` that share an ``index`` (edges -> nodes).

    Args:
        src: (..., E, ...) values, E along ``dim``.
        index: (E,) long target of each slice.
        dim: the dimension of ``src`` that ``index`` labels.
        dim_size: number of targets (output size along ``dim``); default ``index.max() + 1``.
        reduce: ``"sum"``, ``"mean"`` or ``"max"``. Targets that receive nothing get 0 for all three.
        backend: ``"auto"``, ``"torch"`` or ``"pyg"``.

    Returns:
        Tensor shaped like ``src`` with ``dim`` of size ``dim_size``.

    Example:
        >>> scatter(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 0, 2]), dim_size=4, reduce="mean")
        tensor([1.5000, 0.0000, 4.0000, 0.0000])
    """
    if reduce not in ("sum", "mean", "max"):
        raise ValueError(f"reduce must be 'sum', 'mean' or 'max', got {reduce!r}")
    dim = dim % src.dim() if src.dim() else 0
    if index.dim() != 1 or index.dtype != torch.long or src.dim() == 0 or index.shape[0] != src.shape[dim]:
        raise ValueError(
            f"index must be a 1-D long tensor with one entry per slice of src along dim {dim} "
            f"(src shape {tuple(src.shape)}), got {index.dtype} of shape {tuple(index.shape)}"
        )
    if index.device != src.device:
        raise ValueError(f"index is on {index.device} but src is on {src.device}")
    if index.numel() and index.min() < 0:
        raise ValueError(f"index must be non-negative, got min {int(index.min())}")
    if dim_size is None:
        dim_size = int(index.max()) + 1 if index.numel() else 0
    elif index.numel() and int(index.max()) >= dim_size:
        raise ValueError(f"index holds {int(index.max())}, out of range for dim_size={dim_size}")

    if _use_compiled(backend, torch_scatter, "torch_scatter"):
        return torch_scatter.scatter(src, index, dim=dim, dim_size=dim_size, reduce=reduce)

    shape = list(src.shape)
    shape[dim] = dim_size
    view = [1] * src.dim()
    view[dim] = -1
    if reduce == "max":
        expanded = index.view(view).expand_as(src)
        out = src.new_zeros(shape).scatter_reduce_(dim, expanded, src, reduce="amax", include_self=False)
        return out
    out = src.new_zeros(shape).index_add_(dim, index, src)
    if reduce == "mean":
        count = torch.zeros(dim_size, dtype=src.dtype, device=src.device)
        count.index_add_(0, index, torch.ones_like(index, dtype=src.dtype))
        out = out / count.clamp(min=1).view(view)
    return out


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


def edge_geometry(
    pos: Tensor, edge_index: Tensor, irreps_sh: o3.Irreps | str | int, normalization: str = "component"
) -> tuple[Tensor, Tensor, Tensor]:
    """The vector, length and spherical harmonics of every edge ``j -> i``: ``r_ij = pos[j] - pos[i]``.

    A zero-length edge (two points at the same place) has no direction: its harmonics are taken at the zero vector,
    ``Y = (1, 0, ..., 0)`` for component normalization (only ``l = 0`` survives, which is equivariant). Passing the
    zero vector to ``o3.spherical_harmonics(..., normalize=True)`` gives the same values but gradients of about
    1e12, so the directions are normalised here with a safe divisor and the harmonics taken with ``normalize=False``.

    Args:
        pos: (N, 3) positions.
        edge_index: (2, E) long, row 0 sources ``j``, row 1 targets ``i``.
        irreps_sh: irreps of the harmonics (each ``l`` with parity ``(-1)^l``), or ``lmax``.
        normalization: ``"component"`` (the book's default), ``"norm"`` or ``"integral"``, as in e3nn.

    Returns:
        ``(edge_vec, edge_length, edge_sh)``: (E, 3), (E,) and (E, irreps_sh.dim), in the dtype of ``pos``.

    Example:
        >>> pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 2.0]])
        >>> vec, length, sh = edge_geometry(pos, torch.tensor([[1, 2], [0, 1]]), 1)
        >>> length, sh
        (tensor([2., 0.]), tensor([[1.0000, 0.0000, 0.0000, 1.7321],
                [1.0000, 0.0000, 0.0000, 0.0000]]))
    """
    if isinstance(irreps_sh, int):
        irreps_sh = o3.Irreps.spherical_harmonics(irreps_sh)
    src, dst = edge_index
    edge_vec = pos[src] - pos[dst]
    edge_length = edge_vec.norm(dim=1)
    edge_dir = edge_vec / torch.where(edge_length > 0, edge_length, 1.0)[:, None]  # a zero-length edge stays 0
    edge_sh = o3.spherical_harmonics(irreps_sh, edge_dir, normalize=False, normalization=normalization)
    return edge_vec, edge_length, edge_sh
