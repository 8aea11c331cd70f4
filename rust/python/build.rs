use std::path::PathBuf;
use std::process::Command;

fn main() {
    // Exposes cfg(Py_3_12) etc. for code that only exists on some interpreter versions.
    pyo3_build_config::use_pyo3_cfgs();
    build_preload_library();
}

/// Compile the LD_PRELOAD library (rust/alloc/spprof_alloc.c) into the Python package, next to
/// the extension module, so maturin ships it in the wheel and an editable install finds it.
/// maturin builds a single Rust library per wheel, so this one is built here (see the C file).
fn build_preload_library() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let source = manifest.join("../alloc/spprof_alloc.c");
    let target = manifest.join("../../spprof/libspprof_alloc.so");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-env-changed=CC");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args([
            "-O2",
            "-g",
            "-shared",
            "-fPIC",
            "-fvisibility=hidden",
            "-Wall",
            "-Wextra",
        ])
        .args(["-Werror", "-o"])
        .arg(&target)
        .arg(&source)
        .arg("-ldl")
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?} for libspprof_alloc.so: {e}"));
    assert!(status.success(), "compiling {} failed", source.display());
}
