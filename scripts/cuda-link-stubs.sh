#!/usr/bin/env bash
# Makes the build of `--features cuda` link on a machine without a GPU driver or CUDA libraries.
#
# candle-core 0.11.1 turns on cudarc's `dynamic-linking`, so the linker wants libcuda, libcublas,
# libcublasLt, libcurand and libnvrtc, and candle-kernels asks for libcudart. This script writes
# stub shared libraries carrying the real sonames, and a static libcudart from the nvcc wheels
# of cuda-env.sh, into one folder, and exports RUSTFLAGS that link against them. The binary then
# records the real sonames; on the GPU machine the real libraries (LD_LIBRARY_PATH, never this
# folder) provide the symbols.
#
# The linker keeps a library only when it defines a symbol the binary uses, so the stubs must
# define the CUDA symbols. Build in two passes (docs/cuda.md):
#   source scripts/cuda-link-stubs.sh            # empty stubs, symbols left unresolved
#   cargo build --release --features cuda -p xtask --target-dir target/xtask-cuda
#   source scripts/cuda-link-stubs.sh target/xtask-cuda/release/xtask [more binaries]   # stubs with their symbols
#   touch xtask/src/main.rs && cargo build --release --features cuda -p xtask --target-dir target/xtask-cuda
# Every stub function returns 999 (CUDA_ERROR_UNKNOWN and the other libraries' error codes), so
# calling one without the real library fails cleanly instead of running garbage.
stub_dir="${AGM_CUDA_STUBS:-$PWD/target/cuda-stubs}"
mkdir -p "$stub_dir"
symbols=""
# The undefined CUDA symbols of every binary named (the first pass's output).
for bin in "$@"; do
  if [ -f "$bin" ]; then
    symbols="$symbols
$(nm -u "$bin" | awk '{print $2}' | sed 's/@.*//' | grep -E '^(cu|nvrtc)' | grep -v '^cuda' || true)"
  fi
done
symbols=$(echo "$symbols" | grep . | sort -u || true)
for pair in cuda:libcuda.so.1 cublas:libcublas.so.13 cublasLt:libcublasLt.so.13 curand:libcurand.so.10 nvrtc:libnvrtc.so.13; do
  name="${pair%%:*}"; soname="${pair#*:}"
  src="$stub_dir/$name.c"
  echo "/* stub of $soname: link-time only */" > "$src"
  for s in $symbols; do
    case "$s" in
      cublasLt*) lib=cublasLt ;;
      cublas*) lib=cublas ;;
      curand*) lib=curand ;;
      nvrtc*) lib=nvrtc ;;
      *) lib=cuda ;;
    esac
    [ "$lib" = "$name" ] && echo "int $s(void) { return 999; }" >> "$src"
  done
  cc -shared -fPIC -o "$stub_dir/lib$name.so" -Wl,-soname,"$soname" "$src"
done
cp "$CUDA_ROOT/lib/libcudart_static.a" "$stub_dir/libcudart.a"
# Symbols the stubs do not define yet (first pass) are left for run time; -z lazy binds on use.
# Added once: sourcing again (the second pass) must leave RUSTFLAGS, and so the build cache, as is.
stub_flags="-L $stub_dir -C link-arg=-Wl,--unresolved-symbols=ignore-all -C link-arg=-Wl,-z,lazy"
case " ${RUSTFLAGS:-} " in
  *" $stub_flags "*) ;;
  *) export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }$stub_flags" ;;
esac
echo "cuda link stubs in $stub_dir ($(echo "$symbols" | grep -c . ) symbols)"
