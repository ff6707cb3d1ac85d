"""EnergyModel: a trained potential with its path and data statistics, the user's handle (inputs/outputs in the
user's data units). Weights live in safetensors, metadata in JSON; loading never unpickles."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from vpfb.config import Config
from vpfb.data import Standardizer
from vpfb.energy import boltzmann, conditioned
from vpfb.likelihood import bits_per_dim, log_likelihood
from vpfb.model_sampling import Sampling
from vpfb.parameterisation import EnergyPotential
from vpfb.potentials import velocity
from vpfb.storage import read_model, write_model
from vpfb.tensors import expand_like


class EnergyModel(Sampling):
    """A trained potential Φ(z, t[, c]) on standardised data z = (x − mean)/std, used through x in user units.

    Points are standardised per column; images are used as they are, in [-1, 1]. Every method takes a batch
    [N, *shape] (shape: (d,) for points, (C, H, W) for images) and returns one value [N] or one state [N, *shape]
    per row. `read_out_t` is the time at which log_density and the samplers read the energy by default:
    config.eval.density_t, or the value `fit` calibrated (kept in model.json, not in the configuration)."""

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
        """The potential Φ(z, t) at z = (x − mean)/std (it lives in standardised coordinates).

        Args:
            x: [N, *shape] points or images in user units.
            t: time in [0, 1].
            labels: class [N] or int; None: the null label of a conditional model.
        Returns:
            [N] Φ.
        """
        z = self._z(x)
        with torch.no_grad():
            return self._labelled(labels, len(z))(z, self._t(t, len(z)))

    def velocity(self, x: Tensor, t: float = 1.0, labels: Tensor | int | None = None) -> Tensor:
        """The flow's velocity dx/dt = std ⊙ ∇_zΦ(z, t), [N, *shape] in user units (arguments as `potential`)."""
        z = self._z(x)
        return velocity(self._labelled(labels, len(z)), z, self._t(t, len(z))) * self.standardizer.std

    def log_density(self, x: Tensor, t: float | None = None, labels: Tensor | int | None = None) -> Tensor:
        """The energy's log-density up to a constant, log ρ̄ₜ(μ(t) z) + D log μ(t) − log|std|: the data smoothed by
        N(0, (σ/μ)²) at time t. At t = 1 on the σ_min = 0 linear path this is the data density itself; a t a little
        below 1 reads ψ where training pins it down best (log_partition gives the constant).

        Args:
            x: [N, *shape] points or images in user units.
            t: time in (0, 1] (default read_out_t).
            labels: class [N] or int, or a composition {class: weight}.
        Returns:
            [N] log-density (nats).
        """
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
        """Whether Φ(·, t), hence Φ_B, depends on the weights: not under the energy parameterisation where σ(t) = 0
        (t = 1 on the σ_min = 0 linear path), since there ½g²ψ vanishes and Φ = ½f‖x‖² whatever was trained."""
        return not isinstance(self.phi, EnergyPotential) or float(self.path.at(self._t(t, 1)).half_g2_mu) != 0

    def boltzmann(
        self, x: Tensor, t: float = 1.0, f_inf: float = -1.0, g_inf: float = 1.0, labels: Tensor | int | None = None
    ) -> Tensor:
        """The paper's Boltzmann energy Φ_B = (4Φ(z, t) + f_∞‖z‖²)/g_∞² (vpfb.energy.boltzmann says when to trust
        it); a ValueError where it would not depend on the model (boltzmann_is_informative).

        Args:
            x: [N, *shape] in user units.
            t, f_inf, g_inf: the time read and the limits f(∞), g²(∞) of the diffusion it assumes.
            labels: class [N] or int.
        Returns:
            [N] Φ_B (log p_B + const).
        """
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
        """The flow's normalised log-likelihood (CNF) log p(x) = log N(z₀; 0, σ(0)²I) − ∫₀¹ ΔΦ(z_t, t) dt − log|std|.

        Args:
            x: [N, *shape] points or images in user units.
            hutchinson: 0: the exact ΔΦ (D backward passes per evaluation); K > 0 (True: 1): the mean of K
                Rademacher probes per sample (K passes; unbiased, noise ∝ 1/√K), drawn from `generator`.
            rtol, atol: dopri5's tolerances.
            labels: class [N] or int.
        Returns:
            [N] log p(x) (nats).
        """
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
        """Bits per dimension of uint8 images, bpd = (−log p(y) + D log 127.5)/(D ln 2) with y = (x + u)/127.5 − 1,
        u ~ U[0, 1)ᴰ (uniform dequantisation) and log p the CNF likelihood.

        Args:
            images: [N, C, H, W] uint8.
            hutchinson: probes per sample (one by default: unbiased, so the mean is right and its standard error
                includes the probes' noise); 0: exact.
            generator: draws the dequantisation and the probes.
            labels: class [N] or int.
        Returns:
            (mean bits/dim, its standard error over the images).
        """
        if images.dtype != torch.uint8:
            raise ValueError(f"bits/dim takes the uint8 images themselves, got {images.dtype}")
        u = torch.rand(images.shape, generator=generator)
        y = (images.float() + u) / 127.5 - 1
        log_p = self.log_likelihood(y, hutchinson=hutchinson, labels=labels, rtol=1e-3, atol=1e-3, generator=generator)
        return bits_per_dim(log_p, self.dim)

    # -- persistence (vpfb.storage) --------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Weights to directory/model.safetensors, the rest (configuration, statistics, read-out time) to
        directory/model.json."""
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
        """The model saved in `directory` (never unpickled: safetensors and JSON), on `device`."""
        return cls(**read_model(directory)).to(device)


def load(directory: str | Path, device: str | torch.device = "cpu") -> EnergyModel:
    """Load a trained model from a run directory onto a device."""
    return EnergyModel.load(directory, device)
