"""Out-of-distribution detection with a trained model's energy: scores (higher = more in-distribution) and the
standard metrics, AUROC, AUPR (in-distribution positive) and FPR at 95% TPR, computed by scikit-learn."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from vpfb.model import EnergyModel


def png_bits(x: Tensor) -> Tensor:
    """The length in bits L(x) of each image x ∈ [-1, 1] [N, C, H, W], quantised to 8 bits and saved as a PNG: a
    generic compressor's estimate of its complexity (Serrà et al. 2020).

    Args:
        x: [N, C, H, W] images in [-1, 1] (clamped), C = 1 (grey) or 3 (RGB); any device.
    Returns:
        [N] float64 on the CPU: 8 × the PNG file's bytes.
    """
    import io

    from PIL import Image

    pixels = ((x.detach().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    lengths = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
        lengths.append(8 * buffer.tell())
    return torch.tensor(lengths, dtype=torch.float64)


def end_time(model: EnergyModel, t: float | None) -> float:
    """t if given, else 1 where Φ(·, 1) depends on the weights, else the model's read-out time (under the
    energy parameterisation on a σ_min = 0 path ∇Φ(x, 1) = x whatever was trained)."""
    if t is not None:
        return t
    return 1.0 if model.boltzmann_is_informative() else model.read_out_t


LOG2 = float(np.log(2))


def cnf(model: EnergyModel, x: Tensor, batch_size: int = 64) -> Tensor:
    """The CNF log-likelihood log p(x) (`EnergyModel.log_likelihood`) at tolerance 1e-3 (a ranking needs no more),
    Hutchinson's estimator (one probe) beyond 16-D, in batches of 64: the solve keeps a graph through the network
    (about 9 GB for 256 MNIST digits on the U-Net).

    Args:
        x: [N, *shape] in user units.
        batch_size: rows per solve (default 64).
    Returns:
        [N] log p(x) (nats).
    """
    return torch.cat(
        [model.log_likelihood(c, hutchinson=model.dim > 16, rtol=1e-3, atol=1e-3) for c in x.split(batch_size)]
    )


SCORES: dict[str, Callable[..., Tensor]] = {
    "boltzmann": lambda m, x, t: m.boltzmann(x, t=1.0 if t is None else t),  # the paper's Φ_B at t = 1
    "log_density": lambda m, x, t: m.log_density(x, t),  # log ρ̄ₜ, at the model's read-out t unless t is given
    "likelihood": lambda m, x, t: cnf(m, x),  # CNF log p(x)
    "grad_norm": lambda m, x, t: -m.velocity(x, end_time(m, t)).flatten(1).norm(dim=1),  # small ‖∇Φ‖
    # Serrà et al.'s complexity correction: how many bits the model saves over PNG, log₂ p(x) + L(x)
    "likelihood_complexity": lambda m, x, t: cnf(m, x).double() / LOG2 + png_bits(x),
    "energy_complexity": lambda m, x, t: m.log_density(x, t).double() / LOG2 + png_bits(x),
}
COMPLEXITY = {"likelihood_complexity": "likelihood", "energy_complexity": "log_density"}  # score: what it corrects


class MultiscaleEnergy:
    """The energy's multiscale typicality (Mahmood et al. 2021's MSMA, with the energy in place of score norms): the
    features f(x) = (ψ(x, tₖ)/D, ‖∇Φ(x, tₖ)‖/√D) at times tₖ, a Gaussian N(m, C) fitted to in-distribution
    training images, and the score log N(f(x); m, C) up to a constant. A near-distribution image (a rotated digit)
    can be as likely as a typical one at one noise level and still have an atypical profile across levels.
    C is regularised by 1e-3 of its diagonal (the features are strongly correlated).

    Args:
        model: the model whose energy gives the features.
        x_train: [N, *shape] in-distribution training images, more than 2K of them (K times).
        times: the times tₖ (default TIMES).
        batch_size: rows per feature batch while fitting.

    Called as score(model, x, t=None) with x [N, *shape] (t is ignored: the times are fixed), it returns [N] float64
    on the CPU, log N(f(x); m, C) + const; `ood_scores` and `score_sets` take it as a score.
    """

    # Twelve levels across (0, 1), as MSMA spreads ten noise levels: on MNIST-5k the early ones matter (six times from
    # 0.3 to 0.95 separated 90° rotations at AUROC 0.887, these twelve at 0.944; BENCHMARKS.md "Image energy")
    TIMES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)

    def __init__(self, model: EnergyModel, x_train: Tensor, times: tuple[float, ...] = TIMES, batch_size: int = 256):
        if len(x_train) < 2 * len(times) + 1:
            raise ValueError(
                f"fitting {2 * len(times)} features needs more than {2 * len(times)} training images, "
                f"got {len(x_train)}"
            )
        self.times = tuple(times)
        f = torch.cat([self.features(model, chunk) for chunk in torch.split(x_train, batch_size)])
        self.mean = f.mean(0)
        cov = torch.cov(f.T)
        self.cholesky = torch.linalg.cholesky(cov + 1e-3 * torch.diag(cov.diagonal()))

    def features(self, model: EnergyModel, x: Tensor) -> Tensor:
        """f(x) [N, 2K] in float64."""
        columns = []
        for t in self.times:
            speed = model.velocity(x, t).flatten(1).norm(dim=1)
            columns += [model.log_density(x, t) / model.dim, speed / model.dim**0.5]
        return torch.stack(columns, 1).detach().cpu().double()

    def __call__(self, model: EnergyModel, x: Tensor, t: float | None = None) -> Tensor:
        z = torch.linalg.solve_triangular(self.cholesky, (self.features(model, x) - self.mean).T, upper=False)
        return -0.5 * (z**2).sum(0)


Score = Callable[[EnergyModel, Tensor, Optional[float]], Tensor]


def ood_scores(
    model: EnergyModel, x: Tensor, score: str | Score = "boltzmann", t: float | None = None, batch_size: int = 256
) -> Tensor:
    """One score per sample, higher meaning more in-distribution, computed in batches; `score` names one of SCORES
    or is a fitted score such as MultiscaleEnergy.

    Args:
        model: the trained model.
        x: [N, *shape] samples in user units.
        score: "boltzmann" (Φ_B), "log_density", "likelihood" (CNF), "grad_norm" (−‖∇Φ‖), "likelihood_complexity",
            "energy_complexity" (log₂ p + L(x), L from `png_bits`), or a callable (model, x, t) -> [N].
        t: the time read; None: each score's default (Φ_B at t = 1, log_density at the model's read-out t,
            grad_norm at `end_time`); the CNF scores ignore it.
        batch_size: rows per call of the score.
    Returns:
        [N] scores, detached, on the CPU (float64 for the complexity scores).
    """
    if isinstance(score, str):
        if score not in SCORES:
            raise ValueError(f"unknown OOD score {score!r}; choose one of {sorted(SCORES)}")
        score = SCORES[score]
    return torch.cat([score(model, chunk, t).detach().cpu() for chunk in torch.split(x, batch_size)])


def ood_metrics(scores_in: Tensor, scores_out: Tensor) -> dict[str, float]:
    """AUROC, AUPR (in-distribution = positive class) and the false-positive rate at 95% true-positive rate.

    Args:
        scores_in: [N_in] finite scores of in-distribution samples (flattened; tensor or array), higher = more
            in-distribution.
        scores_out: [N_out] finite scores of OOD samples.
    Returns:
        {"auroc", "aupr", "fpr95"} floats; fpr95 is the FPR at the first ROC point whose TPR reaches 0.95.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    s_in, s_out = (np.asarray(torch.as_tensor(s).detach().cpu().double()).ravel() for s in (scores_in, scores_out))
    if len(s_in) == 0 or len(s_out) == 0:
        raise ValueError(f"need scores of both sets, got {len(s_in)} in-distribution and {len(s_out)} OOD")
    if not (np.isfinite(s_in).all() and np.isfinite(s_out).all()):
        raise ValueError("scores contain NaN or inf")
    labels = np.concatenate([np.ones_like(s_in), np.zeros_like(s_out)])
    scores = np.concatenate([s_in, s_out])
    fpr, tpr, _ = roc_curve(labels, scores)
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "aupr": float(average_precision_score(labels, scores)),
        "fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
    }


IN_DISTRIBUTION = "in-distribution"


def score_sets(
    model: EnergyModel,
    x_in: Tensor,
    x_out: dict[str, Tensor],
    scores: tuple[str, ...] | dict[str, Score] = ("boltzmann",),
    t: float | None = None,
) -> dict[str, dict[str, Tensor]]:
    """{score: {"in-distribution": scores of x_in, OOD set name: its scores}}; all sets must match the model.
    `scores`: names of SCORES, or {name: score} with fitted ones.

    A complexity score whose base score ("likelihood", "log_density") is also asked for reuses it (log₂ p + L(x)):
    no second CNF solve.

    Args:
        model: the trained model.
        x_in: [N, *shape] in-distribution samples.
        x_out: {OOD set name: [M, *shape]} (each with the model's shape: resize first).
        scores: names of SCORES, or {name: a name of SCORES or a fitted score such as MultiscaleEnergy}.
        t: the time read, as `ood_scores`.
    Returns:
        {score: {set name: [N] or [M] scores on the CPU}}, scores in the order given, "in-distribution" first.
    """
    if not isinstance(scores, dict):
        scores = {name: name for name in scores}
    for name, x in x_out.items():
        if tuple(x.shape[1:]) != model.shape:
            raise ValueError(
                f"OOD set {name!r} has samples of shape {tuple(x.shape[1:])}; the model takes "
                f"{model.shape}: resize it first"
            )
    sets = {IN_DISTRIBUTION: x_in, **x_out}
    scored: dict[str, dict[str, Tensor]] = {}
    for label in sorted(scores, key=lambda s: s in COMPLEXITY):  # the plain scores first, then their corrections
        base = COMPLEXITY.get(label) if scores[label] == label else None
        if base in scored:  # Serrà et al.'s correction of a score already computed: no second CNF solve
            scored[label] = {name: scored[base][name].double() / LOG2 + png_bits(x) for name, x in sets.items()}
        else:
            scored[label] = {name: ood_scores(model, x, scores[label], t) for name, x in sets.items()}
    return {label: scored[label] for label in scores}


def table_of(scored: dict[str, dict[str, Tensor]]) -> list[dict]:
    """Rows {ood set, score, auroc, aupr, fpr95} of every OOD set under every score of `score_sets`' result."""
    return [
        {"ood": name, "score": score, **ood_metrics(sets[IN_DISTRIBUTION], s_out)}
        for score, sets in scored.items()
        for name, s_out in sets.items()
        if name != IN_DISTRIBUTION
    ]


def ood_table(
    model: EnergyModel,
    x_in: Tensor,
    x_out: dict[str, Tensor],
    scores: tuple[str, ...] = ("boltzmann",),
    t: float | None = None,
) -> list[dict]:
    """Rows {ood set, score, auroc, aupr, fpr95} for every OOD set and score; all sets must match the model.

    Args:
        model, x_in, x_out, scores, t: as `score_sets` (x_in [N, *shape], x_out {name: [M, *shape]}).
    Returns:
        list of {"ood": set name, "score": score name, "auroc", "aupr", "fpr95"} (`ood_metrics`), grouped by score.
    """
    return table_of(score_sets(model, x_in, x_out, scores, t))
