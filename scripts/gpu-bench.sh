#!/usr/bin/env bash
# agm on a GPU machine, from prebuilt binaries, in one call; nothing is built there. Build the
# bundle on a machine with Rust (docs/cuda.md):
#   source scripts/cuda-env.sh && scripts/build-gpu-bundle.sh
# then, from the repository root on the GPU machine (with the bundle and, for the reference's
# own steps, a reference tree carried along):
#   scripts/gpu-bench.sh target/gpu-bundle [reference tree, default .dev/agm-reference] [bench flags]
# It finds the CUDA libraries in the NVIDIA wheels of the machine's Python (PyTorch's), then, each
# step under its own time limit and each running even when an earlier one fails:
#   1. the CUDA kernel tests (every agm kernel on CUDA against the CPU);
#   2. 2 epochs of AGM on AV-Digits on the GPU and on the CPU (test accuracies side by side);
#   3. the bench table on the GPU at batch 64 (AV-MNIST, UR-Funny, CREMA-D) with the reference's
#      own PyTorch steps (its plain step, and its joint and AGM steps where it has them) on the
#      same GPU, and the targets table (extra flags go to this `bench`, `--repeats 2` say);
#   4. AV-Digits, UR-Funny at batch 128 and the kernel table on the GPU (ours against candle's
#      CUDA ops).
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
step 120 "CUDA kernels against the CPU (agm-kernels tests/cuda)" "$bin_dir/agm-kernels-cuda-tests" --test-threads 1
for device in cuda cpu; do
  step 50 "check: 2 epochs of AGM on AV-Digits, $device" "$bin" train --quiet --epochs 2 --device $device --out "$bin_dir/$device"
done
step 360 "bench, GPU, batch 64, with the reference's PyTorch steps on the same GPU" \
  "$bin" bench --device cuda --models avmnist-late,urfunny-late,cremad-late --large-batch-size 64 --seq-len 50 --steps 10 \
  --reference-python python3 --reference-tree "$reference" "$@"
step 120 "AV-Digits, UR-Funny at batch 128, and the kernels (ours vs candle's ops), GPU" \
  "$bin" bench --device cuda --models av-digits-late,urfunny-late --large-batch-size 128 --seq-len 50 --steps 6 --kernels
rm -rf "$bin_dir"
