"""The fused tensor product of e3x (Unke & Maennel, 2024), in PyTorch on e3nn's Clebsch-Gordan coefficients.

A full tensor product couples every pair of input irreps ``(l1, l2)`` into every output degree ``l3`` allowed by
the triangle rule, at a cost that grows like ``L**6`` in the largest degree ``L``. The fused tensor product gets a
weighted sum of (nearly) all those paths for about ``L**4`` per feature (``L**3`` for the matrix products, ``L**4``
for the dense changes of basis):

1. vectors to matrices: every irrep of degree ``l <= 2 l~`` is also a ``(2 l~ + 1, 2 l~ + 1)`` matrix, through the
   Clebsch-Gordan coefficients of ``l~ x l~ -> l``. The irreps of one parity, each times its own learnable weight
   per feature, add up to one matrix: ``X+, X-`` from ``x`` and ``Y+, Y-`` from ``y``;
2. four matrix products ``Z++ = X+ Y+``, ``Z-- = X- Y-`` (even parity), ``Z+- = X+ Y-``, ``Z-+ = X- Y+`` (odd);
3. matrices to vectors: the inverse change of basis, each degree of each ``Z`` times its own learnable weight;
4. ``z+ = z++ + z--`` and ``z- = z+- + z-+``.

Since ``(D X D^T)(D Y D^T) = D (X Y) D^T``, rotating the inputs rotates the output. ``l~ = ceil(max(L1, L2, L3) / 2)``
is the smallest matrix degree that holds every degree involved.

Which paths survive. A path ``l1 x l2 -> l3`` gets the Clebsch-Gordan coupling times a factor proportional to the
6j symbol ``{l1 l2 l3; l~ l~ l~}``, and 6j symbols have a few non-trivial zeros: every path allowed by the triangle
and parity rules is there for degrees up to 4, but with ``l~ = 3`` (largest degree 5 or 6) the paths
``3 x 5 -> 5`` (and its permutations) vanish, and with ``l~ = 4`` (degree 7 or 8) so do ``5 x 6 -> 7`` and its
permutations, as they do in e3x. The weights are shared: one per degree and
parity of each input and of each product, not one per path.

Layouts. e3x stores features as ``(..., P, (L+1)**2, F)``: ``P`` parity channels, the ``2l+1`` components of each
degree ``l = 0..L`` one after the other, ``F`` features last. With ``P = 2``, channel 0 holds the even irreps
(``0e, 1e, 2e, ...``) and channel 1 the odd ones (``0o, 1o, 2o, ...``). With ``P = 1`` the one channel holds
*tensors* only: degree ``l`` with parity ``(-1)**l`` (``0e, 1o, 2e, 3o, ...``), the parity of the spherical
harmonics; the other irreps (``0o, 1e, 2o, ...``) are the *pseudotensors*. :func:`e3x_to_irreps` and
:func:`irreps_to_e3x` convert to and from e3nn's flat layout ``(..., irreps.dim)`` with the irreps of
:func:`e3x_irreps`, ``F x 0e + F x 0o + F x 1e + F x 1o + ...`` (multiplicity-major within each irrep, as in e3nn).

Basis. The ``2l+1`` components of a degree are in e3nn's real basis, the basis of ``o3.spherical_harmonics``. For
``l = 0, 1`` it is e3x's basis with e3x's default ``cartesian_order=True`` (``l = 1`` is ``x, y, z``). For
``l >= 2`` the two libraries' real bases differ by an orthogonal matrix that is not a permutation (e3nn's ``m = 0``
component points along y, e3x's along z); ``tests/test_fused_e3x.py`` computes it from both libraries' spherical
harmonics. In the same basis e3x's Clebsch-Gordan coefficients are ``sqrt(2 l3 + 1) * o3.wigner_3j(l1, l2, l3)``,
which is what is used here.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
from e3nn import o3
from torch import Tensor, nn

Layout = Literal["e3x", "irreps"]

TRUNCATED_NORMAL_STD = 0.87962566103423978  # standard deviation of a standard normal truncated to (-2, 2)


def e3x_irreps(num_features: int, max_degree: int, num_parity: int) -> o3.Irreps:
    """The irreps of an e3x feature tensor of shape ``(..., num_parity, (max_degree+1)**2, num_features)``.

    Degree by degree; within a degree, e3x's channel order (even, then odd).

    Example:
        >>> e3x_irreps(4, 2, 2)
        4x0e+4x0o+4x1e+4x1o+4x2e+4x2o
        >>> e3x_irreps(4, 2, 1)
        4x0e+4x1o+4x2e
    """
    for name, value, low in (("num_features", num_features, 1), ("max_degree", max_degree, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if num_parity not in (1, 2):
        raise ValueError(f"num_parity must be 1 (tensors only) or 2 (even and odd channels), got {num_parity!r}")
    return o3.Irreps(
        [(num_features, (l, p)) for l in range(max_degree + 1) for p in ((1, -1) if num_parity == 2 else ((-1) ** l,))]
    )


@functools.lru_cache(maxsize=None)
def _irreps_positions(num_features: int, max_degree: int, num_parity: int) -> tuple[Tensor, Tensor]:
    """Where each entry of the flat irreps layout sits in the flattened e3x layout, and the inverse permutation."""
    e3x_index = torch.arange(num_parity * (max_degree + 1) ** 2 * num_features)
    e3x_index = e3x_index.view(num_parity, (max_degree + 1) ** 2, num_features)
    blocks = []
    for _, (l, p) in e3x_irreps(num_features, max_degree, num_parity):
        channel = 0 if num_parity == 1 or p == 1 else 1
        blocks.append(e3x_index[channel, l**2 : (l + 1) ** 2].T.reshape(-1))  # (F, 2l+1): multiplicity first
    positions = torch.cat(blocks)
    return positions, positions.argsort()


def _max_degree_of(num_components: int) -> int:
    max_degree = math.isqrt(num_components) - 1
    if num_components < 1 or (max_degree + 1) ** 2 != num_components:
        raise ValueError(f"the degree axis (-2) must have (L+1)**2 components for some L >= 0, got {num_components}")
    return max_degree


def e3x_to_irreps(x: Tensor) -> tuple[Tensor, o3.Irreps]:
    """Convert e3x's layout to e3nn's.

    Args:
        x: (..., P, (L+1)**2, F) with P in {1, 2}.

    Returns:
        The same numbers as a (..., irreps.dim) tensor, and ``irreps = e3x_irreps(F, L, P)``.

    Example:
        >>> _, irreps = e3x_to_irreps(torch.zeros(10, 1, 9, 3))
        >>> irreps
        3x0e+3x1o+3x2e
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"e3x_to_irreps expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 3:
        raise ValueError(f"an e3x feature tensor has shape (..., P, (L+1)**2, F), got shape {tuple(x.shape)}")
    num_parity, num_components, num_features = x.shape[-3:]
    max_degree = _max_degree_of(num_components)
    irreps = e3x_irreps(num_features, max_degree, num_parity)
    positions, _ = _irreps_positions(num_features, max_degree, num_parity)
    return x.flatten(-3)[..., positions.to(x.device)], irreps


def irreps_to_e3x(x: Tensor, irreps: o3.Irreps | str) -> Tensor:
    """Convert e3nn's layout to e3x's, the inverse of :func:`e3x_to_irreps`.

    Args:
        x: (..., irreps.dim).
        irreps: ``e3x_irreps(F, L, P)`` for some ``F, L, P`` (any other irreps raises a ValueError).

    Returns:
        (..., P, (L+1)**2, F).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"irreps_to_e3x expects a torch.Tensor, got {type(x).__name__}")
    irreps = o3.Irreps(irreps)
    if len(irreps) == 0:
        raise ValueError("irreps must not be empty")
    num_features, max_degree = irreps[0].mul, irreps.lmax
    num_parity = 2 if len(irreps) == 2 * (max_degree + 1) else 1
    if num_features < 1:
        raise ValueError(f"irreps {irreps} is not the irreps of an e3x feature tensor (see e3x_irreps)")
    expected = e3x_irreps(num_features, max_degree, num_parity)
    if irreps != expected:
        raise ValueError(f"irreps {irreps} is not the irreps of an e3x feature tensor; did you mean {expected}?")
    if x.shape[-1] != irreps.dim:
        raise ValueError(f"a tensor of irreps {irreps} must have last dimension {irreps.dim}, got {tuple(x.shape)}")
    _, inverse = _irreps_positions(num_features, max_degree, num_parity)
    return x[..., inverse.to(x.device)].unflatten(-1, (num_parity, (max_degree + 1) ** 2, num_features))


@functools.lru_cache(maxsize=None)
def _matrix_basis(matrix_degree: int, max_degree: int) -> Tensor:
    d = 2 * matrix_degree + 1
    blocks = [
        math.sqrt(2 * l + 1) * o3.wigner_3j(matrix_degree, matrix_degree, l, dtype=torch.float64).reshape(d * d, -1).T
        for l in range(max_degree + 1)
    ]
    return torch.cat(blocks)


@functools.lru_cache(maxsize=None)
def _matrix_basis_on(matrix_degree: int, max_degree: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    return _matrix_basis(matrix_degree, max_degree).to(device=device, dtype=dtype)


def matrix_basis(matrix_degree: int, max_degree: int) -> Tensor:
    """The change of basis between irreps of degree ``0..max_degree`` and ``(2 l~ + 1, 2 l~ + 1)`` matrices.

    Row ``(l, m)`` holds the Clebsch-Gordan coefficients ``C^{l m}_{l~ a, l~ b}`` (e3x's normalisation: e3nn's
    ``wigner_3j`` times ``sqrt(2l+1)``) flattened over ``(a, b)``. The rows are orthonormal, and with
    ``max_degree = 2 l~`` the matrix is square, hence orthogonal.

    Args:
        matrix_degree: ``l~``.
        max_degree: largest degree, at most ``2 l~``.

    Returns:
        ((max_degree+1)**2, (2 l~ + 1)**2) tensor in float64.
    """
    if not 0 <= max_degree <= 2 * matrix_degree:
        raise ValueError(f"max_degree must be in [0, 2 * matrix_degree = {2 * matrix_degree}], got {max_degree}")
    return _matrix_basis(matrix_degree, max_degree).clone()


def _per_component(weight: Tensor) -> Tensor:
    """(L+1, F) weights per degree -> ((L+1)**2, F), degree ``l``'s row repeated ``2l+1`` times."""
    num_degrees = weight.shape[0]
    repeats = 2 * torch.arange(num_degrees, device=weight.device) + 1
    return weight.repeat_interleave(repeats, dim=0, output_size=num_degrees**2)


def _weights_and_rows(weight: Tensor, basis: Tensor, components: Tensor | None) -> tuple[Tensor, Tensor]:
    """(L+1, F) weights per degree -> the weights per component and the matching rows of ``basis``: for all
    (L+1)**2 components of degrees ``0..L``, or for the n listed in ``components``; (n, F) and (n, basis columns)."""
    weight = _per_component(weight)
    if components is None:
        return weight, basis[: weight.shape[0]]
    return weight[components], basis[components]


@functools.lru_cache(maxsize=None)
def _parity_components(max_degree: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The components of degrees ``0..L``: the indices of those of even degree, of those of odd degree, and the
    order that puts ``cat(even part, odd part)`` back in place (three int64 tensors on ``device``)."""
    degrees = torch.arange(max_degree + 1)
    degree_of_component = torch.repeat_interleave(degrees, 2 * degrees + 1)
    even, odd = (torch.nonzero(degree_of_component % 2 == parity).squeeze(-1) for parity in (0, 1))
    return even.to(device), odd.to(device), torch.argsort(torch.cat((even, odd))).to(device)


def vector_to_matrix(x: Tensor, weight: Tensor, basis: Tensor, components: Tensor | None = None) -> Tensor:
    """Weight each degree of ``x`` and add all degrees up as one matrix per feature: ``X = sum_l w_l C^l . x_l``.

    Args:
        x: (..., n, F) irreps of one parity: all n = (L+1)**2 components of degrees ``0..L``, or those listed in
            ``components``.
        weight: (L+1, F), one weight per degree and feature.
        basis: :func:`matrix_basis` with at least (L+1)**2 rows.
        components: (n,) the indices of the components that ``x`` holds; None for all of them.

    Returns:
        (..., F, 2 l~ + 1, 2 l~ + 1).
    """
    d = math.isqrt(basis.shape[1])
    weight, rows = _weights_and_rows(weight, basis, components)
    return ((x * weight).transpose(-1, -2) @ rows).unflatten(-1, (d, d))


def matrix_to_vector(z: Tensor, weight: Tensor, basis: Tensor, components: Tensor | None = None) -> Tensor:
    """Project matrices on the irreps of degree ``0..L`` and weight each degree: :func:`vector_to_matrix` undone.

    Args:
        z: (..., F, 2 l~ + 1, 2 l~ + 1).
        weight: (L+1, F), one weight per degree and feature.
        basis: :func:`matrix_basis` with at least (L+1)**2 rows.
        components: (n,) the indices of the components to compute; None for all (L+1)**2.

    Returns:
        (..., n, F).
    """
    weight, rows = _weights_and_rows(weight, basis, components)
    return (z.flatten(-2) @ rows.T).transpose(-1, -2) * weight


class FusedTensorProduct(nn.Module):
    """e3x's ``FusedTensor``: a weighted sum of the tensor-product paths of ``x`` and ``y``, feature by feature.

    Each degree of each parity of each input has one weight per feature (``kernel_e1, kernel_o1`` for ``x``,
    ``kernel_e2, kernel_o2`` for ``y``), and so has each degree of each of the four products (``kernel_eee``:
    even x even -> even, ``kernel_ooe``, ``kernel_eoo``, ``kernel_oeo``), all of shape (degrees, F) as in e3x. With
    one-channel inputs some weights multiply nothing (for example ``kernel_o1`` at even degrees); as in e3x they
    start at zero.

    The output has ``P3 = 2`` parity channels if ``include_pseudotensors``, else one channel of tensors (the
    pseudotensors are dropped). As in e3x, two one-channel inputs with ``0`` among ``max_degree1``, ``max_degree2``,
    ``max_degree`` cannot make pseudotensors, and then ``P3 = 1`` whatever ``include_pseudotensors`` says.

    Args:
        num_features: F, the same for both inputs and the output.
        max_degree1: L1, the largest degree of ``x``.
        max_degree2: L2, the largest degree of ``y``.
        max_degree: L3, the largest degree of the output, at most ``L1 + L2``; default ``max(L1, L2)``.
        num_parity1: P1, the parity channels of ``x``: 2 (even, odd) or 1 (tensors only).
        num_parity2: P2, the same for ``y``.
        include_pseudotensors: keep the pseudotensors of the output.
        layout: ``"e3x"``: ``x`` (..., P1, (L1+1)**2, F), ``y`` (..., P2, (L2+1)**2, F), output
            (..., P3, (L3+1)**2, F); ``"irreps"``: ``x`` (..., irreps_in1.dim), ``y`` (..., irreps_in2.dim), output
            (..., irreps_out.dim), with the irreps of :func:`e3x_irreps`.

    Example:
        >>> tp = FusedTensorProduct(8, 2, 1)
        >>> tp(torch.randn(5, 2, 9, 8), torch.randn(5, 2, 4, 8)).shape
        torch.Size([5, 2, 9, 8])
        >>> tp.irreps_out
        8x0e+8x0o+8x1e+8x1o+8x2e+8x2o
    """

    def __init__(
        self,
        num_features: int,
        max_degree1: int,
        max_degree2: int,
        max_degree: int | None = None,
        num_parity1: int = 2,
        num_parity2: int = 2,
        include_pseudotensors: bool = True,
        layout: Layout = "e3x",
    ) -> None:
        super().__init__()
        if layout not in ("e3x", "irreps"):
            raise ValueError(f"layout must be 'e3x' or 'irreps', got {layout!r}")
        self.irreps_in1 = e3x_irreps(num_features, max_degree1, num_parity1)
        self.irreps_in2 = e3x_irreps(num_features, max_degree2, num_parity2)
        max_degree = max(max_degree1, max_degree2) if max_degree is None else max_degree
        if isinstance(max_degree, bool) or not isinstance(max_degree, int) or max_degree < 0:
            raise ValueError(f"max_degree must be None or an int >= 0, got {max_degree!r}")
        if max_degree > max_degree1 + max_degree2:
            raise ValueError(
                f"max_degree can be at most max_degree1 + max_degree2 = {max_degree1 + max_degree2}, got {max_degree}"
            )
        if num_parity1 == num_parity2 == 1 and 0 in (max_degree1, max_degree2, max_degree):
            include_pseudotensors = False
        self.num_features = num_features
        self.max_degree1, self.max_degree2, self.max_degree = max_degree1, max_degree2, max_degree
        self.num_parity1, self.num_parity2 = num_parity1, num_parity2
        self.num_parity3 = 2 if include_pseudotensors else 1
        self.irreps_out = e3x_irreps(num_features, max_degree, self.num_parity3)
        self.layout = layout
        self.largest_degree = max(max_degree1, max_degree2, max_degree)
        self.matrix_degree = math.ceil(self.largest_degree / 2)

        def kernel(max_degree: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(max_degree + 1, num_features))

        self.kernel_e1, self.kernel_o1 = kernel(max_degree1), kernel(max_degree1)
        self.kernel_e2, self.kernel_o2 = kernel(max_degree2), kernel(max_degree2)
        self.kernel_eee, self.kernel_ooe = kernel(max_degree), kernel(max_degree)
        self.kernel_eoo, self.kernel_oeo = kernel(max_degree), kernel(max_degree)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """e3x's ``fused_tensor_normal``: truncated normals whose variances keep the output variance near one.

        Input kernels get variance ``sqrt(2 l~ + 1) / min(L1 + 1, L2 + 1)``; output kernels ``1/2`` when both inputs
        have two channels, ``2`` (``1`` for ``l = 0``) when both have one channel and degrees above 0, else ``1``.
        Weights that can only multiply zeros start at zero. With ``max_degree = max(L1, L2)`` the measured output
        variance is 0.9 to 1.1 in most settings (0.6 for one-channel inputs of degree 1); with a larger
        ``max_degree`` it falls, in e3x too (about 0.37 for ``L1 = L2 = 2``, ``max_degree = 4``).
        """
        l1, l2, l3 = self.max_degree1, self.max_degree2, self.max_degree
        var_in = math.sqrt(2 * self.matrix_degree + 1) / min(l1 + 1, l2 + 1)
        var_out = torch.ones(l3 + 1, 1)
        if self.num_parity1 == self.num_parity2 == 2:
            var_out /= 2
        elif self.num_parity1 == self.num_parity2 == 1 and l1 > 0 and l2 > 0:
            var_out[1:] = 2.0
        even = (torch.arange(self.largest_degree + 1) % 2 == 0).unsqueeze(-1)
        one_channel1, one_channel2 = self.num_parity1 == 1, self.num_parity2 == 1
        everything = torch.ones(1, 1, dtype=torch.bool)
        odd_output = everything.expand(l3 + 1, 1).clone()
        odd_output[0] = not (one_channel1 and one_channel2)  # tensors x tensors make no pseudoscalar
        for weight, variance, mask in (
            (self.kernel_e1, var_in, even[: l1 + 1] if one_channel1 else everything),
            (self.kernel_o1, var_in, ~even[: l1 + 1] if one_channel1 else everything),
            (self.kernel_e2, var_in, even[: l2 + 1] if one_channel2 else everything),
            (self.kernel_o2, var_in, ~even[: l2 + 1] if one_channel2 else everything),
            (self.kernel_eee, var_out, everything),
            (self.kernel_ooe, var_out, everything),
            (self.kernel_eoo, var_out, odd_output),
            (self.kernel_oeo, var_out, odd_output),
        ):
            sample = nn.init.trunc_normal_(torch.empty(weight.shape, dtype=torch.float64), a=-2.0, b=2.0)
            scale = torch.as_tensor(variance, dtype=torch.float64).sqrt() / TRUNCATED_NORMAL_STD
            weight.copy_(sample * scale * mask)

    def _check(self, name: str, x: Tensor, num_parity: int, max_degree: int, index: int) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 3:
            raise ValueError(f"{name} must have shape (..., P, (L+1)**2, F), got shape {tuple(x.shape)}")
        expected = (
            (-3, "parity channels", num_parity, f"num_parity{index}"),
            (-2, "degree components", (max_degree + 1) ** 2, f"(max_degree{index}+1)**2"),
            (-1, "features", self.num_features, "num_features"),
        )
        for axis, meaning, size, origin in expected:
            if x.shape[axis] != size:
                raise ValueError(
                    f"{name}: axis {axis} ({meaning}) must have size {origin} = {size}, got shape {tuple(x.shape)}"
                )

    @staticmethod
    def _split_parities(x: Tensor, max_degree: int) -> tuple[tuple[Tensor, Tensor | None], ...]:
        """(..., P, (L+1)**2, F) -> the even and the odd irreps, each with the indices of the components it holds.

        Two channels: each channel, all its components (None). One channel (tensors): the components of even
        degree, and those of odd degree.
        """
        if x.shape[-3] == 2:
            return (x[..., 0, :, :], None), (x[..., 1, :, :], None)
        x = x.squeeze(-3)
        even, odd, _ = _parity_components(max_degree, x.device)
        return (x.index_select(-2, even), even), (x.index_select(-2, odd), odd)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """The fused tensor product of ``x`` and ``y``; shapes as set by ``layout`` (see the class docstring)."""
        if self.layout == "irreps":
            x, y = irreps_to_e3x(x, self.irreps_in1), irreps_to_e3x(y, self.irreps_in2)
            return e3x_to_irreps(self._fused(x, y))[0]
        return self._fused(x, y)

    def _fused(self, x: Tensor, y: Tensor) -> Tensor:
        self._check("x", x, self.num_parity1, self.max_degree1, 1)
        self._check("y", y, self.num_parity2, self.max_degree2, 2)
        basis = _matrix_basis_on(self.matrix_degree, self.largest_degree, x.device, x.dtype)
        (x_even, x_even_at), (x_odd, x_odd_at) = self._split_parities(x, self.max_degree1)
        (y_even, y_even_at), (y_odd, y_odd_at) = self._split_parities(y, self.max_degree2)
        xe = vector_to_matrix(x_even, self.kernel_e1, basis, x_even_at)
        xo = vector_to_matrix(x_odd, self.kernel_o1, basis, x_odd_at)
        ye = vector_to_matrix(y_even, self.kernel_e2, basis, y_even_at)
        yo = vector_to_matrix(y_odd, self.kernel_o2, basis, y_odd_at)
        # the four products as two, X+ [Y+ Y-] and X- [Y+ Y-]: fewer and wider matrix products run faster
        d, y_both = ye.shape[-1], torch.cat((ye, yo), dim=-1)
        from_xe, from_xo = xe @ y_both, xo @ y_both
        even_at = odd_at = None  # with pseudotensors, every component of both parities
        if self.num_parity3 == 1:  # tensors only: the even degrees of the even products, the odd of the odd ones
            even_at, odd_at, order = _parity_components(self.max_degree, x.device)
        even = (matrix_to_vector(from_xe[..., :d], self.kernel_eee, basis, even_at)
                + matrix_to_vector(from_xo[..., d:], self.kernel_ooe, basis, even_at))  # fmt: skip
        odd = (matrix_to_vector(from_xe[..., d:], self.kernel_eoo, basis, odd_at)
               + matrix_to_vector(from_xo[..., :d], self.kernel_oeo, basis, odd_at))  # fmt: skip
        if self.num_parity3 == 2:
            return torch.stack((even, odd), dim=-3)
        return torch.cat((even, odd), dim=-2).index_select(-2, order).unsqueeze(-3)

    def extra_repr(self) -> str:
        return f"{self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out}, matrix_degree={self.matrix_degree}"
