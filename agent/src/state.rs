//! Local buffered state: a key-value table in the agent's store that works
//! offline and is synced, write-behind, to the hub's state service under the
//! scope named after the agent.
//!
//! Conflict rule: the agent is authoritative for its own scope. Its latest
//! local write of a key is what the hub ends up with; the agent never pulls,
//! so a value changed on the hub side is overwritten when the agent next
//! writes that key. A write made while a sync is in flight is synced again.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use proto::state::{Op, Request};
use serde_json::{json, Value};
use transport::AsyncClient;

use crate::store::{Result, Store, Table};

#[derive(Clone)]
pub struct LocalState {
    values: Table,
    /// key → version of the write not yet synced.
    dirty: Table,
    version: Arc<AtomicU64>,
}

impl LocalState {
    pub fn new(store: &Store) -> LocalState {
        LocalState {
            values: store.state.clone(),
            dirty: store.state_dirty.clone(),
            version: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn get(&self, key: &str) -> Result<Value> {
        Ok(self.values.get(key)?.and_then(|v| serde_json::from_slice(&v).ok()).unwrap_or(json!("")))
    }

    pub fn set(&self, key: &str, value: &Value) -> Result<()> {
        self.values.insert(key, value.to_string().into_bytes())?;
        let version = self.version.fetch_add(1, Relaxed) + 1;
        self.dirty.insert(key, version.to_be_bytes())?;
        Ok(())
    }

    pub fn pending(&self) -> usize {
        self.dirty.len()
    }

    /// Pushes every unsynced key to the hub; stops at the first failure.
    pub async fn sync(&self, client: &mut AsyncClient, scope: &str) -> std::result::Result<usize, String> {
        let mut synced = 0;
        for entry in self.dirty.iter() {
            let (key, version) = entry.map_err(|e| e.to_string())?;
            let key_text = String::from_utf8_lossy(&key).into_owned();
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
            // Clear the flag only if no newer write came in meanwhile.
            self.dirty.remove_if(&key, &version).map_err(|e| e.to_string())?;
            synced += 1;
        }
        Ok(synced)
    }
}
