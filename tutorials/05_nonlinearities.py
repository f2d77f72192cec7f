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
# # 5. Nonlinearities that keep equivariance
#
# A convolution (chapter 4) is linear in the features, and a stack of linear layers is one linear layer. A network
# needs a nonlinearity between them, and the ordinary one, a ReLU applied to every number, breaks the symmetry we
# worked for. The 2019 tutorial "Nuts and Bolts of e3nn" {footcite:p}`geiger2019e3nn` closed with the two
# nonlinearities e3nn uses instead: a `NormActivation`, which acts on the norm of each irrep, and a `GatedBlock`, which
# multiplies each irrep of degree $l > 0$ by an activated scalar. This chapter measures why they are needed, builds
# both in e3nn 0.6, and ends with a small equivariant network on benzene.

# %% [markdown]
# ```{admonition} Run this chapter
# :class: tip
# Locally: `make execute` in a clone of the repository, or open `tutorials/05_nonlinearities.ipynb` in Jupyter.
# In Colab: the rocket icon at the top of the page. The first code cell installs what Colab lacks; everywhere
# else it does nothing.
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
from functools import partial

import e3nn
import matplotlib.pyplot as plt
import torch
from e3nn import nn, o3
from e3nn.math import normalize2mom

import tpconv_lite
from tpconv_lite.convolution import PointConvolution
from tpconv_lite.graph import radius_graph
from tpconv_lite.testing import check_equivariance, default_dtype

try:
    from myst_nb import glue  # numbers quoted in the text are glued from the outputs of cells
except ImportError:  # e.g. in Colab, where there is no book to glue them into

    def glue(name: str, value: object, display: bool = True) -> None:
        if display:
            print(value)


device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(0)
print(f"torch {torch.__version__}, e3nn {e3nn.__version__}, tpconv_lite {tpconv_lite.__version__}, device {device}")

# %% [markdown]
# ## Goals
#
# By the end of this chapter you can
# 1. show with the checker that a pointwise activation breaks equivariance on `l > 0` irreps, and say which
#    activations scalars (`0e`) and pseudoscalars (`0o`) accept;
# 2. explain `e3nn.math.normalize2mom`, the modern form of the 2019 `rescaled_act`, and verify its constant;
# 3. build an `e3nn.nn.Gate` for given output irreps, and know what its `irreps_in` must be and in which order;
# 4. use `e3nn.nn.NormActivation`, and know how it behaves at zero;
# 5. stack convolutions and a gate into a network, and check it end to end.
#
# The 2019 names and today's:
#
# | 2019 e3nn (seed tutorial) | e3nn 0.6 |
# |---|---|
# | `rescaled_act.Softplus(beta=5)`, `rescaled_act.sigmoid` | `normalize2mom(f)` for each activation `f` |
# | `GatedBlock(Rs_out, scalar_act, gate_act)` | `nn.Gate(irreps_scalars, acts, irreps_gates, acts, irreps_gated)` |
# | `GatedBlock.Rs_in`: outputs, then gates | `Gate.irreps_in`: sorted, all scalars first |
# | `NormActivation(dimensionalities, tensor_act, scalar_act)` | `nn.NormActivation(irreps, act, bias=True)` |

# %% [markdown]
# ## A pointwise ReLU is not equivariant
#
# Take four vectors, `4x1o`, and apply a ReLU to each of their 12 numbers. Rotating first and then applying the ReLU
# is not the same as applying it and then rotating: the ReLU looks at the components in one particular frame, and a
# rotation changes the frame. The checker measures it:

# %%
# NBVAL_CHECK_OUTPUT
vectors = o3.Irreps("4x1o").randn(10, -1, dtype=torch.float64)
print("relu on 4x1o:", check_equivariance(torch.relu, [vectors], ["4x1o"], "4x1o"))

# %% [markdown]
# The error is not a rounding effect: it is of the size of the features themselves.

# %%
# NBVAL_IGNORE_OUTPUT
print(check_equivariance(torch.relu, [vectors], ["4x1o"], "4x1o").details())
print("largest |feature|:", round(float(vectors.abs().max()), 2))

# %% [markdown]
# ### Scalars take any activation; pseudoscalars only odd or even ones
#
# A scalar `0e` does not change under rotations or inversion, so any function of it is still a scalar. A
# pseudoscalar `0o` does not change under rotations but flips sign under inversion: $f(-s)$ must be $-f(s)$ (an odd
# function, such as `tanh`: the result is again `0o`) or $f(s)$ (an even function, such as `abs`: the result is a
# true scalar, `0e`). A ReLU is neither:

# %%
# NBVAL_CHECK_OUTPUT
scalars = torch.randn(10, 4, dtype=torch.float64)
print("relu on 4x0e:      ", check_equivariance(torch.relu, [scalars], ["4x0e"], "4x0e"))
print("tanh on 4x0o:      ", check_equivariance(torch.tanh, [scalars], ["4x0o"], "4x0o"))
print("abs on 4x0o -> 0e: ", check_equivariance(torch.abs, [scalars], ["4x0o"], "4x0e"))
print("relu on 4x0o:      ", check_equivariance(torch.relu, [scalars], ["4x0o"], "4x0o"))

# %% [markdown]
# e3nn applies this rule for you. `nn.Activation(irreps, acts)` tests each activation for parity and works out the
# output irreps, or refuses:

# %%
# NBVAL_CHECK_OUTPUT
for act in [torch.tanh, torch.abs, torch.relu]:
    try:
        print(f"Activation('4x0o', [{act.__name__}]).irreps_out =", nn.Activation("4x0o", [act]).irreps_out)
    except ValueError as error:
        print(f"Activation('4x0o', [{act.__name__}]): ValueError: {error}")

# %% [markdown]
# So scalars can go through any activation, and everything else needs a different idea. Both ideas below use the same
# trick: compute an *invariant* (a scalar, or a norm), put that through an ordinary activation, and multiply the
# irrep by the result. Rotating an irrep does not change an invariant, and multiplying by a number commutes with
# $D(R)$.

# %% [markdown]
# ## Activations with a unit second moment: `normalize2mom`
#
# First, a detail that every e3nn activation shares. If the inputs of a layer are standard normal, its outputs should
# have second moment 1 too, so that signals keep their scale through a deep network at initialisation. A plain
# softplus does not: $E[\mathrm{softplus}_5(x)^2] \approx$ {glue:text}`softplus_moment:.2f` for $x \sim N(0, 1)$
# (measured below). The 2019 `rescaled_act` module
# multiplied each activation by the constant that fixes it; e3nn 0.6 does the same with `normalize2mom(f)`, which
# estimates
#
# $$c = E_{x \sim N(0,1)}\big[f(x)^2\big]^{-1/2}$$
#
# from a million seeded samples and returns $x \mapsto c\, f(x)$. `Activation`, `Gate` and `FullyConnectedNet` wrap
# their activations in it. The tutorial's activations, softplus with $\beta = 5$ and the sigmoid, become:

# %%
# NBVAL_CHECK_OUTPUT
softplus5 = partial(torch.nn.functional.softplus, beta=5.0)
samples = torch.randn(1_000_000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))  # not e3nn's
for name, f in [("softplus(beta=5)", softplus5), ("sigmoid", torch.sigmoid), ("relu", torch.relu)]:
    g = normalize2mom(f)
    print(f"{name:17s} E[f^2] = {f(samples).pow(2).mean():.2f}  constant c = {g.cst:.3f}"
          f"  E[(c f)^2] = {g(samples).pow(2).mean():.2f}")

# %%
glue("softplus_moment", float(softplus5(samples).pow(2).mean()), display=False)

# %% [markdown]
# For the ReLU the constant is known exactly: $E[\mathrm{relu}(x)^2] = \frac12$ (half of $E[x^2]$), so
# $c = \sqrt 2$, the factor of He initialisation. The Monte Carlo estimate agrees to its sampling error:

# %%
# NBVAL_CHECK_OUTPUT
print("relu constant within 0.01 of sqrt(2):", abs(normalize2mom(torch.relu).cst - 2**0.5) < 0.01)

# %% [markdown]
# ## Gates
#
# A gate multiplies each irrep of degree $l > 0$ by an activated scalar that the previous layer computed for it. With
# scalars $s$, gate scalars $g_k$ and gated irreps $v_k$ (one gate per gated irrep),
#
# $$\mathrm{Gate}(s, g, v) = \big(\phi(s),\ \sigma(g_1)\, v_1,\ \sigma(g_2)\, v_2,\ \dots\big),$$
#
# with $\phi$ and $\sigma$ ordinary activations (normalised by `normalize2mom`). The scalars go out activated; the gates
# are used up. This is the *gated nonlinearity* of 3D steerable CNNs {footcite:p}`weiler2018steerable`.
#
# The 2019 tutorial built one for its convolution output `Rs_out = [(4, 0), (4, 1), (4, 2)]`:
# `GatedBlock(Rs_out, sp, rescaled_act.sigmoid)`, softplus on the four scalars, sigmoid on the gates. The eight
# irreps with $l > 0$ need eight gates, so the block's input is wider than its output. In e3nn 0.6 the three parts
# are named explicitly:

# %%
# NBVAL_CHECK_OUTPUT
gate = nn.Gate("4x0e", [softplus5], "8x0e", [torch.sigmoid], "4x1o + 4x2e")
print(gate)
print("irreps_in: ", gate.irreps_in, f"(dim {gate.irreps_in.dim})")
print("irreps_out:", gate.irreps_out, f"(dim {gate.irreps_out.dim})")

# %% [markdown]
# The layer before the gate must therefore produce `12x0e + 4x1o + 4x2e`: 4 scalars, then 8 gates, then the
# vectors and the $l=2$ irreps. That the formula above is all a gate does can be checked by hand:

# %%
# NBVAL_CHECK_OUTPUT
features = gate.irreps_in.randn(5, -1)
s, g, v1, v2 = features[:, :4], features[:, 4:12], features[:, 12:24], features[:, 24:44]
sigma = normalize2mom(torch.sigmoid)(g)
by_hand = torch.cat([
    normalize2mom(softplus5)(s),
    (v1.reshape(5, 4, 3) * sigma[:, :4, None]).reshape(5, 12),  # gates 1-4 multiply the four 1o
    (v2.reshape(5, 4, 5) * sigma[:, 4:, None]).reshape(5, 20),  # gates 5-8 multiply the four 2e
], dim=1)
print("gate(features) == formula:", torch.allclose(gate(features), by_hand, atol=1e-6))

# %% [markdown]
# ### The order of `irreps_in`
#
# The 2019 `GatedBlock` expected its input as the outputs followed by the gates, `Rs_in = Rs_out + gates`, that is
# `4x0e + 4x1o + 4x2e + 8x0e`. e3nn 0.6 keeps irreps sorted and simplified: `Gate` concatenates scalars, gates and
# gated irreps, sorts the result by irrep and merges neighbours, and reads the three parts back out of that layout.
# The old layout has the same irreps in a different order, so features arranged for a 2019 network would be
# misread by today's gate:

# %%
# NBVAL_CHECK_OUTPUT
old_layout = tpconv_lite.rs_to_irreps([(4, 0), (4, 1), (4, 2), (8, 0)])  # GatedBlock(Rs_out, ...).Rs_in
sorted_layout = old_layout.sort()
print("2019 input layout:", old_layout)
print("sorted:           ", sorted_layout.irreps, "| block permutation:", sorted_layout.p)
print("simplified:       ", sorted_layout.irreps.simplify(),
      "== gate.irreps_in:", sorted_layout.irreps.simplify() == gate.irreps_in)

# %% [markdown]
# Sorting also concerns the gated irreps: their input block is sorted, but `irreps_out` keeps the order you wrote,
# and gate $k$ goes to the $k$-th gated irrep *in the order you wrote*. With `"2x2e + 1x1o"`, the input holds the
# `1o` before the two `2e`, yet the first two gates act on the `2e` irreps. Set the three gates to $+10$, $-10$ and
# $0$ and read off the factor each gated irrep received:

# %%
# NBVAL_CHECK_OUTPUT
small = nn.Gate("2x0e", [torch.tanh], "3x0e", [torch.sigmoid], "2x2e + 1x1o")
print("irreps_in:", small.irreps_in, "| irreps_out:", small.irreps_out)
x = torch.randn(1, small.irreps_in.dim, generator=torch.Generator().manual_seed(2))
x[0, 2:5] = torch.tensor([10.0, -10.0, 0.0])  # the three gates
out = small(x)
factors = [out[0, 2:7].norm() / x[0, 8:13].norm(), out[0, 7:12].norm() / x[0, 13:18].norm(),
           out[0, 12:15].norm() / x[0, 5:8].norm()]
print("factor on 1st 2e, 2nd 2e, 1o:", [round(float(f), 3) for f in factors])
print("normalised sigmoid at +10, -10, 0:", [round(float(normalize2mom(torch.sigmoid)(torch.tensor(t))), 3)
                                             for t in (10.0, -10.0, 0.0)])

# %% [markdown]
# The rule to remember: ask the previous layer for exactly `gate.irreps_in`, and write `irreps_gated` sorted (as
# the tutorial's `4x1o + 4x2e` already is), so that the order you think in is the order e3nn uses.

# %% [markdown]
# ### Equivariance, checked
#
# Built under the float64 default, for rotations and inversions:

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    gate64 = nn.Gate("4x0e", [softplus5], "8x0e", [torch.sigmoid], "4x1o + 4x2e")
report = check_equivariance(gate64, [gate64.irreps_in.randn(10, -1)], [gate64.irreps_in], gate64.irreps_out)
print(report)

# %%
# NBVAL_IGNORE_OUTPUT
print(report.details())

# %% [markdown]
# ## Norm activations
#
# The second idea needs no extra scalars. For each irrep $v$ of the input, `nn.NormActivation(irreps, f)` computes
# its norm $|v|$, an invariant, and rescales it:
#
# $$v \mapsto f(|v| + b)\, \frac{v}{|v|} ,$$
#
# so the direction of each irrep is kept and its length becomes $f(|v| + b)$, with an optional learned bias $b$ per
# irrep (`bias=True`). Norm nonlinearities go back to harmonic networks {footcite:p}`worrall2017harmonic` and tensor
# field networks {footcite:p}`thomas2018tensor`.
#
# The 2019 call was `NormActivation(dimensionalities, sigmoid, sigmoid)`: a list of irrep sizes, one activation
# for the norms of the $l > 0$ irreps (with a learned bias) and one applied directly to the scalars. Today one
# function acts on every irrep, scalars included: a scalar $s$ has norm $|s|$ and becomes
# $f(|s| + b)\,\mathrm{sign}(s)$. For the seed's irreps (pass an `o3.Irreps`, not a string, when `bias=True`: e3nn
# 0.6 reads its size from the argument as given):

# %%
# NBVAL_CHECK_OUTPUT
irreps = o3.Irreps("4x0e + 4x1o + 4x2e")
with default_dtype(torch.float64):
    norm_act = nn.NormActivation(irreps, torch.sigmoid, bias=True)
with torch.no_grad():
    norm_act.biases.normal_(generator=torch.Generator().manual_seed(3))  # e3nn starts them at zero
features = irreps.randn(10, -1, dtype=torch.float64)
out = norm_act(features)
v, w = features[:, 4:7], out[:, 4:7]  # the first vector, after the four scalars
print("biases:", tuple(norm_act.biases.shape), "one per irrep")
print("direction kept:", torch.allclose(w / w.norm(dim=1, keepdim=True), v / v.norm(dim=1, keepdim=True)))
print("length == sigmoid(|v| + b):", torch.allclose(w.norm(dim=1), torch.sigmoid(v.norm(dim=1) + norm_act.biases[4])))
print(check_equivariance(norm_act, [features], [irreps], irreps))

# %% [markdown]
# Because a scalar keeps its sign and only its absolute value enters $f$, the result is an odd function of $s$: a
# norm activation is equivariant for pseudoscalars too, whatever $f$ is (here a sigmoid, which `Activation` would
# refuse for `0o`):

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    norm_act_0o = nn.NormActivation("4x0o", torch.sigmoid)
print(check_equivariance(norm_act_0o, [scalars], ["4x0o"], "4x0o"))

# %% [markdown]
# ### Near zero
#
# At $v = 0$ the direction $v / |v|$ is undefined, and when $f(0) \ne 0$ the map jumps there: arbitrarily small
# vectors come out with length about $f(0)$ (0.5 for a sigmoid), pointing wherever they pointed. e3nn guards the
# division: squared norms below $\varepsilon^2$ (`epsilon`, $10^{-8}$ by default) are raised to $\varepsilon^2$.
# Zero input then gives zero output and a finite gradient, never NaN. But the gradient is
# $f(\varepsilon) / \varepsilon$, $5 \cdot 10^{7}$ for a sigmoid: a feature that passes near zero can send a huge
# gradient back. An $f$ with $f(0) = 0$, such as `tanh`, makes the map smooth at zero, with derivative $f'(0) = 1$.

# %%
# NBVAL_CHECK_OUTPUT
zero = torch.zeros(1, 3, dtype=torch.float64)
for f in [torch.sigmoid, torch.tanh]:
    with default_dtype(torch.float64):
        act = nn.NormActivation("1x1o", f)
    jacobian = torch.autograd.functional.jacobian(act, zero).reshape(3, 3)
    print(f"{f.__name__:7s} output at 0: {act(zero).abs().max().item()}, no NaN in the gradient:"
          f" {not jacobian.isnan().any().item()}, d out / d v at 0: {jacobian[0, 0].item():.4g} * identity:"
          f" {torch.allclose(jacobian, jacobian[0, 0] * torch.eye(3, dtype=torch.float64))}")

# %% [markdown]
# The option `normalize=False` would drop the division, $v \mapsto f(|v| + b)\, v$, which is smooth at zero for every
# $f$. In e3nn 0.6.0 its constructor fails, however: an argument check compares `None > 0`.

# %%
# NBVAL_IGNORE_OUTPUT
try:
    nn.NormActivation("1x1o", torch.sigmoid, normalize=False)
except TypeError as error:
    print("NormActivation(..., normalize=False): TypeError:", error)

# %% [markdown]
# Gates are the more common choice in e3nn networks (and in the models of the later chapters): they let the network
# learn, through the gate scalars, how much of each irrep to keep, and the gated features never pass through a
# division by their norm.

# %% [markdown]
# ## A small equivariant network on benzene
#
# Time to put the pieces together: the point convolution of chapter 4, `tpconv_lite.convolution.PointConvolution`,
# then the gate, then a second convolution down to one scalar and one vector per atom (think of an atomic energy
# and a force). The first convolution produces exactly `gate.irreps_in`: the 2019 `Rs_out`, plus the eight gates.

# %%
class BenzeneNet(torch.nn.Module):
    """Convolution -> gate -> convolution: (N, 2) one-hot atoms and (N, 3) positions to (N, 4) = 0e + 1o."""

    def __init__(self, max_radius: float = 1.5, num_neighbors: float = 2.0) -> None:
        super().__init__()
        self.max_radius = max_radius
        self.gate = nn.Gate("4x0e", [softplus5], "8x0e", [torch.sigmoid], "4x1o + 4x2e")
        self.conv1 = PointConvolution("2x0e", self.gate.irreps_in, max_radius=max_radius, num_neighbors=num_neighbors)
        self.conv2 = PointConvolution(self.gate.irreps_out, "0e + 1o", max_radius=max_radius,
                                      num_neighbors=num_neighbors)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        edge_index = radius_graph(pos, self.max_radius)
        return self.conv2(self.gate(self.conv1(x, pos, edge_index)), pos, edge_index)


# %% [markdown]
# The check runs on a slightly distorted benzene: the perfect hexagon is so symmetric that many outputs vanish or
# repeat (chapter 1, exercise 2), and a check that compares zeros proves little. The distortion of 0.02 Å keeps the
# same bonds within the 1.5 Å cutoff.

# %%
# NBVAL_CHECK_OUTPUT
molecule = tpconv_lite.benzene()
pos = molecule.pos + 0.02 * torch.randn(12, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
with default_dtype(torch.float64):
    net = BenzeneNet().eval()
out = net(molecule.x.double(), pos)
print("output:", tuple(out.shape), "| edges:", radius_graph(pos, 1.5).shape[1], "as in the perfect molecule:",
      torch.equal(radius_graph(pos, 1.5), radius_graph(molecule.pos, 1.5)))
print("outputs are not trivially zero:", bool(out[:, 1:].norm(dim=1).min() > 1e-3))
report = check_equivariance(net, [molecule.x, pos], ["2x0e", "cartesian_points"], "0e + 1o")
print(report)

# %% [markdown]
# Replace the gate with a pointwise ReLU on all 36 numbers and the same network is no longer equivariant:

# %%
# NBVAL_CHECK_OUTPUT
with default_dtype(torch.float64):
    relu_conv1 = PointConvolution("2x0e", "4x0e + 4x1o + 4x2e", max_radius=1.5, num_neighbors=2.0)
    relu_conv2 = PointConvolution("4x0e + 4x1o + 4x2e", "0e + 1o", max_radius=1.5, num_neighbors=2.0)


def relu_net(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Convolution -> pointwise ReLU -> convolution (a counterexample)."""
    edge_index = radius_graph(pos, 1.5)
    return relu_conv2(torch.relu(relu_conv1(x, pos, edge_index)), pos, edge_index)


relu_report = check_equivariance(relu_net, [molecule.x, pos], ["2x0e", "cartesian_points"], "0e + 1o")
print(relu_report)

# %%
# NBVAL_IGNORE_OUTPUT
print("gate:", report.details())
print("relu:", relu_report.details())

# %% [markdown]
# Equivariance also fixes what the network can say about a symmetric input. Each atom of the perfect hexagon lies on
# two mirror planes, the plane of the molecule and the plane through the atom and the $z$ axis. A `1o` output at that
# atom must be unchanged by both mirrors, so it must lie on their intersection: the radial line through the atom.
# Without any training:

# %%
# NBVAL_CHECK_OUTPUT
vectors_perfect = net(molecule.x.double(), molecule.pos)[:, 1:]
radial = molecule.pos - molecule.pos.mean(dim=0)
sideways = torch.linalg.cross(vectors_perfect, radial / radial.norm(dim=1, keepdim=True))
print("perfect benzene: every output vector is radial:", bool(sideways.abs().max() < 1e-10),
      "| and none is zero:", bool(vectors_perfect.norm(dim=1).min() > 1e-3))

# %% [markdown]
# On the distorted molecule the symmetry is gone and the vectors tilt away from radial; drawn to scale (arbitrary
# units: the network is untrained):

# %%
fig, ax = plt.subplots(figsize=(4.5, 4.5))
p, arrows = pos.numpy(), out[:, 1:].detach().numpy()
is_carbon = [s == "C" for s in molecule.symbols]
ax.scatter(p[:, 0], p[:, 1], c=["black" if c else "lightgrey" for c in is_carbon],
           s=[200 if c else 80 for c in is_carbon], edgecolors="k", zorder=2)
ax.quiver(p[:, 0], p[:, 1], arrows[:, 0], arrows[:, 1], color="tab:red", angles="xy", scale_units="xy", scale=2,
          zorder=3)
ax.set_xlabel("x (Å)")
ax.set_ylabel("y (Å)")
ax.set_xlim(-3.3, 3.3)
ax.set_ylim(-3.3, 3.3)
ax.set_aspect("equal")
ax.set_title("Predicted 1o output per atom (x, y components)")
plt.show()

# %% [markdown]
# ## Summary
#
# - A pointwise activation is equivariant only on scalars: any function for `0e`; odd (output `0o`) or even (output
#   `0e`) functions for `0o`. On `l > 0` irreps it fails, by errors as large as the features.
# - `normalize2mom(f)` rescales $f$ so that $E[f(x)^2] = 1$ for $x \sim N(0, 1)$: the 2019 `rescaled_act`. e3nn's
#   `Activation`, `Gate` and `FullyConnectedNet` apply it for you.
# - `nn.Gate(scalars, acts, gates, acts, gated)`: activated scalars, plus each gated irrep times its activated gate.
#   Its `irreps_in` (scalars, gates, gated; sorted and simplified) is what the layer before must produce:
#   `12x0e + 4x1o + 4x2e` for the 2019 `4x0e + 4x1o + 4x2e`.
# - `nn.NormActivation(irreps, f)` rescales each irrep to length $f(|v| + b)$; its gradient at zero is finite but
#   equals $f(\varepsilon)/\varepsilon$, so prefer $f(0) = 0$.
# - Convolution, gate, convolution: an equivariant network, checked end to end on benzene.

# %% [markdown]
# ## Exercises
#
# **1.** You want a layer that outputs `8x0e + 4x1e + 2x2o`, with `silu` on the scalars and sigmoid gates. Build the
# gate. What irreps must the convolution before it produce? Check the gate's equivariance.

# %% tags=["hide-cell"]
# NBVAL_CHECK_OUTPUT
# Solution 1: six gated irreps (4x1e and 2x2o) need six gates, so the input has 8 + 6 = 14 scalars, sorted first.
with default_dtype(torch.float64):
    gate_1 = nn.Gate("8x0e", [torch.nn.functional.silu], "6x0e", [torch.sigmoid], "4x1e + 2x2o")
print("irreps_in:", gate_1.irreps_in, "| irreps_out:", gate_1.irreps_out)
print(check_equivariance(gate_1, [gate_1.irreps_in.randn(5, -1)], [gate_1.irreps_in], gate_1.irreps_out))

# %% [markdown]
# **2.** A gate scalar may itself be a pseudoscalar. What comes out of `nn.Gate("", [], "1x0o", [torch.tanh], "1x1o")`?
# Predict it from the parity rule of chapter 3, then check. Why would `torch.sigmoid` be refused as the gate
# activation here?

# %% tags=["hide-cell"]
# NBVAL_CHECK_OUTPUT
# Solution 2: tanh is odd, so tanh(g) is still a pseudoscalar (odd), and odd x odd = even: the vector becomes a
# pseudovector 1e. A sigmoid is neither odd nor even: sigmoid(g) would be neither a scalar nor a pseudoscalar.
with default_dtype(torch.float64):
    gate_2 = nn.Gate("", [], "1x0o", [torch.tanh], "1x1o")
print("irreps_in:", gate_2.irreps_in, "| irreps_out:", gate_2.irreps_out)
print(check_equivariance(gate_2, [gate_2.irreps_in.randn(5, -1)], [gate_2.irreps_in], gate_2.irreps_out))
try:
    nn.Gate("", [], "1x0o", [torch.sigmoid], "1x1o")
except ValueError as error:
    print("sigmoid gate on 0o: ValueError")

# %% [markdown]
# ## References
#
# Gated nonlinearities come from 3D steerable CNNs {footcite:p}`weiler2018steerable`, norm nonlinearities from
# harmonic networks {footcite:p}`worrall2017harmonic`; e3nn {footcite:p}`geiger2022e3nn` describes both, and the
# normalisation of activations.
#
# ```{footbibliography}
# ```
