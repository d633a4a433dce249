//! The service table: a service found or made for a request or a READY,
//! within the bounds kept apart for services with workers and services only
//! ever requested (per identity too), and forgotten once it is empty.

use super::*;

impl<F: OwnedFrame> Broker<F> {
    /// The service a request names, created on first use unless the bounds
    /// on services known only from requests say no (overall, and for `owner`).
    pub(super) fn service_for_request(&mut self, name: &[u8], owner: Owner) -> Option<usize> {
        if let Some(&sid) = self.service_ids.get(name) {
            return Some(sid);
        }
        if self.requested_services >= self.max_requested_services || !self.callers.may_request_new(owner) {
            return None;
        }
        self.requested_services += 1;
        self.callers.requested(owner, 1);
        Some(self.insert_service(name, Some(owner)))
    }

    /// The service a READY names, created (or no longer only requested)
    /// unless `max_services` have workers already.
    pub(super) fn service_for_ready(&mut self, name: &[u8]) -> Option<usize> {
        let sid = self.service_ids.get(name).copied();
        let requested_by = sid.and_then(|sid| self.services[sid].requested_by);
        if sid.is_some() && requested_by.is_none() {
            return sid;
        }
        if self.registered_services >= self.max_services {
            return None;
        }
        self.registered_services += 1;
        match (sid, requested_by) {
            (Some(sid), Some(owner)) => {
                self.services[sid].requested_by = None;
                self.requested_services -= 1;
                self.callers.requested(owner, -1);
                Some(sid)
            }
            _ => Some(self.insert_service(name, None)),
        }
    }

    pub(super) fn insert_service(&mut self, name: &[u8], requested_by: Option<Owner>) -> usize {
        let name: Box<[u8]> = name.into();
        let redeliver = self.redeliver.contains(&name);
        let exclusive = name.starts_with(crate::security::policy::AGENT_SERVICE_PREFIX.as_bytes());
        let service = Service {
            name: name.clone(),
            requested_by,
            redeliver,
            exclusive,
            workers: 0,
            ready: ready::ReadyHeap::default(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            stats: ServiceStats::default(),
        };
        let sid = self.services.insert(service);
        self.service_ids.insert(name, sid);
        sid
    }

    /// Forgets a service with neither workers nor queued requests.
    pub(super) fn forget_service(&mut self, sid: usize) {
        let service = self.services.remove(sid);
        self.service_ids.remove(&service.name);
        match service.requested_by {
            Some(owner) => {
                self.requested_services -= 1;
                self.callers.requested(owner, -1);
            }
            None => self.registered_services -= 1,
        }
    }
}
