"""Training objectives. Each is a callable ``loss(potential, x_bar) -> LossOutput``.

``DeepRitzLoss`` is the paper's variational loss L = E_t w(t) J_t with
J_t[Φ] = E[½‖∇Φ‖² − γ Φ] (the "covariance" estimator, score-free) or, after integrating by parts,
J_t[Φ] = E[½‖∇Φ‖² − ∇Φ·u] (the "pathwise" estimator, same expectation, far lower variance in high D).
``ReleasedVAPOLoss`` is the hybrid the authors' code optimises (docs/method.md §7), kept for reproduction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from vpfb.paths import GaussianPath
from vpfb.potentials.base import Potential, potential_and_velocity
from vpfb.tensors import expand_like, flat_dot


@dataclass
class LossOutput:
    loss: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)  # detached scalars for logging (no device sync)


class TimeSampler:
    """t in [t_min, 1 − t_min]: "uniform", or "logit_normal" (sigmoid of N(loc, scale²))."""

    def __init__(self, kind: str = "uniform", t_min: float = 1e-5, loc: float = 0.0, scale: float = 1.0):
        if kind not in ("uniform", "logit_normal"):
            raise ValueError(f"unknown time sampling {kind!r}; choose 'uniform' or 'logit_normal'")
        if not 0.0 <= t_min < 0.5:
            raise ValueError(f"t_min must lie in [0, 0.5), got {t_min}")
        self.kind, self.t_min, self.loc, self.scale = kind, t_min, loc, scale

    def __call__(self, n: int, device=None, dtype=None) -> Tensor:
        if self.kind == "uniform":
            t = torch.rand(n, device=device, dtype=dtype)
        else:
            t = torch.sigmoid(self.loc + self.scale * torch.randn(n, device=device, dtype=dtype))
        return t.clamp(self.t_min, 1 - self.t_min)


def time_weight(name: str, path: GaussianPath, t: Tensor, floor: float = 0.2) -> Tensor:
    """w(t), shared by both terms of J_t. "uniform": 1 (flow matching); "snr" (default): (μ² + c)/(σ² + c), a
    signal-to-noise ratio clipped at c = `floor`, which weights late times more and so sharpens the flow and the
    energy near the data; "sigma2": σ(t)² (tames γ's 1/σ near t = 1); "dsm": μ²/(μ̇σ − σ̇μ)² ∝ σ²/g⁴, which makes
    the loss of an EnergyPotential exactly denoising score matching E‖σ∇ψ + ε‖² on its log-density ψ (linear
    path: t²)."""
    if name == "uniform":
        return torch.ones_like(t)
    s = path.at(t)
    if name == "snr":
        return (s.mu**2 + floor) / (s.sigma**2 + floor)
    if name == "sigma2":
        return s.sigma**2
    if name == "dsm":
        return (s.mu / (s.d_mu * s.sigma - s.d_sigma * s.mu)) ** 2
    raise ValueError(f"unknown time weight {name!r}; choose 'snr', 'uniform', 'sigma2' or 'dsm'")


class PartitionTerm:
    """The negative log-likelihood of the path's samples under exp(ψ)/Z, ψ = log ρ̄ₜ read from Φ:

    L_Z = E_t[log Z_t] − E_{t, x ~ ρ_t}[ψ(x, t)],  Z_t = ∫ exp ψ(x, t) dx ≈ (1/M) Σ_j exp ψ(y_j, t) / q(y_j),

    y_j ~ q = N(0, s²I), at `times` shared times per batch, uniform in [t_low, 1), with M = `samples` proposals
    each. Its minimiser over ψ is log ρ̄ₜ + C(t), the Deep Ritz loss's own, so it moves no optimum; but the Ritz loss
    sees Φ only where ρ_t has mass, and late in t that is a thin shell around the data: the network is free to grow
    ψ elsewhere (far corners of a 2-D box, measured after long training) and the read-out stops being a density.
    The proposals reach there. Early times, whose ρ_t is broad, are left to the Ritz loss alone (there the extra
    gradient noise only slowed the velocity's convergence). Importance sampling of Z needs few dimensions: this is
    for point data, not images.

    log Ẑ is the log of an unbiased mean, hence biased low (Jensen): by Var_q(w)/(2M E_q[w]²) to first order in 1/M,
    w = e^ψ/q. For ψ = log N(0, I) in 2-D and s = 2 that is 0.020 nats at M = 32; the self-normalised gradient
    Σⱼ softmax(log w)ⱼ∇ψ(yⱼ) carries a bias of the same order. It is left uncorrected: it shrinks as 1/M, the minimiser
    it shifts is the one the Ritz term pins down (the term only reaches where ρ_t has no mass), and M raises both
    cost and accuracy (`samples`).
    """

    def __init__(self, scale: float = 2.0, times: int = 1, samples: int = 32, t_low: float = 0.5):
        if scale <= 0 or times < 1 or samples < 2 or not 0 <= t_low < 1:
            raise ValueError(
                f"partition term: need scale > 0, times ≥ 1, samples ≥ 2, t_low in [0, 1); got "
                f"{scale}, {times}, {samples}, {t_low}"
            )
        self.scale, self.times, self.samples, self.t_low = scale, times, samples, t_low

    def proposals(self, like: Tensor, t_max: float) -> tuple[Tensor, Tensor, Tensor]:
        """Points y [K·M, ...] ~ N(0, s²I), their times (K values in [t_low, t_max], each repeated M times) and
        log q(y)."""
        n, dim = self.times * self.samples, like[0].numel()
        y = self.scale * torch.randn(n, *like.shape[1:], device=like.device, dtype=like.dtype)
        t = self.t_low + (t_max - self.t_low) * torch.rand(self.times, device=like.device, dtype=like.dtype)
        t = t.repeat_interleave(self.samples)
        log_q = -0.5 * flat_dot(y, y) / self.scale**2 - 0.5 * dim * math.log(2 * math.pi * self.scale**2)
        return y, t, log_q

    def __call__(self, psi_data: Tensor, t_data: Tensor, psi_proposals: Tensor, log_q: Tensor) -> Tensor:
        """L_Z from ψ at the batch's path samples (times t_data; those before t_low are left out, so that both
        terms see the same times) and at the proposals."""
        log_w = (psi_proposals - log_q).view(self.times, self.samples)
        log_z = torch.logsumexp(log_w, dim=1) - math.log(self.samples)
        late = (t_data >= self.t_low).to(psi_data.dtype)
        return log_z.mean() - (late * psi_data).sum() / late.sum().clamp_min(1)


class DeepRitzLoss:
    """L = E_{t, x̄, ε} w(t) [½‖∇Φ(x_t, t)‖² − linear term], linear term γΦ ("covariance") or ∇Φ·u ("pathwise").
    control_variate=True makes the covariance term γ(Φ(x_t, t) − Φ(μx̄, t)): same mean, lower variance.
    partition_weight λ > 0 adds λ·L_Z (`PartitionTerm`), from Φ at the batch and at the proposals.

    Both estimate the same objective, whose minimiser over gradient fields is the marginal velocity E[u | x, t].
    """

    def __init__(
        self,
        path: GaussianPath,
        estimator: str = "pathwise",
        weight: str = "snr",
        time_sampler: TimeSampler | None = None,
        control_variate: bool = False,
        snr_floor: float = 0.2,
        partition_weight: float = 0.0,
        partition_scale: float = 2.0,
    ):
        if estimator not in ("pathwise", "covariance"):
            raise ValueError(f"unknown estimator {estimator!r}; choose 'pathwise' or 'covariance'")
        if snr_floor <= 0:
            raise ValueError(f"snr_floor must be positive, got {snr_floor}")
        if partition_weight < 0:
            raise ValueError(f"partition_weight must be ≥ 0, got {partition_weight}")
        time_weight(weight, path, torch.full((1,), 0.5))  # fail now on a bad name, not mid-training
        self.path, self.estimator, self.weight = path, estimator, weight
        self.time_sampler = time_sampler or TimeSampler()
        self.control_variate, self.snr_floor = control_variate, snr_floor
        self.partition_weight = partition_weight
        self.partition = PartitionTerm(partition_scale) if partition_weight > 0 else None

    def __call__(
        self, potential: Potential, x_bar: Tensor, t: Tensor | None = None, eps: Tensor | None = None
    ) -> LossOutput:
        if t is None:
            t = self.time_sampler(x_bar.shape[0], x_bar.device, x_bar.dtype)
        s = self.path.sample(x_bar, t, eps)
        n = x_bar.shape[0]
        if self.partition is None:
            phi, v = potential_and_velocity(potential, s.x_t, t, create_graph=True)
        else:  # the proposals need Φ alone: they ride in the batch's forward pass, outside the velocity's sweep
            y, t_y, log_q = self.partition.proposals(x_bar, 1 - self.time_sampler.t_min)
            x_all, t_all = torch.cat([s.x_t, y]), torch.cat([t, t_y])
            phi_all, v = potential_and_velocity(potential, x_all, t_all, create_graph=True, rows=n)
            psi = self.path.at(t_all).log_density_of(phi_all, x_all)
            phi = phi_all[:n]
        dirichlet = 0.5 * flat_dot(v, v)
        if self.estimator == "pathwise":
            linear = flat_dot(v, s.u)
        elif self.control_variate:
            # E[γ | x̄, t] = 0, so γΦ(μx̄, t) has mean zero; subtracting it leaves the gradient's mean unchanged
            # and removes most of its variance, as Φ(x_t) − Φ(μx̄) = O(σ).
            linear = s.gamma * (phi - potential(expand_like(self.path.mu(t), x_bar) * x_bar, t))
        else:
            linear = s.gamma * phi
        w = time_weight(self.weight, self.path, t, self.snr_floor)
        loss = (w * (dirichlet - linear)).mean()
        parts = {"loss": loss.detach(), "dirichlet": dirichlet.mean().detach(), "linear": linear.mean().detach()}
        if self.partition is not None:
            nll = self.partition(psi[:n], t, psi[n:], log_q)
            loss = loss + self.partition_weight * nll
            parts.update(loss=loss.detach(), partition_nll=nll.detach())
        with torch.no_grad():
            # ½‖∇Φ − u‖², the flow-matching residual: comparable across estimators and zero only at u.
            parts["residual"] = 0.5 * flat_dot(v - s.u, v - s.u).mean()
        return LossOutput(loss, parts)


def batch_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of two [N] tensors across the batch."""
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12)


class ReleasedVAPOLoss:
    """The authors' released hybrid (docs/method.md §7), for reproduction and ablation only, on the linear path:

    Corr(Φ, Γ) + 0.5 E‖∇Φ‖²/D + 0.1 E(∂ₜΦ)² − E[∇Φ·u / (D (‖∇Φ‖‖u‖)^t)], Γ = (1−t)(‖ε‖² − x̄·ε)/D, u = x̄ − ε.
    Its optimum is not the homotopy velocity at late t.
    """

    def __init__(
        self,
        path: GaussianPath,
        time_sampler: TimeSampler | None = None,
        dirichlet_weight: float = 0.5,
        time_grad_weight: float = 0.1,
    ):
        self.path = path
        self.time_sampler = time_sampler or TimeSampler()
        self.dirichlet_weight, self.time_grad_weight = dirichlet_weight, time_grad_weight

    def __call__(
        self, potential: Potential, x_bar: Tensor, t: Tensor | None = None, eps: Tensor | None = None
    ) -> LossOutput:
        if t is None:
            t = self.time_sampler(x_bar.shape[0], x_bar.device, x_bar.dtype)
        s = self.path.sample(x_bar, t, eps)
        dim = x_bar[0].numel()
        t = t.detach().requires_grad_(True)
        x = s.x_t.detach().requires_grad_(True)
        phi = potential(x, t)
        v, dphi_dt = torch.autograd.grad(phi.sum(), (x, t), create_graph=True)
        big_gamma = (1 - t.detach()) * (flat_dot(s.eps, s.eps) - flat_dot(x_bar, s.eps)) / dim
        corr = batch_correlation(phi, big_gamma)
        dirichlet = flat_dot(v, v).mean() / dim
        time_grad = (dphi_dt**2).mean()
        norms = (v.flatten(1).norm(dim=1) * s.u.flatten(1).norm(dim=1)).clamp_min(1e-12)
        align = -(flat_dot(v, s.u) / (dim * norms ** t.detach())).mean()
        loss = corr + self.dirichlet_weight * dirichlet + self.time_grad_weight * time_grad + align
        return LossOutput(
            loss,
            {
                "loss": loss.detach(),
                "corr": corr.detach(),
                "dirichlet": dirichlet.detach(),
                "time_grad": time_grad.detach(),
                "align": align.detach(),
            },
        )


def build_loss(name: str, path: GaussianPath, **kwargs):
    """Build a loss by config name: "deep_ritz" (default) or "released"."""
    losses = {"deep_ritz": DeepRitzLoss, "released": ReleasedVAPOLoss}
    if name not in losses:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(losses)}")
    return losses[name](path, **kwargs)
