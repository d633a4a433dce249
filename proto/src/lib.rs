//! Wire formats and protocol state machines shared by the hub and the agent.
//!
//! Everything here is sans-IO: functions take frames and time and return
//! typed values or actions. Nothing opens a socket, reads a clock or sleeps,
//! so all of it is testable and fuzzable without libzmq.

pub mod alarm;
pub mod backoff;
pub mod breaker;
pub mod bus;
pub mod cert;
pub mod codec;
pub mod consumer;
pub mod fleet;
pub mod heartbeat;
pub mod hub;
pub mod identity;
pub mod ingest;
pub mod mdp;
pub mod mmi;
pub mod pipeline;
pub mod rate;
pub mod sample;
pub mod state;
pub mod uplink;
pub mod zap;

use std::ops::Deref;

/// A message frame: anything that derefs to bytes (`Vec<u8>`, `&[u8]`,
/// `zmq::Message`). Lets the codecs borrow from whatever the caller received into.
pub trait Frame {
    fn bytes(&self) -> &[u8];
}

impl<T: Deref<Target = [u8]>> Frame for T {
    fn bytes(&self) -> &[u8] {
        self
    }
}
