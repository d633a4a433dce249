//! The hub's stores as an operator sees them, in one place: the damage each
//! was found with at start (set aside and salvaged, so the hub runs
//! degraded), whether it writes now, and how often it was opened again
//! after a storage failure. `/readyz`, `/metrics`, `hub agents` (through
//! `org.plantd.Hub stores`) and the web view all read it from here.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::metrics::Families;

/// One store's health now: why it does not write (`None`: it does), and
/// the times it was opened again after a failure.
pub type Live = Arc<dyn Fn() -> (Option<String>, u64) + Send + Sync>;

struct Entry {
    name: String,
    recovery: Option<stores::Recovery>,
    live: Option<Live>,
}

/// Every store of this hub; cloned handles share it.
#[derive(Clone, Default)]
pub struct Storage {
    stores: Arc<Mutex<Vec<Entry>>>,
}

impl Storage {
    /// Adds a store, with what was found when it was opened and, for a
    /// store that heals after a failure, how to ask its health.
    pub fn add(&self, name: &str, recovery: Option<&stores::Recovery>, live: Option<Live>) {
        if let Some(recovery) = recovery {
            log::error!(
                "{name} store: {} (the hub runs on; see the README's \"Storage faults\")",
                recovery.describe()
            );
        }
        let entry = Entry { name: name.into(), recovery: recovery.cloned(), live };
        self.lock().push(entry);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.stores.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores found damaged at start: (store, what happened).
    pub fn recovered(&self) -> Vec<(String, String)> {
        self.lock().iter().filter_map(|e| Some((e.name.clone(), e.recovery.as_ref()?.describe()))).collect()
    }

    /// Stores that cannot write now: (store, why).
    pub fn failing(&self) -> Vec<(String, String)> {
        let stores = self.lock();
        let why = |e: &Entry| Some((e.name.clone(), e.live.as_ref()?().0?));
        stores.iter().filter_map(why).collect()
    }

    /// Each store: `store`, `ok` (writes now), `error` (why not),
    /// `recovered` (the damage found at start, or null), `reopens`.
    pub fn report(&self) -> Value {
        let stores = self.lock();
        let rows = stores.iter().map(|e| {
            let (error, reopens) = e.live.as_ref().map_or((None, 0), |live| live());
            json!({
                "store": e.name,
                "ok": error.is_none(),
                "error": error,
                "recovered": e.recovery.as_ref().map(stores::Recovery::describe),
                "reopens": reopens,
            })
        });
        Value::Array(rows.collect())
    }

    /// The stores' metrics: damage found at start, per store.
    pub fn collect(&self, out: &mut Families) {
        for entry in self.lock().iter() {
            let Some(recovery) = &entry.recovery else { continue };
            let labels = || vec![("store", entry.name.clone())];
            out.gauge("store_recovered", "1: found damaged at start, set aside and salvaged.", labels(), 1);
            let salvaged = "Entries salvaged from the damaged store into the fresh one.";
            out.gauge("store_salvaged_entries", salvaged, labels(), recovery.salvaged_total());
        }
    }
}

/// What `hub agents` prints under its table about the hub's own stores:
/// one line for each that is failing or was found damaged, nothing if none.
pub fn summary(report: &Value) -> String {
    let mut out = String::new();
    for store in report.as_array().map(Vec::as_slice).unwrap_or_default() {
        let name = store["store"].as_str().unwrap_or("?");
        if let Some(error) = store["error"].as_str() {
            out += &format!("hub store '{name}' is failing: {error}\n");
        }
        if let Some(recovered) = store["recovered"].as_str() {
            out += &format!("hub store '{name}' was found damaged at start: {recovered}\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_says_which_store_fails_and_which_was_damaged() {
        let storage = Storage::default();
        let failing: Live = Arc::new(|| (Some("No space left on device".into()), 2));
        storage.add("state", None, Some(failing));
        storage.add("ingest", None, Some(Arc::new(|| (None, 0))));
        let report = storage.report();
        assert_eq!(
            report[0],
            json!({"store": "state", "ok": false, "error": "No space left on device", "recovered": null, "reopens": 2})
        );
        assert_eq!(report[1]["ok"], true);
        assert_eq!(summary(&report), "hub store 'state' is failing: No space left on device\n");
        assert!(storage.recovered().is_empty());
        assert_eq!(summary(&json!([])), "");
    }
}
