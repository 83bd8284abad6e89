#!/usr/bin/env bash
# The `cargo xtask bench` table on a GPU machine, from a prebuilt binary, in one call; nothing is
# built there. Build the binary on a machine with Rust (docs/cuda.md):
#   source ../shared/tools/cuda-env.sh && source scripts/cuda-link-stubs.sh
#   cargo build --release --features cuda -p xtask --target-dir target/xtask-cuda
# then copy target/xtask-cuda/release/xtask over and run:
#   scripts/gpu-bench.sh ./xtask [extra `bench` flags]
# It finds libcublas, libcublasLt, libcurand and libnvrtc in the NVIDIA wheels of the machine's
# Python (PyTorch's), checks one short AV-Digits run on the GPU against the CPU, then prints the
# bench table for the GPU and the same table for the CPU.
set -euo pipefail
bin="${1:?usage: scripts/gpu-bench.sh <xtask binary> [bench flags]}"
shift
libs=$(python3 - <<'PY'
import glob, site, os
dirs = []
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += glob.glob(os.path.join(sp, "nvidia", "*", "lib"))
print(":".join(d for d in dirs if "stubs" not in d))
PY
)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
out=$(mktemp -d)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
echo "== check: 2 epochs of AGM on AV-Digits, GPU vs CPU =="
"$bin" train --quiet --epochs 2 --device cuda --out "$out/gpu" | grep "test accuracy"
"$bin" train --quiet --epochs 2 --device cpu --out "$out/cpu" | grep "test accuracy"
echo "== bench, GPU =="
"$bin" bench --device cuda --models av-digits-late,avmnist-late,urfunny-late --large-batch-size 64 --steps 10 "$@"
echo "== bench, CPU (same binary) =="
"$bin" bench --device cpu --models av-digits-late,avmnist-late --large-batch-size 8 --steps 5 "$@"
rm -rf "$out"
