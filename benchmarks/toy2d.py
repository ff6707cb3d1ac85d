"""2-D density estimation: VPFB (both Deep Ritz estimators, the released recipe, the naive parameterisation)
against flow matching (torchcfm) with the same MLP, batch and wall-clock budget, in one run.

    python benchmarks/toy2d.py                                          # every data set, 16k FM steps (≈ 60 s)
    python benchmarks/toy2d.py --datasets moons --methods vpfb --fm-steps 160000    # the longer budget
    python benchmarks/toy2d.py --methods vpfb vpfb-nopartition --timing-only --timing-rounds 9      # step times

Columns: CNF test NLL (exact Laplacian, dopri5 rtol=atol=1e-5), grid-normalised NLLs of log_density (read at the
time t that `fit` calibrates on training points) and of the paper's Boltzmann exp(Φ_B) on the same box, the true
density's NLL, W2 (POT, exact EMD) between 5,000 samples and 5,000 fresh data points, NFE of dopri5 at
rtol=atol=1e-3, steps trained and the step time as a ratio to flow matching. Runs on one thread.

Equal wall clock is enforced through steps: step times are measured first (interleaved, median of 5 rounds), the
budget is given in flow-matching steps, and every method gets the steps that fit in the same time at its measured
step-time ratio. The numbers then do not depend on what else the machine was doing while a method trained.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import platform

import ot
import torch
from timing import interleaved_step_times
from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

from vpfb.config import Config
from vpfb.data import TOY_DATASETS, Standardizer, sample_toy, toy_log_density
from vpfb.evaluation.density import calibrate_density_t, density_metrics
from vpfb.factory import build_loss_from_config, build_potential
from vpfb.likelihood import log_likelihood
from vpfb.losses import LossOutput
from vpfb.model import EnergyModel
from vpfb.ode import integrate
from vpfb.potentials import MLP
from vpfb.training import train

METHODS = {  # name -> config overrides on the shared defaults
    "vpfb": {},
    "vpfb-uniform": {"loss": {"weight": "uniform"}},
    "vpfb-snr0.05": {"loss": {"snr_floor": 0.05}},  # the earlier default: less weight on early times
    "vpfb-lambda0.01": {"loss": {"partition_weight": 0.01}},  # the earlier partition weight
    "vpfb-covariance": {"loss": {"estimator": "covariance", "weight": "sigma2"}},
    "vpfb-released": {"loss": {"name": "released", "partition_weight": 0.0}, "model": {"parameterisation": "direct"}},
    "vpfb-cv": {"loss": {"estimator": "covariance", "weight": "sigma2", "control_variate": True}},
    "vpfb-direct": {"model": {"parameterisation": "direct"}, "loss": {"partition_weight": 0.0}},
    "vpfb-nopartition": {"loss": {"partition_weight": 0.0}},  # what the partition term costs and buys
    "vpfb-lr0.002": {"train": {"lr": 2e-3}},  # the earlier learning rate
    "fm": None,
    "fm-lr0.002": {"train": {"lr": 2e-3}},  # flow matching at the earlier rate: is the baseline at its best?
}


class FlowMatchingLoss:
    """torchcfm's conditional flow matching (σ = 0, the same linear path) on a vector-valued network."""

    def __init__(self):
        self.matcher = ConditionalFlowMatcher(sigma=0.0)

    def __call__(self, net, x1):
        t, xt, ut = self.matcher.sample_location_and_conditional_flow(torch.randn_like(x1), x1)
        loss = 0.5 * ((net(xt, t) - ut) ** 2).sum(1).mean()
        return LossOutput(loss, {"loss": loss.detach()})


def w2(a: torch.Tensor, b: torch.Tensor) -> float:
    cost = ot.dist(a.double().numpy(), b.double().numpy())
    return math.sqrt(ot.emd2([], [], cost, numItermax=10_000_000))


def build(method: str, cfg: Config, train_x: torch.Tensor):
    """(network or potential, loss, standardiser) for one method."""
    standardizer = Standardizer.fit(train_x)
    if method.startswith("fm"):
        return MLP(2, cfg.model.hidden, cfg.model.depth, out_dim=2), FlowMatchingLoss(), standardizer
    potential = build_potential(cfg, 2)
    return potential, build_loss_from_config(cfg, potential.path, 2), standardizer


def step_times(configs: dict[str, Config], train_x: torch.Tensor, rounds: int = 5, steps: int = 40) -> dict:
    """Seconds per training step of each method, from interleaved runs of `steps` steps."""

    def run(method: str, cfg: Config):
        net, loss, st = build(method, cfg, train_x)
        short = dataclasses.replace(cfg.train, steps=steps, time_budget=0.0)
        return train(net, loss, st.transform(train_x), short, progress_bar=False)

    return interleaved_step_times({m: functools.partial(run, m, cfg) for m, cfg in configs.items()}, rounds)


def evaluate_fm(net, st, test_x, fresh_x):
    field = lambda x, t: net(x, t)  # noqa: E731
    nll = -(log_likelihood(field, st.transform(test_x)) - st.log_abs_det()).mean().item()
    sol = integrate(
        field, torch.randn(len(fresh_x), 2, generator=torch.Generator().manual_seed(0)), rtol=1e-3, atol=1e-3
    )
    return {"cnf_nll": nll, "w2": w2(st.inverse(sol.x), fresh_x), "nfe": sol.nfe}


def evaluate_vpfb(model, train_x, test_x, fresh_x, truth):
    ev = model.config.eval  # the read-out time, calibrated on training points as `fit` does
    model.read_out_t, _ = calibrate_density_t(model, train_x[: ev.calibrate_points], ev.calibrate_times)
    metrics = density_metrics(model, test_x, truth)
    metrics["t"] = model.read_out_t
    sol = model.flow(len(fresh_x), generator=torch.Generator().manual_seed(0))
    metrics.update(w2=w2(sol.x, fresh_x), nfe=sol.nfe)
    return metrics


def method_config(method: str) -> Config:
    cfg = Config()
    for section, values in (METHODS[method] or {}).items():
        for key, value in values.items():
            setattr(getattr(cfg, section), key, value)
    return cfg


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--datasets", nargs="*", default=list(TOY_DATASETS))
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument(
        "--fm-steps",
        type=int,
        default=16000,
        help="the budget, in flow-matching steps (16000 ≈ 60 s on one core of the reference machine)",
    )
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0, help="seeds the networks' initialisation, batches and noise")
    p.add_argument("--timing-rounds", type=int, default=5)
    p.add_argument("--timing-only", action="store_true", help="print the step times and stop")
    args = p.parse_args()
    torch.set_num_threads(1)
    methods = ["fm"] + [m for m in args.methods if m != "fm"]  # fm first: the reference
    configs = {m: method_config(m) for m in methods}
    for cfg in configs.values():
        cfg.train.seed = args.seed
    times = step_times(configs, sample_toy("moons", 10_000, seed=0), rounds=args.timing_rounds)
    if args.timing_only:
        print(
            f"| method | ms/step | ×FM |  (median of {args.timing_rounds} interleaved rounds, 1 thread)\n|---|---|---|"
        )
        for method, seconds in times.items():
            print(f"| {method} | {1e3 * seconds:.2f} | {seconds / times['fm']:.2f} |")
        return
    fm_steps = args.fm_steps
    print(
        f"# toy2d: budget {fm_steps} flow-matching steps (≈ {fm_steps * times['fm']:.0f} s at the measured "
        f"{1e3 * times['fm']:.2f} ms/step); every method gets the steps that fit in the same time. "
        f"seed {args.seed}, 1 thread, torch {torch.__version__}, {platform.machine()}"
    )
    header = "| data | method | steps | step time ×FM | CNF NLL | energy NLL (t) | Φ_B NLL | true NLL | W2 | NFE |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in args.datasets:
        train_x = sample_toy(name, 100_000, seed=0)
        test_x, fresh_x = sample_toy(name, args.n_test, seed=1), sample_toy(name, 5000, seed=2)
        truth = (lambda x, n=name: toy_log_density(n, x)) if toy_log_density(name, test_x[:1]) is not None else None
        for method, cfg in configs.items():
            ratio = times[method] / times["fm"]
            cfg.train.steps = max(1, round(fm_steps / ratio))
            torch.manual_seed(args.seed)
            net, loss, st = build(method, cfg, train_x)
            result = train(net, loss, st.transform(train_x), cfg.train, progress_bar=False)
            if method.startswith("fm"):
                m = evaluate_fm(result.ema, st, test_x, fresh_x)
            else:
                m = evaluate_vpfb(EnergyModel(result.ema, cfg, st), train_x, test_x, fresh_x, truth)
            fmt = lambda k: f"{m[k]:.3f}" if k in m else "–"  # noqa: E731
            print(
                f"| {name} | {method} | {cfg.train.steps} | {ratio:.2f} | {fmt('cnf_nll')} | "
                f"{fmt('energy_nll')} ({m.get('t', '–')}) | "
                f"{fmt('boltzmann_nll')} | {fmt('true_nll')} | {fmt('w2')} | {m.get('nfe', '–')} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
