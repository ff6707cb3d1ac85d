"""The EnergyModel's samplers: the flow's ODE, Langevin/MALA on the energy ψ and on the paper's Φ_B, and log Z_t.
A mix-in: it reads the model's potential, path, units and defaults (vpfb.model.EnergyModel)."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from vpfb.energy import boltzmann
from vpfb.ode import ODESolution, integrate
from vpfb.parameterisation import EnergyPotential
from vpfb.potentials import velocity
from vpfb.sampling import AnnealedResult, LangevinResult, langevin_on_energy, log_mean_exp_and_ess, sample_langevin


class Sampling:
    """Sampling methods of EnergyModel (inputs and outputs in the user's data units)."""

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
        """Prior samples z₀ ~ N(0, σ(0)²I) carried by dx/dt = ∇Φ(x, t) from t = 0 to 1.

        Args:
            n: number of samples.
            solver: "dopri5" (adaptive; default config.eval.solver), "heun", "euler", "rk4" (`steps` equal steps).
            save: also return the states at this many equally spaced times.
            labels: class [N] or int, or a composition {class: weight}; None: the null label of a conditional model.
            tolerances: rtol, atol of an adaptive solver (default config.eval's).
        Returns:
            ODESolution: x [n, *shape] in user units, nfe, and with `save` times [T], trajectory [T, n, *shape].
        """
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
        """The flow from given prior points z0 [N, *shape] (standardised units) from t = 0 to 1; arguments as `flow`."""
        sol = self._transport(z0.to(self.device), 0.0, 1.0, solver, steps, save, labels, **tolerances)
        inv = self.standardizer.inverse
        return ODESolution(inv(sol.x), sol.nfe, sol.times, None if sol.trajectory is None else inv(sol.trajectory))

    def invert(
        self, x: Tensor, solver: str | None = None, steps: int = 100, labels: Tensor | int | None = None, **tolerances
    ) -> Tensor:
        """The prior points z₀ [N, *shape] that the flow carries to x [N, *shape] (user units): dx/dt = ∇Φ run backwards
        from t = 1 to 0; arguments as `flow`."""
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
        """n samples [n, *shape] of the flow, in user units: `flow(...).x`, arguments as `flow`."""
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
        """Samples of the energy alone (no ODE): MALA x ← x + h∇ψ + √(2h)ξ, accepted or not, on ψ(x, t) ∝ log ρ̄ₜ in
        the path's coordinates x = μ(t)z.

        Annealed (the default without x0), the chains start at the prior N(0, σ(0)²I), where ψ(·, 0) is exact, and
        visit steps // 5 times tₖ evenly spaced in (0, t], 5 steps at each (annealed MCMC, as Du et al. 2023 do with
        diffusion energies), moved from one time to the next by an Euler step of the flow dx/dt = ∇Φ, itself built
        from ψ (the predictor). Otherwise they take `steps` steps at t from x0 or from n flow samples.

        Args:
            n: number of chains.
            steps: MCMC steps in all.
            t: the energy's time (default read_out_t).
            step_size: None: σ(tₖ)²/D^(1/3), times a factor adapted between blocks of 5 steps towards MALA's 0.574
                acceptance; a number: that step in standardised data units (μ²·step in x), fixed.
            metropolis: MALA (True) or unadjusted Langevin.
            anneal: None: anneal unless x0 is given.
            predictor: move chains between times by the flow; False leaves the MCMC steps alone to follow the target.
            denoise: return Tweedie's E[x̄ | x] = (x + σ²∇ψ)/μ at t instead of x/μ.
            temperature: sample ∝ exp(ψ/T).
            x0: starting states [n, *shape] in user units.
            labels: class [n] or int, or a composition {class: weight}.
        Returns:
            AnnealedResult: x [n, *shape] in user units, the acceptance and step of every level.
        """
        t = self.read_out_t if t is None else float(t)
        mu = float(self.path.mu(self._t(t, 1)))
        anneal = x0 is None if anneal is None else anneal
        if anneal:
            x = float(self.path.sigma(self._t(0.0, 1))) * torch.randn(n, *self.shape, generator=generator)
        else:
            x = mu * self._z(x0 if x0 is not None else self.sample(n, generator=generator, labels=labels))
        x = x.to(self.device)
        potential = self._labelled(labels, len(x))
        res = langevin_on_energy(
            potential, self.path, x, t, steps, step_size, metropolis, anneal, predictor, denoise, temperature, generator
        )
        return dataclasses.replace(res, x=self.standardizer.inverse(res.x))

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
        MALA steps (`langevin` without its predictor). log_density(x, t) − log Z_t is then normalised, as far as the
        effective sample size lets one trust it (AIS estimates log Z low in expectation: E log Ẑ ≤ log Z).

        Args:
            t: the energy's time (default read_out_t).
            n: number of chains.
            steps: MALA steps in all (steps // 5 levels).
            labels: class [n] or int, or a composition {class: weight}.
        Returns:
            (log Z_t, effective sample size of the n chains' weights, between 1 and n).
        """
        if not isinstance(self.phi, EnergyPotential):
            raise ValueError(
                "log_partition anneals from ψ(·, 0) = the prior, which holds under the energy "
                "parameterisation only (model.parameterisation=energy)"
            )
        t = self.read_out_t if t is None else float(t)
        res = self.langevin(n, steps, t, predictor=False, denoise=False, generator=generator, labels=labels)
        sigma0 = float(self.path.sigma(self._t(0.0, 1)))
        log_z0 = 0.5 * self.dim * math.log(2 * math.pi * sigma0**2)
        log_ratio, ess = log_mean_exp_and_ess(res.log_weights)
        return log_ratio + log_z0, ess

    def sample_langevin(self, n: int, *args, target: str = "density", **kwargs) -> Tensor:
        """Samples [n, *shape] in user units: of the energy (target="density": `langevin`, its arguments) or of the
        paper's exp(Φ_B) (target="boltzmann": `boltzmann_chain`, its arguments)."""
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
        """Langevin z ← z + h∇Φ_B/T + √(2h)ξ (or MALA) on the paper's Φ_B at t = 1, in standardised units.

        Args:
            n: number of chains, started at n flow samples unless x0 [n, *shape] (user units) is given.
            steps, step_size, temperature, metropolis: the chain's (h = step_size).
            labels: class [n] or int, or a composition {class: weight}.
        Returns:
            LangevinResult: x [n, *shape] in user units, E‖∇Φ_B‖² and EΦ_B along the chain, acceptance (MALA).
        """
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
