#!/usr/bin/env bash
# Builds, on a machine with Rust and nvcc but no GPU, what scripts/gpu-bench.sh runs on a GPU
# machine that has no Rust: the `cuda` xtask binary and the CUDA kernel tests of agm-kernels,
# stripped and gzipped into target/gpu-bundle (about 45 MB, under the device tool's 64 MiB carry).
#   source scripts/cuda-env.sh    # nvcc 13.0 from PyPI wheels (docs/cuda.md)
#   scripts/build-gpu-bundle.sh
# Links against stub CUDA libraries in two passes (docs/cuda.md, scripts/cuda-link-stubs.sh).
set -euo pipefail
command -v nvcc >/dev/null || { echo "nvcc is not on PATH: source scripts/cuda-env.sh first (docs/cuda.md)" >&2; exit 1; }
dir=target/xtask-cuda
bundle=target/gpu-bundle
build() {
  cargo build --release --features cuda -p xtask --target-dir "$dir"
  cargo test --release --features cuda -p agm-kernels --test cuda --no-run --target-dir "$dir" \
    --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*/cuda-[^"]*"' | tail -1 | cut -d'"' -f4
}
source scripts/cuda-link-stubs.sh
tests=$(build)
# Second pass: stubs that define every CUDA symbol both binaries use, so the linker records them.
source scripts/cuda-link-stubs.sh "$dir/release/xtask" "$tests"
touch xtask/src/main.rs crates/agm-kernels/tests/cuda/main.rs
tests=$(build)
rm -rf "$bundle" && mkdir -p "$bundle"
strip -o "$bundle/xtask" "$dir/release/xtask"
strip -o "$bundle/agm-kernels-cuda-tests" "$tests"
gzip -6 "$bundle/xtask" "$bundle/agm-kernels-cuda-tests"
ls -l "$bundle"
