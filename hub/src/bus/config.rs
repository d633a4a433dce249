//! A bus's configuration (`[[bus]]`): its endpoints, its bounds, and the
//! recording of its messages (`[bus.record]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One bus: publishers connect to `frontend` (XSUB), subscribers to `backend` (XPUB).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    pub name: String,
    pub frontend: String,
    pub backend: String,
    /// A PUB endpoint that gets a copy of every message the bus forwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<String>,
    /// Messages queued per subscriber before the bus drops for that subscriber
    /// (a slow subscriber never stalls the others), and per publisher inbound.
    #[serde(default = "default_bus_hwm")]
    pub hwm: i32,
    /// Largest frame accepted on any of the bus's sockets (ZMQ_MAXMSGSIZE):
    /// a peer that sends more is disconnected.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: i64,
    /// Subscriptions one subscriber connection may hold; more are not applied (and counted).
    #[serde(default = "default_max_subscriptions")]
    pub max_subscriptions: usize,
    /// Longest topic prefix a subscription may have.
    #[serde(default = "default_max_subscription_bytes")]
    pub max_subscription_bytes: usize,
    /// Subscriptions all subscribers of the bus may hold together.
    #[serde(default = "default_max_total_subscriptions")]
    pub max_total_subscriptions: usize,
    /// Bytes of the prefixes all subscribers of the bus may hold together:
    /// libzmq's filter costs about 50 bytes of hub memory per prefix byte.
    #[serde(default = "default_max_total_subscription_bytes")]
    pub max_total_subscription_bytes: usize,
    /// Subscriptions one identity may hold over all its connections (with security).
    #[serde(default = "default_max_subscriptions_per_identity")]
    pub max_subscriptions_per_identity: usize,
    /// Prefix bytes one identity may hold over all its connections (with security).
    #[serde(default = "default_max_subscription_bytes_per_identity")]
    pub max_subscription_bytes_per_identity: usize,
    /// Connections holding subscriptions one identity may have (with security).
    #[serde(default = "default_max_connections_per_identity")]
    pub max_connections_per_identity: usize,
    /// Subscriptions libzmq takes in from one subscriber connection before
    /// the proxy has checked them (the backend's receive high-water mark).
    /// Small, so that a flood of subscriptions cannot be applied unchecked
    /// (libzmq before 4.3.5 applies them itself; see `bus::upstream`).
    #[serde(default = "default_max_unread_subscriptions")]
    pub max_unread_subscriptions: i32,
    /// After the bus closes a subscriber for going over its grants or a
    /// bound, that identity's new subscriber connections are refused for this long.
    #[serde(default = "default_subscriber_cooldown_ms")]
    pub subscriber_cooldown_ms: u64,
    /// Appends every forwarded message to a JSON-lines file, for audits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<RecordConfig>,
}

fn default_bus_hwm() -> i32 {
    10_000
}

fn default_max_message_bytes() -> i64 {
    1 << 20
}

fn default_max_subscriptions() -> usize {
    1_000
}

fn default_max_subscription_bytes() -> usize {
    256
}

fn default_max_total_subscriptions() -> usize {
    100_000
}

fn default_max_total_subscription_bytes() -> usize {
    2 << 20
}

fn default_max_subscriptions_per_identity() -> usize {
    1_000
}

fn default_max_subscription_bytes_per_identity() -> usize {
    64 << 10
}

fn default_max_connections_per_identity() -> usize {
    16
}

fn default_max_unread_subscriptions() -> i32 {
    2
}

fn default_subscriber_cooldown_ms() -> u64 {
    10_000
}

impl BusConfig {
    pub fn new(name: &str, frontend: &str, backend: &str, capture: Option<&str>) -> Self {
        BusConfig {
            name: name.into(),
            frontend: frontend.into(),
            backend: backend.into(),
            capture: capture.map(Into::into),
            hwm: default_bus_hwm(),
            max_message_bytes: default_max_message_bytes(),
            max_subscriptions: default_max_subscriptions(),
            max_subscription_bytes: default_max_subscription_bytes(),
            max_total_subscriptions: default_max_total_subscriptions(),
            max_total_subscription_bytes: default_max_total_subscription_bytes(),
            max_subscriptions_per_identity: default_max_subscriptions_per_identity(),
            max_subscription_bytes_per_identity: default_max_subscription_bytes_per_identity(),
            max_connections_per_identity: default_max_connections_per_identity(),
            max_unread_subscriptions: default_max_unread_subscriptions(),
            subscriber_cooldown_ms: default_subscriber_cooldown_ms(),
            record: None,
        }
    }

    /// plantd's buses and ports, on loopback.
    pub fn defaults() -> Vec<BusConfig> {
        vec![
            BusConfig::new("state", "tcp://127.0.0.1:11000", "tcp://127.0.0.1:11001", None),
            BusConfig::new("event", "tcp://127.0.0.1:12000", "tcp://127.0.0.1:12001", None),
            BusConfig::new("metric", "tcp://127.0.0.1:13000", "tcp://127.0.0.1:13001", None),
        ]
    }

    /// Parses `NAME=FRONTEND,BACKEND[,CAPTURE]` (the `--bus` flag).
    pub fn parse_flag(flag: &str) -> Result<BusConfig, String> {
        let usage = "expected NAME=FRONTEND,BACKEND[,CAPTURE], e.g. metric=tcp://127.0.0.1:11000,tcp://127.0.0.1:11001";
        let (name, endpoints) = flag.split_once('=').ok_or_else(|| format!("--bus {flag}: {usage}"))?;
        let parts: Vec<&str> = endpoints.split(',').map(str::trim).collect();
        match parts.as_slice() {
            [f, b] if !name.is_empty() => Ok(BusConfig::new(name, f, b, None)),
            [f, b, c] if !name.is_empty() => Ok(BusConfig::new(name, f, b, Some(c))),
            _ => Err(format!("--bus {flag}: {usage}")),
        }
    }

    pub fn subscriber_cooldown(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.subscriber_cooldown_ms)
    }

    /// The in-process endpoint hub components publish to.
    pub fn inproc_frontend(&self) -> String {
        format!("inproc://bus.{}.frontend", self.name)
    }

    /// Where the hub's own views (the web view) subscribe, in process.
    pub fn inproc_tap(&self) -> String {
        format!("inproc://bus.{}.tap", self.name)
    }
}

/// Recording of a bus to JSON lines, rotated by size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    pub path: PathBuf,
    /// Rotate when the file reaches this size.
    #[serde(default = "default_record_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` is the newest).
    #[serde(default = "default_record_keep")]
    pub keep: u32,
}

fn default_record_bytes() -> u64 {
    64 << 20
}

fn default_record_keep() -> u32 {
    4
}

impl BusConfig {
    /// Checks what serde cannot (the names' uniqueness is the whole file's to check).
    pub fn validate(&self) -> Result<(), crate::Invalid> {
        let invalid = |field: &'static str, problem: &str| Err((field, problem.to_string()));
        if self.hwm < 0 {
            return invalid("bus.hwm", "must be 0 (no limit) or more");
        }
        if self.max_unread_subscriptions < 2 {
            // At 1, libzmq 4.3.4 stalls a subscriber's first subscription.
            return invalid("bus.max_unread_subscriptions", "must be at least 2");
        }
        if self.max_subscriptions_per_identity == 0
            || self.max_subscription_bytes_per_identity == 0
            || self.max_connections_per_identity == 0
        {
            return invalid(
                "bus.max_subscriptions_per_identity/max_subscription_bytes_per_identity/max_connections_per_identity",
                "must be at least 1",
            );
        }
        if self.record.as_ref().is_some_and(|r| r.max_bytes < 1024) {
            return invalid("bus.record.max_bytes", "must be at least 1024");
        }
        Ok(())
    }
}
