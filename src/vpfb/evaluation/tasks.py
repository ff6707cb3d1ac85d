"""`vpfb eval RUN --task T`: each task reads a trained image or point model, writes a table (JSON) and a picture
into the output folder, and returns its numbers. The work is done by the evaluation modules; this file wires."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from vpfb import distributed
from vpfb.data import IMAGE_SETS, ImageData, load_images
from vpfb.evaluation.composition import average, negate
from vpfb.evaluation.fid import task_fid
from vpfb.evaluation.interpolation import interpolate
from vpfb.evaluation.longrun import long_run
from vpfb.evaluation.ood import MultiscaleEnergy, score_sets, table_of
from vpfb.evaluation.ood_sets import PROTOCOLS, protocol_sets, reference_images
from vpfb.model import EnergyModel


def run_data(model: EnergyModel, split: str = "test") -> tuple[ImageData, str]:
    """The images of the run's data set in `split` ("train" for a source that has no other, such as a user's file or
    folder), checked against the model's shape, and the split's name."""
    d = model.config.data
    key = str(d.name).lower()
    split = split if key in IMAGE_SETS and split in IMAGE_SETS[key] else "train"
    data = load_images(d.name, root=d.root or None, split=split, image_size=d.image_size or None, labels=False)
    if data.shape != model.shape:
        raise ValueError(f"the run's data now loads as {data.shape}, the model takes {model.shape}")
    return data, split


def run_images(model: EnergyModel, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, str]:
    """n held-out images of the run's data set (uint8 and in [-1, 1]), drawn at random, and their split."""
    data, split = run_data(model)
    index = torch.randperm(len(data), generator=generator)[:n]
    return data.images[index], data.batch(index), split


def task_likelihood(model, out, n, generator) -> dict:
    """`vpfb eval --task likelihood`: the CNF's bits per dimension (`EnergyModel.bits_per_dim`, one Hutchinson probe
    per image, dequantisation and probes drawn by `generator`) of n held-out uint8 images drawn at random from the
    run's test split ("train" where the source has no other); writes no picture. Returns {"images": how many,
    "split", "bits_per_dim": the mean, "standard_error": its standard error over the images}."""
    images, _, split = run_images(model, n, generator)
    bpd, se = model.bits_per_dim(images, generator=generator)
    return {"images": len(images), "split": split, "bits_per_dim": bpd, "standard_error": se}


OOD_SCORES = (
    "log_density",
    "energy_multiscale",
    "likelihood",
    "likelihood_complexity",
    "energy_complexity",
    "grad_norm",
    "boltzmann",
)


def task_ood(
    model,
    out,
    n,
    generator,
    protocol: str = "synthetic",
    root: str | None = None,
    download: bool = False,
    scores: tuple[str, ...] = OOD_SCORES,
) -> dict:
    """`vpfb eval --task ood`: how well each of `scores` (OOD_SCORES by default; higher = more in-distribution)
    tells n in-distribution images from n of every OOD set of `protocol` (`protocol_sets`: "synthetic" uses the
    run's own test split, or "train" where there is no other, and sets made from it; a named protocol brings its
    own test split and loads from `root`, fetching missing sets when `download`). "boltzmann" is dropped where Φ_B
    at t = 1 does not depend on the weights, "energy_multiscale" where the run has no held-out split; that score is
    fitted on max(n, 500) training images (`reference_images`), never on the ones it scores. Writes histograms of
    the scores to out/ood.png. Returns {"protocol", "in_distribution": the data set, "split", "images": n, "rows":
    one {"ood", "score", "auroc", "aupr", "fpr95"} per OOD set and score (`table_of`)}."""
    own, split = None, None
    if PROTOCOLS.get(protocol) and PROTOCOLS[protocol].in_distribution is None:
        own, split = run_data(model)
    unknown = set(scores) - set(OOD_SCORES)
    if unknown:
        raise ValueError(f"unknown OOD score(s) {sorted(unknown)}; choose from {', '.join(OOD_SCORES)}")
    x, sets = protocol_sets(
        protocol,
        model.shape,
        n,
        root=root or model.config.data.root or None,
        generator=generator,
        download=download,
        own=own,
    )
    from vpfb.plots import save_score_histograms

    if not model.boltzmann_is_informative():  # Φ_B at t = 1 does not depend on the weights of every model
        scores = tuple(s for s in scores if s != "boltzmann")
    if own is not None and split == "train":  # no held-out split: nothing to fit the multiscale score on apart
        scores = tuple(s for s in scores if s != "energy_multiscale")
    fitted = {}
    if "energy_multiscale" in scores:  # fitted on training images, never on the held-out ones it scores
        train = run_data(model, "train")[0] if own is not None else None
        reference = reference_images(
            protocol,
            model.shape,
            max(n, 500),
            root=root or model.config.data.root or None,
            generator=generator,
            download=download,
            own=train,
        )
        fitted["energy_multiscale"] = MultiscaleEnergy(model, reference)
    scored = score_sets(model, x, sets, scores={s: fitted.get(s, s) for s in scores})
    save_score_histograms(scored, out / "ood.png")
    return {
        "protocol": protocol,
        "in_distribution": model.config.data.name if own else protocol,
        "split": split or PROTOCOLS[protocol].in_distribution[1],
        "images": n,
        "rows": table_of(scored),
    }


def task_interpolation(model, out, n, generator) -> dict:
    """`vpfb eval --task interpolation`: max(n // 8, 1) rows of 8 samples along a slerp in the prior
    (`interpolate`): the first between two held-out images of the run's test split ("train" where there is no
    other), inverted by the ODE; the others between fresh noises drawn by `generator`. Writes the rows to
    out/interpolation.png. Returns {"rows": how many, "first_row": what it shows, "split", "log_density": per row,
    the 8 samples' log_density at the model's read-out time (the energy along the path)}."""
    from vpfb.plots import save_image_grid

    images, x, split = run_images(model, 2 * max(n // 8, 1), generator)
    rows, energies = [], []
    for k in range(0, len(x), 2):
        path = interpolate(model, 8, x[k], x[k + 1]) if k == 0 else interpolate(model, 8, generator=generator)
        rows.append(path["samples"])
        energies.append(path["log_density"].tolist())
    save_image_grid(torch.cat(rows), out / "interpolation.png", columns=8)
    return {
        "rows": len(rows),
        "first_row": f"two real images ({split} split), inverted and interpolated",
        "split": split,
        "log_density": energies,
    }


def task_composition(model, out, n, generator, labels: tuple[int, int] = (0, 1)) -> dict:
    """`vpfb eval --task composition` (conditional models): flow samples of four label specifications built from
    `labels` (a, b): class a, class b, `average`([a, b]) and a not b (`negate`), max(n // 4, 1) per row, each row
    from the same seed 0 (not `generator`), so that rows differ by their labels alone; no data split is used.
    Writes the rows to out/composition.png. Returns {"rows": the four names, "samples_per_row"}."""
    from vpfb.plots import save_image_grid

    a, b = labels
    specs = {f"class {a}": a, f"class {b}": b, f"average({a}, {b})": average([a, b]), f"{a} not {b}": negate(a, b)}
    per_row = max(n // len(specs), 1)
    grids = [model.sample(per_row, labels=spec, generator=torch.Generator().manual_seed(0)) for spec in specs.values()]
    save_image_grid(torch.cat(grids), out / "composition.png", columns=per_row)
    return {"rows": list(specs), "samples_per_row": per_row}


def task_longrun(model, out, n, generator, t_end: float = 20.0, step_size: float = 0.02) -> dict:
    """`vpfb eval --task longrun`: `long_run` of the model's potential Φ from the same n starting states x0 ~ N(0, I)
    (drawn by `generator`) with each method ("ode", "sgld", "released") up to `t_end` in steps of `step_size`; no
    data split is used. Writes the diagnostics to out/longrun.png and, per method, the first min(n, 8) chains at
    every recorded time to out/longrun_<method>.png. Returns {method: {"times", "mean_grad_sq": E‖∇Φ(x, 1)‖²,
    "mean_phi": EΦ(x, 1)}}, lists over the recorded times."""
    from vpfb.plots import save_image_grid, save_long_run

    x0 = torch.randn(n, *model.shape, generator=generator)
    runs = {m: long_run(model.phi, x0, m, t_end, step_size, generator=generator) for m in ("ode", "sgld", "released")}
    save_long_run(runs, out / "longrun.png")
    for name, run in runs.items():
        save_image_grid(
            run.snapshots[:, : min(n, 8)].transpose(0, 1).flatten(0, 1),
            out / f"longrun_{name}.png",
            columns=len(run.times),
        )
    return {
        m: {"times": r.times.tolist(), "mean_grad_sq": r.mean_grad_sq.tolist(), "mean_phi": r.mean_phi.tolist()}
        for m, r in runs.items()
    }


TASKS: dict[str, Callable[..., dict]] = {
    "fid": task_fid,
    "likelihood": task_likelihood,
    "ood": task_ood,
    "interpolation": task_interpolation,
    "composition": task_composition,
    "longrun": task_longrun,
}


def evaluate(model: EnergyModel, task: str, out: Path, n: int = 64, seed: int = 0, **options) -> dict:
    """Run one task on an image model, write out/<task>.json (and its pictures), return the numbers.

    Args:
        model: an image model (shape (C, H, W)); "composition" needs a conditional one.
        task: one of TASKS: "fid", "likelihood", "ood", "interpolation", "composition", "longrun".
        out: output folder, created if missing.
        n: a positive number of images or samples, as each task reads it (task_*).
        seed: seeds the torch.Generator that the task draws from.
        options: the task's own keyword arguments (e.g. protocol=, scores= for "ood"; labels= for "composition";
            t_end=, step_size= for "longrun"; fid's for "fid").
    Returns:
        The task's dict of numbers, also written (by rank 0 alone under torchrun: fid runs on every process) to
        out/<task>.json.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    if len(model.shape) != 3:
        raise ValueError(f"vpfb eval works on image models; this one takes points of dimension {model.dim}")
    if task == "composition" and model.num_classes is None:
        raise ValueError("composition needs a conditional model (train with model.conditional=true)")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of images, got {n!r}")
    out.mkdir(parents=True, exist_ok=True)
    result = TASKS[task](model, out, n, torch.Generator().manual_seed(seed), **options)
    if distributed.current().is_main:  # fid runs on every process of a torchrun
        (out / f"{task}.json").write_text(json.dumps(result, indent=2))
    return result
