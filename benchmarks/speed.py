"""Training-step time and peak memory of the energy U-Net (VPFB) against the same U-Net trained by flow matching.

    python benchmarks/speed.py                                   # CPU, the mnist5k-cpu U-Net, batch 32, 1 thread
    python benchmarks/speed.py --network cifar10 --batch 128 --device cuda --amp bf16 --compile

Both train the same backbone U(x, t): flow matching regresses U(x_t, t) on u = x̄ − ε; VPFB differentiates the
released head Φ = ½‖x − U(x, t)‖² in x and trains ∇Φ with the Deep Ritz loss (double backpropagation). Steps are
timed interleaved (median of rounds), so a busy machine slows both alike; the ratio is what to read. The two
count columns (eager rows) divide VPFB's step by FM's in matrix-multiply FLOPs (convolutions, their backward passes,
attention's matmuls, as torch.utils.flop_counter counts them) and in dispatched ATen operations: the first is the
work exact second derivatives cannot avoid, the second the per-operation overhead on top of it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import flop_registry

from vpfb.losses import DeepRitzLoss, LossOutput
from vpfb.parameterisation import DirectPotential
from vpfb.paths import LinearPath
from vpfb.potentials import AEEnergy, CompiledVelocity, UNet, unet_config


def flow_matching_loss(net, x1):
    t = torch.rand(len(x1), device=x1.device)
    eps = torch.randn_like(x1)
    xt = t[:, None, None, None] * x1 + (1 - t[:, None, None, None]) * eps
    loss = 0.5 * (net(xt, t) - (x1 - eps)).flatten(1).square().sum(1).mean()
    return LossOutput(loss, {})


def build(method: str, setting: dict, device: str, compile_: bool):
    """(network, what the loss calls, loss_fn(potential, x)): the U-Net regressing u for "fm", the released head
    Φ = ½‖x − U(x, t)‖² for "vpfb"; compiled, FM's forward goes through torch.compile and VPFB's Φ with ∇ₓΦ
    through CompiledVelocity."""
    torch.manual_seed(0)
    backbone = UNet(**setting).to(device)
    if method == "fm":
        return backbone, torch.compile(backbone) if compile_ else backbone, flow_matching_loss
    model = DirectPotential(AEEnergy(backbone), LinearPath())
    return model, CompiledVelocity(model) if compile_ else model, DeepRitzLoss(model.path, weight="uniform")


def make_step(method: str, setting: dict, device: str, amp: bool, compile_: bool):
    model, forward, loss_fn = build(method, setting, device, compile_)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(x):
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            out = loss_fn(forward, x)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return step


shapes_of = functools.partial(tree_map, lambda a: a.shape if isinstance(a, torch.Tensor) else a)


class OpCounter(TorchDispatchMode):
    """Counts dispatched ATen operations and their matmul/convolution FLOPs (FlopCounterMode's formulas; its module
    tracking cannot run inside autograd.grad, which VPFB's step calls)."""

    def __init__(self):
        super().__init__()
        self.ops, self.flops = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        if (formula := flop_registry.get(func._overloadpacket)) is not None:
            self.flops += formula(*shapes_of(args), **shapes_of(kwargs), out_val=shapes_of(out))
        return out


def count_step(step, x) -> tuple[int, int]:
    """(matmul FLOPs, ATen operations) of one training step."""
    with OpCounter() as counter:
        step(x)
    return counter.flops, counter.ops


def time_steps(step, x, n: int, device: str) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(n):
        step(x)
    sync()
    return (time.perf_counter() - start) / n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--network", default="mnist5k-cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "both"])
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    p.add_argument("--steps", type=int, default=5, help="steps per timing round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    setting = unet_config(args.network)
    x = (
        torch.rand(args.batch, setting["in_channels"], setting["image_size"], setting["image_size"], device=args.device)
        * 2
        - 1
    )
    variants = (
        [(False, False)]
        if args.amp == "none"
        else [(True, False)]
        if args.amp == "bf16"
        else [(False, False), (True, False)]
    )
    if args.compile:
        variants += [(amp, True) for amp, _ in variants]
    params = sum(q.numel() for q in UNet(**setting).parameters())
    print(
        f"# {args.network} U-Net ({params / 1e6:.2f}M parameters), batch {args.batch}, {args.device}, "
        f"torch {torch.__version__}, {args.threads} thread(s)"
    )
    print(
        "| precision | compiled | FM ms/step | VPFB ms/step | VPFB / FM | FM peak MiB | VPFB peak MiB "
        "| FLOPs VPFB / FM | ops VPFB / FM |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for amp, compiled in variants:
        row = measure(setting, x, args, amp, compiled)
        print(f"| {'bf16' if amp else 'fp32'} | {'yes' if compiled else 'no'} | " + " | ".join(row) + " |", flush=True)


def measure(setting: dict, x: torch.Tensor, args, amp: bool, compiled: bool) -> list[str]:
    """[FM ms, VPFB ms, ratio, FM peak MiB, VPFB peak MiB, FLOP ratio, op ratio] as table cells (the counts for eager
    steps only); a variant that fails says why."""
    try:
        steps = {m: make_step(m, setting, args.device, amp, compiled) for m in ("fm", "vpfb")}
        peak = {}
        for m, step in steps.items():  # warm-up (and compilation), then the peak memory of one step
            for _ in range(2):
                step(x)
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
                step(x)
                peak[m] = f"{torch.cuda.max_memory_allocated() / 2**20:.0f}"
            else:
                peak[m] = "–"
        times = {m: [] for m in steps}
        for _ in range(args.rounds):
            for m, step in steps.items():
                times[m].append(time_steps(step, x, args.steps, args.device))
    except Exception as err:  # e.g. torch.compile cannot differentiate twice
        return [f"failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}"] + [""] * 6
    fm, vpfb = (statistics.median(times[m]) * 1e3 for m in ("fm", "vpfb"))
    counts = ["–", "–"]
    if not compiled:
        (fm_flops, fm_ops), (vpfb_flops, vpfb_ops) = (count_step(steps[m], x) for m in ("fm", "vpfb"))
        counts = [f"{vpfb_flops / fm_flops:.2f}", f"{vpfb_ops / fm_ops:.2f}"]
    return [f"{fm:.1f}", f"{vpfb:.1f}", f"{vpfb / fm:.2f}", peak["fm"], peak["vpfb"], *counts]


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
