//! Time as a sample records it: wall clock (may jump: a Pi has no RTC and
//! sets its clock over NTP after boot), monotonic time since start (never
//! jumps), and whether the kernel considers the wall clock synchronised.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock { start: Instant::now() }
    }

    pub fn elapsed(&self) -> std::time::Duration {
        self.start.elapsed()
    }

    /// The first multiple of `period` since the start that is still ahead.
    pub fn next_multiple(&self, period: std::time::Duration) -> Instant {
        let n = self.start.elapsed().as_nanos() / period.as_nanos().max(1) + 1;
        self.start + period * u32::try_from(n).unwrap_or(u32::MAX)
    }

    pub fn mono_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Wall-clock nanoseconds since the Unix epoch (negative if the clock is before it).
pub fn wall_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

/// Whether the kernel's clock discipline (NTP, chrony, timesyncd) reports a
/// synchronised clock. Reads state only; changes nothing.
pub fn synced() -> bool {
    // SAFETY: adjtimex with modes = 0 only reads into the zeroed struct we own.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    state >= 0 && state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0
}
