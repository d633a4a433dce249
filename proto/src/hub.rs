//! The hub's own services: what an operator asks the hub about itself
//! (`agents`, `stores`, `bridge`, `pipeline`), and its dead letters, which
//! only operators reach. Only the hub may provide them: the broker refuses
//! any worker's READY for these names.

/// Commands: `agents`, `stores`, `bridge`, `pipeline`; one frame of JSON back.
pub const SERVICE: &str = "org.plantd.Hub";

/// `dlq list | show ID | replay ID|--all | purge [SECONDS]`: they change data,
/// so `viewer` (which may call [`SERVICE`]) does not reach them.
pub const DLQ_SERVICE: &str = "org.plantd.Hub.Dlq";
