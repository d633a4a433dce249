//! Counts of the broker's live state, for tests and gauges.

use std::collections::HashMap;

use super::*;

impl<F: OwnedFrame> Broker<F> {
    /// Counts of live state, for tests and gauges.
    pub fn census(&self) -> Census {
        Census {
            workers: self.workers.len(),
            idle: self.workers.iter().filter(|(_, w)| w.jobs.is_empty()).count(),
            in_flight: self.in_flight,
            free_credit: self.workers.iter().map(|(_, w)| (w.credit as usize) - w.jobs.len()).sum(),
            queued: self.services.iter().map(|(_, s)| s.queue.len()).sum(),
            queued_bytes: self.queued_bytes,
            services: self.services.len(),
            requested_services: self.requested_services,
        }
    }

    /// Each service's workers: (holding no request, requests held, credit in all), by service id.
    pub(super) fn held_per_service(&self) -> HashMap<usize, (usize, usize, usize)> {
        let mut held: HashMap<usize, (usize, usize, usize)> = HashMap::new();
        for (_, w) in self.workers.iter() {
            let entry = held.entry(w.service).or_default();
            entry.0 += usize::from(w.jobs.is_empty());
            entry.1 += w.jobs.len();
            entry.2 += w.credit as usize;
        }
        held
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    pub workers: usize,
    /// Workers holding no request.
    pub idle: usize,
    /// Requests with a worker.
    pub in_flight: usize,
    /// Requests workers could take now, in all.
    pub free_credit: usize,
    pub queued: usize,
    pub queued_bytes: usize,
    pub services: usize,
    /// Of them, known only from requests (no worker ever).
    pub requested_services: usize,
}
