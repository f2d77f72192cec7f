"""tpconv_lite.bench on tiny sizes: well-formed results and small differences (speed is never asserted)."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import asdict

import pytest
import torch

from tpconv_lite import bench, graph

TINY = bench.Settings(
    conv_sizes=(6,),
    fused_degrees=(1, 2, 3),
    fused_features=2,
    fused_batch=4,
    graph_sizes=(60,),
    memory_sizes=(5,),
    score_sizes=(5,),
    warmup=0,
    repeats=2,
)


@pytest.fixture(scope="module")
def command_line(tmp_path_factory):
    """``python -m tpconv_lite.bench --quick --json PATH`` with TINY settings, torch_scatter/torch_cluster hidden."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(bench, "QUICK", TINY)
        monkeypatch.setattr(graph, "torch_cluster", None)
        monkeypatch.setattr(graph, "torch_scatter", None)
        argv = ["--quick", "--json", str(path), "--no-progress", "--threads", str(torch.get_num_threads())]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            results = bench.main(argv)
    return results, out.getvalue(), json.loads(path.read_text())


def assert_timing(stats, runs):
    assert stats.keys() == {"median", "min", "max", "runs"}
    assert 0 < stats["min"] <= stats["median"] <= stats["max"] and stats["runs"] == runs


def test_command_line_report_and_json(command_line):
    results, report, written = command_line
    assert written == json.loads(json.dumps(results))
    assert results["settings"] == asdict(TINY)
    machine = results["machine"]
    assert machine["torch"] == torch.__version__ and machine["torch_scatter"] is None and machine["threads"] >= 1
    titles = ("1. TensorProductConvLayer", "2. Fused", "3. tpconv_lite.graph", "4. Tensor memory", "5. ResiLevel")
    for title in titles:
        assert title in report
    assert "torch_scatter missing" in report


def test_conv_layer_rows_compare_equal_layers(command_line):
    rows = command_line[0]["conv_layer"]
    cases = [(False, "forward", None), (False, "forward+backward", False), (False, "forward+backward", True)]
    cases += [(True, *case[1:]) for case in cases]
    assert [(r["attention"], r["pass"], r["checkpointing"]) for r in rows] == cases
    for row in rows:
        assert row["n_nodes"] == 6 and row["n_edges"] == 30
        assert_timing(row["reference"], 2)
        assert_timing(row["ours"], 2)
        assert row["speedup"] == pytest.approx(row["reference"]["median"] / row["ours"]["median"])
        assert row["speedup_of_fastest"] == pytest.approx(row["reference"]["min"] / row["ours"]["min"])
        assert 0 <= row["output_difference"] < 1e-5
        if row["pass"] == "forward":
            assert row["gradient_difference"] is None
        else:
            assert 0 <= row["gradient_difference"] < 1e-5


def test_memory_rows(command_line):
    rows = command_line[0]["memory"]
    expected = [(attention, checkpointing) for attention in (False, True) for checkpointing in (False, True)]
    assert [(r["attention"], r["checkpointing"]) for r in rows] == expected
    for row in rows:
        for kind in ("saved", "peak"):
            assert row[kind].keys() == {"reference", "ours"}
            assert all(isinstance(v, int) and v > 0 for v in row[kind].values())
    # without checkpointing autograd keeps the per-edge intermediates, with it only the checkpoint's inputs
    for without, with_ in (rows[:2], rows[2:]):
        assert without["saved"]["ours"] > with_["saved"]["ours"]
        assert without["saved"]["reference"] > with_["saved"]["reference"]


def test_score_model_rows_compare_equal_models(command_line):
    results = command_line[0]
    rows = results["score_model"]
    assert [r["pass"] for r in rows] == ["training step", "sampler step"]
    for row in rows:
        assert row["n_residues"] == 5 and row["n_edges"] == 20
        assert_timing(row["reference"], 2)
        assert_timing(row["ours"], 2)
        assert row["speedup"] == pytest.approx(row["reference"]["median"] / row["ours"]["median"])
        assert 0 <= row["output_difference"] < 1e-5
    training, sampling = rows
    assert 0 <= training["gradient_difference"] < 1e-5 and sampling["gradient_difference"] is None
    assert_timing(training["ours, no checkpoint"], 2)
    assert all(isinstance(v, int) and v > 0 for v in training["peak"].values())
    assert training["flops"] > 0 and training["flop_rate"] == pytest.approx(
        training["flops"] / training["ours"]["median"])
    assert results["matmul_rate"] > 0
    for row in rows:
        products = row["products"]
        assert products["products"] > 0 and 0 < products["faster_layout"] <= products["as_laid_out"]
    assert training["products"]["flops"] == training["flops"]  # the same products as torch's FLOP counter
    assert training["products"]["products"] > sampling["products"]["products"]  # backward and recomputation
    assert "ceiling" in command_line[1]


def test_products_alone_records_every_product():
    """Each kind of matrix product is found, from any caller (einsum, linear, autograd), with its FLOPs."""
    a = torch.randn(5, 4, requires_grad=True)
    b, c, bias = torch.randn(4, 3), torch.randn(2, 3, 6), torch.randn(3)

    def work():
        torch.einsum("bij,bjk->bik", c.transpose(1, 2), c)  # bmm: 2 x (6, 3) @ (3, 6)
        torch.addmm(bias, a, b).sum().backward()  # addmm, then mm for the gradient of a: (5, 3) @ (3, 4)

    floor = bench.products_alone(work, repeats=1)
    assert floor["products"] == 3
    assert floor["flops"] == 2 * (2 * 6 * 3 * 6 + 5 * 4 * 3 + 5 * 3 * 4)
    assert 0 < floor["faster_layout"] <= floor["as_laid_out"]
    assert bench.products_alone(lambda: torch.randn(3, 3) + 1)["products"] == 0


def test_products_alone_times_each_layout_of_the_same_product():
    """Operands laid out as in the step: transposed and expanded (zero-stride) views are rebuilt, not copied."""
    x = bench._random_strided((4, 3), (1, 4), torch.float32, torch.device("cpu"))
    assert x.stride() == (1, 4) and not x.is_contiguous()
    expanded = bench._random_strided((2, 3, 5), (0, 5, 1), torch.float32, torch.device("cpu"))
    assert torch.equal(expanded[0], expanded[1])
    assert bench._random_strided((0, 3), (3, 1), torch.float32, torch.device("cpu")).shape == (0, 3)


def test_score_model_differences_are_real():
    """A model that computes something else shows in the training step's differences."""
    config = bench.ScoreModelConfig(resi_conv_layers=2, resi_ns=8, lm_node_dim=4, lm_edge_dim=4)
    reference, ours = bench.default_score_models(config=config)
    data = bench.score_model_batch(6, config)
    projection = torch.randn(6, 3)
    same = [bench.relative_difference(a, b) for a, b in zip(bench.training_step(ours, data, projection),
                                                             bench.training_step(reference, data, projection))]
    assert max(same) < 1e-5
    with torch.no_grad():
        ours.conv_layers[1].fc[0].weight.mul_(1.01)
    changed = [bench.relative_difference(a, b) for a, b in zip(bench.training_step(ours, data, projection),
                                                                bench.training_step(reference, data, projection))]
    assert changed[0] > 1e-5 and max(changed[1:]) > 1e-5


def test_graph_rows_without_the_compiled_packages(command_line):
    rows = command_line[0]["graph"]
    assert [r["operation"] for r in rows] == ["radius_graph", "scatter sum", "scatter mean", "scatter max"]
    for row in rows:
        assert row["n_points"] == 60 and row["n_edges"] > 0
        assert_timing(row["torch"], 2)
        assert row["compiled"] is None and row["ratio"] is None


@pytest.mark.skipif(graph.torch_scatter is None or graph.torch_cluster is None, reason="needs the compiled packages")
def test_graph_rows_with_the_compiled_packages():
    for row in bench.bench_graph(sizes=(60,), warmup=0, repeats=1):
        assert_timing(row["compiled"], 1)
        assert row["ratio"] == pytest.approx(row["torch"]["median"] / row["compiled"]["median"])


def test_fused_rows_and_slopes(command_line):
    fused = command_line[0]["fused"]
    assert [r["max_degree"] for r in fused["rows"]] == [1, 2, 3]
    assert [r["paths"] for r in fused["rows"]] == [4, 11, 23]  # paths l1 x l2 -> l3 between tensors
    for row in fused["rows"]:
        assert_timing(row["full"], 2)
        assert_timing(row["fused"], 2)
    assert isinstance(fused["slope_full"], float) and isinstance(fused["slope_fused"], float)


def test_differences_are_real():
    """The relative differences reported would show a layer that computes something else."""
    reference, ours = bench.default_layers(attention=False)
    inputs = bench.dense_residue_graph(6)
    assert bench.relative_difference(ours(*inputs), reference(*inputs)) < 1e-5
    with torch.no_grad():
        ours.fc[0].weight.mul_(1.01)
    assert bench.relative_difference(ours(*inputs), reference(*inputs)) > 1e-5


def test_helpers():
    assert bench.relative_difference(torch.tensor([1.0, 2.1]), torch.tensor([1.0, 2.0])) == pytest.approx(0.05)
    assert bench.relative_difference(torch.zeros(3), torch.zeros(3)) == 0
    assert bench._slope([1, 2, 4], [3, 12, 48]) == pytest.approx(2)
    assert bench._slope([2], [1]) is None
    node_attr, edge_index, edge_attr, edge_sh = bench.dense_residue_graph(5)
    assert node_attr.shape == (5, 60) and edge_attr.shape == (20, 96) and edge_sh.shape == (20, 9)
    assert {tuple(e) for e in edge_index.T.tolist()} == {(j, i) for j in range(5) for i in range(5) if i != j}


def test_memory_use_sees_a_temporary():
    def temporary():
        x = torch.ones(1000, 1000)  # 4 MB, freed before returning
        return float(x.sum())

    peak, left = bench.memory_use(temporary)
    assert peak >= 4_000_000 and left < 100_000


def test_memory_use_replays_allocations_in_time_order():
    def two_in_turn() -> None:
        held = [torch.ones(1000, 1000)]  # 4 MB
        held.append(torch.ones(1000, 1000) + 1)  # 8 MB, and a 4 MB temporary inside `+`: 12 MB at the peak
        held.clear()
        return None

    peak, left = bench.memory_use(two_in_turn)
    assert 12_000_000 <= peak < 12_100_000 and abs(left) < 100_000


def test_command_line_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        bench.main(["--threads", "0"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            bench.main(["--device", "cuda"])
