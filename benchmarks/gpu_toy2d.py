"""One prepared GPU check of the 2-D core: training step time of VPFB against flow matching with the same MLP
(batch 256 and 4096), then a short CUDA training run through `fit` and the whole 2-D report on the GPU.

    PYTHONPATH=src python benchmarks/gpu_toy2d.py --out OUT_DIR      # needs a CUDA device; about 3 minutes
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from vpfb.config import load_config
from vpfb.data import sample_toy, toy_log_density
from vpfb.evaluation.report2d import report_2d
from vpfb.factory import build_loss_from_config, build_potential
from vpfb.fit import fit
from vpfb.losses import LossOutput
from vpfb.potentials import MLP


def fm_loss(net, x1):
    t = torch.rand(len(x1), device=x1.device)
    x0 = torch.randn_like(x1)
    xt = t[:, None] * x1 + (1 - t[:, None]) * x0
    loss = 0.5 * ((net(xt, t) - (x1 - x0)) ** 2).sum(1).mean()
    return LossOutput(loss, {"loss": loss.detach()})


def step_time(net, loss_fn, x, steps=300) -> float:
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for k in range(steps + 50):
        if k == 50:
            torch.cuda.synchronize()
            start = time.perf_counter()
        out = loss_fn(net, x)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="gpu_toy2d")
    p.add_argument("--steps", type=int, default=8000)
    args = p.parse_args()
    assert torch.cuda.is_available(), "this check needs a CUDA device"
    cfg = load_config("toy2d", ["train.device=cuda"])
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}")
    print("| batch | VPFB ms/step | FM ms/step | ratio |\n|---|---|---|---|")
    for batch in (256, 4096):
        x = torch.randn(batch, 2, device="cuda")
        potential = build_potential(cfg, 2).cuda()
        vpfb = step_time(potential, build_loss_from_config(cfg, potential.path, 2), x)
        fm = step_time(MLP(2, cfg.model.hidden, cfg.model.depth, out_dim=2).cuda(), fm_loss, x)
        print(f"| {batch} | {1e3 * vpfb:.2f} | {1e3 * fm:.2f} | {vpfb / fm:.2f} |", flush=True)
    cfg.train.steps = args.steps
    start = time.perf_counter()
    model = fit(cfg, out=args.out, points=sample_toy("moons", 100_000, seed=0), progress_bar=False)
    seconds = time.perf_counter() - start
    metrics = report_2d(model, sample_toy("moons", 2000, seed=1), args.out, lambda x: toy_log_density("moons", x))
    metrics.update(train_and_calibrate_seconds=seconds, density_t=model.read_out_t)
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
