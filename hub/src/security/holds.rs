//! Identities held off a socket for a while: the ZAP handler refuses their
//! new connections there until the time is up.
//!
//! A component holds an identity off after closing one of its connections
//! for going over a bound. Without this, the peer's socket would reconnect
//! at once and send the same again, and libzmq (before 4.3.5) applies a
//! subscriber's subscriptions before the proxy can refuse them: a flood of
//! reconnecting subscribers would cost the hub far more than their bounds.
//! Refused at the handshake, a connection costs a CURVE handshake and
//! nothing else.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Default)]
pub struct HoldOffs {
    /// (identity, ZAP domain) → until when. Bounded: identities come from the
    /// allow-list, domains from the hub's own sockets.
    until: Mutex<HashMap<(String, String), Instant>>,
}

impl HoldOffs {
    /// Refuses `identity`'s new connections to the socket of `domain` until `until`.
    pub fn hold_off(&self, identity: &str, domain: &str, until: Instant) {
        let mut held = self.until.lock().unwrap_or_else(|e| e.into_inner());
        let entry = held.entry((identity.to_string(), domain.to_string())).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Whether `identity` is held off `domain` now (forgets holds that ended).
    pub fn is_held_off(&self, identity: &str, domain: &str, now: Instant) -> bool {
        let mut held = self.until.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_empty() {
            return false;
        }
        held.retain(|_, until| *until > now);
        held.contains_key(&(identity.to_string(), domain.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn holds_one_identity_off_one_socket_until_the_time_is_up() {
        let holds = HoldOffs::default();
        let now = Instant::now();
        holds.hold_off("grafana", "plantd.bus.backend.metric", now + Duration::from_secs(10));
        holds.hold_off("grafana", "plantd.bus.backend.metric", now + Duration::from_secs(1));
        assert!(holds.is_held_off("grafana", "plantd.bus.backend.metric", now));
        assert!(!holds.is_held_off("grafana", "plantd.bus.backend.event", now), "another socket");
        assert!(!holds.is_held_off("scada", "plantd.bus.backend.metric", now), "another identity");
        let later = now + Duration::from_secs(5);
        assert!(holds.is_held_off("grafana", "plantd.bus.backend.metric", later), "the longer hold wins");
        let after = now + Duration::from_secs(10);
        assert!(!holds.is_held_off("grafana", "plantd.bus.backend.metric", after));
        assert!(holds.until.lock().unwrap().is_empty(), "ended holds are forgotten");
    }
}
