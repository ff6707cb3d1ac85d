"""How far a bf16-autocast training gradient is from fp32's: VPFB (the released head, double backpropagation)
against flow matching on the same U-Net, same batch, same t and ε, no dropout; beside it, for scale, how far two
fp32 gradients with other draws of t and ε lie apart. Weights are perturbed off the zero-initialised output layer
so that every layer gets a gradient.

    python benchmarks/precision.py --network cifar10 --batch 8       # CPU, ~3 minutes on one thread
"""

from __future__ import annotations

import argparse

import torch
from speed import build

from vpfb.potentials import unet_config


def perturb_(model: torch.nn.Module) -> None:
    """Dropout off (both passes must see the same network) and weights moved off the zero-initialised output layer,
    so that every layer gets a gradient."""
    model.eval()
    with torch.no_grad():
        for q in model.parameters():
            q.add_(1e-2 * torch.randn_like(q))


def gradient(model, forward, loss_fn, x, seed: int, amp: bool, device: str) -> torch.Tensor:
    """The flattened parameter gradient of loss_fn(forward, x) with torch seeded `seed`, under bf16 autocast if amp."""
    torch.manual_seed(seed)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
        loss = loss_fn(forward, x).loss
    grads = torch.autograd.grad(loss, list(model.parameters()), materialize_grads=True)
    return torch.cat([g.flatten() for g in grads])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--network", default="cifar10")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(1)
    setting = unet_config(args.network)
    x = (
        torch.rand(
            args.batch,
            setting["in_channels"],
            setting["image_size"],
            setting["image_size"],
            generator=torch.Generator().manual_seed(0),
        ).to(args.device)
        * 2
        - 1
    )
    print(
        f"# {args.network} U-Net, batch {args.batch}, {args.device}, torch {torch.__version__}: ‖g − g_fp32‖ / ‖g_fp32‖"
    )
    print("| method | bf16 autocast | fp32, other t and ε |\n|---|---|---|")
    for method in ("fm", "vpfb"):
        model, forward, loss_fn = build(method, setting, args.device, False)
        perturb_(model)
        g32, g16, other = (
            gradient(model, forward, loss_fn, x, seed, amp, args.device)
            for seed, amp in ((1, False), (1, True), (2, False))
        )
        rel = lambda g: f"{((g - g32).norm() / g32.norm()).item():.3f}"  # noqa: E731
        print(f"| {method} | {rel(g16)} | {rel(other)} |", flush=True)


if __name__ == "__main__":
    main()
