"""One prepared GPU check (under 8 minutes): the CIFAR-10 U-Net (55.7M parameters) on synthetic batches, VPFB
against flow matching, fp32 / bf16 / compiled: step time, images per second, peak memory, the first step's time
(compilation), and the wall clock the paper's schedules would take at the measured speed. After a compiled VPFB
row: how far its loss gradient is from the eager one on the same batch and noise, without dropout (weights
perturbed off the zero-initialised output layer, so that every layer gets a gradient).

    python benchmarks/gpu.py                                             # needs a CUDA GPU
    python benchmarks/gpu.py --methods vpfb --variants bf16 bf16-compiled --batch 128 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from precision import gradient, perturb_  # noqa: E402
from speed import build, make_step, time_steps  # noqa: E402

from vpfb.potentials import UNet, unet_config  # noqa: E402

SCHEDULES = {"paper (800k steps × 128)": (800_000, 128), "released (2M steps × 64)": (2_000_000, 64)}
VARIANTS = {
    "fp32": (False, False),
    "bf16": (True, False),
    "fp32-compiled": (False, True),
    "bf16-compiled": (True, True),
}


def compiled_gradient_error(setting: dict, x: torch.Tensor, amp: bool) -> float:
    """‖g_compiled − g_eager‖ / ‖g_eager‖ for VPFB's loss gradient, same weights, batch and noise."""
    model, compiled, loss_fn = build("vpfb", setting, "cuda", True)
    perturb_(model)
    eager, fused = (gradient(model, potential, loss_fn, x, 1, amp, "cuda") for potential in (model, compiled))
    return ((fused - eager).norm() / eager.norm()).item()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--network", default="cifar10")
    p.add_argument("--batch", type=int, nargs="+", default=[128])
    p.add_argument("--methods", nargs="+", default=["fm", "vpfb"], choices=["fm", "vpfb"])
    p.add_argument("--variants", nargs="+", default=["fp32", "bf16", "bf16-compiled"], choices=VARIANTS)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    setting = unet_config(args.network)
    params = sum(q.numel() for q in UNet(**setting).parameters())
    print(
        f"# {args.network} U-Net ({params / 1e6:.1f}M parameters), {torch.cuda.get_device_name()}, "
        f"torch {torch.__version__}, TF32 on"
    )
    print(
        "| method | batch | precision | compiled | ms/step | images/s | peak GiB | vs FM fp32 | first step (s) | "
        + " | ".join(f"{name} (h)" for name in SCHEDULES)
        + " |"
    )
    print("|---|---|---|---|---|---|---|---|---|" + "---|" * len(SCHEDULES))
    for batch in args.batch:
        x = (
            torch.rand(batch, setting["in_channels"], setting["image_size"], setting["image_size"], device="cuda") * 2
            - 1
        )
        reference = None
        for method in args.methods:
            for variant in args.variants:
                amp, compiled = VARIANTS[variant]
                cells = measure(method, setting, x, amp, compiled, args)
                if isinstance(cells, str):
                    print(f"| {method} | {batch} | {variant} | failed: {cells} |", flush=True)
                    continue
                ms, peak, first = cells
                if method == "fm" and variant == "fp32":
                    reference = ms
                hours = [steps * ms * (b / batch) / 3.6e6 for steps, b in SCHEDULES.values()]
                print(
                    f"| {method} | {batch} | {'bf16' if amp else 'fp32'} | {'yes' if compiled else 'no'} | "
                    f"{ms:.1f} | {batch / ms * 1e3:.0f} | {peak:.1f} | "
                    f"{f'{ms / reference:.2f}' if reference else '–'} | {first:.0f} | "
                    + " | ".join(f"{h:.0f}" for h in hours)
                    + " |",
                    flush=True,
                )
                if compiled and method == "vpfb":
                    print(
                        f"(compiled VPFB, {variant}: gradient relative error against eager "
                        f"{compiled_gradient_error(setting, x, amp):.1e})",
                        flush=True,
                    )


def measure(method: str, setting: dict, x: torch.Tensor, amp: bool, compiled: bool, args):
    """(median ms per step, peak GiB, first step's seconds) or why it failed."""
    try:
        step = make_step(method, setting, "cuda", amp, compiled)
        start = time.perf_counter()
        step(x)
        torch.cuda.synchronize()
        first = time.perf_counter() - start
        for _ in range(2):
            step(x)
        torch.cuda.reset_peak_memory_stats()
        ms = 1e3 * statistics.median(time_steps(step, x, args.steps, "cuda") for _ in range(args.rounds))
        peak = torch.cuda.max_memory_allocated() / 2**30
    except Exception as err:  # out of memory, a compiler failure, ...
        torch.cuda.empty_cache()
        return f"{type(err).__name__}: {str(err).splitlines()[0][:90]}"
    del step
    torch.cuda.empty_cache()
    return ms, peak, first


if __name__ == "__main__":
    main()
