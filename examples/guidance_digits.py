"""Class-conditional digits: classifier-free guidance and inpainting, measured.

Trains a class-conditional residual MLP on scikit-learn's digits with label dropout
(``configs/digits_cond.toml``; classifier-free guidance, Ho & Salimans 2022), or loads a
checkpoint, then

1. **guidance**: draws samples of every class at several guidance scales w with
   :class:`scoresde.CFGModel` and measures how often a logistic-regression classifier trained
   on the real training digits recognises the requested class, how sure it is, and how
   diverse the samples of a class are (mean pairwise distance, relative to the real test
   digits of that class);
2. **inpainting**: fills in held-out test digits (bottom half missing; a random half of the
   pixels missing) with replacement (Song et al. 2021, app. I.2) and RePaint resampling
   (Lugmayr et al. 2022) through :func:`scoresde.inpaint`, and measures the error on the
   missing pixels (grey levels, 0..16) and the classifier's accuracy on the completed digits
   against simple baselines (the per-pixel training mean; the training digit nearest on the
   known pixels; the mean of the 10 nearest).

Writes ``guidance_digits_samples.png``, ``guidance_digits_inpaint.png`` and
``guidance_digits_metrics.json`` to ``--out`` (default ``docs/img``) and prints the tables of
docs/guidance.md::

    python examples/guidance_digits.py                          # train (~6 CPU min), measure
    python examples/guidance_digits.py --ckpt runs/digits_cond  # measure a trained model
    python examples/guidance_digits.py --smoke                  # a seconds-long check (CI)

``--smoke`` trains a tiny network for a few steps and draws a handful of samples, writing to
a temporary folder unless ``--out`` is given: its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
from torch import Tensor

import scoresde as sd
from scoresde.plots import image_grid

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "digits_cond.toml"


@dataclass(frozen=True)
class Settings:
    """What one run measures (the full run, or the seconds-long smoke run)."""

    scales: tuple[float, ...] = (-1.0, 0.0, 1.0, 3.0)  # -1: the unconditional model
    per_class: int = 100  # samples per class and scale
    method: str = "dpmpp_2m"
    nfe: int = 50
    grid: str = "quadratic"  # pinned (the method's default for VP SDEs), so defaults may move
    n_inpaint: int = 200  # held-out test digits inpainted
    inpaint_steps: int = 50
    inpaint_grid: str = "uniform"  # pinned (the default of pc and ancestral)
    resample: int = 10  # RePaint's r (its base step: DDPM ancestral sampling)
    draws: int = 8  # posterior draws averaged for the "mean of draws" rows


SMOKE = Settings(per_class=5, nfe=4, n_inpaint=12, inpaint_steps=2, resample=2, draws=2)

SMOKE_TRAIN = [
    "model.width=32",
    "model.depth=1",
    "model.emb_dim=16",
    "train.steps=20",
    "train.ckpt_every=20",
    "train.log_every=10",
    "train.max_minutes=none",
    "train.progress=false",
    "eval.at_end=false",
]


# --------------------------------------------------------------------------- model


def get_model(args: argparse.Namespace, out: Path) -> sd.LoadedModel:
    """The checkpoint of ``--ckpt``, or a model trained with configs/digits_cond.toml."""
    if args.ckpt is not None:
        return sd.load_model(args.ckpt)
    run = Path(args.run) if args.run else (out / "run" if args.smoke else REPO / "runs/digits_cond")
    overrides = [f"train.out_dir={run}", "train.tensorboard=false"]
    overrides += SMOKE_TRAIN if args.smoke else ["eval.likelihood=false", "eval.elbo=false"]
    if args.minutes is not None:
        overrides.append(f"train.max_minutes={args.minutes}")
    config = sd.load_config(CONFIG, overrides)
    res = sd.train(config)
    print(
        f"trained to step {res.step} in {res.train_seconds:.0f} s "
        f"({res.examples_per_s:.0f} examples/s); checkpoint {res.checkpoint}"
    )
    return sd.load_model(run)


def fit_classifier(ds: sd.Dataset) -> tuple[object, float]:
    """Logistic regression on the real training digits; its accuracy on the test split."""
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    clf = LogisticRegression(max_iter=2000)
    assert ds.train_labels is not None and ds.test_labels is not None
    clf.fit(ds.train.flatten(1).numpy(), ds.train_labels.numpy())
    acc = float(clf.score(ds.test.flatten(1).numpy(), ds.test_labels.numpy()))
    return clf, acc


def grey(x: Tensor, ds: sd.Dataset) -> Tensor:
    """Data values -> grey levels 0 .. 16, continuous (float64)."""
    assert ds.data_range is not None and ds.levels is not None
    lo, hi = ds.data_range
    return (x.double() - lo) / (hi - lo) * (ds.levels - 1)


# --------------------------------------------------------------------------- guidance


def precision_recall(fake: Tensor, real: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) in pixel space: precision is
    the fraction of ``fake`` rows inside the k-NN ball of some ``real`` row (fidelity),
    recall the fraction of ``real`` rows inside the k-NN ball of some ``fake`` row
    (coverage). Rows of shape (N, D); both sets need more than k rows."""
    fake, real = fake.flatten(1).double(), real.flatten(1).double()

    def radii(a: Tensor) -> Tensor:  # distance to the k-th nearest other row
        return torch.cdist(a, a).kthvalue(k + 1, dim=1).values

    d = torch.cdist(fake, real)  # (F, R)
    precision = (d <= radii(real)[None, :]).any(1).double().mean()
    recall = (radii(fake)[None, :] >= d.T).any(1).double().mean()
    return float(precision), float(recall)


def guidance_study(
    loaded: sd.LoadedModel, ds: sd.Dataset, clf: object, s: Settings, seed: int
) -> tuple[dict[str, object], dict[float, Tensor]]:
    """Samples of every class at every scale: the classifier's accuracy and confidence on
    the requested class, precision and recall against the training digits of the class."""
    from tqdm.auto import tqdm

    assert loaded.num_classes is not None and ds.test_labels is not None
    c = loaded.num_classes
    y = torch.arange(c).repeat_interleave(s.per_class)
    assert ds.train_labels is not None
    real = [ds.train[ds.train_labels == k] for k in range(c)]
    rows: dict[str, object] = {}
    samples: dict[float, Tensor] = {}
    for w in tqdm(s.scales, desc="guidance scales", disable=not sys.stderr.isatty()):
        model = loaded.guided(y, w)
        t0 = time.perf_counter()
        res = sd.sample(
            model,
            s.method,
            s.nfe,
            grid=s.grid,
            shape=(y.shape[0], *ds.shape),
            generator=torch.Generator().manual_seed(seed),
            denoise_final=True,
        )
        seconds = time.perf_counter() - t0
        x = res.x.clamp(*ds.data_range) if ds.data_range else res.x
        flat = x.flatten(1).numpy()
        pred = clf.predict(flat)  # type: ignore[attr-defined]
        prob = clf.predict_proba(flat)  # type: ignore[attr-defined]
        hit = pred == y.numpy()
        per_class_acc = [float(hit[y.numpy() == k].mean()) for k in range(c)]
        pr = [precision_recall(x[y == k], real[k]) for k in range(c)]
        rows[f"{w:g}"] = {
            "w": w,
            "accuracy": float(hit.mean()),
            "accuracy_per_class": per_class_acc,
            "confidence": float(prob.max(1).mean()),
            "precision": float(np.mean([p for p, _ in pr])),
            "recall": float(np.mean([r for _, r in pr])),
            "nfe": res.nfe,
            "batch_per_call": model.batch_multiplier * y.shape[0],
            "seconds": seconds,
        }
        samples[w] = x
    return rows, samples


def reference_pr(ds: sd.Dataset) -> tuple[float, float]:
    """Precision and recall of the real test digits against the training digits, class by
    class and averaged (a reference: about 36 test digits per class, not 100)."""
    assert ds.train_labels is not None and ds.test_labels is not None
    pr = [
        precision_recall(ds.test[ds.test_labels == k], ds.train[ds.train_labels == k])
        for k in range(int(ds.train_labels.max()) + 1)
    ]
    return float(np.mean([p for p, _ in pr])), float(np.mean([r for _, r in pr]))


# --------------------------------------------------------------------------- inpainting


def masks(n: int, shape: tuple[int, ...], seed: int) -> dict[str, Tensor]:
    """Known-pixel masks: the top half of every digit; a random half of its pixels."""
    top = torch.zeros((n, *shape), dtype=torch.bool)
    top[..., : shape[-2] // 2, :] = True
    rand = torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed + 1)) < 0.5
    return {"bottom half missing": top, "random 50% missing": rand}


def knn_fill(train: Tensor, x: Tensor, mask: Tensor, k: int) -> Tensor:
    """Unknown pixels from the mean of the k training digits nearest on the known pixels."""
    tr, xf, m = train.flatten(1).double(), x.flatten(1).double(), mask.flatten(1).double()
    # squared distance on the known pixels only: sum_j m_j (x_j - t_j)^2
    d = (m * xf.square()).sum(1, keepdim=True) - 2 * (m * xf) @ tr.T + m @ tr.square().T
    idx = d.topk(k, largest=False).indices  # (n, k)
    fill = tr[idx].mean(1).reshape(x.shape).to(x.dtype)
    return torch.where(mask, x, fill)


def inpaint_study(
    loaded: sd.LoadedModel, ds: sd.Dataset, clf: object, s: Settings, seed: int
) -> tuple[dict[str, object], dict[str, dict[str, Tensor]]]:
    """RMSE on the missing pixels (grey levels) and classifier accuracy of the completed
    digits, for replacement, RePaint and baselines, on each mask."""
    assert ds.test_labels is not None
    x = ds.test[: s.n_inpaint]
    labels = ds.test_labels[: s.n_inpaint].numpy()
    steps, r, k = s.inpaint_steps, s.resample, s.draws
    mean_img = ds.train.mean(0, keepdim=True)
    results: dict[str, object] = {}
    shown: dict[str, dict[str, Tensor]] = {}

    def diffusion(
        mask: Tensor, method: str, n_steps: int, resample: int, draws: int, g: torch.Generator
    ) -> tuple[Tensor, int]:
        """(draws, n, ...) imputations of x by the unconditional (null-label) model, and the
        network evaluations each took."""
        rep = x.repeat(draws, *([1] * (x.ndim - 1)))
        evals = sd.solvers_available()
        per_step = next(i.evals_per_step for i in evals if i.name == method)
        res = sd.inpaint(
            loaded.model,
            rep,
            mask.repeat(draws, *([1] * (x.ndim - 1))),
            method=method,
            grid=s.inpaint_grid,
            nfe=resample * per_step * n_steps + 1,  # + 1: the final Tweedie denoising
            resample=resample,
            generator=g,
            denoise_final=True,
        )
        out = res.x.clamp(*ds.data_range) if ds.data_range else res.x
        return out.reshape(draws, *x.shape), res.nfe

    for name, mask in masks(x.shape[0], ds.shape, seed).items():
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        # score_sde's inpainter: predictor-corrector (reverse diffusion + Langevin) with
        # replacement, at the same number of steps and at the same number of evaluations
        pc, nfe_pc = diffusion(mask, "pc", steps, 1, 1, g)
        pc_long, nfe_pc_long = diffusion(mask, "pc", steps * r // 2, 1, 1, g)
        anc, nfe_anc = diffusion(mask, "ancestral", steps, 1, 1, g)
        # RePaint: DDPM ancestral steps, each repeated r times with a jump back in between
        repaint, nfe_rp = diffusion(mask, "ancestral", steps, r, k, g)
        seconds = time.perf_counter() - t0
        fills = {
            f"PC replacement, {steps} steps ({nfe_pc} NFE)": pc[0],
            f"PC replacement, {steps * r // 2} steps ({nfe_pc_long} NFE)": pc_long[0],
            f"ancestral replacement, {steps} steps ({nfe_anc} NFE)": anc[0],
            f"RePaint r = {r}, {steps} steps ({nfe_rp} NFE)": repaint[0],
            f"mean of {k} RePaint draws ({k} x {nfe_rp} NFE)": repaint.mean(0),
            "training mean per pixel": torch.where(mask, x, mean_img.expand_as(x)),
            "nearest training digit (known pixels)": knn_fill(ds.train, x, mask, 1),
            "mean of 10 nearest training digits": knn_fill(ds.train, x, mask, 10),
        }
        unknown = ~mask
        rows = {}
        for label, xf in fills.items():
            err = (grey(xf, ds) - grey(x, ds))[unknown]
            acc = float((clf.predict(xf.flatten(1).numpy()) == labels).mean())  # type: ignore[attr-defined]
            rows[label] = {"rmse_grey_levels": float(err.square().mean().sqrt()), "accuracy": acc}
        acc_true = float((clf.predict(x.flatten(1).numpy()) == labels).mean())  # type: ignore[attr-defined]
        rows["(the true digits)"] = {"rmse_grey_levels": 0.0, "accuracy": acc_true}
        results[name] = {"rows": rows, "missing_fraction": float(unknown.double().mean())}
        results[name]["diffusion_seconds"] = seconds  # type: ignore[index]
        shown[name] = {
            "PC replacement": pc[0],
            f"RePaint r = {r}": repaint[0],
            "nearest neighbour": fills["nearest training digit (known pixels)"],
            "mask": mask,
        }
    return results, shown


# --------------------------------------------------------------------------- figures


def _figure(width: float, height: float) -> Figure:
    """A matplotlib figure on the Agg canvas (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def figure_samples(
    samples: dict[float, Tensor],
    study: dict[str, object],
    ds: sd.Dataset,
    per_class: int,
    path: Path,
) -> None:
    """The samples of each scale w >= 0: a grid with one row per class."""
    scales = [w for w in samples if w >= 0]
    cols = min(per_class, 8)
    fig = _figure(3.2 * len(scales), 4.3)
    axes = fig.subplots(1, len(scales))
    for ax, w in zip(np.atleast_1d(axes), scales):
        x = samples[w]
        n_cls = x.shape[0] // per_class
        pick = torch.cat([x[k * per_class : k * per_class + cols] for k in range(n_cls)])
        ax.imshow(
            image_grid(pick, data_range=ds.data_range, nrow=cols)[:, :, 0],
            cmap="gray",
            interpolation="nearest",
        )
        row = study[f"{w:g}"]
        assert isinstance(row, dict)
        ax.set_title(
            f"w = {w:g}\naccuracy {row['accuracy']:.2f}, precision {row['precision']:.2f}",
            fontsize=10,
        )
        ax.set_axis_off()
    fig.suptitle("Classifier-free guidance on digits: one row per class (0-9)", fontsize=11)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.95))
    fig.savefig(path, dpi=110)


def _tinted(x: Tensor, mask: Tensor, ds: sd.Dataset) -> Tensor:
    """Grey images as RGB, the unknown pixels tinted red."""
    assert ds.data_range is not None
    lo, hi = ds.data_range
    v = ((x - lo) / (hi - lo)).clamp(0, 1).expand(-1, 3, -1, -1).clone()
    red = torch.tensor([0.85, 0.2, 0.2]).view(1, 3, 1, 1).expand_as(v)
    return torch.where(mask.expand_as(v), v, 0.35 * v + red * 0.65)


def figure_inpaint(
    shown: dict[str, dict[str, Tensor]], ds: sd.Dataset, n_inpaint: int, path: Path
) -> None:
    """For each mask: test digits, their known pixels and the fills, one digit per class."""
    assert ds.test_labels is not None
    labels = ds.test_labels[:n_inpaint]
    # one test digit of each class (the first one), as many classes as there are
    cols = [int((labels == k).nonzero()[0]) for k in range(10) if bool((labels == k).any())]
    x = ds.test[:n_inpaint][cols]
    fig = _figure(4.6 * len(shown), 2.3)
    axes = fig.subplots(1, len(shown))
    for ax, (name, parts) in zip(np.atleast_1d(axes), shown.items()):
        mask = parts["mask"][cols]
        fills = [k for k in parts if k != "mask"]
        every = torch.ones_like(mask)
        rgb = [
            _tinted(x, every, ds),
            _tinted(x, mask, ds),
            *(_tinted(parts[k][cols], every, ds) for k in fills),
        ]
        names = ["test digit", "known (red: missing)", *fills]
        grid = image_grid(torch.cat(rgb), data_range=(0.0, 1.0), nrow=len(cols))
        ax.imshow(grid, interpolation="nearest")
        ax.set_yticks([1 + 9 * i + 4 for i in range(len(names))], names, fontsize=8)
        ax.set_xticks([])
        ax.set_title(name, fontsize=10)
        for sp in ax.spines.values():
            sp.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------- tables


def print_tables(metrics: dict[str, object]) -> None:
    g = metrics["guidance"]
    assert isinstance(g, dict)
    ref = metrics["test_digits_precision_recall"]
    assert isinstance(ref, (list, tuple))
    print(
        f"\nreal test digits: classifier accuracy {metrics['classifier_test_accuracy']:.3f}, "
        f"precision {ref[0]:.3f}, recall {ref[1]:.3f}"
    )
    print("\n| w | accuracy | confidence | precision | recall | calls (batch) |")
    print("|---|---|---|---|---|---|")
    for row in g.values():
        print(
            f"| {row['w']:g} | {row['accuracy']:.3f} | {row['confidence']:.3f} | "
            f"{row['precision']:.3f} | {row['recall']:.3f} | {row['nfe']} "
            f"({row['batch_per_call']}) |"
        )
    print("\n| w | " + " | ".join(str(k) for k in range(10)) + " |")
    print("|---|" + "---|" * 10)
    for row in g.values():
        accs = " | ".join(f"{a:.2f}" for a in row["accuracy_per_class"])
        print(f"| {row['w']:g} | {accs} |")
    inp = metrics["inpainting"]
    assert isinstance(inp, dict)
    for name, block in inp.items():
        print(f"\n{name} ({block['missing_fraction']:.0%} of the pixels)")
        print("| fill | RMSE (grey levels) | accuracy |")
        print("|---|---|---|")
        for label, row in block["rows"].items():
            print(f"| {label} | {row['rmse_grey_levels']:.2f} | {row['accuracy']:.3f} |")


# --------------------------------------------------------------------------- main


def _shown_path(path: Path) -> str:
    """A path relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", help="a trained run folder or checkpoint (default: train one)")
    p.add_argument("--run", help="where to train (default: runs/digits_cond)")
    p.add_argument("--minutes", type=float, help="training time limit (default: the config's)")
    p.add_argument("--out", help="folder of the figures and metrics (default: docs/img)")
    p.add_argument("--seed", type=int, default=0, help="seed of every draw")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument(
        "--smoke", action="store_true", help="a seconds-long check; numbers mean nothing"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tmp = None
    if args.out:
        out = Path(args.out)
    elif args.smoke:
        tmp = tempfile.TemporaryDirectory(prefix="guidance_digits_")
        out = Path(tmp.name)
    else:
        out = REPO / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    s = SMOKE if args.smoke else Settings()
    t_start = time.perf_counter()
    # BLAS threads of scikit-learn and numpy: as many as torch's (oversubscribing a small
    # machine makes the logistic regression 50 times slower)
    limits = threadpool_limits(args.threads)
    try:
        loaded = get_model(args, out)
        if loaded.num_classes is None:
            raise SystemExit(f"{loaded.path} is not class-conditional (model.num_classes unset)")
        ds = loaded.dataset()
        clf, clf_acc = fit_classifier(ds)
        with torch.no_grad():
            g_rows, samples = guidance_study(loaded, ds, clf, s, args.seed)
            i_rows, shown = inpaint_study(loaded, ds, clf, s, args.seed)
        metrics: dict[str, object] = {
            "checkpoint": _shown_path(loaded.path),
            "step": loaded.step,
            "settings": asdict(s),
            "classifier_test_accuracy": clf_acc,
            "test_digits_precision_recall": reference_pr(ds),
            "guidance": g_rows,
            "inpainting": i_rows,
            "seconds": time.perf_counter() - t_start,
            "threads": args.threads,
        }
        (out / "guidance_digits_metrics.json").write_text(json.dumps(metrics, indent=1))
        figure_samples(samples, g_rows, ds, s.per_class, out / "guidance_digits_samples.png")
        figure_inpaint(shown, ds, s.n_inpaint, out / "guidance_digits_inpaint.png")
        print_tables(metrics)
        print(f"\nfigures and metrics in {out} ({metrics['seconds']:.0f} s)")
    finally:
        limits.unregister()
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
