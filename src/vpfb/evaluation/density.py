"""Density-estimation metrics for a trained model on held-out points (nats per point, the user's units)."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from vpfb.likelihood import grid_box, grid_log_normaliser
from vpfb.model import EnergyModel


def calibrate_density_t(model: EnergyModel, x: Tensor, times: list[float]) -> tuple[float, dict[float, float]]:
    """The read-out time t at which log_density(·, t) is the best density for the points x; returns t and the
    criterion at every time (lower is better).

    In 2-D the criterion is the NLL of x under log_density normalised on a grid around x, so that a read-out that
    is sharp on the data but grows where training never looked (late t, far from the data) loses. In other
    dimensions it is the spread std(log_density − log p_CNF) against the model's own CNF likelihood (both known
    up to a constant), which sees only the points themselves.

    Args:
        model: a trained point model.
        x: [N, d] points in user units (`fit` passes training points).
        times: candidate times t in (0, 1], at least one.
    Returns:
        (the time of the lowest criterion, {t: criterion}): in 2-D the grid-normalised NLL (nats per point), else
        the standard deviation (nats).
    """
    if not times:
        raise ValueError("calibration needs at least one candidate time")
    if model.dim == 2:
        low, high = grid_box(x)
        criterion = {
            t: -(
                model.log_density(x, t).double()
                - grid_log_normaliser(lambda y, t=t: model.log_density(y, t), low, high)
            )
            .mean()
            .item()
            for t in times
        }
    else:
        reference = model.log_likelihood(x, hutchinson=model.dim > 16)
        criterion = {t: (model.log_density(x, t) - reference).std().item() for t in times}
    return min(criterion, key=criterion.get), criterion


def density_metrics(
    model: EnergyModel,
    x_test: Tensor,
    true_log_density: Callable[[Tensor], Tensor] | None = None,
    box: tuple[Tensor, Tensor] | None = None,
    grid_points: int = 400,
) -> dict[str, float]:
    """CNF test NLL, the true density's NLL (when known) and, in 2-D, the grid-normalised NLLs of log_density and
    of the paper's Boltzmann density exp(Φ_B) (which need not be normalisable: its NLL then depends on the box).

    Args:
        model: a trained point model (log_density read at its read_out_t, Φ_B at t = 1).
        x_test: [N, d] held-out points in user units.
        true_log_density: the data's normalised log-density, x [N, d] -> [N] (nats), when known.
        box: (low [2], high [2]), the 2-D box normalised over (default `grid_box(x_test)`).
        grid_points: midpoint-rule cells per side of the box.
    Returns:
        Mean NLLs in nats per point: "cnf_nll", "true_nll" (with true_log_density), and in 2-D "energy_nll" and
        "boltzmann_nll" (left out where Φ_B does not depend on the weights: `boltzmann_is_informative`).
    """
    metrics = {"cnf_nll": -model.log_likelihood(x_test).mean().item()}
    if true_log_density is not None:
        metrics["true_nll"] = -true_log_density(x_test).mean().item()
    if model.dim == 2:
        low, high = box if box is not None else grid_box(x_test)
        scores = {"energy_nll": model.log_density, "boltzmann_nll": model.boltzmann}
        if not model.boltzmann_is_informative():
            del scores["boltzmann_nll"]
        for key, log_p in scores.items():
            log_z = grid_log_normaliser(log_p, low, high, grid_points)
            metrics[key] = -(log_p(x_test).double() - log_z).mean().item()
    return metrics
