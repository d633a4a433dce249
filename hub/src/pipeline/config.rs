//! `[[pipeline]]` in the hub's config: where a pipeline's messages come
//! from, the transform, the recorder, and the bounds.

use std::path::PathBuf;
use std::time::Duration;

use proto::pipeline::rotation::Policy;
use proto::pipeline::transform::Rules;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Names it in status, metrics and the dead-letter store (letters, digits, '-', '_').
    pub name: String,
    /// Take ingest's durable samples (after dedupe), through the ingest
    /// journal: nothing accepted is lost, and a slow pipeline makes ingest
    /// answer Retry (the agents keep buffering).
    #[serde(default)]
    pub ingest: bool,
    /// Which of those: bus topic prefixes.
    #[serde(default = "default_ingest_topics")]
    pub ingest_topics: Vec<String>,
    /// Also take messages from buses (best effort: PUB/SUB drops, uncounted,
    /// when the pipeline falls behind).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bus: Vec<BusSource>,
    /// Parallel workers of the transform stage.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Messages each stage takes before it acknowledges any: the bound on every queue.
    #[serde(default = "default_window")]
    pub window: u32,
    /// Handler attempts per message before it is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Backoff between attempts: doubling from min to max.
    #[serde(default = "default_retry_min_ms")]
    pub retry_min_ms: u64,
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Ingest's journal entries waiting for this pipeline, at most: past
    /// them ingest answers Retry.
    #[serde(default = "default_max_backlog_records")]
    pub max_backlog_records: u64,
    #[serde(default = "default_max_backlog_bytes")]
    pub max_backlog_bytes: u64,
    /// Dead letters this pipeline keeps, at most: when full, failing
    /// messages wait (and the pipeline with them) instead of being dropped.
    #[serde(default = "default_dlq_max_records")]
    pub dlq_max_records: u64,
    /// Filter, convert units, rename (absent: no transform stage).
    #[serde(default, skip_serializing_if = "Rules::is_empty")]
    pub transform: Rules,
    /// The JSON-lines recorder, the pipeline's sink.
    pub record: RecordSink,
}

/// One bus a pipeline takes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSource {
    /// A configured bus's name.
    pub name: String,
    /// Topic prefixes to take (empty: everything).
    #[serde(default)]
    pub prefixes: Vec<String>,
}

/// `[pipeline.record]`: one JSON message per line, rotated by size and
/// time: `path` is current, `path.1` the newest rotated file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSink {
    pub path: PathBuf,
    #[serde(default = "default_record_bytes")]
    pub max_bytes: u64,
    /// Rotate a non-empty file this many seconds after it was opened (0: only by size).
    #[serde(default)]
    pub rotate_s: u64,
    /// Rotated files kept, at most.
    #[serde(default = "default_keep")]
    pub keep: u32,
    /// Rotated files older than this many seconds are removed (0: kept by count only).
    #[serde(default)]
    pub retain_s: u64,
}

impl RecordSink {
    pub fn policy(&self) -> Policy {
        let seconds = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        Policy {
            max_bytes: self.max_bytes,
            max_age: seconds(self.rotate_s),
            keep: self.keep,
            retain: seconds(self.retain_s),
        }
    }
}

fn default_ingest_topics() -> Vec<String> {
    vec![proto::sample::TOPIC_PREFIX.into()]
}
fn default_workers() -> usize {
    2
}
fn default_window() -> u32 {
    64
}
fn default_max_attempts() -> u32 {
    3
}
fn default_retry_min_ms() -> u64 {
    100
}
fn default_retry_max_ms() -> u64 {
    5000
}
fn default_max_backlog_records() -> u64 {
    100_000
}
fn default_max_backlog_bytes() -> u64 {
    64 << 20
}
fn default_dlq_max_records() -> u64 {
    100_000
}
fn default_record_bytes() -> u64 {
    64 << 20
}
fn default_keep() -> u32 {
    8
}

impl PipelineConfig {
    /// Checks what serde cannot: (field, problem). `buses` are the configured bus names.
    pub fn validate(&self, buses: &[&str], ingest_enabled: bool) -> Result<(), crate::Invalid> {
        let fail = |field: &'static str, problem: &str| Err((field, problem.to_string()));
        if !proto::identity::is_valid(&self.name) {
            return Err(("pipeline.name", format!("'{}' must be {}", self.name, proto::identity::RULE)));
        }
        if !self.ingest && self.bus.is_empty() {
            return fail("pipeline.ingest", "a pipeline needs a source: ingest = true, or [[pipeline.bus]]");
        }
        if self.ingest && !ingest_enabled {
            return fail("pipeline.ingest", "takes ingest's samples: needs [ingest] enabled");
        }
        if self.ingest && self.ingest_topics.is_empty() {
            return fail("pipeline.ingest_topics", "name at least one prefix, e.g. \"org.plantd.Metric.\"");
        }
        if let Some(b) = self.bus.iter().find(|b| !buses.contains(&b.name.as_str())) {
            return Err(("pipeline.bus.name", format!("names no configured bus ('{}')", b.name)));
        }
        if self.workers == 0 || self.workers > 64 {
            return fail("pipeline.workers", "must be 1 to 64");
        }
        if self.window == 0 || self.window > 100_000 {
            return fail("pipeline.window", "must be 1 to 100000");
        }
        if self.max_attempts == 0 {
            return fail("pipeline.max_attempts", "must be at least 1");
        }
        if self.retry_min_ms == 0 || self.retry_max_ms < self.retry_min_ms {
            return fail(
                "pipeline.retry_min_ms",
                "must be at least 1, and retry_max_ms at least retry_min_ms",
            );
        }
        if self.max_backlog_records == 0 || self.max_backlog_bytes < 1 << 20 {
            return fail("pipeline.max_backlog_bytes", "at least 1 record and 1 MiB");
        }
        if self.dlq_max_records == 0 {
            return fail("pipeline.dlq_max_records", "must be at least 1");
        }
        if self.record.max_bytes < 1024 {
            return fail("pipeline.record.max_bytes", "must be at least 1024");
        }
        if self.record.path.as_os_str().is_empty() {
            return fail("pipeline.record.path", "must name a file");
        }
        self.transform.validate()
    }

    /// The journal consumer this pipeline reads as.
    pub fn consumer(&self) -> String {
        format!("pipeline.{}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> PipelineConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_and_validation_name_the_field() {
        let p = parse("name = \"archive\"\ningest = true\n[record]\npath = \"/tmp/a.jsonl\"\n");
        assert_eq!((p.workers, p.window, p.max_attempts), (2, 64, 3));
        assert!(p.validate(&["metric"], true).is_ok());
        assert_eq!(p.validate(&["metric"], false).unwrap_err().0, "pipeline.ingest");
        let bad = PipelineConfig { window: 0, ..p.clone() };
        assert_eq!(bad.validate(&[], true).unwrap_err().0, "pipeline.window");
        let bad = PipelineConfig { name: "a b".into(), ..p.clone() };
        assert_eq!(bad.validate(&[], true).unwrap_err().0, "pipeline.name");
        let bus = parse("name = \"x\"\n[[bus]]\nname = \"nope\"\n[record]\npath = \"a\"\n");
        assert_eq!(bus.validate(&["metric"], true).unwrap_err().0, "pipeline.bus.name");
        let t = parse("name = \"x\"\ningest = true\n[[transform.convert]]\nfrom = \"a\"\nto = \"b\"\n[record]\npath = \"a\"\n");
        assert_eq!(t.validate(&[], true).unwrap_err().0, "pipeline.transform.convert");
    }
}
