//! Wire formats and protocol state machines shared by the hub and the agent.
//!
//! Everything here is sans-IO: functions take frames and time and return
//! typed values or actions. Nothing opens a socket, reads a clock or sleeps,
//! so all of it is testable and fuzzable without libzmq.

pub mod backoff;
pub mod heartbeat;
pub mod mdp;
pub mod mmi;
