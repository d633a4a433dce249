//! The state service's configuration (`[state]`).

use serde::{Deserialize, Serialize};

/// The state service (`org.plantd.State`), a worker inside the hub.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    pub enabled: bool,
    /// Worker threads serving requests (sled is safe to share between them).
    pub workers: usize,
    /// Requests each worker holds at once (its MDP credit): it applies all
    /// that are waiting and commits them with one flush. 1 is a stock worker.
    pub credit: u32,
    /// Durability window: acknowledged writes reach disk within this many
    /// milliseconds. 0 flushes every write before it is acknowledged.
    pub flush_interval_ms: u64,
    /// sled's page cache, in bytes (its RSS runs well above this).
    pub cache_bytes: u64,
    /// The bus that carries change events.
    pub bus: String,
    /// Bounds on what clients may store (values, keys and bytes per scope,
    /// scopes) and on the replies (`[state.limits]`).
    pub limits: crate::state::store::Limits,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            enabled: true,
            workers: 2,
            credit: 64,
            flush_interval_ms: 100,
            cache_bytes: 16 << 20,
            bus: "state".into(),
            limits: crate::state::store::Limits::default(),
        }
    }
}

impl StateConfig {
    /// Checks what serde cannot; `buses` are the configured buses' names.
    pub fn validate(&self, buses: &[&str]) -> Result<(), crate::Invalid> {
        if !self.enabled {
            return Ok(());
        }
        if self.workers == 0 {
            return Err(("state.workers", "must be at least 1".into()));
        }
        if !(1..=proto::mdp::MAX_BROKER_CREDIT).contains(&self.credit) {
            return Err(("state.credit", format!("must be 1 to {}", proto::mdp::MAX_BROKER_CREDIT)));
        }
        if !buses.contains(&self.bus.as_str()) {
            return Err(("state.bus", format!("names no configured bus ('{}')", self.bus)));
        }
        self.limits.check()
    }
}
