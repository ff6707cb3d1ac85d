import math

import pytest
import torch
from conftest import GaussianTruth

from vpfb.likelihood import divergence, grid_log_normaliser, log_likelihood
from vpfb.ode import ADAPTIVE, SolverError, integrate
from vpfb.paths import LinearPath, LogHomotopyPath
from vpfb.sampling import sample_langevin, sample_ode

M, S = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 1.5])


def exact_endpoint(x0):
    """On the linear path the Gaussian flow map is affine: x_t = t m + √v(t) x0, so x_1 = m + s x0."""
    return M + S * x0


def observed_order(solve, exact, steps=(16, 32)):
    errors = [(solve(n) - exact).abs().max().item() for n in steps]
    return math.log2(errors[0] / errors[1])


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_fixed_step_solvers_converge_at_their_order(solver, order):
    """dx/dt = cos(t) x has x(1) = x0 exp(sin 1)."""
    x0 = torch.randn(64, 2, dtype=torch.float64)
    solve = lambda n: integrate(lambda x, t: torch.cos(t)[:, None] * x, x0, solver=solver, steps=n).x  # noqa: E731
    rate = observed_order(solve, x0 * math.exp(math.sin(1.0)), steps=(16, 32))
    assert abs(rate - order) < 0.3, f"{solver}: observed order {rate:.2f}, expected {order}"


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2)])
def test_potential_flow_converges_at_solver_order(solver, order):
    truth = GaussianTruth(LinearPath(), M, S).double()
    x0 = torch.randn(256, 2, dtype=torch.float64)
    solve = lambda n: sample_ode(truth.potential, x0, solver=solver, steps=n).x  # noqa: E731
    rate = observed_order(solve, exact_endpoint(x0).double(), steps=(32, 64))
    assert abs(rate - order) < 0.3, f"{solver}: observed order {rate:.2f}, expected {order}"


def test_adaptive_solver_counts_evaluations_and_saves_trajectory():
    truth = GaussianTruth(LinearPath(), M, S)
    x0 = torch.randn(512, 2)
    sol = sample_ode(truth.potential, x0, solver="dopri5", rtol=1e-5, atol=1e-5, save=11)
    torch.testing.assert_close(sol.x, exact_endpoint(x0), rtol=1e-3, atol=1e-3)
    assert sol.trajectory.shape == (11, 512, 2) and sol.times.shape == (11,)
    torch.testing.assert_close(sol.trajectory[0], x0)
    mid = 0.5 * M + (0.25 * S**2 + 0.25).sqrt() * x0
    torch.testing.assert_close(sol.trajectory[5], mid, rtol=1e-3, atol=1e-3)
    assert 6 <= sol.nfe < 200


def reading_times(field, log):
    """The field, recording the times it is read at."""

    def recorded(x, t):
        log.append(t[0].item())
        return field(x, t)

    return recorded


@pytest.mark.parametrize("solver", ADAPTIVE)
@pytest.mark.parametrize("t0,t1", [(0.0, 1.0), (1.0, 0.0)])
def test_adaptive_solvers_never_read_the_field_outside_the_interval(solver, t0, t1):
    """A smooth field lets the step size grow tenfold per step; torchdiffeq would then evaluate past t1 and
    interpolate back, reading a network at times it was never trained on."""
    times = []
    x0 = torch.ones(4, 2, dtype=torch.float64)
    sol = integrate(reading_times(lambda x, t: -x, times), x0, t0, t1, solver=solver, rtol=1e-6, atol=1e-6)
    assert min(t0, t1) <= min(times) and max(times) <= max(t0, t1), (min(times), max(times))
    torch.testing.assert_close(sol.x, x0 * math.exp(-(t1 - t0)), rtol=1e-5, atol=1e-5)


def test_likelihood_never_reads_the_field_outside_the_interval():
    times = []
    x1 = torch.randn(16, 2, dtype=torch.float64)
    log_likelihood(reading_times(lambda x, t: -x, times), x1)
    assert 0.0 <= min(times) and max(times) <= 1.0, (min(times), max(times))


def test_euler_counts_one_evaluation_per_step():
    sol = integrate(lambda x, t: -x, torch.ones(3, 2), solver="euler", steps=10)
    assert sol.nfe == 10
    torch.testing.assert_close(sol.x, torch.full((3, 2), 0.9**10))


def test_a_solve_that_cannot_finish_stops_with_a_clear_error():
    x0 = torch.randn(8, 2)
    stiff = lambda x, t: -1e6 * x  # noqa: E731  (dopri5 needs ~10⁶ evaluations at rtol 1e-3)
    with pytest.raises(SolverError, match="dopri5 went past its limit of 300 velocity evaluations"):
        integrate(stiff, x0, max_nfe=300)
    with pytest.raises(SolverError, match="dopri5 went past its limit of 300"):
        log_likelihood(lambda x, t: -1e6 * x, x0, max_nfe=300)
    broken = lambda x, t: x * torch.where(t[:, None] > 0.5, float("nan"), 1.0)  # noqa: E731
    for solver in ("dopri5", "euler"):
        with pytest.raises(SolverError, match=r"not finite at t = 0\.[5-9]"):
            integrate(broken, x0, solver=solver, steps=64)
    assert integrate(lambda x, t: -x, x0, max_nfe=300).nfe <= 300


def test_unknown_solver_is_rejected():
    with pytest.raises(ValueError, match="unknown solver"):
        integrate(lambda x, t: x, torch.ones(1, 1), solver="leapfrog")


@pytest.mark.parametrize("path", [LinearPath(), LinearPath(0.1), LogHomotopyPath(nu=0.2)], ids=str)
@pytest.mark.parametrize("hutchinson", [False, True])
def test_cnf_likelihood_of_analytic_potential_is_exact(path, hutchinson):
    truth = GaussianTruth(path, M, S)
    sigma0 = path.sigma(torch.zeros(1)).item()
    t1 = 1.0
    x1 = truth.sample_marginal(256, t1).double()
    truth.double()
    field = lambda x, t: truth.velocity(x, t)  # noqa: E731
    exact = truth.log_density(x1, torch.full((256,), t1, dtype=torch.float64))
    # The Gaussian velocity has a diagonal Jacobian, on which a Rademacher probe is exact.
    estimate = log_likelihood(field, x1, prior_std=sigma0, hutchinson=hutchinson)
    torch.testing.assert_close(estimate, exact, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("solver", ["dopri5", "rk4"])
def test_cnf_likelihood_of_the_marginal_at_an_inner_time(solver):
    """log p_t for t < 1, read back from t (adaptive or equal steps): the closed form of the Gaussian marginal."""
    truth = GaussianTruth(LinearPath(), M, S)
    t1 = 0.7
    y = truth.sample_marginal(128, t1).double()
    truth.double()
    exact = truth.log_density(y, torch.full((128,), t1, dtype=torch.float64))
    estimate = log_likelihood(truth.velocity, y, t1=t1, solver=solver, steps=40, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(estimate, exact, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(estimate, log_likelihood(truth.velocity, y, t1=1.0, solver=solver, steps=40))


def test_hutchinson_cnf_likelihood_is_unbiased_for_a_correlated_gaussian():
    """With a full covariance the velocity's Jacobian is not diagonal, so a Rademacher probe is no longer exact:
    per-sample estimates scatter, their mean over independent probes matches the exact log-density, and a seeded
    generator repeats them."""
    cov = torch.tensor([[1.0, 0.8, 0.3], [0.8, 1.5, -0.4], [0.3, -0.4, 0.7]])
    truth = GaussianTruth(LinearPath(), [0.5, -1.0, 0.2], cov=cov)
    x1 = truth.sample_marginal(8, 1.0).double()
    truth.double()
    field = lambda x, t: truth.velocity(x, t)  # noqa: E731
    exact = truth.log_density(x1, torch.ones(8, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack(
        [log_likelihood(field, x1, hutchinson=True, rtol=1e-6, atol=1e-6, generator=g) for _ in range(200)]
    )
    assert draws.std(0).min() > 1e-3  # not exact: the probes matter
    torch.testing.assert_close(draws.mean(0), exact, atol=(4 * draws.std(0) / 200**0.5).max().item(), rtol=0)
    again = [log_likelihood(field, x1, hutchinson=True, generator=torch.Generator().manual_seed(1)) for _ in "ab"]
    assert torch.equal(again[0], again[1])


def test_hutchinson_divergence_is_unbiased_and_random():
    a = torch.tensor([[1.0, 2.0, 0.0], [-3.0, 0.5, 1.0], [0.0, 4.0, -2.0]], dtype=torch.float64)
    x = torch.randn(20000, 3, dtype=torch.float64, requires_grad=True)
    v = x @ a.T
    torch.testing.assert_close(divergence(v, x), torch.full((20000,), -0.5, dtype=torch.float64))
    probes = torch.randint(0, 2, x.shape).double() * 2 - 1
    estimates = divergence(v, x, probes)
    assert estimates.std() > 1.0
    assert abs(estimates.mean().item() + 0.5) < 4 * estimates.std().item() / math.sqrt(20000)


@pytest.mark.parametrize("probes", [1, 4])
def test_hutchinson_variance_falls_as_one_over_the_probes(probes):
    """The constant field v = Ax with symmetric A: ∫₀¹∇·v dt = tr A, the K-probe estimate is the mean of K
    independent zᵀAz, so its variance is 2Σ_{i≠j}A_ij²/K (Rademacher) around the exact log-likelihood."""
    a = torch.tensor([[0.5, 0.9, -0.3], [0.9, -0.2, 0.6], [-0.3, 0.6, 0.1]], dtype=torch.float64)
    x1 = torch.randn(6000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    field = lambda x, t: x @ a  # noqa: E731
    g = torch.Generator().manual_seed(1)
    exact = log_likelihood(field, x1, rtol=1e-8, atol=1e-8)
    estimate = log_likelihood(field, x1, hutchinson=probes, rtol=1e-8, atol=1e-8, generator=g)
    noise = estimate - exact
    expected = 2 * (a**2).sum().item() - 2 * (a.diag() ** 2).sum().item()
    assert abs(noise.mean().item()) < 4 * (expected / probes / 6000) ** 0.5
    assert noise.var().item() == pytest.approx(expected / probes, rel=0.1)


def test_hutchinson_takes_a_count_of_probes():
    with pytest.raises(ValueError, match="number of probes"):
        log_likelihood(lambda x, t: x, torch.zeros(2, 2), hutchinson=0.5)


def test_grid_normaliser_of_gaussian():
    logp = lambda x: -0.5 * ((x - M) ** 2 / S**2).sum(1)  # noqa: E731  unnormalised
    log_z = grid_log_normaliser(logp, M - 8 * S, M + 8 * S, points=300)
    assert abs(log_z.item() - math.log(2 * math.pi * S.prod().item())) < 1e-4


@pytest.mark.parametrize("metropolis,step,tol", [(True, 0.5, 0.05), (False, 0.08, 0.05)])
def test_langevin_reaches_gaussian_mean_and_variance(metropolis, step, tol):
    log_p = lambda x: -0.5 * ((x - M) ** 2 / S**2).sum(1)  # noqa: E731
    gen = torch.Generator().manual_seed(1)
    res = sample_langevin(
        log_p,
        torch.zeros(4000, 2),
        steps=1000,
        step_size=step * S.min().item() ** 2,
        metropolis=metropolis,
        generator=gen,
    )
    torch.testing.assert_close(res.x.mean(0), M, atol=tol * 2, rtol=0)
    torch.testing.assert_close(res.x.std(0), S, atol=0, rtol=tol)
    assert res.mean_grad_sq.shape == (1000,)
    if metropolis:
        assert 0.3 < res.acceptance < 1.0


def test_mala_leaves_a_gaussian_on_images_invariant():
    """Chains started at exact draws of N(m, diag s²) on [N, 2, 4, 4] stay there: a large step (MALA rejects what
    the discretisation would bias) keeps mean and variance within Monte-Carlo error."""
    g = torch.Generator().manual_seed(3)
    m, s = torch.randn(2, 4, 4, generator=g), 0.3 + torch.rand(2, 4, 4, generator=g)
    log_p = lambda x: -0.5 * (((x - m) / s) ** 2).flatten(1).sum(1)  # noqa: E731
    x0 = m + s * torch.randn(3000, 2, 4, 4, generator=g)
    res = sample_langevin(log_p, x0, steps=200, step_size=0.5 * s.min().item() ** 2, metropolis=True, generator=g)
    assert res.x.shape == x0.shape and 0.2 < res.acceptance < 0.95
    torch.testing.assert_close(res.x.mean(0), m, atol=4 * s.max().item() / 3000**0.5, rtol=0)
    torch.testing.assert_close(res.x.std(0), s, atol=0, rtol=0.1)
    # the unadjusted chain at the same step is biased: its variance is visibly off
    biased = sample_langevin(log_p, x0, steps=200, step_size=0.5 * s.min().item() ** 2, generator=g)
    assert (biased.x.std(0) / s - 1).abs().max() > 0.1


def test_annealed_langevin_follows_a_moving_gaussian_and_adapts_its_step():
    """Targets N(t·m, (t²s² + (1 − t)²)I) from t = 0.1 to 0.9 (the linear path's marginals of Gaussian data): chains
    started at the prior end at the last target; the adapted MALA acceptance settles near 0.574."""
    from vpfb.sampling import annealed_langevin

    m, s = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.5])
    v = lambda t: t**2 * s**2 + (1 - t) ** 2  # noqa: E731
    log_p = lambda x, t: -0.5 * ((x - t * m) ** 2 / v(t)).sum(1)  # noqa: E731
    times = [0.1 * k for k in range(1, 10)]
    g = torch.Generator().manual_seed(4)
    res = annealed_langevin(
        log_p, torch.randn(4000, 2, generator=g), times, [0.5 * min(v(t)).item() for t in times], 40, generator=g
    )
    torch.testing.assert_close(res.x.mean(0), 0.9 * m, atol=0.1, rtol=0)
    torch.testing.assert_close(res.x.std(0), v(0.9).sqrt(), atol=0, rtol=0.06)
    assert len(res.acceptance) == 9 and abs(res.acceptance[-1] - 0.574) < 0.15
    assert res.step_sizes[0] == 0.5 * min(v(0.1)).item() and res.step_sizes[-1] != 0.5 * min(v(0.9)).item()


def test_langevin_temperature_scales_variance():
    log_p = lambda x: -0.5 * (x**2).sum(1)  # noqa: E731
    res = sample_langevin(log_p, torch.zeros(4000, 1), steps=400, step_size=0.5, temperature=4.0, metropolis=True)
    assert abs(res.x.std().item() - 2.0) < 0.1


def test_bits_per_dim_of_an_analytic_gaussian_potential_matches_the_exact_value():
    """Hutchinson bits/dim of the exact potential for Gaussian "images" (D = 16) lies within 3 standard errors of
    the exact Gaussian value on the same images; the 8-bit offset D log 127.5 is in both."""
    from conftest import GaussianTruth

    from vpfb.likelihood import bits_per_dim, log_likelihood
    from vpfb.paths import LinearPath

    g = torch.Generator().manual_seed(3)
    truth = GaussianTruth(LinearPath(), torch.linspace(-0.3, 0.3, 16), s=torch.linspace(0.2, 0.5, 16))
    y = truth.sample_data(400, generator=g)
    exact, _ = bits_per_dim(truth.log_density(y, torch.ones(400)), 16)
    estimate, se = bits_per_dim(
        log_likelihood(truth.velocity, y, hutchinson=True, generator=g, rtol=1e-4, atol=1e-4), 16
    )
    assert se > 0 and abs(estimate - exact) < 3 * se
    assert (
        abs(exact - (-truth.log_density(y, torch.ones(400)).mean().item() / 16 + math.log(127.5)) / math.log(2)) < 1e-6
    )
    with pytest.raises(ValueError, match="one log-density per image"):
        bits_per_dim(torch.zeros(1), 16)
