"""python -m tpconv_lite.sample: PDB files from a trained checkpoint, reproducible, with clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from tpconv_lite import sample as sample_module
from tpconv_lite.proteins import load_chain, load_dataset
from tpconv_lite.sample import inf_step_for, load_model, main, sample_chains
from tpconv_lite.train import main as train_main

SEQUENCE, SS = "MKTAYIAKQRQISFVK", "-HHHHHHHHHH--EE-"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train_main(["--preset", "tiny", "--steps", "2", "--out", str(out), "--no-progress", "--threads", "1"])
    return out / "checkpoint.pt"


def sample_file(checkpoint: Path, out: Path, *extra: str) -> Path:
    main(["--checkpoint", str(checkpoint), "--sequence", SEQUENCE, f"--ss={SS}", "--name", "mine", "--out", str(out),
          "--no-progress", *extra])  # fmt: skip
    return out / "mine.pdb"


def test_a_sequence_gives_a_ca_pdb_that_reads_back(checkpoint: Path, tmp_path: Path) -> None:
    path = sample_file(checkpoint, tmp_path / "a")
    chain = load_chain(path)
    assert chain.sequence == SEQUENCE and chain.pos.shape == (len(SEQUENCE), 3)
    assert torch.isfinite(chain.pos).all() and chain.pos.std() > 0.5
    assert sample_file(checkpoint, tmp_path / "b").read_text() == path.read_text()
    assert sample_file(checkpoint, tmp_path / "c", "--seed", "1").read_text() != path.read_text()


def test_a_chain_does_not_depend_on_the_others_in_its_batch(checkpoint: Path) -> None:
    model, diffusion, _ = load_model(checkpoint)
    alone = sample_chains(model, diffusion, [SEQUENCE], [SS], seed=3)
    together = sample_chains(model, diffusion, [SEQUENCE, "GSGSGSGSGS"], [SS, None], seed=3)
    assert len(together) == 2 and together[1].shape == (10, 3)
    torch.testing.assert_close(together[0], alone[0], rtol=1e-4, atol=1e-4)


def test_end_options_change_the_sample(checkpoint: Path, tmp_path: Path) -> None:
    default = sample_file(checkpoint, tmp_path / "a").read_text()
    assert sample_file(checkpoint, tmp_path / "b", "--no-noise-last-step").read_text() != default
    assert sample_file(checkpoint, tmp_path / "c", "--inf-tmin", "0.002").read_text() != default
    # an alpha window that covers every time is the same as that alpha everywhere
    everywhere = sample_file(checkpoint, tmp_path / "d", "--alpha", "2", "--beta", "3").read_text()
    assert everywhere != default
    window = sample_file(checkpoint, tmp_path / "e", "--alpha-window", "0", "inf", "2", "--beta", "3")
    assert window.read_text() == everywhere


def test_test_writes_one_pdb_per_heldout_chain(checkpoint: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """--test on the held-out chains, cut to their first 14 residues to keep the test short."""
    short = [dataclasses.replace(c, sequence=c.sequence[:14], pos=c.pos[:14], ss=c.ss[:14])
             for c in load_dataset("test")[:3]]  # fmt: skip
    monkeypatch.setattr(sample_module, "load_dataset", lambda split: short if split == "test" else None)
    paths = main(["--checkpoint", str(checkpoint), "--test", "--out", str(tmp_path), "--no-progress"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{c.name}.pdb" for c in short)
    for chain, path in zip(short, paths):
        assert load_chain(path).sequence == chain.sequence
    # named chains: only their files, each the same as in the whole set (its noise follows its place in the set)
    named = main(["--checkpoint", str(checkpoint), "--test", short[2].name, short[0].name, "--out",
                  str(tmp_path / "named"), "--no-progress"])  # fmt: skip
    assert sorted(p.name for p in named) == sorted(f"{c.name}.pdb" for c in (short[0], short[2]))
    for path in named:
        assert path.read_text() == (tmp_path / path.name).read_text()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--sequence", "MKTAY", "--ss", "HHH"], "--ss has 3 letters, the sequence 5"),
        (["--sequence", "MKTAYB"], "letters ['B'] are not one-letter residue codes"),
        (["--sequence", "MKTAY", "--ss", "HHCHH"], "letters ['C'] are not secondary structures"),
        (["--sequence", "M"], "at least 2 residues"),
        (["--test", "--ss", "HH"], "--ss goes with --sequence"),
        (["--test", "3a4rA", "1abcZ"], "--test: expected names of held-out chains (1h4aX, 1pdoA, "),
        (["--test", "--alpha-window", "2", "1", "4"], "--alpha-window: an alpha window needs 0 <= t_low < t_high"),
    ],
)
def test_bad_input_is_named(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, arguments: list,
                            message: str) -> None:  # fmt: skip
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(checkpoint), "--out", str(tmp_path), *arguments])
    assert message in capsys.readouterr().err


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path: Path) -> None:
    (tmp_path / "log.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(SystemExit, match="is not a tpconv_lite.train checkpoint"):
        main(["--checkpoint", str(tmp_path / "log.jsonl"), "--sequence", "MKTAY", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no such file"):
        main(["--checkpoint", str(tmp_path / "missing.pt"), "--sequence", "MKTAY", "--out", str(tmp_path)])


def test_steps_sets_the_reverse_steps_of_the_longest_chain(checkpoint: Path, tmp_path: Path) -> None:
    diffusion_config = load_model(checkpoint)[2]["hyperparameters"]["diffusion"]
    for steps in (7, 30):
        step = inf_step_for(diffusion_config, len(SEQUENCE), steps)
        _, diffusion, _ = load_model(checkpoint, inf_step=step)
        assert diffusion.schedule(len(SEQUENCE)).N == steps
    assert sample_file(checkpoint, tmp_path / "a", "--steps", "7").read_text() != sample_file(
        checkpoint, tmp_path / "b", "--steps", "30").read_text()  # fmt: skip
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        inf_step_for(diffusion_config, len(SEQUENCE), 0)
    with pytest.raises(SystemExit):
        sample_file(checkpoint, tmp_path / "c", "--steps", "7", "--inf-step", "0.5")


def test_indices_give_a_chain_the_noise_of_its_place_in_a_longer_list(checkpoint: Path) -> None:
    model, diffusion, _ = load_model(checkpoint)
    together = sample_chains(model, diffusion, ["GSGSGSGSGS", SEQUENCE], [None, SS], seed=2)
    alone = sample_chains(model, diffusion, [SEQUENCE], [SS], seed=2, indices=[1])
    torch.testing.assert_close(alone[0], together[1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(sample_chains(model, diffusion, [SEQUENCE], [SS], seed=2)[0], together[1], atol=1e-2)
    with pytest.raises(ValueError, match="need one index per sequence, got 2 for 1"):
        sample_chains(model, diffusion, [SEQUENCE], [SS], indices=[0, 1])


def test_under_torchrun_each_process_writes_its_share(checkpoint: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """RANK and WORLD_SIZE as torchrun sets them: two processes write the files that one process writes."""
    short = [dataclasses.replace(c, sequence=c.sequence[:12], pos=c.pos[:12], ss=c.ss[:12])
             for c in load_dataset("test")[:3]]  # fmt: skip
    monkeypatch.setattr(sample_module, "load_dataset", lambda split: short)
    arguments = ["--checkpoint", str(checkpoint), "--test", "--no-progress", "--threads", "1"]
    main([*arguments, "--out", str(tmp_path / "one")])
    written = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        written.append([p.stem for p in main([*arguments, "--out", str(tmp_path / "two")])])
    assert written == [[c.name for c in short[0::2]], [short[1].name]]  # equal lengths: dealt out in turn
    for chain in short:
        name = f"{chain.name}.pdb"
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()


def test_shares_balance_the_sampling_work() -> None:
    lengths = [len(c) for c in load_dataset("test")]
    costs = [n**2 for n in lengths]
    split = sample_module.shares(costs, 2)
    assert sorted(i for share in split for i in share) == list(range(len(lengths)))  # each chain once
    work = [sum(costs[i] for i in share) for share in split]
    assert max(work) / min(work) < 1.05  # the round-robin split r, r + 2, ... gives 1.15 here
    assert sample_module.shares([3.0, 1.0], 4) == [[0], [1], [], []]
    with pytest.raises(ValueError, match="world_size must be >= 1, got 0"):
        sample_module.shares([1.0], 0)


def test_the_pretrained_model_ships_with_its_log_and_samples() -> None:
    model, diffusion, checkpoint = load_model()  # no path: the pretrained model
    assert sample_module.PRETRAINED.stat().st_size < 5e6
    assert checkpoint["hyperparameters"]["preset"] == "small" and not model.training
    log = sample_module.PRETRAINED_LOG.read_text().splitlines()
    assert len(log) == checkpoint["step"] and '"step": %d,' % checkpoint["step"] in log[-1]
    chains = load_dataset("test")
    files = sorted(p.stem for p in sample_module.PRETRAINED_SAMPLES.glob("*.pdb"))
    assert files == sorted(c.name for c in chains)
    shortest = min(range(len(chains)), key=lambda i: len(chains[i]))
    shipped = load_chain(sample_module.PRETRAINED_SAMPLES / f"{chains[shortest].name}.pdb")
    assert shipped.sequence == chains[shortest].sequence
    # The shipped file is the sampler's own output: sampling the chain again gives it back (to the PDB's 0.001 Å).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the shipped files were written
    try:
        model, diffusion, _ = load_model(**sample_module.PRETRAINED_SAMPLING)
        again = sample_chains(model, diffusion, [chains[shortest].sequence], [chains[shortest].ss], indices=[shortest])
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(again[0], shipped.pos, rtol=0, atol=2e-3)


def test_without_checkpoint_the_command_samples_the_pretrained_model(tmp_path: Path) -> None:
    chain = min(load_dataset("test"), key=len)  # a length the pretrained model was trained on (79 to 173 residues)
    arguments = ["--sequence", chain.sequence, f"--ss={chain.ss}", "--no-progress", "--threads", "1"]
    main([*arguments, "--checkpoint", str(sample_module.PRETRAINED), "--out", str(tmp_path / "a")])
    main([*arguments, "--out", str(tmp_path / "b")])
    assert (tmp_path / "b" / "sample.pdb").read_text() == (tmp_path / "a" / "sample.pdb").read_text()


def test_a_diverging_sample_stops_with_an_error() -> None:
    """The pretrained model has never seen a chain of 16 residues: its scores there blow the chain up."""
    model, diffusion, _ = load_model()
    with pytest.raises(RuntimeError, match=r"the reverse diffusion diverged: chain 0 \(16 residues\)"):
        sample_chains(model, diffusion, [SEQUENCE], [SS])
