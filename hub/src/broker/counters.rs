//! The broker's counters. Plain integers bumped on the routing thread and
//! read by `mmi.metrics` (and the HTTP metrics endpoint) as JSON.

use proto::mdp::DecodeError;
use serde_json::{json, Map, Value};

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
    pub fn malformed_total(&self) -> u64 {
        self.malformed.iter().sum()
    }

    pub fn to_json(&self) -> Value {
        let malformed: Map<String, Value> = DecodeError::ALL
            .iter()
            .map(|e| (e.reason().to_string(), json!(self.malformed[e.index()])))
            .collect();
        json!({
            "requests": self.requests,
            "mmi_requests": self.mmi_requests,
            "dispatched": self.dispatched,
            "replies": self.replies,
            "partials": self.partials,
            "partials_dropped_rfc7": self.partials_dropped_rfc7,
            "queue_overflow": self.queue_overflow,
            "queue_bytes_overflow": self.queue_bytes_overflow,
            "expired": self.expired,
            "redelivered": self.redelivered,
            "lost_in_flight": self.lost_in_flight,
            "workers_registered": self.workers_registered,
            "workers_expired": self.workers_expired,
            "workers_left": self.workers_left,
            "violations": self.violations,
            "unknown_workers": self.unknown_workers,
            "mmi_workers_refused": self.mmi_workers_refused,
            "workers_refused": self.workers_refused,
            "duplicate_workers": self.duplicate_workers,
            "workers_revoked": self.workers_revoked,
            "revoked_requests": self.revoked_requests,
            "denied": self.denied,
            "services_refused": self.services_refused,
            "unroutable": self.unroutable,
            "too_many_frames": self.too_many_frames,
            "malformed": malformed,
            "malformed_total": self.malformed_total(),
        })
    }
}
