//! The uplink: sends the outbox to the hub's ingest, oldest first, and
//! retires samples only when the hub acknowledges them.
//!
//! Calls go through a circuit breaker (open after `breaker_failures` failed
//! calls, probed again after an exponential, jittered, capped backoff), so a
//! dead hub costs one call per backoff period and a returning one is found
//! within `backoff_max_ms`. Replay is paced at `replay_rate` samples a second
//! so a long backlog does not swamp the link; samples older than
//! `live_window_ms` when sent are marked historical. Every batch carries the
//! agent's report (backlog, lag, health); with nothing to send, an empty
//! batch carries it every `report_interval_ms`.
//!
//! Alarm events go first: while the events outbox holds any, its batches
//! are sent before the samples' (unpaced: they are few), so an alarm raised
//! during an outage reaches the hub ahead of the telemetry backlog. While
//! the hub cannot take events (it asks to retry, or predates them) the
//! samples are sent meanwhile, so alarms never hold telemetry back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::breaker::Breaker;
use proto::ingest::{Batch, Reply, Report, Sent};
use proto::rate::TokenBucket;
use smol::channel::Receiver;
use smol::future::FutureExt;
use transport::{AsyncClient, ClientOptions, Endpoint};

use crate::clock;
use crate::config::UplinkConfig;
use crate::status::{LinkState, Shared};

pub async fn run(
    shared: Arc<Shared>,
    ctx: zmq::Context,
    broker: Endpoint,
    timeout: Duration,
    cfg: UplinkConfig,
    wake: Receiver<()>,
) {
    let options = ClientOptions { timeout, retries: 0, ..ClientOptions::default() };
    let mut client = AsyncClient::new(&ctx, &broker, options);
    let mut breaker = Breaker::new(
        cfg.breaker_failures,
        Duration::from_millis(cfg.backoff_min_ms),
        Duration::from_millis(cfg.backoff_max_ms),
    );
    // Replay pacing: `replay_rate` samples a second, bursts up to one second's worth.
    let rate = cfg.replay_rate.max(1) as f64;
    let mut pace = TokenBucket::new(rate, rate, Instant::now());
    let live_window_ns = cfg.live_window_ms * 1_000_000;
    let report_every = Duration::from_millis(cfg.report_interval_ms.max(1000));
    let mut last_sent: Option<Instant> = None;
    // Until when events wait (the hub asked to retry, or cannot take them).
    let mut events_wait: Option<Instant> = None;
    loop {
        let events = shared.alarms.outbox.stats().records > 0;
        let events_due = events && events_wait.is_none_or(|t| Instant::now() >= t);
        if events_due {
            let now = Instant::now();
            if !breaker.allow(now) {
                set_breaker(&shared, &breaker);
                smol::Timer::after(breaker.wait(now)).await;
                continue;
            }
            if let Some(wait) = send_events(&shared, &mut client, &mut breaker, &cfg).await {
                events_wait = Some(Instant::now() + wait);
            } else {
                last_sent = Some(Instant::now());
            }
            continue;
        }
        let records = shared.outbox.stats().records as usize;
        let report_due = last_sent.is_none_or(|t| t.elapsed() >= report_every);
        if records == 0 && !report_due {
            let _ = wake
                .recv()
                .or(async {
                    smol::Timer::after(Duration::from_secs(1)).await;
                    Ok(())
                })
                .await;
            continue;
        }
        if records > 0 && records < cfg.batch_records {
            // Gather a little more before sending a small batch.
            smol::Timer::after(Duration::from_millis(cfg.linger_ms)).await;
        }
        let now = Instant::now();
        if !breaker.allow(now) {
            set_breaker(&shared, &breaker);
            smol::Timer::after(breaker.wait(now)).await;
            continue;
        }
        set_breaker(&shared, &breaker);
        // Reading the log may wait on the SD card: off the executor.
        let outbox = shared.outbox.clone();
        let (records, bytes) = (cfg.batch_records, cfg.batch_bytes);
        let batch = match smol::unblock(move || outbox.peek(records, bytes)).await {
            Ok(batch) if !batch.records.is_empty() || report_due => batch,
            Ok(_) => {
                // The counters said records were there but none are: recount, and
                // yield rather than spin on this thread.
                if let Err(e) = shared.outbox.resync() {
                    log::error!("outbox recount failed: {e}");
                }
                smol::Timer::after(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => {
                log::error!("outbox read failed: {e}");
                smol::Timer::after(Duration::from_secs(1)).await;
                continue;
            }
        };
        let wait = pace.take(batch.records.len() as f64, Instant::now());
        if !wait.is_zero() {
            smol::Timer::after(wait).await;
        }
        let now_mono = shared.clock.mono_ns();
        let last_key = batch.records.last().map(|(key, _)| *key);
        let count = batch.records.len();
        // Samples made under another id (it changed under a backlog) go
        // under that one, never relabelled; the report is this agent's.
        let ours = *batch.agent == *shared.id || batch.records.is_empty();
        let agent = if ours { shared.id.clone() } else { batch.agent.to_string() };
        let samples = batch
            .records
            .into_iter()
            .map(|(_, sample)| {
                let late =
                    sample.epoch != shared.epoch || now_mono.saturating_sub(sample.mono_ns) > live_window_ns;
                Sent { sample, historical: late }
            })
            .collect();
        let body = Batch { agent: agent.clone(), samples, events: Vec::new() }.encode();
        let report = report(&shared).encode();
        if let Some(key) = last_key {
            shared.outbox.sending(key);
        }
        if ours {
            last_sent = Some(Instant::now());
        }
        let frames: &[&[u8]] = if ours { &[&body, &report] } else { &[&body] };
        match call(&mut client, frames).await {
            Ok(Reply::Ack { .. }) => {
                breaker.success();
                if let Some(Err(e)) = last_key.map(|key| shared.outbox.retire(key)) {
                    log::error!("outbox retire failed: {e}");
                }
                let mut link = shared.link();
                if link.state != LinkState::Up {
                    log::info!(
                        "hub answered: sending the outbox ({} records)",
                        shared.outbox.stats().records + count as u64
                    );
                }
                link.state = LinkState::Up;
                link.last_ack_wall_ns = Some(clock::wall_ns());
                link.last_error = None;
                link.batches_acked += 1;
                link.samples_acked += count as u64;
            }
            Ok(Reply::Retry { reason, after_ms }) => {
                shared.outbox.not_sent();
                // The hub is there but not taking data now (no subscriber, storage trouble).
                breaker.success();
                note(&shared, LinkState::Up, format!("hub asks to retry: {reason}"));
                // Obeyed up to a minute: a hub (or an impostor) cannot park the uplink.
                smol::Timer::after(Duration::from_millis(after_ms.min(60_000).into())).await;
            }
            Ok(Reply::Refused { reason }) if !ours => {
                shared.outbox.not_sent();
                let why = format!(
                    "the hub refuses the samples this agent made as '{agent}' before its id became '{}' \
                     ({reason}); they are kept and hold back the newer ones. With security, only the \
                     identity '{agent}' may send them: run this agent once more with id '{agent}' (and its \
                     key) until `agent status` shows them gone",
                    shared.id
                );
                log::error!("{why}");
                note(&shared, LinkState::Up, why);
                smol::Timer::after(Duration::from_secs(30)).await;
            }
            Ok(Reply::Malformed { reason } | Reply::Refused { reason }) => {
                shared.outbox.not_sent();
                // Resending soon will not help, but the samples are kept: an
                // upgraded or reconfigured hub may take them.
                log::error!("hub rejects our batches: {reason}");
                note(&shared, LinkState::Up, format!("hub rejects batches: {reason}"));
                smol::Timer::after(Duration::from_secs(30)).await;
            }
            Err(e) => {
                shared.outbox.not_sent();
                unreachable(&shared, &mut breaker, e);
            }
        }
    }
}

/// One request to ingest, and its answer decoded.
async fn call(client: &mut AsyncClient, frames: &[&[u8]]) -> Result<Reply, String> {
    let reply = client.request(proto::ingest::SERVICE, frames).await;
    reply.map_err(|e| e.to_string()).and_then(|frames| {
        let first = frames.first().map(|f| f.to_vec()).unwrap_or_default();
        Reply::decode(&first).map_err(|e| format!("undecodable reply from the hub: {e}"))
    })
}

fn unreachable(shared: &Shared, breaker: &mut Breaker, e: String) {
    breaker.failure(Instant::now());
    set_breaker(shared, breaker);
    let mut link = shared.link();
    if link.state != LinkState::Down {
        log::warn!("hub unreachable ({e}): keeping samples and alarm events in their outboxes");
    }
    link.state = LinkState::Down;
    link.last_error = Some(e);
}

/// Sends the oldest alarm events; retires them once the hub acknowledges
/// every one. `Some(wait)`: events wait that long, and samples go meanwhile.
async fn send_events(
    shared: &Arc<Shared>,
    client: &mut AsyncClient,
    breaker: &mut Breaker,
    cfg: &UplinkConfig,
) -> Option<Duration> {
    set_breaker(shared, breaker);
    let outbox = shared.alarms.outbox.clone();
    let (records, bytes) = (cfg.batch_records, cfg.batch_bytes);
    let batch = match smol::unblock(move || outbox.peek(records, bytes)).await {
        Ok(batch) if !batch.records.is_empty() => batch,
        Ok(_) => {
            let _ = shared.alarms.outbox.resync();
            return Some(Duration::from_millis(100));
        }
        Err(e) => {
            log::error!("alarm events' outbox read failed: {e}");
            return Some(Duration::from_secs(1));
        }
    };
    let last_key = batch.records.last().map(|(key, _)| *key)?;
    let ours = *batch.agent == *shared.id;
    let events: Vec<_> = batch.records.into_iter().map(|(_, event)| event).collect();
    let count = events.len();
    let body = Batch { agent: batch.agent.to_string(), samples: Vec::new(), events }.encode();
    let report = report(shared).encode();
    let frames: &[&[u8]] = if ours { &[&body, &report] } else { &[&body] };
    shared.alarms.outbox.sending(last_key);
    let reply = call(client, frames).await;
    if !matches!(reply, Ok(Reply::Ack { .. })) {
        shared.alarms.outbox.not_sent();
    }
    match reply {
        Ok(Reply::Ack { accepted, duplicates }) if (accepted + duplicates) as usize == count => {
            breaker.success();
            if let Err(e) = shared.alarms.outbox.retire(last_key) {
                log::error!("alarm events' outbox retire failed: {e}");
            }
            let mut link = shared.link();
            link.state = LinkState::Up;
            link.last_ack_wall_ns = Some(clock::wall_ns());
            link.events_acked += count as u64;
            None
        }
        Ok(Reply::Ack { .. }) => {
            // A hub from before alarms read the batch's samples (none) and acknowledged those.
            shared.alarms.outbox.not_sent();
            breaker.success();
            let why =
                "the hub does not take alarm events (it predates them): they are kept until it is upgraded";
            log::error!("{why}");
            note(shared, LinkState::Up, why.into());
            Some(Duration::from_secs(300))
        }
        Ok(Reply::Retry { reason, after_ms }) => {
            breaker.success();
            note(shared, LinkState::Up, format!("hub asks to retry alarm events: {reason}"));
            Some(Duration::from_millis(after_ms.clamp(100, 60_000).into()))
        }
        Ok(Reply::Malformed { reason } | Reply::Refused { reason }) => {
            log::error!("hub rejects our alarm events: {reason}");
            note(shared, LinkState::Up, format!("hub rejects alarm events: {reason}"));
            Some(Duration::from_secs(30))
        }
        Err(e) => {
            unreachable(shared, breaker, e);
            Some(breaker.wait(Instant::now()).max(Duration::from_millis(100)))
        }
    }
}

/// How the agent is doing, for the hub (`hub agents`, the web view): its
/// loss counters are those kept across its restarts.
fn report(shared: &Shared) -> Report {
    let stats = shared.outbox.stats();
    let oldest = shared.outbox.oldest_wall_ns();
    Report {
        epoch: shared.epoch,
        backlog: stats.records,
        oldest_age_ms: oldest.map_or(0, |w| ((clock::wall_ns() - w).max(0) / 1_000_000) as u64),
        dropped: stats.dropped + stats.dropped_for_space,
        store_ok: shared.store_ok(),
        uptime_s: shared.clock.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        channels: shared.channels().keys().cloned().collect(),
        dropped_for_space: stats.dropped_for_space,
        store_errors: stats.store_errors,
        quarantined: stats.quarantined,
        space_low: stats.space_low,
        free_bytes: stats.free_bytes.unwrap_or(0),
        min_free_bytes: stats.min_free_bytes,
        alarms: shared.alarms.active(),
    }
}

fn note(shared: &Shared, state: LinkState, error: String) {
    let mut link = shared.link();
    link.state = state;
    link.last_error = Some(error);
}

fn set_breaker(shared: &Shared, breaker: &Breaker) {
    let mut link = shared.link();
    link.breaker = breaker.state();
    link.breaker_opened = breaker.opened;
}
