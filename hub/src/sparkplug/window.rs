//! Durable samples handed to the MQTT broker and not yet acknowledged, in
//! journal order: the journal's cursor follows the unbroken run of those the
//! broker acknowledged (MQTT acknowledges QoS 1 messages in order).

use std::collections::VecDeque;
use std::time::Instant;

pub(super) struct Window {
    /// (journal key, whether a broker acknowledgement is awaited for it).
    pub(super) in_flight: VecDeque<(u64, bool)>,
    pub(super) sent_upto: u64,
    pub(super) acked_upto: u64,
    pub(super) committed: u64,
    /// The journal flush running, when it started, and the cursor it makes durable.
    pub(super) flushing: Option<tokio::task::JoinHandle<()>>,
    pub(super) flushed: Instant,
    pub(super) flushed_upto: u64,
}

impl Window {
    pub(super) fn at(cursor: u64) -> Window {
        Window {
            in_flight: VecDeque::new(),
            sent_upto: cursor,
            acked_upto: cursor,
            committed: cursor,
            flushing: None,
            flushed: Instant::now(),
            flushed_upto: cursor,
        }
    }

    /// Entries at the front with nothing to await are done.
    pub(super) fn settle(&mut self) {
        while let Some(&(key, false)) = self.in_flight.front() {
            self.in_flight.pop_front();
            self.acked_upto = key;
        }
    }

    /// The broker acknowledged the oldest DDATA awaited.
    pub(super) fn acknowledged(&mut self) -> bool {
        self.settle();
        let Some((key, true)) = self.in_flight.front().copied() else { return false };
        self.in_flight.pop_front();
        self.acked_upto = key;
        self.settle();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_follows_acknowledgements_in_order() {
        let mut w = Window::at(0);
        w.in_flight.extend([(1, true), (2, false), (3, true), (4, false)]);
        w.settle();
        assert_eq!(w.acked_upto, 0, "1 is awaited");
        assert!(w.acknowledged());
        assert_eq!(w.acked_upto, 2, "1 acknowledged, 2 had nothing to await");
        assert!(w.acknowledged());
        assert_eq!(w.acked_upto, 4);
        assert!(!w.acknowledged());
    }
}
