"""Sample a discrete-time (DDPM-trained) model with scoresde's continuous-time solvers.

A DDPM (Ho et al. 2020) is trained on a chain of N = 1000 noise levels with linear betas
1e-4..0.02 and predicts eps at integer timesteps ``n = 0..N-1``. ``sd.VPSDE.from_discrete``
turns the chain into a continuous-time VP SDE on ``[1/N, 1]`` whose ``alpha((n + 1)/N)^2`` is
the chain's ``alphas_cumprod[n]``; the network becomes a raw ``net(x, t)`` through ``n = t N -
1``. Every solver of ``sd.solvers_available()`` then samples the model in a few evaluations.

Here the DDPM is trained on scikit-learn's digits with the L_simple objective (Ho et al.,
eq. 14). The network is a diffusers ``UNet2DModel`` noised by diffusers' ``DDPMScheduler``
when diffusers is installed (the diffusers recipe), else scoresde's own U-Net fed the integer
timestep. The script checks that our DDIM on the chain's timesteps reproduces diffusers'
``DDIMScheduler`` (with diffusers), then compares samples of our solvers at 10 and 20
evaluations with DDPM's own 1000-step ancestral sampler: sliced Wasserstein distance to the
test split, and a figure.

    python examples/discrete_model.py                    # 1,500 training steps, a few CPU minutes
    python examples/discrete_model.py --smoke            # a few steps, no 1000-step sampler (CI)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import Tensor, nn

import scoresde as sd

try:
    import diffusers
except ImportError:  # the example runs without it, with scoresde's U-Net
    diffusers = None

N = 1000


class DiscreteTimestepNet(nn.Module):
    """A discrete-time eps network as a continuous-time raw network ``net(x, t)``.

    ``t`` (shape ``(B,)``) maps to the 0-based timestep ``n = t N - 1``: the chain's own
    timesteps at the chain's times (within 1e-3, which absorbs float32 rounding of t), the
    fractional ``n`` between them (the sinusoidal timestep embedding is defined for real
    inputs, so the network is interpolated in its time input, as DPM-Solver's discrete-time
    wrapper does).
    """

    def __init__(self, net: nn.Module, num_timesteps: int, *, diffusers_unet: bool) -> None:
        super().__init__()
        self.net, self.num_timesteps, self.diffusers_unet = net, num_timesteps, diffusers_unet

    def timestep(self, t: Tensor) -> Tensor:
        """``n = t N - 1`` (snapped to an integer within 1e-3), float64, shape of t."""
        n = t.to(torch.float64) * self.num_timesteps - 1.0
        return torch.where((n - n.round()).abs() < 1e-3, n.round(), n)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        n = self.timestep(t).to(x.dtype)
        out = self.net(x, n)
        return out.sample if self.diffusers_unet else out


def make_unet() -> tuple[nn.Module, bool]:
    """A small 8x8 U-Net taking an integer timestep (diffusers' if available)."""
    if diffusers is not None:
        net = diffusers.UNet2DModel(
            sample_size=8,
            in_channels=1,
            out_channels=1,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
        )
        return net, True
    # scoresde's U-Net: time_scale=1 feeds the timestep n itself to the sinusoidal embedding
    return sd.UNet(image_size=8, base_channels=32, channel_mult=(1, 2), time_scale=1.0), False


def train_ddpm(net: nn.Module, uses_diffusers: bool, x: Tensor, steps: int) -> None:
    """L_simple: ||eps - eps_hat(sqrt(ab_n) x0 + sqrt(1 - ab_n) eps, n)||^2, n ~ U{0..N-1}."""
    betas = torch.linspace(1e-4, 0.02, N, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1 - betas, 0).float()
    sched = diffusers.DDPMScheduler(num_train_timesteps=N) if uses_diffusers else None
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    net.train()
    for step in range(1, steps + 1):
        x0 = x[torch.randint(len(x), (128,), generator=g)]
        x0 = x0 + (torch.rand(x0.shape, generator=g) - 0.5) * 0.125  # uniform dequantization
        n = torch.randint(0, N, (len(x0),), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        if sched is not None:  # the diffusers recipe
            x_n = sched.add_noise(x0, eps, n)
            eps_hat = net(x_n, n).sample
        else:
            ab = alphas_cumprod[n].reshape(-1, 1, 1, 1)
            x_n = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
            eps_hat = net(x_n, n.float())
        loss = (eps_hat - eps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == steps:
            print(f"  step {step}/{steps}  loss {loss.item():.4f}")
    net.eval()


@torch.no_grad()
def ddpm_ancestral(model: sd.ScoreModel, n: int, g: torch.Generator) -> Tensor:
    """DDPM's own sampler (Ho et al. 2020, Algorithm 2): 1000 steps of
    ``x_{i-1} = (x_i - beta_i / sqrt(1 - ab_i) eps_hat) / sqrt(1 - beta_i) + sigma_i z`` with
    ``sigma_i^2 = beta_i`` (the paper's choice), no noise on the last step."""
    chain = model.sde.discretize(N)
    betas, ab = chain.betas, chain.alphas_cumprod
    x = torch.randn((n, 1, 8, 8), generator=g)
    for i in reversed(range(N)):
        t = torch.full((n,), (i + 1) / N, dtype=torch.float64)
        eps = model.eps(x, t)
        b, a = float(betas[i]), float(ab[i])
        x = (x - b / (1 - a) ** 0.5 * eps) / (1 - b) ** 0.5
        if i > 0:
            x = x + b**0.5 * torch.randn(x.shape, generator=g)
    return x


def check_against_diffusers_ddim(model: sd.ScoreModel, unet: nn.Module) -> None:
    """Our DDIM on the chain's own 10 timesteps == diffusers' DDIMScheduler (eta = 0)."""
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=N,
        clip_sample=False,
        set_alpha_to_one=False,
        timestep_spacing="trailing",
    )
    sched.set_timesteps(10)
    x_T = torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    x = x_T.clone()
    with torch.no_grad():
        for n in sched.timesteps:
            x = sched.step(unet(x, n).sample, n, x, eta=0.0).prev_sample
    grid = torch.tensor([(int(n) + 1) / N for n in sched.timesteps] + [1.0 / N])
    ours = sd.sample(model, "ddim", 10, x_init=x_T, grid=grid.to(torch.float64)).x
    diff = float((ours - x).abs().max())
    print(f"our DDIM vs diffusers' DDIMScheduler, same 10 timesteps: max difference {diff:.1e}")
    assert diff < 1e-3 * (1 + float(x.abs().max())), diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps")
    parser.add_argument("--n", type=int, default=256, help="samples per method")
    parser.add_argument("--out", default="runs/discrete_model", help="folder of the figure")
    parser.add_argument("--smoke", action="store_true", help="a few steps, small samples (CI)")
    args = parser.parse_args()
    steps, n = (5, 16) if args.smoke else (args.steps, args.n)
    torch.manual_seed(0)  # the network's initial weights

    ds = sd.load_digits()  # 8x8 in [-1, 1], 17 grey levels
    unet, uses_diffusers = make_unet()
    print(
        f"training a DDPM ({'diffusers UNet2DModel' if uses_diffusers else 'sd.UNet'}) for "
        f"{steps} steps on {len(ds.train)} digits"
    )
    train_ddpm(unet, uses_diffusers, ds.train, steps)

    # the chain -> a continuous-time SDE; the network -> net(x, t)
    betas = torch.linspace(1e-4, 0.02, N, dtype=torch.float64)
    sde = sd.VPSDE.from_discrete(betas)
    model = sd.ScoreModel(DiscreteTimestepNet(unet, N, diffusers_unet=uses_diffusers), sde)
    print(f"{sde!r}: t in [{sde.t_min}, {sde.T}]")
    if uses_diffusers:
        check_against_diffusers_ddim(model, unet)

    g = torch.Generator().manual_seed(0)
    results: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    if not args.smoke:
        t0 = time.perf_counter()
        results["DDPM ancestral, 1000 steps"] = ddpm_ancestral(model, n, g)
        seconds["DDPM ancestral, 1000 steps"] = time.perf_counter() - t0
    for method in ("ddim", "dpmpp_2m", "unipc", "heun"):
        for nfe in (10, 20):
            t0 = time.perf_counter()
            res = sd.sample(model, method, nfe, shape=(n, 1, 8, 8), generator=g)
            name = f"{method}, NFE {res.nfe}"
            results[name], seconds[name] = res.x, time.perf_counter() - t0
    ref = sd.sliced_wasserstein(ds.train[:n], ds.test, generator=torch.Generator().manual_seed(0))
    print(f"sliced W2 to the test split ({n} samples; {n} training images: {ref:.4f})")
    for name, x in results.items():
        assert bool(torch.isfinite(x).all()), name
        sw = sd.sliced_wasserstein(x, ds.test, generator=torch.Generator().manual_seed(0))
        print(f"  {name:<28s} {sw:.4f}   {seconds[name]:.1f} s")

    png = save_figure(results, Path(args.out) / "samples.png", ds.data_range)
    print(f"figure: {png}")


def save_figure(results: dict[str, Tensor], path: Path, data_range: tuple[float, float]) -> Path:
    """Eight samples of every method, one row each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from scoresde.plots import image_grid

    fig = Figure(figsize=(6, 0.9 * len(results)), dpi=100)
    FigureCanvasAgg(fig)
    for i, (name, x) in enumerate(results.items()):
        ax = fig.add_subplot(len(results), 1, i + 1)
        grid = image_grid(x[:8], data_range=data_range, nrow=8)
        ax.imshow(grid[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


if __name__ == "__main__":
    main()
