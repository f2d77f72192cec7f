"""A toy diffusion setting for the score model: ideal helices, a variance-exploding SDE, training and sampling.

This is a teaching setting, small enough to train on a CPU in a minute. It is *not* EigenFold's diffusion, which
runs a harmonic SDE whose stationary distribution is a Gaussian polymer and conditions on language-model
embeddings. What carries over from EigenFold is the interface: the model reads a :class:`ChainBatch`, predicts a
score multiplied by ``score_norm``, and is trained with EigenFold's loss ``mean((score - pred)^2 / score_norm^2)``.

**Data.** :func:`toy_chains` gives alpha-carbon (CA) chains: ideal right-handed alpha helices (3.6 residues per
turn, 1.5 Å rise, 2.3 Å radius, hence 3.83 Å between consecutive CAs) or planar beta hairpins, slightly noised,
centred and randomly rotated. Their handedness is read from the CA pseudo-dihedral angles of residues
``i, i+1, i+2, i+3`` (:func:`tpconv_lite.metrics.ca_dihedrals`): about +50 degrees along a right-handed alpha helix, -50 along its
mirror image, 0 or 180 in a planar hairpin. Node and pair features (:func:`chain_features`) stand in for
EigenFold's language-model embeddings: a one-hot chain kind per residue, and per pair whether the two residues
are bonded and which comes first.

**Forward process** (:class:`VESDE`, Song et al. 2021). For diffusion time ``t`` in [0, 1],
``x_t = x_0 + sigma(t) z`` with ``sigma(t) = sigma_min^(1 - t) sigma_max^t`` and ``z`` standard normal noise with
the mean of each chain removed (the model sees only relative positions, so it could not predict a shift of the
centre). The score of this kernel is ``-(x_t - x_0) / sigma^2 = -z / sigma``. Like EigenFold's
``HarmonicSDE.score_norm``, ``score_norm`` is the root mean square of one coordinate of that score,
``sqrt((n - 1) / n) / sigma`` for a chain of ``n`` residues (one of the ``n`` modes, the centre, carries no
noise). The model is told the noise level as ``node_t = sigma(t)^2``, and :func:`toy_model_config` sets its
``tmin, tmax`` to ``sigma_min^2, sigma_max^2``, so the time embedding spans its whole range.

**Training** (:func:`train_score_model`): Adam on EigenFold's loss, with ``t`` uniform per chain and EigenFold's
gradient clipping at norm 1. Predicting zero gives the base loss ``mean(score^2 / score_norm^2)``, about 1.

**Sampling** (:func:`sample_chains`): the reverse-time SDE, integrated by Euler–Maruyama from ``t = 1`` down to
``t = 0`` in steps ``dt``. It starts from centred Gaussian noise of variance ``sigma_max^2 + data_variance`` per
coordinate, the forward process's marginal at ``t = 1`` for data of that variance (``N(0, sigma_max^2)`` alone is
too narrow when ``sigma_max`` is not much larger than the chains). Each step is
``x <- x + g(t)^2 score dt + g(t) sqrt(dt) z``, with ``g(t)^2 = d sigma^2 / dt = 2 sigma(t)^2 log(sigma_max /
sigma_min)`` and fresh centred noise ``z``; or, with
``ode=True``, the probability-flow ODE ``x <- x + g(t)^2 score dt / 2``, deterministic given the starting noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from tqdm import tqdm

from tpconv_lite.graph import scatter
from tpconv_lite.metrics import ca_dihedrals as ca_dihedrals  # re-exported: they lived here before metrics
from tpconv_lite.metrics import handedness as handedness
from tpconv_lite.score_model import ChainBatch, ScoreModelConfig
from tpconv_lite.rotations import random_o3

HELIX_RADIUS = 2.3  # Å, distance of each CA from the helix axis
HELIX_RISE = 1.5  # Å per residue along the axis
HELIX_TWIST = 100.0  # degrees per residue: 3.6 residues per turn
CA_CA = 3.8  # Å, distance between consecutive CAs
STRAND_GAP = 4.8  # Å, distance between the axes of the two strands of a hairpin
STRAND_RISE = 3.3  # Å per residue along a beta strand
CHAIN_KINDS = ("helix", "hairpin")


def ideal_helix(n_residues: int, right_handed: bool = True, dtype: torch.dtype = torch.float64) -> Tensor:
    """CA positions of an ideal alpha helix along the z axis.

    Residue ``k`` sits at angle ``100 k`` degrees and height ``1.5 k`` Å; the angle grows counterclockwise seen
    from +z as the helix climbs, which makes it right-handed. ``right_handed=False`` gives its mirror image.

    Returns:
        (n_residues, 3) positions, centred at the origin.
    """
    _check_length(n_residues, 1)
    k = torch.arange(n_residues, dtype=torch.float64)
    angle = torch.deg2rad(HELIX_TWIST * k)
    sign = 1.0 if right_handed else -1.0
    pos = torch.stack([HELIX_RADIUS * torch.cos(angle), sign * HELIX_RADIUS * torch.sin(angle), HELIX_RISE * k], 1)
    return (pos - pos.mean(dim=0)).to(dtype)


def beta_hairpin(n_residues: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """CA positions of a flat beta hairpin: two antiparallel zigzag strands joined by one turn residue.

    The first strand advances 3.3 Å per residue along x and zigzags ``+-0.94`` Å in y (3.8 Å between CAs); the
    second strand runs back over it, shifted 4.8 Å in y, so facing CAs are 4.8 Å apart; the turn residue sits
    halfway between the two strand ends, 3.8 Å from both. Everything lies in the ``z = 0`` plane, so the hairpin
    is its own mirror image (achiral): every CA dihedral is 0 or 180 degrees.

    Returns:
        (n_residues, 3) positions, centred at the origin; ``n_residues >= 3``.
    """
    _check_length(n_residues, 3)
    first = (n_residues - 1) // 2
    second = n_residues - 1 - first  # first or first + 1 residues
    zigzag = math.sqrt(CA_CA**2 - STRAND_RISE**2) / 2
    strand = [(STRAND_RISE * k, zigzag * (-1) ** k) for k in range(first - second, first)]  # `second` sites
    x_end, y_end = strand[-1]
    turn = (x_end + math.sqrt(CA_CA**2 - (STRAND_GAP / 2) ** 2), y_end + STRAND_GAP / 2)
    points = strand[second - first :] + [turn] + [(x, y + STRAND_GAP) for x, y in reversed(strand)]
    pos = torch.tensor([[x, y, 0.0] for x, y in points], dtype=torch.float64)
    return (pos - pos.mean(dim=0)).to(dtype)


def toy_chains(
    n_chains: int,
    n_residues: int,
    kind: str = "helix",
    noise: float = 0.1,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[Tensor]:
    """Noisy, randomly rotated copies of an ideal right-handed helix or a hairpin (proper rotations only).

    Args:
        n_chains: number of chains.
        n_residues: residues per chain.
        kind: ``"helix"`` or ``"hairpin"``.
        noise: standard deviation (Å) of the Gaussian noise added to each coordinate.
        generator: random generator, for reproducible data.
        dtype: dtype of the positions.

    Returns:
        ``n_chains`` tensors (n_residues, 3), each centred at the origin.
    """
    if kind not in CHAIN_KINDS:
        raise ValueError(f"kind must be one of {CHAIN_KINDS}, got {kind!r}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    ideal = ideal_helix(n_residues) if kind == "helix" else beta_hairpin(n_residues)
    chains = []
    for _ in range(n_chains):
        pos = ideal + noise * torch.randn(ideal.shape, generator=generator, dtype=torch.float64)
        pos = (pos - pos.mean(dim=0)) @ random_o3(generator=generator).T
        chains.append(pos.to(dtype))
    return chains


def chain_features(n_residues: int, kind: str, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Stand-ins for EigenFold's language-model features (``lm_node_dim = lm_edge_dim = 2``).

    Returns:
        node_attr: (n, 2) one-hot chain kind, ``[helix, hairpin]``.
        pair_attr: (n, n, 2) with ``pair[i, j] = [i and j are bonded, i < j]``.
    """
    if kind not in CHAIN_KINDS:
        raise ValueError(f"kind must be one of {CHAIN_KINDS}, got {kind!r}")
    _check_length(n_residues, 1)
    node_attr = torch.zeros(n_residues, len(CHAIN_KINDS), dtype=dtype)
    node_attr[:, CHAIN_KINDS.index(kind)] = 1
    k = torch.arange(n_residues)
    bonded = (k[:, None] - k[None, :]).abs() == 1
    before = k[:, None] < k[None, :]
    return node_attr, torch.stack([bonded, before], dim=-1).to(dtype)


def toy_model_config(sde: VESDE, **overrides) -> ScoreModelConfig:
    """A small :class:`ScoreModelConfig` for the toy chains: ``tmin, tmax = sigma_min^2, sigma_max^2``.

    Defaults: 3 layers, ``resi_ns=16``, ``resi_nv=8``, ``resi_ntps=8``, ``resi_ntpv=2``, ``resi_fc_dim=32``,
    ``t_emb_dim=16``, ``lm_node_dim = lm_edge_dim = 2``, and 32 Gaussians on ``sqrt(length)`` up to
    ``sqrt(20 Å)``, which resolve lengths near 3.8 Å to about 0.55 Å like EigenFold's 50 up to ``sqrt(50 Å)``.
    ``overrides`` replace any field.
    """
    settings = dict(
        resi_conv_layers=3,
        resi_ns=16,
        resi_nv=8,
        resi_ntps=8,
        resi_ntpv=2,
        resi_fc_dim=32,
        t_emb_dim=16,
        radius_emb_dim=32,
        radius_emb_max=20.0,
        lm_node_dim=len(CHAIN_KINDS),
        lm_edge_dim=2,
        tmin=sde.sigma_min**2,
        tmax=sde.sigma_max**2,
    )
    settings.update(overrides)
    return ScoreModelConfig(**settings)


class VESDE:
    """Variance-exploding diffusion ``x_t = x_0 + sigma(t) z``, ``sigma(t) = sigma_min^(1-t) sigma_max^t``.

    Noise is centred per chain (see the module docstring). Times ``t`` lie in [0, 1].

    Args:
        sigma_min: noise scale (Å) at t = 0, > 0; samples keep about this much noise.
        sigma_max: noise scale (Å) at t = 1, > sigma_min; about the size of a chain (8 Å suits 8 residues).
    """

    def __init__(self, sigma_min: float = 0.2, sigma_max: float = 8.0) -> None:
        if not 0 < sigma_min < sigma_max < math.inf:
            raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale at time ``t`` (any shape)."""
        return self.sigma_min ** (1 - t) * self.sigma_max**t

    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion coefficient ``d sigma^2 / dt = 2 sigma(t)^2 log(sigma_max / sigma_min)``."""
        return 2 * self.sigma(t) ** 2 * math.log(self.sigma_max / self.sigma_min)

    def score_norm(self, t: Tensor, n_residues: Tensor) -> Tensor:
        """Root mean square of one coordinate of the true score: ``sqrt((n - 1) / n) / sigma(t)``."""
        return torch.sqrt((n_residues - 1) / n_residues) / self.sigma(t)

    def centred_noise(self, like: Tensor, batch: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Standard normal noise shaped like ``like`` (N, 3), minus its mean over each chain of ``batch``."""
        z = torch.randn(like.shape, generator=generator, dtype=like.dtype)
        return z - scatter(z, batch, reduce="mean")[batch]

    def perturb(
        self, x0: Tensor, t: Tensor, batch: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Sample ``x_t`` from ``x_0`` and return it with the score of the kernel.

        Args:
            x0: (N, 3) clean positions of B stacked chains.
            t: (B,) time of each chain.
            batch: (N,) chain of each residue.
            generator: random generator.

        Returns:
            x_t: (N, 3) noised positions; score: (N, 3) ``-(x_t - x_0) / sigma^2``.
        """
        sigma = self.sigma(t)[batch][:, None]
        z = self.centred_noise(x0, batch, generator)
        return x0 + sigma * z, -z / sigma


def score_matching_loss(score: Tensor, pred: Tensor, score_norm: Tensor) -> tuple[Tensor, Tensor]:
    """EigenFold's loss and the loss of predicting zero.

    Args:
        score: (N, 3) true score.
        pred: (N, 3) predicted score.
        score_norm: (N,) score scale of each residue's chain, > 0.

    Returns:
        loss ``mean((score - pred)^2 / score_norm^2)`` and base loss ``mean(score^2 / score_norm^2)``, 0-d tensors.
    """
    if score.dim() != 2 or score.shape[1] != 3 or pred.shape != score.shape or score_norm.shape != score.shape[:1]:
        raise ValueError(
            f"need score (N, 3), pred (N, 3) and score_norm (N,), got {tuple(score.shape)}, "
            f"{tuple(pred.shape)}, {tuple(score_norm.shape)}"
        )
    if not bool((score_norm > 0).all()):
        raise ValueError("score_norm must be positive (the loss divides by it)")
    norm2 = score_norm[:, None] ** 2
    return ((score - pred) ** 2 / norm2).mean(), (score**2 / norm2).mean()


def noised_batch(
    chains: list[Tensor], kinds: list[str], t: Tensor, sde: VESDE, generator: torch.Generator | None = None
) -> tuple[ChainBatch, Tensor]:
    """Noise clean chains to times ``t`` and pack them for the model.

    Args:
        chains: B clean chains (n_b, 3).
        kinds: B chain kinds (see :data:`CHAIN_KINDS`).
        t: (B,) diffusion times.
        sde: the forward process.
        generator: random generator.

    Returns:
        The :class:`ChainBatch` at the noised positions, and the (N, 3) true score.
    """
    dtype = chains[0].dtype
    features = [chain_features(c.shape[0], kind, dtype) for c, kind in zip(chains, kinds)]
    n_residues = torch.tensor([c.shape[0] for c in chains], dtype=dtype)
    data = ChainBatch.from_chains(
        chains, [f[0] for f in features], [f[1] for f in features], sde.sigma(t) ** 2, sde.score_norm(t, n_residues)
    )
    data.resi.pos, score = sde.perturb(data.resi.pos, t, data.resi.batch, generator)
    return data, score


def train_score_model(
    model: nn.Module,
    sde: VESDE,
    chains: list[Tensor],
    kinds: list[str],
    n_steps: int,
    batch_size: int = 8,
    lr: float = 3e-3,
    *,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Train ``model`` by denoising score matching on the clean ``chains``.

    Each step draws ``batch_size`` chains (with replacement) and a uniform time per chain, and takes one Adam
    step on :func:`score_matching_loss` with the gradient norm clipped at 1.

    Args:
        model: a :class:`~tpconv_lite.score_model.ResiLevelTensorProductScoreModel` with ``lm_node_dim`` and
            ``lm_edge_dim`` 2 (see :func:`toy_model_config`), in the dtype of ``chains``.
        sde: the forward process.
        chains: clean chains (n_b, 3), e.g. from :func:`toy_chains`.
        kinds: the kind of each chain.
        n_steps: number of optimisation steps.
        batch_size: chains per step.
        lr: Adam learning rate.
        seed: seed of the batches, times and noise (not of the model's initialisation).
        progress: show a tqdm progress bar with the running loss.

    Returns:
        ``{"loss": [...], "base_loss": [...]}``, one value per step. The model is left in eval mode.
    """
    if len(chains) == 0 or len(kinds) != len(chains):
        raise ValueError(f"need chains and one kind per chain, got {len(chains)} chains and {len(kinds)} kinds")
    if n_steps < 0 or batch_size < 1:
        raise ValueError(f"need n_steps >= 0 and batch_size >= 1, got {n_steps}, {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    log: dict[str, list[float]] = {"loss": [], "base_loss": []}
    model.train()
    bar = tqdm(range(n_steps), disable=not progress, desc="training")
    for _ in bar:
        pick = torch.randint(len(chains), (batch_size,), generator=generator).tolist()
        t = torch.rand(batch_size, generator=generator, dtype=chains[0].dtype)
        data, score = noised_batch([chains[i] for i in pick], [kinds[i] for i in pick], t, sde, generator)
        loss, base_loss = score_matching_loss(score, model(data), data.score_norm[data.resi.batch])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss.item()}; lower lr or check the data")
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        log["loss"].append(loss.item())
        log["base_loss"].append(base_loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}", base=f"{base_loss.item():.3f}")
    model.eval()
    return log


@torch.no_grad()
def sample_chains(
    model: nn.Module,
    sde: VESDE,
    n_chains: int,
    n_residues: int,
    kind: str = "helix",
    n_steps: int = 100,
    *,
    ode: bool = False,
    data_variance: float = 0.0,
    return_path: bool = False,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Generate chains by integrating the reverse-time SDE (or the probability-flow ODE) from t = 1 to t = 0.

    The start is centred Gaussian noise whose variance per coordinate, before centring, is
    ``sigma_max^2 + data_variance * n / (n - 1)``: after centring its mean square per coordinate is
    ``sigma_max^2 (n - 1) / n + data_variance``, that of the forward process at ``t = 1`` for centred training
    chains whose coordinates have mean square ``data_variance`` (e.g. ``torch.cat(chains).pow(2).mean()``).

    Args:
        model: a trained score model.
        sde: the forward process the model was trained on.
        n_chains: number of chains, sampled together as one batch.
        n_residues: residues per chain.
        kind: chain kind given to the model as a feature.
        n_steps: number of Euler(-Maruyama) steps.
        ode: integrate the deterministic probability-flow ODE instead of the SDE.
        data_variance: mean square (Å^2) of one coordinate of the centred training chains, >= 0; 0 gives the
            plain ``N(0, sigma_max^2)`` start of score SDEs, right only when ``sigma_max`` dwarfs the chains.
        return_path: also return the positions before every step and after the last.
        generator: random generator.
        dtype: the model's dtype.
        progress: show a tqdm progress bar.

    Returns:
        (n_chains, n_residues, 3) sampled positions, each chain centred; with ``return_path``, also the
        (n_steps + 1, n_chains, n_residues, 3) positions at times ``1, 1 - dt, ..., 0``.

    Example:
        >>> class ZeroScore(nn.Module):  # with a score of zero, one ODE step stays at the start
        ...     def forward(self, data):
        ...         return torch.zeros_like(data.resi.pos)
        >>> x = sample_chains(ZeroScore(), VESDE(0.2, 5.0), 4000, 8, n_steps=1, ode=True, data_variance=6.0,
        ...                   generator=torch.Generator().manual_seed(0))
        >>> round(float(x.pow(2).mean()))  # 5^2 * 7 / 8 + 6 = 27.9
        28
    """
    if n_chains < 1 or n_steps < 1:
        raise ValueError(f"need n_chains >= 1 and n_steps >= 1, got {n_chains}, {n_steps}")
    _check_length(n_residues, 2)
    if not 0 <= data_variance < math.inf:
        raise ValueError(f"data_variance must be finite and >= 0, got {data_variance}")
    start = [torch.zeros(n_residues, 3, dtype=dtype)] * n_chains
    data, _ = noised_batch(start, [kind] * n_chains, torch.ones(n_chains, dtype=dtype), sde, generator)
    x, batch = data.resi.pos, data.resi.batch
    x = x * math.sqrt(1 + data_variance * n_residues / (n_residues - 1) / sde.sigma_max**2)
    n = torch.full((n_chains,), float(n_residues), dtype=dtype)
    times = torch.linspace(1, 0, n_steps + 1, dtype=dtype)
    path = [x]
    model.eval()
    for t, t_next in tqdm(zip(times[:-1], times[1:]), total=n_steps, disable=not progress, desc="sampling"):
        t_chain = t.expand(n_chains)
        data.resi.pos, data.resi.node_t = x, (sde.sigma(t_chain) ** 2)[batch]
        data.score_norm = sde.score_norm(t_chain, n)
        dt = t - t_next
        g2 = sde.g2(t)
        score = model(data)
        if ode:
            x = x + 0.5 * g2 * score * dt
        else:
            x = x + g2 * score * dt + torch.sqrt(g2 * dt) * sde.centred_noise(x, batch, generator)
        path.append(x)
    if return_path:
        return x.view(n_chains, n_residues, 3), torch.stack(path).view(n_steps + 1, n_chains, n_residues, 3)
    return x.view(n_chains, n_residues, 3)


def _check_length(n_residues: int, minimum: int) -> None:
    if isinstance(n_residues, bool) or not isinstance(n_residues, int) or n_residues < minimum:
        raise ValueError(f"n_residues must be an integer >= {minimum}, got {n_residues!r}")
