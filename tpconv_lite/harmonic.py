"""EigenFold's harmonic diffusion: the polymer SDE, its schedules, the forward kernel and the reverse sampler.

EigenFold (Jing et al. 2023) noises the alpha-carbon positions ``x`` (N, 3) of a chain with the
Ornstein-Uhlenbeck process ``dx = -J x dt / 2 + dW`` whose stationary law is the Gaussian polymer
``p(x) ~ exp(-x^T J x / 2)``. ``J`` is a graph Laplacian: ``a`` on every bond ``(i, i+1)`` (and ``-b`` on every
``(i, i+2)``), so the polymer's bonds have mean square length ``3 / a`` (3.8 Å for EigenFold's ``a = 3 / 3.8^2``).
In the eigenbasis ``J = P diag(D) P^T`` the process is N independent scalar processes, one per *mode* ``j``:

    ``x_j(t) = exp(-D_j t / 2) x_j(0) + sqrt(lambda_j(t)) z_j``,   ``lambda_j(t) = (1 - exp(-D_j t)) / D_j``

(:meth:`HarmonicSDE.eigens`). ``D_0 = 0`` is the centre of mass, which never gets noise here. The sharp,
high-``D`` modes forget ``x(0)`` first (the mean of mode ``j`` decays as ``exp(-D_j t / 2)``) and the smooth,
low-``D`` ones last. A mode with ``D_j t >= train_cutoff`` has almost forgotten ``x(0)`` (a fraction
``exp(-D_j t) < 1%`` of its variance is signal at EigenFold's cut-off of 5), so the kernel keeps only
the first ``k`` non-centre modes, those with ``D_j t < train_cutoff`` (at least ``train_kmin``), and sets the
others to zero. Going backwards, the sampler starts from a smooth curve on a few modes and *injects* each finer
mode, with the kernel's noise at the time it enters (:meth:`HarmonicSDE.inject`): a structure built coarse to fine.

Names, arguments and formulas are EigenFold's (``diffusion/sde.py``, ``diffusion/schedule.py``,
``diffusion/sampling.py``, ``utils/training.py``, ``utils/dataset.py``): :class:`HarmonicSDE` (``D``, ``P``,
``J``, ``eigens``, ``A``, ``Sigma``, ``Sigma_inv``, ``sample``, ``score``, ``score_norm``, ``project``,
``inject``, ``rmsd``, ``KL_H``, ``make_schedule``), :class:`PolymerSDE`, :class:`EntropySchedule`,
:class:`RateSchedule`, :class:`ForwardDiffusionKernel`, and the loss (:func:`harmonic_loss`). Their defaults
are those of EigenFold's published model (``pretrained_model/args.yaml``) and of its ``inference.py``
(:class:`HarmonicConfig`). :class:`HarmonicDiffusion` batches chains of different lengths for the score model,
with one cached eigendecomposition and schedule per length.

**Training** (:meth:`HarmonicDiffusion.noised_batch`, EigenFold's ``ForwardDiffusionKernel``): per chain, a
number ``step`` uniform in [0, 1] picks an RMSD between ``rmsd(train_tmin)`` and the RMSD at which the KL
divergence to the prior (:meth:`HarmonicSDE.KL_H`) has fallen to ``train_Hf``; the time ``t`` is read off the
entropy schedule's table of ``(t, rmsd(t))`` by linear interpolation. So the noise levels are spread evenly in
the size of the displacement they cause, not in ``t``, which spans orders of magnitude (``train_skew`` leans
them towards small or large RMSDs, ``train_rmsd_max`` caps them, as in EigenFold; ``train_band_*`` draws a
band of them more often, item 11). The target is the *adjusted* score ``adj=True``: the kernel's score plus
``J x_t``, i.e. the kernel's score minus the prior's score; it is zero where the chain is pure prior.
``score_norm(t, k, adj=True)`` is its root mean square per coordinate when ``x(0)`` is drawn from the prior; the
model multiplies its output by it and the loss divides by it.

**Sampling** (:meth:`HarmonicDiffusion.reverse_sample`, EigenFold's ``reverse_sample``): start from the
kernel at ``tmax`` on the first ``ks[0]`` modes, then for each step of the schedule: inject the modes that enter,
then ``dY = -(1 + alpha beta) J Y dt / 2 + (1 + alpha beta / 2) score dt + sqrt((1 + alpha) dt) z``, projected
on the current modes.

**Conditioning.** EigenFold feeds the model OmegaFold's embeddings (``lm_node_dim = 256``, ``lm_edge_dim =
128``); this package cannot run OmegaFold and uses :mod:`tpconv_lite.conditioning` instead (one-hot residue type
and secondary structure, one-hot clipped sequence separation). That is the one departure in what is learned.

**Deliberate differences from EigenFold's code.** Everything else gives EigenFold's numbers: measured against
its numpy code in float64 (``tests/make_eigenfold_reference.py``), the eigenvalues, schedules, kernel draws
(time, modes, positions, score, score norm) and 24 to 190 step reverse trajectories agree to 1e-10 relative or
better; the variances ``eigens`` and the score norms differ by up to 1e-9, which is the rounding of EigenFold's
``1 - exp(-D t)`` (item 2; ours agree with an extended-precision evaluation to 2e-16).

1. torch tensors in and out, float64 by default, on any device. EigenFold stores ``P`` in float32 even on the
   CPU (``FLOAT_TYPE``), and its ``cuda()`` casts ``P`` and ``D`` to float32; here ``to(device)`` keeps the
   dtype. EigenFold's CPU sampler adds numpy and torch arrays and fails; this one runs on either device.
2. ``eigens`` and ``KL_H`` use ``expm1`` for ``1 - exp(-D t)``: the same formula without the loss of digits
   when ``D t`` is small. The centre mode's ``D_0`` comes out of ``eigh`` as round-off (about 1e-17): there
   ``eigens`` gives ``t`` to full precision, where EigenFold's value is off by up to tens of percent (and NaN
   when ``D_0`` is exactly 0, as for N = 2). It matters only for the centre components of ``Sigma``,
   ``Sigma_inv`` and ``score``, never for centred chains. The entropy schedule's step uses ``log1p``.
3. The schedule's root find is a bisection in ``log t`` (no scipy); it finds scipy ``brentq``'s root to 1e-14.
4. The reverse sampler uses the schedule's ``ks``, which respect ``train_kmin`` like the training kernel does.
   EigenFold's loop recomputes ``k`` without ``kmin``: when fewer than ``kmin`` modes are below the cut-off at
   ``tmax``, the modes in between are frozen at their initial noise, then noised a second time when ``k``
   reaches them. With the published settings (``train_Hf = 2``, ``train_cutoff = 5``, ``train_kmin = 5``) at
   least 5 modes are below the cut-off at ``tmax`` at every length we checked (7 to 400 residues), and both
   samplers agree.
5. The final time of sampling (``inf_tmin``; EigenFold's ``inference.py`` has ``--inf_tmin`` but parses it as
   an integer) and whether the last step adds noise (``inf_noise_last_step``) are options; the defaults are
   EigenFold's behaviour. EigenFold's ``--inf_cutoff`` is never applied; there is no such option here.
6. ``sample(k=0)`` noises no mode (EigenFold's ``if k:`` treats 0 as "all modes"); ``sample(t=0,
   score=True)`` raises (the score is infinite there; EigenFold returns ``x`` alone); randomness comes from an
   optional ``torch.Generator``, and ``sample`` takes an optional ``noise`` (the ``z`` of the modes) for exact
   tests.
7. Not ported: ``diagonalize=False``, ``conditional`` (filling missing residues), ``unproject``, ``energy``,
   ``free_energy``, the schedules' ``cutoff``, ``KL_H`` and ``KL_E``, the ``logp`` ELBO, ``ode`` (which
   EigenFold's sampler ignores) and ``logF`` guidance.
8. ``score_norm`` is per chain in a batch (:class:`~tpconv_lite.score_model.ChainBatch`); EigenFold's loss only
   broadcasts for batches of one chain. The loss is the mean over all residues of the batch.
9. ``train_skew``'s Beta(1, 2) or Beta(2, 1) draw is ``1 - sqrt(1 - u)`` or ``sqrt(u)`` of a second uniform
   ``u`` from the same generator (the same law as EigenFold's ``np.random.beta``, and reproducible).
10. ``alpha_windows`` makes ``alpha`` depend on the time (:class:`HarmonicConfig`); EigenFold has one ``alpha``.
    Without windows, the default, the schedule and the reverse step are EigenFold's.
11. ``train_band_tmin``, ``train_band_tmax`` and ``train_band_weight`` train a band of noise levels more often
    (:class:`HarmonicConfig`); EigenFold has no such option. With ``train_band_weight = 0``, the default, the
    kernel draws no extra number and its draws are EigenFold's.
"""

from __future__ import annotations

import math
from argparse import Namespace
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor
from tqdm import tqdm

from tpconv_lite.diffusion import score_matching_loss
from tpconv_lite.score_model import ChainBatch

TMAX_BRACKET = 1e8  # upper end of the root search for tmax, as in EigenFold


def _randn(
    shape: tuple[int, ...], generator: torch.Generator | None, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Standard normal noise drawn on the generator's device (so a CPU generator works for a GPU SDE)."""
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, dtype=dtype, device=where).to(device)


def _rand(generator: torch.Generator | None, dtype: torch.dtype) -> float:
    """One uniform number in [0, 1), drawn on the generator's device."""
    where = generator.device if generator is not None else "cpu"
    return torch.rand((), generator=generator, dtype=dtype, device=where).item()


def _interp(x: float, xp: Tensor, fp: Tensor) -> float:
    """``numpy.interp`` for one point: piecewise linear through ``(xp, fp)``, ``xp`` increasing, clamped outside."""
    if x <= xp[0]:
        return fp[0].item()
    if x >= xp[-1]:
        return fp[-1].item()
    i = int(torch.searchsorted(xp, torch.tensor(x, dtype=xp.dtype, device=xp.device), right=True)) - 1
    x0, x1, f0, f1 = xp[i].item(), xp[i + 1].item(), fp[i].item(), fp[i + 1].item()
    return f0 + (f1 - f0) / (x1 - x0) * (x - x0)


def _root_decreasing(f: Callable[[float], float], lo: float, hi: float, what: str) -> float:
    """The root of a decreasing function on ``[lo, hi]``, by bisection in ``log t`` down to float precision."""
    if not 0 < lo < hi:
        raise ValueError(f"{what}: need 0 < lower < upper end of the search, got {lo}, {hi}")
    f_lo, f_hi = f(lo), f(hi)
    if not f_lo >= 0 >= f_hi:
        raise ValueError(f"{what}: no root in [{lo:g}, {hi:g}] (the function is {f_lo:g} and {f_hi:g} there)")
    log_lo, log_hi = math.log(lo), math.log(hi)
    for _ in range(200):
        mid = 0.5 * (log_lo + log_hi)
        if mid in (log_lo, log_hi):
            break
        if f(math.exp(mid)) >= 0:
            log_lo = mid
        else:
            log_hi = mid
    return math.exp(0.5 * (log_lo + log_hi))


class HarmonicSDE:
    """The diffusion ``dx = -J x dt / 2 + dW`` of N points in 3D, diagonalised once: ``J = P diag(D) P^T``.

    ``J`` is given, or built from ``edges`` (``+a`` on both diagonal entries, ``-a`` off the diagonal) and
    ``antiedges`` (``-b`` and ``+b``), in that order, like EigenFold. ``l = 1`` leading mode (the centre of
    mass, ``D_0 = 0`` for a connected chain) carries no noise when ``center=True``.

    Args:
        N: number of points (needed unless ``J`` is given).
        edges, antiedges: pairs ``(i, j)`` of point indices.
        a, b: weights of the edges and antiedges.
        J: (N, N) symmetric matrix; replaces ``edges`` and ``antiedges``.
        dtype, device: of ``D``, ``P`` and everything computed (float64 by default).

    Attributes:
        N: number of points.
        D: (N,) eigenvalues of J, ascending.
        P: (N, N) orthonormal eigenvectors, one per column.

    Example:
        >>> sde = HarmonicSDE(N=3, edges=[(0, 1), (1, 2)], a=1.0)
        >>> sde.D.round(decimals=6).abs()
        tensor([0., 1., 3.], dtype=torch.float64)
        >>> sde.eigens(2.0)[1:]  # (1 - exp(-D t)) / D of the two non-centre modes
        tensor([0.8647, 0.3325], dtype=torch.float64)
    """

    l = 1  # noqa: E741 -- EigenFold's name: the number of leading modes skipped (the centre)

    def __init__(
        self,
        N: int | None = None,
        edges: Iterable[tuple[int, int]] = (),
        antiedges: Iterable[tuple[int, int]] = (),
        a: float = 1.0,
        b: float = 0.3,
        J: Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        if J is None:
            if isinstance(N, bool) or not isinstance(N, int) or N < 1:
                raise ValueError(f"N must be an integer >= 1 when J is not given, got {N!r}")
            J = torch.zeros(N, N, dtype=dtype, device=device)
            for weight, pairs in ((a, edges), (-b, antiedges)):
                for i, j in pairs:
                    i, j = int(i), int(j)
                    if not (0 <= i < N and 0 <= j < N) or i == j:
                        raise ValueError(f"pair ({i}, {j}) must join two different points of 0..{N - 1}")
                    J[i, i] += weight
                    J[j, j] += weight
                    J[i, j] = J[j, i] = -weight
        else:
            J = torch.as_tensor(J, dtype=dtype, device=device)
            if J.dim() != 2 or J.shape[0] != J.shape[1] or J.shape[0] < 1:
                raise ValueError(f"J must be a square (N, N) matrix, got shape {tuple(J.shape)}")
            if N is not None and N != J.shape[0]:
                raise ValueError(f"N={N} but J is {tuple(J.shape)}")
            if not torch.allclose(J, J.T):
                raise ValueError("J must be symmetric")
        self.D, self.P = torch.linalg.eigh(J)
        self.N = self.D.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.D.dtype

    @property
    def device(self) -> torch.device:
        return self.D.device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> HarmonicSDE:
        """A copy with ``D``, ``P`` (and the schedule table, if made) on ``device`` in ``dtype``."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        for name in ("D", "P", "ts", "rmsds", "hs"):
            if name in self.__dict__:
                setattr(copy, name, self.__dict__[name].to(device=device, dtype=dtype or self.dtype))
        return copy

    def _time(self, t: float | Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=self.dtype, device=self.device)
        if not bool((t >= 0).all()):
            raise ValueError(f"times must be >= 0, got {t}")
        return t

    @property
    def J(self) -> Tensor:
        """(N, N) the matrix ``P diag(D) P^T``."""
        return (self.P * self.D) @ self.P.T

    def eigens(self, t: float | Tensor) -> Tensor:
        """Variances ``(1 - exp(-D t)) / D`` of the kernel along each mode (``t`` where ``D = 0``).

        Args:
            t: time, a number or a tensor of any shape (...).

        Returns:
            (..., N) variances.
        """
        t = self._time(t)[..., None]
        D = self.D
        return torch.where(D != 0, -torch.expm1(-t * D) / D, t)

    def A(self, t: float | Tensor, invT: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``A = P diag(sqrt(eigens(t)))`` (so ``Sigma = A A^T``), and with ``invT`` also ``A^-T``. (N, N)."""
        lam = self.eigens(t)
        if not invT:
            return self.P * lam.sqrt()
        return self.P * lam.sqrt(), self.P / lam.sqrt()

    def Sigma(self, t: float | Tensor) -> Tensor:
        """(N, N) covariance of the kernel at time ``t`` (per coordinate, all modes)."""
        return (self.P * self.eigens(t)) @ self.P.T

    def Sigma_inv(self, t: float | Tensor) -> Tensor:
        """(N, N) inverse of :meth:`Sigma`."""
        return (self.P / self.eigens(t)) @ self.P.T

    def rmsd(self, t: float | Tensor) -> Tensor:
        """Expected RMSD of the noise at time ``t``: ``sqrt(3 mean_j eigens_j(t))`` over the non-centre modes.

        Args:
            t: a number or a tensor (...).

        Returns:
            (...) RMSD in the units of ``x`` (Å).
        """
        return (3 * self.eigens(t)[..., self.l :].mean(dim=-1)).sqrt()

    def KL_H(self, t: float | Tensor) -> Tensor:
        """KL divergence to the prior of the kernel at ``t`` started at ``x(0) = 0``, over the non-centre modes.

        ``-3/2 sum_j (log(1 - exp(-D_j t)) + exp(-D_j t))``; it falls from infinity at ``t = 0`` to 0 as ``t``
        grows.

        Args:
            t: a number or a tensor (...), > 0.

        Returns:
            (...) KL in nats.
        """
        t = self._time(t)[..., None]
        Dt = self.D[self.l :] * t
        return -1.5 * (torch.log(-torch.expm1(-Dt)) + torch.exp(-Dt)).sum(dim=-1)

    def _kept_modes(self, k: int | None, center: bool) -> Tensor:
        """(N,) 1 for the modes that ``sample`` and ``project`` keep, 0 for the others."""
        keep = torch.ones(self.N, dtype=self.dtype, device=self.device)
        if k is not None:
            if isinstance(k, bool) or int(k) != k or not 0 <= k <= self.N - self.l:
                raise ValueError(f"k must be an integer in [0, {self.N - self.l}], got {k!r}")
            keep[int(k) + self.l :] = 0
        if center:
            keep[: self.l] = 0
        return keep

    def sample(
        self,
        t: float,
        x: Tensor | None = None,
        score: bool = False,
        k: int | None = None,
        center: bool = True,
        adj: bool = False,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Draw ``x_t`` from the kernel started at ``x`` (zeros by default) on the first ``k`` non-centre modes.

        Modes beyond ``k`` (and the centre if ``center``) are set to zero, in ``x`` too.

        Args:
            t: time, >= 0.
            x: (N, 3) start.
            score: also return the kernel's score at ``x_t``.
            k: number of non-centre modes kept; ``None`` keeps all.
            center: drop the centre mode.
            adj: return the adjusted score, the kernel's score plus ``J x_t``.
            noise: (N, 3) the standard normal ``z`` of the modes; drawn from ``generator`` when not given.
            generator: random generator.

        Returns:
            (N, 3) ``x_t``, and with ``score`` the (N, 3) score.
        """
        x = torch.zeros(self.N, 3, dtype=self.dtype, device=self.device) if x is None else x.to(self.P)
        if x.shape != (self.N, 3):
            raise ValueError(f"x must have shape ({self.N}, 3), got {tuple(x.shape)}")
        if float(t) == 0:
            if score:
                raise ValueError("the score of the kernel is infinite at t = 0")
            return x.clone()
        keep = self._kept_modes(k, center)[:, None]
        if noise is None:
            noise = _randn((self.N, 3), generator, self.dtype, self.device)
        elif noise.shape != (self.N, 3):
            raise ValueError(f"noise must have shape ({self.N}, 3), got {tuple(noise.shape)}")
        z = noise.to(self.P) * keep
        lam = self.eigens(t)[:, None]
        out = torch.exp(-self._time(t) * self.D / 2)[:, None] * (self.P.T @ x) * keep + lam.sqrt() * z
        if not score:
            return self.P @ out
        kernel_score = -z / lam.sqrt()
        if adj:
            kernel_score = kernel_score + self.D[:, None] * out
        return self.P @ out, self.P @ kernel_score

    def score_norm(self, t: float | Tensor, k: int | None = None, adj: bool = False) -> Tensor:
        """Root mean square of one coordinate of the kernel's score on the first ``k`` modes (all by default).

        ``sqrt(sum_{j=1..k} 1 / eigens_j(t) / N)``, with ``adj`` each term times ``exp(-D_j t)``: the RMS of the
        adjusted score when ``x(0)`` is drawn from the prior.

        Args:
            t: a number or a tensor (...).
            k: number of non-centre modes.
            adj: of the adjusted score.

        Returns:
            (...) score norm.
        """
        k = self.N - self.l if k is None else k
        inv = 1 / self.eigens(t)
        if adj:
            inv = inv * torch.exp(-self.D * self._time(t)[..., None])
        return (inv[..., self.l : k + self.l].sum(dim=-1) / self.N).sqrt()

    def inject(self, t: float, modes: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """(N, 3) noise of the kernel at time ``t`` along the modes where ``modes`` (N,) bool is True."""
        if modes.shape != (self.N,) or modes.dtype != torch.bool:
            raise ValueError(f"modes must be a bool tensor ({self.N},), got {modes.dtype} {tuple(modes.shape)}")
        z = _randn((self.N, 3), generator, self.dtype, self.device) * modes[:, None].to(self.device)
        return self.A(t) @ z

    def score(self, x0: Tensor, xt: Tensor, t: float) -> Tensor:
        """(N, 3) score ``Sigma_t^-1 (mu_t - x_t)`` of the kernel, all modes, ``mu_t = exp(-J t / 2) x0``."""
        mu_t = (self.P * torch.exp(-self._time(t) * self.D / 2)) @ (self.P.T @ x0.to(self.P))
        return self.Sigma_inv(t) @ (mu_t - xt.to(self.P))

    def project(self, X: Tensor, k: int | None, center: bool = False) -> Tensor:
        """(N, 3) ``X`` projected on the first ``k`` non-centre modes (and the centre unless ``center``)."""
        return self.P @ ((self.P.T @ X.to(self.P)) * self._kept_modes(k, center)[:, None])

    def make_schedule(self, Hf: float = 0.01, step: float = 0.5, tmin: float = 0.001) -> None:
        """Store the table of an :class:`EntropySchedule`: ``ts`` ascending, ``rmsds`` and ``hs`` (KL) at them."""
        sched = EntropySchedule(self, Hf=Hf, step=step, tmin=tmin)
        self.ts = sched.ts.flip(0)
        self.rmsds = self.rmsd(self.ts)
        self.hs = self.KL_H(self.ts)


class PolymerSDE(HarmonicSDE):
    """:class:`HarmonicSDE` of a chain of N residues: edges ``(i, i+1)`` with ``a``, antiedges ``(i, i+2)`` with ``b``.

    Example:
        >>> sde = PolymerSDE(N=4, a=1.0, b=0.0)
        >>> sde.J.round(decimals=9) + 0.0  # + 0.0 turns -0. into 0.
        tensor([[ 1., -1.,  0.,  0.],
                [-1.,  2., -1.,  0.],
                [ 0., -1.,  2., -1.],
                [ 0.,  0., -1.,  1.]], dtype=torch.float64)
    """

    def __init__(
        self,
        N: int,
        a: float,
        b: float,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        if isinstance(N, bool) or not isinstance(N, int) or N < 1:
            raise ValueError(f"N must be an integer >= 1, got {N!r}")
        super().__init__(
            N=N,
            edges=zip(range(N - 1), range(1, N)),
            antiedges=zip(range(N - 2), range(2, N)),
            a=a,
            b=b,
            dtype=dtype,
            device=device,
        )


def check_alpha_windows(windows: Iterable[Sequence[float]]) -> tuple[tuple[float, float, float], ...]:
    """``(t_low, t_high, alpha)`` windows as a tuple of float triples; ValueError naming the first bad one.

    >>> check_alpha_windows([[0.7, 6, 4], (6, math.inf, 0)])
    ((0.7, 6.0, 4.0), (6.0, inf, 0.0))
    """
    checked = []
    for window in windows:
        values = tuple(window) if isinstance(window, (tuple, list)) else (window,)
        if len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ValueError(f"an alpha window is three numbers (t_low, t_high, alpha), got {window!r}")
        low, high, alpha = (float(v) for v in values)
        if not (0 <= low < high and 0 <= alpha < math.inf):
            raise ValueError(f"an alpha window needs 0 <= t_low < t_high and a finite alpha >= 0, got {window!r}")
        checked.append((low, high, alpha))
    return tuple(checked)


class Schedule:
    """Times of the reverse process, from ``tmax`` (KL to the prior = ``Hf``) down past ``tmin``.

    ``tmax`` solves ``sde.KL_H(t) = Hf`` (then ``rmsd(t) = rmsd_max`` if ``rmsd_max > 0`` is smaller); subclasses
    add times until one is ``<= tmin``; ``ks[i] = max(kmin, #{modes j >= 1 : D_j ts[i] < cutoff})``. The extra
    Langevin noise of step ``i`` is :meth:`alpha_at` its start time: ``alpha``, or that of an ``alpha_windows``
    entry ``(t_low, t_high, alpha)`` with ``t_low < ts[i] <= t_high`` (the first one).

    Attributes:
        ts: (N + 1,) decreasing times; ``ts[-1] <= tmin < ts[-2]``.
        ks: (N + 1,) long, modes active at each time (non-decreasing).
        dt: (N,) ``ts[i] - ts[i + 1]``; dk: (N + 1,) ``ks[i] - ks[i - 1]``, ``dk[0] = 0``.
        alphas: (N,) the extra Langevin noise of each step.
        tmax, tmin: ``ts[0]`` and ``ts[-1]``. N: number of steps. alpha, beta, alpha_windows: as given.
    """

    def __init__(
        self,
        sde: HarmonicSDE,
        Hf: float = 0.1,
        step: float = 0.1,
        rmsd_max: float = 0.0,
        cutoff: float = 10,
        kmin: int = 5,
        tmin: float = 0.2,
        alpha: float = 0,
        beta: float = 1,
        alpha_windows: Iterable[tuple[float, float, float]] = (),
    ) -> None:
        if sde.N - sde.l < 1:
            raise ValueError(f"a schedule needs at least one non-centre mode, the SDE has N={sde.N}")
        for name, value in (("Hf", Hf), ("step", step), ("tmin", tmin), ("cutoff", cutoff)):
            if not 0 < value < math.inf:
                raise ValueError(f"{name} must be positive and finite, got {value}")
        self.D = D = sde.D[sde.l :]
        tmax = _root_decreasing(lambda t: sde.KL_H(t).item() - Hf, tmin, TMAX_BRACKET, f"KL_H(t) = Hf = {Hf}")
        if sde.rmsd(tmax).item() > rmsd_max > 0:
            tmax = _root_decreasing(lambda t: rmsd_max - sde.rmsd(t).item(), tmin, tmax, f"rmsd = {rmsd_max}")
        self.alpha, self.beta, self.alpha_windows = alpha, beta, check_alpha_windows(alpha_windows)
        kmin = min(D.shape[0], kmin)
        ts = self.populate([tmax], step, tmin, cutoff, kmin)
        self.ts = torch.tensor(ts, dtype=sde.dtype, device=sde.device)
        self.alphas = torch.tensor([self.alpha_at(t) for t in ts[:-1]], dtype=sde.dtype, device=sde.device)
        ks = (cutoff / D[None, :] > self.ts[:, None]).sum(dim=1)
        self.ks = torch.clamp(ks, min=kmin)
        self.tmax, self.tmin = ts[0], ts[-1]
        self.dt = -torch.diff(self.ts)
        self.dk = torch.cat([self.ks.new_zeros(1), torch.diff(self.ks)])
        self.N = len(ts) - 1

    def alpha_at(self, t: float) -> float:
        """The extra Langevin noise of a step that starts at time ``t``."""
        return next((a for low, high, a in self.alpha_windows if low < t <= high), self.alpha)

    def populate(self, ts: list[float], step: float, tmin: float, cutoff: float, kmin: int) -> list[float]:
        raise NotImplementedError("use EntropySchedule or RateSchedule")


class EntropySchedule(Schedule):
    """Steps that lower the KL of every mode by at most ``step`` nats: the next time is the largest of
    ``-log(1 - exp(-step) (1 - exp(-D_j t))) / D_j`` over the non-centre modes.

    Example:
        >>> sched = EntropySchedule(PolymerSDE(N=10, a=3 / 3.8**2, b=0), Hf=2, step=0.5, tmin=0.01, cutoff=5)
        >>> sched.N, round(sched.tmax, 3), bool(sched.ts[-1] <= 0.01 < sched.ts[-2])
        (14, 7.899, True)
    """

    def populate(self, ts: list[float], step: float, tmin: float, cutoff: float, kmin: int) -> list[float]:
        keep = math.exp(-step)
        while ts[-1] > tmin:
            t_next = -torch.log1p(keep * torch.expm1(-self.D * ts[-1])) / self.D
            ts.append(t_next.max().item())
        return ts


class RateSchedule(Schedule):
    """Steps of ``step * eigens_j(t) / (1 + alpha beta / 2)``, the smallest over the first
    ``max(kmin, #{D_j t < cutoff})`` modes (EigenFold's ``inf_type='rate'``, its published default), with the
    ``alpha`` of the step (:meth:`alpha_at`); a step that would cross the edge of an ``alpha_windows`` entry ends on
    it, so every window gets its ``alpha`` over all of its times."""

    def populate(self, ts: list[float], step: float, tmin: float, cutoff: float, kmin: int) -> list[float]:
        edges = sorted({edge for low, high, _ in self.alpha_windows for edge in (low, high)}, reverse=True)
        while ts[-1] > tmin:
            t = ts[-1]
            dt = step * -torch.expm1(-self.D * t) / self.D / (1 + self.alpha_at(t) * self.beta / 2)
            k = max(kmin, int((self.D * t < cutoff).sum()))
            t_next = t - dt[:k].min().item()
            ts.append(next((edge for edge in edges if t_next < edge < t), t_next))  # no step crosses an edge
        return ts


SCHEDULES = {"entropy": EntropySchedule, "rate": RateSchedule}


@dataclass(frozen=True)
class HarmonicConfig:
    """Settings of the harmonic diffusion, with EigenFold's names and defaults.

    Training defaults are those of EigenFold's published model (``pretrained_model/args.yaml``), sampling
    defaults those of its ``inference.py`` (the paper's samples used ``alpha=1, beta=3``).

    Attributes:
        sde_a: weight of the bonds ``(i, i+1)`` in J, 1 / Å^2 (``3 / 3.8^2``: 3.8 Å RMS bond length).
        sde_b: weight of the antiedges ``(i, i+2)``.
        train_Hf: KL (nats) to the prior at the largest training (and sampling) time.
        train_tmin: smallest training time, and the end of sampling unless ``inf_tmin`` is given.
        train_cutoff: modes with ``D_j t < train_cutoff`` are noised at time t ...
        train_kmin: ... and at least this many.
        train_skew: leans the training noise levels: with probability ``1 - 2 / (1 + exp(|train_skew|))`` the
            uniform number that picks the RMSD is replaced by a Beta(1, 2) draw (``train_skew < 0``: more small
            RMSDs, the levels that shape local geometry) or a Beta(2, 1) draw (``> 0``); 0 keeps it uniform.
        train_rmsd_max: caps the largest training RMSD (Å) when positive (0: no cap).
        train_band_tmin, train_band_tmax, train_band_weight: a band of noise levels trained more often (not in
            EigenFold): with probability ``train_band_weight`` the RMSD is drawn uniformly between
            ``rmsd(train_band_tmin)`` and ``rmsd(train_band_tmax)`` (kept within the chain's training range),
            otherwise as above. Every level stays in training. 0 (the default): no band, EigenFold's draw.
        inf_type: ``"rate"`` (:class:`RateSchedule`) or ``"entropy"`` (:class:`EntropySchedule`) for sampling.
        inf_step: step of the sampling schedule, and of the entropy schedule that tabulates ``t(rmsd)``.
        alpha, beta: extra Langevin noise ``alpha`` and its drift weight ``beta`` in the reverse step. The extra
            part of a step is a Langevin step of size ``alpha dt`` on ``p_t ** beta``: ``beta`` is an inverse
            temperature (1: unbiased; above 1: sharper than ``p_t``).
        alpha_windows: ``(t_low, t_high, alpha)`` triples (not in EigenFold): a reverse step that starts at a time
            ``t_low < t <= t_high`` uses that ``alpha`` (the first window that holds ``t``); the rate schedule's
            steps there shrink with it, and end on the windows' edges, so a step never crosses one. It puts the
            Langevin correction where it counts: the pretrained model's helices take their hand at t of about 1
            to 5 (chapter 12). ``()``: ``alpha`` everywhere.
        inf_tmin: end time of sampling (``None``: ``train_tmin``).
        inf_noise_last_step: whether the last reverse step adds noise (EigenFold: yes).
    """

    sde_a: float = 3 / 3.8**2
    sde_b: float = 0.0
    train_Hf: float = 2.0
    train_tmin: float = 0.01
    train_cutoff: float = 5.0
    train_kmin: int = 5
    train_skew: float = 0.0
    train_rmsd_max: float = 0.0
    train_band_tmin: float = 0.0
    train_band_tmax: float = 0.0
    train_band_weight: float = 0.0
    inf_type: str = "rate"
    inf_step: float = 0.5
    alpha: float = 0.0
    beta: float = 1.0
    inf_tmin: float | None = None
    inf_noise_last_step: bool = True
    alpha_windows: tuple[tuple[float, float, float], ...] = ()

    def __post_init__(self) -> None:
        for name in ("sde_a", "train_Hf", "train_tmin", "train_cutoff", "inf_step"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if not 0 <= self.sde_b < math.inf:
            raise ValueError(f"sde_b must be >= 0, got {self.sde_b!r}")
        for name in ("train_skew", "train_rmsd_max", "train_band_tmin", "train_band_tmax", "train_band_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.train_rmsd_max < 0:
            raise ValueError(f"train_rmsd_max must be >= 0 (0: no cap), got {self.train_rmsd_max!r}")
        if not 0 <= self.train_band_weight <= 1:
            raise ValueError(f"train_band_weight must be in [0, 1] (0: no band), got {self.train_band_weight!r}")
        if self.train_band_weight > 0 and not 0 < self.train_band_tmin < self.train_band_tmax:
            band = (self.train_band_tmin, self.train_band_tmax)
            raise ValueError(f"a training band needs 0 < train_band_tmin < train_band_tmax, got {band}")
        if isinstance(self.train_kmin, bool) or not isinstance(self.train_kmin, int) or self.train_kmin < 1:
            raise ValueError(f"train_kmin must be an integer >= 1, got {self.train_kmin!r}")
        if self.inf_type not in SCHEDULES:
            raise ValueError(f"inf_type must be one of {sorted(SCHEDULES)}, got {self.inf_type!r}")
        if not (0 <= self.alpha < math.inf and 0 <= self.beta < math.inf):
            raise ValueError(f"alpha and beta must be >= 0, got {self.alpha!r}, {self.beta!r}")
        if self.inf_tmin is not None and not 0 < self.inf_tmin < math.inf:
            raise ValueError(f"inf_tmin must be positive or None, got {self.inf_tmin!r}")
        object.__setattr__(self, "alpha_windows", check_alpha_windows(self.alpha_windows))

    @property
    def sampling_tmin(self) -> float:
        """Where sampling stops: ``inf_tmin``, else ``train_tmin``."""
        return self.train_tmin if self.inf_tmin is None else self.inf_tmin

    @classmethod
    def from_args(cls, args: HarmonicConfig | Namespace | object) -> HarmonicConfig:
        """The config read from any object with the fields as attributes (EigenFold's ``args``); extra ones are
        ignored, and the sampling fields (absent from EigenFold's training ``args``) keep their defaults."""
        if isinstance(args, cls):
            return args
        required = ("sde_a", "sde_b", "train_Hf", "train_tmin", "train_cutoff", "train_kmin")
        missing = [name for name in required if not hasattr(args, name)]
        if missing:
            raise ValueError(f"args lacks the harmonic diffusion settings {missing} (see HarmonicConfig)")
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None})


@dataclass
class NoisedChain:
    """One draw of the forward kernel for one chain.

    Attributes:
        pos: (n, 3) noised, centred positions ``x_t``.
        score: (n, 3) adjusted score of the kernel at ``x_t``.
        t: diffusion time. k: number of noised modes. step: the uniform number that chose ``rmsd``.
        rmsd: expected RMSD of the noise at ``t``. score_norm: ``score_norm(t, k, adj=True)``.
    """

    pos: Tensor
    score: Tensor
    t: float
    k: int
    step: float
    rmsd: float
    score_norm: float


class ForwardDiffusionKernel:
    """EigenFold's training kernel: a time uniform in RMSD, the modes below the cut-off, the adjusted score.

    Args:
        args: a :class:`HarmonicConfig` (or an object with its fields).

    Example:
        >>> kernel = ForwardDiffusionKernel(HarmonicConfig())
        >>> sde = PolymerSDE(N=12, a=3 / 3.8**2, b=0)
        >>> sde.make_schedule(Hf=2, step=0.5, tmin=0.01)
        >>> draw = kernel(torch.zeros(12, 3), sde, generator=torch.Generator().manual_seed(0))
        >>> draw.pos.shape, draw.k >= 5, 0.01 <= draw.t <= sde.ts[-1].item()
        (torch.Size([12, 3]), True, True)
    """

    def __init__(self, args: HarmonicConfig | Namespace) -> None:
        config = HarmonicConfig.from_args(args)
        self.Hf, self.tmin = config.train_Hf, config.train_tmin
        self.kmin, self.cutoff = config.train_kmin, config.train_cutoff
        self.skew, self.rmsd_max = config.train_skew, config.train_rmsd_max
        self.band = (config.train_band_tmin, config.train_band_tmax, config.train_band_weight)

    def __call__(self, pos: Tensor, sde: HarmonicSDE, generator: torch.Generator | None = None) -> NoisedChain:
        """Noise one chain ``pos`` (n, 3) with ``sde`` (n points, ``make_schedule`` done)."""
        if not hasattr(sde, "ts"):
            raise ValueError("the SDE has no schedule table: call sde.make_schedule(...) first")
        if pos.shape != (sde.N, 3):
            raise ValueError(f"pos must have shape ({sde.N}, 3) for this SDE, got {tuple(pos.shape)}")
        step = _rand(generator, sde.dtype)
        if step > 2 / (1 + math.exp(abs(self.skew))):  # Beta(2, 1) or Beta(1, 2) by inverting its CDF
            u = _rand(generator, sde.dtype)
            step = math.sqrt(u) if self.skew > 0 else 1 - math.sqrt(1 - u)
        rmsd_max = _interp(self.Hf, sde.hs.flip(0), sde.rmsds.flip(0))
        if self.rmsd_max > 0:
            rmsd_max = min(rmsd_max, self.rmsd_max)
        rmsd_min = sde.rmsd(self.tmin).item()
        band_tmin, band_tmax, band_weight = self.band
        if band_weight > 0 and _rand(generator, sde.dtype) < band_weight:  # the band, within the training range
            rmsd_max = min(rmsd_max, sde.rmsd(band_tmax).item())
            rmsd_min = min(max(rmsd_min, sde.rmsd(band_tmin).item()), rmsd_max)
            step = _rand(generator, sde.dtype)
        rmsd = rmsd_max * step + rmsd_min * (1 - step)
        t = _interp(rmsd, sde.rmsds, sde.ts)
        k = int((sde.D * t < self.cutoff).sum()) - 1
        k = min(sde.N - 1, max(self.kmin, k))
        x_t, score = sde.sample(t, pos, score=True, k=k, center=True, adj=True, generator=generator)
        norm = sde.score_norm(t, k, adj=True).item()
        return NoisedChain(pos=x_t, score=score, t=t, k=k, step=step, rmsd=rmsd, score_norm=norm)


def harmonic_loss(data: ChainBatch, pred: Tensor, score: Tensor) -> tuple[Tensor, Tensor]:
    """EigenFold's loss ``mean((score - pred)^2 / score_norm^2)`` and base loss ``mean(score^2 / score_norm^2)``.

    Args:
        data: the batch the model read (its ``score_norm`` (B,) and ``resi.batch`` (N,)).
        pred: (N, 3) model output.
        score: (N, 3) true (adjusted) score from :meth:`HarmonicDiffusion.noised_batch`.

    Returns:
        ``(loss, base_loss)``, 0-d tensors; the base loss is that of predicting zero, about 1.
    """
    return score_matching_loss(score, pred, data.score_norm[data.resi.batch])


def reverse_step(
    sde: HarmonicSDE, schedule: Schedule, i: int, y: Tensor, score: Tensor, noise: Tensor | None
) -> Tensor:
    """Step ``i`` of EigenFold's reverse process for one chain: positions at ``schedule.ts[i]`` to the next time.

    ``dy = -(1 + alpha beta) J y dt / 2 + (1 + alpha beta / 2) score dt + sqrt((1 + alpha) dt) noise``, with ``J`` the
    chain's harmonic matrix ``P diag(D) P^T`` and ``alpha`` the step's (``schedule.alphas[i]``), projected on the
    first ``schedule.ks[i]`` modes.

    Args:
        sde, schedule: the chain's :class:`PolymerSDE` and :class:`Schedule`.
        i: the step, ``0 <= i < schedule.N``.
        y: (n, 3) positions; score: (n, 3) the model's (adjusted) score at ``y`` and ``schedule.ts[i]``.
        noise: (n, 3) standard normal draws, or None for a step without noise.

    Returns:
        (n, 3) the positions after the step.
    """
    dt, alpha = schedule.dt[i].item(), schedule.alphas[i].item()
    dy = -(1 + alpha * schedule.beta) * ((sde.P * sde.D) @ (sde.P.T @ y)) * dt / 2
    dy = dy + (1 + alpha * schedule.beta / 2) * score * dt
    if noise is not None:
        dy = dy + math.sqrt(dt * (1 + alpha)) * noise
    return y + sde.project(dy, int(schedule.ks[i]))


def _check_not_diverged(pos: Tensor, chain: int, step: int, n_steps: int, t: float) -> None:
    """Raise RuntimeError when a chain of the reverse process left all physical scales: non-finite positions, or a
    residue farther from the centre than ten times the length of the fully stretched chain (10 x 3.8 Å per residue).
    """
    largest = pos.abs().max().item()
    limit = 10 * 3.8 * pos.shape[0]
    if not largest <= limit:  # also catches NaN
        raise RuntimeError(
            f"the reverse diffusion diverged: chain {chain} ({pos.shape[0]} residues) reached |x| = {largest:.3g} Å "
            f"(limit {limit:.0f} Å) at step {step + 1} of {n_steps} (t = {t:.3g}); the model's scores are out of "
            f"range for this chain (is its length far from those the model was trained on?)"
        )


def _generators(generator: torch.Generator | Sequence[torch.Generator] | None, n: int) -> list:
    """One generator per chain: the list given (of length n), or the one generator (or None) n times."""
    if generator is None or isinstance(generator, torch.Generator):
        return [generator] * n
    generator = list(generator)
    if len(generator) != n or not all(isinstance(g, torch.Generator) for g in generator):
        raise ValueError(f"need one torch.Generator per chain ({n}), got {len(generator)} items")
    return generator


class HarmonicDiffusion:
    """EigenFold's diffusion for batches of chains of any lengths, one :class:`PolymerSDE` and schedule per length.

    Args:
        config: the settings (:class:`HarmonicConfig`, or EigenFold's ``args``).
        dtype: of the SDEs and of the positions returned by :meth:`reverse_sample` (float64 by default).
        device: of everything computed.

    Example:
        >>> from tpconv_lite.conditioning import LM_EDGE_DIM, LM_NODE_DIM, chain_conditioning
        >>> from tpconv_lite.score_model import ResiLevelTensorProductScoreModel, ScoreModelConfig
        >>> diffusion = HarmonicDiffusion(HarmonicConfig())
        >>> node, pair = chain_conditioning("MKTAYIAK", "-HHHHHH-")
        >>> data, score = diffusion.noised_batch([torch.randn(8, 3)], [node], [pair],
        ...                                      generator=torch.Generator().manual_seed(0))
        >>> model = ResiLevelTensorProductScoreModel(ScoreModelConfig(
        ...     resi_conv_layers=1, resi_ns=4, lm_node_dim=LM_NODE_DIM, lm_edge_dim=LM_EDGE_DIM))
        >>> loss, base_loss = harmonic_loss(data, model(data), score)
        >>> [y.shape for y in diffusion.reverse_sample(model, [node], [pair])]
        [torch.Size([8, 3])]
    """

    def __init__(
        self,
        config: HarmonicConfig | Namespace = HarmonicConfig(),
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        self.config = HarmonicConfig.from_args(config)
        self.dtype, self.device = dtype, torch.device(device) if device is not None else torch.device("cpu")
        self.kernel = ForwardDiffusionKernel(self.config)
        self._sdes: dict[int, PolymerSDE] = {}
        self._schedules: dict[int, Schedule] = {}

    def sde(self, n: int) -> PolymerSDE:
        """The :class:`PolymerSDE` of a chain of ``n >= 2`` residues with its training table (cached)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"a chain needs at least 2 residues, got {n!r}")
        if n not in self._sdes:
            c = self.config
            sde = PolymerSDE(N=n, a=c.sde_a, b=c.sde_b, dtype=self.dtype, device=self.device)
            sde.make_schedule(Hf=c.train_Hf, step=c.inf_step, tmin=c.train_tmin)
            self._sdes[n] = sde
        return self._sdes[n]

    def schedule(self, n: int) -> Schedule:
        """The sampling schedule (``inf_type``) of a chain of ``n`` residues (cached)."""
        if n not in self._schedules:
            c = self.config
            self._schedules[n] = SCHEDULES[c.inf_type](
                self.sde(n), Hf=c.train_Hf, rmsd_max=0, step=c.inf_step, cutoff=c.train_cutoff,
                kmin=c.train_kmin, tmin=c.sampling_tmin, alpha=c.alpha, beta=c.beta, alpha_windows=c.alpha_windows,
            )  # fmt: skip
        return self._schedules[n]

    def noised_batch(
        self,
        pos: Sequence[Tensor],
        node_attr: Sequence[Tensor],
        pair_attr: Sequence[Tensor],
        *,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[ChainBatch, Tensor]:
        """Noise B clean chains with the forward kernel and pack them for the score model.

        Args:
            pos: B clean chains (n_b, 3), in Å, any orientation and centre.
            node_attr: B tensors (n_b, lm_node_dim); pair_attr: B tensors (n_b, n_b, lm_edge_dim).
            generator: one generator, or one per chain (then the batch equals the chains noised one by one).
            dtype: of the batch and score (the model's); by default that of ``node_attr[0]``.

        Returns:
            The :class:`ChainBatch` (``node_t`` the time of each chain, ``score_norm`` (B,)) and the (N, 3)
            adjusted score, both on ``device``.
        """
        if len(pos) == 0:
            raise ValueError("need at least one chain")
        dtype = dtype or node_attr[0].dtype
        draws = [
            self.kernel(p.to(self.device, self.dtype), self.sde(p.shape[0]), g)
            for p, g in zip(pos, _generators(generator, len(pos)))
        ]
        data = ChainBatch.from_chains(
            [d.pos.to(dtype) for d in draws],
            [x.to(self.device, dtype) for x in node_attr],
            [x.to(self.device, dtype) for x in pair_attr],
            node_t=torch.tensor([d.t for d in draws], dtype=dtype, device=self.device),
            score_norm=torch.tensor([d.score_norm for d in draws], dtype=dtype, device=self.device),
        )
        return data, torch.cat([d.score for d in draws]).to(dtype)

    @torch.no_grad()
    def reverse_sample(
        self,
        model: Callable[[ChainBatch], Tensor],
        node_attr: Sequence[Tensor],
        pair_attr: Sequence[Tensor],
        *,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        progress: bool = False,
    ) -> list[Tensor]:
        """Sample one structure per conditioning with EigenFold's reverse process, all chains in one batch.

        Each chain follows its own schedule (:meth:`schedule`); chains whose schedule has ended drop out of the
        batch. The model is called in its parameters' dtype (or that of ``node_attr[0]``) and must return the
        adjusted score.

        Args:
            model: a score model, or any callable from a :class:`ChainBatch` to (N, 3) scores.
            node_attr: B tensors (n_b, lm_node_dim); pair_attr: B tensors (n_b, n_b, lm_edge_dim).
            generator: one generator, or one per chain (then the batch equals the chains sampled one by one).
            progress: show a tqdm bar over the steps.

        Returns:
            B tensors (n_b, 3) of sampled positions in ``dtype``.
        """
        n_chains = len(node_attr)
        if n_chains == 0 or len(pair_attr) != n_chains:
            raise ValueError(f"need one pair_attr per node_attr (at least one), got {n_chains}, {len(pair_attr)}")
        if isinstance(model, torch.nn.Module):
            model.eval()
        params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
        model_dtype = params[0].dtype if params else node_attr[0].dtype
        c = self.config
        gens = _generators(generator, n_chains)
        sdes = [self.sde(x.shape[0]) for x in node_attr]
        scheds = [self.schedule(x.shape[0]) for x in node_attr]
        # the start: the kernel at tmax from the origin, projected on the first ks[0] modes
        Y = [
            sde.project(sde.sample(sched.tmax, generator=g), int(sched.ks[0]))
            for sde, sched, g in zip(sdes, scheds, gens)
        ]
        node_attr = [x.to(self.device, model_dtype) for x in node_attr]
        pair_attr = [x.to(self.device, model_dtype) for x in pair_attr]
        active, data = None, None
        for i in tqdm(range(max(s.N for s in scheds)), disable=not progress, desc="sampling"):
            now = [b for b in range(n_chains) if i < scheds[b].N]
            if now != active:  # rebuild the batch only when a chain drops out
                active = now
                data = ChainBatch.from_chains(
                    [Y[b].to(model_dtype) for b in active], [node_attr[b] for b in active],
                    [pair_attr[b] for b in active], node_t=torch.ones(len(active), dtype=model_dtype,
                    device=self.device), score_norm=torch.ones(len(active), dtype=model_dtype, device=self.device),
                )  # fmt: skip
            ts = [scheds[b].ts[i].item() for b in active]
            ks = [int(scheds[b].ks[i]) for b in active]
            for j, b in enumerate(active):
                dk = int(scheds[b].dk[i])
                if dk > 0:  # the modes that enter now get the kernel's noise of this time
                    modes = torch.zeros(sdes[b].N, dtype=torch.bool, device=self.device)
                    modes[ks[j] - dk + 1 : ks[j] + 1] = True
                    Y[b] = Y[b] + sdes[b].inject(ts[j], modes, generator=gens[b])
            data.resi.pos = torch.cat([Y[b] for b in active]).to(model_dtype)
            data.resi.node_t = torch.tensor(ts, dtype=model_dtype, device=self.device)[data.resi.batch]
            data.score_norm = torch.stack(
                [sdes[b].score_norm(t, k, adj=True) for b, t, k in zip(active, ts, ks)]
            ).to(model_dtype)
            scores = model(data).to(self.dtype).split([sdes[b].N for b in active])
            for j, b in enumerate(active):
                noisy = c.inf_noise_last_step or i < scheds[b].N - 1
                noise = _randn(Y[b].shape, gens[b], self.dtype, self.device) if noisy else None
                Y[b] = reverse_step(sdes[b], scheds[b], i, Y[b], scores[j], noise)
                _check_not_diverged(Y[b], b, i, scheds[b].N, ts[j])
        return Y
