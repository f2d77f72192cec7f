"""Measures of alpha-carbon (CA) backbones: bond lengths, angles, dihedrals, size, clashes, RMSD and TM-score.

Every function takes positions of shape ``(..., n, 3)`` in Å (batched over leading dimensions where that comes
naturally) and computes in the input's dtype; pass float64 for exact work.

**Geometry.** :func:`ca_ca_distances` gives the ``n - 1`` virtual bond lengths (3.8 Å in real chains, 2.9 Å
for a rare cis-peptide). :func:`virtual_angles` gives the ``n - 2`` angles ``i-1, i, i+1``, attributed to the
vertex residue ``i`` (about 90 degrees in a helix, 110 to 130 in a strand). :func:`ca_dihedrals` gives the
``n - 3`` pseudo-dihedrals of ``i, i+1, i+2, i+3``, attributed to residue ``i + 1`` (the start of the central
bond); the sign is IUPAC's, about +50 degrees along a right-handed alpha helix, -50 along its mirror image.

**Superposition.** :func:`kabsch_rmsd` is the RMSD after the optimal proper rotation (Kabsch). :func:`tm_score`
is the index-aligned TM-score as Zhang and Skolnick's TM-score program defines it: normalised by the length ``L``
of the reference, ``d0 = 1.24 (L - 15)^(1/3) - 1.8`` (at least 0.5), the superposition searched from fragment
seeds (lengths ``L, L/2, L/4, ...`` down to 4, every start) and refined by iterating Kabsch on the residues closer
than ``d0_search - 1`` (``d0_search = d0`` clamped to [4.5, 8] Å, the cutoff widened by 0.5 Å until three
residues qualify), keeping the best score met on the way.

**Sets of chains.** :func:`structure_measures` pools the residues of many chains (see its docstring for the
windows), and :func:`compare_structures` compares generated chains with reference chains, including
Wasserstein-1 distances between their angle and dihedral distributions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CA_CA_RANGE = (3.6, 4.0)  # Å, a CA-CA distance in this window counts as a good bond
LEFT_WINDOW = (-70.0, -30.0)  # degrees, left-handed helical pseudo-dihedrals
RIGHT_WINDOW = (30.0, 70.0)  # degrees, right-handed helical pseudo-dihedrals
STRAND_ANGLE = 105.0  # degrees, virtual angles at or above this count as extended (strand-like)
RG_EXPONENT = 0.4  # Rg / N^0.4 is about 2 Å for compact globular chains


def _check_pos(pos: Tensor, minimum: int, name: str = "pos") -> None:
    if not isinstance(pos, Tensor) or pos.dim() < 2 or pos.shape[-1] != 3 or pos.shape[-2] < minimum:
        shape = tuple(pos.shape) if isinstance(pos, Tensor) else type(pos).__name__
        raise ValueError(f"{name} must be a tensor of shape (..., n, 3) with n >= {minimum}, got {shape}")
    if not pos.is_floating_point():
        raise ValueError(f"{name} must be a float tensor, got {pos.dtype}")


def ca_ca_distances(pos: Tensor) -> Tensor:
    """Distances between consecutive CAs.

    Args:
        pos: (..., n, 3) positions, n >= 2.

    Returns:
        (..., n - 1) distances.

    >>> ca_ca_distances(torch.tensor([[0.0, 0, 0], [3.8, 0, 0], [3.8, 3.0, 0]]))
    tensor([3.8000, 3.0000])
    """
    _check_pos(pos, 2)
    return (pos[..., 1:, :] - pos[..., :-1, :]).norm(dim=-1)


def virtual_angles(pos: Tensor) -> Tensor:
    """Virtual bond angles ``i-1, i, i+1`` at residues ``i = 1 .. n-2``, in degrees.

    Computed as ``atan2(|u x v|, u . v)``, accurate also near 0 and 180 degrees.

    Args:
        pos: (..., n, 3) positions, n >= 3.

    Returns:
        (..., n - 2) angles in [0, 180].

    >>> virtual_angles(torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 2.0, 0]]))
    tensor([90.])
    """
    _check_pos(pos, 3)
    u = pos[..., :-2, :] - pos[..., 1:-1, :]
    v = pos[..., 2:, :] - pos[..., 1:-1, :]
    return torch.rad2deg(torch.atan2(torch.cross(u, v, dim=-1).norm(dim=-1), (u * v).sum(-1)))


def ca_dihedrals(pos: Tensor) -> Tensor:
    """Pseudo-dihedral angles of consecutive CA quadruplets ``i, i+1, i+2, i+3``, in degrees.

    IUPAC sign convention: looking along ``i+1 -> i+2``, the angle is positive when ``i+3`` is turned clockwise
    from ``i``. An ideal right-handed alpha helix gives about +50 degrees, its mirror image about -50.

    Args:
        pos: (..., n, 3) positions, n >= 4.

    Returns:
        (..., n - 3) angles in (-180, 180].

    >>> ca_dihedrals(torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 1, 1]]))
    tensor([90.])
    """
    _check_pos(pos, 4)
    b1 = pos[..., 1:-2, :] - pos[..., :-3, :]
    b2 = pos[..., 2:-1, :] - pos[..., 1:-2, :]
    b3 = pos[..., 3:, :] - pos[..., 2:-1, :]
    n1 = torch.cross(b1, b2, dim=-1)
    n2 = torch.cross(b2, b3, dim=-1)
    y = (torch.cross(n1, n2, dim=-1) * b2).sum(-1) / b2.norm(dim=-1)
    x = (n1 * n2).sum(-1)
    return torch.rad2deg(torch.atan2(y, x))


def handedness(pos: Tensor) -> Tensor:
    """Mean sine of the CA pseudo-dihedrals: > 0 for a right-handed helix (about 0.77 ideal), < 0 for a left one.

    Args:
        pos: (..., n, 3) positions, n >= 4.

    Returns:
        (...) values in [-1, 1].
    """
    return torch.sin(torch.deg2rad(ca_dihedrals(pos))).mean(dim=-1)


def radius_of_gyration(pos: Tensor) -> Tensor:
    """Root mean square distance of the positions from their centroid.

    Args:
        pos: (..., n, 3) positions, n >= 1.

    Returns:
        (...) radii in the unit of ``pos``.

    >>> radius_of_gyration(torch.tensor([[-1.0, 0, 0], [1.0, 0, 0]]))
    tensor(1.)
    """
    _check_pos(pos, 1)
    centred = pos - pos.mean(dim=-2, keepdim=True)
    return centred.pow(2).sum(-1).mean(-1).sqrt()


def _clash_counts(pos: Tensor, threshold: float, min_separation: int) -> tuple[Tensor, int]:
    n = pos.shape[-2]
    i, j = torch.triu_indices(n, n, offset=min_separation, device=pos.device)
    d = (pos[..., i, :] - pos[..., j, :]).norm(dim=-1)
    return (d < threshold).sum(-1), i.numel()


def clash_fraction(pos: Tensor, threshold: float = 3.8, min_separation: int = 3) -> Tensor:
    """Share of residue pairs at least ``min_separation`` apart in sequence whose CAs are closer than ``threshold``.

    Args:
        pos: (..., n, 3) positions, n > min_separation.
        threshold: clash distance in Å.
        min_separation: smallest ``|i - j|`` counted.

    Returns:
        (...) fractions in [0, 1].

    >>> clash_fraction(torch.tensor([[0.0, 0, 0], [3.8, 0, 0], [3.8, 3.8, 0], [0, 1.0, 0]]))
    tensor(1.)
    """
    _check_pos(pos, min_separation + 1)
    clashes, pairs = _clash_counts(pos, threshold, min_separation)
    return clashes.to(pos.dtype) / pairs


def _kabsch(pos: Tensor, ref: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Rotation ``R`` and translation ``t`` minimising ``sum w |R pos + t - ref|^2``; weights (..., n) >= 0."""
    w = weight / weight.sum(-1, keepdim=True)
    mean_p = (w.unsqueeze(-1) * pos).sum(-2, keepdim=True)
    mean_r = (w.unsqueeze(-1) * ref).sum(-2, keepdim=True)
    cov = ((pos - mean_p) * w.unsqueeze(-1)).transpose(-1, -2) @ (ref - mean_r)  # (..., 3, 3)
    u, _, vh = torch.linalg.svd(cov)
    sign = torch.sign(torch.linalg.det(u @ vh))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    flip = torch.ones(*sign.shape, 3, dtype=pos.dtype, device=pos.device)
    flip[..., 2] = sign
    rot = (u * flip.unsqueeze(-2)) @ vh  # maps row vectors: pos @ rot
    return rot, mean_r - mean_p @ rot


def _check_pair(pos: Tensor, ref: Tensor, minimum: int) -> None:
    _check_pos(pos, minimum)
    _check_pos(ref, minimum, "ref")
    if pos.shape[-2] != ref.shape[-2]:
        raise ValueError(f"pos and ref must have the same number of residues, got {pos.shape[-2]} and {ref.shape[-2]}")


def kabsch_rmsd(pos: Tensor, ref: Tensor) -> Tensor:
    """RMSD between ``pos`` and ``ref`` after the optimal rigid motion (rotation without reflection).

    Args:
        pos: (..., n, 3) positions, n >= 3.
        ref: (..., n, 3) positions, same residues in the same order.

    Returns:
        (...) RMSDs.

    >>> ref = torch.randn(10, 3, dtype=torch.float64)
    >>> turn = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    >>> round(float(kabsch_rmsd(ref @ turn + 5, ref)), 9)
    0.0
    """
    _check_pair(pos, ref, 3)
    pos, ref = torch.broadcast_tensors(pos, ref)
    rot, shift = _kabsch(pos, ref, torch.ones(pos.shape[:-1], dtype=pos.dtype, device=pos.device))
    return (pos @ rot + shift - ref).pow(2).sum(-1).mean(-1).sqrt()


def tm_d0(length: int) -> float:
    """TM-score's distance scale for a reference of ``length`` residues: ``1.24 (L - 15)^(1/3) - 1.8``, >= 0.5.

    >>> round(tm_d0(214), 3), tm_d0(20)
    (5.439, 0.5)
    """
    d0 = 1.24 * (length - 15) ** (1 / 3) - 1.8 if length > 15 else 0.0
    return max(d0, 0.5)


def _tm_score_one(pos: Tensor, ref: Tensor, n_iterations: int = 20) -> Tensor:
    n = ref.shape[0]
    d0 = tm_d0(n)
    d0_search = min(max(d0, 4.5), 8.0)
    seeds = []
    length = n
    while True:
        for start in range(n - length + 1):
            mask = torch.zeros(n, dtype=pos.dtype, device=pos.device)
            mask[start : start + length] = 1
            seeds.append(mask)
        if length <= 4:
            break
        length = max(length // 2, 4)
    weight = torch.stack(seeds)  # (seeds, n)
    best = torch.zeros((), dtype=pos.dtype, device=pos.device)
    for _ in range(n_iterations):
        rot, shift = _kabsch(pos.expand(len(weight), n, 3), ref.expand(len(weight), n, 3), weight)
        d = (pos @ rot + shift - ref).norm(dim=-1)  # (seeds, n)
        best = torch.maximum(best, (1 / (1 + (d / d0) ** 2)).sum(-1).max() / n)
        # next selection: residues closer than d0_search - 1, the cutoff widened by 0.5 until three qualify
        third = d.sort(dim=-1).values[:, 2]
        cutoff = torch.full_like(third, d0_search - 1)
        steps = torch.clamp(torch.floor((third - cutoff) / 0.5) + 1, min=0)
        cutoff = cutoff + 0.5 * steps
        new = (d < cutoff.unsqueeze(-1)).to(pos.dtype)
        # a selection fixes the next superposition: follow only the selections that changed, each once
        changed = (new != weight).any(-1)
        if not changed.any():
            break
        weight = torch.unique(new[changed], dim=0)
    return best


def tm_score(pos: Tensor, ref: Tensor) -> Tensor:
    """Index-aligned TM-score of ``pos`` against ``ref`` (residue ``i`` with residue ``i``), as TM-score computes it.

    ``TM = max over superpositions of (1/L) sum_i 1 / (1 + (d_i / d0)^2)`` with ``L`` the length and ``d0`` from
    :func:`tm_d0`; the superposition is searched as described in the module docstring. 1 for identical
    structures; about 0.17 for unrelated ones; above 0.5 for the same fold.

    Args:
        pos: (..., n, 3) positions, n >= 3.
        ref: (..., n, 3) reference positions.

    Returns:
        (...) scores in (0, 1].

    >>> ref = torch.randn(30, 3, dtype=torch.float64) * 5
    >>> round(float(tm_score(ref + 1.0, ref)), 6)
    1.0
    """
    _check_pair(pos, ref, 3)
    pos, ref = torch.broadcast_tensors(pos, ref)
    batch = pos.shape[:-2]
    flat_p, flat_r = pos.reshape(-1, *pos.shape[-2:]), ref.reshape(-1, *ref.shape[-2:])
    scores = [_tm_score_one(p, r) for p, r in zip(flat_p, flat_r)]
    return torch.stack(scores).reshape(batch)


def _in(values: Tensor, window: tuple[float, float]) -> Tensor:
    return (values >= window[0]) & (values <= window[1])


def _fraction(mask: Tensor) -> float:
    return float(mask.double().mean()) if mask.numel() else math.nan


def _check_set(positions: list[Tensor], ss: list[str] | None, name: str) -> None:
    if not isinstance(positions, (list, tuple)) or not positions:
        raise ValueError(f"{name} must be a non-empty list of (n, 3) tensors, got {type(positions).__name__}")
    for k, pos in enumerate(positions):
        _check_pos(pos, 4, f"{name}[{k}]")
        if pos.dim() != 2:
            raise ValueError(f"{name}[{k}] must have shape (n, 3), got {tuple(pos.shape)}")
    if ss is not None:
        if len(ss) != len(positions):
            raise ValueError(f"ss must hold one string per chain: {len(ss)} strings for {len(positions)} chains")
        for k, (s, pos) in enumerate(zip(ss, positions)):
            if len(s) != pos.shape[0] or set(s) - set("HE-"):
                raise ValueError(f"ss[{k}] must be {pos.shape[0]} letters from H, E, -, got {s!r}")


def _letters(ss: str, letter: str) -> Tensor:
    return torch.tensor([c == letter for c in ss], dtype=torch.bool)


def structure_measures(positions: list[Tensor], ss: list[str] | None = None) -> dict[str, float]:
    """How protein-like a set of CA chains is, every fraction pooled over all residues (or pairs) of the set.

    Keys (the values the 50 embedded native chains give are in the README of ``tpconv_lite/assets``):

    - ``ca_ca_in_range``: share of consecutive CA-CA distances in [3.6, 4.0] Å;
    - ``left_handed``, ``right_handed``: shares of pseudo-dihedrals in [-70, -30] and [+30, +70] degrees;
    - ``rg_ratio``: median over chains of ``Rg / N^0.4`` (Å), about 2 for compact globular chains;
    - ``clash_fraction``: share of pairs ``|i - j| >= 3`` closer than 3.8 Å;
    - with ``ss`` (3-state strings): ``helix_following``, the share of pseudo-dihedrals in [+30, +70] among those
      attributed to helix residues (dihedral ``i..i+3`` goes to residue ``i + 1``), and ``strand_following``, the
      share of virtual angles >= 105 degrees among those at strand residues (angle ``i-1, i, i+1`` goes to ``i``).

    Real chains give about 0.998, 0.021, 0.38, 2.0, 2e-5 (a few tight turns), 0.90 and 0.95; generated chains
    are judged against these.

    Args:
        positions: chains of (n_k, 3) positions, n_k >= 4.
        ss: one H/E/- string per chain, or None.

    Returns:
        a dict of floats (NaN for a share of nothing, e.g. no helix residue), with ``n_chains``.

    >>> from tpconv_lite.proteins import load_dataset
    >>> chains = load_dataset("all")
    >>> m = structure_measures([c.pos.double() for c in chains], [c.ss for c in chains])
    >>> round(m["ca_ca_in_range"], 3), round(m["left_handed"], 3), round(m["right_handed"], 3), round(m["rg_ratio"], 1)
    (0.998, 0.021, 0.38, 2.0)
    >>> round(m["helix_following"], 2), round(m["strand_following"], 2)
    (0.9, 0.95)
    """
    _check_set(positions, ss, "positions")
    bonds = torch.cat([ca_ca_distances(p) for p in positions])
    dihedrals = [ca_dihedrals(p) for p in positions]
    all_dihedrals = torch.cat(dihedrals)
    clashes = [_clash_counts(p, 3.8, 3) for p in positions]
    rg = torch.stack([radius_of_gyration(p.double()) / p.shape[0] ** RG_EXPONENT for p in positions])
    measures = {
        "n_chains": len(positions),
        "ca_ca_in_range": _fraction(_in(bonds, CA_CA_RANGE)),
        "left_handed": _fraction(_in(all_dihedrals, LEFT_WINDOW)),
        "right_handed": _fraction(_in(all_dihedrals, RIGHT_WINDOW)),
        "rg_ratio": float(rg.quantile(0.5)),
        "clash_fraction": float(sum(int(c) for c, _ in clashes) / max(sum(p for _, p in clashes), 1)),
    }
    if ss is not None:
        helix = torch.cat([d[_letters(s[1:-2], "H")] for d, s in zip(dihedrals, ss)])
        strand = torch.cat([virtual_angles(p)[_letters(s[1:-1], "E")] for p, s in zip(positions, ss)])
        measures["helix_following"] = _fraction(_in(helix, RIGHT_WINDOW))
        measures["strand_following"] = _fraction(strand >= STRAND_ANGLE)
    return measures


def _cdf(sorted_sample: Tensor, at: Tensor) -> Tensor:
    """Empirical distribution function of a sorted float64 sample at the points ``at``, in float64."""
    return torch.searchsorted(sorted_sample, at, right=True).to(torch.float64) / sorted_sample.numel()


def wasserstein_1d(a: Tensor, b: Tensor) -> float:
    """Wasserstein-1 distance between the empirical distributions of two 1-D samples: ``integral |F_a - F_b|``.

    >>> wasserstein_1d(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0]))
    2.0
    """
    a, b = a.detach().double().flatten().sort().values, b.detach().double().flatten().sort().values
    if not a.numel() or not b.numel():
        raise ValueError(f"wasserstein_1d needs two non-empty samples, got {a.numel()} and {b.numel()} values")
    grid = torch.cat([a, b]).sort().values
    cdf_a = _cdf(a, grid[:-1])
    cdf_b = _cdf(b, grid[:-1])
    return float(((cdf_a - cdf_b).abs() * grid.diff()).sum())


def circular_wasserstein(a: Tensor, b: Tensor, period: float = 360.0) -> float:
    """Wasserstein-1 distance on a circle of circumference ``period`` (angles in any range; distances along arcs).

    Uses ``W1 = min over alpha of integral |F_a - F_b - alpha|`` over one period, the minimum reached at a
    weighted median of ``F_a - F_b`` (Rabin, Delon and Gousseau 2011).

    >>> circular_wasserstein(torch.tensor([-179.0]), torch.tensor([179.0]))
    2.0
    """
    a = torch.remainder(a.detach().double().flatten(), period).sort().values
    b = torch.remainder(b.detach().double().flatten(), period).sort().values
    if not a.numel() or not b.numel():
        raise ValueError(f"circular_wasserstein needs two non-empty samples, got {a.numel()} and {b.numel()} values")
    grid = torch.cat([a.new_zeros(1), a, b, a.new_full((1,), period)]).sort().values
    diff = _cdf(a, grid[:-1]) - _cdf(b, grid[:-1])
    length = grid.diff()
    order = diff.argsort()
    cumulative = length[order].cumsum(0)
    alpha = diff[order][torch.searchsorted(cumulative, cumulative[-1] / 2)]
    return float(((diff - alpha).abs() * length).sum())


def compare_structures(
    generated: list[Tensor], reference: list[Tensor], ss: list[str] | None = None
) -> dict[str, object]:
    """Compare a set of generated CA chains with a set of reference chains.

    Returns a dict with ``generated`` and ``reference`` (each :func:`structure_measures` of its set),
    ``angle_w1`` (Wasserstein-1 between the pooled virtual-angle distributions, degrees) and ``dihedral_w1``
    (Wasserstein-1 on the circle between the pooled pseudo-dihedral distributions, degrees, so that -179 and
    +179 are 2 degrees apart). When the two sets are index-aligned pairs (same number of chains, same lengths),
    also ``tm_score`` and ``rmsd`` (one per pair, generated against reference) and their means.

    Args:
        generated: chains of (n_k, 3) positions.
        reference: chains of (m_k, 3) positions.
        ss: one H/E/- string per chain, used for both sets; needs index-aligned pairs.
    """
    _check_set(generated, None, "generated")
    _check_set(reference, None, "reference")
    paired = len(generated) == len(reference) and all(g.shape == r.shape for g, r in zip(generated, reference))
    if ss is not None and not paired:
        raise ValueError("ss applies to both sets, so they must be index-aligned pairs of the same lengths")
    result: dict[str, object] = {
        "generated": structure_measures(generated, ss),
        "reference": structure_measures(reference, ss),
        "angle_w1": wasserstein_1d(
            torch.cat([virtual_angles(p) for p in generated]), torch.cat([virtual_angles(p) for p in reference])
        ),
        "dihedral_w1": circular_wasserstein(
            torch.cat([ca_dihedrals(p) for p in generated]), torch.cat([ca_dihedrals(p) for p in reference])
        ),
    }
    if paired:
        tm = [float(tm_score(g.double(), r.double())) for g, r in zip(generated, reference)]
        rmsd = [float(kabsch_rmsd(g.double(), r.double())) for g, r in zip(generated, reference)]
        result.update(tm_score=tm, rmsd=rmsd, tm_score_mean=sum(tm) / len(tm), rmsd_mean=sum(rmsd) / len(rmsd))
    return result
