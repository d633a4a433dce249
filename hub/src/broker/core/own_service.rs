//! The broker's own service (RFC 8's `mmi.*` namespace): answers built from
//! the routing state, in [`Broker::handle`]'s thread, never queued.

use proto::mmi;
use serde_json::json;

use super::access::Owner;
use super::{lossy, Broker, OwnedFrame, Transmit};
use crate::metrics::Families;

impl<F: OwnedFrame> Broker<F> {
    pub(super) fn answer_mmi(
        &self,
        caller: Owner,
        request: mmi::Request<'_>,
        out: &mut impl Transmit<F>,
    ) -> Vec<u8> {
        let has_workers =
            |name: &[u8]| self.service_ids.get(name).is_some_and(|&sid| self.services[sid].workers > 0);
        match request {
            mmi::Request::Service { name } => {
                let status = if has_workers(name) { mmi::Status::Ok } else { mmi::Status::NotFound };
                status.as_bytes().to_vec()
            }
            mmi::Request::Services => {
                let mut names: Vec<String> = self
                    .services
                    .iter()
                    .filter(|(_, s)| s.workers > 0)
                    .map(|(_, s)| lossy(&s.name))
                    .collect();
                names.sort();
                json!(names).to_string().into_bytes()
            }
            mmi::Request::Workers => {
                let held = self.held_per_service();
                let services: serde_json::Map<String, serde_json::Value> = self
                    .services
                    .iter()
                    .map(|(sid, s)| {
                        let (idle, in_flight, credit) = held.get(&sid).copied().unwrap_or_default();
                        let mut stats = json!({
                            "workers": s.workers,
                            "idle": idle,
                            "queued": s.queue.len(),
                            "queued_bytes": s.queued_bytes,
                        });
                        // Only a service with credit workers says more, so
                        // readers of the stock answer see it unchanged.
                        if credit > s.workers {
                            stats["in_flight"] = json!(in_flight);
                            stats["credit"] = json!(credit);
                        }
                        (lossy(&s.name), stats)
                    })
                    .collect();
                serde_json::Value::Object(services).to_string().into_bytes()
            }
            mmi::Request::Metrics => {
                // The broker's own part live, the rest of the hub's from the shell.
                let mut mine = Families::default();
                self.collect(&mut mine);
                out.metrics(mine).to_json().to_string().into_bytes()
            }
            mmi::Request::Refusal { name } => {
                let refusal = self.ready_refusals.get(&caller).filter(|(service, _)| **service == *name);
                refusal.map_or(mmi::NO_REFUSAL, |(_, why)| why.as_str()).as_bytes().to_vec()
            }
            mmi::Request::Unknown => mmi::Status::NotImplemented.as_bytes().to_vec(),
        }
    }

    /// The broker's metrics from its live state: counters, totals now, and
    /// each service's.
    pub fn collect(&self, out: &mut Families) {
        self.counters.collect(out);
        let census = self.census();
        out.gauge("broker_workers", "Workers registered now.", vec![], census.workers as u64);
        out.gauge("broker_idle_workers", "Workers holding no request.", vec![], census.idle as u64);
        out.gauge("broker_in_flight_requests", "Requests with a worker.", vec![], census.in_flight as u64);
        out.gauge(
            "broker_free_credit",
            "Requests the workers could take now (a stock worker takes one).",
            vec![],
            census.free_credit as u64,
        );
        out.gauge("broker_queued_requests", "Requests waiting for a worker.", vec![], census.queued as u64);
        out.gauge(
            "broker_queued_bytes",
            "Bytes of requests waiting for a worker.",
            vec![],
            census.queued_bytes as u64,
        );
        out.gauge("broker_services", "Services known now.", vec![], census.services as u64);
        out.gauge(
            "broker_requested_services",
            "Services known now only from requests (no worker has provided them).",
            vec![],
            census.requested_services as u64,
        );
        let held = self.held_per_service();
        for (sid, s) in self.services.iter() {
            let (idle, in_flight, _) = held.get(&sid).copied().unwrap_or_default();
            let labels = || vec![("service", lossy(&s.name))];
            out.gauge("broker_service_workers", "A service's workers.", labels(), s.workers as u64);
            out.gauge(
                "broker_service_idle_workers",
                "A service's workers holding no request.",
                labels(),
                idle as u64,
            );
            out.gauge(
                "broker_service_in_flight_requests",
                "A service's requests with a worker.",
                labels(),
                in_flight as u64,
            );
            out.gauge(
                "broker_service_queued_requests",
                "A service's queued requests.",
                labels(),
                s.queue.len() as u64,
            );
            out.gauge(
                "broker_service_queued_bytes",
                "A service's queued bytes.",
                labels(),
                s.queued_bytes as u64,
            );
            let st = s.stats;
            out.counter("broker_service_requests", "A service's requests.", labels(), st.requests);
            out.counter("broker_service_replies", "A service's final replies.", labels(), st.replies);
            out.counter(
                "broker_service_expired",
                "A service's requests expired in its queue.",
                labels(),
                st.expired,
            );
            out.counter(
                "broker_service_overflowed",
                "A service's requests dropped by its queue's bounds.",
                labels(),
                st.overflowed,
            );
            out.counter(
                "broker_service_redelivered",
                "A service's requests redelivered.",
                labels(),
                st.redelivered,
            );
        }
    }

    /// Each service, for the web view.
    pub fn services(&self) -> Vec<ServiceRow> {
        let held = self.held_per_service();
        let mut rows: Vec<ServiceRow> = self
            .services
            .iter()
            .map(|(sid, s)| ServiceRow {
                service: lossy(&s.name),
                workers: s.workers,
                idle: held.get(&sid).map_or(0, |h| h.0),
                queued: s.queue.len(),
                queued_bytes: s.queued_bytes,
                requests: s.stats.requests,
                replies: s.stats.replies,
                expired: s.stats.expired,
                overflowed: s.stats.overflowed,
            })
            .collect();
        rows.sort_by(|a, b| a.service.cmp(&b.service));
        rows
    }
}

/// One service as the web view shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServiceRow {
    pub service: String,
    pub workers: usize,
    /// Workers holding no request.
    pub idle: usize,
    pub queued: usize,
    pub queued_bytes: usize,
    pub requests: u64,
    pub replies: u64,
    pub expired: u64,
    pub overflowed: u64,
}
