#!/usr/bin/env bash
# Source this file before building agm's `cuda` feature (`cargo xtask train --device cuda` does
# the build): it finds nvcc and exports what candle-kernels and cudarc read at build time.
#   source scripts/cuda-env.sh
# It uses, in order: $NVCC, an nvcc on PATH, $CUDA_HOME or $CUDA_ROOT, /usr/local/cuda, and
# otherwise fetches nvcc 13.0 and its headers as NVIDIA's PyPI wheels (once, into
# ${AGM_CUDA_HOME:-~/.cache/agm-cuda-13.0}). Stay on CUDA 13.0 or older where the GPU driver is
# 580: it accepts PTX only up to 13.0, and candle ships its kernels as PTX. Nothing here is needed
# for the default CPU build or for CI.
_agm_nvcc=""
for _agm_try in "${NVCC:-}" "$(command -v nvcc 2>/dev/null)" "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" \
  "${CUDA_ROOT:+$CUDA_ROOT/bin/nvcc}" /usr/local/cuda/bin/nvcc; do
  if [ -n "$_agm_try" ] && [ -x "$_agm_try" ]; then _agm_nvcc="$_agm_try"; break; fi
done
if [ -z "$_agm_nvcc" ]; then
  _agm_cuda_home="${AGM_CUDA_HOME:-$HOME/.cache/agm-cuda-13.0}"
  _agm_nvcc="$_agm_cuda_home/nvidia/cu13/bin/nvcc"
  if [ ! -x "$_agm_nvcc" ]; then
    mkdir -p "$_agm_cuda_home/wheels" || return 1
    python3 -m pip download -q --no-deps -d "$_agm_cuda_home/wheels" \
      nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 || return 1
    for _agm_wheel in "$_agm_cuda_home"/wheels/*.whl; do
      python3 -m zipfile -e "$_agm_wheel" "$_agm_cuda_home" || return 1
    done
    chmod +x "$_agm_cuda_home"/nvidia/cu13/bin/* "$_agm_cuda_home"/nvidia/cu13/nvvm/bin/* 2>/dev/null
  fi
fi
_agm_cuda_root="$(cd "$(dirname "$_agm_nvcc")/.." && pwd)"
export NVCC="$_agm_nvcc"                          # candle-kernels' build script runs $NVCC
export PATH="$_agm_cuda_root/bin:$PATH"
export CUDA_ROOT="$_agm_cuda_root"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" # 90 = H100/H200 (sm_90a)
# cudarc names CUDA 13.0 as 13000, 12.4 as 12040.
read -r _agm_major _agm_minor <<< "$("$NVCC" --version | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -n 1)"
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-$(printf '%d%03d' "${_agm_major:-13}" "$(( ${_agm_minor:-0} * 10 ))")}"
"$NVCC" --version | tail -n 2
unset _agm_nvcc _agm_try _agm_cuda_home _agm_cuda_root _agm_wheel _agm_major _agm_minor
