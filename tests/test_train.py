"""python -m tpconv_lite.train: exact resume, atomic checkpoints, the log, bad files, DDP under torchrun, restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from tpconv_lite import train as train_module
from tpconv_lite.proteins import load_dataset, write_pdb
from tpconv_lite.train import load_checkpoint, lr_factor, main

TINY = ["--preset", "tiny", "--no-progress", "--threads", "1"]


def run(out: Path, steps: int, *extra: str) -> dict:
    """Train in this process; return the checkpoint."""
    main([*TINY, "--out", str(out), "--steps", str(steps), *extra])
    return load_checkpoint(out / "checkpoint.pt")


def log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone`` with this worktree's package first on the path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def max_relative_difference(a: dict, b: dict) -> float:
    """``max |a - b| / max |a|`` over the tensors of two state dicts with the same keys."""
    diff = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].numel())
    scale = max(float(a[k].abs().max()) for k in a if a[k].numel())
    return diff / scale


def test_resume_is_bit_identical_on_one_process(tmp_path: Path) -> None:
    # evaluations on the way (held-out loss, samples at checkpoints) must not disturb the training streams
    evaluations = ["--eval-every", "3", "--eval-samples", "1", "--ckpt-every", "5"]
    straight = run(tmp_path / "straight", 10, *evaluations)
    run(tmp_path / "resumed", 5, *evaluations)
    resumed = run(tmp_path / "resumed", 10, "--resume", *evaluations)
    assert straight["step"] == resumed["step"] == 10
    assert straight["model"].keys() == resumed["model"].keys()
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert straight["optimizer"]["state"].keys() == resumed["optimizer"]["state"].keys()
    for key, state in straight["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], resumed["optimizer"]["state"][key]["exp_avg_sq"])
    assert [r["loss"] for r in log_lines(tmp_path / "straight")] == [r["loss"] for r in log_lines(tmp_path / "resumed")]
    # the parameters did move: the comparison is not between two untouched initialisations
    first = run(tmp_path / "one", 1)
    assert any(not torch.equal(first["model"][k], straight["model"][k]) for k in first["model"])
    # recomputing the layers' messages in the backward pass (EigenFold's way, the default) changes no bit
    without = run(tmp_path / "without", 10, *evaluations, "--no-activation-checkpointing")
    assert all(torch.equal(value, without["model"][key]) for key, value in straight["model"].items())


def test_log_holds_each_step_once_after_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(out, 4)
    saved = (out / "checkpoint.pt").read_bytes()
    run(out, 7, "--resume")
    before = log_lines(out)
    (out / "checkpoint.pt").write_bytes(saved)  # as if the run had died after logging steps 5 to 7
    with open(out / "log.jsonl", "a") as log:
        log.write('{"step": 8, "loss": 0.')  # and in the middle of a line
    run(out, 7, "--resume")
    after = log_lines(out)
    assert [r["step"] for r in after] == list(range(1, 8))
    assert [r["loss"] for r in after] == [r["loss"] for r in before]
    for record in after:
        assert {"step", "loss", "base_loss", "lr", "world_size"} <= record.keys()
        assert record["world_size"] == 1


def test_checkpoint_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    run(out, 2)

    def dies_while_saving(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(train_module.torch, "save", dies_while_saving)
    with pytest.raises(KeyboardInterrupt):
        run(out, 4, "--resume")
    monkeypatch.undo()
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 2
    assert not (out / "checkpoint.pt.tmp").exists()


def test_checkpoint_holds_what_sample_needs(tmp_path: Path) -> None:
    checkpoint = run(tmp_path / "run", 2, "--ckpt-every", "1")
    assert checkpoint["step"] == 2 and checkpoint["world_size"] == 1
    hyper = checkpoint["hyperparameters"]
    assert hyper["preset"] == "tiny" and {"model", "diffusion", "optim", "seed"} <= hyper.keys()
    model = train_module.build_model(hyper["model"], torch.device("cpu"))
    model.load_state_dict(checkpoint["model"])
    assert checkpoint["sampler"] == {**train_module.StepSampler(
        checkpoint["data"]["n_train"], 1, train_module.Processes(0, 1, 0, torch.device("cpu")), 0).position(3),
        "seed": 0, "steps_per_epoch": checkpoint["sampler"]["steps_per_epoch"]}  # fmt: skip
    assert {"python", "numpy", "torch", "generator", "cuda"} <= checkpoint["rng"][0].keys()


def test_noise_level_options_reach_the_diffusion() -> None:
    def diffusion(*extra: str) -> dict:
        return train_module.hyperparameters(train_module.parse_args(["--out", "x", *extra]))["diffusion"]

    assert diffusion()["train_skew"] == 0 and diffusion()["train_rmsd_max"] == 0  # EigenFold's published values
    given = diffusion("--train-skew", "-5", "--train-rmsd-max", "3", "--train-tmin", "0.002")
    assert (given["train_skew"], given["train_rmsd_max"], given["train_tmin"]) == (-5.0, 3.0, 0.002)
    kernel = train_module.build_diffusion(given, torch.device("cpu")).kernel
    assert (kernel.skew, kernel.rmsd_max, kernel.tmin) == (-5.0, 3.0, 0.002)
    with pytest.raises(ValueError, match="train_rmsd_max"):
        diffusion("--train-rmsd-max", "-1")
    assert diffusion()["train_band_weight"] == 0  # no band: EigenFold's draw
    band = diffusion("--train-band-tmin", "1", "--train-band-tmax", "10", "--train-band-weight", "0.4")
    assert train_module.build_diffusion(band, torch.device("cpu")).kernel.band == (1.0, 10.0, 0.4)
    with pytest.raises(ValueError, match="train_band_tmin < train_band_tmax"):
        diffusion("--train-band-weight", "0.4")

def test_refusals(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(out, 1)
    with pytest.raises(SystemExit, match="pass --resume"):
        run(out, 2)
    with pytest.raises(SystemExit, match="lr=0.5"):
        run(out, 2, "--resume", "--lr", "0.5")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a tpconv_lite.train checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a tpconv_lite.train checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_bad_files_are_reported_once_and_skipped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for chain in load_dataset("train")[:2]:
        write_pdb(chain, data / f"{chain.name}.pdb")
    (data / "broken.pdb").write_text("this is not a PDB file\n")
    (data / "empty.cif").write_text("")
    (data / "notes.txt").write_text("not a structure file: not read")
    run(tmp_path / "run", 2, "--data", str(data))
    err = capsys.readouterr().err
    for name in ("broken.pdb", "empty.cif"):
        assert err.count(f"skipping {data / name}: ") == 1, err
    assert "notes.txt" not in err
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["data"]["n_train"] == 2
    with pytest.raises(SystemExit, match="broken.pdb"):
        run(tmp_path / "strict", 2, "--data", str(data), "--strict")
    for chain in load_dataset("train")[:2]:
        (data / f"{chain.name}.pdb").unlink()
    with pytest.raises(SystemExit, match=r"no usable chain in .* \(2 PDB/mmCIF file"):
        run(tmp_path / "none", 2, "--data", str(data))


def test_large_loss_skips_the_step(tmp_path: Path) -> None:
    start = run(tmp_path / "start", 1, "--max-loss", "1e-9")
    later = run(tmp_path / "later", 3, "--max-loss", "1e-9")
    assert all(r["skipped"] for r in log_lines(tmp_path / "later"))
    assert all(torch.equal(start["model"][k], later["model"][k]) for k in start["model"])


def test_heldout_loss_is_logged_every_k_steps(tmp_path: Path) -> None:
    run(tmp_path / "run", 4, "--eval-every", "2", "--eval-chains", "2")
    records = log_lines(tmp_path / "run")
    assert [("heldout_loss" in r) for r in records] == [False, True, False, True]
    assert all(r["heldout_base_loss"] > 0 for r in records if "heldout_loss" in r)


def test_heldout_samples_are_measured_at_checkpoints(tmp_path: Path) -> None:
    run(tmp_path / "run", 3, "--ckpt-every", "2", "--eval-samples", "2", "--eval-every", "0")
    records = log_lines(tmp_path / "run")
    assert [("heldout_samples" in r) for r in records] == [False, True, True]
    measures = records[1]["heldout_samples"]
    assert measures["n_chains"] == 2 and 0 <= measures["ca_ca_in_range"] <= 1 and measures["rg_ratio"] > 0
    assert "helix_following" in measures


def test_lr_factor_matches_eigenfolds_sequential_schedule() -> None:
    """EigenFold chains torch's LinearLR, ConstantLR and LinearLR with SequentialLR; lr_factor is the same curve."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=1.0)
    warmup, constant, decay, lr_start, lr_end = 3, 2, 4, 0.25, 0.1
    scheduler = torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        [torch.optim.lr_scheduler.LinearLR(optimizer, lr_start, 1.0, total_iters=warmup),
         torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0, total_iters=constant),
         torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, lr_end, total_iters=decay)],
        milestones=[warmup, warmup + constant],
    )  # fmt: skip
    for step in range(15):
        assert lr_factor(step, warmup, constant, decay, lr_start, lr_end) == pytest.approx(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()


def test_two_processes_hold_equal_parameters_and_resume(tmp_path: Path) -> None:
    """10 steps on 2 processes, and a resume to 10 from the checkpoint that run kept at step 5."""
    common = ["--nproc_per_node", "2", "-m", "tpconv_lite.train", "--preset", "tiny", "--no-progress",
              "--check-replicas", "--steps", "10"]  # fmt: skip
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    torchrun(*common, "--out", str(straight), "--ckpt-every", "5", "--keep-every", "5")
    resumed.mkdir()
    (resumed / "checkpoint.pt").write_bytes((straight / "checkpoint_0000005.pt").read_bytes())
    torchrun(*common, "--out", str(resumed), "--resume")
    records = log_lines(straight)
    assert [r["step"] for r in records] == list(range(1, 11))
    assert [r["step"] for r in log_lines(resumed)] == list(range(6, 11))
    assert all(r["world_size"] == 2 and r["replica_max_diff"] == 0.0 for r in records + log_lines(resumed))
    at_5 = load_checkpoint(straight / "checkpoint_0000005.pt")
    at_10, resumed_10 = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(resumed / "checkpoint.pt")
    assert at_5["step"] == 5 and at_10["world_size"] == 2 and len(at_10["rng"]) == 2
    assert max_relative_difference(at_10["model"], resumed_10["model"]) <= 1e-6
    assert max_relative_difference(at_5["model"], at_10["model"]) > 1e-6  # the steps after 5 did change something


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_torchrun_brings_a_killed_worker_back_and_the_run_finishes(tmp_path: Path) -> None:
    """SIGKILL one of two workers after a checkpoint; torchrun restarts the group, which resumes and finishes."""
    out, steps = tmp_path / "run", 60
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--max-restarts", "3", "-m", "tpconv_lite.train", "--preset", "tiny", "--no-progress",
               "--out", str(out), "--steps", str(steps), "--ckpt-every", "10", "--resume"]  # fmt: skip
    start = time.perf_counter()
    agent = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # wait for the first checkpoint and a few steps past it
            if (out / "checkpoint.pt").exists() and (out / "log.jsonl").exists():
                if len((out / "log.jsonl").read_text().splitlines()) >= 15:
                    break
            assert agent.poll() is None, agent.stdout.read()[-4000:]
            time.sleep(0.05)
        else:
            pytest.fail("the run did not reach step 15 in time")
        workers = children(agent.pid)
        assert len(workers) == 2, workers
        os.kill(workers[1], signal.SIGKILL)
        output, _ = agent.communicate(timeout=300)
    finally:
        if agent.poll() is None:
            agent.kill()
    elapsed = time.perf_counter() - start
    assert agent.returncode == 0, output[-4000:]
    records = log_lines(out)
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert records[0]["restarts"] == 0 and records[-1]["restarts"] == 1, output[-6000:]
    assert load_checkpoint(out / "checkpoint.pt")["step"] == steps
    print(f"restart test: {elapsed:.1f} s, {records[-1]['restarts']} restart(s)")
