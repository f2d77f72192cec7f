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
# # 12. Training on real proteins
#
# Chapter 11 built EigenFold's harmonic diffusion {footcite:p}`jing2023eigenfold` and trained a small score model
# on real chains for a few seconds. That model knew a little of the score and nothing of folding. This chapter does
# what a reader of the paper wants to do next: train with a command line that runs the same on a laptop and on
# many machines, load a model that trained for longer and ships with the package, and judge its samples by eye and
# by number. The judges are the native structures of the held-out chains, samples of the harmonic prior alone (what
# the diffusion gives with no model at all), and the same model before training.

# %% [markdown]
# ```{admonition} Run this chapter
# :class: tip
# Locally: `make execute` in a clone of the repository, or open `tutorials/12_training_on_real_proteins.ipynb` in
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
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import e3nn
import matplotlib.pyplot as plt
import torch
from torch import Tensor

import tpconv_lite
from tpconv_lite import train
from tpconv_lite.conditioning import chain_conditioning
from tpconv_lite.diagrams import draw_chains
from tpconv_lite.metrics import (
    ca_ca_distances,
    ca_dihedrals,
    compare_structures,
    structure_measures,
    virtual_angles,
)
from tpconv_lite.proteins import load_chain, load_dataset
from tpconv_lite.sample import PRETRAINED, PRETRAINED_LOG, PRETRAINED_SAMPLES, PRETRAINED_SAMPLING, load_model
from tpconv_lite.score_model import ChainBatch

try:
    from myst_nb import glue  # stores a number for the text of the book
except ImportError:  # Colab: print it instead

    def glue(name: str, value: object, display: bool = True) -> None:
        print(f"{name}: {value}")


torch.set_num_threads(1)  # chains of 80 residues: a second thread mostly waits (see chapter 9)
chapter_start = time.perf_counter()
print(f"torch {torch.__version__}, e3nn {e3nn.__version__}, tpconv_lite {tpconv_lite.__version__}")

# %% [markdown]
# Everything here runs on the CPU, one thread per process, where a GPU is present too: the samples are compared with
# files written on a CPU, and chains of 80 residues keep neither a GPU nor a second thread busy.
#
# ## Goals
#
# By the end of this chapter you can
# 1. train the score model with `python -m tpconv_lite.train`, alone or under `torchrun`, and read its log;
# 2. sample held-out chains with `python -m tpconv_lite.sample` and the pretrained model;
# 3. judge generated backbones by their local geometry, their handedness, their size and their clashes, and by
#    TM-score and RMSD to the native, against natives, the prior and an untrained model;
# 4. say what the `parity` option can and cannot do for handedness.
#
# ## Two commands
#
# Training and sampling are command lines, so that the same run works in a notebook, in a terminal and on a
# cluster. `python -m tpconv_lite.train --help` and `python -m tpconv_lite.sample --help` list their options; the
# hyperparameters have EigenFold's names. A run writes `checkpoint.pt` (a plain dict: model, optimiser, scheduler,
# random states, step) and `log.jsonl` (one line per step) into its folder, and `--resume` carries on from the last
# checkpoint:
#
# ```bash
# python -m tpconv_lite.train --out runs/small --preset small --steps 2000 --resume
# python -m tpconv_lite.sample --checkpoint runs/small/checkpoint.pt --test --out samples/
# ```
#
# The same two commands scale out with PyTorch's `torchrun` {footcite:p}`li2020pytorch`. Training then runs one
# process per core or GPU, each with its own chains, and DistributedDataParallel averages their gradients (gloo on
# CPUs, nccl on GPUs); `--batch` is per process. Sampling needs no communication: the processes share out the
# chains so that each has about the same work (longest first), and each chain draws its noise from a generator
# seeded by its own index, so the files are the same as one process writes:
#
# ```bash
# torchrun --standalone --nproc_per_node 2 -m tpconv_lite.train --out runs/small --preset small --threads 1
# torchrun --standalone --nproc_per_node 2 -m tpconv_lite.sample --test --out samples/ --threads 1
# ```
#
# ## Training from scratch
#
# A run from scratch, with the second command above: `torchrun` (here `python -m torch.distributed.run`, the same
# program, which needs no script on the `PATH`) starts two processes of one thread, one per core. Each trains on its
# own windows of 48 residues of the training chains (`--crop 48`), DistributedDataParallel averages their gradients,
# so a step learns from two windows, and every 50 steps the two share out the held-out chains to compute the
# held-out loss:

# %%
# NBVAL_IGNORE_OUTPUT
LIVE_STEPS, PROCESSES = 300, 2
live = Path(tempfile.mkdtemp()) / "live"
command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(PROCESSES),
           "-m", "tpconv_lite.train", "--out", str(live), "--preset", "small", "--steps", str(LIVE_STEPS),
           "--crop", "48", "--train-skew", "-5", "--train-tmin", "0.002", "--eval-every", "50", "--eval-chains", "10",
           "--ckpt-every", str(LIVE_STEPS), "--no-activation-checkpointing", "--device", "cpu", "--threads", "1",
           "--no-progress"]
start = time.perf_counter()
run = subprocess.run(command, capture_output=True, text=True)
live_seconds = time.perf_counter() - start
if run.returncode != 0:
    raise RuntimeError(f"torchrun exited with {run.returncode}:\n{run.stderr[-3000:]}")
live_log = [json.loads(line) for line in (live / "log.jsonl").read_text().splitlines()]
print(f"{len(live_log)} steps of {PROCESSES} processes in {live_seconds:.0f} s; files: "
      f"{sorted(p.name for p in live.iterdir())}")
print("last line of the log:", {k: round(v, 3) if isinstance(v, float) else v for k, v in live_log[-1].items()})
glue("live_steps", LIVE_STEPS, display=False)
glue("live_seconds", round(live_seconds), display=False)

# %% [markdown]
# Each line of the log has the step's loss and its *base loss*, what a model that predicts zero would score on the
# same noised chains (chapter 11: about 1, because the score is divided by its norm). The noise level is drawn anew
# every step, so both jump around; their ratio is the measure of learning. `--train-skew -5` draws most training
# times at small noise, where the local geometry is decided, and `--train-tmin 0.002` trains down to the time
# where noised real chains still keep 99% of their CA–CA distances in range (chapter 11).
#
# The pretrained model that ships with the package is the same command with the whole chains, `--steps 20000`, a
# learning-rate schedule and one more option: `--train-band-tmin 0.002 --train-band-tmax 10 --train-band-weight 0.5`
# draws half of the noise levels uniformly in RMSD between $t$ = 0.002 and $t$ = 10 (chapter 11), the times at
# which the local geometry and the hand of the helices are decided (below). `tpconv_lite/assets/README.md` gives the
# command and what the band changed, and the log ships beside the model (`PRETRAINED_LOG`). Both runs, side by
# side:

# %%
def running_mean(values: list[float], width: int) -> Tensor:
    """Mean of each window of `width` consecutive values (len(values) - width + 1 of them)."""
    return torch.tensor(values, dtype=torch.float64).unfold(0, width, 1).mean(dim=1)


shipped_log = [json.loads(line) for line in PRETRAINED_LOG.read_text().splitlines()]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
live_title = f"this chapter: {LIVE_STEPS} steps of {PROCESSES} windows of 48 residues"
for ax, log, width, title in ((axes[0], live_log, 50, live_title),
                              (axes[1], shipped_log, 500, "the pretrained model: whole chains")):
    steps = [line["step"] for line in log]
    ax.plot(steps[width - 1:], running_mean([line["loss"] for line in log], width), label="loss")
    ax.plot(steps[width - 1:], running_mean([line["base_loss"] for line in log], width), label="base loss")
    held = [line for line in log if "heldout_loss" in line]
    ax.plot([line["step"] for line in held], [line["heldout_loss"] for line in held], "o", label="held-out loss")
    ax.plot([line["step"] for line in held], [line["heldout_base_loss"] for line in held], "s",
            label="held-out base loss")
    ax.set_xlabel("step"), ax.set_ylabel(f"loss (running mean of {width})"), ax.set_title(title, fontsize=10)
axes[0].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %%
# NBVAL_IGNORE_OUTPUT
live_held = [line for line in live_log if "heldout_loss" in line]
shipped_held = [line for line in shipped_log if "heldout_loss" in line]
live_ratio = live_held[-1]["heldout_loss"] / live_held[-1]["heldout_base_loss"]
shipped_ratio = shipped_held[-1]["heldout_loss"] / shipped_held[-1]["heldout_base_loss"]
# the log's `time` counts from the start of each piece of a resumed run: add up the pieces
piece_ends = [a["time"] for a, b in zip(shipped_log, shipped_log[1:]) if b["time"] < a["time"]]
shipped_minutes = (sum(piece_ends) + shipped_log[-1]["time"]) / 60
print(f"held-out loss / base loss at the end: this chapter's run {live_ratio:.2f}, the pretrained model "
      f"{shipped_ratio:.2f} after {shipped_log[-1]['step']} steps ({shipped_minutes:.0f} min, "
      f"{len(piece_ends) + 1} piece(s))")
glue("live_ratio", live_ratio, display=False)
glue("shipped_ratio", shipped_ratio, display=False)
glue("shipped_steps", shipped_log[-1]["step"], display=False)
glue("shipped_minutes", round(shipped_minutes), display=False)

# %% [markdown]
# On the held-out chains the loss of this chapter's run ends at {glue:text}`live_ratio:.2f` of the base loss after
# {glue:text}`live_steps` steps ({glue:text}`live_seconds` s). The pretrained model reaches
# {glue:text}`shipped_ratio:.2f` after {glue:text}`shipped_steps` steps ({glue:text}`shipped_minutes` minutes on
# two CPU threads), a ratio over other noise levels: its held-out loss draws them as its training did, band
# included. The loss says how well the model predicts the score on average over noise levels; whether its samples
# look like proteins is another question, and the rest of the chapter asks it.
#
# ## The pretrained model and its samples
#
# `load_model` rebuilds the model and its diffusion from a checkpoint; without a path it loads the pretrained one.

# %%
# NBVAL_CHECK_OUTPUT
model, diffusion, checkpoint = load_model(PRETRAINED, "cpu", **PRETRAINED_SAMPLING)
hyper = checkpoint["hyperparameters"]
n_parameters = sum(p.numel() for p in model.parameters())
print(f"step {checkpoint['step']}, preset {hyper['preset']!r}, {n_parameters} parameters, "
      f"{PRETRAINED.stat().st_size / 1e6:.2f} MB")
print({k: hyper["model"][k] for k in ("resi_conv_layers", "resi_ns", "resi_nv", "resi_fc_dim", "parity")})
print({k: v for k, v in hyper["diffusion"].items() if k in ("train_skew", "train_tmin") or "band" in k})
print("sampling:", PRETRAINED_SAMPLING)
glue("n_parameters", n_parameters, display=False)

# %% [markdown]
# ## Sampling at a low temperature
#
# Sampling runs EigenFold's reverse diffusion with two extra settings, `alpha` and `beta`. One step from $y$ over a
# time step $\Delta t$ is (chapter 11)
#
# $$
# \Delta y = -\tfrac{1 + \alpha\beta}{2}\, J y\,\Delta t + \big(1 + \tfrac{\alpha\beta}{2}\big)\, s\,\Delta t
#            + \sqrt{(1 + \alpha)\,\Delta t}\; z,
# $$
#
# with $s$ the model's adjusted score (the score of $p_t$ plus $J y$, chapter 11) and $z$ standard normal noise. It
# is the sum of two steps. With $\alpha = 0$ it is the reverse-time SDE, $-\tfrac12 J y\,\Delta t + s\,\Delta t +
# \sqrt{\Delta t}\, z_1$. What $\alpha$ adds, $\tfrac{\alpha\beta}{2}(s - J y)\,\Delta t + \sqrt{\alpha\,\Delta t}\, z_2$, is
# a step of Langevin dynamics, $\tfrac{\epsilon}{2}\nabla \log q + \sqrt{\epsilon}\, z_2$ with $\epsilon = \alpha\,
# \Delta t$, on the density $q = p_t^\beta$, because $s - J y$ is the full score $\nabla \log p_t$. (Two independent
# normal noises add up to one of variance $(1 + \alpha)\Delta t$.) Langevin dynamics on $q$ samples $q$, so the extra
# term is a corrector in the sense of {footcite:t}`song2021score`: `alpha` says how much correction each step gets,
# and `beta` is an inverse temperature. With `beta = 1` it corrects towards $p_t$ itself; with `beta > 1` towards
# $p_t^\beta$, which is sharper and puts more weight on what the model finds most likely, as in the low-temperature
# sampling of {footcite:t}`ingraham2023chroma`. The split, checked on one step of the pretrained model's schedule:

# %%
# NBVAL_CHECK_OUTPUT
from tpconv_lite.harmonic import reverse_step

n_check = 80
sde_check, schedule_check = diffusion.sde(n_check), diffusion.schedule(n_check)
i, k = schedule_check.N // 2, int(schedule_check.ks[schedule_check.N // 2])
gen = torch.Generator().manual_seed(0)
y, s = (torch.randn(n_check, 3, generator=gen, dtype=torch.float64) for _ in range(2))
dt, a, b = schedule_check.dt[i].item(), schedule_check.alphas[i].item(), schedule_check.beta
J_y = sde_check.P @ (sde_check.D[:, None] * (sde_check.P.T @ y))
reverse_sde = -J_y * dt / 2 + s * dt  # alpha = 0
langevin = a * b / 2 * (s - J_y) * dt  # (epsilon / 2) * beta * grad log p_t, epsilon = alpha * dt
same = torch.allclose(reverse_step(sde_check, schedule_check, i, y, s, None),
                      y + sde_check.project(reverse_sde + langevin, k), rtol=1e-12, atol=1e-12)
print(f"alpha = {a:g}, beta = {b:g}: one step = reverse SDE + Langevin step on p_t^beta: {same}")
eigenfold_defaults = train.build_diffusion(hyper["diffusion"], torch.device("cpu"), alpha=0.0, beta=1.0, inf_step=0.5)
n_longest = max(len(c) for c in load_dataset("test"))
steps_ratio = diffusion.schedule(n_longest).N / eigenfold_defaults.schedule(n_longest).N
glue("steps_ratio", steps_ratio, display=False)
window_low, window_high, window_alpha = PRETRAINED_SAMPLING["alpha_windows"][0]
glue("window_low", window_low, display=False)
glue("window_high", window_high, display=False)
glue("window_alpha", window_alpha, display=False)

# %% [markdown]
# And that Langevin dynamics with the drift $\tfrac{\epsilon\beta}{2}\nabla\log p$ samples $p^\beta$: for a standard
# normal $p$, $p^\beta$ is normal with variance $1/\beta$.

# %%
# NBVAL_CHECK_OUTPUT
gen = torch.Generator().manual_seed(1)
x, epsilon = torch.zeros(20_000, dtype=torch.float64), 0.004
for _ in range(2000):  # grad log p(x) = -x
    x = x + epsilon / 2 * b * -x + epsilon**0.5 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
print(f"beta = {b:g}: variance of the Langevin samples within 5% of 1 / beta: {abs(x.var().item() * b - 1) < 0.05}")

# %% [markdown]
# EigenFold's `inference.py` has `alpha = 0` and `beta = 1`; its paper's samples used `alpha = 1` and `beta = 3`.
# `PRETRAINED_SAMPLING` samples at a low temperature, `beta = 16`, with a schedule step `inf_step = 1.4` instead of
# 0.5, and with an `alpha` that depends on the time. That is `alpha_windows`, an option of this package (EigenFold
# has one `alpha` for all times): a step that starts at a time inside a window `(t_low, t_high, alpha)` uses the
# window's `alpha`. The correction is not free: the rate schedule's steps are $1 + \alpha\beta/2$ times shorter, so
# `alpha` buys Langevin correction with reverse steps. The windows spend it where helices take their hand.
#
# We followed each helix of five training chains through the reverse process, by the mean sine of its
# pseudo-dihedrals (about +0.8 for a right-handed helix, -0.8 for a left-handed one). Over 38 helices, a helix's
# hand flickers while $t$ is large and settles between $t \approx 1$ and $t \approx 5$, and none changed hand below
# $t = 1$ (`tpconv_lite/assets/README.md`). Above $t \approx 2$ a step of the rate schedule no longer grows with
# $t$ (the stiffest mode bounds it), so a window costs steps in proportion to its length in $t$, and the 5-minute
# budget for the held-out chains buys a short one with a strong correction. The pretrained settings use `alpha`
# {glue:text}`window_alpha` from $t$ = {glue:text}`window_low` to {glue:text}`window_high`, none above (which, on
# training chains, kept bond lengths and sizes as they were), and `alpha = 0.5` below. The longest held-out chain
# then takes {glue:text}`steps_ratio:.1f` times as many steps as with EigenFold's defaults.
#
# The settings were chosen on the ten training chains whose lengths are closest to those of the held-out chains,
# with the model shipped before this one (the same command without the band), and fixed before the held-out chains
# were sampled with them; the README lists the comparison. On those chains, with two seeds, the window cut the
# share of left-handed dihedrals from 5.6% (`alpha = 0.5` at all times) to 2.8%, against 2.4% for their natives;
# the low temperature had already halved it before. The folder `PRETRAINED_SAMPLES` holds one sample per held-out
# chain, written by
#
# ```bash
# torchrun --standalone --nproc_per_node 2 -m tpconv_lite.sample --test --alpha 0.5 --beta 16 --inf-step 1.4 \
#     --alpha-window 1 2 16 --alpha-window 2 inf 0 --threads 1 --out samples/
# ```
#
# Sampling the two shortest of them again here, with the same seed (each chain's noise depends on its index in the
# test set, not on the batch it is sampled in), gives back the shipped files.
#
# One of the judges below is the untrained model: the same network with its initial weights. It samples the same
# two chains with the same settings, with the command itself (`--test` followed by names samples only those
# held-out chains). It runs in a second process, on the second core, while this one samples with the pretrained
# model:

# %%
# NBVAL_IGNORE_OUTPUT
test_chains = load_dataset("test")
shortest = sorted(range(len(test_chains)), key=lambda i: len(test_chains[i]))[:2]
torch.manual_seed(0)
untrained = train.build_model(hyper["model"], torch.device("cpu")).eval()
untrained_checkpoint = live.parent / "untrained.pt"  # the pretrained checkpoint with the initial weights instead
train.save_checkpoint(untrained_checkpoint, {**checkpoint, "model": untrained.state_dict(), "step": 0})
windows = [["--alpha-window", *map(str, window)] for window in PRETRAINED_SAMPLING["alpha_windows"]]
untrained_command = [
    sys.executable, "-m", "tpconv_lite.sample", "--checkpoint", str(untrained_checkpoint),
    "--test", *(test_chains[i].name for i in shortest), "--out", str(live.parent / "untrained"),
    "--alpha", str(PRETRAINED_SAMPLING["alpha"]), "--beta", str(PRETRAINED_SAMPLING["beta"]),
    "--inf-step", str(PRETRAINED_SAMPLING["inf_step"]), *sum(windows, []), "--threads", "1", "--no-progress",
]
print("python", " ".join(untrained_command[1:]))
untrained_run = subprocess.Popen(untrained_command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

# %% [markdown]
# Meanwhile, the pretrained model samples the two chains here; a hook on the model keeps what it sees at each step,
# to follow the helices:

# %%
# NBVAL_CHECK_OUTPUT
path = []  # at each reverse step: the batch's times and positions per residue, and each residue's chain
hook = model.register_forward_pre_hook(lambda module, args: path.append(
    (args[0].resi.node_t.clone(), args[0].resi.pos.clone(), args[0].resi.batch.clone())))
start = time.perf_counter()
live_samples = train.sample_chains(model, diffusion, [test_chains[i].sequence for i in shortest],
                                   [test_chains[i].ss for i in shortest], seed=0, indices=shortest)
sample_seconds = time.perf_counter() - start
hook.remove()
shipped = [load_chain(PRETRAINED_SAMPLES / f"{c.name}.pdb") for c in test_chains]
for i, y in zip(shortest, live_samples):
    assert shipped[i].sequence == test_chains[i].sequence
    difference = (y - shipped[i].pos).abs().max().item()
    print(f"{test_chains[i].name} ({len(test_chains[i])} residues, {diffusion.schedule(len(y)).N} steps): "
          f"largest difference from the shipped file below 0.001 Å: {difference < 1e-3}")

# %% [markdown]
# (PDB files keep three decimals, hence the 0.001 Å.) The two chains took {glue:text}`sample_seconds` s. What the
# hook kept shows each of their helices taking its hand, by the mean sine of its pseudo-dihedrals:

# %%
# NBVAL_IGNORE_OUTPUT
hands = {}  # helix -> [(t, mean sine of its pseudo-dihedrals)] along the reverse process
for times, pos, batch in path:
    for j, size in enumerate(torch.bincount(batch).tolist()):
        chain = next(test_chains[i] for i in shortest if len(test_chains[i]) == size)  # 79 and 83 residues
        y, t = pos[batch == j].double(), times[batch == j][0].item()
        for helix in re.finditer("H{6,}", chain.ss):
            sines = torch.sin(torch.deg2rad(ca_dihedrals(y)[helix.start():helix.end() - 3]))
            name = f"{chain.name}, residues {helix.start() + 1}-{helix.end()}"
            hands.setdefault(name, []).append((t, sines.mean().item()))
fig, ax = plt.subplots(figsize=(7, 3.2))
ax.axvspan(window_low, window_high, color="C1", alpha=0.15, label=f"alpha = {window_alpha:g}")
settled = {}
for name, values in hands.items():
    ax.plot([t for t, _ in values], [v for _, v in values], label=name)
    final = values[-1][1]
    settled[name] = min(t for t, v in values if v * final <= 0)  # the reverse process runs from large t to small
    print(f"{name}: final mean sine {final:+.2f}; of the other sign for the last time at t = {settled[name]:.2g}")
ax.axhline(0, color="grey", lw=0.8)
ax.set_xscale("log"), ax.invert_xaxis()
ax.set_xlabel("diffusion time t (the reverse process runs left to right)")
ax.set_ylabel("mean sine of the helix's dihedrals")
ax.set_title("When a helix takes its hand: the two shortest held-out chains", fontsize=10)
ax.legend(fontsize=7)
plt.tight_layout()
plt.show()
glue("settled_low", min(settled.values()), display=False)
glue("settled_high", max(settled.values()), display=False)

# %% [markdown]
# The three helices of these two chains, all right-handed at the end, had the other hand for the last time between
# $t$ = {glue:text}`settled_low:.1f` and {glue:text}`settled_high:.1f`.
#
# Now the judges. For each held-out chain: its native structure, the pretrained model's sample, and a sample of the
# harmonic prior of the same length (the diffusion at $t \to \infty$, no model). The untrained model's samples of the
# two shortest chains, from the second process, stand beside the pretrained model's samples of the same two.

# %%
# NBVAL_IGNORE_OUTPUT
_, messages = untrained_run.communicate()  # waits for the second process
if untrained_run.returncode != 0:
    raise RuntimeError(f"the untrained model's sampling exited with {untrained_run.returncode}:\n{messages[-3000:]}")
untrained_samples = [load_chain(live.parent / "untrained" / f"{test_chains[i].name}.pdb").pos for i in shortest]
print(f"untrained model: {messages.strip()}")
glue("sample_seconds", round(sample_seconds), display=False)  # the pretrained model's two samples, above
generator = torch.Generator().manual_seed(0)
prior_samples = [diffusion.sde(len(c)).sample(1e9, generator=generator).float() for c in test_chains]

# %%
# NBVAL_IGNORE_OUTPUT
natives = [c.pos for c in test_chains]
ss = [c.ss for c in test_chains]
sets = {  # name: (generated chains, their natives, their secondary structure)
    "natives": (natives, natives, ss),
    "pretrained": ([c.pos for c in shipped], natives, ss),
    "harmonic prior": (prior_samples, natives, ss),
    "pretrained, 2 shortest": (live_samples, [natives[i] for i in shortest], [ss[i] for i in shortest]),
    "untrained, 2 shortest": (untrained_samples, [natives[i] for i in shortest], [ss[i] for i in shortest]),
}
columns = {"ca_ca_in_range": "CA–CA in range", "left_handed": "left-handed", "right_handed": "right-handed",
           "rg_ratio": "Rg/N^0.4", "clash_fraction": "clashes", "helix_following": "helix following",
           "strand_following": "strand following", "tm_score_mean": "TM-score", "rmsd_mean": "RMSD (Å)"}
table = {}
for name, (generated, reference, chain_ss) in sets.items():
    comparison = compare_structures([y.double() for y in generated], [r.double() for r in reference], chain_ss)
    table[name] = {**comparison["generated"], "tm_score_mean": comparison["tm_score_mean"],
                   "rmsd_mean": comparison["rmsd_mean"]}
print(f"{'':24}" + "".join(f"{label:>17}" for label in columns.values()))
for name, row in table.items():
    print(f"{name:24}" + "".join(f"{row[key]:17.3f}" for key in columns))

# %% [markdown]
# The goals for the pretrained model, set before it was trained, and where it stands:

# %%
# NBVAL_IGNORE_OUTPUT
GOALS = {  # measure: (lowest, highest) for held-out samples
    "ca_ca_in_range": (0.90, 1.0), "left_handed": (0.0, 0.03), "right_handed": (0.20, 1.0), "rg_ratio": (1.7, 2.4),
    "clash_fraction": (0.0, 0.01), "helix_following": (0.60, 1.0), "strand_following": (0.70, 1.0),
}
met = {}
for key, (low, high) in GOALS.items():
    value = table["pretrained"][key]
    met[key] = low <= value <= high
    print(f"{columns[key]:17} {value:6.3f}  goal {low:g} to {high:g}: {'met' if met[key] else 'not met'}"
          f"  (natives {table['natives'][key]:.3f}, prior {table['harmonic prior'][key]:.3f})")
print(f"mean TM-score to the native below 0.5, the usual line for the same fold: "
      f"{table['pretrained']['tm_score_mean'] < 0.5}")
for key in GOALS:
    glue(f"pre_{key}", 100 * table["pretrained"][key], display=False)
    glue(f"prior_{key}", 100 * table["harmonic prior"][key], display=False)
    glue(f"native_{key}", 100 * table["natives"][key], display=False)
glue("pre_rg", table["pretrained"]["rg_ratio"], display=False)
glue("n_met", sum(met.values()), display=False)
glue("n_goals", len(met), display=False)
glue("pre_tm", table["pretrained"]["tm_score_mean"], display=False)
glue("prior_tm", table["harmonic prior"]["tm_score_mean"], display=False)
glue("pre_rmsd", table["pretrained"]["rmsd_mean"], display=False)
glue("prior_rmsd", table["harmonic prior"]["rmsd_mean"], display=False)
glue("untrained_caca", 100 * table["untrained, 2 shortest"]["ca_ca_in_range"], display=False)
glue("pre2_caca", 100 * table["pretrained, 2 shortest"]["ca_ca_in_range"], display=False)
for name, key in (("natives", "native"), ("pretrained", "pre")):  # left-handed share by the residue's state
    dihedrals = torch.cat([ca_dihedrals(y.double()) for y in sets[name][0]])
    states = "".join(c.ss[1:-2] for c in test_chains)  # dihedral i..i+3 goes to residue i + 1
    for state, label in (("H", "helix"), ("-", "loop")):
        values = dihedrals[torch.tensor([c == state for c in states])]
        share = ((values >= -70) & (values <= -30)).double().mean().item()
        print(f"{name:11} left-handed share at {label} residues: {share:.3f}")
        glue(f"{key}_left_{label}", 100 * share, display=False)

# %% [markdown]
# The pretrained model meets {glue:text}`n_met` of the {glue:text}`n_goals` goals, with the reverse diffusion's own
# output: nothing is fixed afterwards. {glue:text}`pre_ca_ca_in_range:.1f`% of its CA–CA distances are in range,
# against {glue:text}`prior_ca_ca_in_range:.0f`% for the prior and {glue:text}`native_ca_ca_in_range:.1f`% for the
# natives. Its local geometry follows the secondary structure it was asked for: at helix residues its
# pseudo-dihedrals are helical {glue:text}`pre_helix_following:.0f`% of the time (natives
# {glue:text}`native_helix_following:.0f`%, prior {glue:text}`prior_helix_following:.0f`%), and at strand residues
# its virtual angles are open {glue:text}`pre_strand_following:.0f`% of the time (natives
# {glue:text}`native_strand_following:.0f`%, prior {glue:text}`prior_strand_following:.0f`%). Its chains are
# compact, with a median Rg/N^0.4 of {glue:text}`pre_rg:.2f` Å, and have {glue:text}`pre_clash_fraction:.2f`%
# clashes. The goal it misses is handedness: {glue:text}`pre_left_handed:.1f`% of its dihedrals fall in the
# left-handed window, against {glue:text}`native_left_handed:.1f`% of the natives' and
# {glue:text}`prior_left_handed:.1f`% of the prior's. The helices are right ({glue:text}`pre_left_helix:.1f`% of
# the dihedrals at helix residues are left-handed, natives {glue:text}`native_left_helix:.1f`%); the excess is in
# the loops, the residues that are neither helix nor strand ({glue:text}`pre_left_loop:.1f`%, natives
# {glue:text}`native_left_loop:.1f`%), where the secondary structure it is given says least about the shape.
#
# None of this is the native fold. The mean TM-score to the native is {glue:text}`pre_tm:.2f` (prior
# {glue:text}`prior_tm:.2f`), where the same fold scores above about 0.5 and unrelated structures below about 0.3
# {footcite:p}`zhang2004tmscore` (exercise 2 checks the second), and the mean RMSD is {glue:text}`pre_rmsd:.0f` Å.
# One-hot features of 40 training chains teach local structure, not which residues meet. The untrained model has
# {glue:text}`untrained_caca:.0f`% of its CA–CA distances in range on the two shortest chains, against
# {glue:text}`pre2_caca:.0f`% for the pretrained model on the same two: the geometry is learned, not built into
# the network or the sampler.
#
# ## The distributions
#
# A fraction in a window is a coarse summary. The whole distributions of the three local measures, pooled over the
# ten held-out chains:

# %%
measures = {"CA–CA distance (Å)": (ca_ca_distances, (3.0, 4.6)),
            "virtual angle (degrees)": (virtual_angles, (40, 180)),
            "pseudo-dihedral (degrees)": (ca_dihedrals, (-180, 180))}
fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
for ax, (label, (measure, limits)) in zip(axes, measures.items()):
    for name in ("natives", "pretrained", "harmonic prior"):
        values = torch.cat([measure(y.double()) for y in sets[name][0]]).clamp(*limits)
        ax.hist(values.numpy(), bins=60, range=limits, histtype="step", density=True, label=name)
    ax.set_xlabel(label), ax.set_ylabel("density")
axes[2].axvspan(-70, -30, color="red", alpha=0.1), axes[2].axvspan(30, 70, color="green", alpha=0.1)
axes[0].legend(fontsize=8)
fig.suptitle("Local geometry of the held-out chains (values outside the axes are drawn at the edges)")
plt.tight_layout()
plt.show()


def peak(values: Tensor, limits: tuple[float, float], bins: int = 60) -> float:
    """Centre of the fullest bin of a histogram of `values` over `limits`."""
    counts = torch.histc(values, bins=bins, min=limits[0], max=limits[1])
    return limits[0] + (counts.argmax().item() + 0.5) * (limits[1] - limits[0]) / bins


for key, name in (("native", "natives"), ("pre", "pretrained"), ("prior", "harmonic prior")):
    bonds = torch.cat([ca_ca_distances(y.double()) for y in sets[name][0]])
    angles = torch.cat([virtual_angles(y.double()) for y in sets[name][0]])
    dihedrals = torch.cat([ca_dihedrals(y.double()) for y in sets[name][0]])
    print(f"{name:15} CA-CA {bonds.mean():.2f} +- {bonds.std():.2f} Å; peak of the virtual angle "
          f"{peak(angles, (40, 180)):.0f}°, of the dihedral {peak(dihedrals, (-180, 180)):.0f}°")
    glue(f"{key}_bond_sd", bonds.std().item(), display=False)
    glue(f"{key}_angle_peak", peak(angles, (40, 180)), display=False)
    glue(f"{key}_dihedral_peak", peak(dihedrals, (-180, 180)), display=False)

# %% [markdown]
# The natives' CA–CA distances form a sharp peak at 3.8 Å (standard deviation {glue:text}`native_bond_sd:.2f` Å).
# The samples' peak sits in the same place, wider ({glue:text}`pre_bond_sd:.2f` Å), while the prior spreads over
# several Å ({glue:text}`prior_bond_sd:.1f` Å). The virtual angles of natives and samples both peak near 90°
# ({glue:text}`native_angle_peak:.0f`° and {glue:text}`pre_angle_peak:.0f`°), the angle of a helix, with a
# shoulder of open angles from the strands; the prior's are spread out. In the dihedrals the samples have the
# natives' helical peak ({glue:text}`native_dihedral_peak:.0f`° and {glue:text}`pre_dihedral_peak:.0f`°), and more
# weight than the natives in the left-handed window, shaded red.
#
# ## One chain in 3D
#
# The shortest held-out chain, native and sampled, coloured from the first residue (blue) to the last (red):

# %%
first = shortest[0]
draw_chains({f"native {test_chains[first].name}": natives[first].double(),
             "pretrained sample": shipped[first].pos.double(), "harmonic prior": prior_samples[first].double()},
            f"{test_chains[first].name}: secondary structure {test_chains[first].ss.count('H')} H, "
            f"{test_chains[first].ss.count('E')} E of {len(test_chains[first])} residues")

# %% [markdown]
# ## Handedness, with `parity` on and off
#
# Real chains are right-handed: their CA pseudo-dihedrals sit far more often in the right-handed window than in its
# mirror. The pretrained model has `parity=True`, EigenFold's default, which lets it tell a chain from its mirror
# image (chapter 9). Chain by chain, the share of right-handed minus left-handed dihedrals:

# %%
# NBVAL_IGNORE_OUTPUT
def hand_excess(pos: Tensor) -> float:
    """Share of pseudo-dihedrals in the right-handed window minus the share in the left-handed one."""
    m = structure_measures([pos.double()])
    return m["right_handed"] - m["left_handed"]


excess = {name: torch.tensor([hand_excess(y) for y in sets[name][0]]) for name in ("natives", "pretrained",
                                                                                     "harmonic prior")}
for name, values in excess.items():
    error = values.std() / len(values) ** 0.5
    print(f"{name:15} right minus left: mean {values.mean():+.3f} +- {error:.3f} (standard error over chains), "
          f"positive in {int((values > 0).sum())} of {len(values)} chains")
glue("excess_pre", 100 * excess["pretrained"].mean().item(), display=False)
glue("excess_pre_se", 100 * (excess["pretrained"].std() / len(excess["pretrained"]) ** 0.5).item(), display=False)
glue("excess_pre_positive", int((excess["pretrained"] > 0).sum()), display=False)
glue("excess_native", 100 * excess["natives"].mean().item(), display=False)
z = (excess["pretrained"].mean() / (excess["pretrained"].std() / len(excess["pretrained"]) ** 0.5)).item()
print(f"pretrained: the mean is {z:.1f} standard errors above zero")
glue("excess_pre_z", z, display=False)

# %% [markdown]
# Chain by chain, the pretrained model's samples have {glue:text}`excess_pre:.0f` ±
# {glue:text}`excess_pre_se:.0f` percentage points more right-handed than left-handed dihedrals (mean and standard
# error over the 10 held-out chains; natives {glue:text}`excess_native:.0f`), and the excess is positive in
# {glue:text}`excess_pre_positive` of the 10 chains. The model prefers the right hand (the mean is
# {glue:text}`excess_pre_z:.1f` standard errors above zero). Its left-handed dihedrals are in the loops (above),
# not in chains or helices of the wrong hand.
#
# With `parity=False` no amount of training could do this. Such a model is equivariant under reflections too: the
# score it predicts for the mirror image $-x$ is the mirror image of its score for $x$. The reverse diffusion then
# turns mirrored noise into the mirrored sample, step by step, and since the noise is as likely as its mirror, a
# chain and its mirror image are sampled equally often. Checked on one noised held-out chain, with the pretrained
# model and with an untrained model that differs only in `parity`:

# %%
# NBVAL_CHECK_OUTPUT
def mirror_error(net: torch.nn.Module, data: ChainBatch) -> float:
    """max |f(-x) + f(x)| / max |f(x)|: zero for a model that mirrors its output with its input."""
    with torch.no_grad():
        out = net(data)
        mirrored = dataclasses.replace(data, resi=dataclasses.replace(data.resi, pos=-data.resi.pos))
        return ((net(mirrored) + out).abs().max() / out.abs().max()).item()


window = test_chains[first]
data, _ = diffusion.noised_batch([window.pos], *zip(*[chain_conditioning(window.sequence, window.ss)]),
                                 generator=torch.Generator().manual_seed(1))
torch.manual_seed(0)
no_parity = train.build_model({**hyper["model"], "parity": False}, torch.device("cpu")).eval()
print(f"pretrained (parity=True): relative mirror error {mirror_error(model, data):.1e}")
print(f"untrained, parity=False: relative mirror error below 1e-5: {mirror_error(no_parity, data) < 1e-5}")

# %% [markdown]
# The parity model's output for the mirror image is not the mirror of its output: it has learned something that
# reflections do not preserve. The parity-free model mirrors exactly, trained or not, so its samples would have
# equal shares in the two windows on average. Chapter 9 trains both kinds and measures this.
#
# ## Going further
#
# - **More data.** `--data FOLDER` trains on a folder of PDB or mmCIF files (read with gemmi; `--eval-data` for
#   held-out ones), for example single chains downloaded from the PDB. The dataset here has 40 training chains:
#   enough to learn local geometry, far too few to learn folds.
# - **A GPU.** `--device cuda` trains and samples there. Use EigenFold's sizes (`--preset eigenfold`) and whole
#   chains; activation checkpointing (on by default) keeps the memory of long chains in bounds.
# - **Many machines.** `torchrun --nnodes N --nproc_per_node P --rdzv-backend c10d --rdzv-endpoint HOST:PORT -m
#   tpconv_lite.train ...` on each machine; `--out` must be a folder all of them see, and a run that dies resumes
#   from its last checkpoint with `--resume`, on any number of processes.
# - **Better conditioning.** EigenFold conditions on OmegaFold's embeddings of the sequence; this book's one-hot
#   features know the secondary structure but not which parts of the chain touch (chapter 11).
#
# ## Summary
#
# - `python -m tpconv_lite.train` and `python -m tpconv_lite.sample` are the whole workflow; the same commands run
#   under `torchrun`, training with DistributedDataParallel and sampling with each process taking its share of the
#   chains. A run is a folder: `checkpoint.pt`, a plain dict, and `log.jsonl`, one line per step; `--resume` carries
#   on exactly.
# - The ratio of the loss to the base loss measures learning; whether samples look like proteins is measured on the
#   samples themselves: bond lengths, local angles and dihedrals, compactness, clashes, and how the local geometry
#   follows the secondary structure it was asked for.
# - Natives, the harmonic prior and an untrained model bracket what a trained model does: the prior keeps the chain's
#   connectivity and nothing of the local geometry, and the trained model must add it.
# - A model with `parity=False` samples a chain and its mirror image equally often; only `parity=True` can prefer
#   the hand of real proteins, and it must learn to.
# - Local geometry is within reach of a small model trained for an hour and a half on a CPU; folds are not: that takes
#   EigenFold's language-model features, its data and its GPU time.
#
# ## Exercises
#
# **1.** Mirror the pretrained model's samples ($x \to -x$). Which of the table's measures change, and how? What does
# that say about a parity-free model's samples?

# %% tags=["hide-cell"]
# NBVAL_CHECK_OUTPUT
# Solution 1: a reflection keeps distances, angles, size and clashes, and flips the sign of every dihedral: the left-
# and right-handed shares swap, and helix following (a right-handed share) changes with them. A parity-free model
# samples x and -x equally often, so its two shares agree on average.
mirrored = structure_measures([-c.pos.double() for c in shipped], ss)
original = structure_measures([c.pos.double() for c in shipped], ss)
print("left and right swap:", abs(mirrored["left_handed"] - original["right_handed"]) < 1e-12,
      abs(mirrored["right_handed"] - original["left_handed"]) < 1e-12)
print("distances, sizes, clashes and angles unchanged:", all(abs(mirrored[k] - original[k]) < 1e-12 for k in
      ("ca_ca_in_range", "rg_ratio", "clash_fraction", "strand_following")))

# %% [markdown]
# **2.** TM-scores below about 0.3 are what unrelated structures give {footcite:p}`zhang2004tmscore`. Check it:
# score 30 pairs of held-out natives of different lengths, each pair cut to the shorter length.

# %% tags=["hide-cell"]
# NBVAL_IGNORE_OUTPUT
# Solution 2: cut both chains to the shorter length and score the pair (the TM-score normalises by the reference).
from tpconv_lite.metrics import tm_score

pairs = [(a, b) for a in natives for b in natives if len(a) != len(b)]
scores = torch.tensor([float(tm_score(a[: min(len(a), len(b))].double(), b[: min(len(a), len(b))].double()))
                       for a, b in pairs[:30]])
print(f"{len(scores)} pairs of unrelated natives: TM-score mean {scores.mean():.2f}, largest {scores.max():.2f}")

# %%
# NBVAL_IGNORE_OUTPUT
print(f"chapter run time: {time.perf_counter() - chapter_start:.0f} s")

# %% [markdown]
# ## References
#
# EigenFold {footcite:p}`jing2023eigenfold` for the model, its diffusion and its sampler settings; PyTorch's
# distributed data parallel {footcite:p}`li2020pytorch`; the TM-score {footcite:p}`zhang2004tmscore`; the PDB
# {footcite:p}`berman2000pdb` and DSSP {footcite:p}`kabsch1983dssp` for the data.
#
# ```{footbibliography}
# ```
