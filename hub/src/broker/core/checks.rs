//! The core's internal consistency, checked by the tests after every step,
//! and what the tests may ask of its state.

use std::collections::HashSet;

use super::ready::NOT_READY;
use super::{Broker, OwnedFrame, SPARE_BODIES};

/// One request a worker holds, as the tests see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HeldJob {
    pub client: Vec<u8>,
    pub token: Vec<u8>,
    pub redelivered: bool,
    /// Whether a copy is kept to deliver it once more.
    pub copied: bool,
}

impl<F: OwnedFrame> Broker<F> {
    pub(crate) fn check_invariants(&self) {
        let mut tokens = HashSet::new();
        for (sid, s) in self.services.iter() {
            assert_eq!(self.service_ids.get(&s.name), Some(&sid));
            assert!(s.queue.len() <= self.queue_limit);
            assert_eq!(s.queued_bytes, s.queue.iter().map(|p| p.bytes).sum::<usize>());
            assert!(s.queued_bytes <= self.max_queued_bytes_per_service);
            assert!(!s.exclusive || s.workers <= 1, "an agent's service has one live worker");
            assert_eq!(s.workers, self.workers.iter().filter(|(_, w)| w.service == sid).count());
            assert!(s.queue.is_empty() || s.ready.is_empty(), "requests wait while a worker has credit");
            s.ready.check(|wid| self.workers[wid].slot);
            for e in s.ready.iter() {
                let w = &self.workers[e.wid];
                assert_eq!(w.service, sid);
                assert_eq!(
                    e.free as usize,
                    w.credit as usize - w.jobs.len(),
                    "the heap knows its free credit"
                );
            }
        }
        let mut held = 0;
        for (wid, w) in self.workers.iter() {
            assert_eq!(self.worker_ids.get(&w.identity), Some(&wid));
            assert!(self.services.contains(w.service));
            assert!((1..=proto::mdp::MAX_BROKER_CREDIT).contains(&w.credit));
            assert!(w.jobs.len() <= w.credit as usize, "a worker holds at most its credit");
            let has_credit = w.jobs.len() < w.credit as usize;
            assert_eq!(w.slot != NOT_READY, has_credit, "ready exactly when it has free credit");
            assert!(w.jobs.windows(2).all(|j| j[0].token < j[1].token), "jobs in token order");
            for job in &w.jobs {
                assert!(tokens.insert(job.token), "a request with two workers");
                assert!(!(job.redelivered && job.copy.is_some()), "a redelivery keeps no copy");
            }
            held += w.jobs.len();
        }
        assert_eq!(held, self.in_flight);
        // Every request accepted and not ended is in exactly one place:
        // queued, or with one worker.
        let queued: usize = self.services.iter().map(|(_, s)| s.queue.len()).sum();
        assert_eq!(self.open, queued + held, "open requests: queued {queued}, held {held}");
        assert_eq!(self.worker_ids.len(), self.workers.len());
        assert_eq!(self.service_ids.len(), self.services.len());
        assert!(self.spare.len() <= SPARE_BODIES);
        assert_eq!(self.queued_bytes, self.services.iter().map(|(_, s)| s.queued_bytes).sum::<usize>());
        assert!(self.queued_bytes <= self.max_queued_bytes);
        // Every request a caller has open is queued or with a worker.
        let queued = self.services.iter().flat_map(|(_, s)| s.queue.iter().map(|p| (p.caller, p.bytes)));
        let held = self.workers.iter().flat_map(|(_, w)| w.jobs.iter().map(|j| (j.caller, 0)));
        self.callers.check_open(queued.chain(held));
        // Services known only from requests are counted apart, each against who named it.
        let requested: Vec<_> = self.services.iter().filter_map(|(_, s)| s.requested_by).collect();
        assert!(self.services.iter().all(|(_, s)| s.requested_by.is_none() || s.workers == 0));
        assert_eq!(self.requested_services, requested.len());
        assert_eq!(self.registered_services, self.services.len() - requested.len());
        assert!(self.requested_services <= self.max_requested_services);
        assert!(self.registered_services <= self.max_services);
        self.callers.check_requested(&requested);
    }

    /// The requests `worker` holds, oldest first.
    pub(crate) fn jobs_of(&self, worker: &[u8]) -> Vec<HeldJob> {
        let Some(&wid) = self.worker_ids.get(worker) else { return Vec::new() };
        let jobs = self.workers[wid].jobs.iter().map(|j| HeldJob {
            client: j.client.bytes().to_vec(),
            token: j.token.to_vec(),
            redelivered: j.redelivered,
            copied: j.copy.is_some(),
        });
        jobs.collect()
    }

    /// The oldest request `worker` holds: its client's routing id and the token the worker was given.
    pub(crate) fn job_of(&self, worker: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        self.jobs_of(worker).into_iter().next().map(|j| (j.client, j.token))
    }

    /// The credit `worker` was granted.
    pub(crate) fn credit_of(&self, worker: &[u8]) -> Option<u32> {
        self.worker_ids.get(worker).map(|&wid| self.workers[wid].credit)
    }
}
