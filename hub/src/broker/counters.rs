//! The broker's counters: plain integers bumped on the routing thread,
//! collected into the hub's metrics registry (`crate::metrics`).

use proto::mdp::DecodeError;

use crate::metrics::Families;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerCounters {
    /// Client requests accepted for a service (MMI excluded).
    pub requests: u64,
    /// Requests to `mmi.*`, answered by the broker itself.
    pub mmi_requests: u64,
    /// Requests handed to a worker.
    pub dispatched: u64,
    /// Final replies forwarded to clients.
    pub replies: u64,
    /// Partial replies forwarded to clients.
    pub partials: u64,
    /// Partial replies not forwarded because the client speaks RFC 7, which has none.
    pub partials_dropped_rfc7: u64,
    /// Requests dropped because their service's queue was full.
    pub queue_overflow: u64,
    /// Requests dropped because they would take a queue past its byte bound
    /// (`max_queued_bytes_per_service`, or `max_queued_bytes` for all).
    pub queue_bytes_overflow: u64,
    /// Queued requests dropped after waiting longer than the request expiry.
    pub expired: u64,
    /// In-flight requests queued again after their worker died (opt-in services).
    pub redelivered: u64,
    /// In-flight requests lost with their worker (service not opted in, or already redelivered).
    pub lost_in_flight: u64,
    pub workers_registered: u64,
    /// Workers that registered with a credit above 1 (holding several requests at once).
    pub credit_workers: u64,
    /// Workers purged after `liveness` heartbeat intervals of silence.
    pub workers_expired: u64,
    /// Workers that said DISCONNECT.
    pub workers_left: u64,
    /// Registered workers disconnected for breaking the protocol.
    pub violations: u64,
    /// Worker commands from peers that never registered (answered with DISCONNECT).
    pub unknown_workers: u64,
    /// Workers refused for trying to register an `mmi.*` service.
    pub mmi_workers_refused: u64,
    /// Workers refused because `max_workers` were registered.
    pub workers_refused: u64,
    /// READYs for an agent's service that already had a live worker.
    pub duplicate_workers: u64,
    /// Workers dropped because their identity may no longer provide the service.
    pub workers_revoked: u64,
    /// Queued requests dropped because their caller may no longer make them.
    pub revoked_requests: u64,
    /// Requests and registrations refused for their identity (per identity: `denials`).
    pub denied: u64,
    /// Requests or registrations refused because `max_services` existed.
    pub services_refused: u64,
    /// Messages libzmq would not queue: the peer is gone or its queue is full.
    pub unroutable: u64,
    /// Messages dropped for having more than `max_frames` frames.
    pub too_many_frames: u64,
    /// Malformed messages dropped, per reason (indexed like `DecodeError::ALL`).
    pub malformed: [u64; DecodeError::ALL.len()],
}

impl BrokerCounters {
    /// Adds every counter to `out` (`plantd_broker_<name>_total`).
    pub fn collect(&self, out: &mut Families) {
        let counters: [(&str, &'static str, u64); 25] = [
            ("requests", "Client requests accepted for a service (MMI excluded).", self.requests),
            ("mmi_requests", "Requests to mmi.*, answered by the broker itself.", self.mmi_requests),
            ("dispatched", "Requests handed to a worker.", self.dispatched),
            ("replies", "Final replies forwarded to clients.", self.replies),
            ("partials", "Partial replies forwarded to clients.", self.partials),
            (
                "partials_dropped_rfc7",
                "Partial replies not sent: the client speaks RFC 7.",
                self.partials_dropped_rfc7,
            ),
            ("queue_overflow", "Requests dropped: their service's queue was full.", self.queue_overflow),
            (
                "queue_bytes_overflow",
                "Requests dropped: over a queued-bytes bound.",
                self.queue_bytes_overflow,
            ),
            ("expired", "Queued requests dropped after the request expiry.", self.expired),
            ("redelivered", "In-flight requests queued again after their worker died.", self.redelivered),
            ("lost_in_flight", "In-flight requests lost with their worker.", self.lost_in_flight),
            ("workers_registered", "Workers registered.", self.workers_registered),
            ("credit_workers", "Workers registered with a credit above 1.", self.credit_workers),
            ("workers_expired", "Workers purged after heartbeat silence.", self.workers_expired),
            ("workers_left", "Workers that said DISCONNECT.", self.workers_left),
            ("violations", "Workers disconnected for breaking the protocol.", self.violations),
            ("unknown_workers", "Worker commands from peers that never registered.", self.unknown_workers),
            (
                "mmi_workers_refused",
                "Workers refused for registering an mmi.* service.",
                self.mmi_workers_refused,
            ),
            ("workers_refused", "Workers refused: max_workers registered.", self.workers_refused),
            (
                "duplicate_workers",
                "READYs for an agent's service that had a live worker.",
                self.duplicate_workers,
            ),
            (
                "workers_revoked",
                "Workers dropped: their identity may no longer provide the service.",
                self.workers_revoked,
            ),
            (
                "revoked_requests",
                "Queued requests dropped: their caller may no longer make them.",
                self.revoked_requests,
            ),
            ("denied", "Requests and registrations refused for their identity.", self.denied),
            (
                "services_refused",
                "Requests or registrations refused: max_services existed.",
                self.services_refused,
            ),
            ("unroutable", "Messages libzmq would not queue (peer gone or full).", self.unroutable),
        ];
        for (name, help, value) in counters {
            out.counter(&format!("broker_{name}"), help, vec![], value);
        }
        out.counter(
            "broker_too_many_frames",
            "Messages dropped: more than max_frames.",
            vec![],
            self.too_many_frames,
        );
        for e in DecodeError::ALL {
            let labels = vec![("reason", e.reason().to_string())];
            out.counter(
                "broker_malformed",
                "Malformed messages dropped, per reason.",
                labels,
                self.malformed[e.index()],
            );
        }
    }
}
