//! The journal's consumers as an operator and the consumer services see
//! them: made, removed, reset, shown, listed, swept when idle, measured.

use std::time::Instant;

use proto::consumer::ResetTo;

use super::consumers::{Consumer, Origin, Spec};
use super::*;

impl Journal {
    /// Adds a durable consumer, past the newest entry, unless `max` durable
    /// consumers exist or its owner has `max_per_owner` of the ones clients made.
    pub fn create(
        &self,
        spec: Spec,
        max: usize,
        max_per_owner: usize,
    ) -> Result<serde_json::Value, ConsumerError> {
        let _trimming = self.trim.lock().unwrap_or_else(|e| e.into_inner());
        let mut consumers = self.consumers_mut();
        if consumers.contains_key(&spec.name) {
            return Err(ConsumerError::Exists(spec.name));
        }
        let durable = consumers.values().filter(|c| c.spec.origin != Origin::Hub).count();
        if durable >= max {
            return Err(ConsumerError::Refused(format!(
                "the hub has {max} durable consumers, its max_consumers"
            )));
        }
        let mine = consumers.values().filter(|c| c.spec.origin == Origin::Made && c.spec.owner == spec.owner);
        if spec.origin == Origin::Made && mine.count() >= max_per_owner {
            return Err(ConsumerError::Refused(format!(
                "{} has made {max_per_owner} consumers, its max_consumers_per_identity: remove one first",
                spec.owner.as_deref().unwrap_or("this client")
            )));
        }
        let tail = self.tail();
        let cursor = tail.next - 1;
        let meta = &self.disk()?.meta;
        meta.insert(spec_key(&spec.name), serde_json::to_vec(&spec).expect("a spec is JSON"))?;
        meta.insert(cursor_key(&spec.name), &cursor.to_be_bytes())?;
        let consumer = Consumer::new(spec, cursor, tail.cum, Instant::now());
        let shown = consumer.to_json(cursor, tail.cum, Instant::now());
        consumers.insert(consumer.spec.name.clone(), consumer);
        Ok(shown)
    }

    /// Removes a durable consumer (the hub's own are not removed this way).
    pub fn delete(&self, name: &str) -> Result<(), ConsumerError> {
        {
            let mut consumers = self.consumers_mut();
            match consumers.get(name) {
                None => return Err(ConsumerError::Unknown(name.into())),
                Some(c) if c.spec.origin == Origin::Hub => {
                    return Err(ConsumerError::Refused(format!(
                        "'{name}' is the hub's own (the bridge or a pipeline): change the hub's config"
                    )))
                }
                Some(_) => {}
            }
            consumers.remove(name);
            let meta = &self.disk()?.meta;
            meta.remove(spec_key(name))?;
            meta.remove(cursor_key(name))?;
        }
        self.trim()?;
        Ok(())
    }

    /// Moves a consumer's cursor to the oldest entry held, or past the newest.
    pub fn reset(&self, name: &str, to: ResetTo) -> Result<serde_json::Value, ConsumerError> {
        let oldest = self.disk()?.entries.first()?.map(|(k, _)| k.saturating_sub(1));
        {
            let _trimming = self.trim.lock().unwrap_or_else(|e| e.into_inner());
            let mut consumers = self.consumers_mut();
            let c = consumers.get_mut(name).ok_or_else(|| ConsumerError::Unknown(name.into()))?;
            let newest = self.newest();
            let cursor = match to {
                ResetTo::Start => oldest.unwrap_or(newest).min(c.cursor),
                ResetTo::End => newest,
            };
            self.disk()?.meta.insert(cursor_key(name), &cursor.to_be_bytes())?;
            c.cursor = cursor;
            c.cursor_cum = self.cum_through(cursor)?;
        }
        self.trim()?;
        self.show(name).ok_or_else(|| ConsumerError::Unknown(name.into()))
    }

    /// A consumer's definition, if it exists.
    pub fn spec_of(&self, name: &str) -> Option<Spec> {
        self.consumers().get(name).map(|c| c.spec.clone())
    }

    /// A consumer, as `hub consumers show` prints it.
    pub fn show(&self, name: &str) -> Option<serde_json::Value> {
        let tail = self.tail();
        self.consumers().get(name).map(|c| c.to_json(tail.next - 1, tail.cum, Instant::now()))
    }

    /// Every consumer, by name.
    pub fn list(&self) -> Vec<serde_json::Value> {
        let tail = self.tail();
        let now = Instant::now();
        self.consumers().values().map(|c| c.to_json(tail.next - 1, tail.cum, now)).collect()
    }

    /// Whether a durable consumer reads `topic` (for ingest's gate: a
    /// consumer of the topic is there to hear it).
    pub fn covers(&self, topic: &str) -> bool {
        self.consumers().values().any(|c| c.spec.origin != Origin::Hub && c.spec.covers(topic))
    }

    /// Reports consumers idle past their bound (once each), and removes
    /// those whose policy says so. Returns (name, removed) of each reported.
    pub fn sweep_inactive(&self, now: Instant) -> Vec<(String, bool)> {
        let mut reported = Vec::new();
        for c in self.consumers_mut().values_mut() {
            if !c.inactive && c.idle_past(now) {
                c.inactive = true;
                reported.push((c.spec.name.clone(), c.spec.remove_when_inactive));
            }
        }
        for (name, remove) in &reported {
            if *remove {
                if let Err(e) = self.delete(name) {
                    log::warn!("journal: removing inactive consumer '{name}': {e}");
                }
            }
        }
        reported
    }

    /// Each consumer's backlog, bounds, skips and deliveries, for `/metrics`.
    pub fn collect(&self, out: &mut crate::metrics::Families) {
        let tail = self.tail();
        let consumers = self.consumers();
        out.gauge(
            "consumers",
            "Durable consumers of ingest's journal.",
            vec![],
            consumers.values().filter(|c| c.spec.origin != Origin::Hub).count() as u64,
        );
        for c in consumers.values() {
            let labels = || vec![("consumer", c.spec.name.clone())];
            let (records, bytes) = c.backlog(tail.next - 1, tail.cum);
            out.gauge("consumer_backlog_records", "Samples waiting for a consumer.", labels(), records);
            out.gauge("consumer_backlog_bytes", "Bytes waiting for a consumer.", labels(), bytes);
            out.gauge(
                "consumer_max_records",
                "A consumer's bound, in samples.",
                labels(),
                c.spec.max_records,
            );
            out.gauge("consumer_max_bytes", "A consumer's bound, in bytes.", labels(), c.spec.max_bytes);
            out.gauge("consumer_cursor", "The last position a consumer acknowledged.", labels(), c.cursor);
            out.gauge(
                "consumer_inactive",
                "1 while a consumer is idle past its bound.",
                labels(),
                c.inactive.into(),
            );
            out.counter(
                "consumer_skipped",
                "Samples a drop-oldest consumer skipped at its bounds.",
                labels(),
                c.skipped,
            );
            out.counter("consumer_delivered", "Samples fetched by a consumer.", labels(), c.delivered);
        }
        drop(consumers);
        let Ok(disk) = self.disk() else { return };
        let (entries, bytes) = disk.entries.in_memory();
        let help = "The journal's newest entries held in memory for readers that keep up.";
        out.gauge("journal_memory_entries", help, vec![], entries as u64);
        out.gauge("journal_memory_bytes", "Bytes of them.", vec![], bytes as u64);
        let max = self.memory_bytes.load(std::sync::atomic::Ordering::Relaxed) as u64;
        out.gauge(
            "journal_memory_max_bytes",
            "Bytes of them, at most (ingest.journal_memory_bytes).",
            vec![],
            max,
        );
        let reads = "Reads of the journal, by where they were served from.";
        let from = |place: &str| vec![("from", place.to_string())];
        out.counter("journal_reads", reads, from("memory"), disk.entries.reads_recent.load(Relaxed));
        out.counter("journal_reads", reads, from("store"), disk.entries.reads_stored.load(Relaxed));
    }
}
