"""2-D density estimation: VPFB (both Deep Ritz estimators, the released recipe, the naive parameterisation)
against flow matching (torchcfm) with the same MLP, batch and wall-clock budget, in one run.

    python benchmarks/toy2d.py --budget 60                      # every data set, 60 s of training per method
    python benchmarks/toy2d.py --datasets moons --budget 600    # the longer budget

Columns: CNF test NLL (exact Laplacian, dopri5 rtol=atol=1e-5), grid-normalised NLLs of log_density (at the
default eval.density_t) and of the paper's Boltzmann exp(Φ_B) on the same box, the true
density's NLL, W2 (POT, exact EMD) between 5,000 samples and 5,000 fresh data points, NFE of dopri5 at
rtol=atol=1e-3, steps trained and the step time as a ratio to flow matching. Runs on one thread.
"""
from __future__ import annotations

import argparse
import math
import platform

import ot
import torch
from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

from vpfb.config import Config
from vpfb.data import TOY_DATASETS, Standardizer, sample_toy, toy_log_density
from vpfb.evaluation.density import density_metrics
from vpfb.fit import build_loss_from_config
from vpfb.likelihood import log_likelihood
from vpfb.model import EnergyModel, build_potential
from vpfb.losses import LossOutput
from vpfb.potentials import MLP
from vpfb.sampling import integrate
from vpfb.training import train

METHODS = {  # name -> config overrides on the shared defaults
    "vpfb": {},
    "vpfb-covariance": {"loss": {"estimator": "covariance", "weight": "sigma2"}},
    "vpfb-released": {"loss": {"name": "released"}, "model": {"parameterisation": "direct"}},
    "vpfb-cv": {"loss": {"estimator": "covariance", "weight": "sigma2", "control_variate": True}},
    "vpfb-direct": {"model": {"parameterisation": "direct"}},
    "fm": None,
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


def run_fm(cfg: Config, train_x, test_x, fresh_x):
    standardizer = Standardizer.fit(train_x)
    net = MLP(2, cfg.model.hidden, cfg.model.depth, out_dim=2)
    result = train(net, FlowMatchingLoss(), standardizer.transform(train_x), cfg.train, progress_bar=False)
    field = lambda x, t: result.ema(x, t)  # noqa: E731
    z_test = standardizer.transform(test_x)
    nll = -(log_likelihood(field, z_test) - standardizer.log_abs_det()).mean().item()
    sol = integrate(field, torch.randn(len(fresh_x), 2), rtol=1e-3, atol=1e-3)
    return result, {"cnf_nll": nll, "w2": w2(standardizer.inverse(sol.x), fresh_x), "nfe": sol.nfe}


def run_vpfb(cfg: Config, train_x, test_x, fresh_x, truth):
    standardizer = Standardizer.fit(train_x)
    potential = build_potential(cfg, 2)
    loss = build_loss_from_config(cfg, potential.path)
    result = train(potential, loss, standardizer.transform(train_x), cfg.train, progress_bar=False)
    model = EnergyModel(result.ema, cfg, standardizer)
    metrics = density_metrics(model, test_x, truth)
    sol = model.flow(len(fresh_x), generator=torch.Generator().manual_seed(0))
    metrics.update(w2=w2(sol.x, fresh_x), nfe=sol.nfe)
    return result, metrics


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--datasets", nargs="*", default=list(TOY_DATASETS))
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument("--budget", type=float, default=60.0, help="training seconds per method")
    p.add_argument("--n-test", type=int, default=2000)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"# toy2d: budget {args.budget:g} s per method, 1 thread, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    header = "| data | method | steps | step time ×FM | CNF NLL | energy NLL | Φ_B NLL | true NLL | W2 | NFE |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in args.datasets:
        train_x = sample_toy(name, 100_000, seed=0)
        test_x, fresh_x = sample_toy(name, args.n_test, seed=1), sample_toy(name, 5000, seed=2)
        truth = (lambda x, n=name: toy_log_density(n, x)) if toy_log_density(name, test_x[:1]) is not None else None
        rows, fm_step = [], None
        for method in ["fm"] + [m for m in args.methods if m != "fm"]:  # fm first: the reference step time
            cfg = Config()
            cfg.train.steps, cfg.train.time_budget = 10**7, args.budget
            for section, values in (METHODS[method] or {}).items():
                for key, value in values.items():
                    setattr(getattr(cfg, section), key, value)
            if method == "fm":
                result, metrics = run_fm(cfg, train_x, test_x, fresh_x)
            else:
                result, metrics = run_vpfb(cfg, train_x, test_x, fresh_x, truth)
            step_time = result.seconds / max(result.steps, 1)
            fm_step = fm_step or step_time
            rows.append((method, result.steps, step_time / fm_step, metrics))
        for method, steps, ratio, m in rows:
            fmt = lambda k: f"{m[k]:.3f}" if k in m else "–"  # noqa: E731
            print(f"| {name} | {method} | {steps} | {ratio:.2f} | {fmt('cnf_nll')} | {fmt('energy_nll')} | {fmt('boltzmann_nll')} | "
                  f"{fmt('true_nll')} | {fmt('w2')} | {m.get('nfe', '–')} |", flush=True)


if __name__ == "__main__":
    main()
