"""Is the energy of an image model a density? For run directories trained on MNIST-5k (`vpfb train mnist5k-cpu`),
measured on the 1,000 held-out digits of the test split:

    OMP_NUM_THREADS=1 python benchmarks/image_energy.py runs/e600 runs/d600 --out benchmarks/out/energy

- agreement: ψ read at t (log_density) against the model's CNF log-likelihood (Hutchinson, dopri5 1e-3) of the same
  digits: Spearman's rank correlation and the spread (sd) of their difference in bits/dim;
- off-data: mean ψ at the read-out t on noised held-out digits against noise, blank and grey images (is exp ψ
  confined to the digits?);
- normalisation: log Z_t by annealed importance sampling from the prior (where ψ is exact) for one or several
  numbers of steps, with the spread of the log-weights and the effective sample size, and the held-out digits'
  bits/dim under the normalised energy beside the CNF's (with the agreement stage);
- consistency: ψ(·, t) against the model's own flow at t (the CNF read back from t) on noised held-out digits and
  on the flow's states, and log Z_t by importance sampling with the flow as the proposal, with its ESS;
- sampling: the Fréchet distance (features of benchmarks/mnist_classifier.py, against the training digits) of
  samples drawn from the energy alone (annealed MALA from the prior, `EnergyModel.sample_langevin`) against the
  ODE's (10 Heun steps) from the same model;
- stability: a long MALA chain at the read-out t from ODE samples, E‖∇ψ‖² along it against its value on noised
  held-out digits, and a picture of its end.
The runs must use the energy parameterisation for ψ to be read directly; direct runs get the agreement rows only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from mnist5k import draw, load_or_train
from scipy.stats import spearmanr  # installed with scikit-learn
from torch import Tensor

from vpfb.data import load_images
from vpfb.evaluation.frechet import extract_features, frechet_distance
from vpfb.evaluation.ood import MultiscaleEnergy, score_sets, table_of
from vpfb.evaluation.ood_sets import protocol_sets, reference_images
from vpfb.evaluation.tasks import OOD_SCORES as TASK_SCORES
from vpfb.likelihood import bits_per_dim, log_likelihood
from vpfb.model import EnergyModel, load
from vpfb.ode import integrate
from vpfb.plots import save_image_grid
from vpfb.potentials import value_and_grad, velocity
from vpfb.sampling import log_mean_exp_and_ess, sample_langevin


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def in_batches(fn, x: Tensor, size: int = 100) -> Tensor:  # the CNF keeps a graph: ~5 GB at 100
    return torch.cat([fn(chunk).detach() for chunk in x.split(size)])


def agreement(
    model: EnergyModel, x: Tensor, times: list[float], probes: int, reference: Tensor | None = None
) -> tuple[dict, Tensor]:
    """ψ(·, t) against the CNF log-likelihood, the mean of `probes` independent one-probe Hutchinson solves per digit:
    rows {t, spearman, sd_bpd}; the CNF's bits/dim of the digits (mean, standard error); with several probes the
    noise of one probe (sd per digit: median and largest), the spread of log p between digits with that noise
    removed, and the reliability of the mean (its share of true spread: the ceiling of any correlation with it).
    With a `reference` (log p of the same digits saved by an earlier run), ψ is ranked against it and nothing is
    solved: a cheap check of variants of one model (fine-tuned ones) against a fixed likelihood."""
    if reference is not None:
        if reference.shape != (len(x),):
            raise ValueError(
                f"the reference holds {tuple(reference.shape)} log-likelihoods, not one per digit ({len(x)})"
            )
        solves = reference[None].double()
    else:
        torch.manual_seed(0)  # Hutchinson's probes
        solve = lambda c: model.log_likelihood(c, hutchinson=1, rtol=1e-3, atol=1e-3)  # noqa: E731
        solves = torch.stack([in_batches(solve, x) for _ in range(probes)]).double()
    probes = len(solves)
    cnf = solves.mean(0)
    scale = model.dim * math.log(2)
    rows = []
    for t in times:
        psi = in_batches(lambda c: model.log_density(c, t), x).double()
        rank = float(spearmanr(psi, cnf).statistic)
        rows.append({"t": t, "spearman": rank, "sd_bpd": float((psi - cnf).std() / scale)})
    result = {"digits": len(x), "probes": probes, "times": rows, "cnf_bpd": bits_per_dim(cnf, model.dim)}
    if probes > 1:
        noise = solves.var(0)  # one probe's variance, per digit
        between = float(cnf.var() - noise.mean() / probes)
        result |= {
            "probe_sd_median": float(noise.median().sqrt()),
            "probe_sd_max": float(noise.max().sqrt()),
            "between_sd": max(between, 0.0) ** 0.5,
            "reliability": between / (between + float(noise.mean()) / probes),
        }
    return result, cnf


def off_data(model: EnergyModel, x: Tensor, t: float) -> dict:
    """Is exp ψ(·, t) confined to the digits? Mean ψ(·, t) (log_density, data units) on the held-out digits noised
    as the path noises them at t, y = x + (σ/μ)ε, and on images the data never come near: Gaussian noise of the
    path's own scale at t (√v/μ, v = μ² + σ²), uniform noise in [-1, 1], and a blank (all −1) or grey (all 0) image
    with the same (σ/μ)ε. The smoothed data density ρ_t puts thousands of nats less on these than on digits."""
    s = model.path.at(torch.tensor([t]))
    noise = float(s.sigma / s.mu)
    g = torch.Generator().manual_seed(3)
    eps = lambda: torch.randn(x.shape, generator=g)  # noqa: E731
    images = {
        "noised digits": x + noise * eps(),
        "gaussian noise": float((s.mu**2 + s.sigma**2).sqrt() / s.mu) * eps(),
        "uniform noise": 2 * torch.rand(x.shape, generator=g) - 1,
        "blank + noise": -1 + noise * eps(),
        "grey + noise": noise * eps(),
    }
    return {name: float(in_batches(lambda c: model.log_density(c, t), y).mean()) for name, y in images.items()}


def partition(model: EnergyModel, t: float, chains: int, steps: list[int], out: Path, x=None, cnf=None) -> list[dict]:
    """log Z_t by annealed importance sampling from the prior, where ψ(·, 0) is exact (the chains of
    EnergyModel.log_partition: `langevin` without its predictor), for each number of MALA steps: log mean exp w (the
    estimate), mean log w (a lower bound), the sd of log w and the effective sample size; the last run's chains,
    sorted by weight, to out/ais_chains.png. With the agreement's CNF, also the held-out digits' bits/dim under the
    normalised energy log_density − log Z_t beside the CNF's (both of the same dequantised digits)."""
    log_z0 = 0.5 * model.dim * math.log(2 * math.pi * float(model.path.sigma(torch.zeros(1))) ** 2)
    psi = in_batches(lambda c: model.log_density(c, t), x).double() if cnf is not None else None
    rows = []
    for n_steps in steps:
        res = model.langevin(
            chains, n_steps, t, predictor=False, denoise=False, generator=torch.Generator().manual_seed(2)
        )
        w = res.log_weights
        log_ratio, ess = log_mean_exp_and_ess(w)
        row = {
            "t": t,
            "chains": chains,
            "steps": n_steps,
            "log_z": log_ratio + log_z0,
            "mean_log_w": float(w.mean()) + log_z0,
            "sd_log_w": float(w.std()),
            "ess": ess,
            "last_acceptance": res.acceptance[-1],
        }
        if psi is not None:
            row |= {"energy_bpd": bits_per_dim(psi - row["log_z"], model.dim), "cnf_bpd": bits_per_dim(cnf, model.dim)}
        rows.append(row)
        log(f"partition {row}")
    save_image_grid(res.x[w.argsort(descending=True)].clamp(-1, 1), out / "ais_chains.png", columns=chains)
    return rows


def consistency(model: EnergyModel, x: Tensor, t: float, probes: int) -> dict:
    """Is ψ(·, t) the log-density of the model's own flow at t, up to log Z_t? On noised held-out digits y = μx + σε
    and on the flow's own states at t (dopri5 from the prior), ψ(y, t) against the CNF log p_t(y) read back from t,
    the mean of two solves with `probes` Hutchinson probes each (their difference measures the noise): Spearman's
    correlation and the sd of ψ − log p_t (0 for an exact energy); on the flow's states also log Z_t by importance
    sampling with the flow as the proposal, log mean exp(ψ − log q), and its effective sample size."""
    phi, n = model.phi, len(x)
    tt = torch.full((n,), t)
    s = model.path.at(tt[:1])
    mu, sigma, sigma0 = float(s.mu), float(s.sigma), float(model.path.sigma(torch.zeros(1)))
    g = torch.Generator().manual_seed(6)
    noised = mu * x + sigma * torch.randn(x.shape, generator=g)
    start = sigma0 * torch.randn(x.shape, generator=g)
    flowed = integrate(lambda y, s_: velocity(phi, y, s_), start, 0.0, t).x
    field = lambda y, s_: velocity(phi, y, s_, create_graph=True)  # noqa: E731
    rows = {"t": t, "digits": n, "probes_per_solve": probes}
    for name, y in (("noised_held_out", noised), ("flow_states", flowed)):
        solves = []
        for seed in (10, 11):
            gen = torch.Generator().manual_seed(seed)
            cnf = lambda c: log_likelihood(  # noqa: E731
                field, c, t1=t, prior_std=sigma0, hutchinson=probes, rtol=1e-3, atol=1e-3, generator=gen
            )
            solves.append(in_batches(cnf, y, 32).double())
        log_q = (solves[0] + solves[1]) / 2
        with torch.no_grad():
            psi = phi.log_density(y, tt).double()
        d = psi - log_q
        row = {
            "spearman": float(spearmanr(psi, log_q).statistic),
            "sd_difference_nats": float(d.std()),
            "sd_between_nats": float(log_q.std()),
            "noise_sd_of_the_mean_nats": float((solves[0] - solves[1]).std() / 2),
        }
        if name == "flow_states":
            row["log_z"], row["ess"] = log_mean_exp_and_ess(d)
        rows[name] = row
        log(f"consistency {name}: {row}")
    return rows


def confident(classifier, x: Tensor, level: float = 0.9) -> float:
    """Fraction of images in [-1, 1] the digit classifier labels with probability ≥ level: "still draws digits"."""
    with torch.no_grad():
        return float((classifier.logits(x.clamp(-1, 1)).softmax(1).max(1).values >= level).float().mean())


def long_chain(model: EnergyModel, t: float, steps: int, chains: int, held_out: Tensor, classifier, out: Path) -> dict:
    """MALA at t from ODE samples: 200 steps adapt the step at t (EnergyModel.langevin with x0), then `steps` at that
    fixed step. E‖∇ψ‖² along the chain against its value on noised held-out digits, and the fraction of Tweedie-
    denoised chain states that the classifier still reads as a digit (≥ 0.9), at the start and the end."""
    mu, sigma = float(model.path.mu(torch.tensor([t]))), float(model.path.sigma(torch.tensor([t])))
    start = model.sample(chains, solver="heun", steps=10, generator=torch.Generator().manual_seed(4))
    warm = model.langevin(chains, steps=200, t=t, x0=start, denoise=False, generator=torch.Generator().manual_seed(3))
    tt = torch.full((chains,), t)
    log_p = lambda y: model.phi.log_density(y, tt[: len(y)])  # noqa: E731
    res = sample_langevin(
        log_p,
        mu * warm.x,
        steps,
        warm.step_sizes[-1],
        metropolis=True,
        save_every=steps // 8,
        generator=torch.Generator().manual_seed(5),
    )
    noised = mu * held_out[:chains] + sigma * torch.randn(held_out[:chains].shape)
    on_data = sample_langevin(log_p, noised, 1, 1e-12).mean_grad_sq[0]  # ‖∇ψ‖² at noised data, no move
    denoised = torch.stack([(y + sigma**2 * value_and_grad(log_p, y)[1]) / mu for y in res.trajectory])  # Tweedie
    save_image_grid(denoised.transpose(0, 1)[:16].flatten(0, 1).clamp(-1, 1), out / "long_chain.png", columns=9)
    grad = res.mean_grad_sq
    return {
        "t": t,
        "steps": steps,
        "chains": chains,
        "step_size": warm.step_sizes[-1],
        "acceptance": res.acceptance,
        "grad_sq_on_data": float(on_data),
        "grad_sq_last_100": float(grad[-100:].mean()),
        "grad_sq_max": float(grad.max()),
        "digits_start": confident(classifier, denoised[0]),
        "digits_end": confident(classifier, denoised[-1]),
        "digits_held_out": confident(classifier, held_out),
    }


NEAR = ("rotated 90°", "rotated 180°", "blurred", "shifted 3 px", "mnist5k interpolation")
OOD_SCORES = tuple(s for s in TASK_SCORES if s != "boltzmann")  # Φ_B is blind for the energy U-Net


def near_ood(model: EnergyModel, n: int, names: list[str]) -> list[dict]:
    """AUROC of every OOD score on the synthetic protocol's sets `names` (the images `vpfb eval --task ood -n n`
    draws with seed 0), the CNF likelihood included; the multiscale energy fitted on 500 training digits."""
    test, train = (load_images("mnist5k", split=s, labels=False) for s in ("test", "train"))
    g = torch.Generator().manual_seed(0)
    x, sets = protocol_sets("synthetic", model.shape, n, generator=g, own=test)
    reference = reference_images("synthetic", model.shape, 500, generator=g, own=train)
    scores = {s: MultiscaleEnergy(model, reference) if s == "energy_multiscale" else s for s in OOD_SCORES}
    return table_of(score_sets(model, x, {k: sets[k] for k in names}, scores))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--n", type=int, default=1000, help="held-out digits scored")
    p.add_argument("--times", type=float, nargs="*", default=[0.7, 0.8, 0.9, 0.95])
    p.add_argument("--probes", type=int, default=1, help="one-probe CNF solves per digit, averaged (agreement)")
    p.add_argument(
        "--reference-cnf", type=Path, help="a saved cnf_log_likelihood.pt of the same --n digits to rank against"
    )
    p.add_argument("--read-out", type=float, default=0.9, help="t for log Z, MALA and the long chain")
    p.add_argument("--samples", type=int, default=1000, help="samples for the Fréchet distances")
    p.add_argument("--langevin-steps", type=int, default=250)
    p.add_argument("--consistency-n", type=int, default=64, help="digits and flow states of the consistency stage")
    p.add_argument("--consistency-probes", type=int, default=2, help="Hutchinson probes in each of its two solves")
    p.add_argument("--partition-chains", type=int, default=64)
    p.add_argument("--partition-steps", type=int, nargs="+", default=[1000], help="MALA steps of each AIS run")
    p.add_argument("--chain-steps", type=int, default=5000)
    p.add_argument("--chains", type=int, default=64, help="chains of the long run")
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["agreement", "offdata", "partition", "consistency", "sampling", "chain", "ood"],
    )
    p.add_argument("--ood-n", type=int, default=100, help="held-out digits and images of each OOD set")
    p.add_argument("--ood-sets", nargs="*", default=list(NEAR), help="OOD sets scored (the CNF is slow on far ones)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "image_energy")
    args = p.parse_args()
    torch.set_num_threads(1)
    held_out = load_images("mnist5k", split="test", labels=False)  # dequantised, as bits/dim assumes
    x = held_out.batch(torch.arange(len(held_out)), dequantize=True, generator=torch.Generator().manual_seed(0))
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[: args.n]]  # the split is class-sorted
    classifier, _ = load_or_train()
    train = load_images("mnist5k", labels=False)
    train_features = extract_features(classifier, train.batch(torch.arange(len(train))))
    results = {}
    for run in args.runs:
        model, out, row = load(run), args.out / run.name, {}
        out.mkdir(parents=True, exist_ok=True)
        energy = model.config.model.parameterisation == "energy"
        cnf = None
        if "agreement" not in args.skip:
            reference = torch.load(args.reference_cnf, weights_only=True) if args.reference_cnf else None
            row["agreement"], cnf = agreement(model, x, args.times, args.probes, reference)
            row["agreement"]["reference_cnf"] = str(args.reference_cnf) if reference is not None else None
            torch.save(cnf, out / "cnf_log_likelihood.pt")  # of the digits in order: other read-out t need no solve
            log(f"{run}: agreement {row['agreement']}")
        if energy and "offdata" not in args.skip:
            row["off_data"] = off_data(model, x[:50], args.read_out)
            log(f"{run}: mean ψ at t = {args.read_out} {row['off_data']}")
        if energy and "partition" not in args.skip:
            row["partition"] = partition(model, args.read_out, args.partition_chains, args.partition_steps, out, x, cnf)
        if energy and "consistency" not in args.skip:
            row["consistency"] = consistency(model, x[: args.consistency_n], args.read_out, args.consistency_probes)
        if "sampling" not in args.skip:
            z0 = torch.randn(args.samples, *model.shape, generator=torch.Generator().manual_seed(0))
            ode, _ = draw(lambda y, s: velocity(model.phi, y, s), z0, "heun", 10)
            row["fd_ode"] = frechet_distance(extract_features(classifier, ode), train_features)
            if energy:
                gen = torch.Generator().manual_seed(0)
                chunks = [
                    model.langevin(250, steps=args.langevin_steps, t=args.read_out, generator=gen)
                    for _ in range(max(args.samples // 250, 1))
                ]
                mala = torch.cat([c.x for c in chunks])
                row["mala_acceptance_last_level"] = [c.acceptance[-1] for c in chunks]
                row["fd_mala"] = frechet_distance(extract_features(classifier, mala.clamp(-1, 1)), train_features)
                save_image_grid(mala[:64].clamp(-1, 1), out / "mala_samples.png")
            save_image_grid(ode[:64], out / "ode_samples.png")
            log(f"{run}: FD ode {row['fd_ode']:.2f} mala {row.get('fd_mala', float('nan')):.2f}")
        if energy and "chain" not in args.skip:
            row["chain"] = long_chain(model, args.read_out, args.chain_steps, args.chains, x, classifier, out)
            log(f"{run}: chain {row['chain']}")
        if "ood" not in args.skip:
            row["ood"] = near_ood(model, args.ood_n, args.ood_sets)
            log(f"{run}: ood {row['ood']}")
        results[str(run)] = row
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
