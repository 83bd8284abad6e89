#!/usr/bin/env bash
# Makes the build of `--features cuda` link on a machine without a GPU driver or CUDA libraries.
#
# candle-core 0.11.1 turns on cudarc's `dynamic-linking`, so the linker wants libcuda, libcublas,
# libcublasLt, libcurand and libnvrtc, and candle-kernels asks for libcudart. This script writes
# empty stub shared libraries carrying the real sonames (so the binary records the right
# DT_NEEDED entries), and a static libcudart from the nvcc wheels of cuda-env.sh, into one folder.
# Source it after ../shared/tools/cuda-env.sh; it exports RUSTFLAGS that add the folder to the
# search path and leave the CUDA symbols to be bound at run time by the real libraries
# (LD_LIBRARY_PATH on the GPU machine; never point it at this stub folder).

stub_dir="${AGM_CUDA_STUBS:-$PWD/target/cuda-stubs}"
mkdir -p "$stub_dir"
empty="$stub_dir/empty.c"
echo "void agm_cuda_link_stub(void) {}" > "$empty"
for pair in cuda:libcuda.so.1 cublas:libcublas.so.13 cublasLt:libcublasLt.so.13 curand:libcurand.so.10 nvrtc:libnvrtc.so.13; do
  name="${pair%%:*}"; soname="${pair#*:}"
  cc -shared -fPIC -o "$stub_dir/lib$name.so" -Wl,-soname,"$soname" "$empty"
done
cp "$CUDA_ROOT/lib/libcudart_static.a" "$stub_dir/libcudart.a"
# --no-as-needed keeps the stubs as DT_NEEDED entries although they define nothing; -z lazy
# defers binding, so a CPU run never looks a CUDA symbol up.
export RUSTFLAGS="${RUSTFLAGS:-} -L $stub_dir -C link-arg=-Wl,--no-as-needed -C link-arg=-Wl,--unresolved-symbols=ignore-all -C link-arg=-Wl,-z,lazy"
echo "cuda link stubs in $stub_dir"
