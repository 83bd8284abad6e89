//! With the `cuda` feature, compiles every `cuda/*.cu` file to PTX (one module per file) and
//! writes `ptx.rs`, one `&str` constant per module. Without it, does nothing: the default build
//! needs no nvcc.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    compile_ptx();
}

#[cfg(feature = "cuda")]
fn compile_ptx() {
    println!("cargo::rerun-if-changed=cuda");
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let ptx = cudaforge::KernelBuilder::new()
        .source_dir("cuda")
        .watch(["cuda/common.cuh"])
        .arg("-std=c++17")
        .arg("-O3")
        .build_ptx()
        .unwrap_or_else(|e| panic!("agm-kernels: compiling cuda/*.cu to PTX failed ({e}); see docs/cuda.md for nvcc"));
    ptx.write(out_dir.join("ptx.rs")).expect("agm-kernels: writing ptx.rs");
}
