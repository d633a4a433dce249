//! Harness for the black-box tests: the real binaries, on free loopback
//! ports, in temporary directories, killed when the test ends.
//!
//! Nothing here sleeps to synchronise: waits poll a condition until a
//! deadline and fail with what was last seen.

mod agent;
mod hub;
mod python;
mod secure;

pub use agent::*;
pub use hub::*;
pub use python::*;
pub use secure::*;
pub use testkit::*;
