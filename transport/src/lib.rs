//! libzmq shells around `proto`: the I/O half of the Majordomo client and
//! worker, whole-message receive and send, and shutdown signalling.
//!
//! Protocol decisions live in `proto`; this crate only moves frames between
//! sockets and those decisions, and owns the clocks and sleeps.

#[cfg(feature = "async")]
pub mod async_client;
#[cfg(feature = "async")]
pub mod async_socket;
pub mod bus;
pub mod client;
pub mod control;
pub mod curve;
pub mod frames;
pub mod gaps;
pub mod handshake;
pub mod peer;
pub mod pipeline;
pub mod secret;
pub mod shutdown;
pub mod socket;
pub mod worker;

#[cfg(feature = "async")]
pub use async_client::{AsyncClient, AsyncPipeline};
pub use bus::{BusMessage, Publisher, Subscriber};
pub use client::{Client, ClientError, ClientOptions, PipelinedClient, Reply};
pub use shutdown::{Shutdown, ShutdownWatch};
pub use socket::{is_local, Endpoint};
pub use worker::{Handler, PoolOptions, Replier, Worker, WorkerError, WorkerOptions, WorkerStats};
