#!/usr/bin/env bash
# agm on a GPU machine, from prebuilt binaries, in one call; nothing is built there. Build the
# bundle on a machine with Rust (docs/cuda.md):
#   source scripts/cuda-env.sh && scripts/build-gpu-bundle.sh
# then, from the repository root on the GPU machine (with the bundle and, for the reference's
# own steps, a reference tree carried along):
#   scripts/gpu-bench.sh target/gpu-bundle [reference tree, default .dev/agm-reference] [bench flags]
# It finds the CUDA libraries (cuDNN included) in the NVIDIA wheels of the machine's Python
# (PyTorch's), then, each step under its own time limit and each running even when an earlier one
# fails:
#   1. the CUDA kernel tests (every agm kernel on CUDA against the CPU; cuDNN against im2col;
#      TF32 and bf16 within their rounding);
#   2. 2 epochs of AGM on AV-Digits on the GPU and on the CPU with TF32 off (test accuracies side
#      by side: they must agree);
#   3. the bench table on the GPU at batch 64 (AV-MNIST, UR-Funny, CREMA-D) with the reference's
#      own PyTorch steps (its plain step, and its joint and AGM steps where it has them) on the
#      same GPU, TF32 on both sides, and the targets table (extra flags go to this `bench`);
#   4. the same at `--precision bf16` (PyTorch's plain step under bf16 autocast, and in fp32 as
#      the bf16 target's anchor);
#   5. AV-MNIST and CREMA-D without cuDNN (AGM_CUDNN=0: the im2col path), for what cuDNN buys;
#   6. kernels, copies and sets per step of each arm and of PyTorch's plain step (`--launches`:
#      CUPTI on agm's side, PyTorch's profiler on the other), last, so a failure costs nothing else.
# The log is also written to $OUT/gpu-bench.log when OUT is set (the device tool's folder).
set -uo pipefail
bundle="${1:?usage: scripts/gpu-bench.sh <bundle dir> [reference tree] [bench flags]}"
reference="${2:-.dev/agm-reference}"
shift $(($# < 2 ? $# : 2))
log="${OUT:-$(mktemp -d)}/gpu-bench.log"
exec > >(tee "$log") 2>&1
bin_dir=$(mktemp -d)
for f in xtask agm-kernels-cuda-tests; do
  if [ -f "$bundle/$f.gz" ]; then gzip -dc "$bundle/$f.gz" > "$bin_dir/$f"; else cp "$bundle/$f" "$bin_dir/$f"; fi
  chmod +x "$bin_dir/$f"
done
bin="$bin_dir/xtask"
# Every folder under the Python's nvidia wheels that holds a CUDA library (the layout differs
# between CUDA 12 wheels, nvidia/<lib>/lib, and CUDA 13 wheels, nvidia/cu13/lib).
libs=$(python3 - <<'PY'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = {os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "lib*.so*"), recursive=True)}
print(":".join(sorted(d for d in dirs if "stubs" not in d)))
PY
)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
missing=$(ldd "$bin" | grep "not found" || true)
[ -n "$missing" ] && echo "!! libraries not found: $missing"

step() {
  local limit=$1 title=$2
  shift 2
  echo
  echo "== $title (limit ${limit}s) =="
  local started=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  [ $rc -ne 0 ] && echo "!! $title: exit $rc$([ $rc -eq 124 ] && echo ', time limit')"
  echo "-- $title: $((SECONDS - started)) s"
}
step 100 "CUDA kernels against the CPU (agm-kernels tests/cuda)" "$bin_dir/agm-kernels-cuda-tests" --test-threads 1
for device in cuda cpu; do
  step 45 "check: 2 epochs of AGM on AV-Digits, $device, fp32-strict" \
    "$bin" train --quiet --no-concepts --epochs 2 --device $device --precision fp32-strict --out "$bin_dir/$device"
done
models=avmnist-late,urfunny-late,cremad-late
for precision in fp32 bf16; do
  step $([ $precision = fp32 ] && echo 200 || echo 150) "bench, GPU, batch 64, $precision, with the plain PyTorch step on the same GPU" \
    "$bin" bench --device cuda --precision $precision --models $models --large-batch-size 64 --seq-len 50 \
    --steps 10 --reference-python python3 --reference-tree "$reference" "$@"
done
step 50 "AV-MNIST and CREMA-D without cuDNN (im2col path), fp32" \
  env AGM_CUDNN=0 "$bin" bench --device cuda --models avmnist-late,cremad-late --large-batch-size 64 --steps 5
step 90 "kernel launches per step, batch 64, fp32 (CUPTI; PyTorch's profiler)" \
  "$bin" bench --device cuda --models $models --large-batch-size 64 --seq-len 50 --launches \
  --reference-python python3 --reference-tree "$reference"
rm -rf "$bin_dir"
