//! What the black-box tests (`tests/`) and the benchmarks share: the
//! workspace's binaries, child processes killed on drop, commands run with a
//! deadline, free loopback ports, waits that poll a condition until a
//! deadline, and (in [`bench`]) benchmark arguments and process figures.
//!
//! Nothing here sleeps to synchronise, and nothing waits without a bound.

pub mod bench;
mod process;

pub use process::*;
