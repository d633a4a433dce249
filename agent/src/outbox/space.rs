//! The outbox's room on its disk: the reserve it leaves free (sized from
//! the file system unless set), and the warning, repeated while the disk is
//! short of it, that new samples drop the oldest.

use std::time::{Duration, Instant};

use super::Inner;

/// The reserve sized from the file system: this share of it...
pub const RESERVE_PERCENT: u64 = 5;
/// ...at most this much (a large disk needs no more)...
pub const RESERVE_MAX: u64 = 32 << 20;
/// ...and at least this much (room for the local store, the head and a flush).
pub const RESERVE_MIN: u64 = 256 << 10;

/// While the disk is short of the reserve, the warning is repeated this often.
const SPACE_WARNING_EVERY: Duration = Duration::from_secs(60);

/// The free space the outbox leaves on a file system of `total` bytes when
/// `min_free_bytes` is not set: 5 %, from 256 KiB to 32 MiB. (A fixed 32 MiB
/// would exceed a small SD card partition's room and drop nearly every sample.)
pub fn reserve_for(total: u64) -> u64 {
    let share = u128::from(total) * u128::from(RESERVE_PERCENT) / 100;
    u64::try_from(share).unwrap_or(u64::MAX).clamp(RESERVE_MIN, RESERVE_MAX)
}

impl Inner {
    pub(super) fn space(&mut self, space: std::io::Result<(u64, u64)>) {
        let (free, total) = match space {
            Ok(space) => space,
            Err(e) => return ::log::warn!("cannot read the free space of the outbox's file system: {e}"),
        };
        self.space = Some((free, total));
        self.reserve = self.opts.min_free_bytes.unwrap_or_else(|| reserve_for(total));
        let low = free < self.reserve;
        let dropped = self.log.counters.dropped_for_space;
        match (low, self.space_warned) {
            (true, Some((at, _))) if at.elapsed() < SPACE_WARNING_EVERY => {}
            (true, since) => {
                let more =
                    since.map(|(_, then)| format!(" ({} more since the last warning)", dropped - then));
                ::log::warn!("{}{}", self.space_warning(free, total), more.unwrap_or_default());
                self.space_warned = Some((Instant::now(), dropped));
            }
            (false, Some(_)) => {
                ::log::info!("{free} bytes free again, over the reserve: the outbox grows again");
                self.space_warned = None;
            }
            (false, None) => {}
        }
        self.space_low = low;
    }

    /// What the disk being short of the reserve means, and what to do.
    pub(super) fn space_warning(&self, free: u64, total: u64) -> String {
        let why = match self.opts.min_free_bytes {
            Some(_) => "outbox.min_free_bytes".to_string(),
            None => format!("{RESERVE_PERCENT} % of the {} file system", mib(total)),
        };
        format!(
            "the disk has {} free, under the outbox's reserve of {} ({why}): each new sample drops the oldest ({} dropped so far). Free some space on {}, or lower outbox.min_free_bytes",
            mib(free),
            mib(self.reserve),
            self.log.counters.dropped_for_space,
            self.log.dir().display()
        )
    }
}

/// Bytes as MiB for messages.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}
