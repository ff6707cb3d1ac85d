"""Mutation check of the mathematics: each mutation (a wrong sign, constant or dropped term in a mathematical
component) is applied to a throw-away worktree of HEAD, the closed-form test files run, and the mutation must make
at least one of them fail. Prints one line per mutation; exits 1 if any survives.

    python dev/mutations.py            # about 15 minutes on 2 CPU cores
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = [
    "tests/test_sampling.py",
    "tests/test_losses.py",
    "tests/test_denoising_energy.py",
    "tests/test_paths.py",
    "tests/test_potentials.py",
    "tests/test_model.py",
    "tests/test_composition.py",
    "tests/test_ood.py",
]
# (what is wrong, file, the text as it is, the text mutated)
MUTATIONS = [
    # CNF divergence / likelihood
    (
        "likelihood: Hutchinson probe estimate halved",
        "src/vpfb/likelihood.py",
        "total = total + (jz * z).flatten(1).sum(1)",
        "total = total + 0.5 * (jz * z).flatten(1).sum(1)",
    ),
    (
        "likelihood: K probes summed to the wrong scale (1/√K)",
        "src/vpfb/likelihood.py",
        "return total / len(probes)",
        "return total / len(probes) ** 0.5",
    ),
    (
        "likelihood: exact divergence reads the wrong diagonal",
        "src/vpfb/likelihood.py",
        "div = div + row.flatten(1)[:, i]",
        "div = div + row.flatten(1)[:, (i + 1) % v_flat.shape[1]]",
    ),
    (
        "likelihood: sign of the divergence integral",
        "src/vpfb/likelihood.py",
        "return log_prior + delta",
        "return log_prior - delta",
    ),
    (
        "likelihood: prior normaliser drops √(2π)",
        "src/vpfb/likelihood.py",
        "dim * math.log(prior_std * math.sqrt(2 * math.pi))",
        "dim * math.log(prior_std)",
    ),
    (
        "likelihood: Rademacher probes replaced by ones (biased)",
        "src/vpfb/likelihood.py",
        "probes = (draw_like(torch.rand, x1.expand(int(hutchinson), *x1.shape), generator) < 0.5).to(x1.dtype) * 2 - 1",
        "probes = torch.ones_like(x1).expand(int(hutchinson), *x1.shape)",
    ),
    # estimators
    (
        "loss: pathwise linear term sign",
        "src/vpfb/losses.py",
        "linear = flat_dot(v, s.u)",
        "linear = -flat_dot(v, s.u)",
    ),
    (
        "loss: Dirichlet factor ½ → 1",
        "src/vpfb/losses.py",
        "dirichlet = 0.5 * flat_dot(v, v)",
        "dirichlet = flat_dot(v, v)",
    ),
    (
        "loss: control variate added instead of subtracted",
        "src/vpfb/losses.py",
        "linear = s.gamma * (phi - potential(",
        "linear = s.gamma * (phi + potential(",
    ),
    (
        "loss: covariance estimator without γ",
        "src/vpfb/losses.py",
        "            linear = s.gamma * phi\n",
        "            linear = phi\n",
    ),
    (
        "loss: time weight dropped",
        "src/vpfb/losses.py",
        "loss = (w * (dirichlet - linear)).mean()",
        "loss = (dirichlet - linear).mean()",
    ),
    (
        "loss: partition log Z mean over M+1",
        "src/vpfb/losses.py",
        "log_z = torch.logsumexp(log_w, dim=1) - math.log(self.samples)",
        "log_z = torch.logsumexp(log_w, dim=1) - math.log(self.samples + 1)",
    ),
    # parameterisations
    (
        "energy: Φ's quadratic v̇/4v → v̇/2v",
        "src/vpfb/parameterisation.py",
        "return s.d_variance / (4 * s.variance) * flat_dot(x, x) + s.half_g2_mu * call_net(self.net, x, t, c)",
        "return s.d_variance / (2 * s.variance) * flat_dot(x, x) + s.half_g2_mu * call_net(self.net, x, t, c)",
    ),
    (
        "energy: velocity's x term v̇/2v → v̇/4v",
        "src/vpfb/parameterisation.py",
        "e(2 * a) * x[:rows]",
        "e(a) * x[:rows]",
    ),
    (
        "energy: log-density without μ",
        "src/vpfb/parameterisation.py",
        "return -flat_dot(x, x) / (2 * s.variance) + s.mu * call_net(self.net, x, t, c)",
        "return -flat_dot(x, x) / (2 * s.variance) + call_net(self.net, x, t, c)",
    ),
    (
        "paths: half_g2_mu sign inside",
        "src/vpfb/paths.py",
        "return self.sigma * (self.d_mu * self.sigma - self.d_sigma * self.mu)",
        "return self.sigma * (self.d_mu * self.sigma + self.d_sigma * self.mu)",
    ),
    (
        "paths: reference variance v̇ halved",
        "src/vpfb/paths.py",
        "return 2 * (self.mu * self.d_mu + self.sigma * self.d_sigma)",
        "return (self.mu * self.d_mu + self.sigma * self.d_sigma)",
    ),
    # MALA / Langevin / AIS
    (
        "MALA: proposal density 4h → 2h",
        "src/vpfb/sampling.py",
        "return -(diff.flatten(1) ** 2).sum(1) / (4 * h)",
        "return -(diff.flatten(1) ** 2).sum(1) / (2 * h)",
    ),
    (
        "MALA: forward and backward proposal swapped",
        "src/vpfb/sampling.py",
        "log_ratio = new_value - value + backward - forward",
        "log_ratio = new_value - value + forward - backward",
    ),
    (
        "Langevin: noise √(2h) → √h",
        "src/vpfb/sampling.py",
        "scale = (2 * step_size) ** 0.5",
        "scale = step_size ** 0.5",
    ),
    (
        "Langevin: temperature ignored in the target",
        "src/vpfb/sampling.py",
        "target = lambda y: log_p(y) / temperature",
        "target = lambda y: log_p(y)",
    ),
    (
        "AIS: weight increment sign",
        "src/vpfb/sampling.py",
        "log_w += (start[0].detach() - log_p_x).double() / temperature",
        "log_w += (log_p_x - start[0].detach()).double() / temperature",
    ),
    (
        "AIS: log Z₀ of the prior dropped",
        "src/vpfb/model.py",
        "log_z = float(torch.logsumexp(w, 0) - math.log(n)) + log_z0",
        "log_z = float(torch.logsumexp(w, 0) - math.log(n))",
    ),
    (
        "Tweedie: σ² → σ",
        "src/vpfb/model.py",
        "x = x + sigma**2 * value_and_grad(lambda y: log_p(y, t), x)[1]",
        "x = x + sigma * value_and_grad(lambda y: log_p(y, t), x)[1]",
    ),
    (
        "annealing: adaptation towards lower acceptance",
        "src/vpfb/sampling.py",
        "eta *= math.exp(2 * (res.acceptance - target_acceptance))",
        "eta *= math.exp(-2 * (res.acceptance - target_acceptance))",
    ),
    # composition / energy read-out / OOD
]


def main() -> int:
    repo = Path(__file__).resolve().parents[1]
    survived = 0
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), "HEAD"], cwd=repo, check=True)
        env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": "1"}
        try:
            for name, rel, old, new in MUTATIONS:
                path = tree / rel
                text = path.read_text()
                if text.count(old) != 1:
                    print(f"NOT APPLIED ({text.count(old)} matches): {name}", flush=True)
                    survived += 1
                    continue
                path.write_text(text.replace(old, new))
                try:
                    run = subprocess.run(
                        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *TESTS],
                        cwd=tree,
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=900,
                    )
                    failed = [line[7:] for line in run.stdout.splitlines() if line.startswith("FAILED")]
                    verdict = f"caught by {failed[0][:90]}" if failed else ("caught" if run.returncode else "SURVIVED")
                finally:
                    path.write_text(text)
                survived += verdict == "SURVIVED"
                print(f"{verdict}: {name}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=repo, check=False)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
