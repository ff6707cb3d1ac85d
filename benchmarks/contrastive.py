"""Can contrastive negatives confine an image energy off the data? (issue 15's log Z; an experiment, not a recipe.)

    OMP_NUM_THREADS=1 python benchmarks/contrastive.py runs/dq2000 runs/dq2000-cd --steps 300 --weight 0.01
    OMP_NUM_THREADS=1 python benchmarks/contrastive.py runs/dq2000 runs/dq2000-cd-noise --steps 300 --weight 0.01 \
        --restart 0.05

Fine-tunes a trained energy model (`vpfb train mnist5k-cpu …`) on the Deep Ritz loss plus the maximum-likelihood
gradient of its log-density at the read-out time t* (contrastive divergence with persistent chains, Du & Mordatch
2019; Energy Matching's second phase, Balcerak et al. 2025):

    L = L_Ritz + λ (E_neg ψ(y, t*) − E_data ψ(μx̄ + σε, t*)),

the negatives y a buffer of MALA chains on ψ(·, t*) that starts from the model's own annealed samples
(`EnergyModel.langevin`) and takes `--mala` steps per training step (step adapted to MALA's 0.574 acceptance); with
`--restart p` a share p of the chains drawn each step restart from N(0, vI) noise, v = μ² + σ², as Du & Mordatch
restart theirs, so that they can find regions of high ψ that start far from the digits. The term's gradient is zero
when the negatives follow exp ψ. Every 100 steps the EMA (rate 0.01) is saved as a model in OUT, which
`benchmarks/image_energy.py OUT …` measures like any run.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import torch

from vpfb.data import load_images
from vpfb.losses import DeepRitzLoss
from vpfb.model import load
from vpfb.sampling import sample_langevin


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run", help="a trained energy model's directory")
    p.add_argument("out", help="where the fine-tuned model goes")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--weight", type=float, default=0.01, help="λ, the contrastive term's weight")
    p.add_argument("--mala", type=int, default=5, help="MALA steps per training step on the drawn chains")
    p.add_argument("--buffer", type=int, default=128, help="persistent chains")
    p.add_argument("--restart", type=float, default=0.0, help="share of drawn chains restarted from noise")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--t", type=float, default=0.9, help="the read-out time t*")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = load(args.run)
    phi = model.phi.eval()  # dropout off while sampling: MALA needs one fixed target
    ema = copy.deepcopy(phi)
    data, draws = load_images("mnist5k", labels=False), torch.Generator().manual_seed(0)
    ritz = DeepRitzLoss(model.path, "pathwise", model.config.loss.weight)
    s = model.path.at(torch.tensor([args.t]))
    mu, sigma = float(s.mu), float(s.sigma)
    noise_sd = (mu**2 + sigma**2) ** 0.5
    start = time.time()
    first = model.langevin(args.buffer, 250, args.t, denoise=False, generator=torch.Generator().manual_seed(5))
    buffer = first.x * mu  # in the path's coordinates, where ψ(·, t*) lives
    print(f"buffer of {args.buffer} annealed chains in {time.time() - start:.0f} s", flush=True)
    at = lambda n: torch.full((n,), args.t)  # noqa: E731
    log_psi = lambda y: phi.log_density(y, at(len(y)))  # noqa: E731
    optimiser = torch.optim.Adam(phi.parameters(), lr=args.lr)
    step_size = 1.5e-3 * mu**2  # the long chain's adapted step at t = 0.9 (BENCHMARKS.md), in x
    start = time.time()
    for step in range(1, args.steps + 1):
        drawn = torch.randint(len(buffer), (args.batch,))
        chains = buffer[drawn]
        restart = torch.rand(args.batch) < args.restart
        chains[restart] = noise_sd * torch.randn(int(restart.sum()), *model.shape)
        phi.eval().requires_grad_(False)
        moved = sample_langevin(log_psi, chains, args.mala, step_size, metropolis=True)
        phi.train().requires_grad_(True)
        step_size *= math.exp(2 * (moved.acceptance - 0.574))
        buffer[drawn] = negatives = moved.x

        x = data.batch(torch.randint(len(data), (args.batch,), generator=draws), dequantize=True, generator=draws)
        ritz_out = ritz(phi, x)
        psi = phi.log_density(torch.cat([mu * x + sigma * torch.randn_like(x), negatives]), at(2 * args.batch))
        gap = psi[: args.batch].mean() - psi[args.batch :].mean()
        optimiser.zero_grad()
        (ritz_out.loss - args.weight * gap).backward()
        torch.nn.utils.clip_grad_norm_(phi.parameters(), 1e3)
        optimiser.step()
        with torch.no_grad():
            for averaged, current in zip(ema.parameters(), phi.parameters()):
                averaged.lerp_(current, 0.01)
        if step % 10 == 0:
            row = {
                "step": step,
                "seconds": round(time.time() - start),
                "flow_residual": round(float(ritz_out.parts["residual"]), 2),
                "psi_data": round(float(psi[: args.batch].mean()), 1),
                "psi_negatives": round(float(psi[args.batch :].mean()), 1),
                "acceptance": round(moved.acceptance, 3),
            }
            print(json.dumps(row), flush=True)
        if step % 100 == 0 or step == args.steps:
            model.phi = ema
            model.save(args.out)
            model.phi = phi


if __name__ == "__main__":
    main()
