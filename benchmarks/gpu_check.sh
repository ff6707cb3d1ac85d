#!/usr/bin/env bash
# One prepared GPU session (about 9 minutes on one H100), everything written to OUT_DIR:
#   1. the tests that need CUDA (exact resume on CUDA, compiled bf16 training, conditional U-Net on CUDA);
#   2. benchmarks/gpu.py: the CIFAR-10 U-Net, VPFB in fp32 eager and compiled against flow matching in fp32, and
#      the compiled gradient against the eager one (compilation takes about 4 minutes);
#   3. the cifar10 preset end to end with train.compile=true on a fake CIFAR-10 (official file layout, random
#      pixels): 40 steps with a checkpoint at 20, a sample grid, then the same command with --steps 60 resumes.
#
#     bash benchmarks/gpu_check.sh OUT_DIR          # PYTHON=... to choose the interpreter (default python3)
set -u
out=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}
py=${PYTHON:-python3}
export PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$py" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
} 2>&1 | tee "$out/env.txt"

echo "## 1. the CUDA tests"
timeout 120 "$py" -m pytest -q -p no:cacheprovider -k cuda \
  tests/test_checkpoint.py tests/test_image_potentials.py tests/test_trainer.py 2>&1 | tee "$out/cuda_tests.txt"

echo "## 2. benchmarks/gpu.py"
{ timeout 60 "$py" benchmarks/gpu.py --variants fp32 --methods fm vpfb --steps 5
  timeout 330 "$py" benchmarks/gpu.py --variants fp32-compiled --methods vpfb --steps 5
} 2>&1 | grep -v Warning | tee "$out/gpu.txt"

echo "## 3. the cifar10 preset on a fake CIFAR-10"
data=$(mktemp -d) run=$(mktemp -d)/cifar10
"$py" -c "import sys; from pathlib import Path; from fakes import write_cifar
write_cifar(Path(sys.argv[1]), sizes={'train': 1024, 'test': 16})" "$data"
train() {  # torchvision's md5 check reduced to a file-exists check: the fake's files are not the official ones
  timeout 120 "$py" -c "import os, sys, torchvision.datasets.cifar as cifar
cifar.check_integrity = lambda path, md5=None: os.path.isfile(path)
from vpfb.cli import main
sys.exit(main(sys.argv[1:]))" train cifar10 --out "$run" data.root="$data" train.checkpoint_every=20 \
    train.sample_every=40 train.log_every=10 train.compile=true "$@"
}
{ time train --steps 40; time train --steps 60; } 2>&1 | tee "$out/preset.txt"
cp "$run/metrics.csv" "$out/preset_metrics.csv"; cp "$run/samples.png" "$out/preset_samples.png"
ls "$run/checkpoints" | tee -a "$out/preset.txt"
