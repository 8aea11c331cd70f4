fn main() {
    // Exposes cfg(Py_3_12) etc. for code that only exists on some interpreter versions.
    pyo3_build_config::use_pyo3_cfgs();
}
