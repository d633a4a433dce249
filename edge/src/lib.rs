//! What the agent does to a channel's readings before they reach the
//! outbox, as state machines that take readings and time and return what
//! to send: [`report`] sends a value only when it moved (with a heartbeat),
//! [`aggregate`] turns readings into per-window statistics, [`alarm`]
//! raises and clears limit alarms. No I/O and no
//! clock of their own, so property tests drive them with any series.

pub mod aggregate;
pub mod alarm;
pub mod report;

pub use aggregate::{AggregateConfig, Aggregator, Closed, Stat};
pub use alarm::{Alarm, AlarmConfig};
pub use report::{ReportConfig, ReportFilter, Verdict};
