"""EnergyModel: a trained potential with its path and data statistics, the user's handle (inputs/outputs in the
user's data units). Weights live in safetensors, metadata in JSON; loading never unpickles."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vpfb import __version__
from vpfb.config import Config, ConfigError, from_dict
from vpfb.data import Standardizer
from vpfb.energy import boltzmann
from vpfb.likelihood import log_likelihood
from vpfb.parameterisation import parameterise
from vpfb.paths import build_path
from vpfb.potentials import MLPPotential, velocity
from vpfb.sampling import ODESolution, integrate, sample_langevin

WEIGHTS, METADATA, FORMAT = "model.safetensors", "model.json", 1


def build_potential(cfg: Config, dim: int) -> nn.Module:
    """The potential a config describes: network, path and parameterisation."""
    if cfg.model.architecture != "mlp":
        raise ConfigError(f"unknown model.architecture {cfg.model.architecture!r} for points; use 'mlp'")
    net = MLPPotential(dim, cfg.model.hidden, cfg.model.depth, cfg.model.time_varying)
    return parameterise(cfg.model.parameterisation, net, build_path(cfg.path.name, **cfg.path.kwargs()))


class EnergyModel:
    """A trained potential Φ(z, t) on standardised points z = (x − mean)/std, used through x in user units."""

    def __init__(self, potential: nn.Module, config: Config, standardizer: Standardizer):
        self.phi, self.config, self.standardizer = potential.eval(), config, standardizer  # Φ as an nn.Module
        self.dim = standardizer.mean.numel()
        self.path = potential.path
        self.device = next(potential.parameters()).device

    def to(self, device: str | torch.device) -> EnergyModel:
        """Move the model; inputs are moved to its device and outputs stay there."""
        self.device = torch.device(device)
        self.phi.to(self.device)
        self.standardizer = Standardizer(self.standardizer.mean.to(self.device), self.standardizer.std.to(self.device))
        return self

    # -- checks and units ------------------------------------------------------------------------------------
    def _z(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"this model was trained on points of dimension {self.dim}; expected shape "
                             f"[N, {self.dim}], got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"input has NaN or inf in {int((~torch.isfinite(x)).any(1).sum())} rows")
        return self.standardizer.transform(x)

    def _t(self, t: float, n: int) -> Tensor:
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"t must lie in [0, 1], got {t}")
        return torch.full((n,), float(t), device=self.device)

    # -- the energy --------------------------------------------------------------------------------------------
    def potential(self, x: Tensor, t: float = 1.0) -> Tensor:
        """Φ(z, t) at the standardised point (the potential lives in standardised coordinates)."""
        z = self._z(x)
        with torch.no_grad():
            return self.phi(z, self._t(t, len(z)))

    def velocity(self, x: Tensor, t: float = 1.0) -> Tensor:
        """dx/dt in user units: std ⊙ ∇_zΦ(z, t)."""
        z = self._z(x)
        return velocity(self.phi, z, self._t(t, len(z))) * self.standardizer.std

    def log_density(self, x: Tensor, t: float | None = None) -> Tensor:
        """The energy's log-density in user units, up to a constant: the data smoothed by N(0, (σ/μ)²) at time t,
        log ρ̄ₜ(μ(t) z) + D log μ(t) (default t: config.eval.density_t). At t = 1 on the σ_min = 0 linear path
        this is the data density itself; a t a little below 1 reads ψ where training pins it down best."""
        t = self.config.eval.density_t if t is None else t
        z = self._z(x)
        if t <= 0:
            raise ValueError(f"the data density is read at t > 0, got {t}")
        with torch.no_grad():
            return self._log_density_z(z, t) - self.standardizer.log_abs_det()

    def _log_density_z(self, z: Tensor, t: float) -> Tensor:
        tt = self._t(t, len(z))
        mu = self.path.mu(tt)
        return self.phi.log_density(mu[:, None] * z, tt) + self.dim * mu.log()

    def boltzmann(self, x: Tensor, t: float = 1.0, f_inf: float = -1.0, g_inf: float = 1.0) -> Tensor:
        """The paper's Φ_B = (4Φ(z, t) + f_∞‖z‖²)/g_∞² (see vpfb.energy.boltzmann for when to trust it)."""
        z = self._z(x)
        with torch.no_grad():
            return boltzmann(self.phi, z, t, f_inf, g_inf)

    def log_likelihood(self, x: Tensor, hutchinson: bool = False, rtol: float = 1e-5, atol: float = 1e-5) -> Tensor:
        """Normalised log p(x) of the flow (CNF: log N(z₀) − ∫ΔΦ dt), in user units."""
        z = self._z(x)
        field = lambda y, t: velocity(self.phi, y, t, create_graph=True)  # noqa: E731
        prior_std = float(self.path.sigma(torch.zeros(1)))  # a number: the path is device-free
        return log_likelihood(field, z, prior_std=prior_std, hutchinson=hutchinson, rtol=rtol, atol=atol) \
            - self.standardizer.log_abs_det()

    # -- sampling -----------------------------------------------------------------------------------------------
    def flow(self, n: int, solver: str | None = None, steps: int = 100, save: int | None = None,
             generator: torch.Generator | None = None, **tolerances) -> ODESolution:
        """Prior samples carried by dx/dt = ∇Φ from t = 0 to 1; states (and trajectory) in user units."""
        ev = self.config.eval
        z0 = float(self.path.sigma(torch.zeros(1))) * torch.randn(n, self.dim, generator=generator).to(self.device)
        sol = integrate(lambda z, t: velocity(self.phi, z, t), z0, solver=solver or ev.solver, steps=steps,
                        rtol=tolerances.get("rtol", ev.rtol), atol=tolerances.get("atol", ev.atol), save=save)
        inv = self.standardizer.inverse
        return ODESolution(inv(sol.x), sol.nfe, sol.times, None if sol.trajectory is None else inv(sol.trajectory))

    def sample(self, n: int, solver: str | None = None, steps: int = 100,
               generator: torch.Generator | None = None, **tolerances) -> Tensor:
        """n samples from the flow (adaptive dopri5 by default), in user units."""
        return self.flow(n, solver, steps, generator=generator, **tolerances).x

    def sample_langevin(self, n: int, steps: int = 500, step_size: float = 1e-2, temperature: float = 1.0,
                        target: str = "density", metropolis: bool = False, x0: Tensor | None = None,
                        generator: torch.Generator | None = None) -> Tensor:
        """Langevin (or MALA) samples of the energy density exp(log_density) (target="density") or of the paper's
        exp(Φ_B) (target="boltzmann"). The step size is in standardised units; chains start at x0 (then n is
        ignored) or at n flow samples."""
        targets = {"density": lambda z: self._log_density_z(z, self.config.eval.density_t),
                   "boltzmann": lambda z: boltzmann(self.phi, z)}
        if target not in targets:
            raise ValueError(f"unknown Langevin target {target!r}; choose 'density' or 'boltzmann'")
        z0 = self._z(x0) if x0 is not None else self._z(self.sample(n, generator=generator))
        res = sample_langevin(targets[target], z0, steps, step_size, temperature, metropolis, generator=generator)
        return self.standardizer.inverse(res.x)

    # -- persistence --------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.phi.state_dict().items()}
        save_file(state, directory / WEIGHTS)
        meta = {"format": FORMAT, "vpfb_version": __version__, "dim": self.dim, "config": self.config.to_dict(),
                "standardizer": self.standardizer.to_dict()}
        (directory / METADATA).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> EnergyModel:
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"run directory {directory} does not exist")
        for name in (METADATA, WEIGHTS):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} is not a trained vpfb model: {name} is missing")
        try:
            meta = json.loads((directory / METADATA).read_text())
            config = from_dict(meta["config"], where=str(directory / METADATA))
            standardizer = Standardizer.from_dict(meta["standardizer"])
            dim = int(meta["dim"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{directory / METADATA} is corrupt or not a vpfb model file: {err}") from err
        if meta.get("format") != FORMAT:
            raise ValueError(f"{directory} uses model format {meta.get('format')}, this vpfb reads {FORMAT}")
        try:
            state = load_file(directory / WEIGHTS)
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{directory / WEIGHTS} is corrupt: {err}") from err
        potential = build_potential(config, dim)
        try:
            potential.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{directory / WEIGHTS} does not match the architecture in its config: {err}") from err
        return cls(potential, config, standardizer).to(device)


def load(directory: str | Path, device: str | torch.device = "cpu") -> EnergyModel:
    """Load a trained model from a run directory onto a device."""
    return EnergyModel.load(directory, device)
