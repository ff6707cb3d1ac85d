"""Command line: vpfb train | sample | eval | demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from vpfb.config import Config, load_config, presets
from vpfb.data import TOY_DATASETS, load_data, sample_toy, toy_log_density
from vpfb.factory import IMAGE_ARCHITECTURES
from vpfb.ode import SolverError
from vpfb.training.checkpoint import CorruptCheckpointError
from vpfb.training.trainer import torch_threads


def held_out_split(cfg: Config) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Training points and test points: fresh draws for a toy set, a seeded 10% split of a user's file (None when it
    has fewer than 50 points: nothing is held out)."""
    points, _ = load_data(cfg.data.name, cfg.data.n, cfg.data.seed, cfg.data.key or None)
    if cfg.data.name in TOY_DATASETS:
        return points, sample_toy(cfg.data.name, 2000, cfg.data.seed + 1)  # as the benchmark: SE ≈ 0.02 nats
    if len(points) < 50:
        return points, None
    order = torch.randperm(len(points), generator=torch.Generator().manual_seed(cfg.data.seed))
    n_test = len(points) // 10
    return points[order[n_test:]], points[order[:n_test]]


def train_and_report(cfg: Config, out: Path, progress_bar: bool = True, existing: str = "check") -> dict[str, float]:
    from vpfb.evaluation.report2d import report_2d
    from vpfb.fit import fit

    train_points, test_points = held_out_split(cfg)
    # a point model is small: one thread for the whole command (the report too), unless train.threads says otherwise,
    # so that a busy second core does not slow it several-fold (as vpfb.training.trainer.cpu_threads; BENCHMARKS.md)
    with torch_threads(cfg.train.threads or 1):
        print(
            f"training on {len(train_points)} points of dimension {train_points.shape[1]} from {cfg.data.name!r}; "
            f"run directory {out}"
        )
        model = fit(cfg, out, train_points, progress_bar, existing)
        scored, split = (test_points, "test") if test_points is not None else (train_points, "training")
        if model.dim == 2:
            truth = None
            if cfg.data.name in TOY_DATASETS and toy_log_density(cfg.data.name, scored[:1]) is not None:
                truth = lambda x: toy_log_density(cfg.data.name, x)  # noqa: E731
            metrics = report_2d(model, scored, out, truth)
        else:
            metrics = {"cnf_nll": -model.log_likelihood(scored[:2000]).mean().item()}
        metrics = {"split": split, **metrics}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if test_points is None:
            print(
                f"fewer than 50 points: none held out, so these metrics are on the {len(train_points)} training points"
            )
        print(f"{split} metrics (nats per point, lower is better):")
        for key, value in metrics.items():
            if key != "split":
                print(f"  {key:12s} {value:10.4f}")
        return metrics


def cmd_train(args) -> None:
    if args.config and "=" in args.config:  # no preset given: the first override landed in its place
        args.config, args.overrides = None, [args.config, *args.overrides]
    cfg = load_config(args.config, args.overrides)
    if args.data:
        cfg.data.name = args.data
    if args.steps is not None:
        cfg.train.steps = args.steps
    out = Path(args.out or Path("runs") / Path(cfg.data.name).stem)
    if cfg.model.architecture not in IMAGE_ARCHITECTURES:
        return train_and_report(cfg, out, existing=run_policy(args))
    from vpfb import distributed
    from vpfb.fit import fit

    world = distributed.init(cfg.train.device)  # under torchrun: one process per GPU, before the model is built
    try:
        if world.is_main:
            print(
                f"training {cfg.model.architecture} on {cfg.data.name!r} in {world.size} process(es); "
                f"run directory {out}"
            )
        fit(cfg, out, existing=run_policy(args))
        if world.is_main:
            print(f"samples: {out}/samples.png")
    finally:
        distributed.cleanup()


def run_policy(args) -> str:
    """What to do with a run directory holding another run: refuse (default), --resume it or --force afresh."""
    if args.resume and args.force:
        raise ValueError("--resume continues the run in --out and --force discards it: give one of them")
    return "resume" if args.resume else "restart" if args.force else "check"


def add_run_directory_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out even if its settings or data differ from these"
    )
    p.add_argument("--force", action="store_true", help="discard the run in --out and start afresh")


def check_sample_count(n: int, dim: int) -> None:
    """n ≥ 1, and n samples (with the solver's ~10 states each) fit in the memory this machine has free."""
    if n < 1:
        raise ValueError(f"-n must be at least 1, got {n}")
    need = 10 * n * dim * 4
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not every platform says
        return
    if need > free:
        raise ValueError(
            f"-n {n} needs about {need / 2**30:.1f} GiB for the solver's states, more than the "
            f"{free / 2**30:.1f} GiB free: draw fewer samples per call"
        )


def cmd_sample(args) -> None:
    from vpfb.model import load

    model = load(args.run)
    check_sample_count(args.n, model.dim)
    x = model.sample(args.n, solver=args.solver, steps=args.steps, generator=torch.Generator().manual_seed(args.seed))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, x.numpy())
    elif out.suffix == ".png" and len(model.shape) == 3:
        from vpfb.plots import save_image_grid

        save_image_grid(x, out)
    elif out.suffix == ".png":
        if model.dim != 2:
            raise ValueError(
                f"a .png of samples needs 2-D points or images; this model has dimension {model.dim}, use .npy"
            )
        from vpfb import plots

        fig, ax = plots.figure(1)
        plots.plot_samples(ax, x, x.min(0).values, x.max(0).values, f"{args.n} samples")
        plots.save(fig, out)
    else:
        raise ValueError(f"--out must end in .npy or .png, got {out}")
    print(f"wrote {args.n} samples to {out}")


def cmd_eval(args) -> None:
    from vpfb import distributed
    from vpfb.evaluation.fid import STANDARD_SAMPLES
    from vpfb.evaluation.tasks import evaluate
    from vpfb.model import load

    world = distributed.init(args.device)  # under torchrun: one process per GPU; fid shares its samples out
    try:
        if world.size > 1 and args.task != "fid":
            raise ValueError(f"only --task fid shares its work among processes; run --task {args.task} as one")
        model = load(args.run, world.device if world.size > 1 else args.device)
        out = Path(args.out or Path(args.run) / "eval")
        options = {"labels": tuple(args.labels)} if args.task == "composition" and args.labels else {}
        if args.task == "longrun":
            options = {"t_end": args.t_end, "step_size": args.step_size}
        if args.task == "ood":
            options = {"protocol": args.protocol, "root": args.data_root, "download": args.download}
            if args.scores:
                options["scores"] = tuple(args.scores)
        if args.task == "fid":
            options = {
                "extractor": args.extractor,
                "extractor_path": args.extractor_path,
                "solver": args.solver,
                "steps": args.steps,
                "cache_dir": args.cache_dir,
            }
        if args.n is None:
            args.n = STANDARD_SAMPLES if args.task == "fid" else 64
        result = evaluate(model, args.task, out, args.n, args.seed, **options)
    finally:
        distributed.cleanup()
    if not world.is_main:
        return
    if args.task == "ood":
        print("| OOD set | score | AUROC | AUPR | FPR@95 |\n|---|---|---|---|---|")
        for row in result["rows"]:
            print(f"| {row['ood']} | {row['score']} | {row['auroc']:.3f} | {row['aupr']:.3f} | {row['fpr95']:.3f} |")
    elif args.task == "fid":
        print(
            f"FID {result['fid']:.3f}: {result['samples']} samples against {result['reference']['images']} "
            f"{result['reference']['dataset']} training images, features {result['extractor']}"
        )
    elif args.task == "likelihood":
        print(f"bits/dim {result['bits_per_dim']:.3f} ± {result['standard_error']:.3f} on {result['images']} images")
    print(f"wrote {out}/{args.task}.json and its pictures")


def cmd_demo(args) -> None:
    cfg = load_config("toy2d")
    cfg.train.steps = args.steps
    metrics = train_and_report(cfg, Path(args.out), existing=run_policy(args))
    print(f"pictures: {args.out}/trajectories.png, {args.out}/boltzmann.png, {args.out}/density.png")
    if "true_nll" in metrics:
        print(
            f"gap to the true density: CNF {metrics['cnf_nll'] - metrics['true_nll']:+.3f} nats, "
            f"energy {metrics['energy_nll'] - metrics['true_nll']:+.3f} nats"
        )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vpfb", description="Energy-based generative models via potential flow.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model", description=f"presets: {', '.join(presets())}")
    t.add_argument("config", nargs="?", default=None, help="preset name or YAML file (default: built-in defaults)")
    t.add_argument(
        "--data",
        help=f"toy set ({', '.join(TOY_DATASETS)}) or a .npy/.npz/.csv file of points; for image "
        f"presets an image set, folder or .npy/.npz array",
    )
    t.add_argument("--out", help="run directory (default runs/<data>)")
    t.add_argument("--steps", type=int, help="training steps")
    t.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=1e-3")
    add_run_directory_options(t)
    t.set_defaults(func=cmd_train)
    s = sub.add_parser("sample", help="draw samples from a trained model")
    s.add_argument("run", help="run directory")
    s.add_argument("-n", type=int, default=1000)
    s.add_argument("--out", required=True, help="output .npy or .png")
    s.add_argument("--solver", default=None, help="dopri5 (default), euler, heun, rk4, ...")
    s.add_argument("--steps", type=int, default=100, help="steps of a fixed-step solver")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_sample)
    e = sub.add_parser("eval", help="evaluate a trained image model: a table and a picture per task")
    e.add_argument("run", help="run directory")
    e.add_argument("--task", required=True, help="fid, likelihood, ood, interpolation, composition or longrun")
    e.add_argument(
        "-n",
        type=int,
        default=None,
        help="fid: samples (default 50,000); other tasks: images used "
        "(likelihood, ood) or drawn (pictures; default 64)",
    )
    e.add_argument(
        "--extractor",
        default="inception",
        help="fid: inception (torchmetrics + torch-fidelity) or mnist (MnistFeatures weights from --extractor-path)",
    )
    e.add_argument("--extractor-path", help="fid: safetensors weights of the mnist extractor")
    e.add_argument("--cache-dir", help="fid: reference statistics cache (default $VPFB_CACHE/fid, ~/.cache/vpfb/fid)")
    e.add_argument("--solver", default=None, help="fid: the sampler's ODE solver (default: the run's eval.solver)")
    e.add_argument("--steps", type=int, default=100, help="fid: steps of a fixed-step solver")
    e.add_argument("--labels", type=int, nargs=2, help="composition: the two classes to compose")
    e.add_argument("--t-end", type=float, default=20.0, help="longrun: how long to run (the paper's 20)")
    e.add_argument("--step-size", type=float, default=0.02, help="longrun: the step h (the paper's 0.02)")
    e.add_argument(
        "--protocol",
        default="synthetic",
        help="ood: cifar10 (the paper's: SVHN, CIFAR-100, CelebA, interpolations), mnist, "
        "fashion-mnist, or synthetic (the run's data against noise, constant, inverted, rotated)",
    )
    e.add_argument("--data-root", help="ood: where the protocol's sets live (default: the run's data.root, $VPFB_DATA)")
    e.add_argument("--download", action="store_true", help="ood: let torchvision fetch missing sets")
    e.add_argument(
        "--scores",
        nargs="+",
        help="ood: the scores to compare (default: all of log_density, "
        "energy_multiscale, likelihood, likelihood_complexity, "
        "energy_complexity, grad_norm, boltzmann that apply)",
    )
    e.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: each process's own GPU)")
    e.add_argument("--out", help="output folder (default RUN/eval)")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=cmd_eval)
    d = sub.add_parser("demo", help="train on two moons and write the paper's 2-D figures")
    d.add_argument("--out", default="demo")
    d.add_argument("--steps", type=int, default=6000)
    add_run_directory_options(d)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra and (args.command != "train" or not all("=" in e and not e.startswith("-") for e in extra)):
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # overrides after the options: argparse leaves them over
        args.overrides = [*args.overrides, *extra]
    try:
        args.func(args)
    # bad input, a missing optional extra, a run whose every checkpoint is damaged: one line, no traceback
    # (and a run that diverged beyond the NaN guard, a solve that cannot finish)
    except (ValueError, FileNotFoundError, ImportError, CorruptCheckpointError, FloatingPointError, SolverError) as err:
        print(f"vpfb: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
