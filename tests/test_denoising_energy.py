"""The image energy parameterisation ψ = −½‖x/√v − μW‖² (DenoisingEnergy inside EnergyPotential): exact on Gaussian
data, the prior at t = 0, the reference Gaussian at initialisation, confining for any weights, and a U-Net in it."""

import math

import pytest
import torch
from conftest import GaussianTruth
from test_image_potentials import TINY, randomise

from vpfb.config import load_config
from vpfb.factory import build_potential
from vpfb.parameterisation import DenoisingEnergy, EnergyPotential
from vpfb.paths import LinearPath, LogHomotopyPath
from vpfb.potentials import UNet, potential_and_velocity

SHAPE = (2, 4, 4)  # 32 "pixels"


class GaussianOptimum(torch.nn.Module):
    """The U that makes ψ the Gaussian data's log ρ̄ₜ = −‖x − μm‖²/(2V) + C, V = μ²s² + σ² per pixel: W =
    (x/√v − (x − μm)/√V)/μ, passed through atanh so that the bound B·tanh(U/B) gives W back exactly."""

    def __init__(self, path, m, s, bound):
        super().__init__()
        self.path, self.s, self.bound = path, s, bound
        self.m = torch.nn.Parameter(m, requires_grad=False)  # a parameter, so the model finds its device

    def forward(self, x, t, c=None):
        p, tt = self.path, t.reshape(-1, 1, 1, 1)
        mu, sigma = p.mu(tt), p.sigma(tt)
        v, big_v = mu**2 + sigma**2, mu**2 * self.s**2 + sigma**2
        # (x/√v − (x − μm)/√V)/μ, with the 0/0 at μ = 0 cancelled: V − v = μ²(s² − 1)
        w = x * mu * (self.s**2 - 1) / ((v * big_v).sqrt() * (v.sqrt() + big_v.sqrt())) + self.m / big_v.sqrt()
        return self.bound * torch.atanh(w / self.bound)


@pytest.mark.parametrize("path", [LinearPath(), LinearPath(0.05), LogHomotopyPath(nu=0.2)], ids=str)
def test_exact_on_gaussian_data(path):
    m = 0.3 * torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = 0.4 + 0.3 * torch.rand(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    truth = GaussianTruth(path, m.flatten(), s.flatten()).double()
    energy = EnergyPotential(DenoisingEnergy(GaussianOptimum(path, m, s, 10.0), path, bound=10.0), path)
    for time in (0.05, 0.5, 0.95):
        t = torch.full((16,), time, dtype=torch.float64)
        x = time * truth.sample_data(16, torch.Generator().manual_seed(2)).reshape(16, *SHAPE) + (
            1 - time
        ) * torch.randn(16, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        flat = x.flatten(1)
        phi, v = potential_and_velocity(energy, x, t)
        torch.testing.assert_close(v.flatten(1), truth.velocity(flat, t), rtol=1e-6, atol=1e-6)  # the true flow
        # ψ = log ρ̄ₜ + C(t) and Φ = Φ* + C'(t): the differences are one constant over x at this t
        for gap in (energy.log_density(x, t) - truth.log_density(flat, t), phi - truth.potential(flat, t)):
            torch.testing.assert_close(gap, gap[:1].expand(16), rtol=0, atol=1e-6)


def test_the_prior_at_t0_and_the_reference_gaussian_at_initialisation():
    path = LinearPath()
    potential = EnergyPotential(DenoisingEnergy(randomise(UNet(**TINY)), path), path)
    x = torch.randn(4, 2, 8, 8)
    zero = torch.zeros(4)
    torch.testing.assert_close(potential.log_density(x, zero), -0.5 * x.flatten(1).square().sum(1))
    fresh = EnergyPotential(DenoisingEnergy(UNet(**TINY), path), path)  # zero-initialised output: U = 0
    t = torch.rand(4)
    v = t**2 + (1 - t) ** 2
    torch.testing.assert_close(fresh.log_density(x, t), -x.flatten(1).square().sum(1) / (2 * v))


@pytest.mark.parametrize("seed", range(3))
def test_confining_for_random_weights(seed):
    """ψ(x) ≤ −½(‖x‖/√v − μB√d)² whatever the weights: checked far out along random directions, with weights
    perturbed hard (scale 1) so that U is large and wild."""
    torch.manual_seed(seed)
    path, bound = LinearPath(), 10.0
    potential = EnergyPotential(DenoisingEnergy(randomise(UNet(**TINY), scale=1.0), path, bound), path)
    d, t = 2 * 8 * 8, torch.full((6,), 0.9)
    directions = torch.randn(6, 2, 8, 8)
    for radius in (1e3, 1e4, 1e5):
        x = radius * directions / directions.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
        mu, v = path.mu(t), t**2 + (1 - t) ** 2
        ceiling = -0.5 * (radius / v.sqrt() - mu * bound * math.sqrt(d)) ** 2
        psi = potential.log_density(x, t)
        assert (psi <= ceiling * (1 - 1e-5)).all() and (psi < -0.3 * radius**2).all()


def test_phi_and_its_velocity_stay_finite_on_the_whole_interval():
    path = LinearPath()
    potential = EnergyPotential(DenoisingEnergy(randomise(UNet(**TINY)), path), path)
    x, t = torch.randn(5, 2, 8, 8), torch.tensor([0.0, 1e-6, 0.5, 1 - 1e-6, 1.0])
    phi, v = potential_and_velocity(potential, x, t)
    assert torch.isfinite(phi).all() and torch.isfinite(v).all()
    # at t = 1 (σ = 0) Φ = ½‖x‖² for any weights: the read-out of the data lives at t < 1
    torch.testing.assert_close(phi[-1], 0.5 * x[-1].square().sum())


def test_the_preset_network_builds_in_the_energy_parameterisation():
    cfg = load_config("digits-cpu", ["model.parameterisation=energy"])
    potential = build_potential(cfg, (1, 8, 8))
    assert isinstance(potential, EnergyPotential) and isinstance(potential.net, DenoisingEnergy)
    direct = build_potential(load_config("digits-cpu", ["model.parameterisation=direct"]), (1, 8, 8))
    assert not isinstance(direct, EnergyPotential)


@pytest.mark.parametrize("denoise,predictor", [(False, True), (True, True), (False, False)])
def test_energy_langevin_from_the_prior_samples_the_gaussian_read_out(denoise, predictor):
    """With ψ exact for Gaussian data, annealed MALA from the prior ends at the data smoothed by σ/μ at the read-out
    t (mean m, variance s² + σ²/μ²), or with denoise at Tweedie's E[x̄ | x] (variance s⁴/(s² + σ²/μ²))."""
    from vpfb.config import Config
    from vpfb.model import EnergyModel

    path, t = LinearPath(), 0.9
    m = 0.5 * torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    s = 0.3 + 0.3 * torch.rand(SHAPE, generator=torch.Generator().manual_seed(1))
    energy = EnergyPotential(DenoisingEnergy(GaussianOptimum(path, m, s, 10.0), path, bound=10.0), path)
    cfg = Config()
    cfg.eval.density_t = t
    model = EnergyModel(energy, cfg, None, SHAPE)
    out = model.langevin(
        3000, steps=300, generator=torch.Generator().manual_seed(2), denoise=denoise, predictor=predictor
    )
    noise = ((1 - t) / t) ** 2
    variance = s**4 / (s**2 + noise) if denoise else s**2 + noise
    torch.testing.assert_close(out.x.mean(0), m, atol=4 * variance.max().sqrt().item() / 3000**0.5, rtol=0)
    torch.testing.assert_close(out.x.var(0), variance, atol=0, rtol=0.12)
    assert len(out.acceptance) == 60 and 0.4 < sum(out.acceptance[-10:]) / 10 < 0.75


def gaussian_image_model(t=0.9):
    from vpfb.config import Config
    from vpfb.model import EnergyModel

    path = LinearPath()
    m = 0.3 * torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    s = 0.4 + 0.3 * torch.rand(SHAPE, generator=torch.Generator().manual_seed(1))
    cfg = Config()
    cfg.eval.density_t = t
    energy = EnergyPotential(DenoisingEnergy(GaussianOptimum(path, m, s, 10.0), path, bound=10.0), path)
    return EnergyModel(energy, cfg, None, SHAPE), m, s


def test_bits_per_dim_of_dequantised_images_is_the_exact_gaussian_value():
    """bpd = E[−log p((x + u)/127.5 − 1) + D log 127.5]/(D ln 2) for 8-bit x, u ~ U[0, 1): against the closed form on
    the same u (exact trace), and reproducible with Hutchinson's probes from the generator."""
    model, m, s = gaussian_image_model()
    g = torch.Generator().manual_seed(7)
    images = ((m + s * torch.randn(6, *SHAPE, generator=g)).clamp(-1, 1) * 127.5 + 127.5).to(torch.uint8)
    bpd, _ = model.bits_per_dim(images, hutchinson=False, generator=torch.Generator().manual_seed(8))
    u = torch.rand(images.shape, generator=torch.Generator().manual_seed(8))
    y = (images.float() + u) / 127.5 - 1
    log_p = torch.distributions.Normal(m, s).log_prob(y).flatten(1).sum(1)
    d = y[0].numel()
    exact = ((-log_p + d * math.log(127.5)) / (d * math.log(2))).mean().item()
    assert abs(bpd - exact) < 2e-3
    twice = [model.bits_per_dim(images, generator=torch.Generator().manual_seed(9)) for _ in range(2)]
    assert twice[0] == twice[1]


def test_annealed_importance_sampling_finds_the_gaussian_partition_function():
    """ψ(x, t) = −‖x − μm‖²/(2V) exactly here, so Z_t = Π √(2πVᵢ); AIS from the prior recovers log Z_t with a
    healthy effective sample size."""
    model, m, s = gaussian_image_model(t=0.8)
    log_z, ess = model.log_partition(n=400, steps=400, generator=torch.Generator().manual_seed(3))
    v = (0.8 * s) ** 2 + 0.2**2
    exact = 0.5 * torch.log(2 * math.pi * v).sum().item()
    standard_error = math.sqrt((400 / ess - 1) / 400)  # of log Ẑ, from the weights' relative variance
    assert ess > 100 and abs(log_z - exact) < 4 * standard_error + 0.01
