"""Compositions of a conditional model's potentials, as `labels` for any EnergyModel method: a dict
{label: weight} means Φ = Σ weight·Φ(·|label) (vpfb.energy.CombinedPotential). The null label ∅ is
model.num_classes."""

from __future__ import annotations

from vpfb.model import EnergyModel


def average(labels: list[int], weights: list[float] | None = None) -> dict[int, float]:
    """The paper's composition Σₖ wₖΦ(·|cₖ) / Σₖ wₖ (equal weights by default): samples that fit every class.

    Args:
        labels: the classes cₖ, at least one.
        weights: wₖ, one per label, with a positive sum (default all 1).
    Returns:
        {cₖ: wₖ / Σₖ wₖ}, to pass as `labels`.
    """
    weights = [1.0] * len(labels) if weights is None else list(weights)
    if len(weights) != len(labels) or not labels or sum(weights) <= 0:
        raise ValueError(f"need as many positive-sum weights as labels, got {labels} and {weights}")
    total = sum(weights)
    return {c: w / total for c, w in zip(labels, weights)}


def negate(keep: int, avoid: int, strength: float = 0.5) -> dict[int, float]:
    """Φ(·|keep) + λ(Φ(·|keep) − Φ(·|avoid)): samples of `keep` pushed away from `avoid`. The weights sum to one,
    so the prior's contraction is kept (Φ_keep − λΦ_avoid alone scales it by 1 − λ and the flow misses the data).

    Args:
        keep, avoid: two different classes.
        strength: λ (default 0.5).
    Returns:
        {keep: 1 + λ, avoid: −λ}, to pass as `labels`.
    """
    if keep == avoid:
        raise ValueError(f"negation needs two different labels, got {keep} twice")
    return {keep: 1.0 + strength, avoid: -strength}


def guide(model: EnergyModel, label: int, scale: float) -> dict[int, float]:
    """Guidance Φ(·|∅) + w(Φ(·|c) − Φ(·|∅)): velocity ∇Φ_∅ + w(∇Φ_c − ∇Φ_∅) (w = 1 is the conditional model).

    Args:
        model: a conditional model (its null label ∅ is model.num_classes).
        label: the class c.
        scale: the guidance weight w.
    Returns:
        {c: w, ∅: 1 − w}, to pass as `labels`.
    """
    if model.num_classes is None:
        raise ValueError("guidance needs a conditional model (model.conditional=true)")
    return {label: scale, model.num_classes: 1.0 - scale}
