//! The hub: the Majordomo broker, the message buses, the state and ingest
//! services and the HTTP endpoint, as a library so tests and benchmarks can
//! run it in-process; `main.rs` is the command line around it.

pub mod bridge;
pub mod broker;
pub mod bus;
pub mod clock;
pub mod config;
pub mod consumers;
pub mod fleet;
pub mod http;
pub mod ingest;
pub mod journal;
pub use httpd::metrics;
pub mod pipeline;
pub mod security;
pub mod serve;
pub mod service;
pub mod sparkplug;
pub mod state;
pub mod storage;

/// A config value out of range, as each component's `validate()` reports
/// it: the field as the TOML names it, and what is wrong with it.
pub type Invalid = (&'static str, String);
