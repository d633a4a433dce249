//! The ingest service's configuration (`[ingest]`).

use serde::{Deserialize, Serialize};

/// The ingest service (`org.plantd.Ingest`): agents' durable samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    pub enabled: bool,
    /// The bus accepted samples are published on.
    pub bus: String,
    /// The bus agents' alarm events are published on
    /// (`org.plantd.Event.alarm.<agent>.<channel>`). Default: the bus named
    /// "event" where there is one, else `bus`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_bus: Option<String>,
    /// Accept a batch only when a subscriber on the bus covers at least one
    /// of its samples' topics, so nothing is published into the void while
    /// nobody listens; until then agents keep buffering. (One watched channel
    /// is enough: holding an agent's whole queue back for one unwatched
    /// channel would fill its outbox.)
    pub require_subscriber: bool,
    /// Worker threads: batches of different agents are handled at once. Each
    /// holds its batch until the watermarks are flushed, so the workers
    /// bound the batches a second (4: about 6 000 agents sending every second).
    pub workers: usize,
    /// Boot epochs whose watermarks are kept per agent (the least recently
    /// used are retired): bounds the store as agents reboot.
    pub epochs_kept: usize,
    /// Agents the hub keeps watermarks for; batches of further ones are refused.
    pub max_agents: usize,
    /// Bytes of the journal's newest entries also kept in memory: the
    /// bridge, pipelines and durable consumers that keep up take them from
    /// there, and read the store only once they fall further behind. 0: always the store.
    pub journal_memory_bytes: usize,
    /// Batches of one agent taken in flight at once (agents learn it from
    /// every reply): a replaying agent sends the next batch while the hub
    /// stores the last. 1: one at a time, as agents before it send.
    pub max_in_flight: u32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            enabled: true,
            bus: "metric".into(),
            event_bus: None,
            require_subscriber: true,
            workers: 4,
            epochs_kept: 64,
            max_agents: 10_000,
            journal_memory_bytes: crate::journal::MEMORY_BYTES,
            max_in_flight: 4,
        }
    }
}

impl IngestConfig {
    /// Checks what serde cannot; `buses` are the configured buses' names.
    pub fn validate(&self, buses: &[&str]) -> Result<(), crate::Invalid> {
        if !self.enabled {
            return Ok(());
        }
        if self.workers == 0 {
            return Err(("ingest.workers", "must be at least 1".into()));
        }
        if self.max_in_flight == 0 {
            return Err(("ingest.max_in_flight", "must be at least 1 (one batch at a time)".into()));
        }
        if !buses.contains(&self.bus.as_str()) {
            return Err(("ingest.bus", format!("names no configured bus ('{}')", self.bus)));
        }
        if let Some(bus) = self.event_bus.as_deref().filter(|b| !buses.contains(b)) {
            return Err(("ingest.event_bus", format!("names no configured bus ('{bus}')")));
        }
        Ok(())
    }

    /// The bus alarm events go on, of `buses` (the configured ones' names).
    pub fn event_bus<'a>(&'a self, buses: &[&'a str]) -> &'a str {
        match &self.event_bus {
            Some(bus) => bus,
            None if buses.contains(&"event") => "event",
            None => &self.bus,
        }
    }
}
