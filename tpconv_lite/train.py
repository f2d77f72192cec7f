"""Train the residue-level score model with EigenFold's harmonic diffusion: ``python -m tpconv_lite.train``.

One command for one process, for ``torchrun --nproc_per_node N`` on one machine, and for several machines through
torchrun's rendezvous; nothing in the command changes. Under torchrun every process (rank) holds a replica of the
model wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (gloo on CPU, nccl on GPU), reads its own
share of the chains through a :class:`~torch.utils.data.DistributedSampler`, and the gradients are averaged over
the ranks before each optimiser step, so every replica takes the same step. Only rank 0 writes files.

**A step.** Each rank takes ``batch`` chains, noises each with the harmonic diffusion's forward kernel at a
random time, predicts the score and computes EigenFold's loss and base loss (the loss of predicting zero). As in
EigenFold, a step whose loss is not finite or above ``max_loss`` (10) is skipped (on every rank, so the replicas
stay equal), the gradient norm is clipped at ``clip_grad`` (1), the optimiser is Adam (``lr`` 3e-4), and the
learning rate follows EigenFold's schedule: a linear warm-up from ``lr_start * lr`` to ``lr`` over ``warmup_dur``
steps, ``constant_dur`` steps at ``lr``, then a linear decay to ``lr_end * lr`` over ``decay_dur`` steps.

**Files.** ``--out DIR`` receives ``checkpoint.pt`` (a plain dict, see :func:`save_checkpoint`) and ``log.jsonl``,
one JSON object per optimiser step. A checkpoint is written to a temporary file and renamed over the previous
one, so a run killed while saving leaves the previous checkpoint whole.

**Resume.** ``--resume`` carries on from ``DIR/checkpoint.pt`` at the next step with the model, optimiser and
scheduler states, the sampler position and every random state of every rank (python, numpy, torch, CUDA, and the
generator of the noise), and drops the lines of ``log.jsonl`` after the checkpoint's step. On one CPU process a
resumed run is bit-identical to a straight one when both use the same number of threads (``--threads``; torchrun
sets one thread per process by default). When no checkpoint exists yet, ``--resume`` starts from scratch: that is
what lets ``torchrun --max-restarts K ... --resume`` bring a failed run back on its own.

Examples::

    python -m tpconv_lite.train --preset tiny --steps 10 --out runs/tiny
    python -m tpconv_lite.train --preset tiny --steps 20 --out runs/tiny --resume
    torchrun --nproc_per_node 2 -m tpconv_lite.train --preset small --steps 1000 --out runs/small --resume
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from tpconv_lite.conditioning import LM_EDGE_DIM, LM_NODE_DIM, chain_conditioning
from tpconv_lite.harmonic import HarmonicConfig, HarmonicDiffusion, harmonic_loss
from tpconv_lite.metrics import structure_measures
from tpconv_lite.proteins import load_chain, load_dataset
from tpconv_lite.score_model import ChainBatch, ResiLevelTensorProductScoreModel, ScoreModelConfig

CHECKPOINT_FORMAT = "tpconv_lite.train checkpoint"
CHECKPOINT_VERSION = 1
STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".ent.gz", ".cif.gz", ".mmcif.gz")

# Hyperparameters: every field of a preset can be overridden on the command line. They are stored in the
# checkpoint and fixed for the life of a run (a resumed run refuses a different value).
OPTIM_DEFAULTS = dict(lr=3e-4, lr_start=1.0, lr_end=1.0, warmup_dur=10_000, constant_dur=100_000, decay_dur=500_000,
                      batch=1, clip_grad=1.0, max_loss=10.0, crop=0, max_len=1500)  # fmt: skip
PRESETS: dict[str, dict[str, dict]] = {
    # 10 steps in well under a minute on 2 CPU cores: 2 narrow layers, chains cropped to 40 residues.
    "tiny": dict(
        model=dict(resi_conv_layers=2, resi_ns=8, resi_nv=2, resi_ntps=4, resi_ntpv=2, resi_fc_dim=16,
                   resi_pos_emb_dim=8, t_emb_dim=8, radius_emb_dim=16),  # fmt: skip
        optim=dict(lr=1e-3, crop=40),
    ),
    # The small model of issue 19: 3 layers, 16 scalars and 4 vectors, radial MLPs 32 wide (57k parameters).
    "small": dict(
        model=dict(resi_conv_layers=3, resi_ns=16, resi_nv=4, resi_ntps=16, resi_ntpv=4, resi_fc_dim=32),
        optim=dict(lr=1e-3),
    ),
    # EigenFold's pretrained_model/args.yaml (its model, optimiser and schedule; batch 1, chains up to 1500).
    "eigenfold": dict(
        model=dict(resi_conv_layers=6, resi_ns=32, resi_nv=4, resi_ntps=16, resi_ntpv=4, resi_fc_dim=128,
                   resi_pos_emb_dim=16, t_emb_dim=32, radius_emb_dim=50, radius_emb_max=50.0, tmin=0.001,
                   tmax=1e6, parity=True, order=1, sh_lmax=2),  # fmt: skip
        optim=dict(lr=3e-4, lr_start=1.0, lr_end=1.0, warmup_dur=10_000, constant_dur=100_000, decay_dur=500_000,
                   batch=1, max_len=1500),  # fmt: skip
    ),
}
# Model fields set by the conditioning features, never on the command line.
FEATURE_FIELDS = ("lm_node_dim", "lm_edge_dim")
# The harmonic diffusion's training settings (HarmonicConfig, EigenFold's names and published values); the
# sampling settings are options of python -m tpconv_lite.sample.
DIFFUSION_FIELDS = ("sde_a", "sde_b", "train_Hf", "train_tmin", "train_cutoff", "train_kmin", "train_skew",
                    "train_rmsd_max", "train_band_tmin", "train_band_tmax", "train_band_weight", "inf_step")


# ---------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; hyperparameters left unset (None) are filled from the preset by :func:`hyperparameters`."""
    parser = argparse.ArgumentParser(
        prog="python -m tpconv_lite.train",
        description="Train the residue-level score model with EigenFold's harmonic diffusion (also under torchrun).",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, required=True, help="folder of checkpoint.pt and log.jsonl")
    run.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model and optimiser sizes")
    run.add_argument("--steps", type=int, default=10, help="train until this optimiser step (counted from 1)")
    run.add_argument("--resume", action="store_true", help="carry on from OUT/checkpoint.pt when it exists")
    run.add_argument("--ckpt-every", type=int, default=100, help="checkpoint every K steps (and at the end)")
    run.add_argument("--keep-every", type=int, default=0,
                     help="also keep the checkpoint of every K-th step as checkpoint_STEP.pt (0: never)")
    run.add_argument("--eval-every", type=int, default=100, help="held-out loss every K steps (0: never)")
    run.add_argument("--eval-chains", type=int, default=16, help="held-out chains per evaluation (0: all)")
    run.add_argument("--eval-samples", type=int, default=0,
                     help="at every checkpoint, sample this many held-out chains and log their structure measures")
    run.add_argument("--data", type=Path, default=None, help="folder of PDB/mmCIF files (default: embedded set)")
    run.add_argument("--eval-data", type=Path, default=None, help="held-out PDB/mmCIF folder (with --data)")
    run.add_argument("--strict", action="store_true", help="stop at the first unreadable file of --data")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda (under torchrun: cuda:LOCAL_RANK)")
    run.add_argument("--threads", type=int, default=None, help="torch threads per process (default: torch's)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                     help="recompute each conv layer's messages in the backward pass, as EigenFold does (saves "
                          "memory; --no-activation-checkpointing is about 20%% faster on CPU for small models)")
    run.add_argument("--check-replicas", action="store_true",
                     help="after every step, log the largest difference of any rank's parameters from rank 0's")
    hyper = parser.add_argument_group("hyperparameters (default: the preset's; fixed for the life of a run)")
    hyper.add_argument("--seed", type=int, default=None, help="seed of the initialisation, data order and noise")
    for name, default in OPTIM_DEFAULTS.items():
        hyper.add_argument(f"--{name.replace('_', '-')}", dest=name, type=type(default), default=None)
    for name in DIFFUSION_FIELDS:
        default = getattr(HarmonicConfig(), name)
        hyper.add_argument(f"--{name.replace('_', '-')}", dest=name, type=type(default), default=None)
    for field in dataclasses.fields(ScoreModelConfig):
        if field.name in FEATURE_FIELDS:
            continue
        kind = {"int": int, "float": float, "str": str, "bool": bool}[str(field.type)]
        flag = f"--{field.name.replace('_', '-')}"
        if kind is bool:
            hyper.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            hyper.add_argument(flag, dest=field.name, type=kind, default=None)
    args = parser.parse_args(argv)
    for name in ("steps", "ckpt_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("keep_every", "eval_every", "eval_chains", "eval_samples"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.eval_data is not None and args.data is None:
        parser.error("--eval-data goes with --data (the embedded set has its own held-out chains)")
    return args


def hyperparameters(args: argparse.Namespace) -> dict:
    """The run's hyperparameters as a plain dict: the preset, overridden by the options given.

    Returns ``{"preset", "seed", "optim": {...}, "model": {...}, "diffusion": {...}}``; ``model`` holds every
    :class:`ScoreModelConfig` field (the feature sizes come from the conditioning module), ``diffusion`` the
    training fields of :class:`~tpconv_lite.harmonic.HarmonicConfig` (EigenFold's values in every preset).
    """
    preset = PRESETS[args.preset]
    optim = {**OPTIM_DEFAULTS, **preset["optim"]}
    optim.update({k: getattr(args, k) for k in OPTIM_DEFAULTS if getattr(args, k) is not None})
    model = dataclasses.asdict(ScoreModelConfig(**preset["model"], lm_node_dim=LM_NODE_DIM, lm_edge_dim=LM_EDGE_DIM))
    model.update({k: getattr(args, k) for k in model if k not in FEATURE_FIELDS and getattr(args, k, None) is not None})
    diffusion = {name: getattr(HarmonicConfig(), name) for name in DIFFUSION_FIELDS}
    diffusion.update({k: getattr(args, k) for k in DIFFUSION_FIELDS if getattr(args, k) is not None})
    ScoreModelConfig(**model)  # validates
    HarmonicConfig(**diffusion)
    check_optim(optim)
    seed = 0 if args.seed is None else args.seed
    return {"preset": args.preset, "seed": seed, "optim": optim, "model": model, "diffusion": diffusion}


def check_optim(optim: dict) -> None:
    """Raise ValueError naming the first optimisation hyperparameter out of range."""
    positive = ("lr", "clip_grad", "max_loss", "batch", "max_len")
    for name in positive:
        if not optim[name] > 0:
            raise ValueError(f"{name} must be > 0, got {optim[name]}")
    for name in ("warmup_dur", "constant_dur", "decay_dur", "crop", "lr_start", "lr_end"):
        if not optim[name] >= 0:
            raise ValueError(f"{name} must be >= 0, got {optim[name]}")
    if optim["crop"] == 1:
        raise ValueError("crop must be 0 (no crop) or at least 2 residues, got 1")


def given_hyperparameters(args: argparse.Namespace) -> dict[str, object]:
    """The hyperparameters set explicitly on the command line, by name."""
    names = ["seed", *OPTIM_DEFAULTS, *DIFFUSION_FIELDS, *(f.name for f in dataclasses.fields(ScoreModelConfig))]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


# ---------------------------------------------------------------------------------------------------------------
# Processes: one, or torchrun's


@dataclasses.dataclass(frozen=True)
class Processes:
    """Where this process stands: ``rank`` of ``world_size`` processes, and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_processes(device: str) -> Processes:
    """Join torchrun's process group when its variables (RANK, WORLD_SIZE, LOCAL_RANK) are set.

    gloo on CPU, nccl on GPU; each process of a node takes the GPU of its LOCAL_RANK.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {device}: CUDA is not available on this machine")
        chosen = torch.device("cuda", local_rank if world_size > 1 else (chosen.index or 0))
        torch.cuda.set_device(chosen)
    if world_size > 1:
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if restart is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
            dist.init_process_group(backend=backend)
        else:
            # torchrun's agent keeps one store across restarts: the keys a killed group left there (the gloo
            # addresses of its ranks) would mislead the new one, so each attempt works under its own prefix.
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                                  is_master=False)  # fmt: skip
            store = dist.PrefixStore(f"tpconv_lite/attempt_{restart}", store)
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size)
    return Processes(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)


def teardown_processes(processes: Processes) -> None:
    """Leave the process group, if this process joined one."""
    if processes.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(values: Tensor, processes: Processes, op: dist.ReduceOp = dist.ReduceOp.SUM) -> Tensor:
    """``values`` reduced over the ranks (itself on one process)."""
    if processes.distributed:
        values = values.to(processes.device)
        dist.all_reduce(values, op=op)
    return values.cpu()


def gather_objects(obj: object, processes: Processes) -> list:
    """One object from every rank, in rank order, on every rank."""
    if not processes.distributed:
        return [obj]
    gathered: list = [None] * processes.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


# ---------------------------------------------------------------------------------------------------------------
# Data


def report(processes: Processes, message: str) -> None:
    """Print a message once (from rank 0), on stderr, without breaking the progress bar."""
    if processes.is_main:
        tqdm.write(message, file=sys.stderr)


def structure_files(folder: Path) -> list[Path]:
    """The PDB and mmCIF files in ``folder`` and below, sorted by path."""
    if not folder.is_dir():
        raise SystemExit(f"--data {folder}: not a folder")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(STRUCTURE_SUFFIXES))


def load_folder(folder: Path, processes: Processes, strict: bool = False) -> list:
    """Read every structure file of ``folder`` with ``load_chain``; report each unreadable one once and skip it.

    With ``strict`` the first unreadable file stops the run. No usable chain at all also stops it.
    """
    chains = []
    files = structure_files(folder)
    for path in files:
        try:
            chain = load_chain(path)
            if len(chain.sequence) < 2:
                raise ValueError(f"{path}: {len(chain.sequence)} residue(s), need at least 2")
        except (ValueError, OSError) as error:
            reason = str(error) if str(error).startswith(str(path)) else f"{path}: {error}"
            if strict:
                raise SystemExit(f"unreadable structure file (--strict): {reason}") from error
            report(processes, f"skipping {reason}")
            continue
        chains.append(chain)
    if not chains:
        raise SystemExit(f"no usable chain in {folder} ({len(files)} PDB/mmCIF file(s) found, none readable)")
    return chains


def load_chains(args: argparse.Namespace, processes: Processes) -> tuple[list, list]:
    """Training and held-out chains: the embedded dataset's splits, or ``--data`` and ``--eval-data``."""
    if args.data is None:
        return load_dataset("train"), load_dataset("test")
    train = load_folder(args.data, processes, args.strict)
    heldout = [] if args.eval_data is None else load_folder(args.eval_data, processes, args.strict)
    return train, heldout


def fingerprint(chains: Sequence) -> str:
    """A short hash of the chains' names and sequences: a resumed run checks that it reads the same data."""
    digest = hashlib.sha256()
    for chain in chains:
        digest.update(f"{chain.name}:{chain.sequence};".encode())
    return digest.hexdigest()[:16]


class StepSampler:
    """Which chains each step of this rank reads: a :class:`DistributedSampler` walked ``batch`` at a time.

    Step ``s`` (from 1) reads positions ``[i * batch, (i + 1) * batch)`` of epoch ``e`` where
    ``(e, i) = divmod(s - 1, steps_per_epoch)``; the order of epoch ``e`` is the sampler's shuffle with
    ``set_epoch(e)``, so the position after any step is known from the step alone.
    """

    def __init__(self, n_chains: int, batch: int, processes: Processes, seed: int) -> None:
        self.sampler = DistributedSampler(range(n_chains), num_replicas=processes.world_size, rank=processes.rank,
                                          shuffle=True, seed=seed, drop_last=False)  # fmt: skip
        self.batch = batch
        self.steps_per_epoch = len(self.sampler) // batch
        if self.steps_per_epoch < 1:
            raise SystemExit(
                f"{n_chains} training chain(s) over {processes.world_size} process(es) leave "
                f"{len(self.sampler)} per process, fewer than --batch {batch}"
            )
        self._epoch, self._order = -1, []

    def position(self, step: int) -> dict[str, int]:
        """``{"epoch", "index"}`` of step ``step``."""
        epoch, index = divmod(step - 1, self.steps_per_epoch)
        return {"epoch": epoch, "index": index}

    def indices(self, step: int) -> list[int]:
        """The chain indices of step ``step`` on this rank."""
        position = self.position(step)
        if position["epoch"] != self._epoch:
            self.sampler.set_epoch(position["epoch"])
            self._epoch, self._order = position["epoch"], list(self.sampler)
        start = position["index"] * self.batch
        return self._order[start : start + self.batch]


def crop(chain, length: int, generator: torch.Generator):
    """A random window of ``length`` consecutive residues of ``chain`` (the chain itself when it is shorter)."""
    n = len(chain.sequence)
    if length == 0 or n <= length:
        return chain
    start = int(torch.randint(n - length + 1, (1,), generator=generator))
    window = slice(start, start + length)
    ss = None if chain.ss is None else chain.ss[window]
    return dataclasses.replace(chain, sequence=chain.sequence[window], pos=chain.pos[window], ss=ss)


# ---------------------------------------------------------------------------------------------------------------
# Model, optimiser, schedule


def build_model(model_config: dict, device: torch.device) -> ResiLevelTensorProductScoreModel:
    """The score model of a :class:`ScoreModelConfig` stored as a dict (float32, on ``device``)."""
    return ResiLevelTensorProductScoreModel(ScoreModelConfig(**model_config)).to(device)


def build_diffusion(diffusion_config: dict, device: torch.device, **sampling) -> HarmonicDiffusion:
    """The harmonic diffusion of the stored training settings, with sampling settings of HarmonicConfig on top
    (``inf_step`` is both: the step of the training kernel's time table and of the sampler's schedule; like
    EigenFold's ``inference.py``, a sampler may change it)."""
    return HarmonicDiffusion(HarmonicConfig(**{**diffusion_config, **sampling}), device=device)


def noised_batch(chains: Sequence, diffusion: HarmonicDiffusion, generator: torch.Generator,
                 device: torch.device) -> tuple[ChainBatch, Tensor]:  # fmt: skip
    """The chains noised by the forward kernel and packed for the model (float32), with their (N, 3) true score.

    Each chain is conditioned on its sequence and secondary structure (:mod:`tpconv_lite.conditioning`).
    """
    features = [chain_conditioning(c.sequence, c.ss, device=device) for c in chains]
    return diffusion.noised_batch([c.pos for c in chains], [f[0] for f in features], [f[1] for f in features],
                                  generator=generator, dtype=torch.float32)  # fmt: skip


def lr_factor(step: int, warmup_dur: float, constant_dur: float, decay_dur: float, lr_start: float,
              lr_end: float) -> float:  # fmt: skip
    """EigenFold's learning-rate factor after ``step`` scheduler steps: warm-up, constant, decay, then ``lr_end``.

    >>> [lr_factor(s, 2, 1, 2, 0.5, 0.1) for s in range(7)]
    [0.5, 0.75, 1.0, 1.0, 0.55, 0.1, 0.1]
    """
    if step < warmup_dur:
        return lr_start + (1 - lr_start) * step / warmup_dur
    step -= warmup_dur
    if step < constant_dur:
        return 1.0
    step -= constant_dur
    if step < decay_dur:
        return 1 + (lr_end - 1) * step / decay_dur
    return lr_end


def build_optimizer(model: nn.Module, optim: dict) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """EigenFold's Adam and learning-rate schedule."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=optim["lr"])
    keys = ("warmup_dur", "constant_dur", "decay_dur", "lr_start", "lr_end")
    schedule = {k: optim[k] for k in keys}
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, **schedule))
    return optimizer, scheduler


# ---------------------------------------------------------------------------------------------------------------
# Random states


def random_states(generator: torch.Generator) -> dict:
    """Every random state of this process as tensors, ints and strings (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},  # fmt: skip
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return states


def set_random_states(states: dict, generator: torch.Generator) -> None:
    """Restore what :func:`random_states` returned."""
    python = states["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = states["numpy"]
    np.random.set_state((numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))  # fmt: skip
    torch.set_rng_state(states["torch"])
    generator.set_state(states["generator"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_process(seed: int, rank: int) -> torch.Generator:
    """Seed python, numpy and torch for this rank; return the generator of the data order's crops and the noise."""
    rank_seed = seed * 1_000_003 + rank
    random.seed(rank_seed)
    np.random.seed(rank_seed % 2**32)
    torch.manual_seed(rank_seed)
    return torch.Generator().manual_seed(rank_seed)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints and the log


def save_checkpoint(path: Path, checkpoint: dict) -> None:
    """Write ``checkpoint`` to ``path`` atomically: into ``path.tmp``, flushed to disk, then renamed over ``path``.

    A process killed while saving leaves the previous ``path`` whole (and at worst a stale ``path.tmp``).
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by this module; a clear error for any other file.

    The checkpoint is a plain dict: ``format``, ``version``, ``step``, ``model`` (state dict), ``optimizer``,
    ``scheduler``, ``sampler`` (position of the next step), ``rng`` (one dict per rank), ``world_size``,
    ``threads``, ``hyperparameters`` (``preset``, ``seed``, ``optim``, ``model``: a ScoreModelConfig as a dict,
    ``diffusion``), ``data`` (fingerprints of the training and held-out chains).
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises many kinds for a file that is not a torch checkpoint
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0]
        raise ValueError(f"{path} is not a tpconv_lite.train checkpoint (torch.load: {first_line})") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        what = f"dict with keys {list(checkpoint)[:6]}" if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path} is not a tpconv_lite.train checkpoint (expected format {CHECKPOINT_FORMAT!r}, got a "
                         f"{what})")  # fmt: skip
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        version = checkpoint.get("version")
        raise ValueError(f"{path}: checkpoint version {version}, this code reads version {CHECKPOINT_VERSION}")
    return checkpoint


def truncate_log(path: Path, step: int) -> None:
    """Keep only the lines of ``path`` up to ``step`` (atomically), so that a resumed run logs each step once."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            break  # a line cut short by a killed process: everything after it is dropped
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# Training


def heldout_loss(model: nn.Module, chains: Sequence, diffusion, crop_length: int, seed: int,
                 processes: Processes) -> tuple[float, float]:  # fmt: skip
    """Mean loss and base loss over ``chains``, each noised the same way at every evaluation.

    Chain ``i`` gets its own generator seeded from ``seed`` and ``i`` (crop, time and noise), apart from the
    training streams, so evaluations are comparable from step to step and the same for any number of processes
    (the chains are shared out over the ranks and the sums reduced).
    """
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for i in range(processes.rank, len(chains), processes.world_size):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + 999_983 + i)
            chain = crop(chains[i], crop_length, generator)
            data, score = noised_batch([chain], diffusion, generator, processes.device)
            loss, base_loss = harmonic_loss(data, model(data), score)
            sums += torch.tensor([loss.item(), base_loss.item(), 1.0], dtype=torch.float64)
    sums = all_reduce(sums, processes)
    model.train()
    return float(sums[0] / sums[2]), float(sums[1] / sums[2])


def sample_chains(model: nn.Module, diffusion: HarmonicDiffusion, sequences: Sequence[str],
                  ss: Sequence[str | None], *, seed: int = 0, indices: Sequence[int] | None = None,
                  progress: bool = False) -> list[Tensor]:  # fmt: skip
    """One sample per sequence with the reverse diffusion, all in one batch; chain ``i`` draws its noise from a
    generator seeded from ``(seed, indices[i])``, so its sample does not depend on the other chains of the batch.

    Args:
        model: the score model (float32).
        diffusion: the harmonic diffusion, with its sampling settings.
        sequences: B one-letter sequences; ss: B secondary-structure strings (or None each).
        seed: seed of the noise.
        indices: B numbers that pick each chain's noise (default ``0 .. B-1``, its position): the chains
            ``[a, b]`` with indices ``[4, 2]`` get the samples that ``a`` and ``b`` get at positions 4 and 2
            of a longer list.
        progress: a tqdm bar over the reverse steps.

    Returns:
        B tensors (n_b, 3) of CA positions in Å (float32, on the CPU).
    """
    device, was_training = next(model.parameters()).device, model.training
    features = [chain_conditioning(q, s, device=device) for q, s in zip(sequences, ss, strict=True)]
    indices = range(len(sequences)) if indices is None else indices
    if len(indices) != len(sequences):
        raise ValueError(f"need one index per sequence, got {len(indices)} for {len(sequences)}")
    generators = [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in indices]
    samples = diffusion.reverse_sample(model, [f[0] for f in features], [f[1] for f in features],
                                       generator=generators, progress=progress)  # fmt: skip
    model.train(was_training)  # reverse_sample leaves the model in eval mode
    return [y.to("cpu", torch.float32) for y in samples]


def heldout_samples(model: nn.Module, chains: Sequence, diffusion: HarmonicDiffusion, crop_length: int, seed: int,
                    processes: Processes) -> dict[str, float]:  # fmt: skip
    """:func:`~tpconv_lite.metrics.structure_measures` of one sample per held-out chain, the same noise each time.

    A run that trains on windows (``crop``) samples windows of the held-out chains, the same ones at every
    checkpoint. The chains are shared out over the ranks; rank 0 returns the measures, the others an empty dict.
    """
    mine = list(range(processes.rank, len(chains), processes.world_size))
    windows = [crop(chains[i], crop_length, torch.Generator().manual_seed(seed * 1_000_003 + 999_983 + i))
               for i in mine]  # fmt: skip
    samples = []
    if windows:
        samples = sample_chains(model, diffusion, [c.sequence for c in windows], [c.ss for c in windows], seed=seed)
    gathered = gather_objects(list(zip(mine, samples, [c.ss for c in windows])), processes)
    if not processes.is_main:
        return {}
    ordered = sorted((item for part in gathered for item in part), key=lambda item: item[0])
    ss = [item[2] for item in ordered]
    return structure_measures([item[1].double() for item in ordered], None if None in ss else ss)


def max_replica_difference(model: nn.Module, processes: Processes) -> float:
    """The largest ``|p_rank - p_0|`` over all parameters and ranks (0.0 on one process)."""
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    reference = flat.clone()
    if processes.distributed:
        dist.broadcast(reference, src=0)
    difference = (flat - reference).abs().max().reshape(1)
    return float(all_reduce(difference, processes, op=dist.ReduceOp.MAX))


def train(args: argparse.Namespace, processes: Processes) -> Path:
    """Train as the command line says; return the checkpoint's path."""
    out: Path = args.out
    checkpoint_path, log_path = out / "checkpoint.pt", out / "log.jsonl"
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    # Hyperparameters: the checkpoint's when resuming (an option that contradicts them is an error), else the preset's.
    checkpoint = None
    if args.resume and checkpoint_path.exists():
        checkpoint = load_checkpoint(checkpoint_path)
        hyper = checkpoint["hyperparameters"]
        stored = {"seed": hyper["seed"], **hyper["optim"], **hyper["diffusion"], **hyper["model"]}
        conflicts = {k: (v, stored[k]) for k, v in given_hyperparameters(args).items() if stored.get(k) != v}
        if conflicts:
            text = ", ".join(f"{k}={v!r} (checkpoint: {s!r})" for k, (v, s) in conflicts.items())
            raise SystemExit(f"--resume: options contradict {checkpoint_path}: {text}")
        if checkpoint["step"] >= args.steps:
            report(processes, f"{checkpoint_path} is at step {checkpoint['step']} >= --steps {args.steps}: done")
            return checkpoint_path
    elif checkpoint_path.exists():
        raise SystemExit(f"{checkpoint_path} exists: pass --resume to carry on from it, or choose another --out")
    else:
        if args.resume:
            report(processes, f"--resume: no {checkpoint_path} yet, starting from step 0")
        hyper = hyperparameters(args)
    optim, seed = hyper["optim"], hyper["seed"]

    train_chains, heldout_chains = load_chains(args, processes)
    train_chains = [c for c in train_chains if len(c.sequence) <= optim["max_len"]]
    if not train_chains:
        raise SystemExit(f"no training chain has at most --max-len {optim['max_len']} residues")
    heldout_chains = heldout_chains[: args.eval_chains or None]
    data = {"train": fingerprint(train_chains), "n_train": len(train_chains), "heldout": fingerprint(heldout_chains)}

    torch.manual_seed(seed)  # the same initial parameters on every rank (DDP also broadcasts rank 0's)
    model = build_model(hyper["model"], processes.device)
    for layer in model.conv_layers:
        layer.checkpointing = args.activation_checkpointing
    diffusion = build_diffusion(hyper["diffusion"], processes.device)
    optimizer, scheduler = build_optimizer(model, optim)
    sampler = StepSampler(len(train_chains), optim["batch"], processes, seed)
    generator = seed_process(seed, processes.rank)
    step = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        step = checkpoint["step"]
        if checkpoint["data"] != data:
            report(processes, f"--resume: the data differ from the checkpoint's ({checkpoint['data']} now {data}): "
                              "the run goes on, but not as the same run")  # fmt: skip
        if checkpoint["world_size"] == processes.world_size:
            set_random_states(checkpoint["rng"][processes.rank], generator)
        else:
            report(processes, f"--resume: {processes.world_size} processes instead of {checkpoint['world_size']}: "
                              "random streams reseeded from the step, the run is not an exact continuation")
            generator = seed_process(seed + step, processes.rank)
        if checkpoint["threads"] != torch.get_num_threads():
            report(processes, f"--resume: {torch.get_num_threads()} threads instead of {checkpoint['threads']}: "
                              "results may differ from a straight run in the last bits")  # fmt: skip
        report(processes, f"resumed from {checkpoint_path} at step {step}")
    if processes.is_main:
        out.mkdir(parents=True, exist_ok=True)
        truncate_log(log_path, step)
    device_ids = [processes.device.index] if processes.device.type == "cuda" else None
    ddp_model = DistributedDataParallel(model, device_ids=device_ids) if processes.distributed else model
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))

    def checkpoint_now(step: int) -> None:
        rng = gather_objects(random_states(generator), processes)  # every rank's states, for an exact resume
        if processes.is_main:
            state = {
                "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": step,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "sampler": {**sampler.position(step + 1), "seed": seed, "steps_per_epoch": sampler.steps_per_epoch},
                "rng": rng, "world_size": processes.world_size, "threads": torch.get_num_threads(),
                "hyperparameters": hyper, "data": data,
            }  # fmt: skip
            save_checkpoint(checkpoint_path, state)
            if args.keep_every and step % args.keep_every == 0:
                save_checkpoint(out / f"checkpoint_{step:07d}.pt", state)
        if processes.distributed:
            dist.barrier()  # nobody goes on until the checkpoint is on disk

    log = open(log_path, "a") if processes.is_main else None
    bar = tqdm(total=args.steps, initial=step, desc="train", disable=args.no_progress or not processes.is_main,
               dynamic_ncols=True)  # fmt: skip
    start_time = time.perf_counter()
    model.train()
    while step < args.steps:
        step += 1
        chains = [crop(train_chains[i], optim["crop"], generator) for i in sampler.indices(step)]
        batch, score = noised_batch(chains, diffusion, generator, processes.device)
        loss, base_loss = harmonic_loss(batch, ddp_model(batch), score)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the gradients over the ranks here

        # EigenFold skips a step with a non-finite or large loss; every rank skips it if any rank's loss is bad.
        local = torch.tensor([loss.item(), base_loss.item(), float(not loss.item() <= optim["max_loss"])],
                             dtype=torch.float64)  # fmt: skip
        totals = all_reduce(local.clone(), processes)
        skipped = bool(totals[2] > 0)
        lr = scheduler.get_last_lr()[0]
        grad_norm = math.nan
        if not skipped:
            grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), optim["clip_grad"]))
            if math.isfinite(grad_norm):
                optimizer.step()
            else:
                skipped = True
        with warnings.catch_warnings():  # EigenFold steps the schedule on skipped steps too; torch warns about it
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            scheduler.step()

        record = {"step": step, "loss": float(totals[0]) / processes.world_size,
                  "base_loss": float(totals[1]) / processes.world_size, "lr": lr,
                  "world_size": processes.world_size, "grad_norm": grad_norm, "skipped": skipped,
                  "restarts": restarts, "time": round(time.perf_counter() - start_time, 3)}  # fmt: skip
        if args.check_replicas:
            record["replica_max_diff"] = max_replica_difference(model, processes)
        if args.eval_every and step % args.eval_every == 0 and heldout_chains:
            record["heldout_loss"], record["heldout_base_loss"] = heldout_loss(
                model, heldout_chains, diffusion, optim["crop"], seed, processes
            )
        checkpoint_step = step % args.ckpt_every == 0 or step == args.steps
        if args.eval_samples and checkpoint_step and heldout_chains:
            measures = heldout_samples(model, heldout_chains[: args.eval_samples], diffusion, optim["crop"], seed,
                                       processes)  # fmt: skip
            if measures:
                record["heldout_samples"] = measures
        if log is not None:
            log.write(json.dumps(record) + "\n")
            log.flush()
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}", base=f"{record['base_loss']:.3f}")
        if checkpoint_step:
            checkpoint_now(step)
    bar.close()
    if log is not None:
        log.close()
    return checkpoint_path


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the command line (on one process, or as one of torchrun's); return the checkpoint's path."""
    args = parse_args(argv)
    processes = setup_processes(args.device)
    try:
        return train(args, processes)
    finally:
        teardown_processes(processes)


if __name__ == "__main__":
    main()
