//! Pipelines in the hub (`[[pipeline]]`): ingest's durable samples and/or
//! bus messages → a transform stage (N workers) → a JSON-lines recorder,
//! over `transport::pipeline`'s credit protocol on in-process endpoints
//! (nothing is bound on TCP, so nothing is exposed, with or without security).
//!
//! Each pipeline runs on its own threads: a source ([`source`]), the
//! transform (when it has rules) and the recorder. A message is
//! acknowledged back to the source only once the recorder has written it, a
//! filter dropped it, or it is in the dead-letter store ([`dlq`]); only then
//! does the pipeline's journal cursor move past it. At-least-once: after a
//! crash the source resends from its cursor, so a line can be written twice;
//! every sample carries (agent, epoch, seq) to drop repeats by.

pub mod config;
pub mod dlq;
pub mod recorder;
pub mod source;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use transport::pipeline::stage::{self, DeadLetter, StageOptions, StageStats, Wiring};
use transport::pipeline::HopOptions;
use transport::ShutdownWatch;

pub use self::config::PipelineConfig;
use self::dlq::{Dlq, Letter};
use self::recorder::Recorder;
use self::source::{Feed, SourceStats};
use crate::journal::consumers::Spec;
use crate::journal::{self, ExportConfig};
use crate::metrics::Families;

/// What ingest must keep for the pipelines fed by it: their journal cursors and gate prefixes.
pub fn export_config(pipelines: &[PipelineConfig]) -> Option<ExportConfig> {
    let fed: Vec<&PipelineConfig> = pipelines.iter().filter(|p| p.ingest).collect();
    fed.iter()
        .map(|p| ExportConfig {
            prefixes: p.ingest_topics.clone(),
            consumers: vec![Spec::hub(&p.consumer(), p.max_backlog_records, p.max_backlog_bytes)],
        })
        .reduce(ExportConfig::join)
}

/// One pipeline's counters, for status and metrics.
pub struct PipelineStats {
    pub name: String,
    pub window: u32,
    /// Its bounds beyond the window: journal entries and bytes waiting (when fed by ingest), dead letters.
    pub max_backlog: Option<(u64, u64)>,
    pub dlq_max_records: u64,
    pub source: SourceStats,
    /// (stage name, workers, counters), in order.
    pub stages: Vec<(&'static str, usize, StageStats)>,
}

/// Everything a pipeline's threads need.
pub struct Pipeline {
    pub config: PipelineConfig,
    pub stats: Arc<PipelineStats>,
    feed: Feed,
}

/// A thread of a pipeline: its name and its body.
pub type Part = (String, Box<dyn FnOnce(&ShutdownWatch) -> Result<(), String> + Send>);

impl Pipeline {
    /// `journal`: ingest's, when this pipeline is fed by it. `taps`: (bus name, in-process tap).
    pub fn new(
        config: &PipelineConfig,
        journal: Option<Arc<journal::Journal>>,
        taps: &[(String, String)],
        dlq: Arc<Dlq>,
    ) -> Pipeline {
        let mut stages = Vec::new();
        if !config.transform.is_empty() {
            stages.push(("transform", config.workers, StageStats::default()));
        }
        stages.push(("record", 1, StageStats::default()));
        let buses = config
            .bus
            .iter()
            .filter_map(|b| {
                taps.iter()
                    .find(|(name, _)| name == &b.name)
                    .map(|(_, tap)| (tap.clone(), b.prefixes.clone()))
            })
            .collect();
        let feed = Feed {
            pipeline: config.name.clone(),
            journal: journal
                .filter(|_| config.ingest)
                .map(|j| (j, config.consumer(), config.ingest_topics.clone())),
            buses,
            dlq,
        };
        let stats = PipelineStats {
            name: config.name.clone(),
            window: config.window,
            max_backlog: config.ingest.then_some((config.max_backlog_records, config.max_backlog_bytes)),
            dlq_max_records: config.dlq_max_records,
            source: SourceStats::default(),
            stages,
        };
        Pipeline { config: config.clone(), stats: Arc::new(stats), feed }
    }

    fn hop(&self) -> HopOptions {
        HopOptions { window: self.config.window, ..HopOptions::default() }
    }

    fn stage_options(&self, position: usize, name: &str, workers: usize) -> StageOptions {
        StageOptions {
            name: format!("{}-{name}", self.config.name),
            position: position as u8,
            workers,
            max_attempts: self.config.max_attempts,
            retry_min: Duration::from_millis(self.config.retry_min_ms),
            retry_max: Duration::from_millis(self.config.retry_max_ms),
            hop: self.hop(),
        }
    }

    /// The pipeline's threads, to be run by the hub until shutdown.
    pub fn parts(self, ctx: &zmq::Context) -> Vec<Part> {
        let name = self.config.name.clone();
        let endpoint = |i: usize| format!("inproc://pipeline.{name}.{i}");
        let me = Arc::new(self);
        let mut parts: Vec<Part> = Vec::new();
        {
            let (me, ctx, at) = (me.clone(), ctx.clone(), endpoint(0));
            parts.push((
                format!("pipe-{name}-src"),
                Box::new(move |stop| {
                    source::run(&ctx, &me.feed, &at, me.hop(), &me.stats.source, stop)
                        .map_err(|e| e.to_string())
                }),
            ));
        }
        for (i, (stage_name, workers, _)) in me.stats.stages.iter().enumerate() {
            let (me, ctx) = (me.clone(), ctx.clone());
            let (from, to) = (endpoint(i), endpoint(i + 1));
            let last = i + 1 == me.stats.stages.len();
            let (stage_name, workers) = (*stage_name, *workers);
            parts.push((
                format!("pipe-{name}-{stage_name}"),
                Box::new(move |stop| {
                    let upstream = [from];
                    let wiring = Wiring { upstream: &upstream, downstream: (!last).then_some(to.as_str()) };
                    let options = me.stage_options(i, stage_name, workers);
                    let stats = &me.stats.stages[i].2;
                    let dead = |d: DeadLetter| me.dead_letter(stage_name, d);
                    let result = if stage_name == "transform" {
                        let rules = &me.config.transform;
                        let handler = |body: &[u8]| rules.apply(body).map_err(|e| e.to_string());
                        stage::run(&ctx, wiring, &options, handler, dead, stats, stop)
                    } else {
                        let recorder = Mutex::new(Recorder::new(
                            me.config.record.path.clone(),
                            me.config.record.policy(),
                        ));
                        let handler = |body: &[u8]| {
                            recorder.lock().unwrap_or_else(|e| e.into_inner()).write(body).map(|()| None)
                        };
                        stage::run(&ctx, wiring, &options, handler, dead, stats, stop)
                    };
                    result.map_err(|e| e.to_string())
                }),
            ));
        }
        parts
    }

    fn dead_letter(&self, stage: &str, d: DeadLetter) -> Result<(), String> {
        let letter = Letter {
            pipeline: self.config.name.clone(),
            stage: stage.to_string(),
            position: d.position,
            error: d.error,
            attempts: d.attempts,
            at_ns: crate::clock::wall_ns(),
            body: d.body,
            replay: false,
        };
        self.feed.dlq.put(&letter, self.config.dlq_max_records).map(|_| ())
    }
}

impl PipelineStats {
    pub fn to_json(&self, dlq: &Dlq, journal: Option<&journal::Journal>) -> Value {
        let get = |c: &AtomicU64| c.load(Relaxed);
        let s = &self.source;
        let stages: Vec<Value> = self
            .stages
            .iter()
            .map(|(name, workers, st)| {
                json!({
                    "stage": name, "workers": workers, "in": get(&st.received), "out": get(&st.out),
                    "filtered": get(&st.filtered), "failed": get(&st.failed), "retried": get(&st.retried),
                    "dead_lettered": get(&st.dead_lettered), "queued": get(&st.queued), "window": self.window,
                    "malformed": get(&st.malformed),
                })
            })
            .collect();
        let backlog = journal.map(|j| j.newest().saturating_sub(get(&s.cursor)));
        json!({
            "name": self.name,
            "source": {
                "sent": get(&s.sent), "acked": get(&s.acked), "in_flight": get(&s.in_flight),
                "waited": get(&s.waited), "replayed": get(&s.replayed), "undecodable": get(&s.undecodable),
                "malformed": get(&s.malformed),
                "cursor": get(&s.cursor), "journal_backlog": backlog,
            },
            "stages": stages,
            "dead_letters": dlq.count(&self.name),
            "bounds": {
                "window": self.window,
                "max_backlog_records": self.max_backlog.map(|b| b.0),
                "max_backlog_bytes": self.max_backlog.map(|b| b.1),
                "dlq_max_records": self.dlq_max_records,
            },
        })
    }

    pub fn collect(&self, dlq: &Dlq, journal: Option<&journal::Journal>, out: &mut Families) {
        let get = |c: &AtomicU64| c.load(Relaxed);
        let p = || vec![("pipeline", self.name.clone())];
        let s = &self.source;
        if let (Some(journal), Some((records, bytes))) = (journal, self.max_backlog) {
            let backlog = journal.newest().saturating_sub(get(&s.cursor));
            out.gauge(
                "pipeline_journal_backlog",
                "Ingest journal entries past the pipeline's cursor.",
                p(),
                backlog,
            );
            out.gauge(
                "pipeline_max_backlog_records",
                "Journal entries waiting, at most (then ingest says Retry).",
                p(),
                records,
            );
            out.gauge("pipeline_max_backlog_bytes", "Their bytes, at most.", p(), bytes);
        }
        out.gauge(
            "pipeline_dlq_max_records",
            "Dead letters kept for the pipeline, at most.",
            p(),
            self.dlq_max_records,
        );
        out.counter(
            "pipeline_source_sent",
            "Messages a pipeline's source sent (replays included).",
            p(),
            get(&s.sent),
        );
        out.counter("pipeline_source_acked", "Messages the pipeline finished with.", p(), get(&s.acked));
        out.counter(
            "pipeline_source_waited",
            "Source turns (10 ms at most) with journal entries or dead letters to send and no credit.",
            p(),
            get(&s.waited),
        );
        out.gauge("pipeline_source_in_flight", "Messages sent and not yet finished.", p(), get(&s.in_flight));
        out.gauge("pipeline_dead_letters", "Dead letters kept for the pipeline.", p(), dlq.count(&self.name));
        for (name, _, st) in &self.stages {
            let l = || vec![("pipeline", self.name.clone()), ("stage", name.to_string())];
            out.counter("pipeline_in", "Messages a stage took.", l(), get(&st.received));
            out.counter(
                "pipeline_out",
                "Messages a stage passed on (acknowledged downstream) or wrote.",
                l(),
                get(&st.out),
            );
            out.counter("pipeline_filtered", "Messages a stage filtered out.", l(), get(&st.filtered));
            out.counter("pipeline_failed", "Handler errors (each attempt).", l(), get(&st.failed));
            out.counter("pipeline_retried", "Handler attempts after an error.", l(), get(&st.retried));
            out.counter(
                "pipeline_dead_lettered",
                "Messages given up on, to the dead-letter store.",
                l(),
                get(&st.dead_lettered),
            );
            out.counter(
                "pipeline_malformed",
                "Malformed messages from peers (dropped).",
                l(),
                get(&st.malformed),
            );
            out.gauge("pipeline_queue_depth", "Messages in a stage now.", l(), get(&st.queued));
            out.gauge(
                "pipeline_window",
                "Messages a stage takes at most (its bound).",
                l(),
                self.window.into(),
            );
        }
    }
}
