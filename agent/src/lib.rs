//! The agent as a library: the binary (`main.rs`) is its command line, and
//! the black-box tests and benchmarks reach its store directly.

pub mod alarms;
pub mod clock;
pub mod config;
pub mod control;
pub mod epoch;
pub mod fleet;
pub mod http;
pub mod live;
pub mod lock;
pub mod outbox;
pub mod run;
pub mod sampler;
pub mod service;
pub mod stage;
pub mod state;
pub mod status;
pub mod store;
pub mod supervise;
pub mod uplink;
