//! Every refusal, counted per identity and kind, shared by the components
//! that refuse (ZAP handler, broker, buses, ingest, state) and shown in
//! `/metrics` and `mmi.metrics`. Each identity's denials are logged at most
//! once per interval, so a hostile peer cannot flood the log.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why something was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The ZAP handler refused a connection (unknown key, or nothing this identity may do there).
    Connect,
    /// A message from a connection without an identity while CURVE is on.
    Unauthenticated,
    /// A request to a service (or an agent command) it may not call.
    Call,
    /// A READY for a service it may not provide.
    Provide,
    /// A second live registration of an agent's service.
    Duplicate,
    /// A request for a service no worker has provided, over the bounds on such names.
    Service,
    /// A request over its rate.
    Rate,
    /// A request over its in-flight limit.
    InFlight,
    /// A bus message on a topic it may not publish.
    Publish,
    /// A subscription it may not make, or one over its connection's limits.
    Subscribe,
    /// An ingest batch for another agent.
    Ingest,
    /// A state operation on a scope it may not touch, or over its quota.
    State,
    /// A fleet configuration poll for another agent.
    Fleet,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::Connect,
        Kind::Unauthenticated,
        Kind::Call,
        Kind::Provide,
        Kind::Duplicate,
        Kind::Service,
        Kind::Rate,
        Kind::InFlight,
        Kind::Publish,
        Kind::Subscribe,
        Kind::Ingest,
        Kind::State,
        Kind::Fleet,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::Unauthenticated => "unauthenticated",
            Kind::Call => "call",
            Kind::Provide => "provide",
            Kind::Duplicate => "duplicate",
            Kind::Service => "service",
            Kind::Rate => "rate",
            Kind::InFlight => "in_flight",
            Kind::Publish => "publish",
            Kind::Subscribe => "subscribe",
            Kind::Ingest => "ingest",
            Kind::State => "state",
            Kind::Fleet => "fleet",
        }
    }
}

/// Who is named for a refusal nobody could be named for.
pub const UNKNOWN: &str = "(unknown)";

#[derive(Default)]
struct State {
    counts: BTreeMap<(String, Kind), u64>,
    last_logged: HashMap<String, Instant>,
}

pub struct Denials {
    log_every: Duration,
    state: Mutex<State>,
}

impl Denials {
    pub fn new(log_every: Duration) -> Denials {
        Denials { log_every, state: Mutex::default() }
    }

    /// Counts a refusal of `identity` (which must come from the allow-list or
    /// be [`UNKNOWN`], so the map stays bounded), logging `detail` unless this
    /// identity was logged less than an interval ago.
    pub fn record(&self, identity: &str, kind: Kind, detail: impl FnOnce() -> String) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state.counts.entry((identity.to_string(), kind)).or_default() += 1;
        let due = state.last_logged.get(identity).is_none_or(|t| now.duration_since(*t) >= self.log_every);
        if due {
            state.last_logged.insert(identity.to_string(), now);
            log::warn!("denied {identity} ({}): {}", kind.name(), detail());
        }
    }

    /// Every (identity, kind, count), in order.
    pub fn snapshot(&self) -> Vec<(String, Kind, u64)> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.counts.iter().map(|((who, kind), n)| (who.clone(), *kind, *n)).collect()
    }

    /// `{"identity": {"kind": count}}`, for `mmi.metrics`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut by_identity = serde_json::Map::new();
        for (who, kind, n) in self.snapshot() {
            let entry = by_identity.entry(who).or_insert_with(|| serde_json::json!({}));
            entry[kind.name()] = n.into();
        }
        serde_json::Value::Object(by_identity)
    }

    pub fn count(&self, identity: &str, kind: Kind) -> u64 {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.counts.get(&(identity.to_string(), kind)).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_identity_and_kind() {
        let d = Denials::new(Duration::from_secs(60));
        d.record("pump-1", Kind::Call, || "x".into());
        d.record("pump-1", Kind::Call, || panic!("not logged again within the interval"));
        d.record("pump-1", Kind::Publish, || panic!("nor for another kind"));
        d.record("ops", Kind::Call, || "logged: another identity".into());
        assert_eq!(d.count("pump-1", Kind::Call), 2);
        assert_eq!(d.to_json()["pump-1"]["publish"], 1);
        assert_eq!(d.snapshot().len(), 3);
    }
}
