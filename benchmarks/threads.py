"""A first training next to a busy process: `vpfb train --data pinwheel.npy --steps 600` on its own and beside one
process spinning on a core, with the trainer's thread choice (one thread for a small step) and with torch's default
of one thread per core (`train.threads=N`, N the core count).

    python benchmarks/threads.py            # ≈ 1–2 minutes; the machine should be otherwise idle

Prints wall-clock seconds (median of --rounds) and each busy time as a multiple of the idle time of the same
setting; the goal is the default within 1.3× of its idle time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vpfb.data import sample_toy


def spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def timed_training(data: Path, out: Path, extra: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "vpfb",
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--steps",
            "600",
            "eval.calibrate=false",
            *extra,
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    cores = os.cpu_count() or 1
    settings = {"default (auto)": [], f"train.threads={cores} (torch's default)": [f"train.threads={cores}"]}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pinwheel.npy"
        np.save(data, sample_toy("pinwheel", 5000, seed=0).numpy())
        times: dict[tuple[str, str], list[float]] = {}
        for load in ("idle", "one busy process"):
            stop = multiprocessing.Event()
            busy = multiprocessing.Process(target=spin, args=(stop,)) if load != "idle" else None
            if busy is not None:
                busy.start()
            try:
                for k in range(args.rounds):
                    for name, extra in settings.items():
                        out = Path(tmp) / f"run-{len(times)}-{k}-{abs(hash(name))}"
                        times.setdefault((name, load), []).append(timed_training(data, out, extra))
            finally:
                stop.set()
                if busy is not None:
                    busy.join()
    print(f"# 600 steps of `vpfb train --data pinwheel.npy` (whole command), median of {args.rounds}; {cores} cores")
    print("| threads | idle s | beside one busy process s | busy / idle |")
    print("|---|---|---|---|")
    for name in settings:
        idle, busy = (statistics.median(times[(name, load)]) for load in ("idle", "one busy process"))
        print(f"| {name} | {idle:.1f} | {busy:.1f} | {busy / idle:.2f} |")


if __name__ == "__main__":
    main()
