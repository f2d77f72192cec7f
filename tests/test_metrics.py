"""Tests of tpconv_lite.metrics: geometry of CA chains, RMSD, TM-score, and the measures over sets of chains."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from tpconv_lite.diffusion import beta_hairpin, ideal_helix
from tpconv_lite.metrics import (
    _kabsch,
    ca_ca_distances,
    ca_dihedrals,
    circular_wasserstein,
    clash_fraction,
    compare_structures,
    handedness,
    kabsch_rmsd,
    radius_of_gyration,
    structure_measures,
    tm_d0,
    tm_score,
    virtual_angles,
    wasserstein_1d,
)
from tpconv_lite.proteins import load_dataset
from tpconv_lite.testing import random_o3

F64 = torch.float64


def proper_rotation(seed: int) -> torch.Tensor:
    return random_o3(generator=torch.Generator().manual_seed(seed), dtype=F64)


def single_kabsch_tm(pos: torch.Tensor, ref: torch.Tensor) -> float:
    """TM-score of the one superposition that minimises the RMSD (what the search must beat)."""
    rot, shift = _kabsch(pos, ref, torch.ones(len(pos), dtype=pos.dtype))
    d = (pos @ rot + shift - ref).norm(dim=-1)
    return float((1 / (1 + (d / tm_d0(len(ref))) ** 2)).mean())


@pytest.fixture(scope="module")
def natives() -> list:
    return load_dataset("all")


# ---------------------------------------------------------------- geometry


def test_ideal_helix_geometry():
    helix = ideal_helix(12)
    bonds = ca_ca_distances(helix)
    step = 2 * 2.3 * math.sin(math.radians(50))
    torch.testing.assert_close(bonds, torch.full((11,), math.sqrt(step**2 + 1.5**2), dtype=F64))
    assert ca_dihedrals(helix).shape == (9,) and virtual_angles(helix).shape == (10,)
    assert torch.allclose(ca_dihedrals(helix), ca_dihedrals(helix)[0]) and 45 < float(ca_dihedrals(helix)[0]) < 55
    assert 85 < float(virtual_angles(helix)[0]) < 95
    mirror = ideal_helix(12, right_handed=False)
    torch.testing.assert_close(ca_dihedrals(mirror), -ca_dihedrals(helix))
    assert float(handedness(helix)) > 0.7 and float(handedness(mirror)) < -0.7


def test_known_angles_and_float64_accuracy():
    # an almost straight angle, where acos of a dot product loses half the digits
    eps = 1e-9
    pos = torch.tensor([[-1.0, 0, 0], [0, 0, 0], [1.0, eps, 0]], dtype=F64)
    assert float(virtual_angles(pos)[0]) == pytest.approx(180 - math.degrees(eps), abs=1e-12)
    square = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 1, 1]], dtype=F64)
    assert float(ca_dihedrals(square)[0]) == pytest.approx(90.0, abs=1e-12)
    trans = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 0, 1], [-1, 0, 1]], dtype=F64)
    assert abs(float(ca_dihedrals(trans)[0])) == pytest.approx(180.0, abs=1e-12)
    assert float(radius_of_gyration(torch.tensor([[0.0, 0, 0], [2.0, 0, 0]], dtype=F64))) == 1.0
    assert radius_of_gyration(square).dtype == F64


def test_batched_over_leading_dimensions():
    batch = torch.stack([ideal_helix(10), beta_hairpin(10), ideal_helix(10, right_handed=False)])
    for fn in (ca_ca_distances, virtual_angles, ca_dihedrals, radius_of_gyration, clash_fraction):
        out = fn(batch)
        for k in range(3):
            torch.testing.assert_close(out[k], fn(batch[k]))
    torch.testing.assert_close(kabsch_rmsd(batch, batch[0]), torch.stack([kabsch_rmsd(b, batch[0]) for b in batch]))
    torch.testing.assert_close(tm_score(batch[:2], batch[2:]), torch.stack([tm_score(b, batch[2]) for b in batch[:2]]))


def test_clash_fraction_counts_pairs_three_apart():
    pos = torch.tensor([[0.0, 0, 0], [3.8, 0, 0], [7.6, 0, 0], [11.4, 0, 0], [0.0, 3.0, 0]], dtype=F64)
    # pairs |i - j| >= 3: (0, 3) 11.4 Å, (0, 4) 3.0 Å clash, (1, 4) 4.8 Å -> 1 of 3
    assert float(clash_fraction(pos)) == pytest.approx(1 / 3)
    assert float(clash_fraction(pos, threshold=5.0)) == pytest.approx(2 / 3)
    assert float(clash_fraction(pos, min_separation=4)) == 1.0
    assert float(clash_fraction(ideal_helix(20))) == 0.0


def test_rigid_motion_invariances():
    torch.manual_seed(0)
    pos = ideal_helix(30) + 0.5 * torch.randn(30, 3, dtype=F64)
    ref = ideal_helix(30)
    rot, shift = proper_rotation(1), torch.tensor([3.0, -7.0, 11.0], dtype=F64)
    moved = pos @ rot.T + shift
    for fn in (ca_ca_distances, virtual_angles, ca_dihedrals, radius_of_gyration, clash_fraction):
        torch.testing.assert_close(fn(moved), fn(pos))
    torch.testing.assert_close(kabsch_rmsd(moved, ref), kabsch_rmsd(pos, ref))
    torch.testing.assert_close(kabsch_rmsd(pos, ref @ proper_rotation(2).T - shift), kabsch_rmsd(pos, ref))
    torch.testing.assert_close(tm_score(moved, ref), tm_score(pos, ref))
    mirrored = pos * torch.tensor([1.0, 1.0, -1.0], dtype=F64)  # a reflection flips the dihedrals, keeps the rest
    torch.testing.assert_close(ca_dihedrals(mirrored), -ca_dihedrals(pos))
    torch.testing.assert_close(virtual_angles(mirrored), virtual_angles(pos))


def test_geometry_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(\.\.\., n, 3\) with n >= 4, got \(3, 3\)"):
        ca_dihedrals(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="n >= 3"):
        virtual_angles(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="got \\(5, 2\\)"):
        ca_ca_distances(torch.zeros(5, 2))
    with pytest.raises(ValueError, match="float tensor"):
        radius_of_gyration(torch.zeros(5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="got list"):
        radius_of_gyration([[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="same number of residues, got 5 and 6"):
        kabsch_rmsd(torch.zeros(5, 3), torch.zeros(6, 3))


# ---------------------------------------------------------------- RMSD and TM-score


def test_kabsch_rmsd_known_values():
    ref = ideal_helix(20)
    assert float(kabsch_rmsd(ref @ proper_rotation(3).T + 4.0, ref)) < 1e-12
    # a uniform scaling about the centroid cannot be undone by a rigid motion: RMSD = |s - 1| Rg
    assert float(kabsch_rmsd(1.1 * ref, ref)) == pytest.approx(0.1 * float(radius_of_gyration(ref)), rel=1e-10)
    # the mirror image is not reachable by a proper rotation
    mirror = ideal_helix(20, right_handed=False)
    assert float(kabsch_rmsd(mirror, ref)) > 1.0
    noisy = ref + 0.3 * torch.randn(20, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert float(kabsch_rmsd(noisy, ref)) <= float((noisy - ref).pow(2).sum(-1).mean().sqrt()) + 1e-12


def test_tm_d0_follows_the_tm_score_program():
    assert tm_d0(100) == pytest.approx(1.24 * 85 ** (1 / 3) - 1.8)
    assert tm_d0(21) == 0.5 and tm_d0(5) == 0.5  # 1.24 * 6^(1/3) - 1.8 = 0.45 < 0.5


def test_tm_score_identity_and_range(natives):
    ref = natives[0].pos.double()
    assert float(tm_score(ref, ref)) == pytest.approx(1.0, abs=1e-12)
    other = natives[1].pos.double()[: len(ref)]
    assert 0.0 < float(tm_score(other, ref)) < 0.5  # unrelated proteins
    assert tm_score(ref.float(), ref.float()).dtype == torch.float32


def test_tm_score_beats_a_single_kabsch_fit():
    """Half the chain moves as a rigid body (a hinge): the search finds the larger half; one Kabsch fit does not."""
    ref = ideal_helix(60)
    pos = ref.clone()
    pos[35:] = (ref[35:] - ref[35]) @ proper_rotation(4).T + ref[35]
    tm, single = float(tm_score(pos, ref)), single_kabsch_tm(pos, ref)
    assert tm > single + 0.05 and tm >= 35 / 60 * 0.99


def sdist_file(name: str) -> Path:
    source = os.environ.get("TPCONV_MDANALYSISTESTS_SDIST")
    if not source or not Path(source).exists():
        pytest.skip("the mdanalysistests sdist is not at hand: set TPCONV_MDANALYSISTESTS_SDIST")
    source = Path(source)
    if source.is_dir():
        return next(source.rglob(f"MDAnalysisTests/data/{name}"))
    import tarfile
    import tempfile

    with tarfile.open(source) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(f"MDAnalysisTests/data/{name}"))
        target = Path(tempfile.mkdtemp()) / name
        target.write_bytes(tar.extractfile(member).read())
    return target


def test_tm_score_adenylate_kinase_open_against_closed():
    """Known values: TM-align gives 0.688 (normalised by either chain, 214 residues); one Kabsch fit gives 0.58."""
    pytest.importorskip("gemmi", reason="gemmi is not installed (pip install tpconv_lite[proteins])")
    from tpconv_lite.proteins import load_chain

    open_, closed = (load_chain(sdist_file(f"adk_{state}.pdb")).pos.double() for state in ("open", "closed"))
    assert len(open_) == len(closed) == 214
    assert single_kabsch_tm(open_, closed) == pytest.approx(0.584, abs=0.005)
    assert float(tm_score(open_, closed)) == pytest.approx(0.69, abs=0.01)
    tmtools = pytest.importorskip("tmtools", reason="tmtools (TM-align) is not installed")
    result = tmtools.tm_align(open_.numpy(), closed.numpy(), "A" * 214, "A" * 214)
    assert float(tm_score(open_, closed)) == pytest.approx(result.tm_norm_chain2, abs=0.01)


def test_tm_score_against_tm_align(natives):
    """Perturbed native chains: equal to TM-align where its alignment is the identity, never above it otherwise.

    TM-align may shift residues against each other (gaps) to score higher; the index-aligned score cannot.
    """
    tmtools = pytest.importorskip("tmtools", reason="tmtools (TM-align) is not installed")
    generator = torch.Generator().manual_seed(0)
    identity = 0
    for chain, noise in zip(natives[:4], (0.5, 1.0, 2.0, 3.0)):
        ref = chain.pos.double()
        pos = ref + noise * torch.randn(ref.shape, dtype=F64, generator=generator)
        result = tmtools.tm_align(pos.numpy(), ref.numpy(), chain.sequence, chain.sequence)
        ours = float(tm_score(pos, ref))
        if "-" not in result.seqxA + result.seqyA:
            identity += 1
            assert ours == pytest.approx(result.tm_norm_chain2, abs=2e-3)
        else:
            assert ours <= result.tm_norm_chain2 + 2e-3
    assert identity >= 2


# ---------------------------------------------------------------- sets of chains


def test_structure_measures_on_ideal_shapes():
    helices = [ideal_helix(n) for n in (12, 20)]
    measures = structure_measures(helices, ["H" * 12, "H" * 20])
    assert measures["n_chains"] == 2 and measures["ca_ca_in_range"] == 1.0
    assert measures["right_handed"] == 1.0 and measures["left_handed"] == 0.0
    assert measures["helix_following"] == 1.0 and math.isnan(measures["strand_following"])  # no strand residue
    assert measures["clash_fraction"] == 0.0
    mirrored = structure_measures([ideal_helix(12, right_handed=False)])
    assert mirrored["left_handed"] == 1.0 and "helix_following" not in mirrored
    rg = [float(radius_of_gyration(h)) / len(h) ** 0.4 for h in helices]
    assert measures["rg_ratio"] == pytest.approx(sum(rg) / 2)  # the median of two values is their mean


def test_structure_measures_of_the_native_chains(natives):
    """Real chains: almost every bond in range, ~2% left-handed and ~38% right-handed dihedrals, Rg/N^0.4 ~ 2."""
    measures = structure_measures([c.pos.double() for c in natives], [c.ss for c in natives])
    assert measures["ca_ca_in_range"] > 0.99
    assert 0.01 < measures["left_handed"] < 0.04 and 0.33 < measures["right_handed"] < 0.43
    assert 1.9 < measures["rg_ratio"] < 2.1 and measures["clash_fraction"] < 1e-4
    assert measures["helix_following"] > 0.85 and measures["strand_following"] > 0.9


def test_structure_measures_bad_input():
    with pytest.raises(ValueError, match="non-empty list"):
        structure_measures([])
    with pytest.raises(ValueError, match=r"positions\[1\]"):
        structure_measures([ideal_helix(5), torch.zeros(3, 3)])
    with pytest.raises(ValueError, match="one string per chain"):
        structure_measures([ideal_helix(5)], ["HHHHH", "HHHHH"])
    with pytest.raises(ValueError, match=r"ss\[0\] must be 5 letters"):
        structure_measures([ideal_helix(5)], ["HHGHH"])


def test_wasserstein_distances():
    a = torch.tensor([0.0, 1.0, 3.0])
    assert wasserstein_1d(a, a) == 0.0
    assert wasserstein_1d(a, a + 2.5) == pytest.approx(2.5)
    assert wasserstein_1d(torch.tensor([0.0]), torch.tensor([1.0, 3.0])) == pytest.approx(2.0)
    scipy_stats = pytest.importorskip("scipy.stats")
    x, y = torch.randn(50, dtype=F64), torch.rand(70, dtype=F64) * 3
    assert wasserstein_1d(x, y) == pytest.approx(scipy_stats.wasserstein_distance(x.numpy(), y.numpy()), rel=1e-10)
    # on the circle, -179 and +179 are 2 degrees apart
    assert circular_wasserstein(torch.tensor([-179.0]), torch.tensor([179.0])) == pytest.approx(2.0)
    assert circular_wasserstein(torch.tensor([-170.0, 10.0]), torch.tensor([170.0, -10.0])) == pytest.approx(20.0)
    # equal-size samples: the optimal plan on a circle matches the sorted points up to a cyclic shift
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(9, dtype=F64, generator=generator) * 360 - 180
    b = torch.randn(9, dtype=F64, generator=generator) * 30 + 120
    sa, sb = a.sort().values, torch.remainder(b + 180, 360).sort().values - 180
    arcs = [(sa - sb.roll(k)).abs() for k in range(9)]
    brute = min(float(torch.minimum(arc, 360 - arc).mean()) for arc in arcs)
    assert circular_wasserstein(a, b) == pytest.approx(brute, abs=1e-9)
    assert circular_wasserstein(a, a + 360) == pytest.approx(0.0, abs=1e-9)
    assert circular_wasserstein(a, b) <= wasserstein_1d(a, b) + 1e-9
    with pytest.raises(ValueError, match="non-empty"):
        wasserstein_1d(torch.tensor([]), a)


def test_compare_structures(natives):
    reference = [c.pos.double() for c in natives[:4]]
    same = compare_structures(reference, reference, [c.ss for c in natives[:4]])
    assert same["angle_w1"] == 0.0 and same["dihedral_w1"] == pytest.approx(0.0, abs=1e-12)
    assert same["tm_score"] == pytest.approx([1.0] * 4) and max(same["rmsd"]) < 1e-9
    assert same["generated"] == same["reference"]
    helices = [ideal_helix(len(r)) for r in reference]
    versus = compare_structures(helices, reference)
    assert versus["angle_w1"] > 10 and versus["dihedral_w1"] > 30
    assert versus["tm_score_mean"] < 0.5 and len(versus["rmsd"]) == 4
    unpaired = compare_structures(helices[:2], reference)
    assert "tm_score" not in unpaired
    with pytest.raises(ValueError, match="index-aligned pairs"):
        compare_structures(helices[:2], reference, [c.ss for c in natives[:4]])
