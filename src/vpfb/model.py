"""EnergyModel: a trained potential with its path and data statistics, the user's handle (inputs/outputs in the
user's data units). Weights live in safetensors, metadata in JSON; loading never unpickles."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from vpfb.config import Config
from vpfb.data import Standardizer
from vpfb.energy import boltzmann, conditioned
from vpfb.likelihood import bits_per_dim, log_likelihood
from vpfb.ode import ODESolution, integrate
from vpfb.parameterisation import EnergyPotential
from vpfb.potentials import value_and_grad, velocity
from vpfb.sampling import AnnealedResult, LangevinResult, annealed_langevin, sample_langevin
from vpfb.storage import read_model, write_model
from vpfb.tensors import expand_like


class EnergyModel:
    """A trained potential Φ(z, t[, c]) on standardised data z = (x − mean)/std, used through x in user units.
    Points are standardised per column; images are used as they are, in [-1, 1]. `read_out_t` is the time at which
    log_density and the samplers read the energy by default: config.eval.density_t, or the value `fit` calibrated
    (kept in model.json, not in the configuration)."""

    def __init__(
        self,
        potential: nn.Module,
        config: Config,
        standardizer: Standardizer | None = None,
        shape: tuple[int, ...] | None = None,
        num_classes: int | None = None,
        read_out_t: float | None = None,
    ):
        if standardizer is None and shape is None:
            raise ValueError("an EnergyModel needs the data's standardizer (points) or sample shape (images)")
        self.phi, self.config = potential.eval(), config  # Φ as an nn.Module
        self.standardizer = standardizer or Standardizer(torch.zeros(1), torch.ones(1))
        self.shape = tuple(shape) if shape is not None else (standardizer.mean.numel(),)
        self.dim = math.prod(self.shape)
        self.num_classes = num_classes if config.model.conditional else None
        self.path = potential.path
        self.device = next(potential.parameters()).device
        self.read_out_t = config.eval.density_t if read_out_t is None else float(read_out_t)

    def to(self, device: str | torch.device) -> EnergyModel:
        """Move the model; inputs are moved to its device and outputs stay there."""
        self.device = torch.device(device)
        self.phi.to(self.device)
        self.standardizer = Standardizer(self.standardizer.mean.to(self.device), self.standardizer.std.to(self.device))
        return self

    # -- checks and units ------------------------------------------------------------------------------------
    def _z(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        if tuple(x.shape[1:]) != self.shape or x.dim() < 2:
            shape = ", ".join(map(str, self.shape))
            what = f"points of dimension {self.dim}" if len(self.shape) == 1 else f"images of shape ({shape})"
            raise ValueError(f"this model was trained on {what}; expected shape [N, {shape}], got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"input has NaN or inf in {int((~torch.isfinite(x)).flatten(1).any(1).sum())} rows")
        return self.standardizer.transform(x)

    def _labelled(self, labels: Tensor | int | dict | None, n: int):
        """Φ for n samples with labels bound (vpfb.energy.conditioned)."""
        return conditioned(self.phi, self.num_classes, labels, n, self.device)

    def _t(self, t: float, n: int) -> Tensor:
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"t must lie in [0, 1], got {t}")
        return torch.full((n,), float(t), device=self.device)

    # -- the energy --------------------------------------------------------------------------------------------
    def potential(self, x: Tensor, t: float = 1.0, labels: Tensor | int | None = None) -> Tensor:
        """Φ(z, t) at the standardised point (the potential lives in standardised coordinates)."""
        z = self._z(x)
        with torch.no_grad():
            return self._labelled(labels, len(z))(z, self._t(t, len(z)))

    def velocity(self, x: Tensor, t: float = 1.0, labels: Tensor | int | None = None) -> Tensor:
        """dx/dt in user units: std ⊙ ∇_zΦ(z, t)."""
        z = self._z(x)
        return velocity(self._labelled(labels, len(z)), z, self._t(t, len(z))) * self.standardizer.std

    def log_density(self, x: Tensor, t: float | None = None, labels: Tensor | int | None = None) -> Tensor:
        """The energy's log-density in user units, up to a constant: the data smoothed by N(0, (σ/μ)²) at time t,
        log ρ̄ₜ(μ(t) z) + D log μ(t) (default t: read_out_t). At t = 1 on the σ_min = 0 linear path
        this is the data density itself; a t a little below 1 reads ψ where training pins it down best."""
        t = self.read_out_t if t is None else t
        z = self._z(x)
        if t <= 0:
            raise ValueError(f"the data density is read at t > 0, got {t}")
        with torch.no_grad():
            return self._log_density_z(z, t, labels) - self.standardizer.log_abs_det()

    def _log_density_z(self, z: Tensor, t: float, labels: Tensor | int | None = None) -> Tensor:
        tt = self._t(t, len(z))
        mu = self.path.mu(tt)
        return self._labelled(labels, len(z)).log_density(expand_like(mu, z) * z, tt) + self.dim * mu.log()

    def boltzmann_is_informative(self, t: float = 1.0) -> bool:
        """Whether Φ(·, t), hence Φ_B, depends on the weights. Not under the energy parameterisation where σ(t) = 0
        (t = 1 on the σ_min = 0 linear path): there ½g²ψ vanishes and Φ = ½f‖x‖² whatever was trained."""
        return not isinstance(self.phi, EnergyPotential) or float(self.path.at(self._t(t, 1)).half_g2_mu) != 0

    def boltzmann(
        self, x: Tensor, t: float = 1.0, f_inf: float = -1.0, g_inf: float = 1.0, labels: Tensor | int | None = None
    ) -> Tensor:
        """The paper's Φ_B = (4Φ(z, t) + f_∞‖z‖²)/g_∞² (see vpfb.energy.boltzmann for when to trust it); a
        ValueError where it would not depend on the model (see boltzmann_is_informative)."""
        self._check_boltzmann(t)
        z = self._z(x)
        with torch.no_grad():
            return boltzmann(self._labelled(labels, len(z)), z, t, f_inf, g_inf)

    def _check_boltzmann(self, t: float) -> None:
        if not self.boltzmann_is_informative(t):
            raise ValueError(
                f"Φ_B is blind for this model: under the energy parameterisation Φ(x, {t:g}) = ½f‖x‖² "
                f"for every weight setting (σ({t:g}) = 0 on this path), so Φ_B = ‖x‖² + const carries "
                f"nothing learned. Use log_density (the energy ψ), Φ_B at t < 1, or train with "
                f"path.sigma_min > 0"
            )

    def log_likelihood(
        self,
        x: Tensor,
        hutchinson: int = 0,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        labels: Tensor | int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Normalised log p(x) of the flow (CNF: log N(z₀) − ∫ΔΦ dt), in user units; ΔΦ exact (D backward passes)
        for hutchinson = 0, else the mean over that many Rademacher probes per sample (True: one) from `generator`."""
        z = self._z(x)
        phi = self._labelled(labels, len(z))
        field = lambda y, t: velocity(phi, y, t, create_graph=True)  # noqa: E731
        prior_std = float(self.path.sigma(torch.zeros(1)))  # a number: the path is device-free
        return (
            log_likelihood(
                field, z, prior_std=prior_std, hutchinson=hutchinson, rtol=rtol, atol=atol, generator=generator
            )
            - self.standardizer.log_abs_det()
        )

    def bits_per_dim(
        self,
        images: Tensor,
        hutchinson: int = 1,
        generator: torch.Generator | None = None,
        labels: Tensor | int | dict | None = None,
    ) -> tuple[float, float]:
        """Bits per dimension (mean, standard error) of uint8 images [N, C, H, W]: uniformly dequantised, scaled to
        [-1, 1] and scored by the CNF likelihood (Hutchinson's estimator with one probe by default: unbiased, so
        the mean is right and its standard error includes the probes' noise)."""
        if images.dtype != torch.uint8:
            raise ValueError(f"bits/dim takes the uint8 images themselves, got {images.dtype}")
        u = torch.rand(images.shape, generator=generator)
        y = (images.float() + u) / 127.5 - 1
        log_p = self.log_likelihood(y, hutchinson=hutchinson, labels=labels, rtol=1e-3, atol=1e-3, generator=generator)
        return bits_per_dim(log_p, self.dim)

    # -- sampling -----------------------------------------------------------------------------------------------
    def flow(
        self,
        n: int,
        solver: str | None = None,
        steps: int = 100,
        save: int | None = None,
        generator: torch.Generator | None = None,
        labels: Tensor | int | None = None,
        **tolerances,
    ) -> ODESolution:
        """Prior samples carried by dx/dt = ∇Φ from t = 0 to 1 (given labels, or the null label, for a conditional
        model); states (and trajectory) in user units."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive number of samples, got {n!r}")
        z0 = float(self.path.sigma(torch.zeros(1))) * torch.randn(n, *self.shape, generator=generator).to(self.device)
        return self.flow_from(z0, solver, steps, save, labels, **tolerances)

    def flow_from(
        self,
        z0: Tensor,
        solver: str | None = None,
        steps: int = 100,
        save: int | None = None,
        labels: Tensor | int | None = None,
        **tolerances,
    ) -> ODESolution:
        """Given prior points z0 carried from t = 0 to 1; states (and trajectory) in user units."""
        sol = self._transport(z0.to(self.device), 0.0, 1.0, solver, steps, save, labels, **tolerances)
        inv = self.standardizer.inverse
        return ODESolution(inv(sol.x), sol.nfe, sol.times, None if sol.trajectory is None else inv(sol.trajectory))

    def invert(
        self, x: Tensor, solver: str | None = None, steps: int = 100, labels: Tensor | int | None = None, **tolerances
    ) -> Tensor:
        """The prior points z0 that the flow carries to x: the ODE run backwards from t = 1 to 0."""
        return self._transport(self._z(x), 1.0, 0.0, solver, steps, None, labels, **tolerances).x

    def _transport(
        self,
        z: Tensor,
        t0: float,
        t1: float,
        solver: str | None,
        steps: int,
        save: int | None,
        labels: Tensor | int | None,
        **tolerances,
    ) -> ODESolution:
        ev = self.config.eval
        phi = self._labelled(labels, len(z))
        return integrate(
            lambda y, t: velocity(phi, y, t),
            z,
            t0,
            t1,
            solver=solver or ev.solver,
            steps=steps,
            rtol=tolerances.get("rtol", ev.rtol),
            atol=tolerances.get("atol", ev.atol),
            save=save,
        )

    def sample(
        self,
        n: int,
        solver: str | None = None,
        steps: int = 100,
        generator: torch.Generator | None = None,
        labels: Tensor | int | None = None,
        **tolerances,
    ) -> Tensor:
        """n samples from the flow (adaptive dopri5 by default), in user units."""
        return self.flow(n, solver, steps, generator=generator, labels=labels, **tolerances).x

    def langevin(
        self,
        n: int,
        steps: int = 500,
        t: float | None = None,
        step_size: float | None = None,
        metropolis: bool = True,
        anneal: bool | None = None,
        predictor: bool = True,
        denoise: bool = True,
        temperature: float = 1.0,
        x0: Tensor | None = None,
        generator: torch.Generator | None = None,
        labels: Tensor | int | dict | None = None,
    ) -> AnnealedResult:
        """Samples of the energy alone (no ODE): MALA (or unadjusted Langevin) on ψ(x, t) ∝ log ρ̄ₜ, in the path's
        coordinates x = μ(t)z, for the given labels or composition; returns the samples in user units with the
        acceptance rate of every level.

        anneal (the default without x0): chains start at the prior N(0, σ(0)²I), where ψ(·, 0) is exact, and visit
        steps // 5 times tₖ evenly spaced in (0, t], 5 steps at each (annealed MCMC, as Du et al. 2023 do with
        diffusion energies), moved from one time to the next by an Euler step of the flow dx/dt = ∇Φ, itself built
        from ψ (predictor; predictor=False leaves the MCMC steps alone to follow the moving target); otherwise
        `steps` steps at t from x0 (user units) or from n flow samples. t defaults to the read-out time
        read_out_t. step_size None: σ(tₖ)²/D^(1/3), times a factor adapted between blocks of 5 steps towards
        MALA's 0.574 acceptance; a number: that step in standardised data units (μ²·step in x), fixed.
        denoise: return Tweedie's E[x̄ | x] = (x + σ²∇ψ)/μ at the last t instead of x/μ."""
        t = self.read_out_t if t is None else float(t)
        tt = self._t(t, 1)
        mu, sigma = float(self.path.mu(tt)), float(self.path.sigma(tt))
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if mu <= 0 or sigma <= 0:
            raise ValueError(
                f"Langevin on ψ(·, t) needs μ(t) > 0 and σ(t) > 0; at t = {t:g} μ = {mu:g}, "
                f"σ = {sigma:g}: read the energy at a t inside (0, 1) or train with path.sigma_min > 0"
            )
        block = min(5, steps)
        levels = steps // block
        anneal = x0 is None if anneal is None else anneal
        if anneal:
            x = float(self.path.sigma(self._t(0.0, 1))) * torch.randn(n, *self.shape, generator=generator)
            times = [t * (k + 1) / levels for k in range(levels)]
        else:
            start = x0 if x0 is not None else self.sample(n, generator=generator, labels=labels)
            x, times = mu * self._z(start), [t] * levels
        x = x.to(self.device)
        if step_size is None:
            base = [float(self.path.sigma(self._t(s, 1))) ** 2 / self.dim ** (1 / 3) for s in times]
        else:
            base = [float(self.path.mu(self._t(s, 1))) ** 2 * step_size for s in times]
        potential = self._labelled(labels, len(x))
        full = lambda y, s: torch.full((len(y),), s, device=y.device)  # noqa: E731
        log_p = lambda y, s: potential.log_density(y, full(y, s))  # noqa: E731
        transport = None
        if anneal and predictor:
            transport = lambda y, s0, s1: y + (s1 - s0) * velocity(potential, y, full(y, s0))  # noqa: E731
            x = transport(x, 0.0, times[0]).detach()
        res = annealed_langevin(
            log_p,
            x,
            times,
            base,
            block,
            temperature,
            metropolis,
            0.574 if step_size is None else None,
            generator,
            transport,
            start_time=0.0 if anneal else None,
        )
        x = res.x
        if denoise:
            x = x + sigma**2 * value_and_grad(lambda y: log_p(y, t), x)[1]
        return dataclasses.replace(res, x=self.standardizer.inverse(x.detach() / mu))

    def log_partition(
        self,
        t: float | None = None,
        n: int = 64,
        steps: int = 1000,
        generator: torch.Generator | None = None,
        labels: Tensor | int | dict | None = None,
    ) -> tuple[float, float]:
        """log Z_t = log ∫ exp ψ(x, t) dx (path coordinates; the same for log_density's data coordinates) by annealed
        importance sampling from the prior, where ψ(·, 0) = log N(0, σ(0)²I) + log Z₀ exactly, through `steps`
        MALA steps (`langevin` without its predictor); returns (log Z_t, effective sample size of the n chains).
        log_density(x, t) − log Z_t is then normalised, as far as the ESS lets one trust it."""
        if not isinstance(self.phi, EnergyPotential):
            raise ValueError(
                "log_partition anneals from ψ(·, 0) = the prior, which holds under the energy "
                "parameterisation only (model.parameterisation=energy)"
            )
        t = self.read_out_t if t is None else float(t)
        res = self.langevin(n, steps, t, predictor=False, denoise=False, generator=generator, labels=labels)
        sigma0 = float(self.path.sigma(self._t(0.0, 1)))
        log_z0 = 0.5 * self.dim * math.log(2 * math.pi * sigma0**2)
        w = res.log_weights
        log_z = float(torch.logsumexp(w, 0) - math.log(n)) + log_z0
        ess = float(torch.exp(2 * torch.logsumexp(w, 0) - torch.logsumexp(2 * w, 0)))
        return log_z, ess

    def sample_langevin(self, n: int, *args, target: str = "density", **kwargs) -> Tensor:
        """The samples of `langevin` (target="density", the same arguments), or of the paper's exp(Φ_B)
        (target="boltzmann", the arguments of `boltzmann_chain`)."""
        chains = {"density": self.langevin, "boltzmann": self.boltzmann_chain}
        if target not in chains:
            raise ValueError(f"unknown Langevin target {target!r}; choose 'density' or 'boltzmann'")
        return chains[target](n, *args, **kwargs).x

    def boltzmann_chain(
        self,
        n: int,
        steps: int = 500,
        step_size: float = 1e-2,
        temperature: float = 1.0,
        metropolis: bool = False,
        x0: Tensor | None = None,
        generator: torch.Generator | None = None,
        labels: Tensor | int | dict | None = None,
    ) -> LangevinResult:
        """Langevin (or MALA) on the paper's Φ_B (t = 1), step in standardised units, from x0 (user units) or n
        flow samples; the chain's end in user units."""
        self._check_boltzmann(1.0)
        z0 = self._z(x0) if x0 is not None else self._z(self.sample(n, generator=generator, labels=labels))
        res = sample_langevin(
            lambda z: boltzmann(self._labelled(labels, len(z)), z),
            z0,
            steps,
            step_size,
            temperature,
            metropolis,
            generator=generator,
        )
        return dataclasses.replace(res, x=self.standardizer.inverse(res.x))

    # -- persistence (vpfb.storage) --------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Weights to directory/model.safetensors, the rest (config, statistics, read-out time) to model.json."""
        meta = {
            "dim": self.dim,
            "shape": list(self.shape),
            "num_classes": self.num_classes,
            "config": self.config.to_dict(),
            "standardizer": self.standardizer.to_dict(),
            "read_out_t": self.read_out_t,
        }
        write_model(directory, self.phi.state_dict(), meta)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> EnergyModel:
        return cls(**read_model(directory)).to(device)


def load(directory: str | Path, device: str | torch.device = "cpu") -> EnergyModel:
    """Load a trained model from a run directory onto a device."""
    return EnergyModel.load(directory, device)
