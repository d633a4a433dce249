//! Durable export: the journal into JetStream, acknowledged, deduplicated,
//! in order.
//!
//! A sliding window: up to `max_in_flight` entries are published ahead, in
//! journal order, and their acknowledgements awaited in the same order; each
//! one that comes back lets the next entry go. The cursor follows the last of
//! the unbroken run of acknowledged entries and is written to the journal
//! every `COMMIT_EVERY` acknowledgements (and whenever the window empties).
//! A failure (a timeout, a lost connection, a refusal) drops what is in
//! flight unawaited, and everything after the cursor is published again, in
//! order, after a backoff. What JetStream had stored comes back as a
//! duplicate of itself (its `Nats-Msg-Id`) and keeps its place, so the
//! stream holds each sample once and in each agent's order (JetStream stores
//! what one connection sends in the order sent, so what it kept of a failed
//! window is a prefix).

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use bytes::Bytes;
use proto::backoff::Backoff;
use proto::rate::TokenBucket;

use super::{subjects, BridgeStatus, NatsConfig};
use crate::journal::Export;
use crate::journal::{Entry, Journal};

/// The cursor is made durable at least this often (acknowledged entries
/// between two flushes are sent again after a crash, and deduplicated).
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Acknowledgements between two writes of the cursor (each write removes
/// the acknowledged entries from the journal).
const COMMIT_EVERY: u64 = 256;

pub async fn run(
    client: &async_nats::Client,
    config: &NatsConfig,
    export: Option<Export>,
    status: Arc<BridgeStatus>,
) {
    let Some(export) = export else { return std::future::pending().await };
    let mut js = jetstream::new(client.clone());
    js.set_timeout(Duration::from_millis(config.publish_timeout_ms));
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    ensure_stream(&js, config, &status, &mut backoff).await;
    let cursor = match export.journal.cursor() {
        Ok(cursor) => cursor,
        Err(e) => {
            status.failed(format!("cannot read the export cursor: {e}; export stopped"));
            return std::future::pending().await;
        }
    };
    status.cursor.store(cursor, Relaxed);
    let rate = config.max_rate as f64;
    let mut window = Window {
        journal: export.journal.clone(),
        status: status.clone(),
        flushing: None,
        cursor,
        acked_upto: cursor,
        published_upto: cursor,
        ahead: VecDeque::new(),
        ahead_upto: cursor,
        in_flight: VecDeque::new(),
        pace: TokenBucket::new(rate, rate, Instant::now()),
        flushed: Instant::now(),
    };
    loop {
        note_server(client, &status);
        match window.step(&js, config).await {
            Ok(true) => backoff.reset(),
            Ok(false) => {
                // Nothing to publish or await: until something is appended.
                window.commit(true);
                let _ = tokio::time::timeout(FLUSH_EVERY, export.journal.appended()).await;
            }
            Err(why) => {
                status.failed(why);
                status.retries.fetch_add(1, Relaxed);
                window.restart();
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// The export's position: what is acknowledged, what is published and awaited.
struct Window {
    journal: Arc<Journal>,
    status: Arc<BridgeStatus>,
    /// A flush running on a blocking thread (an fsync would stall every
    /// publish and acknowledgement on this runtime meanwhile).
    flushing: Option<tokio::task::JoinHandle<()>>,
    /// The journal's cursor as last written.
    cursor: u64,
    /// The last key of the unbroken run of acknowledged entries.
    acked_upto: u64,
    /// The last key published.
    published_upto: u64,
    /// Read from the journal, not published yet, and the last key read.
    ahead: VecDeque<(u64, Option<Entry>)>,
    ahead_upto: u64,
    /// Published, acknowledgement awaited, in key order (`None`: nothing to await).
    in_flight: VecDeque<(u64, Option<PublishAckFuture>)>,
    pace: TokenBucket,
    flushed: Instant,
}

impl Window {
    /// Fills the window from the journal, then awaits the oldest
    /// acknowledgement. `Ok(false)` when there was nothing to do.
    async fn step(&mut self, js: &jetstream::Context, config: &NatsConfig) -> Result<bool, String> {
        let room = config.max_in_flight.saturating_sub(self.in_flight.len());
        if room > 0 && self.ahead.is_empty() {
            // A window's worth at a time: a journal range per message costs more than its publish.
            let last = self.ahead_upto.max(self.published_upto);
            let read = self.journal.read(last, config.max_in_flight);
            self.ahead = read.map_err(|e| format!("cannot read the export journal: {e}"))?.into();
            self.ahead_upto = self.ahead.back().map_or(last, |(key, _)| *key);
        }
        if room > 0 {
            let ready = self.ahead.len().min(room);
            for _ in 0..ready {
                let Some((key, entry)) = self.ahead.pop_front() else { break };
                let wait = self.pace.take(1.0, Instant::now());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                let ack = match entry.and_then(|e| message(&config.site, e)) {
                    Some((subject, message)) => {
                        let ack = js.send_publish(subject, message).await;
                        Some(ack.map_err(|e| format!("publishing to JetStream: {e}"))?)
                    }
                    None => {
                        // Undecodable, or no valid subject: counted, and passed over.
                        self.status.unexportable.fetch_add(1, Relaxed);
                        None
                    }
                };
                self.status.published.fetch_add(u64::from(ack.is_some()), Relaxed);
                self.in_flight.push_back((key, ack));
                self.published_upto = key;
            }
        }
        let Some((key, ack)) = self.in_flight.pop_front() else { return Ok(false) };
        if let Some(ack) = ack {
            let ack = ack.await.map_err(|e| format!("JetStream did not acknowledge: {e}"))?;
            self.status.acked.fetch_add(1, Relaxed);
            if ack.duplicate {
                self.status.duplicates.fetch_add(1, Relaxed);
            }
        }
        self.acked_upto = key;
        self.commit(self.in_flight.is_empty());
        Ok(true)
    }

    /// Writes the cursor when `COMMIT_EVERY` acknowledgements have come (or
    /// when `now`), and flushes the journal every `FLUSH_EVERY`.
    fn commit(&mut self, now: bool) {
        if self.acked_upto > self.cursor && (now || self.acked_upto - self.cursor >= COMMIT_EVERY) {
            match self.journal.acked(self.acked_upto) {
                Ok(()) => {
                    self.cursor = self.acked_upto;
                    self.status.cursor.store(self.cursor, Relaxed);
                }
                Err(e) => self.status.failed(format!("cannot move the export cursor: {e}")),
            }
        }
        let idle = self.flushing.as_ref().is_none_or(|f| f.is_finished());
        if self.flushed.elapsed() >= FLUSH_EVERY && idle {
            let (journal, status) = (self.journal.clone(), self.status.clone());
            self.flushing = Some(tokio::task::spawn_blocking(move || {
                if let Err(e) = journal.flush() {
                    status.failed(format!("cannot flush the export cursor: {e}"));
                }
            }));
            self.flushed = Instant::now();
        }
    }

    /// After a failure: keep what was acknowledged, forget what was in
    /// flight, and publish again from there.
    fn restart(&mut self) {
        self.commit(true);
        self.in_flight.clear();
        self.ahead.clear();
        self.published_upto = self.acked_upto;
        self.ahead_upto = self.acked_upto;
    }
}

/// The subject and message for one journal entry: the bus payload as it
/// was, with its identity in headers and as the deduplication id.
fn message(site: &str, entry: Entry) -> Option<(String, PublishMessage)> {
    let subject = subjects::subject(site, &entry.topic)?;
    let message = PublishMessage::build()
        .payload(Bytes::from(entry.payload))
        .message_id(subjects::message_id(site, &entry.agent, entry.epoch, entry.seq))
        .header("Plantd-Site", site)
        .header("Plantd-Agent", entry.agent.as_str())
        .header("Plantd-Epoch", entry.epoch.to_string().as_str())
        .header("Plantd-Seq", entry.seq.to_string().as_str())
        .header("Plantd-Historical", if entry.historical { "true" } else { "false" })
        .header("Plantd-Durable", "true");
    Some((subject, message))
}

/// The stream, created if missing; retried until it answers and takes this
/// site's subjects (an operator's stream that does not is reported, not changed).
async fn ensure_stream(
    js: &jetstream::Context,
    config: &NatsConfig,
    status: &BridgeStatus,
    backoff: &mut Backoff,
) {
    let ours = subjects::stream_subjects(&config.site, &config.export);
    loop {
        let wanted = jetstream::stream::Config {
            name: config.stream.clone(),
            subjects: subjects::stream_subjects("*", &config.export),
            num_replicas: config.replicas,
            duplicate_window: Duration::from_secs(config.duplicate_window_s),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let problem = match js.get_or_create_stream(wanted).await {
            Ok(mut stream) => {
                let taken = stream.info().await.map(|i| i.config.subjects.clone()).unwrap_or_default();
                let missing: Vec<&String> =
                    ours.iter().filter(|s| !taken.iter().any(|t| subjects::covers(t, s))).collect();
                if missing.is_empty() {
                    backoff.reset();
                    log::info!("bridge: exporting into JetStream stream {}", config.stream);
                    return;
                }
                format!(
                    "stream {} does not take {missing:?}: add them to it (nats stream edit) or set \
                     bridge.nats.stream to another",
                    config.stream
                )
            }
            Err(e) => format!("cannot reach or create stream {}: {e}", config.stream),
        };
        status.failed(problem);
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Shows which server the client is connected to.
pub(super) fn note_server(client: &async_nats::Client, status: &BridgeStatus) {
    let connected = client.connection_state() == async_nats::connection::State::Connected;
    if connected != status.connected.load(Relaxed) {
        let info = client.server_info();
        status.set_server(connected.then(|| format!("{}:{}", info.host, info.port)));
    }
}
