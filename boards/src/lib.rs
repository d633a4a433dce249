//! Board profiles and their drivers.
//!
//! A [`Profile`] names a kind of controller (a simulated board, any Linux
//! machine, a Raspberry Pi model) with resource defaults sized for its RAM
//! and the channels it samples when the config names none. A channel's
//! [`DriverSpec`] builds a [`Driver`] that reads (and, for outputs, writes)
//! one value. Drivers that read files resolve their paths under a root
//! directory (normally `/`), so tests run them on fixture trees.

mod driver;
pub mod iio;
pub mod linux;
pub mod modbus;
mod profile;
pub mod rpi;
pub mod sim;
mod spec;

pub use driver::{Driver, DriverError};
pub use profile::{Profile, Resources, PROFILES};
pub use proto::sample::Value;
pub use spec::{ChannelConfig, Delivery, DriverSpec};
