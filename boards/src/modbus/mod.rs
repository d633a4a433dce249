//! Modbus TCP and RTU master: the agent reads (and writes) the plant's PLCs,
//! drives and meters through it.
//!
//! ```toml
//! [[modbus]]
//! name = "plc1"
//! transport = "tcp"                 # or "rtu": device, baud, parity, data_bits, stop_bits
//! address = "10.0.0.20:502"
//! timeout_ms = 1000
//!
//! [[channel]]
//! name = "flow"
//! period_ms = 1000
//! driver = { kind = "modbus", link = "plc1", unit = 1, table = "holding", address = 100, type = "f32", order = "ABCD" }
//! ```
//!
//! [`config`] holds the tables' types, [`codec`] turns registers into values
//! and back, [`plan`] merges reads, [`wire`] speaks TCP and RTU, [`link`]
//! runs one thread per link, and [`driver`] is the channel's end of it.

pub mod codec;
pub mod config;
pub mod driver;
pub mod link;
pub mod plan;
pub mod wire;

pub use config::{DataType, LinkConfig, Order, PointSpec, Table, Transport};
pub use link::{LinkHandle, LinkStatus, Links};
