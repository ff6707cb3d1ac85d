"""Energies read off a potential: the paper's Boltzmann potential Φ_B and compositions (docs/method.md §3, §5)."""

from __future__ import annotations

import torch
from torch import Tensor

from vpfb.parameterisation import with_labels
from vpfb.potentials.base import Potential
from vpfb.tensors import flat_dot


def boltzmann(potential: Potential, x: Tensor, t: float = 1.0, f_inf: float = -1.0, g_inf: float = 1.0) -> Tensor:
    """The paper's Φ_B(x) = (4Φ(x, t) + f_∞‖x‖²)/g_∞², log-density (up to a constant) of the stationary law of
    dx = [2∇Φ + f_∞x]dt + g_∞dW. Defaults are the released code's (f_∞ = −1, g_∞ = 1, t = 1).

    Caution: on the linear path with σ_min = 0 the exact optimum has Φ(x, 1) = ‖x‖²/2 + C for any data, so Φ_B of
    a perfect model is ‖x‖² + C, which is not normalisable; log ρ̄ₜ (`log_density`) is the density to trust.
    """
    tt = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
    return (4 * potential(x, tt) + f_inf * flat_dot(x, x)) / g_inf**2


class CombinedPotential:
    """Φ(x, t) = Σₖ wₖ Φₖ(x, t), and log ρ(x, t) = Σₖ wₖ log ρₖ(x, t): a product of experts in energy form.

    Every composition of conditional potentials is one: the weighted average Σ wₖΦ(·|cₖ)/Σ wₖ (the paper's),
    negation Φ(·|a) + λ(Φ(·|a) − Φ(·|b)), and guidance Φ(·|∅) + w(Φ(·|c) − Φ(·|∅)), whose gradient is the guided
    velocity.
    """

    def __init__(self, potentials: list, weights: list[float]):
        if len(potentials) != len(weights) or not potentials:
            raise ValueError(
                f"need one weight per potential, got {len(potentials)} potentials and {len(weights)} weights"
            )
        if abs(sum(weights) - 1) > 1e-6:
            # Φₖ = ½f‖x‖² + ½g²ψₖ: only weights summing to one keep Σ wₖΦₖ the potential of Σ wₖψₖ
            raise ValueError(
                f"composition weights must sum to 1 (got {list(weights)}, sum {sum(weights):g}): "
                f"otherwise the flow of Σ wΦ and the density Σ w log ρ describe different laws. "
                f"Normalise them; a sharper or flatter product is a temperature"
            )
        self.potentials, self.weights = potentials, [float(w) for w in weights]

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return sum(w * p(x, t) for w, p in zip(self.weights, self.potentials))

    def log_density(self, x: Tensor, t: Tensor) -> Tensor:
        return sum(w * p.log_density(x, t) for w, p in zip(self.weights, self.potentials))


def conditioned(potential, num_classes: int | None, labels: Tensor | int | dict | None, n: int, device=None):
    """The one way labels reach a potential Φ(x, t, c) of `num_classes` classes (None: unconditional) for n samples:
    the given labels (one, or one per sample) bound, the null label `num_classes` (the unconditional model) for
    None, or for a dict {label: weight} the composition Σ weight·Φ(·|label) (CombinedPotential)."""
    if num_classes is None:
        if labels is not None:
            raise ValueError(
                "this model is unconditional; it takes no labels (composition needs a model "
                "trained with model.conditional=true)"
            )
        return potential
    if isinstance(labels, dict):
        parts = [conditioned(potential, num_classes, c, n, device) for c in labels]
        return CombinedPotential(parts, list(labels.values()))
    labels = torch.as_tensor(num_classes if labels is None else labels, dtype=torch.long, device=device)
    if labels.dim() > 1 or (labels.dim() == 1 and len(labels) != n):
        raise ValueError(f"give one label, or one per sample ({n}), got labels of shape {tuple(labels.shape)}")
    labels = labels.expand(n)
    if labels.min() < 0 or labels.max() > num_classes:
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1} (or {num_classes}, the null label), "
            f"got {labels.min().item()}..{labels.max().item()}"
        )
    return with_labels(potential, labels)
