"""Noise sources of stochastic solvers: where the standard-normal draws come from.

A stochastic solve needs three kinds of randomness, all from one injected object (never the
ambient RNG unless asked for):

* ``increment(t0, t1, x)``: the Brownian increment of a step, normalised: ``z`` with
  ``dW = sqrt(|t1 - t0|) z`` (what :func:`solvers.integrate` hands to a fixed-grid solver);
* ``normal(x, rows)``: a fresh ``N(0, I)`` draw not tied to a time interval (the Langevin
  corrector's noise, the re-drawn noise of a rejected adaptive step);
* ``brownian_motion(...)``: a ``torchsde`` Brownian motion for the solvers that run torchsde
  (:mod:`solvers.sde_adaptive`), on the flipped time ``s = |t - t_start|`` (torchsde needs
  increasing times).

Sources:

* :class:`GaussianNoise` (the default of :func:`solvers.integrate`): i.i.d. draws from one
  ``torch.Generator`` (``None``: the global RNG), in call order, so the same seed gives the same
  samples. Its increments are exactly :func:`solvers.integrate.standard_normal_noise`.
* :class:`PerSampleNoise`: one generator per sample (``seeds``): sample ``i``'s noise is the same
  whatever batch it is drawn in (:func:`scoresde.sample` with ``seeds=``).
* :class:`BrownianPath`: ONE Brownian path, queried at any resolution (a
  ``torchsde.BrownianInterval``: Brownian-bridge refinement, Levy 1939), so that solves on a
  coarse and a fine grid, or a fixed-grid solver and a torchsde solver, see the same path:
  strong-order tests (style guide, item 9: "the same path at several resolutions").

Host synchronisation: :class:`GaussianNoise` and :class:`PerSampleNoise` increments never
synchronise. :class:`BrownianPath` reads the step's times on the host (torchsde queries are
Python floats) and ``brownian_motion`` draws its entropy on the host once per solve: both are
meant for tests and reference solves, not the fast sampling path.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:  # torchsde is imported lazily: only the Brownian-motion paths need it
    from torchsde import BaseBrownian

__all__ = [
    "NoiseSource",
    "GaussianNoise",
    "PerSampleNoise",
    "BrownianPath",
    "flip_time",
    "LEVY_AREAS",
]

_F64 = torch.float64
_MAX_ENTROPY = 2**62

LEVY_AREAS = ("none", "space-time")
"""Levy-area approximations a Brownian motion can carry: ``"space-time"`` is what torchsde's
stochastic Runge-Kutta (``srk``) method needs; the other methods need ``"none"``."""


def flip_time(t: Tensor, t_start: Tensor | float) -> Tensor:
    """The torchsde time ``s = |t - t_start|`` (float64): increasing along the integration,
    whichever direction ``t`` runs (torchsde only integrates forwards).

    Args:
        t: times, any shape, float64.
        t_start: where the integration (or the Brownian path) starts.

    Returns:
        ``|t - t_start|``, float64, shape of ``t``.
    """
    return (t.to(_F64) - torch.as_tensor(t_start, dtype=_F64, device=t.device)).abs()


def _entropy(generator: torch.Generator | None) -> int:
    """One integer seed for a torchsde Brownian motion, drawn from ``generator`` (host sync)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return int(torch.randint(0, _MAX_ENTROPY, (), generator=generator, device=device))


def _check_levy_area(levy_area: str) -> None:
    if levy_area not in LEVY_AREAS:
        raise ValueError(f"levy_area must be one of {LEVY_AREAS}, got {levy_area!r}")


def _interval(
    length: float,
    size: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device | str,
    entropy: int,
    levy_area: str,
    cache_size: int | None = 45,
) -> BaseBrownian:
    import torchsde

    return torchsde.BrownianInterval(
        t0=0.0,
        t1=float(length),
        size=size,
        dtype=dtype,
        device=device,
        entropy=entropy,
        levy_area_approximation=levy_area,
        cache_size=cache_size,
    )


class NoiseSource(abc.ABC):
    """Where a stochastic solve's standard-normal draws come from (see the module docstring).

    :func:`solvers.integrate` calls :meth:`increment` once per step (in step order) for the
    step's Brownian increment and :meth:`normal` for the further draws of a solver that needs
    more than one per step (``noise_draws > 1``: the predictor-corrector sampler); whole-interval
    solvers (torchsde, the adaptive SDE solver) call :meth:`brownian_motion` or :meth:`normal`.
    """

    @abc.abstractmethod
    def increment(self, t0: Tensor, t1: Tensor, x: Tensor) -> Tensor:
        """The normalised Brownian increment of the step ``t0 -> t1``.

        Args:
            t0: the step's start time, a 0-d float64 tensor.
            t1: the step's end time, a 0-d float64 tensor.
            x: the state, shape ``(B, *dims)`` (only its shape, dtype and device are used).

        Returns:
            ``z`` with ``W(t1) - W(t0) = sqrt(|t1 - t0|) z`` (``z ~ N(0, I)``), shape, dtype and
            device of ``x``.
        """

    @abc.abstractmethod
    def normal(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """A fresh ``N(0, I)`` draw of ``x``'s shape, independent of every previous draw.

        Args:
            x: shape ``(b, *dims)``: the whole batch, or the samples ``rows`` of it.
            rows: ``(b,)`` int64 indices of the batch's samples that ``x`` holds (per-sample
                sources draw row ``j`` from sample ``rows[j]``'s generator); ``None``: all.

        Returns:
            ``z ~ N(0, I)``, shape, dtype and device of ``x``.
        """

    @abc.abstractmethod
    def brownian_motion(
        self,
        t_start: float,
        t_end: float,
        size: tuple[int, int],
        dtype: torch.dtype,
        device: torch.device,
        levy_area: str = "none",
    ) -> BaseBrownian:
        """A torchsde Brownian motion ``W(s)`` of shape ``size = (B, D)`` on the flipped time
        ``s = |t - t_start|`` in ``[0, |t_end - t_start|]`` (:func:`flip_time`).

        Args:
            t_start: start of the integration interval in the solver's time.
            t_end: end of the integration interval.
            size: ``(batch, dim)`` of the flattened state.
            dtype: dtype of the increments.
            device: device of the increments.
            levy_area: ``"none"`` or ``"space-time"`` (torchsde's ``srk`` needs the latter).
        """


class GaussianNoise(NoiseSource):
    """I.i.d. ``N(0, I)`` draws from one generator (the default of :func:`solvers.integrate`).

    ``increment`` and ``normal`` are :func:`solvers.integrate.standard_normal_noise`: drawn on
    the generator's device and moved to ``x``'s, so a CPU generator gives the same numbers
    whatever device the state is on. ``brownian_motion`` seeds a ``torchsde.BrownianInterval``
    with one integer drawn from the generator.

    Args:
        generator: the ``torch.Generator``, or ``None`` for the global RNG.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
        self.generator = generator

    def __repr__(self) -> str:
        return f"GaussianNoise(generator={self.generator!r})"

    def increment(self, t0: Tensor, t1: Tensor, x: Tensor) -> Tensor:
        """``z ~ N(0, I)`` of ``x``'s shape (independent of the step's times)."""
        return self.normal(x)

    def normal(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """``z ~ N(0, I)`` of ``x``'s shape (``rows`` is ignored: one stream for the batch)."""
        from solvers.integrate import standard_normal_noise

        return standard_normal_noise(x, self.generator)

    def brownian_motion(
        self,
        t_start: float,
        t_end: float,
        size: tuple[int, int],
        dtype: torch.dtype,
        device: torch.device,
        levy_area: str = "none",
    ) -> BaseBrownian:
        """A ``torchsde.BrownianInterval`` on ``[0, |t_end - t_start|]`` seeded from the
        generator (one host synchronisation)."""
        _check_levy_area(levy_area)
        length = abs(float(t_end) - float(t_start))
        return _interval(length, size, dtype, device, _entropy(self.generator), levy_area)


class PerSampleNoise(NoiseSource):
    """One generator per sample: sample ``i``'s noise depends on its seed only, never on the
    batch it is drawn in or on its position there.

    Every draw is made row by row (``B`` small ``randn`` calls on the CPU, moved to ``x``'s
    device), so it costs more than :class:`GaussianNoise` for large batches.

    Args:
        generators: one CPU ``torch.Generator`` per sample (already seeded; they advance).

    Use :meth:`from_seeds` to build one from integer seeds.
    """

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        gens = list(generators)
        if not gens or not all(isinstance(g, torch.Generator) for g in gens):
            raise TypeError("generators must be a non-empty sequence of torch.Generator")
        self.generators = gens

    @classmethod
    def from_seeds(cls, seeds: Sequence[int]) -> PerSampleNoise:
        """Fresh CPU generators seeded with ``seeds`` (one per sample)."""
        if isinstance(seeds, Tensor):
            seeds = seeds.tolist()
        values = list(seeds)
        if not values or not all(isinstance(s, int) and not isinstance(s, bool) for s in values):
            raise TypeError(f"seeds must be a non-empty sequence of ints, got {seeds!r}")
        return cls([torch.Generator().manual_seed(s) for s in values])

    def __repr__(self) -> str:
        return f"PerSampleNoise(<{len(self.generators)} generators>)"

    def _rows(self, x: Tensor, rows: Tensor | None) -> list[int]:
        idx = list(range(x.shape[0])) if rows is None else [int(r) for r in rows.tolist()]
        if len(idx) != x.shape[0]:
            raise ValueError(f"rows must have {x.shape[0]} entries (one per row of x)")
        if idx and (min(idx) < 0 or max(idx) >= len(self.generators)):
            raise ValueError(
                f"this PerSampleNoise has {len(self.generators)} generators (one per sample); "
                f"a batch row refers to sample {max(idx)}"
            )
        return idx

    def increment(self, t0: Tensor, t1: Tensor, x: Tensor) -> Tensor:
        """Row ``i`` from generator ``i`` (independent of the step's times)."""
        return self.normal(x)

    def normal(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """Row ``j`` drawn from the generator of sample ``rows[j]`` (all samples if ``None``)."""
        if rows is None and x.shape[0] != len(self.generators):
            raise ValueError(
                f"this PerSampleNoise has {len(self.generators)} generators (one per sample), "
                f"the state has batch size {x.shape[0]}"
            )
        one = (1, *x.shape[1:])
        draws = [
            torch.randn(one, generator=self.generators[i], dtype=x.dtype)
            for i in self._rows(x, rows)
        ]
        if not draws:
            return torch.empty_like(x)
        return torch.cat(draws).to(x.device)

    def brownian_motion(
        self,
        t_start: float,
        t_end: float,
        size: tuple[int, int],
        dtype: torch.dtype,
        device: torch.device,
        levy_area: str = "none",
    ) -> BaseBrownian:
        """One ``torchsde.BrownianInterval`` per sample (seeded from its generator), stacked."""
        _check_levy_area(levy_area)
        if size[0] != len(self.generators):
            raise ValueError(
                f"this PerSampleNoise has {len(self.generators)} generators, the state has "
                f"batch size {size[0]}"
            )
        length = abs(float(t_end) - float(t_start))
        parts = [
            _interval(length, (1, size[1]), dtype, device, _entropy(g), levy_area)
            for g in self.generators
        ]
        return _make_stacked(parts, size, dtype, device, levy_area)


class BrownianPath(NoiseSource):
    """One Brownian path on ``[t_start, t_end]`` (either direction), queried at any resolution.

    The path is a ``torchsde.BrownianInterval`` ``W(s)`` on the flipped time ``s = |t -
    t_start|`` (shape ``(B, D)``, ``D`` the flattened state size): coarser queries are sums of
    finer ones (Brownian-bridge refinement), so one ``BrownianPath`` object gives the same path
    to solves on grids of any resolution and to torchsde (:meth:`brownian_motion` returns the
    same object, shifted if needed). This makes strong-order tests possible: the error of a
    solve on a coarse grid is measured against a fine-grid solve driven by the same path.

    ``increment(t0, t1, x) = (W(s1) - W(s0)) / sqrt(s1 - s0)`` (``s = |t - t_start|``, host
    synchronisation for the times). Draws that are not increments of the path
    (:meth:`normal`: Langevin corrector noise, re-drawn adaptive steps) come from a separate
    generator seeded with ``entropy + 1``.

    The sample path is determined by ``entropy`` and by the query points (torchsde); one object
    is one consistent path whatever the order of the queries. Its cache is unbounded (every
    queried interval is kept: memory grows with the number of distinct queries).

    Args:
        t_start: start of the interval (sampling: ``T``).
        t_end: end of the interval (sampling: ``t_min``).
        shape: the state's shape ``(B, *dims)``.
        entropy: integer seed (``None``: drawn from ``generator``).
        generator: used only when ``entropy`` is ``None`` (``None``: the global RNG).
        dtype: dtype of the increments (default float64).
        device: device of the increments (default CPU).
        levy_area: ``"space-time"`` (default; what torchsde's ``srk`` needs) or ``"none"``.
    """

    def __init__(
        self,
        t_start: float,
        t_end: float,
        shape: Sequence[int],
        *,
        entropy: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = _F64,
        device: torch.device | str = "cpu",
        levy_area: str = "space-time",
    ) -> None:
        _check_levy_area(levy_area)
        self.t_start, self.t_end = float(t_start), float(t_end)
        if self.t_start == self.t_end:
            raise ValueError(f"t_start and t_end must differ, got {self.t_start}")
        self.shape = tuple(int(n) for n in shape)
        if len(self.shape) < 1 or min(self.shape) < 1:
            raise ValueError(f"shape must be (B, *dims) with positive sizes, got {shape!r}")
        self.entropy = _entropy(generator) if entropy is None else int(entropy)
        self.dtype, self.device, self.levy_area = dtype, torch.device(device), levy_area
        batch = self.shape[0]
        dim = 1
        for n in self.shape[1:]:
            dim *= n
        self.size = (batch, dim)
        self.length = abs(self.t_end - self.t_start)
        # unbounded cache: queries at several resolutions are reused, not recomputed
        self.bm = _interval(
            self.length, self.size, dtype, self.device, self.entropy, levy_area, cache_size=None
        )
        self._extra = torch.Generator().manual_seed((self.entropy + 1) % _MAX_ENTROPY)

    def __repr__(self) -> str:
        return (
            f"BrownianPath(t_start={self.t_start}, t_end={self.t_end}, shape={self.shape}, "
            f"entropy={self.entropy})"
        )

    def _s(self, t: Tensor | float) -> float:
        return float(flip_time(torch.as_tensor(t, dtype=_F64), self.t_start))

    def _check_shape(self, x: Tensor) -> None:
        if tuple(x.shape) != self.shape:
            raise ValueError(
                f"this BrownianPath has shape {self.shape}, the state has {tuple(x.shape)}"
            )

    def increment(self, t0: Tensor, t1: Tensor, x: Tensor) -> Tensor:
        """``(W(s1) - W(s0)) / sqrt(|s1 - s0|)``, reshaped to ``x`` (host synchronisation)."""
        self._check_shape(x)
        s0, s1 = self._s(t0), self._s(t1)
        lo, hi = min(s0, s1), max(s0, s1)
        if hi <= lo:
            raise ValueError(f"the step {float(t0)} -> {float(t1)} has zero length")
        dw = self.bm(lo, hi)
        if s1 < s0:  # integrating towards t_start: the increment runs backwards
            dw = -dw
        return (dw / (hi - lo) ** 0.5).reshape(x.shape).to(dtype=x.dtype, device=x.device)

    def increment_between(self, t0: float, t1: float) -> Tensor:
        """The raw increment ``W(s1) - W(s0)`` (shape ``(B, D)``) between two times."""
        s0, s1 = self._s(t0), self._s(t1)
        lo, hi = min(s0, s1), max(s0, s1)
        dw = self.bm(lo, hi)
        return -dw if s1 < s0 else dw

    def normal(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """A draw from the path's separate generator (not an increment of the path)."""
        z = torch.randn(x.shape, generator=self._extra, dtype=x.dtype)
        return z.to(x.device)

    def brownian_motion(
        self,
        t_start: float,
        t_end: float,
        size: tuple[int, int],
        dtype: torch.dtype,
        device: torch.device,
        levy_area: str = "none",
    ) -> BaseBrownian:
        """This path as seen from ``t_start`` (``s' = |t - t_start|``): the path's own
        ``BrownianInterval`` when ``t_start`` is the path's start, else a shifted view.

        Raises:
            ValueError: a different size, dtype or direction, an interval outside the path,
                or a Levy area the path does not carry.
        """
        _check_levy_area(levy_area)
        if tuple(size) != self.size:
            raise ValueError(f"this BrownianPath has size {self.size}, the solve needs {size}")
        if dtype != self.dtype:
            raise ValueError(f"this BrownianPath has dtype {self.dtype}, the state has {dtype}")
        if levy_area != "none" and levy_area != self.levy_area:
            raise ValueError(
                f"the solver needs the {levy_area!r} Levy area; this BrownianPath carries "
                f"{self.levy_area!r}"
            )
        direction = 1.0 if self.t_end > self.t_start else -1.0
        if (float(t_end) - float(t_start)) * direction <= 0:
            raise ValueError("the solve runs against the direction of the BrownianPath")
        offset, end = self._s(t_start), self._s(t_end)
        if (float(t_start) - self.t_start) * direction < 0 or end > self.length * (1 + 1e-12):
            raise ValueError(
                f"the interval [{t_start}, {t_end}] is not inside the BrownianPath's "
                f"[{self.t_start}, {self.t_end}]"
            )
        if offset == 0.0:
            return self.bm
        return _make_shifted(self.bm, offset)


# ----------------------------------------------------------------------------- torchsde views


def _make_stacked(
    parts: list[BaseBrownian],
    size: tuple[int, int],
    dtype: torch.dtype,
    device: torch.device,
    levy_area: str,
) -> BaseBrownian:
    """Per-sample Brownian motions of shape ``(1, D)`` seen as one of shape ``(B, D)``."""
    import torchsde

    class _Stacked(torchsde.BaseBrownian):
        __slots__ = ()

        def __call__(
            self, ta: Any, tb: Any = None, return_U: bool = False, return_A: bool = False
        ) -> Any:
            outs = [p(ta, tb, return_U=return_U, return_A=return_A) for p in parts]
            if isinstance(outs[0], tuple):
                return tuple(torch.cat(list(o)) for o in zip(*outs, strict=True))
            return torch.cat(outs)

        def __repr__(self) -> str:
            return f"PerSampleBrownian(<{len(parts)} samples>)"

        @property
        def dtype(self) -> torch.dtype:
            return dtype

        @property
        def device(self) -> torch.device:
            return torch.device(device)

        @property
        def shape(self) -> torch.Size:
            return torch.Size(size)

        @property
        def levy_area_approximation(self) -> str:
            return levy_area

    return _Stacked()


def _make_shifted(bm: BaseBrownian, offset: float) -> BaseBrownian:
    """``bm`` seen from ``offset``: ``W'(s) = W(s + offset) - W(offset)``."""
    import torchsde

    class _Shifted(torchsde.BaseBrownian):
        __slots__ = ()

        def __call__(
            self, ta: Any, tb: Any = None, return_U: bool = False, return_A: bool = False
        ) -> Any:
            if tb is None:
                ta, tb = 0.0, ta
            return bm(float(ta) + offset, float(tb) + offset, return_U=return_U, return_A=return_A)

        def __repr__(self) -> str:
            return f"Shifted({bm!r}, offset={offset})"

        @property
        def dtype(self) -> torch.dtype:
            return bm.dtype

        @property
        def device(self) -> torch.device:
            return bm.device

        @property
        def shape(self) -> torch.Size:
            return bm.shape

        @property
        def levy_area_approximation(self) -> str:
            return bm.levy_area_approximation

    return _Shifted()
