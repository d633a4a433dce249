//! The broker's configuration (`[broker]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Invalid;

fn invalid(field: &'static str, problem: &str) -> Result<(), Invalid> {
    Err((field, problem.into()))
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// ROUTER endpoint clients and workers connect to. Loopback by default:
    /// exposing it is a decision for the operator (and for CURVE).
    pub endpoint: String,
    /// Heartbeat period, both ways.
    pub heartbeat_interval_ms: u64,
    /// Missed heartbeats before a worker is declared dead.
    pub heartbeat_liveness: u32,
    /// Requests queued per service while no worker is free; more are dropped and counted.
    pub queue_limit: usize,
    /// Bytes of request bodies queued per service; more are dropped and counted.
    pub max_queued_bytes_per_service: usize,
    /// Bytes of request bodies queued for all services together.
    pub max_queued_bytes: usize,
    /// With security: bytes of one identity's requests queued at once; more
    /// are answered 429 (so one peer cannot fill a service's queue).
    pub max_queued_bytes_per_identity: usize,
    /// With security: requests one identity may have open (queued or with a
    /// worker) at once; more are answered 429.
    pub max_in_flight_per_identity: u32,
    /// With security: requests per second one identity may send (a token
    /// bucket, refilled at this rate); more are answered 429.
    pub rate_per_identity: f64,
    /// With security: the bucket's size, the burst an identity may send at once.
    pub burst_per_identity: f64,
    /// Queued requests older than this are dropped and counted.
    pub request_expiry_ms: u64,
    /// Largest frame accepted (ZMQ_MAXMSGSIZE); libzmq disconnects a peer that sends more.
    pub max_message_bytes: i64,
    /// Messages with more frames are dropped and counted.
    pub max_frames: usize,
    /// Services with workers (or that had one, while requests wait for it)
    /// tracked at once; services with neither workers nor queued requests
    /// are forgotten.
    pub max_services: usize,
    /// Services known only from requests (no worker has provided them),
    /// tracked apart: requests for made-up names never fill the table a
    /// worker's READY needs. More such requests are answered 404.
    pub max_requested_services: usize,
    /// ... and of those, how many one identity may name (with security).
    pub max_requested_services_per_identity: usize,
    /// Workers registered at once.
    pub max_workers: usize,
    /// Per-peer send and receive high-water mark, in messages.
    pub hwm: i32,
    /// Services whose in-flight request is delivered once more, to another
    /// worker, when its worker dies or disconnects. Only for idempotent services.
    pub redeliver: Vec<String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            endpoint: "tcp://127.0.0.1:9797".into(),
            heartbeat_interval_ms: 2500,
            heartbeat_liveness: 3,
            queue_limit: 10_000,
            // A 1 GB hub: a quarter of it for queued requests at most.
            max_queued_bytes_per_service: 64 << 20,
            max_queued_bytes: 256 << 20,
            max_queued_bytes_per_identity: 16 << 20,
            max_in_flight_per_identity: 1_000,
            rate_per_identity: 2_000.0,
            burst_per_identity: 4_000.0,
            request_expiry_ms: 30_000,
            max_message_bytes: 1 << 20,
            max_frames: 64,
            max_services: 1024,
            max_requested_services: 256,
            max_requested_services_per_identity: 16,
            max_workers: 10_000,
            hwm: 10_000,
            redeliver: Vec::new(),
        }
    }
}

impl BrokerConfig {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn request_expiry(&self) -> Duration {
        Duration::from_millis(self.request_expiry_ms)
    }

    /// Options for the hub's own workers: they heartbeat as this broker expects.
    pub fn worker_options(&self) -> transport::WorkerOptions {
        let timing = proto::mdp::worker::WorkerTiming {
            heartbeat_interval: self.heartbeat_interval(),
            heartbeat_liveness: self.heartbeat_liveness,
            ..Default::default()
        };
        transport::WorkerOptions { timing, ..transport::WorkerOptions::default() }
    }
}

impl BrokerConfig {
    /// Checks what serde cannot: ranges, and bounds that must fit each other.
    pub fn validate(&self) -> Result<(), Invalid> {
        let b = self;
        if b.endpoint.trim().is_empty() {
            return invalid("broker.endpoint", "must not be empty (e.g. \"tcp://127.0.0.1:9797\")");
        }
        if b.heartbeat_interval_ms == 0 {
            return invalid("broker.heartbeat_interval_ms", "must be at least 1");
        }
        if b.heartbeat_liveness == 0 {
            return invalid("broker.heartbeat_liveness", "must be at least 1");
        }
        if b.queue_limit == 0 {
            return invalid("broker.queue_limit", "must be at least 1");
        }
        if b.max_queued_bytes_per_service == 0 || b.max_queued_bytes < b.max_queued_bytes_per_service {
            return invalid(
                "broker.max_queued_bytes",
                "must be at least max_queued_bytes_per_service, which must be at least 1",
            );
        }
        if b.max_queued_bytes_per_identity < b.max_message_bytes.max(1) as usize {
            return invalid(
                "broker.max_queued_bytes_per_identity",
                "must be at least max_message_bytes, or no request of that size could ever queue",
            );
        }
        if b.max_in_flight_per_identity == 0 || b.rate_per_identity <= 0.0 || b.burst_per_identity < 1.0 {
            return invalid(
                "broker.max_in_flight_per_identity/rate_per_identity/burst_per_identity",
                "must be at least 1 (rate: more than 0)",
            );
        }
        if b.max_message_bytes < 64 {
            return invalid("broker.max_message_bytes", "must be at least 64");
        }
        if b.max_frames < 8 {
            return invalid("broker.max_frames", "must be at least 8 (Majordomo envelopes take up to 6)");
        }
        if b.max_services == 0 || b.max_workers == 0 || b.max_requested_services == 0 {
            return invalid("broker.max_services/max_requested_services/max_workers", "must be at least 1");
        }
        if b.max_requested_services_per_identity == 0 {
            return invalid("broker.max_requested_services_per_identity", "must be at least 1");
        }
        if b.hwm < 0 {
            return invalid("broker.hwm", "must be 0 (no limit) or more");
        }
        Ok(())
    }
}
