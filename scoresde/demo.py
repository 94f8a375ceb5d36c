"""The end-to-end demo behind ``scoresde demo``, and the rate-distortion curve it draws.

``scoresde demo`` (:func:`run_demo`) runs the library's main job on an embedded default, on a
fresh machine and without downloads: it trains a small model on scikit-learn's handwritten
digits (or on two moons with ``--moons``), samples it with several solvers at several network
evaluation budgets, measures the test bits/dim through the probability-flow ODE and through the
ELBO, draws the rate-distortion curve of progressive coding, and writes everything to a run
folder ``runs/demo-<timestamp>/``:

* ``report.md`` -- the numbers, in one page, written again after every stage (so an
  interrupted run leaves a partial report);
* ``checkpoints/`` -- the trained model (:func:`scoresde.load_model` reads the run folder);
  ``config.toml`` (``scoresde train <run>/config.toml`` continues the training),
  ``metrics.csv`` and ``loss.png``;
* ``samples.png`` (every solver at every budget side by side), ``samples/<method>_nfe<N>.png``;
* ``rate_distortion.png`` and, for images, ``progressive.png``.

The work is a sequence of :class:`Stage` s, each returning a :class:`Section` of the report
(:data:`DEFAULT_STAGES`); a caller can pass its own list to :func:`run_demo`. Ctrl-C
(``KeyboardInterrupt``) at any point ends the current stage: the training writes a checkpoint of
the step it reached, the report is written with the sections done so far and a note of where the
run stopped, and :func:`run_demo` returns with :attr:`DemoResult.interrupted_stage` set.

**Rate-distortion** (:func:`rate_distortion`; Ho, Jain & Abbeel 2020, "Denoising Diffusion
Probabilistic Models", sec. 4.3 "Progressive coding", Table 4 and Fig. 5). Read the reverse
process as a code: a receiver that knows the model is sent ``z_T``, then ever less noisy latents
``z_t`` (the encoder ``q(z_t | x) = N(alpha_t x, sigma_t^2 I)``), each at the cost of a KL
divergence in nats. Having received ``z_t`` it can already reconstruct ``x`` as the model's
denoised estimate ``x0_hat(z_t, t)``. In continuous time, with ``lambda`` the log-SNR and one
``eps ~ N(0, I)`` per data point shared by all times (``z_t = alpha_t x + sigma_t eps``):

    rate(t)       = KL(q(z_T | x) || p(z_T)) + 1/2 int_{lambda(T)}^{lambda(t)}
                    ||eps - eps_hat(z_s, s)||^2 dlambda(s)          nats per data point
    distortion(t) = sqrt( ||x - x0_hat(z_t, t)||^2 / D )            RMSE, data units

with ``||eps - eps_hat||^2 = SNR ||x - x0_hat||^2`` (Tweedie), so one network evaluation per
time gives both. ``rate`` is the part of the continuous-time ELBO (Kingma et al. 2021, eq. 17;
:func:`scoresde.elbo`) spent between ``T`` and ``t``: at ``t = t_min`` it is the ELBO's prior and
denoising terms, and adding the reconstruction term gives the whole bound. Ho et al. report the
same two quantities along the discrete chain (rate: cumulative bits received; distortion: RMSE
on the 0..255 scale); here the integral is taken on a log-SNR-uniform grid with the trapezoidal
rule, and the rate is reported in bits per dimension (``nats / (D ln 2)``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from scoresde.data import Dataset
    from scoresde.training import BitsPerDim, LoadedModel, TrainResult

__all__ = [
    "DemoDataset",
    "DemoOptions",
    "DemoResult",
    "Section",
    "Stage",
    "DemoContext",
    "DEFAULT_STAGES",
    "RateDistortion",
    "rate_distortion",
    "run_demo",
    "demo_config",
]

DemoDataset = Literal["digits", "two_moons"]
"""The embedded data sets: scikit-learn's digits (8x8, 17 grey levels) or two moons (2-D)."""

_LN2 = math.log(2.0)


# =========================================================================== rate-distortion
@dataclass(frozen=True)
class RateDistortion:
    """The rate-distortion curve of :func:`rate_distortion`, ordered from ``T`` down to
    ``t_min`` (the order in which a receiver gets the latents). All tensors are float64 on the
    CPU, of shape (K,) for K times.

    Attributes:
        t: the times, decreasing from ``T`` to ``t_min``.
        log_snr: ``lambda(t)``, increasing.
        distortion: RMSE per dimension of the denoised estimate, ``sqrt(mean ||x -
            x0_hat(z_t)||^2 / D)`` over the data points, in data units.
        rate: accumulated rate, bits per dimension, mean over the data points (``rate[0]`` is the
            prior term alone).
        rate_stderr: standard error of ``rate`` over the data points.
        prior: ``KL(q(z_T | x) || p(z_T))`` in bits per dimension, mean over the data points.
        n: number of data points.
        dim: D, dimensions per data point.
    """

    t: Tensor
    log_snr: Tensor
    distortion: Tensor
    rate: Tensor
    rate_stderr: Tensor
    prior: float
    n: int
    dim: int


def rate_distortion(
    model: Any,
    x: Tensor,
    *,
    n_points: int = 64,
    generator: torch.Generator | None = None,
    batch_size: int = 512,
    progress: bool = False,
) -> RateDistortion:
    """Rate against distortion of progressive coding with a score model (Ho et al. 2020,
    sec. 4.3), in continuous time; see the module docstring for the definitions.

    One ``eps ~ N(0, I)`` per data point, drawn first from ``generator`` in float64 with x's
    shape, is shared by all times (common random numbers: the curves are smooth in t). With
    the same generator seed this is the ``eps`` of ``scoresde.elbo(model, x,
    t_sampling="quadrature")``, whose prior plus denoising terms equal ``rate`` at ``t_min`` up
    to the quadrature rule.

    Args:
        model: a score model with ``sde`` and ``x0(x, t)`` (:class:`scoresde.ScoreModel`, an
            oracle).
        x: data, shape (B, *dims), any floating dtype (computed in float64).
        n_points: K >= 2 times, uniform in log-SNR between ``T`` and ``t_min``.
        generator: randomness of ``eps``.
        batch_size: data points per network call.
        progress: a progress bar over the K times.

    Returns:
        :class:`RateDistortion` with (K,) curves.
    """
    from tqdm.auto import tqdm

    from scoresde.elbo import _prior_kl
    from scoresde.likelihood import _check_input, _check_model, _count, _model_dtype, _work_dtype

    sde = _check_model(model)
    if not callable(getattr(model, "x0", None)):
        raise TypeError("model must have a method x0(x, t) (a scoresde.ScoreModel or an oracle)")
    x = _check_input(x, "x")
    n_points = _count("n_points", n_points, minimum=2)
    batch_size = _count("batch_size", batch_size)
    work = _work_dtype(x.device)
    mdtype = _model_dtype(model, work, None)
    dev = x.device
    b, dims = x.shape[0], tuple(x.shape[1:])
    d = math.prod(dims)
    xw = x.detach().to(work)
    gen_device = generator.device if generator is not None else dev
    eps = torch.randn((1, b, *dims), generator=generator, device=gen_device, dtype=work)[0].to(dev)

    ends = sde.log_snr(torch.tensor([sde.T, sde.t_min], dtype=torch.float64))
    lam_grid = torch.linspace(float(ends[0]), float(ends[1]), n_points, dtype=torch.float64)
    t = sde.t_from_log_snr(lam_grid)  # decreasing from T to t_min
    t[0], t[-1] = sde.T, sde.t_min
    alpha, sigma, lam = sde.alpha(t), sde.sigma(t), sde.log_snr(t)
    sq_err = torch.empty(n_points, b, dtype=torch.float64)  # ||x - x0_hat||^2 per data point
    with torch.no_grad():
        for k in tqdm(range(n_points), desc="rate-distortion", disable=not progress, leave=False):
            a_k, s_k = float(alpha[k]), float(sigma[k])
            for i in range(0, b, batch_size):
                xb = xw[i : i + batch_size]
                z = a_k * xb + s_k * eps[i : i + batch_size]
                tt = torch.full((xb.shape[0],), float(t[k]), dtype=torch.float64, device=dev)
                x_hat = model.x0(z.to(mdtype), tt).to(work)
                sq_err[k, i : i + xb.shape[0]] = (x_hat - xb).flatten(1).pow(2).sum(1).cpu()
    snr = torch.exp(lam)
    integrand = snr[:, None] * sq_err  # ||eps - eps_hat||^2, (K, B)
    # trapezoidal rule in lambda, accumulated from lambda(T) upwards
    pieces = 0.5 * (integrand[1:] + integrand[:-1]) * (lam[1:] - lam[:-1])[:, None]
    diffusion = torch.cat([torch.zeros(1, b, dtype=torch.float64), torch.cumsum(pieces, 0)])
    prior = _prior_kl(xw, float(alpha[0]), float(sigma[0]), sde.prior_std).cpu().to(torch.float64)
    rate_nats = prior[None, :] + 0.5 * diffusion  # (K, B)
    to_bpd = 1.0 / (d * _LN2)
    stderr = (
        rate_nats.std(1) / math.sqrt(b) * to_bpd
        if b > 1
        else torch.full((n_points,), math.nan, dtype=torch.float64)
    )
    return RateDistortion(
        t=t,
        log_snr=lam,
        distortion=(sq_err.mean(1) / d).sqrt(),
        rate=rate_nats.mean(1) * to_bpd,
        rate_stderr=stderr,
        prior=float(prior.mean()) * to_bpd,
        n=b,
        dim=d,
    )


# =========================================================================== options, results
@dataclass(frozen=True)
class DemoOptions:
    """What :func:`run_demo` does.

    Attributes:
        dataset: ``"digits"`` (default) or ``"two_moons"``.
        minutes: training budget in wall-clock minutes (evaluation excluded).
        steps: training steps at most (None: as many as ``minutes`` allow, up to 100,000).
        out: the run folder (None: ``runs_dir / "demo-<timestamp>"``). An existing run folder
            with checkpoints is resumed.
        runs_dir: parent of the default run folder.
        seed: seed of the training and of every evaluation.
        threads: torch intra-op threads (default 1: for this small network the fastest on a
            2-core machine that other work shares; 0: torch's default).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        smoke: a tiny, fast version of everything (tests, CI): seconds, not minutes.
        progress: progress bars (None: when stderr is a terminal).
    """

    dataset: DemoDataset = "digits"
    minutes: float = 3.0
    steps: int | None = None
    out: Path | None = None
    runs_dir: Path = Path("runs")
    seed: int = 0
    threads: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    smoke: bool = False
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.dataset not in ("digits", "two_moons"):
            raise ValueError(f"dataset must be 'digits' or 'two_moons', got {self.dataset!r}")
        if isinstance(self.minutes, bool) or not isinstance(self.minutes, (int, float)):
            raise TypeError(f"minutes must be a number, got {self.minutes!r}")
        if not (math.isfinite(self.minutes) and self.minutes > 0):
            raise ValueError(f"minutes must be a finite number > 0, got {self.minutes!r}")
        if self.steps is not None and (
            isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1
        ):
            raise ValueError(f"steps must be an int >= 1 or None, got {self.steps!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(
                f"threads must be an int >= 0 (0: torch's default), got {self.threads!r}"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")


@dataclass(frozen=True)
class Section:
    """One section of the report: a title and its Markdown body (figures linked relative to
    the run folder)."""

    title: str
    body: str


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` did.

    Attributes:
        run_dir: the run folder.
        report: ``run_dir / "report.md"``.
        checkpoint: the newest checkpoint (None if training was interrupted before its first
            step).
        figures: the PNG files written.
        sections: the report's sections, in order.
        completed: every stage ran to its end.
        interrupted_stage: the stage a ``KeyboardInterrupt`` ended, or None.
        seconds: wall-clock time of the whole run.
        stage_seconds: ``(stage name, seconds)`` for every stage started.
        bpd_ode: test bits/dim through the PF-ODE (None if not reached).
        bpd_elbo: test bits/dim bound from the ELBO (None if not reached).
    """

    run_dir: Path
    report: Path
    checkpoint: Path | None
    figures: tuple[Path, ...]
    sections: tuple[Section, ...]
    completed: bool
    interrupted_stage: str | None
    seconds: float
    stage_seconds: tuple[tuple[str, float], ...]
    bpd_ode: float | None
    bpd_elbo: float | None


@dataclass
class DemoContext:
    """The state shared by the stages of one run (mutable working state, not a result).

    Attributes:
        options: the run's options.
        run_dir: the run folder.
        say: prints one line for the user.
        progress: whether to show progress bars.
        device: where the model runs.
        threads: torch intra-op threads of the run.
        train_result: the training's result (after the ``train`` stage).
        loaded: the trained model read back from its checkpoint (EMA weights).
        dataset: the data set.
        figures: PNG files written so far.
        values: named numbers the stages share (``"bpd_ode"``, ``"bpd_elbo"``, ...).
    """

    options: DemoOptions
    run_dir: Path
    say: Callable[[str], None]
    progress: bool
    device: torch.device
    threads: int = 1
    train_result: TrainResult | None = None
    loaded: LoadedModel | None = None
    dataset: Dataset | None = None
    figures: list[Path] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)

    def rel(self, path: Path) -> str:
        """``path`` relative to the run folder (for links in the report)."""
        try:
            return path.relative_to(self.run_dir).as_posix()
        except ValueError:
            return str(path)

    def model_and_data(self) -> tuple[LoadedModel, Dataset]:
        """The trained model and the data set (loaded from the run's checkpoint if needed)."""
        if self.loaded is None:
            from scoresde.training import load_model

            self.loaded = load_model(self.run_dir, device=self.device)
        if self.dataset is None:
            self.dataset = self.loaded.dataset()
        return self.loaded, self.dataset


@dataclass(frozen=True)
class Stage:
    """One step of the demo: ``run(context)`` does the work and returns its report section."""

    name: str
    run: Callable[[DemoContext], Section]


# =========================================================================== configuration
def demo_config(options: DemoOptions, run_dir: Path) -> Any:
    """The training configuration (:class:`scoresde.Config`) of a demo run.

    digits: the U-Net of ``configs/digits.toml`` (1.1M parameters, VP SDE with ``t_min =
    3e-3``, likelihood weighting with importance-sampled t, training on dequantized data) with
    a warm-up of 50 steps and an EMA decay of 0.99 for short runs;
    two moons: the residual MLP of ``configs/two_moons.toml``. Smoke mode shrinks the network
    and the step count.
    """
    from scoresde.config import from_dict

    o = options
    train: dict[str, Any] = {
        "out_dir": str(run_dir),
        "max_minutes": float(o.minutes),
        "seed": o.seed,
        "threads": o.threads,
        "device": o.device,
        "log_every": 50,
        "keep_last": 2,
        "resume": True,
        "progress": o.progress is not False,
        "tensorboard": False,
    }
    # the demo evaluates the model itself, after training
    evaluation: dict[str, Any] = {"every": 0, "at_end": False}
    if o.dataset == "digits":
        mapping: dict[str, Any] = {
            "data": {"name": "digits", "test_fraction": 0.2, "seed": 0, "dequantize": True},
            "sde": {"name": "vp", "t_min": 3e-3},
            "model": {
                "arch": "unet",
                "prediction": "eps",
                "base_channels": 32,
                "channel_mult": [1, 2, 2],
                "num_res_blocks": 1,
                "attn_resolutions": [4],
            },
            "loss": {"weighting": "likelihood", "t_sampler": "importance", "reduce": "sum"},
            # a short warm-up and a short EMA (half-life 69 steps): the demo trains about 1,000
            # steps, and an EMA of decay 0.998 (configs/digits.toml, for 3,500 steps) would
            # still hold 56% of the initial weights after 300 steps (torch's EMA has no
            # bias correction)
            "optim": {
                "lr": 1e-3,
                "warmup_steps": 50,
                "schedule": "constant",
                "grad_clip": 1.0,
                "ema_decay": 0.99,
            },
            "train": {**train, "steps": 100_000, "batch_size": 128, "ckpt_every": 250},
        }
        if o.smoke:
            mapping["model"].update(
                base_channels=8, channel_mult=[1, 2], attn_resolutions=[], groups=4
            )
            mapping["optim"].update(warmup_steps=5, ema_decay=0.9)
            mapping["train"].update(steps=20, batch_size=32, log_every=5, ckpt_every=10)
    else:
        mapping = {
            "data": {"name": "two_moons", "n_train": 10_000, "n_test": 2_000, "seed": 0},
            "sde": {"name": "vp", "beta_min": 0.1, "beta_max": 20.0},
            "model": {"arch": "mlp", "prediction": "eps", "width": 128, "depth": 3},
            "loss": {"weighting": "eps", "t_sampler": "low_discrepancy"},
            "optim": {
                "lr": 2e-3,
                "warmup_steps": 100,
                "schedule": "cosine",
                "min_lr": 1e-4,
                "grad_clip": 1.0,
                "ema_decay": 0.995,
            },
            "train": {**train, "steps": 4000, "batch_size": 256, "ckpt_every": 500},
        }
        if o.smoke:
            mapping["model"].update(width=32, depth=1)
            mapping["optim"].update(warmup_steps=5, ema_decay=0.9)
            mapping["train"].update(steps=20, batch_size=64, log_every=5, ckpt_every=10)
    if o.steps is not None:
        mapping["train"]["steps"] = o.steps
    mapping["eval"] = evaluation
    return from_dict(mapping, source="scoresde demo")


@dataclass(frozen=True)
class _Plan:
    """The evaluation sizes of a run (full or smoke)."""

    methods: tuple[str, ...]
    nfes: tuple[int, ...]
    n_samples: int  # per (method, NFE): the metrics' sample size
    n_shown: int  # samples drawn in each figure cell
    n_test: int | None  # test points for the likelihoods (None: all)
    ode_rtol: float
    divergence: Literal["exact", "hutchinson"]
    elbo_samples: int
    rd_points: int
    rd_n: int


def _plan(options: DemoOptions) -> _Plan:
    images = options.dataset == "digits"
    methods = ("euler", "heun", "dpmpp_2m", "euler_maruyama")
    if options.smoke:
        return _Plan(methods, (4, 8), 16, 16, 16, 1e-2, "hutchinson", 2, 8, 16)
    return _Plan(
        methods=methods,
        nfes=(10, 20, 50),
        n_samples=256 if images else 1000,
        n_shown=36 if images else 1000,
        n_test=None if images else 1000,
        ode_rtol=1e-3,
        divergence="hutchinson" if images else "exact",
        elbo_samples=16,
        rd_points=64,
        rd_n=359 if images else 1000,
    )


# =========================================================================== helpers
def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _fmt_ci(mean: float, ci: float) -> str:
    return f"{mean:.4f} ± {ci:.4f}" if math.isfinite(ci) else f"{mean:.4f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _levels_scale(ds: Dataset) -> tuple[float, str]:
    """Factor from data units to the unit distortions are reported in, and its name."""
    if ds.levels is not None and ds.data_range is not None:
        width = (ds.data_range[1] - ds.data_range[0]) / (ds.levels - 1)
        return 1.0 / width, f"grey levels (0..{ds.levels - 1})"
    return 1.0, "data units"


def _eval_seed(options: DemoOptions, stream: int) -> int:
    return int(np.random.SeedSequence([options.seed, 0xDE70, stream]).generate_state(1)[0])


# =========================================================================== stages
def _stage_train(ctx: DemoContext) -> Section:
    from scoresde.data import baselines
    from scoresde.plots import save_loss_curve
    from scoresde.training import train

    cfg = demo_config(ctx.options, ctx.run_dir)
    name = "scikit-learn's digits" if ctx.options.dataset == "digits" else "two moons"
    ctx.say(
        f"[train] {name}: up to {cfg.train.steps} steps or {cfg.train.max_minutes:g} minutes "
        f"of training -> {ctx.run_dir}"
    )
    res = train(cfg)
    ctx.train_result = res
    loaded, ds = ctx.model_and_data()
    n_params = sum(p.numel() for p in loaded.net.parameters())
    figures = []
    try:
        bl: list[tuple[str, float]] = []
        if ds.levels is not None:
            b = baselines(ds)
            bl.append((f"per-pixel categorical ({b.categorical:.2f})", b.categorical))
        loss_png = save_loss_curve(
            ctx.run_dir / "metrics.csv",
            ctx.run_dir / "loss.png",
            baselines=bl,
            title=f"{ds.name}: training loss",
        )
        figures.append(loss_png)
    except ValueError as exc:  # no logged rows (a run of fewer steps than log_every)
        ctx.say(f"[train] no loss curve: {exc}")
    ctx.figures.extend(figures)
    ctx.say(
        f"[train] step {res.step} ({res.train_seconds:.0f} s of training, "
        f"{res.examples_per_s:.0f} examples/s), checkpoint {res.checkpoint}"
    )
    stop = (
        "the time budget (`--minutes`)"
        if res.time_limit_reached
        else f"the step budget ({cfg.train.steps} steps)"
    )
    shape = "x".join(str(s) for s in ds.shape)
    rows = [
        ("data", f"{ds.name}: {ds.train.shape[0]} training / {ds.test.shape[0]} test, {shape}"),
        ("SDE", f"`{loaded.model.sde!r}`"),
        ("network", f"{type(loaded.net).__name__}, {n_params:,} parameters, predicts eps"),
        ("loss", f"`{cfg.loss.weighting}` weighting, `{cfg.loss.t_sampler}` t sampler"),
        (
            "optimizer",
            f"AdamW lr {cfg.optim.lr:g}, {cfg.optim.warmup_steps} warm-up steps, "
            f"clip {cfg.optim.grad_clip:g}, EMA {cfg.optim.ema_decay:g}",
        ),
        ("steps", f"{res.step} (stopped by {stop}), batch {cfg.train.batch_size}"),
        ("training time", f"{res.train_seconds:.1f} s ({res.examples_per_s:.0f} examples/s)"),
        ("final training loss", f"{res.final_loss:.4g}"),
        ("checkpoint", f"`{ctx.rel(res.checkpoint) if res.checkpoint else 'none'}` (EMA used)"),
    ]
    body = [_table(("", "value"), rows)]
    if figures:
        body.append(f"![training loss]({ctx.rel(figures[0])})")
    body.append(
        f"Continue training: `scoresde train {ctx.run_dir / 'config.toml'} "
        f"train.max_minutes=10` (resumes from the checkpoint; the budget counts the minutes "
        f"already trained). Load it in Python: `sd.load_model({str(ctx.run_dir)!r})`."
    )
    return Section("Training", "\n\n".join(body))


def _draw(
    model: Any, method: str, nfe: int, shape: tuple[int, ...], n: int, seed: int, dev: Any
) -> tuple[Tensor, int, float]:
    from scoresde.sampling import sample

    t0 = time.perf_counter()
    res = sample(model, method, nfe, shape=(n, *shape), seeds=range(seed, seed + n), device=dev)
    return res.x.detach().float().cpu(), res.nfe, time.perf_counter() - t0


def _stage_samples(ctx: DemoContext) -> Section:
    from tqdm.auto import tqdm

    from scoresde.metrics import median_distance, mmd, sliced_wasserstein
    from scoresde.plots import image_grid, save_samples
    from scoresde.sampling import solvers_available

    loaded, ds = ctx.model_and_data()
    plan = _plan(ctx.options)
    kinds = {s.name: s for s in solvers_available()}
    seed = _eval_seed(ctx.options, 1)
    test = ds.test[:1000].float()  # digits: all 359; two moons: 1,000 of 2,000
    images = len(ds.shape) == 3
    # one kernel scale for every row: the median pairwise distance of the test split
    scale = median_distance(test.flatten(1).double())
    n_ref = min(plan.n_samples, ds.train.shape[0])
    ref = ds.train[:n_ref].float()
    g = torch.Generator().manual_seed(seed)
    floor_sw = sliced_wasserstein(ref, test, generator=g)
    floor_mmd = mmd(ref, test, scale=scale)
    ctx.say(
        f"[samples] {len(plan.methods)} solvers x NFE {list(plan.nfes)}, "
        f"{plan.n_samples} samples each"
    )
    cells: dict[tuple[str, int], Tensor] = {}
    rows = []
    jobs = [(m, k) for m in plan.methods for k in plan.nfes]
    bar = tqdm(jobs, desc="samples", disable=not ctx.progress, leave=False)
    for method, nfe in bar:
        bar.set_postfix_str(f"{method} NFE {nfe}")
        x, used, seconds = _draw(
            loaded.model, method, nfe, ds.shape, plan.n_samples, seed, ctx.device
        )
        finite = bool(torch.isfinite(x).all())
        g = torch.Generator().manual_seed(seed)
        sw = sliced_wasserstein(x, test, generator=g) if finite else math.nan
        dist = mmd(x, test, scale=scale) if finite else math.nan
        cells[(method, nfe)] = x[: plan.n_shown]
        png = save_samples(
            x[: min(64, plan.n_samples)] if images else x,
            ctx.run_dir / "samples" / f"{method}_nfe{nfe}.png",
            data_range=ds.data_range,
            reference=None if images else test,
            title=f"{method}, NFE {used}",
        )
        ctx.figures.append(png)
        info = kinds[method]
        rows.append(
            (
                f"`{method}`",
                f"{info.kind.upper()}, order {info.order}",
                str(used),
                f"{sw:.4f}",
                f"{dist:.4f}",
                f"{seconds:.2f}",
            )
        )
    # the overview figure: solvers in rows, budgets in columns
    fig = _figure(2.2 * len(plan.nfes) + 0.6, 2.2 * len(plan.methods) + 0.4)
    for i, method in enumerate(plan.methods):
        for j, nfe in enumerate(plan.nfes):
            ax = fig.add_subplot(len(plan.methods), len(plan.nfes), i * len(plan.nfes) + j + 1)
            x = cells[(method, nfe)]
            if images:
                grid = image_grid(x, data_range=ds.data_range)
                ax.imshow(grid[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.scatter(test[:, 0], test[:, 1], s=1, c="0.8", rasterized=True)
                pts = x[torch.isfinite(x).all(1)]
                ax.scatter(pts[:, 0], pts[:, 1], s=1, c="C0", rasterized=True)
                lo, hi = test.min(0).values, test.max(0).values
                pad = 0.25 * (hi - lo)
                ax.set_xlim(float(lo[0] - pad[0]), float(hi[0] + pad[0]))
                ax.set_ylim(float(lo[1] - pad[1]), float(hi[1] + pad[1]))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"NFE {nfe}", fontsize=10)
            if j == 0:
                ax.set_ylabel(method, fontsize=10)
    fig.suptitle(f"{ds.name}: samples (the same initial noise in every cell)", fontsize=11)
    fig.tight_layout()
    overview = ctx.run_dir / "samples.png"
    fig.savefig(overview)
    ctx.figures.append(overview)
    table = _table(
        ("method", "kind", "NFE", "sliced W2 to test", "MMD to test", "seconds"),
        [
            *rows,
            (
                f"*{n_ref} training points (reference)*",
                "data",
                "-",
                f"{floor_sw:.4f}",
                f"{floor_mmd:.4f}",
                "-",
            ),
        ],
    )
    body = (
        f"{plan.n_samples} samples per row, drawn from the same seeds (sample i starts from "
        f"the noise of seed {seed} + i, so the ODE solvers' cells show the same digits as they "
        "converge). Distances to the test split (flattened, data units): the sliced "
        "2-Wasserstein distance (256 directions) and the kernel MMD (Gaussian kernels at 0.5, "
        "1 and 2 times the median distance of the test split). The reference row is the "
        "distance of as many *training* points to the test split: the floor at this sample "
        "size. `euler_maruyama` integrates the reverse SDE, the others the probability-flow "
        "ODE.\n\n" + table + f"\n\n![samples]({ctx.rel(overview)})\n\nEach cell separately: "
        "`samples/<method>_nfe<N>.png`."
    )
    return Section("Samples: three ODE solvers and one SDE solver at several budgets", body)


def _stage_likelihood(ctx: DemoContext) -> Section:
    from scoresde.data import baselines
    from scoresde.training import bits_per_dim_sharded

    loaded, ds = ctx.model_and_data()
    plan = _plan(ctx.options)
    test = ds.test if plan.n_test is None else ds.test[: plan.n_test]
    test = test.to(ctx.device)
    common: dict[str, Any] = {
        "levels": ds.levels,
        "data_range": ds.data_range,
        "batch_size": 128 if len(ds.shape) == 3 else 500,
        "seed": _eval_seed(ctx.options, 2),
        "progress": ctx.progress,
    }
    ctx.say(
        f"[likelihood] {test.shape[0]} test points: PF-ODE (dopri5, rtol = atol = "
        f"{plan.ode_rtol:g}, {plan.divergence} divergence), then the ELBO"
    )
    ode: BitsPerDim | None = bits_per_dim_sharded(
        loaded.model,
        test,
        kind="ode",
        ode_method="dopri5",
        rtol=plan.ode_rtol,
        atol=plan.ode_rtol,
        divergence=plan.divergence,
        **common,
    )
    assert ode is not None  # one process: rank 0
    ctx.values["bpd_ode"] = ode.mean
    ctx.say(f"[likelihood] PF-ODE: {_fmt_ci(ode.mean, ode.ci95)} bits/dim ({ode.seconds:.0f} s)")
    bound: BitsPerDim | None = bits_per_dim_sharded(
        loaded.model,
        test,
        kind="elbo",
        elbo_samples=plan.elbo_samples,
        dequantized=loaded.config.data.dequantize,
        **common,
    )
    assert bound is not None
    ctx.values["bpd_elbo"] = bound.mean
    ctx.say(f"[likelihood] ELBO: {_fmt_ci(bound.mean, bound.ci95)} bits/dim")
    rows = [
        (
            "**PF-ODE** (exact change of variables)",
            f"**{_fmt_ci(ode.mean, ode.ci95)}**",
            f"{ode.nfe:.0f}",
            f"{ode.seconds:.1f}",
        ),
        (
            "ELBO (upper bound on bits/dim)",
            _fmt_ci(bound.mean, bound.ci95),
            f"{bound.nfe:.0f}",
            f"{bound.seconds:.1f}",
        ),
    ]
    if ds.levels is not None:
        b = baselines(ds)
        ctx.values["bpd_categorical"] = b.categorical
        rows += [
            (
                "baseline: per-pixel categorical (from the training split)",
                f"{b.categorical:.4f}",
                "-",
                "-",
            ),
            (f"baseline: uniform over {ds.levels} levels", f"{b.uniform:.4f}", "-", "-"),
        ]
        units = (
            "Discrete data: bits/dim of the data point's bin, with one uniform dequantization "
            "draw (the Jensen bound of `sd.log_likelihood`), independent of the data's scaling."
        )
    else:
        units = "Continuous data: bits/dim of the density in the data's own units."
    div = (
        "a Hutchinson estimate of the divergence with one Rademacher probe"
        if plan.divergence == "hutchinson"
        else "the exact divergence"
    )
    body = (
        f"{test.shape[0]} test points, EMA weights. The PF-ODE value integrates the "
        f"probability-flow ODE with dopri5 (rtol = atol = {plan.ode_rtol:g}) and {div} "
        f"(`sd.log_likelihood`); the ELBO is the continuous-time bound with "
        f"{plan.elbo_samples} importance-sampled (t, eps) draws per point (`sd.elbo`). "
        f"{units} ± is the half-width of the 95% interval of the mean over the test points. "
        "NFE: network evaluations per point (PF-ODE: per batched solve).\n\n"
        + _table(("estimate", "bits/dim", "NFE", "seconds"), rows)
        + "\n\nThe two numbers describe two models with the same score network: the PF-ODE "
        "value is the exact bits/dim of the probability-flow model (up to the solver and the "
        "divergence estimate), the ELBO bounds the bits/dim of the reverse-SDE model from "
        "above. The bound can therefore lie below the PF-ODE value when the score is not "
        "exact (Song et al. 2021 report such pairs too); each is an estimate with the "
        "interval shown."
    )
    return Section("Test bits/dim: probability-flow ODE and ELBO", body)


def _stage_rate_distortion(ctx: DemoContext) -> Section:
    loaded, ds = ctx.model_and_data()
    plan = _plan(ctx.options)
    x = ds.test[: plan.rd_n].to(ctx.device)
    ctx.say(f"[rate-distortion] {x.shape[0]} test points, {plan.rd_points} times")
    g = torch.Generator(ctx.device).manual_seed(_eval_seed(ctx.options, 3))
    rd = rate_distortion(
        loaded.model, x, n_points=plan.rd_points, generator=g, progress=ctx.progress
    )
    factor, unit = _levels_scale(ds)
    dist = rd.distortion * factor
    # the figure: rate and distortion against t, and distortion against rate (Ho et al. Fig. 5)
    fig = _figure(11, 3.8)
    ax1 = fig.add_subplot(1, 3, 1)
    ax1.plot(rd.t.numpy(), dist.numpy(), color="C3")
    ax1.set_yscale("log")
    ax1.set_xlabel("t (the receiver holds z_t)")
    ax1.set_ylabel(f"distortion: RMSE, {unit}")
    ax1.invert_xaxis()
    ax1.set_title("distortion")
    ax2 = fig.add_subplot(1, 3, 2)
    ax2.plot(rd.t.numpy(), rd.rate.numpy(), color="C0")
    ax2.set_xlabel("t (the receiver holds z_t)")
    ax2.set_ylabel("rate: accumulated bits/dim")
    ax2.invert_xaxis()
    ax2.set_title("rate")
    ax3 = fig.add_subplot(1, 3, 3)
    ax3.plot(rd.rate.numpy(), dist.numpy(), color="C2")
    ax3.set_yscale("log")
    ax3.set_xlabel("rate (bits/dim)")
    ax3.set_ylabel(f"distortion: RMSE, {unit}")
    ax3.set_title("rate-distortion")
    fig.suptitle(f"{ds.name}: progressive coding with the trained model", fontsize=11)
    fig.tight_layout()
    png = ctx.run_dir / "rate_distortion.png"
    fig.savefig(png)
    ctx.figures.append(png)
    figs = [f"![rate-distortion]({ctx.rel(png)})"]
    picks = sorted({int(round(i)) for i in np.linspace(0, len(rd.t) - 1, 9)})
    if len(ds.shape) == 3:
        prog = _progressive_figure(ctx, loaded, ds, x[:8], rd.t[picks])
        figs.append(
            f"What the receiver can reconstruct from `z_t` (the denoised estimate `x0_hat(z_t, "
            f"t)`) at the times of the table's rows, for 8 test images (last column: the "
            f"images):\n\n![progressive]({ctx.rel(prog)})"
        )
    rows = [
        (
            f"{float(rd.t[i]):.4g}",
            f"{float(rd.log_snr[i]):.2f}",
            f"{float(rd.rate[i]):.4f}",
            f"{float(dist[i]):.4f}",
        )
        for i in picks
    ]
    last = len(rd.t) - 1
    total = float(rd.rate[last])
    units = (
        " as continuous data, in their own units (section 3 counts bins of the discrete data, "
        "another unit)"
        if ds.levels is not None
        else ""
    )
    ctx.values["rate_at_t_min"] = total
    # where the distortion first drops to a small threshold, and how much rate that took
    if ds.levels is not None:
        threshold, what = 1.0, "one grey level"
    else:
        threshold = 0.1 * float(ds.test.double().std(0).mean())
        what = f"{threshold:.3g} (a tenth of the data's standard deviation)"
    below = (dist <= threshold).nonzero()
    if below.numel():
        i = int(below[0])
        spent = float(rd.rate[i])
        reach = (
            f"The distortion first falls to {what} at t = {float(rd.t[i]):.3g}, after "
            f"{spent:.4f} bits/dim: {100 * spent / total:.0f}% of the rate at `t_min` brings "
            f"the distortion from {float(dist[0]):.3g} down to {float(dist[i]):.3g}, the "
            f"remaining {100 * (1 - spent / total):.0f}% from there to {float(dist[last]):.3g}."
        )
    else:
        reach = f"The distortion stays above {what} on the whole grid."
    body = (
        "The reverse process read as a code (Ho et al. 2020, sec. 4.3): having received "
        "`z_t`, the receiver reconstructs the data point as `x0_hat(z_t, t)`. **Distortion** "
        f"is the RMSE per dimension of that estimate, in {unit}; **rate** is the number of "
        "bits received so far, `KL(q(z_T|x) || p(z_T)) + 1/2 int_{lambda(T)}^{lambda(t)} "
        "||eps - eps_hat(z_s)||^2 dlambda`, in bits/dim (the part of the continuous-time ELBO "
        "spent between T and t; definitions in `docs/getting-started.md` and "
        f"`scoresde.demo.rate_distortion`). {rd.n} test points with one noise draw each, "
        f"{len(rd.t)} times uniform in log-SNR, trapezoidal rule.\n\n"
        + _table(("t", "log-SNR", "rate (bits/dim)", f"distortion (RMSE, {unit})"), rows)
        + f"\n\nAt `t_min` the rate is {total:.4f} ± {float(rd.rate_stderr[last]):.4f} "
        f"bits/dim (standard error), of which the prior term is {rd.prior:.2e}. {reach} "
        "With the reconstruction term at `t_min` (the bits of x given z_{t_min}) it is the "
        f"continuous-time ELBO of the test points{units}.\n\n" + "\n\n".join(figs)
    )
    return Section("Rate-distortion of progressive coding", body)


def _progressive_figure(ctx: DemoContext, loaded: Any, ds: Dataset, x: Tensor, t: Tensor) -> Path:
    """Denoised estimates x0_hat(z_t, t) of a few test images at the times t, plus the images."""
    sde = loaded.model.sde
    g = torch.Generator().manual_seed(_eval_seed(ctx.options, 4))
    eps = torch.randn(x.shape, generator=g).to(x)
    cols = []
    with torch.no_grad():
        for tk in t:
            tt = float(tk)
            z = float(sde.alpha(tt)) * x + float(sde.sigma(tt)) * eps
            t_rows = torch.full((x.shape[0],), tt, dtype=torch.float64, device=x.device)
            cols.append(loaded.model.x0(z, t_rows).cpu())
    cols.append(x.cpu())
    stacked = torch.stack(cols, 1).reshape(-1, *x.shape[1:])  # row = image, column = time
    from scoresde.plots import image_grid

    grid = image_grid(stacked, data_range=ds.data_range, nrow=len(cols))
    fig = _figure(7, 6.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(grid[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([(i + 0.5) * (grid.shape[1] / len(cols)) for i in range(len(cols))])
    ax.set_xticklabels([f"{float(v):.2g}" for v in t] + ["x"], fontsize=8)
    ax.set_yticks([])
    ax.set_xlabel("t of z_t (T on the left)")
    ax.set_title("x0_hat(z_t, t)")
    fig.tight_layout()
    path = ctx.run_dir / "progressive.png"
    fig.savefig(path)
    ctx.figures.append(path)
    return path


def _stage_solvers(ctx: DemoContext) -> Section:
    """The solver comparison (:func:`scoresde.compare_solvers`) on the trained model: endpoint
    error against a tight adaptive reference solve from the same noise, distances to the test
    split, the Pareto front and a recommendation per budget; then the recommended method's
    time grid at the smallest budget tuned on a calibration batch (:func:`scoresde.tune_grid`)
    and saved for ``scoresde sample --grid``."""
    from scoresde.selection import compare_solvers, tune_grid

    loaded, ds = ctx.model_and_data()
    smoke = ctx.options.smoke
    methods = (
        ("euler", "heun", "dpmpp_2m")
        if smoke
        else ("euler", "heun", "dpmpp_2m", "unipc", "ipndm", "plms")
    )
    budgets = (4, 8) if smoke else (5, 10, 20)
    n = 16 if smoke else 64
    tol = 1e-4  # float32 network: the reference is ~30x tighter than the best run at 20 NFE
    seed = _eval_seed(ctx.options, 4)
    ctx.say(f"[solvers] {len(methods)} ODE solvers x NFE {list(budgets)}, {n} samples each")
    report = compare_solvers(
        loaded.model,
        methods=list(methods),
        nfe=budgets,
        grids=("default",) if smoke else ("default", "logsnr"),
        n=n,
        reference_tol=tol,
        data=ds.test.float(),
        generator=torch.Generator().manual_seed(seed),
        progress=ctx.progress,
    )
    out = ctx.run_dir / "solvers"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report.to_markdown() + "\n")
    report.to_csv(out / "report.csv")
    report.to_json(out / "report.json")
    report.plot(out / "error_vs_nfe.png")
    ctx.figures.append(out / "error_vs_nfe.png")
    rec = report.recommendation(budgets[0])
    tuned = tune_grid(
        loaded.model,
        rec.method,
        rec.budget,
        n=16 if smoke else 64,
        n_held_out=16 if smoke else 64,
        iterations=5 if smoke else 30,
        reference_tol=tol,
        shape=ds.shape,
        generator=torch.Generator().manual_seed(seed + 1),
        progress=ctx.progress,
    )
    grid_file = tuned.save(out / f"grid_{rec.method}_nfe{rec.budget}.json")
    ctx.values["solver_best_error"] = rec.value
    body = (
        f"Every method on its default grid{'' if smoke else ' and on the logsnr grid'}"
        f" at each budget, {n} samples from the same initial noise; endpoint error |x - x_ref| "
        f"/ sqrt(D) against a {report.reference.method} solve at rtol {report.reference.rtol:g} "
        f"({report.reference.nfe} NFE), distances against the test split. Full report: "
        f"[`solvers/report.md`](solvers/report.md) (CSV and JSON beside it); re-run it with "
        f"`scoresde bench {ctx.run_dir}`.\n\n"
        + report.summary().replace("## ", "#### ")
        + f"\n\n![error against NFE]({ctx.rel(out / 'error_vs_nfe.png')})\n\n"
        f"**Tuned time grid** for `{rec.method}` at NFE {rec.budget} (softmax increments in "
        f"log-SNR, {tuned.optimizer}, {tuned.evaluations} solves of a {tuned.n_calibration}-"
        f"sample calibration batch, {tuned.seconds:.1f} s): calibration RMS error "
        f"{tuned.calibration_start:.4g} -> {tuned.calibration_tuned:.4g}; on held-out noise "
        f"{tuned.held_out_start.rmse:.4g} -> {tuned.held_out_tuned.rmse:.4g} (a gain of "
        f"{tuned.held_out_gain:.2f}x; below 1 the tuning overfitted the calibration batch and "
        f"the default grid should be kept). Saved as `{ctx.rel(grid_file)}`: "
        f"`scoresde sample {ctx.run_dir} --method {rec.method} --nfe {rec.budget} --grid "
        f"{grid_file}`."
    )
    return Section("Choosing a solver for this model", body)


DEFAULT_STAGES: tuple[Stage, ...] = (
    Stage("train", _stage_train),
    Stage("samples", _stage_samples),
    Stage("likelihood", _stage_likelihood),
    Stage("rate-distortion", _stage_rate_distortion),
    Stage("solvers", _stage_solvers),
)
"""The stages of ``scoresde demo``, in order."""


# =========================================================================== the report
def _machine(threads: int) -> str:
    return (
        f"{platform.system()} {platform.machine()}, Python {platform.python_version()}, torch "
        f"{torch.__version__}, {threads} intra-op thread{'s' if threads != 1 else ''}"
    )


def _write_report(
    ctx: DemoContext,
    sections: Sequence[Section],
    timings: Sequence[tuple[str, float]],
    *,
    status: str,
    started: str,
) -> Path:
    from scoresde.checkpoint import atomic_write_bytes

    o = ctx.options
    head = [
        f"# scoresde demo: {o.dataset}{' (smoke)' if o.smoke else ''}",
        "",
        f"**Status: {status}**",
        "",
        _table(
            ("", ""),
            [
                ("run folder", f"`{ctx.run_dir}`"),
                ("started", started),
                ("machine", _machine(ctx.threads) + f", device {ctx.device}"),
                (
                    "stages",
                    ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings) or "-",
                ),
            ],
        ),
    ]
    parts = ["\n".join(head)]
    parts += [f"## {i}. {s.title}\n\n{s.body}" for i, s in enumerate(sections, 1)]
    text = "\n\n".join(parts) + "\n"
    path = ctx.run_dir / "report.md"
    atomic_write_bytes(path, text.encode())
    return path


def _interrupted_section(ctx: DemoContext, stage: str) -> Section:
    from scoresde.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(ctx.run_dir / "checkpoints", warn=False)
    lines = [f"The run was interrupted (Ctrl-C) during the stage **{stage}**."]
    if ckpt is None:
        lines.append("No checkpoint was written (training had not completed a step).")
    else:
        lines.append(
            f"The newest checkpoint is `{ctx.rel(ckpt)}`; it loads with "
            f"`sd.load_model({str(ctx.run_dir)!r})`. To go on:\n\n"
            f"- continue training: `scoresde train {ctx.run_dir / 'config.toml'}`\n"
            f"- the whole demo on this run folder: `scoresde demo --out {ctx.run_dir}"
            f"{' --moons' if ctx.options.dataset == 'two_moons' else ''}` (resumes training)\n"
            f"- samples: `scoresde sample {ctx.run_dir} --method dpmpp_2m --nfe 20`\n"
            f"- test bits/dim: `scoresde likelihood {ctx.run_dir} --elbo`"
        )
    return Section("Interrupted", "\n\n".join(lines))


def _default_run_dir(runs_dir: Path) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = runs_dir / f"demo-{stamp}"
    k = 2
    while path.exists():
        path = runs_dir / f"demo-{stamp}-{k}"
        k += 1
    return path


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_demo(
    options: DemoOptions | None = None,
    *,
    stages: Sequence[Stage] | None = None,
    say: Callable[[str], None] | None = None,
    callback: Callable[[str, str], None] | None = None,
) -> DemoResult:
    """Run the demo: train, sample, evaluate, write ``report.md`` and the figures.

    Each stage's section is added to ``report.md`` as soon as the stage ends. A
    ``KeyboardInterrupt`` (Ctrl-C) ends the run: the training writes a checkpoint of the step
    it reached, the report is written with the sections done and an "Interrupted" section (how
    to continue), and the result says which stage was interrupted. Other exceptions propagate
    after the partial report is written.

    Args:
        options: what to run (default :class:`DemoOptions()`: digits, 3 minutes of training).
        stages: the stages to run (default :data:`DEFAULT_STAGES`); the first must train the
            model, or the run folder must already hold a checkpoint.
        say: prints one line of progress (default: ``print``).
        callback: ``callback(stage, event)`` with event ``"start"`` or ``"end"`` around every
            stage (an interruption raised from it is handled like Ctrl-C).

    Returns:
        :class:`DemoResult`.
    """
    options = options or DemoOptions()
    if not isinstance(options, DemoOptions):
        raise TypeError(f"options must be a DemoOptions, got {type(options).__name__}")
    stages = tuple(DEFAULT_STAGES if stages is None else stages)
    if not stages or not all(isinstance(s, Stage) for s in stages):
        raise TypeError("stages must be a non-empty sequence of scoresde.demo.Stage")
    say = say or (lambda line: print(line, flush=True))
    run_dir = Path(options.out) if options.out is not None else _default_run_dir(options.runs_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if options.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch.cuda.is_available() is False")
    use_cuda = options.device == "cuda" or (options.device == "auto" and torch.cuda.is_available())
    progress = sys.stderr.isatty() if options.progress is None else bool(options.progress)
    ctx = DemoContext(
        options=replace(options, out=run_dir),
        run_dir=run_dir,
        say=say,
        progress=progress,
        device=torch.device("cuda" if use_cuda else "cpu"),
        threads=options.threads or torch.get_num_threads(),
    )
    started = _dt.datetime.now().isoformat(timespec="seconds")
    sections: list[Section] = []
    timings: list[tuple[str, float]] = []
    interrupted: str | None = None
    t_start = time.perf_counter()
    _write_report(ctx, sections, timings, status="running", started=started)
    with _threads(options.threads):
        for stage in stages:
            t0 = time.perf_counter()
            done = False
            try:
                if callback is not None:
                    callback(stage.name, "start")
                sections.append(stage.run(ctx))
                done = True
                timings.append((stage.name, time.perf_counter() - t0))
                _write_report(
                    ctx, sections, timings, status=f"running (done: {stage.name})", started=started
                )
                if callback is not None:
                    callback(stage.name, "end")
            except KeyboardInterrupt:
                if not done:
                    timings.append((stage.name, time.perf_counter() - t0))
                interrupted = stage.name
                sections.append(_interrupted_section(ctx, stage.name))
                say(f"[{stage.name}] interrupted")
                break
            except BaseException:
                if not done:
                    timings.append((stage.name, time.perf_counter() - t0))
                _write_report(
                    ctx, sections, timings, status=f"FAILED in stage {stage.name}", started=started
                )
                raise
    status = (
        f"INTERRUPTED during stage {interrupted} -- partial report" if interrupted else "complete"
    )
    report = _write_report(ctx, sections, timings, status=status, started=started)
    from scoresde.checkpoint import latest_checkpoint

    return DemoResult(
        run_dir=run_dir,
        report=report,
        checkpoint=latest_checkpoint(run_dir / "checkpoints", warn=False),
        figures=tuple(ctx.figures),
        sections=tuple(sections),
        completed=interrupted is None,
        interrupted_stage=interrupted,
        seconds=time.perf_counter() - t_start,
        stage_seconds=tuple(timings),
        bpd_ode=ctx.values.get("bpd_ode"),
        bpd_elbo=ctx.values.get("bpd_elbo"),
    )
