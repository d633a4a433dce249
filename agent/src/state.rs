//! Local buffered state: a key-value table in the agent's store that works
//! offline and is synced, write-behind, to the hub's state service under the
//! scope named after the agent.
//!
//! Conflict rule: the agent is authoritative for its own scope. Its latest
//! local write of a key is what the hub ends up with; the agent never pulls,
//! so a value changed on the hub side is overwritten when the agent next
//! writes that key. A write made while a sync is in flight is synced again.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use proto::state::{Op, Request};
use serde_json::{json, Value};
use transport::AsyncClient;

use crate::config::LocalStateConfig;
use crate::store::{Result, Store, Table};

#[derive(Clone)]
pub struct LocalState {
    values: Table,
    /// key → version of the write not yet synced.
    dirty: Table,
    version: Arc<AtomicU64>,
    limits: LocalStateConfig,
    /// Keys and value bytes held, checked against `limits` under this lock
    /// (which also makes each write's check-then-write atomic).
    held: Arc<Mutex<(usize, usize)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("{0} (see [local_state] in the config)")]
    Full(String),
}

impl LocalState {
    pub fn new(store: &Store, limits: LocalStateConfig) -> Result<LocalState> {
        let (mut keys, mut bytes) = (0, 0);
        for (_, value) in store.state.entries()? {
            keys += 1;
            bytes += value.len();
        }
        // Versions of unsynced writes are persisted: new ones must count on
        // from the highest, or a write after a restart could get the version
        // a sync in flight holds, and that sync would clear its flag.
        let mut highest = 0;
        for (_, version) in store.state_dirty.entries()? {
            highest = highest.max(version_of(&version));
        }
        Ok(LocalState {
            values: store.state.clone(),
            dirty: store.state_dirty.clone(),
            version: Arc::new(AtomicU64::new(highest)),
            limits,
            held: Arc::new(Mutex::new((keys, bytes))),
        })
    }

    pub fn get(&self, key: &str) -> Result<Value> {
        Ok(self.values.get(key)?.and_then(|v| serde_json::from_slice(&v).ok()).unwrap_or(json!("")))
    }

    /// Sets `key`, within the bounds: local state never fills the disk under the outbox.
    pub fn set(&self, key: &str, value: &Value) -> std::result::Result<(), SetError> {
        let text = value.to_string();
        let l = &self.limits;
        if text.len() > l.max_value_bytes {
            return Err(SetError::Full(format!(
                "a value of {} bytes is over max_value_bytes {}",
                text.len(),
                l.max_value_bytes
            )));
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.values.get(key)?;
        let (keys, bytes) =
            (held.0 + usize::from(old.is_none()), held.1 - old.as_ref().map_or(0, |o| o.len()) + text.len());
        if keys > l.max_keys {
            return Err(SetError::Full(format!("the local state holds {} keys, max_keys", l.max_keys)));
        }
        if bytes > l.max_bytes {
            return Err(SetError::Full(format!(
                "the local state would hold more than max_bytes {}",
                l.max_bytes
            )));
        }
        self.values.insert(key, text.into_bytes())?;
        *held = (keys, bytes);
        let version = self.version.fetch_add(1, Relaxed) + 1;
        self.dirty.insert(key, version.to_be_bytes())?;
        Ok(())
    }

    pub fn pending(&self) -> usize {
        self.dirty.len()
    }

    /// The unsynced keys and the version of their latest write.
    pub fn unsynced(&self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for (key, version) in self.dirty.entries()? {
            out.push((String::from_utf8_lossy(&key).into_owned(), version_of(&version)));
        }
        Ok(out)
    }

    /// `key` as of write `version` reached the hub: clears its flag, unless a
    /// newer write came in meanwhile (that one is synced next time).
    pub fn synced(&self, key: &str, version: u64) -> Result<bool> {
        self.dirty.remove_if(key, version.to_be_bytes())
    }

    /// Pushes every unsynced key to the hub; stops at the first failure.
    pub async fn sync(&self, client: &mut AsyncClient, scope: &str) -> std::result::Result<usize, String> {
        let mut synced = 0;
        for (key_text, version) in self.unsynced().map_err(|e| e.to_string())? {
            let value = self.get(&key_text).map_err(|e| e.to_string())?;
            let [op, request] = Request::set(scope, &key_text, value).frames(Op::Set);
            let reply =
                client.request(proto::state::SERVICE, &[&op, &request]).await.map_err(|e| e.to_string())?;
            let ok = reply
                .first()
                .and_then(|f| serde_json::from_slice::<Value>(f).ok())
                .is_some_and(|v| proto::state::succeeded(&v));
            if !ok {
                return Err(format!("the hub's state service refused key {key_text}"));
            }
            self.synced(&key_text, version).map_err(|e| e.to_string())?;
            synced += 1;
        }
        Ok(synced)
    }
}

fn version_of(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_state_stays_within_its_bounds_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let limits = LocalStateConfig { max_keys: 2, max_value_bytes: 8, max_bytes: 13 };
        {
            let store = Store::open(&dir.path().join("store"), 1 << 20).unwrap();
            let state = LocalState::new(&store, limits).unwrap();
            assert!(matches!(state.set("a", &json!("123456789")), Err(SetError::Full(_))), "value too big");
            state.set("a", &json!("12345")).unwrap();
            state.set("a", &json!("1234")).unwrap();
            state.set("b", &json!("12345")).unwrap();
            assert!(
                matches!(state.set("b", &json!("123456")), Err(SetError::Full(_))),
                "14 bytes of JSON text in all"
            );
            assert!(matches!(state.set("c", &json!(1)), Err(SetError::Full(_))), "a third key");
            store.flush().unwrap();
        }
        let store = Store::open(&dir.path().join("store"), 1 << 20).unwrap();
        let state = LocalState::new(&store, limits).unwrap();
        assert!(matches!(state.set("c", &json!(1)), Err(SetError::Full(_))), "counted again after a restart");
        assert_eq!(state.get("a").unwrap(), json!("1234"));
    }

    #[test]
    fn a_write_after_a_restart_is_not_cleared_by_a_sync_of_an_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let limits = LocalStateConfig::default();
        {
            let store = Store::open(&path, 1 << 20).unwrap();
            let state = LocalState::new(&store, limits).unwrap();
            state.set("mode", &json!("auto")).unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(&path, 1 << 20).unwrap();
        let state = LocalState::new(&store, limits).unwrap();
        // A sync picks up the write from before the restart...
        let in_flight = state.unsynced().unwrap();
        assert_eq!(in_flight.len(), 1);
        // ...a new write of the same key comes in while it is on the wire...
        state.set("mode", &json!("manual")).unwrap();
        // ...and the hub's answer to the old one must not clear the new one.
        let (key, version) = &in_flight[0];
        assert!(!state.synced(key, *version).unwrap());
        assert_eq!(state.pending(), 1, "the newer write is still to be synced");
        let (_, newer) = state.unsynced().unwrap()[0].clone();
        assert!(newer > *version);
        assert!(state.synced("mode", newer).unwrap());
        assert_eq!(state.pending(), 0);
    }
}
