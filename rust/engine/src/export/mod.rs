//! A finished profile in the formats people read: Arrow record batches and the pytest plugin's
//! run file, a child process's file for its parent, speedscope, pprof, collapsed stacks, flame graphs; files written whole or not at all.

pub mod arrow;
pub mod atomic_file;
pub mod collapsed;
pub mod flamegraph;
pub mod pprof;
pub mod process_file;
pub mod run_file;
pub mod speedscope;
