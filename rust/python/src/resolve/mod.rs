//! GIL side, shared by the CPU and memory profilers: raw records become frames and stacks while
//! the code objects they name are alive.
//!
//! - [`resolver`]: code pointers and native addresses → interned frames, cached per code object;
//! - [`stack`]: a raw record → one interned stack (Python and native frames merged by [`merge`]);
//! - [`symbols`]: names of native frames ([`elf`]: an object file's `.symtab`); [`eh_frame`]:
//!   a native function's bounds;
//! - [`thread`]: the background resolver threads (one per profiler), and fork safety.

pub mod eh_frame;
pub mod elf;
pub mod merge;
pub mod resolver;
pub mod stack;
pub mod symbols;
pub mod thread;
