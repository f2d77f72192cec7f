"""tpconv_lite.graph: both backends give the same graphs, reductions and gradients."""

from __future__ import annotations

import pytest
import torch

from tpconv_lite import benzene, graph
from tpconv_lite.graph import knn_graph, radius_graph, scatter, torch_cluster, torch_scatter

needs_cluster = pytest.mark.skipif(torch_cluster is None, reason="torch_cluster is not installed")
needs_scatter = pytest.mark.skipif(torch_scatter is None, reason="torch_scatter is not installed")


def _edge_set(edge_index: torch.Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, edge_index.T.tolist()))


def _brute_force_radius(pos, r, batch, loop):
    dist = torch.cdist(pos, pos)
    mask = (dist < r) & (batch[:, None] == batch[None, :])
    if not loop:
        mask.fill_diagonal_(False)
    target, source = mask.nonzero(as_tuple=True)
    return {(int(s), int(t)) for s, t in zip(source, target)}


@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("sorted_batch", [True, False])
def test_radius_graph_pure_torch_matches_brute_force(loop: bool, sorted_batch: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(60, 3, generator=gen)
    batch = torch.arange(60) // 20 if sorted_batch else torch.arange(60) % 3
    edges = radius_graph(pos, 1.2, batch, loop=loop, backend="torch")
    assert edges.dtype == torch.long and edges.shape[0] == 2
    assert _edge_set(edges) == _brute_force_radius(pos, 1.2, batch, loop)


@needs_cluster
@pytest.mark.parametrize("sorted_batch", [True, False])
@pytest.mark.parametrize("loop", [False, True])
def test_radius_graph_backends_agree(sorted_batch: bool, loop: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    pos = torch.randn(80, 3, generator=gen)
    batch = torch.arange(80) // 20 if sorted_batch else torch.arange(80) % 4
    a = radius_graph(pos, 1.0, batch, loop=loop, backend="torch")
    b = radius_graph(pos, 1.0, batch, loop=loop, backend="pyg")
    assert _edge_set(a) == _edge_set(b)
    assert len(_edge_set(a)) == a.shape[1] == b.shape[1]  # no duplicates


@needs_cluster
def test_unsorted_batch_is_handled_where_raw_torch_cluster_is_wrong() -> None:
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(40, 3, generator=gen)
    batch = torch.arange(40) % 3
    raw = torch_cluster.radius_graph(pos, 1.0, batch, max_num_neighbors=100)
    assert not bool((batch[raw[0]] == batch[raw[1]]).all()), "torch_cluster now handles unsorted batches"
    ours = radius_graph(pos, 1.0, batch, backend="pyg")
    assert bool((batch[ours[0]] == batch[ours[1]]).all())


@needs_cluster
def test_no_silent_neighbour_cap() -> None:
    """torch_cluster's own default keeps 32 neighbours; the wrapper keeps all of them unless asked."""
    pos = torch.randn(100, 3, generator=torch.Generator().manual_seed(2)) * 0.1  # all within 1 of each other
    full = 100 * 99
    assert torch_cluster.radius_graph(pos, 1.0).shape[1] == 100 * 32
    assert radius_graph(pos, 1.0, backend="pyg").shape[1] == full
    assert radius_graph(pos, 1.0, backend="torch").shape[1] == full


def test_explicit_cap_keeps_the_nearest_neighbours() -> None:
    pos = torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [0.2, 0, 0], [0.35, 0, 0]])
    edges = radius_graph(pos, 1.0, max_num_neighbors=1, backend="torch")
    nearest = {0: 1, 1: 0, 2: 1, 3: 2}  # target -> nearest source (ties broken by distance, none here)
    assert _edge_set(edges) == {(s, t) for t, s in nearest.items()}


@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("sorted_batch", [True, False])
def test_cell_list_matches_brute_force_on_a_sparse_cloud(loop: bool, sorted_batch: bool) -> None:
    """Far more points than fit in one cube of side r: the pure backend searches the 27 cubes around each point."""
    gen = torch.Generator().manual_seed(5)
    pos = torch.rand(600, 3, generator=gen) * 12.0 - 6.0
    batch = torch.arange(600) // 200 if sorted_batch else torch.arange(600) % 3
    assert 600 >= graph._GRID_MIN_POINTS and graph._cell_list_pairs(pos, batch, 1.5, loop) is not None  # the grid
    edges = radius_graph(pos, 1.5, batch, loop=loop, backend="torch")
    assert _edge_set(edges) == _brute_force_radius(pos, 1.5, batch, loop)
    assert len(_edge_set(edges)) == edges.shape[1] > 600


def test_cell_list_cap_keeps_the_nearest_neighbours() -> None:
    gen = torch.Generator().manual_seed(6)
    pos = torch.rand(600, 3, generator=gen) * 10.0
    batch = torch.zeros(600, dtype=torch.long)
    assert 600 >= graph._GRID_MIN_POINTS and graph._cell_list_pairs(pos, batch, 2.0, False) is not None
    edges = radius_graph(pos, 2.0, max_num_neighbors=3, backend="torch")
    dist = torch.cdist(pos, pos).fill_diagonal_(float("inf"))
    expected_count = (dist < 2.0).sum(dim=1).clamp(max=3)
    assert torch.equal(torch.bincount(edges[1], minlength=600), expected_count)
    nearest = dist.topk(3, dim=1, largest=False).values  # each kept edge is among its target's 3 nearest
    kept = dist[edges[1], edges[0]]
    assert bool((kept <= nearest[edges[1], -1]).all())


def test_cell_list_falls_back_when_it_cannot_prune() -> None:
    pos = torch.randn(50, 3, generator=torch.Generator().manual_seed(7))
    batch = torch.zeros(50, dtype=torch.long)
    assert graph._cell_list_pairs(pos, batch, 100.0, False) is None  # one cube holds everything
    assert radius_graph(pos, 100.0, backend="torch").shape[1] == 50 * 49
    spread = torch.tensor([[0.0, 0, 0], [1e30, 1e30, 1e30]])  # 1e90 cubes of side 1: labels would overflow
    assert graph._cell_list_pairs(spread, torch.zeros(2, dtype=torch.long), 1.0, False) is None
    assert radius_graph(spread, 1.0, backend="torch").shape == (2, 0)


def test_benzene_graph_is_symmetric() -> None:
    pos = benzene().pos
    degrees = torch.bincount(radius_graph(pos, 3.0, backend="torch")[1], minlength=12)
    assert degrees[:6].unique().numel() == 1 and degrees[6:].unique().numel() == 1  # all C alike, all H alike


@needs_cluster
@pytest.mark.parametrize("loop", [False, True])
def test_knn_graph_backends_agree(loop: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    pos = torch.randn(50, 3, generator=gen)
    batch = torch.arange(50) % 2  # unsorted on purpose
    a = knn_graph(pos, 4, batch, loop=loop, backend="torch")
    b = knn_graph(pos, 4, batch, loop=loop, backend="pyg")
    assert _edge_set(a) == _edge_set(b)
    assert torch.equal(torch.bincount(a[1], minlength=50), torch.full((50,), 4))


def test_knn_graph_small_graph_never_crosses_graphs() -> None:
    pos = torch.randn(5, 3, generator=torch.Generator().manual_seed(4))
    batch = torch.tensor([0, 0, 1, 1, 1])
    edges = knn_graph(pos, 4, batch, backend="torch")
    assert bool((batch[edges[0]] == batch[edges[1]]).all())
    assert torch.bincount(edges[1], minlength=5).tolist() == [1, 1, 2, 2, 2]


@pytest.mark.parametrize("backend", ["torch", pytest.param("pyg", marks=needs_cluster)])
def test_empty_and_isolated_points(backend: str) -> None:
    empty = radius_graph(torch.zeros(0, 3), 1.0, backend=backend)
    assert empty.shape == (2, 0)
    far = torch.tensor([[0.0, 0, 0], [10.0, 0, 0]])
    assert radius_graph(far, 1.0, backend=backend).shape == (2, 0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: radius_graph(torch.zeros(4, 2), 1.0), r"shape \(N, 3\)"),
        (lambda: radius_graph(torch.zeros(4, 3), -1.0), "positive finite radius"),
        (lambda: radius_graph(torch.zeros(4, 3), 1.0, batch=torch.zeros(3, dtype=torch.long)), r"shape \(4,\)"),
        (lambda: radius_graph(torch.full((2, 3), float("nan")), 1.0), "NaN"),
        (lambda: radius_graph(torch.zeros(4, 3, dtype=torch.long), 1.0), "floating point"),
        (lambda: knn_graph(torch.zeros(4, 3), 0), "k must be an integer >= 1"),
        (lambda: radius_graph(torch.zeros(4, 3), 1.0, backend="cuda"), "backend must be"),
    ],
)
def test_graph_bad_input(call, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_forcing_the_compiled_backend_without_it(monkeypatch) -> None:
    import tpconv_lite.graph as graph

    monkeypatch.setattr(graph, "torch_cluster", None)
    with pytest.raises(ImportError, match="torch_cluster"):
        graph.radius_graph(torch.zeros(3, 3), 1.0, backend="pyg")
    assert graph.radius_graph(torch.zeros(3, 3), 1.0).shape == (2, 6)  # auto falls back to pure torch


def test_environment_variable_selects_the_backend(monkeypatch) -> None:
    import tpconv_lite.graph as graph

    monkeypatch.setattr(graph, "torch_scatter", None)
    monkeypatch.setenv("TPCONV_GRAPH_BACKEND", "pyg")
    with pytest.raises(ImportError, match="torch_scatter"):
        graph.scatter(torch.ones(3), torch.zeros(3, dtype=torch.long))
    monkeypatch.setenv("TPCONV_GRAPH_BACKEND", "torch")
    assert graph.scatter(torch.ones(3), torch.zeros(3, dtype=torch.long)).tolist() == [3.0]


def _scatter_reference(src, index, dim_size, reduce):
    out = torch.zeros(dim_size, *src.shape[1:], dtype=src.dtype)
    for i in range(dim_size):
        rows = src[index == i]
        if len(rows):
            out[i] = {"sum": rows.sum(0), "mean": rows.mean(0), "max": rows.max(0).values}[reduce]
    return out


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_scatter_pure_torch_matches_a_loop(reduce: str) -> None:
    gen = torch.Generator().manual_seed(5)
    src = torch.randn(30, 4, 2, generator=gen, dtype=torch.float64)
    index = torch.randint(0, 8, (30,), generator=gen)
    index[index == 3] = 4  # node 3 receives nothing
    out = scatter(src, index, dim_size=10, reduce=reduce, backend="torch")
    assert torch.allclose(out, _scatter_reference(src, index, 10, reduce))
    assert out[3].abs().max() == 0 and out[9].abs().max() == 0


@needs_scatter
@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_scatter_backends_agree_with_gradients(reduce: str, dim: int) -> None:
    gen = torch.Generator().manual_seed(6)
    src = torch.randn(5, 12, 3, generator=gen, dtype=torch.float64)
    index = torch.randint(0, 6, (src.shape[dim],), generator=gen)
    grads = []
    outs = []
    for backend in ["torch", "pyg"]:
        x = src.clone().requires_grad_(True)
        out = scatter(x, index, dim=dim, dim_size=7, reduce=reduce, backend=backend)
        (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append(x.grad)
    assert torch.allclose(outs[0], outs[1])
    assert torch.allclose(grads[0], grads[1])


def test_scatter_empty_index() -> None:
    out = scatter(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), dim_size=4, reduce="mean", backend="torch")
    assert out.shape == (4, 3) and not torch.isnan(out).any()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: scatter(torch.ones(3), torch.zeros(4, dtype=torch.long)), "one entry per slice"),
        (lambda: scatter(torch.ones(3), torch.zeros(3)), "long tensor"),
        (lambda: scatter(torch.ones(3), torch.tensor([0, 1, 5]), dim_size=3), "out of range"),
        (lambda: scatter(torch.ones(3), torch.tensor([0, -1, 1])), "non-negative"),
        (lambda: scatter(torch.ones(3), torch.zeros(3, dtype=torch.long), reduce="min"), "reduce must be"),
    ],
)
def test_scatter_bad_input(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_edge_geometry_keeps_gradients_finite_at_a_zero_length_edge():
    from e3nn import o3

    from tpconv_lite.graph import edge_geometry

    pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 2.0, 2.0]], dtype=torch.float64, requires_grad=True)
    edge_index = torch.tensor([[1, 2, 0], [0, 0, 2]])
    vec, length, sh = edge_geometry(pos, edge_index, 2)
    assert torch.equal(vec, pos[edge_index[0]] - pos[edge_index[1]]) and length[0] == 0 and length[1] == 3
    torch.testing.assert_close(sh[0], torch.tensor([1.0] + [0.0] * 8, dtype=torch.float64))  # only l = 0 survives
    expected = o3.spherical_harmonics([0, 1, 2], vec[1:], normalize=True, normalization="component")
    torch.testing.assert_close(sh[1:], expected, rtol=1e-14, atol=1e-14)
    (grad,) = torch.autograd.grad(sh.square().sum() + length.sum(), pos, retain_graph=True)
    assert torch.isfinite(grad).all() and grad.abs().max() < 10
    (unguarded,) = torch.autograd.grad(o3.spherical_harmonics([0, 1, 2], vec[:1], True, "component").sum(), pos)
    assert unguarded.abs().max() > 1e6  # what the guard avoids
