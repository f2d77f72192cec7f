"""Sample chains from a trained score model with EigenFold's reverse diffusion: ``python -m tpconv_lite.sample``.

The checkpoint (written by :mod:`tpconv_lite.train`) holds everything needed to rebuild the model and the
diffusion it was trained with. Each sample is conditioned on a sequence and, where given, its secondary structure
(``H`` helix, ``E`` strand, ``-`` other; :mod:`tpconv_lite.conditioning`), starts from the harmonic prior and is
integrated by :meth:`~tpconv_lite.harmonic.HarmonicDiffusion.reverse_sample`. What comes out is written as a
CA-only PDB file, untouched: no geometry is fixed afterwards.

The sampler's settings are EigenFold's (``inference.py``) unless given: the rate schedule (``--inf-type``) with
step ``--inf-step`` 0.5 (a smaller step means more steps; their number follows from the chain's length and the
step), ``--alpha`` 0 and ``--beta`` 1, stopping at the training ``train_tmin`` (0.01) with noise in the last step;
``--inf-tmin`` and ``--no-noise-last-step`` change the end. ``--steps N`` instead chooses the step of the
schedule so that the longest chain takes N reverse steps (shorter chains take fewer; :func:`inf_step_for`).

Each chain draws its noise from its own generator seeded from ``--seed`` and its position in the list (for
``--test``, in the whole held-out set, so ``--test 3a4rA`` writes the same file as ``--test``), so a chain's sample
does not depend on which other chains are sampled with it. That is what lets the command run
under ``torchrun --nproc_per_node P``: each process samples its share of the chains (:func:`shares`: about the
same work for each, longest chains first) and writes their files, and the files are the same as one process
writes (no process group is needed; on several machines ``--out`` must be a shared folder).

Without ``--checkpoint`` the command samples the pretrained model that ships with the package
(``tpconv_lite/assets/README.md``: how it was trained, and how its samples score). Its held-out samples in
``PRETRAINED_SAMPLES`` were written with ``--alpha 0.5 --beta 16 --inf-step 1.4 --alpha-window 1 2 16
--alpha-window 2 inf 0`` (``PRETRAINED_SAMPLING``: a low temperature, with most of the Langevin correction at the
times where helices take their hand; see :class:`~tpconv_lite.harmonic.HarmonicConfig`). It was trained on chains
of 79 to 173 residues; far outside that range its scores can blow a chain up, and sampling then stops with an error
rather than writing it.

Examples::

    python -m tpconv_lite.sample --test --alpha 0.5 --beta 16 --inf-step 1.4 --alpha-window 1 2 16 \\
        --alpha-window 2 inf 0 --out samples/   # the pretrained model, as its shipped samples
    python -m tpconv_lite.sample --checkpoint runs/small/checkpoint.pt --test --out samples/
    python -m tpconv_lite.sample --test 3a4rA 2cviA --out samples/   # two held-out chains, as in the whole set
    torchrun --standalone --nproc_per_node 2 -m tpconv_lite.sample --test --out samples/ --threads 1
    python -m tpconv_lite.sample --checkpoint runs/small/checkpoint.pt --sequence MKTAYIAKQR --ss=-HHHHHHHH- \\
        --name mine --out samples/
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from tpconv_lite.conditioning import RESIDUE_TYPES, SECONDARY_STRUCTURES
from tpconv_lite.harmonic import SCHEDULES, HarmonicConfig, HarmonicDiffusion, check_alpha_windows
from tpconv_lite.proteins import load_dataset, write_pdb
from tpconv_lite.score_model import ResiLevelTensorProductScoreModel
from tpconv_lite.train import build_diffusion, build_model, load_checkpoint, sample_chains

# The model that ships with the package (tpconv_lite/assets/README.md says how it was trained).
PRETRAINED = Path(__file__).parent / "assets" / "pretrained.pt"
# Its training log, and its held-out samples: what ``python -m tpconv_lite.sample --test --threads 1`` writes with
# the sampling settings PRETRAINED_SAMPLING (the same README gives the command).
PRETRAINED_LOG = Path(__file__).parent / "assets" / "pretrained_log.jsonl"
PRETRAINED_SAMPLES = Path(__file__).parent / "assets" / "pretrained_samples"
PRETRAINED_SAMPLING = {
    "alpha": 0.5, "beta": 16.0, "inf_step": 1.4, "alpha_windows": ((1.0, 2.0, 16.0), (2.0, math.inf, 0.0))
}
SAMPLING_FIELDS = ("inf_type", "inf_step", "alpha", "beta", "alpha_windows", "inf_tmin", "inf_noise_last_step")


def load_model(
    path: str | Path = PRETRAINED, device: str | torch.device = "cpu", **sampling
) -> tuple[ResiLevelTensorProductScoreModel, HarmonicDiffusion, dict]:
    """The trained model (eval mode) and its diffusion from a :mod:`tpconv_lite.train` checkpoint.

    Args:
        path: the checkpoint (by default the pretrained model that ships with the package).
        device: where the model and the sampler compute.
        sampling: sampling fields of :class:`~tpconv_lite.harmonic.HarmonicConfig` (``inf_step``, ``inf_tmin``,
            ...); the training fields come from the checkpoint.

    Returns:
        ``(model, diffusion, checkpoint)``.
    """
    checkpoint = load_checkpoint(Path(path))
    device = torch.device(device)
    hyper = checkpoint["hyperparameters"]
    model = build_model(hyper["model"], device)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    return model, build_diffusion(hyper["diffusion"], device, **sampling), checkpoint


def inf_step_for(diffusion_config: dict, n: int, steps: int, **sampling) -> float:
    """The schedule step ``inf_step`` with which a chain of ``n`` residues takes ``steps`` reverse steps.

    The number of steps falls as ``inf_step`` grows; a bisection in ``log(inf_step)`` finds the step that gives
    ``steps`` exactly where one does, and otherwise the one that comes closest from below.

    Example:
        >>> from tpconv_lite.harmonic import HarmonicConfig, HarmonicDiffusion
        >>> step = inf_step_for({}, 100, 40)
        >>> HarmonicDiffusion(HarmonicConfig(inf_step=step)).schedule(100).N
        40
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")

    def count(step: float) -> int:
        return build_diffusion(diffusion_config, torch.device("cpu"), **{**sampling, "inf_step": step}).schedule(n).N

    low, high = math.log(1e-3), math.log(50.0)  # count(low) >= count(high)
    if count(math.exp(high)) > steps:
        raise ValueError(f"a chain of {n} residues takes at least {count(math.exp(high))} steps, asked for {steps}")
    if count(math.exp(low)) < steps:
        raise ValueError(f"a chain of {n} residues takes at most {count(math.exp(low))} steps, asked for {steps}")
    for _ in range(40):  # invariant: count(low) >= steps >= count(high)
        middle = (low + high) / 2
        found = count(math.exp(middle))
        if found == steps:
            return math.exp(middle)
        low, high = (middle, high) if found > steps else (low, middle)
    return math.exp(high)


def shares(costs: Sequence[float], world_size: int) -> list[list[int]]:
    """Deal out items of the given costs to ``world_size`` processes with about equal work each.

    Longest first, each item goes to the process with the least work so far (ties: the lowest rank); every process
    computes the same split. The sampler's cost of a chain of ``n`` residues is ``n**2`` (the dense graph's edges)
    times its number of reverse steps.

    Returns:
        One sorted list of item indices per rank.

    Example:
        >>> shares([1, 5, 2, 4, 3], 2)
        [[0, 1, 2], [3, 4]]
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    work, share = [0.0] * world_size, [[] for _ in range(world_size)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (work[r], r))
        work[rank] += costs[i]
        share[rank].append(i)
    return [sorted(s) for s in share]


def check_chain(sequence: str, ss: str | None, what: str = "--sequence") -> None:
    """Raise ValueError naming the problem when ``sequence``/``ss`` cannot condition a sample."""
    if len(sequence) < 2:
        raise ValueError(f"{what}: a chain needs at least 2 residues, got {len(sequence)}")
    unknown = sorted(set(sequence) - set(RESIDUE_TYPES))
    if unknown:
        raise ValueError(f"{what}: letters {unknown} are not one-letter residue codes (expected {RESIDUE_TYPES})")
    if ss is not None:
        if len(ss) != len(sequence):
            raise ValueError(f"--ss has {len(ss)} letters, the sequence {len(sequence)}: give one per residue")
        unknown = sorted(set(ss) - set(SECONDARY_STRUCTURES))
        if unknown:
            raise ValueError(f"--ss: letters {unknown} are not secondary structures (expected one of "
                             f"{SECONDARY_STRUCTURES!r}: helix, strand, other)")  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tpconv_lite.sample",
                                     description="Sample CA chains from a trained score model.")  # fmt: skip
    parser.add_argument("--checkpoint", type=Path, default=PRETRAINED,
                        help="checkpoint.pt of python -m tpconv_lite.train (default: the pretrained model)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--test", nargs="*", metavar="NAME", default=None,
                      help="one sample per held-out chain of the embedded dataset (all of them, or the ones named)")
    what.add_argument("--sequence", help="one-letter sequence of the chain to sample")
    parser.add_argument("--ss", default=None,
                        help="its secondary structure, one of H, E, - per residue (--ss=-HH... if it starts with -)")
    parser.add_argument("--name", default="sample", help="file name (NAME.pdb) of a --sequence sample")
    parser.add_argument("--out", type=Path, required=True, help="folder of the PDB files")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    defaults = HarmonicConfig()
    parser.add_argument("--inf-type", choices=sorted(SCHEDULES), default=defaults.inf_type, help="schedule")
    steps = parser.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=int, default=None,
                       help="reverse steps of the longest chain (sets --inf-step; shorter chains take fewer)")
    steps.add_argument("--inf-step", type=float, default=None,
                       help="step of the schedule (smaller: more steps; default: the checkpoint's, 0.5)")  # fmt: skip
    parser.add_argument("--alpha", type=float, default=defaults.alpha, help="extra Langevin noise")
    parser.add_argument("--beta", type=float, default=defaults.beta, help="drift weight of the extra noise")
    parser.add_argument("--alpha-window", dest="alpha_windows", nargs=3, type=float, action="append",
                        metavar=("T_LOW", "T_HIGH", "ALPHA"),
                        help="steps that start at T_LOW < t <= T_HIGH use this alpha (repeat for more windows; "
                             "T_HIGH may be inf)")  # fmt: skip
    parser.add_argument("--inf-tmin", type=float, default=None, help="final time (default: train_tmin)")
    parser.add_argument("--noise-last-step", dest="inf_noise_last_step", action=argparse.BooleanOptionalAction,
                        default=defaults.inf_noise_last_step, help="add noise in the last step (EigenFold: yes)")
    args = parser.parse_args(argv)
    if args.test:
        test_names = [c.name for c in load_dataset("test")]
        unknown = [name for name in args.test if name not in test_names]
        if unknown:
            parser.error(f"--test: expected names of held-out chains ({', '.join(test_names)}), got {unknown}")
    if args.ss is not None and args.sequence is None:
        parser.error("--ss goes with --sequence (--test uses each chain's own secondary structure)")
    if args.sequence is not None:
        try:
            check_chain(args.sequence, args.ss)
        except ValueError as error:
            parser.error(str(error))
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.alpha_windows is not None:
        try:
            args.alpha_windows = check_alpha_windows(args.alpha_windows)
        except ValueError as error:
            parser.error(f"--alpha-window: {error}")
    if not args.name or "/" in args.name:
        parser.error(f"--name must be a plain file name, got {args.name!r}")
    return args


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Run the command line; return the paths written."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and "LOCAL_RANK" in os.environ:  # under torchrun: one GPU per process
        args.device = f"cuda:{os.environ['LOCAL_RANK']}"
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    sampling = {name: getattr(args, name) for name in SAMPLING_FIELDS if getattr(args, name) is not None}
    if args.test is not None:  # a chain's noise follows its place in the whole test set, named or not
        chains = load_dataset("test")
        places = [i for i, c in enumerate(chains) if not args.test or c.name in args.test]
        picked = [chains[i] for i in places]
        names, sequences, ss = [c.name for c in picked], [c.sequence for c in picked], [c.ss for c in picked]
    else:
        places, names, sequences, ss = [0], [args.name], [args.sequence], [args.ss]
    try:
        model, diffusion, checkpoint = load_model(args.checkpoint, args.device, **sampling)
        if args.steps is not None:  # the same model, with the schedule step that gives the longest chain N steps
            diffusion_config = checkpoint["hyperparameters"]["diffusion"]
            longest = max(len(q) for q in sequences)
            sampling["inf_step"] = inf_step_for(diffusion_config, longest, args.steps, **sampling)
            diffusion = build_diffusion(diffusion_config, torch.device(args.device), **sampling)
    except FileNotFoundError as error:
        raise SystemExit(f"--checkpoint {args.checkpoint}: no such file") from error
    except ValueError as error:  # not a checkpoint, or sampling settings out of range
        raise SystemExit(str(error)) from error
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    costs = [len(q) ** 2 * diffusion.schedule(len(q)).N for q in sequences]
    mine = shares(costs, world_size)[rank]  # under torchrun, each process samples its share
    samples = []
    if mine:
        samples = sample_chains(model, diffusion, [sequences[i] for i in mine], [ss[i] for i in mine],
                                seed=args.seed, indices=[places[i] for i in mine],
                                progress=not args.no_progress and rank == 0)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, pos in zip(mine, samples):
        path = args.out / f"{names[i]}.pdb"
        write_pdb(pos, path, sequences[i])
        paths.append(path)
    where = f" (process {rank} of {world_size})" if world_size > 1 else ""
    tqdm.write(f"wrote {len(paths)} sample(s) to {args.out}{where}", file=sys.stderr)
    return paths


if __name__ == "__main__":
    main()
