//! The agent as a library: the binary (`main.rs`) is its command line, and
//! the black-box tests and benchmarks reach its store directly.

pub mod config;
pub mod outbox;
pub mod store;
