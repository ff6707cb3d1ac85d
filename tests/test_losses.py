import math

import numpy as np
import pytest
import torch
from conftest import GaussianTruth

from vpfb.likelihood import grid_log_normaliser
from vpfb.losses import DeepRitzLoss, PartitionTerm, ReleasedVAPOLoss, TimeSampler, build_loss, time_weight
from vpfb.parameterisation import DirectPotential, EnergyPotential, parameterise
from vpfb.paths import LinearPath, LogHomotopyPath
from vpfb.potentials import MLPPotential, potential_and_velocity


def mixture(n, gen=None):
    centres = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]])
    return centres[torch.randint(0, 3, (n,), generator=gen)] + 0.3 * torch.randn(n, 2, generator=gen)


@pytest.mark.parametrize(
    "path,weight",
    [(LinearPath(), "sigma2"), (LinearPath(0.05), "sigma2"), (LogHomotopyPath(nu=0.3), "uniform")],
    ids=str,
)
@pytest.mark.parametrize("estimator", ["pathwise", "covariance"])
def test_analytic_potential_is_the_loss_minimiser(path, weight, estimator):
    """J(Φ* + θh) is quadratic in θ with zero slope at θ = 0, and a wrong potential has a clear slope."""
    truth = GaussianTruth(path, [1.0, -0.5], [0.5, 2.0])
    h = lambda x, t: torch.sin(x[:, 0]) * t + x[:, 0] + 0.5 * x[:, 0] * x[:, 1]  # noqa: E731
    wrong = lambda x, t: truth.potential(x, t) + 0.2 * x[:, 0]  # noqa: E731  velocity off by a constant
    loss = DeepRitzLoss(path, estimator, weight=weight, time_sampler=TimeSampler(t_min=1e-3))
    gen = torch.Generator().manual_seed(3)
    slopes = {"truth": [], "wrong": []}
    for _ in range(20):
        x_bar = truth.sample_data(20000, gen)
        t, eps = torch.rand(20000, generator=gen) * 0.998 + 1e-3, torch.randn(20000, 2, generator=gen)
        for name, phi in (("truth", truth.potential), ("wrong", wrong)):
            theta = torch.zeros((), requires_grad=True)
            out = loss(lambda x, tt: phi(x, tt) + theta * h(x, tt), x_bar, t, eps)
            slopes[name].append(torch.autograd.grad(out.loss, theta)[0].item())
    for name in slopes:
        s = torch.tensor(slopes[name])
        slopes[name] = (s.mean().item(), s.std().item() / math.sqrt(len(s)))
    mean, se = slopes["truth"]
    assert abs(mean) < 4 * se
    assert abs(slopes["wrong"][0]) > 5 * se  # the estimator's noise would reveal a wrong velocity


def test_estimators_agree_in_expectation_and_pathwise_has_lower_variance():
    """Paired gradients of the two estimators, projected on random parameter directions, agree in mean."""
    path = LinearPath()
    potential = EnergyPotential(MLPPotential(2, hidden=32, depth=2), path)
    params = list(potential.parameters())
    gen = torch.Generator().manual_seed(0)
    directions = [torch.randn(sum(p.numel() for p in params), generator=gen) for _ in range(3)]
    losses = {
        "pathwise": DeepRitzLoss(path, "pathwise", weight="sigma2"),
        "covariance": DeepRitzLoss(path, "covariance", weight="sigma2"),
        "control_variate": DeepRitzLoss(path, "covariance", weight="sigma2", control_variate=True),
    }
    grads = {e: [] for e in losses}
    for _ in range(300):
        x_bar = mixture(256, gen)
        t, eps = torch.rand(256, generator=gen).clamp(1e-5, 1 - 1e-5), torch.randn(256, 2, generator=gen)
        for e, loss in losses.items():
            g = torch.autograd.grad(
                loss(potential, x_bar, t, eps).loss, params, allow_unused=True, materialize_grads=True
            )
            flat = torch.cat([gi.flatten() for gi in g])
            grads[e].append(torch.stack([flat @ d for d in directions]))
    gp, gc, gcv = (torch.stack(grads[e]) for e in losses)
    for other in (gc, gcv):
        diff = other - gp
        se = diff.std(0) / math.sqrt(len(diff))
        assert (diff.mean(0).abs() < 4 * se).all(), (diff.mean(0), se)
    assert (gp.mean(0).abs() > 4 * gp.std(0) / math.sqrt(len(gp))).any()  # the test has power
    assert (gc.var(0) > 2 * gp.var(0)).all()
    assert gcv.var(0).sum() < 0.8 * gc.var(0).sum()  # the control variate removes part of the variance


def test_pathwise_loss_equals_flow_matching_residual_up_to_a_constant():
    path = LinearPath()
    potential = EnergyPotential(MLPPotential(2, hidden=16, depth=1), path)
    x_bar, t, eps = mixture(64), torch.rand(64), torch.randn(64, 2)
    out = DeepRitzLoss(path, "pathwise", weight="uniform")(potential, x_bar, t, eps)
    u = path.sample(x_bar, t, eps).u
    const = 0.5 * (u**2).sum(1).mean()
    torch.testing.assert_close(out.loss + const, out.parts["residual"])


@pytest.mark.parametrize("path", [LinearPath(), LinearPath(0.1), LogHomotopyPath(nu=0.1)], ids=str)
def test_energy_potential_reads_its_log_density_exactly(path):
    """Φ = ½f‖x‖² + ½g²ψ, so (2Φ − f‖x‖²)/g² returns ψ, and ψ(·, 0) is the prior's log-density."""
    net = MLPPotential(2, hidden=16, depth=2)
    energy, direct = EnergyPotential(net, path), DirectPotential(net, path)
    x, t = torch.randn(32, 2, dtype=torch.float64), torch.rand(32, dtype=torch.float64) * 0.9 + 0.05
    energy.double()
    phi = energy(x, t)
    s = path.at(t)
    torch.testing.assert_close((2 * phi - s.f * (x**2).sum(1)) / s.g2, energy.log_density(x, t))
    torch.testing.assert_close(direct.log_density(x, t), (2 * net(x, t) - s.f * (x**2).sum(1)) / s.g2)
    zero = torch.zeros(32, dtype=torch.float64)
    sigma0 = path.sigma(zero)
    torch.testing.assert_close(energy.log_density(x, zero), -(x**2).sum(1) / (2 * sigma0**2))


def test_energy_potential_with_zero_network_is_the_standard_gaussian_optimum():
    path = LinearPath(0.02)
    net = MLPPotential(3, hidden=8, depth=1)
    torch.nn.init.zeros_(net.head.weight), torch.nn.init.zeros_(net.head.bias)
    truth = GaussianTruth(path, [0.0] * 3, [1.0] * 3)
    x, t = torch.randn(16, 3), torch.rand(16)
    _, v = potential_and_velocity(EnergyPotential(net, path), x, t)
    torch.testing.assert_close(v, truth.velocity(x, t))


def test_time_weights_on_the_linear_path():
    t = torch.rand(10)
    torch.testing.assert_close(time_weight("snr", LinearPath(), t, floor=0.1), (t**2 + 0.1) / ((1 - t) ** 2 + 0.1))
    torch.testing.assert_close(time_weight("dsm", LinearPath(), t), t**2)
    torch.testing.assert_close(time_weight("sigma2", LinearPath(), t), (1 - t) ** 2)


def test_partition_term_bias_at_32_proposals_is_the_stated_one():
    """With ψ = log N(0, I) (Z = 1) and q = N(0, 4I) in 2-D: E_q[w²] = (s²/√(2s² − 1))² per the two dimensions, so
    log Ẑ from M = 32 proposals is low by Var(w)/(2M) = (16/7 − 1)/64 ≈ 0.0201 nats, as the docstring says."""
    term = PartitionTerm(scale=2.0, times=20_000, samples=32)
    torch.manual_seed(0)
    y, t_y, log_q = term.proposals(torch.zeros(1, 2, dtype=torch.float64), 0.9)
    psi = -0.5 * (y**2).sum(1) - math.log(2 * math.pi)
    no_data = torch.zeros(1, dtype=torch.float64)  # L_Z = mean log Ẑ − 0
    mean_log_z = term(no_data, torch.ones(1), psi, log_q).item()
    predicted = -(16 / 7 - 1) / (2 * 32)
    assert mean_log_z == pytest.approx(predicted, abs=0.004)  # SE 0.0014; next order ~0.001
    assert abs(predicted) > 0.015  # the bias is real at this M, not within the noise


def test_partition_term_of_the_true_log_density_is_its_entropy_and_a_spurious_bump_costs():
    """With ψ = log ρ̄ₜ + c, L_Z = log Z − E ψ is the entropy ½ Σ log(2πe vᵢ) whatever c; lifting ψ by 10 where
    ρ̄ₜ has little mass (‖x‖ > 3, reached by the N(0, 2²I) proposals) raises it by exactly the KL divergence,
    log E_ρ[e^lift] − E_ρ[lift], here computed on a grid."""
    path = LinearPath()
    truth = GaussianTruth(path, [0.5, -0.5], [0.6, 1.2]).double()
    term = PartitionTerm(scale=2.0, times=1, samples=200_000)
    torch.manual_seed(0)
    y, t_y, log_q = term.proposals(torch.zeros(1, 2, dtype=torch.float64), 1 - 1e-5)
    t = t_y[:1].expand(200_000)
    x = truth.sample_marginal(200_000, t[0].item())
    psi = lambda z, tt: truth.log_density(z, tt) + 7.0  # noqa: E731  any constant
    lift = lambda z: 10 * torch.sigmoid(8 * (z.norm(dim=1) - 3))  # noqa: E731
    _, _, v, _ = truth._coeffs(t[:1])
    entropy = 0.5 * torch.log(2 * math.pi * math.e * v).sum().item()
    assert term(psi(x, t), t, psi(y, t_y), log_q).item() == pytest.approx(entropy, abs=0.02)
    box = torch.tensor([-10.0, -10.0], dtype=torch.float64), torch.tensor([10.0, 10.0], dtype=torch.float64)
    log_mean_exp_lift = grid_log_normaliser(
        lambda z: psi(z.double(), t[:1].expand(len(z))) - 7.0 + lift(z.double()), *box, 800
    ).item()
    kl = log_mean_exp_lift - lift(x).mean().item()
    assert kl > 0.5  # the lift is worth detecting
    gap = term(psi(x, t) + lift(x), t, psi(y, t_y) + lift(y), log_q).item() - entropy
    assert gap == pytest.approx(kl, abs=0.1)


def test_partition_term_adds_lambda_times_the_nll_of_the_potentials_log_density():
    """DeepRitzLoss(partition_weight=λ) = the Ritz loss on the same (t, ε) + λ·L_Z, L_Z equal to the term computed
    from the potential's own log_density at the same path samples and proposals."""
    path = LinearPath()
    potential = EnergyPotential(MLPPotential(2, hidden=16, depth=2), path)
    x_bar, t, eps = mixture(64), torch.rand(64) * 0.98 + 0.01, torch.randn(64, 2)
    plain, with_term = DeepRitzLoss(path), DeepRitzLoss(path, partition_weight=0.5)
    torch.manual_seed(1)
    out = with_term(potential, x_bar, t, eps)
    torch.manual_seed(1)
    y, t_y, log_q = with_term.partition.proposals(x_bar, 1 - 1e-5)
    x_t = path.sample(x_bar, t, eps).x_t
    nll = with_term.partition(potential.log_density(x_t, t), t, potential.log_density(y, t_y), log_q)
    assert out.parts["partition_nll"].item() == pytest.approx(nll.item(), abs=1e-4)
    assert out.loss.item() == pytest.approx(plain(potential, x_bar, t, eps).loss.item() + 0.5 * nll.item(), abs=1e-4)
    assert (t_y >= with_term.partition.t_low).all()


def test_released_loss_runs_and_reports_its_parts():
    path = LinearPath()
    potential = DirectPotential(MLPPotential(2, hidden=16, depth=2), path)
    out = ReleasedVAPOLoss(path)(potential, mixture(128))
    assert set(out.parts) == {"loss", "corr", "dirichlet", "time_grad", "align"}
    assert -1 <= out.parts["corr"] <= 1
    grads = torch.autograd.grad(out.loss, list(potential.parameters()))
    assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_released_loss_matches_its_formula_term_by_term():
    """Φ(x, t) = t w·x + ½t‖x‖² has ∇Φ = t(w + x) and ∂ₜΦ = w·x + ½‖x‖²; every part of the hybrid, computed here
    from its definition with numpy, must match (a flipped sign of x̄·ε or of the alignment term fails)."""
    path, w = LinearPath(), torch.tensor([0.7, -0.3], dtype=torch.float64)
    phi = lambda x, t: t * (x @ w) + 0.5 * t * (x**2).sum(1)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    x_bar, eps = mixture(64).double(), torch.randn(64, 2, generator=g, dtype=torch.float64)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.9 + 0.05
    out = ReleasedVAPOLoss(path)(phi, x_bar, t, eps)
    xb, e, tt = x_bar.numpy(), eps.numpy(), t.numpy()[:, None]
    x, u, d = tt * xb + (1 - tt) * e, xb - e, 2
    values = phi(torch.from_numpy(x), t).numpy()
    gamma = (1 - tt[:, 0]) * ((e * e).sum(1) - (xb * e).sum(1)) / d
    corr = np.corrcoef(values, gamma)[0, 1]
    grad = tt * (w.numpy() + x)
    dirichlet = (grad**2).sum(1).mean() / d
    time_grad = ((x @ w.numpy() + 0.5 * (x**2).sum(1)) ** 2).mean()
    norms = np.linalg.norm(grad, axis=1) * np.linalg.norm(u, axis=1)
    align = -((grad * u).sum(1) / (d * norms ** tt[:, 0])).mean()
    expected = {
        "corr": corr,
        "dirichlet": dirichlet,
        "time_grad": time_grad,
        "align": align,
        "loss": corr + 0.5 * dirichlet + 0.1 * time_grad + align,
    }
    for name, value in expected.items():
        assert out.parts[name].item() == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_bad_loss_options_are_rejected():
    with pytest.raises(ValueError, match="estimator"):
        DeepRitzLoss(LinearPath(), "score")
    with pytest.raises(ValueError, match="time weight"):
        DeepRitzLoss(LinearPath(), weight="edm")
    with pytest.raises(ValueError, match="snr_floor"):
        DeepRitzLoss(LinearPath(), snr_floor=0.0)
    with pytest.raises(ValueError, match="partition_weight"):
        DeepRitzLoss(LinearPath(), partition_weight=-1.0)
    with pytest.raises(ValueError, match="partition term"):
        PartitionTerm(scale=0.0)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("dsm", LinearPath())
    with pytest.raises(ValueError, match="parameterisation"):
        parameterise("precond", MLPPotential(2), LinearPath())
    with pytest.raises(ValueError, match="one scalar per sample"):
        potential_and_velocity(lambda x, t: x, torch.randn(4, 2), torch.rand(4))
