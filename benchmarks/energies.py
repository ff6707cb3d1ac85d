"""vpfb among the energy models, in 2-D (issue 18's first part): the same MLP, data, batch, optimiser and wall clock
for every method, in one run.

    pip install torchebm        # the peers' own implementations (the `peers` extra; torch >= 2.10)
    OMP_NUM_THREADS=1 python benchmarks/energies.py --datasets moons eightgaussians checkerboard --fm-steps 8000

Methods (the network is vpfb's MLP, 3 × 128 SiLU, fed t = 0 where a method has no time):
- vpfb: the 2-D defaults (energy parameterisation, Deep Ritz loss, partition term); energy ψ at the calibrated read-out
  time, samples by the ODE (dopri5);
- em: Energy Matching (Balcerak et al. 2025), torchebm's EnergyMatchingLoss with its 2-D defaults (Sinkhorn pairing,
  σ = 0.1, 200 Langevin steps per negative batch, λ_CD = 2): half the budget on the flow-only phase (λ_CD = 0), half
  on the joint phase; energy V, samples by its generation sweep (200 Langevin steps, ε ramped to 0.15, t_end = 1);
- em-flow: Energy Matching's flow-only phase for the whole budget, sampled the same way: the sanity check that its
  joint phase improves on it, as the paper reports;
- eqm: Equilibrium Matching (Wang et al. 2025) with the explicit energy g(x) = ⟨x, f(x)⟩ (torchebm, energy_type="dot",
  time-free); samples by gradient descent on g, step 0.003 × 250 (η·n ≈ 0.75: longer descents collapse onto a few
  attractors, measured);
- dsm: an energy E trained by denoising score matching at σ = 0.1 (torchebm's DenoisingScoreMatching), sampled by
  Langevin dynamics (1,000 steps of 1e-3);
- fm: flow matching (torchcfm, a velocity network): samples only, no energy.

Columns: test NLL of the energy as a density, exp(ℓ(x)/T)/Z_T with ℓ = ψ (vpfb) or −E (peers), normalised on a
400 × 400 grid of cells over the data's box (the midpoint rule of vpfb.likelihood), at T = 1 (the energy as it
stands) and at one T fitted on training points (the best tempering);
the true density's NLL; W2 (POT, exact) between 2,000 samples of the method's own sampler and 2,000 fresh points;
steps trained and the step time as a ratio to flow matching. Equal wall clock through steps, as in toy2d.py: step
times are measured first, interleaved (median of rounds), and each method gets the steps that fit the budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import platform
from pathlib import Path

import torch
from timing import interleaved_step_times
from torchebm.core import BaseModel, TemperatureScheduler
from torchebm.losses import DenoisingScoreMatching, EnergyMatchingLoss, EquilibriumMatchingLoss
from torchebm.samplers import GradientDescentSampler, LangevinDynamics
from toy2d import FlowMatchingLoss, w2

from vpfb.config import Config
from vpfb.data import Standardizer, sample_toy, toy_log_density
from vpfb.evaluation.density import calibrate_density_t
from vpfb.factory import build_loss_from_config, build_potential
from vpfb.likelihood import grid_box, grid_cells
from vpfb.losses import LossOutput
from vpfb.model import EnergyModel
from vpfb.ode import integrate
from vpfb.potentials import MLP
from vpfb.training import train

PEERS = ("em", "em-flow", "eqm", "dsm")
METHODS = ("fm", "vpfb", *PEERS)
TEMPERATURES = torch.logspace(-2, 2, 161, dtype=torch.float64)
GRID = 400  # cells per side of the normalising grid


class Energy(BaseModel):
    """A time-free scalar energy E(x) [N] on vpfb's MLP (t = 0), as torchebm's losses and samplers take it."""

    def __init__(self, hidden: int, depth: int):
        super().__init__()
        self.net = MLP(2, hidden, depth, out_dim=1)

    def forward(self, x):
        return self.net(x, torch.zeros(len(x), device=x.device)).squeeze(-1)


class Field(torch.nn.Module):
    """A time-free vector field f(x) [N, 2] on the same MLP (Equilibrium Matching's network; it ignores t)."""

    def __init__(self, hidden: int, depth: int):
        super().__init__()
        self.net = MLP(2, hidden, depth, out_dim=2)

    def forward(self, x, t):
        return self.net(x, torch.zeros(len(x), device=x.device))


def dot_energy(field: Field):
    """Equilibrium Matching's explicit energy g(x) = ⟨x, f(x)⟩ (its energy_type="dot")."""
    return lambda x: (x * field(x, None)).sum(1)


class Peer:
    """One peer: its network, its loss as the trainer calls it, its energy and its sampler."""

    def __init__(self, method: str, cfg: Config):
        hidden, depth = cfg.model.hidden, cfg.model.depth
        self.method = method = method.removesuffix("-flow")
        if method == "eqm":
            self.net = Field(hidden, depth)
            self.loss = EquilibriumMatchingLoss(model=self.net, energy_type="dot")
        else:
            self.net = Energy(hidden, depth)
            self.loss = (
                EnergyMatchingLoss(model=self.net, lambda_cd=0.0, coupling="sinkhorn")
                if method == "em"
                else DenoisingScoreMatching(model=self.net, noise_scale=0.1)
            )

    def loss_fn(self, net, x):
        loss = self.loss(x)
        return LossOutput(loss, {"loss": loss.detach()})

    def energy(self, net):
        """E(z) [N] of a trained copy of the network (the trainer's EMA)."""
        return dot_energy(net) if self.method == "eqm" else net

    def sample(self, net, n: int, generator: torch.Generator) -> torch.Tensor:
        x = torch.randn(n, 2, generator=generator)
        if self.method == "em":
            schedule = TemperatureScheduler(epsilon_max=0.15, tau_star=0.8, n_steps=200, t_end=1.0)
            return LangevinDynamics(model=net, step_size=0.01, noise_scale=schedule).sample(x=x, n_steps=200)
        if self.method == "eqm":
            return GradientDescentSampler(_Scalar(dot_energy(net)), step_size=0.003).sample(x=x, n_steps=250)
        return LangevinDynamics(model=net, step_size=1e-3, noise_scale=1.0).sample(x=x, n_steps=1000)


class _Scalar(BaseModel):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def em_schedule(peer: Peer, phase_one: int):
    """Energy Matching's two phases inside one training run: λ_CD = 0 for the first `phase_one` steps, then 2."""
    calls = {"n": 0}

    def loss_fn(net, x):
        calls["n"] += 1
        peer.loss.lambda_cd = 0.0 if calls["n"] <= phase_one else 2.0
        return peer.loss_fn(net, x)

    return loss_fn


def build(method: str, cfg: Config):
    """(network, loss_fn, peer or None) for one method."""
    if method == "fm":
        return MLP(2, cfg.model.hidden, cfg.model.depth, out_dim=2), FlowMatchingLoss(), None
    if method == "vpfb":
        potential = build_potential(cfg, 2)
        return potential, build_loss_from_config(cfg, potential.path, 2), None
    peer = Peer(method, cfg)
    return peer.net, peer.loss_fn, peer


def step_times(cfg: Config, train_z: torch.Tensor, rounds: int, steps: int = 20) -> dict[str, float]:
    """Seconds per step of each method, Energy Matching's joint phase ("em-cd") apart from its flow phase, from
    interleaved short runs."""

    def run(method: str):
        net, loss_fn, peer = build(method.removesuffix("-cd"), cfg)
        if method == "em-cd":
            peer.loss.lambda_cd = 2.0
        short = dataclasses.replace(cfg.train, steps=steps, time_budget=0.0)
        return train(net, loss_fn, train_z, short, progress_bar=False)

    times = interleaved_step_times(
        {m: functools.partial(run, m) for m in (*METHODS, "em-cd") if m != "em-flow"}, rounds
    )
    return times | {"em-flow": times["em"]}


def grid_nll(log_p_test, log_p_grid, log_cell: float, temperature: float = 1.0) -> float:
    """Test NLL of exp(ℓ/T)/Z_T, Z_T by the midpoint rule on the grid."""
    log_z = torch.logsumexp(log_p_grid / temperature, 0) + log_cell
    return float(-(log_p_test / temperature - log_z).mean())


def fitted_temperature(log_p_train, log_p_grid, log_cell: float) -> float:
    """The T in TEMPERATURES whose exp(ℓ/T)/Z_T gives the training points the lowest NLL."""
    return float(min(TEMPERATURES, key=lambda t: grid_nll(log_p_train, log_p_grid, log_cell, float(t))))


def true_modes(truth: torch.Tensor, level: float = 0.05) -> torch.Tensor:
    """Each grid cell's region [GRID²]: the true modes, 0..K−1 (the connected regions where the true density exceeds
    `level` times its peak; scipy.ndimage.label), and K for the rest of the box."""
    from scipy.ndimage import label

    regions, count = label((truth - truth.max() > math.log(level)).reshape(GRID, GRID).numpy())
    regions = torch.from_numpy(regions).flatten().long() - 1
    regions[regions < 0] = count
    return regions


def region_masses(regions: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """The mass of each region under exp ℓ normalised on the grid (T = 1): where a density puts its mass, apart from
    how sharp it is."""
    return torch.zeros(int(regions.max()) + 1, dtype=torch.float64).index_add_(0, regions, torch.softmax(log_p, 0))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--datasets", nargs="*", default=["moons", "eightgaussians", "checkerboard"])
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    p.add_argument("--fm-steps", type=int, default=8000, help="the budget in flow-matching steps")
    p.add_argument("--timing-rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--picture", type=Path, default=Path(__file__).parents[1] / "docs" / "energies2d.png")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = Config()
    cfg.train.seed = args.seed
    moons = sample_toy("moons", 10_000, seed=0)
    times = step_times(cfg, Standardizer.fit(moons).transform(moons), args.timing_rounds)
    budget = args.fm_steps * times["fm"]
    print(
        f"# energies (2-D): budget {args.fm_steps} flow-matching steps (≈ {budget:.0f} s at {1e3 * times['fm']:.2f} "
        f"ms/step); Energy Matching's steps {1e3 * times['em']:.1f} ms (flow phase) and {1e3 * times['em-cd']:.0f} ms "
        f"(joint phase). seed {args.seed}, 1 thread, torch {torch.__version__}, {platform.machine()}"
    )
    header = "| data | method | steps | step time ×FM | energy NLL, T = 1 | energy NLL, fitted T (T) | true NLL | W2 |"
    print(header + "\n|" + "---|" * (header.count("|") - 1))
    pictures, masses = {}, []
    for name in args.datasets:
        train_x = sample_toy(name, 100_000, seed=0)
        test_x, fresh_x = sample_toy(name, 2000, seed=1), sample_toy(name, 2000, seed=2)
        st = Standardizer.fit(train_x)
        low, high = grid_box(train_x)
        grid, log_cell = grid_cells(low, high, GRID)
        true_nll = float(-toy_log_density(name, test_x).double().mean())
        pictures[name] = {"truth": toy_log_density(name, grid)}
        regions = true_modes(pictures[name]["truth"])
        true_masses = region_masses(regions, pictures[name]["truth"].double())
        for method in args.methods:
            torch.manual_seed(args.seed)
            net, loss_fn, peer = build(method, cfg)
            if method == "em":  # half the wall clock on each phase
                phase_one = round(budget / 2 / times["em"])
                steps = phase_one + max(1, round(budget / 2 / times["em-cd"]))
                loss_fn = em_schedule(peer, phase_one)
            else:
                steps = max(1, round(budget / times[method]))
            result = train(
                net, loss_fn, st.transform(train_x), dataclasses.replace(cfg.train, steps=steps), progress_bar=False
            )
            gen = torch.Generator().manual_seed(args.seed)
            row = {"nll1": "–", "nll": "–", "t": ""}
            if method == "fm":
                z = integrate(lambda y, t: result.ema(y, t), torch.randn(2000, 2, generator=gen)).x
            elif method == "vpfb":
                model = EnergyModel(result.ema, cfg, st)
                model.read_out_t, _ = calibrate_density_t(model, train_x[:2000], cfg.eval.calibrate_times)
                z = st.transform(model.flow(2000, generator=gen).x)
                log_p = lambda x, m=model: m.log_density(x).double()  # noqa: E731
            else:
                z = peer.sample(result.ema, 2000, gen).detach()
                energy = peer.energy(result.ema)
                log_p = lambda x, e=energy: -e(st.transform(x)).detach().double()  # noqa: E731
            if method != "fm":
                values = torch.cat([log_p(c) for c in grid.split(20_000)])
                temperature = fitted_temperature(log_p(train_x[:5000]), values, log_cell)
                log_p_test = log_p(test_x)
                nll_fitted = grid_nll(log_p_test, values, log_cell, temperature)
                row = {"nll1": f"{grid_nll(log_p_test, values, log_cell):.3f}", "nll": f"{nll_fitted:.3f}"}
                row["t"] = f" ({temperature:.2f})"
                pictures[name][method] = values / temperature
                masses.append((name, method, true_masses, region_masses(regions, values)))
            ratio = (budget / steps) / times["fm"] if method == "em" else times[method] / times["fm"]
            print(
                f"| {name} | {method} | {steps} | {ratio:.2f} | {row['nll1']} | {row['nll']}{row['t']} | "
                f"{true_nll:.3f} | {w2(st.inverse(z), fresh_x):.3f} |",
                flush=True,
            )
    print(
        "\n| data | method | modes | mass off the modes (truth) | mode-mass TV | lightest / heaviest mode ÷ truth's |"
    )
    print("|---|---|---|---|---|---|")
    for name, method, true, model in masses:
        ratio = model[:-1] / true[:-1]
        print(
            f"| {name} | {method} | {len(true) - 1} | {model[-1]:.3f} ({true[-1]:.3f}) | "
            f"{0.5 * float((model - true).abs().sum()):.3f} | {ratio.min():.2f} / {ratio.max():.2f} |"
        )
    save_picture(pictures, args.picture)


def save_picture(pictures: dict, path: Path) -> None:
    """Each data set's true density beside every method's exp(ℓ/T), normalised on the grid (one row per set)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["truth", *[m for m in METHODS if m != "fm" and any(m in row for row in pictures.values())]]
    fig, axes = plt.subplots(len(pictures), len(columns), figsize=(2.2 * len(columns), 2.2 * len(pictures)))
    axes = axes.reshape(len(pictures), len(columns))
    for r, (name, row) in enumerate(pictures.items()):
        for c, column in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if column in row:
                density = (row[column] - row[column].max()).exp().reshape(GRID, GRID).T
                ax.imshow(density.numpy(), origin="lower", cmap="viridis")
            if r == 0:
                ax.set_title(column)
            if c == 0:
                ax.set_ylabel(name)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"picture: {path}")


if __name__ == "__main__":
    main()
