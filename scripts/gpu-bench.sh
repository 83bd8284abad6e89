#!/usr/bin/env bash
# agm on a GPU machine, from prebuilt binaries, in one call; nothing is built there. Build the
# bundle on a machine with Rust (docs/cuda.md):
#   source ../shared/tools/cuda-env.sh && scripts/build-gpu-bundle.sh
# then copy target/gpu-bundle over and run:
#   scripts/gpu-bench.sh target/gpu-bundle [extra `bench` flags]
# It finds libcublas, libcublasLt, libcurand and libnvrtc in the NVIDIA wheels of the machine's
# Python (PyTorch's), runs the CUDA kernel tests (every agm kernel on CUDA against the CPU),
# checks one short AV-Digits run on the GPU against the CPU, then prints the kernel table and
# the bench table for the GPU and the bench table for the CPU.
# Each step runs even when an earlier one fails, so one call reports as much as it can.
set -uo pipefail
bundle="${1:?usage: scripts/gpu-bench.sh <bundle dir> [bench flags]}"
shift
out=$(mktemp -d)
for f in xtask agm-kernels-cuda-tests; do
  if [ -f "$bundle/$f.gz" ]; then gzip -dc "$bundle/$f.gz" > "$out/$f"; else cp "$bundle/$f" "$out/$f"; fi
  chmod +x "$out/$f"
done
bin="$out/xtask"
libs=$(python3 - <<'PY'
import glob, site, os
dirs = []
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += glob.glob(os.path.join(sp, "nvidia", "*", "lib"))
print(":".join(d for d in dirs if "stubs" not in d))
PY
)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
echo "== CUDA kernels against the CPU (agm-kernels tests/cuda) =="
"$out/agm-kernels-cuda-tests" --test-threads 1 || echo "!! some CUDA kernel tests failed"
echo "== check: 2 epochs of AGM on AV-Digits, GPU vs CPU =="
"$bin" train --quiet --epochs 2 --device cuda --out "$out/gpu" | grep "test accuracy"
"$bin" train --quiet --epochs 2 --device cpu --out "$out/cpu" | grep "test accuracy"
echo "== kernels, GPU: ours vs candle's ops =="
"$bin" bench --device cuda --models av-digits-late --steps 3 --kernels
echo "== bench, GPU =="
"$bin" bench --device cuda --models av-digits-late,avmnist-late,urfunny-late --large-batch-size 64 --steps 10 "$@"
echo "== bench, CPU (same binary) =="
"$bin" bench --device cpu --models av-digits-late,avmnist-late --large-batch-size 8 --steps 5 "$@"
rm -rf "$out"
