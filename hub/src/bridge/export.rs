//! Durable export: the journal into JetStream, acknowledged, deduplicated,
//! in order.
//!
//! Up to `max_in_flight` entries are published at once, in journal order, and
//! their acknowledgements awaited in the same order; the cursor moves to the
//! last of an unbroken run of acknowledged entries. A failure (a timeout, a
//! lost connection, a refusal) stops the run: the rest are dropped unawaited
//! and everything after the cursor is published again, in order, after a
//! backoff. What JetStream had stored comes back as a duplicate of itself
//! (its `Nats-Msg-Id`) and keeps its place, so the stream holds each sample
//! once and in each agent's order (JetStream stores what one connection
//! sends in the order sent, so what it kept of a failed run is a prefix).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use proto::backoff::Backoff;
use proto::rate::TokenBucket;

use super::{subjects, BridgeStatus, NatsConfig};
use crate::ingest::journal::Entry;
use crate::ingest::Export;

/// The cursor is made durable at least this often (acknowledged entries
/// between two flushes are sent again after a crash, and deduplicated).
const FLUSH_EVERY: Duration = Duration::from_millis(200);

pub async fn run(
    client: &async_nats::Client,
    config: &NatsConfig,
    export: Option<Export>,
    status: Arc<BridgeStatus>,
) {
    let Some(export) = export else { return std::future::pending().await };
    let journal = export.journal.clone();
    let mut js = jetstream::new(client.clone());
    js.set_timeout(Duration::from_millis(config.publish_timeout_ms));
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    ensure_stream(&js, config, &status, &mut backoff).await;
    let mut cursor = match journal.cursor() {
        Ok(cursor) => cursor,
        Err(e) => {
            status.failed(format!("cannot read the export cursor: {e}; export stopped"));
            return std::future::pending().await;
        }
    };
    status.cursor.store(cursor, Relaxed);
    let rate = config.max_rate as f64;
    let mut pace = TokenBucket::new(rate, rate, Instant::now());
    let mut flushed = Instant::now();
    loop {
        note_server(client, &status);
        let window = match journal.read(cursor, config.max_in_flight) {
            Ok(window) => window,
            Err(e) => {
                status.failed(format!("cannot read the export journal: {e}"));
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        if window.is_empty() {
            if flushed.elapsed() >= FLUSH_EVERY {
                let _ = journal.flush();
                flushed = Instant::now();
            }
            // Until something is appended; the cursor is flushed meanwhile.
            let _ = tokio::time::timeout(FLUSH_EVERY, journal.appended()).await;
            continue;
        }
        let (acked_upto, complete) = publish_window(&js, config, &status, &mut pace, window).await;
        if acked_upto > cursor {
            match journal.acked(acked_upto) {
                Ok(()) => {
                    cursor = acked_upto;
                    status.cursor.store(cursor, Relaxed);
                }
                Err(e) => status.failed(format!("cannot move the export cursor: {e}")),
            }
            if flushed.elapsed() >= FLUSH_EVERY {
                if let Err(e) = journal.flush() {
                    status.failed(format!("cannot flush the export cursor: {e}"));
                }
                flushed = Instant::now();
            }
        }
        if complete {
            backoff.reset();
        } else {
            status.retries.fetch_add(1, Relaxed);
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

/// Publishes `window` in order and awaits the acknowledgements in order.
/// Returns the last key of the unbroken acknowledged run, and whether the
/// whole window was acknowledged.
async fn publish_window(
    js: &jetstream::Context,
    config: &NatsConfig,
    status: &BridgeStatus,
    pace: &mut TokenBucket,
    window: Vec<(u64, Option<Entry>)>,
) -> (u64, bool) {
    let mut pending = Vec::with_capacity(window.len());
    let mut complete = true;
    for (key, entry) in window {
        let wait = pace.take(1.0, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let Some((subject, message)) = entry.as_ref().and_then(|e| message(&config.site, e)) else {
            // Undecodable, or no valid subject: counted, and passed over.
            status.unexportable.fetch_add(1, Relaxed);
            pending.push((key, None));
            continue;
        };
        match js.send_publish(subject, message).await {
            Ok(ack) => {
                status.published.fetch_add(1, Relaxed);
                pending.push((key, Some(ack)));
            }
            Err(e) => {
                status.failed(format!("publishing to JetStream: {e}"));
                complete = false;
                break;
            }
        }
    }
    let mut acked_upto = None;
    for (key, ack) in pending {
        let Some(ack) = ack else {
            acked_upto = Some(key);
            continue;
        };
        match ack.await {
            Ok(ack) => {
                status.acked.fetch_add(1, Relaxed);
                if ack.duplicate {
                    status.duplicates.fetch_add(1, Relaxed);
                }
                acked_upto = Some(key);
            }
            Err(e) => {
                status.failed(format!("JetStream did not acknowledge: {e}"));
                complete = false;
                break;
            }
        }
    }
    (acked_upto.unwrap_or(0), complete)
}

/// The subject and message for one journal entry: the bus payload as it
/// was, with its identity in headers and as the deduplication id.
fn message(site: &str, entry: &Entry) -> Option<(String, PublishMessage)> {
    let subject = subjects::subject(site, &entry.topic)?;
    let message = PublishMessage::build()
        .payload(Bytes::from(entry.payload.clone()))
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
