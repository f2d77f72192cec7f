from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from tpconv_lite import graph
from tpconv_lite.convolution import PointConvolution
from tpconv_lite.data import benzene
from tpconv_lite.irreps import rs_to_irreps
from tpconv_lite.testing import assert_equivariant, wigner_D

IRREPS_OUT = "4x0e + 4x1o + 4x2e"  # the tutorial's Rs_out [(4, 0), (4, 1), (4, 2)]

# Two benzene set-ups. "bonds": a graph of the chemical bonds only (C-H 1.09 A, C-C 1.40 A; the next closest pair,
# a carbon and the hydrogen of the next carbon, is 2.16 A apart), a cutoff basis, 3 neighbours per carbon and 1 per
# hydrogen. "tutorial_2019": the 2019 radial settings with its max_radius 3.0 (8 neighbours per carbon, 5 per
# hydrogen).
SETTINGS = {
    "bonds": dict(max_radius=2.0, num_neighbors=2.0, number_of_basis=3),
    "tutorial_2019": dict(max_radius=3.0, num_neighbors=6.5, number_of_basis=3, radial_hidden=100, radial_layers=2,
                          basis="seed_cosine", cutoff=False, act=partial(torch.nn.functional.softplus, beta=5.0)),
}


def make_conv(irreps_in="2x0e", irreps_out=IRREPS_OUT, settings="bonds", seed=0, **kwargs) -> PointConvolution:
    """A float64 convolution, built under a float64 default dtype so that e3nn's Clebsch-Gordan coefficients are
    float64-accurate (``.double()`` alone would only cast float32 values)."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        conv = PointConvolution(irreps_in, irreps_out, "0e + 1o + 2e", **{**SETTINGS[settings], **kwargs})
    finally:
        torch.set_default_dtype(previous)
    return conv.eval()


def rotation_z(degrees: float) -> torch.Tensor:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def test_shapes_and_tutorial_settings():
    conv = make_conv(rs_to_irreps([(2, 0)]), rs_to_irreps([(4, 0), (4, 1), (4, 2)]), settings="tutorial_2019")
    assert conv.tp.weight_numel == 2 * 4 * 3  # paths 0e x 0e -> 0e, 0e x 1o -> 1o, 0e x 2e -> 2e
    assert conv.radial.net.hs == [3, 100, 100, 24]
    mol = benzene()
    assert conv(mol.x, mol.pos).shape == (12, 36)
    assert conv(torch.randn(0, 2, dtype=torch.float64), torch.randn(0, 3, dtype=torch.float64)).shape == (0, 36)


def test_lmax_and_irreps_sh_give_the_same_module():
    a = PointConvolution("2x0e", IRREPS_OUT, 2, max_radius=2.0, num_neighbors=2.0)
    assert a.irreps_sh == make_conv().irreps_sh


def test_equivariance_on_a_random_cloud():
    irreps_in, irreps_out = "3x0e + 2x1o + 1x1e + 1x2e", "2x0e + 2x1o + 1x1e + 2x2e + 1x2o"
    conv = make_conv(irreps_in, irreps_out, number_of_basis=5, radial_hidden=16)
    generator = torch.Generator().manual_seed(1)
    pos = 2.0 * torch.rand(16, 3, generator=generator, dtype=torch.float64)
    x = torch.randn(16, conv.irreps_in.dim, generator=generator, dtype=torch.float64)
    assert graph.radius_graph(pos, 2.0).shape[1] > 40  # a graph with many directions, not a few isolated pairs
    report = assert_equivariant(conv, [x, pos], [irreps_in, "cartesian_points"], irreps_out)
    assert report.errors[0] > 0  # the check really compared something


@pytest.mark.parametrize("settings", SETTINGS)
def test_equivariance_on_benzene(settings):
    conv = make_conv(settings=settings)
    mol = benzene()
    assert_equivariant(conv, [mol.x, mol.pos], ["2x0e", "cartesian_points"], IRREPS_OUT)


@pytest.mark.parametrize("settings", SETTINGS)
def test_benzene_60_degree_symmetry(settings):
    """Rotating by 60 degrees about z moves atom k to atom k + 1 of its ring: out[k + 1] = D(R) out[k]."""
    conv = make_conv(settings=settings)
    mol = benzene()
    out = conv(mol.x, mol.pos)
    rotation = rotation_z(60.0)
    following = torch.tensor([1, 2, 3, 4, 5, 0, 7, 8, 9, 10, 11, 6])
    torch.testing.assert_close(mol.pos @ rotation.T, mol.pos[following], atol=1e-12, rtol=0)
    torch.testing.assert_close(out[following], out @ wigner_D(IRREPS_OUT, rotation).T, atol=1e-10, rtol=0)
    assert out.abs().max() > 0.1


@pytest.mark.parametrize("settings", SETTINGS)
def test_components_that_benzene_symmetry_forces_to_zero(settings):
    """In each atom's own frame (y radial, x tangential, z normal to the ring) the site symmetry C2v leaves only
    the radial l=1 component (y) and the l=2 components xx, yy, zz (e3nn indices 2 and 4 of 2e)."""
    conv = make_conv(settings=settings)
    mol = benzene()
    out = conv(mol.x, mol.pos)
    angle = torch.rad2deg(torch.atan2(mol.pos[:, 1], mol.pos[:, 0])) - 90.0  # atom k of a ring: 60 k degrees
    local = torch.stack([o @ wigner_D(IRREPS_OUT, rotation_z(-float(a))).T for o, a in zip(out, angle)])
    vectors = local[:, 4:16].reshape(12, 4, 3)  # e3nn's 1o components are (x, y, z)
    tensors = local[:, 16:].reshape(12, 4, 5)  # e3nn's 2e components: xz, xy, y^2 - (x^2 + z^2)/2, yz, z^2 - x^2
    assert vectors[..., [0, 2]].abs().max() < 1e-12
    assert tensors[..., [0, 1, 3]].abs().max() < 1e-12
    assert vectors[..., 1].abs().max() > 1e-2 and tensors[..., 2].abs().max() > 1e-2
    assert tensors[:6, :, 4].abs().max() > 1e-2  # on the carbons, with several neighbours, both l=2 survivors live


def test_both_graph_backends_agree(monkeypatch):
    pytest.importorskip("torch_cluster")
    pytest.importorskip("torch_scatter")
    conv = make_conv(settings="tutorial_2019")
    mol = benzene()
    outputs = []
    for backend in ("torch", "pyg"):
        monkeypatch.setenv("TPCONV_GRAPH_BACKEND", backend)
        outputs.append(conv(mol.x, mol.pos))
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-12, rtol=0)


def test_explicit_edge_index_matches_the_built_graph():
    conv = make_conv()
    mol = benzene()
    edge_index = graph.radius_graph(mol.pos, 2.0)
    torch.testing.assert_close(conv(mol.x, mol.pos, edge_index), conv(mol.x, mol.pos))
    reversed_order = edge_index.flip(1)
    torch.testing.assert_close(conv(mol.x, mol.pos, reversed_order), conv(mol.x, mol.pos))


def test_batch_keeps_molecules_apart():
    conv = make_conv()
    mol = benzene()
    pos = torch.cat([mol.pos, mol.pos + torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64)])
    x = torch.cat([mol.x, mol.x])
    batch = torch.arange(2).repeat_interleave(12)
    out = conv(x, pos, batch=batch)
    torch.testing.assert_close(out[:12], conv(mol.x, mol.pos))
    torch.testing.assert_close(out[12:], out[:12])


def test_duplicated_atom_gives_no_nan_and_finite_gradients():
    conv = make_conv()
    mol = benzene()
    pos = torch.cat([mol.pos, mol.pos[:1]]).requires_grad_(True)
    x = torch.cat([mol.x, mol.x[:1]])
    out = conv(x, pos)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[12], out[0])  # the twins see the same neighbours, each other at distance 0
    out.pow(2).sum().backward()
    assert torch.isfinite(pos.grad).all() and pos.grad.abs().max() < 1e3
    assert_equivariant(conv, [x, pos.detach()], ["2x0e", "cartesian_points"], IRREPS_OUT)


def test_isolated_atom_gets_zeros_and_leaves_the_rest_unchanged():
    conv = make_conv()
    mol = benzene()
    pos = torch.cat([mol.pos, torch.tensor([[10.0, 10.0, 10.0]], dtype=torch.float64)])
    x = torch.cat([mol.x, torch.tensor([[1.0, 0.0]], dtype=torch.float64)])
    out = conv(x, pos)
    assert (out[12] == 0).all()
    torch.testing.assert_close(out[:12], conv(mol.x, mol.pos))
    lonely = conv(x[12:], pos[12:])
    assert lonely.shape == (1, 36) and (lonely == 0).all()


def test_bad_inputs_raise_clear_errors():
    conv = make_conv()
    mol = benzene()
    with pytest.raises(ValueError, match=r"x must have shape \(N, 2\)"):
        conv(torch.ones(12, 3, dtype=torch.float64), mol.pos)
    with pytest.raises(ValueError, match=r"pos must have shape \(12, 3\)"):
        conv(mol.x, mol.pos[:, :2])
    with pytest.raises(ValueError, match=r"pos must have shape \(12, 3\)"):
        conv(mol.x, mol.pos[:11])
    with pytest.raises(TypeError, match="float32"):
        conv(mol.x.float(), mol.pos)
    with pytest.raises(TypeError, match="float32"):
        conv(mol.x, mol.pos.float())
    with pytest.raises(TypeError, match="meta"):
        conv(mol.x, mol.pos.to("meta"))
    with pytest.raises(ValueError, match="NaN"):
        conv(mol.x, torch.where(torch.arange(12)[:, None] == 3, float("nan"), mol.pos))
    edge_index = graph.radius_graph(mol.pos, 2.0)
    with pytest.raises(ValueError, match="non-negative"):  # explicit edges: the radial network sees the NaN
        conv(mol.x, torch.where(torch.arange(12)[:, None] == 3, float("nan"), mol.pos), edge_index)
    with pytest.raises(ValueError, match=r"\(2, E\) long"):
        conv(mol.x, mol.pos, edge_index.int())
    with pytest.raises(ValueError, match=r"\(2, E\) long"):
        conv(mol.x, mol.pos, edge_index.T)
    with pytest.raises(ValueError, match=r"\[0, 12\)"):
        conv(mol.x, mol.pos, edge_index + 1)
    with pytest.raises(ValueError, match="batch"):
        conv(mol.x, mol.pos, edge_index, batch=torch.zeros(12, dtype=torch.long))


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="parity"):
        PointConvolution("2x0e", IRREPS_OUT, "0e + 1e", max_radius=2.0, num_neighbors=2.0)
    with pytest.raises(ValueError, match="1x1e"):
        PointConvolution("2x0e", "4x0e + 1x1e", "0e + 1o + 2e", max_radius=2.0, num_neighbors=2.0)
    with pytest.raises(ValueError, match="num_neighbors"):
        PointConvolution("2x0e", IRREPS_OUT, max_radius=2.0, num_neighbors=0.0)
    with pytest.raises(ValueError, match="max_radius"):
        PointConvolution("2x0e", IRREPS_OUT, max_radius=-1.0, num_neighbors=2.0)
