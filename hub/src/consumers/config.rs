//! `[consumers]` (bounds and defaults) and `[[consumer]]` (consumers that
//! exist from start) in the hub's config.

use proto::consumer::Policy;
use serde::{Deserialize, Serialize};

use crate::journal::consumers::{Origin, Spec};

/// `[consumers]`: how many durable consumers, and what clients' get.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumersConfig {
    /// Durable consumers at once (declared and made by clients together).
    pub max_consumers: usize,
    /// Consumers one identity may make (with security; without, all clients together).
    pub max_consumers_per_identity: usize,
    /// Bounds of a consumer a client makes (it may ask for less) ...
    pub max_records: u64,
    pub max_bytes: u64,
    /// ... and how long it may sit idle before it is removed.
    pub inactive_after_s: u64,
    /// Fetches served at once (a fetch may wait up to 30 s for its first sample).
    pub threads: usize,
    /// The most samples one fetch returns.
    pub max_fetch: u32,
}

impl Default for ConsumersConfig {
    fn default() -> Self {
        ConsumersConfig {
            max_consumers: 64,
            max_consumers_per_identity: 4,
            max_records: 1_000_000,
            max_bytes: 256 << 20,
            inactive_after_s: 3600,
            threads: 16,
            max_fetch: 10_000,
        }
    }
}

/// `[[consumer]]`: a durable consumer that exists from start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    pub name: String,
    /// Topic prefixes it reads (none: every durable sample).
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// At its bounds: `block` (ingest answers Retry, nothing is lost) or `drop-oldest`.
    #[serde(default)]
    pub policy: Policy,
    #[serde(default = "default_max_records")]
    pub max_records: u64,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// The identity that reads it (with security): the only one besides an
    /// operator that may fetch and acknowledge it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Idle this long, it is reported (log, metrics, `hub consumers list`) ...
    #[serde(default = "default_inactive_after_s")]
    pub inactive_after_s: u64,
    /// ... and, if set, removed.
    #[serde(default)]
    pub remove_when_inactive: bool,
}

fn default_max_records() -> u64 {
    ConsumersConfig::default().max_records
}

fn default_max_bytes() -> u64 {
    ConsumersConfig::default().max_bytes
}

fn default_inactive_after_s() -> u64 {
    24 * 3600
}

impl ConsumerConfig {
    /// Its definition in the journal.
    pub fn spec(&self) -> Spec {
        Spec {
            name: self.name.clone(),
            prefixes: self.prefixes.clone(),
            policy: self.policy,
            max_records: self.max_records,
            max_bytes: self.max_bytes,
            owner: self.identity.clone(),
            origin: Origin::Declared,
            inactive_after_ms: Some(self.inactive_after_s.saturating_mul(1000)),
            remove_when_inactive: self.remove_when_inactive,
        }
    }
}

/// Whether `name` may name a consumer: an identity's characters (letters,
/// digits, `-`, `_`, 1 to 64), and not one of the hub's own consumers' names.
pub fn check_name(name: &str) -> Result<(), String> {
    if !proto::identity::is_valid(name) {
        return Err(format!("'{name}' is not a valid consumer name ({})", proto::identity::RULE));
    }
    if name == crate::journal::BRIDGE {
        return Err(format!("'{name}' is the NATS bridge's own"));
    }
    Ok(())
}

/// Checks `[consumers]` and every `[[consumer]]`: (field, problem).
pub fn validate(limits: &ConsumersConfig, declared: &[ConsumerConfig]) -> Result<(), crate::Invalid> {
    let l = limits;
    if l.max_consumers == 0 || l.max_consumers_per_identity == 0 || l.threads == 0 || l.max_fetch == 0 {
        return Err((
            "consumers.max_consumers/max_consumers_per_identity/threads/max_fetch",
            "must be at least 1".into(),
        ));
    }
    if l.max_records == 0 || l.max_bytes == 0 || l.inactive_after_s == 0 {
        return Err(("consumers.max_records/max_bytes/inactive_after_s", "must be at least 1".into()));
    }
    if declared.len() > l.max_consumers {
        return Err((
            "consumer",
            format!("{} declared, over consumers.max_consumers ({})", declared.len(), l.max_consumers),
        ));
    }
    let mut names = std::collections::HashSet::new();
    for c in declared {
        check_name(&c.name).map_err(|problem| ("consumer.name", problem))?;
        if !names.insert(c.name.as_str()) {
            return Err(("consumer.name", format!("'{}' is declared twice", c.name)));
        }
        if c.max_records == 0 || c.max_bytes == 0 || c.inactive_after_s == 0 {
            return Err((
                "consumer.max_records/max_bytes/inactive_after_s",
                format!("(consumer '{}') must be at least 1", c.name),
            ));
        }
        if let Some(identity) = c.identity.as_deref().filter(|i| !proto::identity::is_valid(i)) {
            return Err((
                "consumer.identity",
                format!("(consumer '{}') '{identity}' is not an identity", c.name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(name: &str) -> ConsumerConfig {
        toml::from_str(&format!("name = \"{name}\"")).unwrap()
    }

    #[test]
    fn declared_consumers_default_to_block_and_report_only() {
        let c = declared("historian");
        let spec = c.spec();
        assert_eq!(
            (spec.policy, spec.origin, spec.remove_when_inactive),
            (Policy::Block, Origin::Declared, false)
        );
        assert_eq!(spec.inactive_after_ms, Some(86_400_000));
    }

    #[test]
    fn names_are_checked() {
        let limits = ConsumersConfig::default();
        assert!(validate(&limits, &[declared("historian")]).is_ok());
        assert_eq!(validate(&limits, &[declared("bridge")]).unwrap_err().0, "consumer.name");
        assert_eq!(validate(&limits, &[declared("a.b")]).unwrap_err().0, "consumer.name");
        assert!(validate(&limits, &[declared("h"), declared("h")]).unwrap_err().1.contains("twice"));
        let one = ConsumersConfig { max_consumers: 1, ..limits };
        assert_eq!(validate(&one, &[declared("a"), declared("b")]).unwrap_err().0, "consumer");
    }
}
