"""One prepared GPU check (under 8 minutes): the CIFAR-10 U-Net (55.7M parameters) on synthetic batches, VPFB
against flow matching, fp32 / bf16 / compiled: step time, images per second, peak memory, and the wall clock the
paper's schedules would take at the measured speed.

    python benchmarks/gpu.py                 # needs a CUDA GPU
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from speed import make_step, time_steps  # noqa: E402

from vpfb.potentials import UNet, unet_config  # noqa: E402

SCHEDULES = {"paper (800k steps × 128)": (800_000, 128), "released (2M steps × 64)": (2_000_000, 64)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--network", default="cifar10")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    setting = unet_config(args.network)
    params = sum(q.numel() for q in UNet(**setting).parameters())
    print(f"# {args.network} U-Net ({params / 1e6:.1f}M parameters), batch {args.batch}, "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}, TF32 on")
    print("| method | precision | compiled | ms/step | images/s | peak GiB | vs FM fp32 | " +
          " | ".join(f"{name} (h)" for name in SCHEDULES) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(SCHEDULES))
    x = torch.rand(args.batch, setting["in_channels"], setting["image_size"], setting["image_size"],
                   device="cuda") * 2 - 1
    reference = None
    for method in ("fm", "vpfb"):
        for amp, compiled in ((False, False), (True, False), (True, True)):
            start = time.perf_counter()
            try:
                step = make_step(method, setting, "cuda", amp, compiled)
                for _ in range(3):
                    step(x)
                torch.cuda.reset_peak_memory_stats()
                ms = 1e3 * statistics.median(time_steps(step, x, args.steps, "cuda") for _ in range(args.rounds))
                peak = torch.cuda.max_memory_allocated() / 2**30
            except Exception as err:  # torch.compile cannot differentiate twice, out of memory, ...
                print(f"| {method} | {'bf16' if amp else 'fp32'} | {'yes' if compiled else 'no'} | failed: "
                      f"{type(err).__name__}: {str(err).splitlines()[0][:90]} |", flush=True)
                torch.cuda.empty_cache()
                continue
            reference = reference or ms
            hours = [steps * ms * (b / args.batch) / 3.6e6 for steps, b in SCHEDULES.values()]
            print(f"| {method} | {'bf16' if amp else 'fp32'} | {'yes' if compiled else 'no'} | {ms:.1f} | "
                  f"{args.batch / ms * 1e3:.0f} | {peak:.1f} | {ms / reference:.2f} | " +
                  " | ".join(f"{h:.0f}" for h in hours) + f" |  ({time.perf_counter() - start:.0f} s)", flush=True)
            del step
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
