//! The hub's wall clock, in the nanoseconds every timestamp on the wire uses.

/// Now, in nanoseconds since the Unix epoch.
pub fn wall_ns() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    since.as_nanos() as i64
}
