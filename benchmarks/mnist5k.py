"""MNIST-5k: VPFB against flow matching with the same U-Net, batch and optimiser schedule, (a) at an equal number of
training steps and (b) at equal CPU wall clock; quality is the Fréchet distance in a digit classifier's features.

    OMP_NUM_THREADS=1 python benchmarks/mnist5k.py --docs docs/mnist5k_samples.png     # 400 VPFB steps, ≈ 35 min
    python benchmarks/mnist5k.py --steps 4000 --out runs/mnist5k-long                  # the preset's budget (hours)
    python benchmarks/mnist5k.py --methods vpfb --set loss.weight=uniform --out benchmarks/out/mnist5k-uniform
    OMP_NUM_THREADS=1 python benchmarks/mnist5k.py --timing-only --timing-rounds 9      # the step-time ratio only
    OMP_NUM_THREADS=1 python benchmarks/mnist5k.py --runs runs/m --methods              # a `vpfb train` run only

VPFB is `vpfb.fit` on the mnist5k-cpu preset (the energy U-Net ψ = −½‖x/√v − μW‖²; `--set
model.parameterisation=direct` for the paper's Φ = ½‖x − U(x, t)‖²), pathwise Deep Ritz loss, uniform weight.
Flow matching trains the same backbone U(x, t) to regress u = x̄ − ε at x_t = t x̄ + (1 − t) ε (uniform weight).
All runs share the preset's training settings as a user of `vpfb train mnist5k-cpu --steps N` gets them (batch 32,
Adam with 200 warm-up steps and cosine decay 5e-4 → 2e-5, the trainer's EMA with its warm-up ramp) and the
training seed, hence the same initial U-Net. Equal wall clock is
enforced through steps: step times are measured first (interleaved short runs, median of rounds) and the second
flow-matching run gets VPFB's steps times the measured step-time ratio.

Samples: `--samples` prior draws (the same noise for every model), carried to t = 1 by fixed-step Heun
(`--heun-steps`), because dopri5 on the VPFB field (one backward pass per evaluation) costs minutes per thousand
samples on one core. dopri5 at rtol = atol = 1e-3 runs on the first `--grid` of the same draws: its NFE, the sample
grids and the "Heun gap", the RMS distance between the Heun and dopri5 end points (the Heun discretisation
error), come from those.
Fréchet distance: `vpfb.evaluation.frechet` in the features of `MnistFeatures` (benchmarks/mnist_classifier.py)
against the 4,000 training digits; the row "real" measures `--samples` of the 1,000 held-out digits the same way
(the floor at this N).
side_by_side.png shows, left to right, real digits and the methods in the order run (vpfb, fm-steps, fm-clock).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import math
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
from mnist_classifier import load_or_train
from safetensors.torch import save_file
from speed import flow_matching_loss
from timing import interleaved_step_times
from torch import Tensor

from vpfb.config import Config, load_config
from vpfb.data import load_images
from vpfb.data.training_set import ImageBatches
from vpfb.evaluation.frechet import extract_features, frechet_distance
from vpfb.factory import build_loss_from_config, build_potential
from vpfb.fit import fit
from vpfb.model import load
from vpfb.ode import integrate
from vpfb.plots import save_image_grid
from vpfb.potentials import UNet, unet_config, velocity
from vpfb.training import train

PRESET = "mnist5k-cpu"
METHODS = ("vpfb", "fm-steps", "fm-clock")  # fm-steps: VPFB's steps; fm-clock: VPFB's wall clock


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_config(steps: int, overrides: list[str] = ()) -> Config:
    """The preset with `steps` training steps, as `vpfb train mnist5k-cpu --steps N` has it, then the user's
    overrides (model and loss keys concern VPFB only; flow matching reads train.* and model.network)."""
    return load_config(PRESET, [f"train.steps={steps}", "train.sample_every=0", *overrides])


def build(method: str, cfg: Config, shape: tuple[int, ...]):
    """(network, loss) of a method: VPFB's potential and Deep Ritz loss, or the bare U-Net and flow matching."""
    if method == "vpfb":
        potential = build_potential(cfg, shape)
        return potential, build_loss_from_config(cfg, potential.path, math.prod(shape))
    return UNet(**unet_config(cfg.model.network)), flow_matching_loss


def step_times(cfg: Config, data: ImageBatches, shape, rounds: int, steps: int = 8) -> dict[str, float]:
    """Seconds per training step of VPFB and flow matching, from interleaved runs of `steps` steps."""
    short = dataclasses.replace(cfg.train, steps=steps, warmup_steps=0)

    def run(method: str):
        net, loss = build(method, cfg, shape)
        return train(net, loss, data, short, progress_bar=False)

    return interleaved_step_times({m: functools.partial(run, m) for m in ("vpfb", "fm")}, rounds)


def train_method(method: str, cfg: Config, data: ImageBatches, shape, out: Path):
    """Train one method from the seed; return its velocity field (x, t) -> dx/dt and the seconds it took."""
    torch.manual_seed(cfg.train.seed)  # the same initial U-Net for every method
    start = time.perf_counter()
    if method == "vpfb":
        model = fit(cfg, progress_bar=False)
        seconds = time.perf_counter() - start
        model.save(out / method)
        return (lambda x, t: velocity(model.phi, x, t)), seconds
    net, loss = build(method, cfg, shape)
    ema = train(net, loss, data, cfg.train, progress_bar=False).ema
    seconds = time.perf_counter() - start
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, out / f"{method}.safetensors")

    def field(x: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad():
            return ema(x, t)

    return field, seconds


def draw(field, z0: Tensor, solver: str, steps: int = 0, batch: int = 250) -> tuple[Tensor, float]:
    """Carry the prior draws z0 to t = 1 in batches; return the samples and the mean NFE per batch."""
    chunks = [integrate(field, z, solver=solver, steps=steps, rtol=1e-3, atol=1e-3) for z in z0.split(batch)]
    return torch.cat([c.x for c in chunks]), statistics.mean(c.nfe for c in chunks)


def side_by_side(panels: list[Tensor], columns: int) -> tuple[Tensor, int]:
    """Image grids [N, C, H, W] (N a multiple of `columns`) placed left to right with a blank column between
    them, as one list of tiles for `save_image_grid`, and its number of columns."""
    blank = torch.ones_like(panels[0][:1])
    rows = []
    for r in range(len(panels[0]) // columns):
        row = []
        for k, panel in enumerate(panels):
            row += ([blank] if k else []) + [panel[r * columns : (r + 1) * columns]]
        rows.append(torch.cat(row))
    return torch.cat(rows), len(panels) * (columns + 1) - 1


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument(
        "--steps",
        type=int,
        default=400,
        help="VPFB training steps (400 ≈ 35 min for everything on one core of the reference machine)",
    )
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--heun-steps", type=int, default=10)
    p.add_argument("--grid", type=int, default=64, help="draws also sampled by dopri5 and shown in the grids")
    p.add_argument("--timing-rounds", type=int, default=5)
    p.add_argument("--timing-only", action="store_true", help="print the trainer's step times and stop")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "mnist5k")
    p.add_argument("--docs", type=Path, default=None, help="also copy the side-by-side grid here")
    p.add_argument("--methods", nargs="*", choices=METHODS, default=list(METHODS))
    p.add_argument(
        "--runs",
        nargs="*",
        type=Path,
        default=[],
        metavar="DIR",
        help="also measure run directories written by `vpfb train` (their EMA weights), same protocol",
    )
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of the mnist5k-cpu preset, e.g. loss.weight=uniform (train.* apply to every run)",
    )
    args = p.parse_args()
    if args.steps < 10 or args.samples < 2 or not 8 <= args.grid <= args.samples:
        p.error("need --steps ≥ 10, --samples ≥ 2 and 8 ≤ --grid ≤ --samples")
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)

    data = load_images("mnist5k", labels=False)
    batches = ImageBatches(data, flip=False, labels=False)
    cfg = run_config(args.steps, args.set)
    times = {"vpfb": math.nan, "fm": math.nan}  # not measured when only --runs are scored
    if args.methods or args.timing_only:
        times = step_times(cfg, batches, data.shape, args.timing_rounds)
        log(
            f"step times: VPFB {times['vpfb']:.3f} s, FM {times['fm']:.3f} s, ratio {times['vpfb'] / times['fm']:.2f} "
            f"(median of {args.timing_rounds} interleaved rounds)"
        )
    if args.timing_only:
        return
    ratio = times["vpfb"] / times["fm"]
    steps = {"vpfb": args.steps, "fm-steps": args.steps, "fm-clock": round(args.steps * ratio) if args.methods else 0}

    classifier, accuracy = load_or_train()
    real_features, row, real_grid = real_reference(data, classifier, args.samples, args.grid)
    rows, grids = [row], [real_grid]
    log(f"classifier held-out accuracy {accuracy:.4f}; FD of {args.samples} real digits {rows[0]['fd']:.3f}")

    z0 = torch.randn(args.samples, *data.shape, generator=torch.Generator().manual_seed(0))
    for method in args.methods:
        log(f"training {method} for {steps[method]} steps")
        cfg = run_config(steps[method], args.set)
        field, seconds = train_method(method, cfg, batches, data.shape, args.out)
        log(f"sampling {method} (trained in {seconds:.0f} s)")
        row, x_dopri = evaluate(field, z0, args.heun_steps, args.grid, classifier, real_features)
        rows.append(
            {
                "method": method,
                "steps": steps[method],
                "step_ratio": ratio if method == "vpfb" else 1.0,
                "train_s": seconds,
                **row,
            }
        )
        save_image_grid(x_dopri, args.out / f"{method}.png")
        grids.append(x_dopri)
        log(f"{method}: FD {row['fd']:.3f}, dopri5 NFE {row['nfe_dopri5']:.0f}")
    for run in args.runs:
        model = load(run)
        row, x_dopri = evaluate(
            lambda x, t: velocity(model.phi, x, t), z0, args.heun_steps, args.grid, classifier, real_features
        )
        with open(run / "metrics.csv", newline="") as fh:
            seconds = float(list(csv.DictReader(fh))[-1]["seconds"])
        rows.append(
            {
                "method": f"run {run}",
                "steps": model.config.train.steps,
                "step_ratio": math.nan,
                "train_s": seconds,
                **row,
            }
        )
        grids.append(x_dopri)
        log(f"{run}: FD {row['fd']:.3f}, dopri5 NFE {row['nfe_dopri5']:.0f}")

    tiles, columns = side_by_side(grids, int(args.grid**0.5))
    picture = save_image_grid(tiles, args.out / "side_by_side.png", columns)
    if args.docs is not None:
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(picture, args.docs)
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "classifier_accuracy": accuracy,
                "step_times": times,
                "rows": rows,
            },
            indent=2,
        )
    )
    print_table(args, times, accuracy, rows)


def real_reference(data, classifier, samples: int, grid: int) -> tuple[Tensor, dict, Tensor]:
    """Features of all training digits, the row of `samples` held-out (test split) digits measured like a model,
    and `grid` of those."""
    features = extract_features(classifier, data.batch(torch.arange(len(data))))
    held_out = load_images("mnist5k", split="test", labels=False)
    pick = torch.randperm(len(held_out), generator=torch.Generator().manual_seed(1))[:samples]
    real = held_out.batch(pick)
    row = {"method": "real", "fd": frechet_distance(extract_features(classifier, real), features)}
    return features, row, real[:grid]


def evaluate(field, z0: Tensor, heun_steps: int, grid: int, classifier, real_features: Tensor) -> tuple[dict, Tensor]:
    """Fréchet distance of the Heun samples from z0, NFEs, and the dopri5 samples of the first `grid` draws."""
    x, nfe = draw(field, z0, "heun", heun_steps)
    x_dopri, nfe_dopri = draw(field, z0[:grid], "dopri5", batch=grid)
    gap = (x[:grid] - x_dopri).flatten(1).square().mean().sqrt().item()
    fd = frechet_distance(extract_features(classifier, x), real_features)
    return {"fd": fd, "nfe_heun": nfe, "nfe_dopri5": nfe_dopri, "heun_gap": gap}, x_dopri


def print_table(args, times: dict[str, float], accuracy: float, rows: list[dict]) -> None:
    variant = f" with {' '.join(args.set)}" if args.set else ""
    print(
        f"# mnist5k: {args.steps} VPFB steps{variant}; step times VPFB {1e3 * times['vpfb']:.0f} ms, FM "
        f"{1e3 * times['fm']:.0f} ms (ratio {times['vpfb'] / times['fm']:.2f}); classifier held-out accuracy "
        f"{accuracy:.4f}; {args.samples} samples, Heun {args.heun_steps} steps; 1 thread, "
        f"torch {torch.__version__}, {platform.machine()}"
    )
    print("| model | steps | step time ×FM | train s | Fréchet distance | Heun NFE | dopri5 NFE | Heun gap |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["method"] == "real":
            print(f"| real digits ({args.samples}) | – | – | – | {r['fd']:.3f} | – | – | – |")
            continue
        print(
            f"| {r['method']} | {r['steps']} | {r['step_ratio']:.2f} | {r['train_s']:.0f} | {r['fd']:.3f} | "
            f"{r['nfe_heun']:.0f} | {r['nfe_dopri5']:.0f} | {r['heun_gap']:.4f} |"
        )


if __name__ == "__main__":
    main()
