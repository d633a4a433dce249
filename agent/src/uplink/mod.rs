//! The uplink: sends the outboxes to the hub's ingest, oldest first, and
//! retires what the hub acknowledges. The decisions (alarm events first,
//! the circuit breaker, replay pacing, lingering, reports, retry-after) are
//! [`proto::uplink`]'s; this is the shell that reads the outboxes, sends
//! through the broker, and sleeps as told. Samples older than
//! `live_window_ms` when sent are marked historical. While a backlog
//! drains, several sample batches are in flight at once ([`window`]).

mod window;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::ingest::{Batch, Reply, Report, Sent};
use proto::uplink::{Answer, Lane, Next, Settings, Uplink, Verdict};
use smol::channel::Receiver;
use smol::future::FutureExt;
use transport::{AsyncClient, ClientOptions, Endpoint};
use window::{Outgoing, Window};

use crate::clock;
use crate::config::UplinkConfig;
use crate::status::{LinkState, Shared};

pub async fn run(
    shared: Arc<Shared>,
    ctx: zmq::Context,
    broker: Endpoint,
    timeout: Duration,
    wake: Receiver<()>,
) {
    let options = ClientOptions { timeout, retries: 0, ..ClientOptions::default() };
    let mut client = AsyncClient::new(&ctx, &broker, options);
    let mut window = Window::new(&ctx, &broker);
    let mut seen = shared.uplink_changes.load(Relaxed);
    let mut cfg = shared.uplink();
    let mut up = Uplink::new(settings(&cfg), Instant::now());
    loop {
        // A fleet configuration changed the settings: the machine starts
        // afresh with them (its breaker and pacing too).
        if shared.uplink_changes.load(Relaxed) != seen {
            seen = shared.uplink_changes.load(Relaxed);
            cfg = shared.uplink();
            up = Uplink::new(settings(&cfg), Instant::now());
            window.reset();
            shared.outbox.not_sent();
        }
        let (events, samples) = (shared.alarms.outbox.stats().records, shared.outbox.stats().records);
        if !window.is_empty() {
            // Batches on the wire: another full one may follow them (not
            // while alarm events wait: those go once the window is empty).
            let unsent = samples.saturating_sub(window.records());
            let more = events == 0
                && unsent >= cfg.batch_records as u64
                && window.has_room(cfg.max_in_flight)
                && window.newest().is_some_and(|f| f.last.is_some());
            let wait = if more {
                send_samples(&shared, &mut window, &mut up, &cfg, timeout).await
            } else {
                settle_samples(&shared, &mut window, &mut up).await
            };
            if !wait.is_zero() {
                smol::Timer::after(wait).await;
            }
            continue;
        }
        let next = up.next(Instant::now(), events, samples);
        set_breaker(&shared, &up);
        let wait = match next {
            Next::Idle(most) => {
                let _ = wake
                    .recv()
                    .or(async {
                        smol::Timer::after(most).await;
                        Ok(())
                    })
                    .await;
                continue;
            }
            Next::Wait(wait) => wait,
            Next::Send(Lane::Events) => send_events(&shared, &mut client, &mut up, &cfg).await,
            Next::Send(Lane::Samples) => send_samples(&shared, &mut window, &mut up, &cfg, timeout).await,
        };
        if !wait.is_zero() {
            smol::Timer::after(wait).await;
        }
    }
}

fn settings(cfg: &UplinkConfig) -> Settings {
    Settings {
        batch_records: cfg.batch_records,
        linger: Duration::from_millis(cfg.linger_ms),
        replay_rate: cfg.replay_rate as f64,
        report_every: Duration::from_millis(cfg.report_interval_ms.max(1000)),
        breaker_failures: cfg.breaker_failures,
        backoff_min: Duration::from_millis(cfg.backoff_min_ms),
        backoff_max: Duration::from_millis(cfg.backoff_max_ms),
    }
}

/// Reads up to a batch from `outbox` (after key `after`, the newest in
/// flight) off the executor (the SD card may be slow); `Err(wait)` when
/// there is nothing to send after all.
async fn peek<R: crate::outbox::Record + Send + 'static>(
    outbox: &Arc<crate::outbox::Outbox<R>>,
    after: Option<crate::outbox::Key>,
    cfg: &UplinkConfig,
    empty_ok: bool,
) -> Result<crate::outbox::Peeked<R>, Duration> {
    let (reader, records, bytes) = (outbox.clone(), cfg.batch_records, cfg.batch_bytes);
    match smol::unblock(move || reader.peek_after(after, records, bytes)).await {
        Ok(batch) if !batch.records.is_empty() || empty_ok => Ok(batch),
        // Past the batches in flight: nothing readable now; they settle first.
        Ok(_) if after.is_some() => Err(Duration::ZERO),
        Ok(_) => {
            // The counters said records were there but none are: recount, and
            // yield rather than spin on this thread.
            if let Err(e) = outbox.resync() {
                log::error!("outbox recount failed: {e}");
            }
            Err(Duration::from_millis(100))
        }
        Err(e) => {
            log::error!("outbox read failed: {e}");
            Err(Duration::from_secs(1))
        }
    }
}

/// Sends the oldest samples not in flight (or, with none and nothing in
/// flight, the report alone) without waiting for the answer; returns how
/// long to wait before the next step.
async fn send_samples(
    shared: &Arc<Shared>,
    window: &mut Window,
    up: &mut Uplink,
    cfg: &UplinkConfig,
    timeout: Duration,
) -> Duration {
    let after = window.newest().and_then(|f| f.through);
    let batch = match peek(&shared.outbox, after, cfg, window.is_empty()).await {
        Ok(batch) => batch,
        Err(wait) if window.is_empty() => return wait,
        // Nothing more to add: wait for what is in flight.
        Err(_) => return settle_samples(shared, window, up).await,
    };
    // Samples made under another id go in a window of their own.
    if window.newest().is_some_and(|f| *f.agent != *batch.agent) {
        return settle_samples(shared, window, up).await;
    }
    let through = batch.records.last().map(|(key, _)| *key);
    let last = batch.records.last().map(|(_, s)| (s.epoch, s.seq));
    // From here on, records of this batch the outbox drops are counted against it.
    if let Some(key) = through {
        shared.outbox.sending(key);
    }
    let wait = up.pace(batch.records.len(), Instant::now());
    if !wait.is_zero() {
        smol::Timer::after(wait).await;
    }
    let (now_mono, live_window_ns) = (shared.clock.mono_ns(), cfg.live_window_ms * 1_000_000);
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
    let report = if ours { report(shared).encode() } else { Vec::new() };
    if ours {
        up.reported(Instant::now());
    }
    let deadline = Instant::now() + timeout;
    let outgoing = Outgoing { through, last, agent: batch.agent, ours, count, deadline };
    if let Err(e) = window.send([&body, &report], outgoing).await {
        return unanswered(shared, window, up, &e.to_string());
    }
    if window.has_room(cfg.max_in_flight) {
        Duration::ZERO
    } else {
        settle_samples(shared, window, up).await
    }
}

/// Waits for the next answer to a batch in flight and acts on it; returns
/// how long to wait before the next step.
async fn settle_samples(shared: &Arc<Shared>, window: &mut Window, up: &mut Uplink) -> Duration {
    let answered = match window.answer().await {
        Ok(answered) => answered,
        Err(e) => return unanswered(shared, window, up, &e),
    };
    let (flight, ours) = (&answered.flight.batch, answered.flight.batch.ours);
    let answer = match &answered.reply {
        Ok(Reply::Ack { .. }) => Answer::Ack { complete: true },
        Ok(Reply::Retry { reason, after_ms }) => {
            note(shared, LinkState::Up, format!("hub asks to retry: {reason}"));
            Answer::Retry { after: Duration::from_millis((*after_ms).into()) }
        }
        Ok(Reply::Refused { reason }) if !ours => {
            let agent = &flight.agent;
            let why = format!(
                "the hub refuses the samples this agent made as '{agent}' before its id became '{}' \
                 ({reason}); they are kept and hold back the newer ones. With security, only the \
                 identity '{agent}' may send them: run this agent once more with id '{agent}' (and its \
                 key) until `agent status` shows them gone",
                shared.id
            );
            log::error!("{why}");
            note(shared, LinkState::Up, why);
            Answer::Rejected
        }
        Ok(Reply::Malformed { reason } | Reply::Refused { reason }) => {
            log::error!("hub rejects our batches: {reason}");
            note(shared, LinkState::Up, format!("hub rejects batches: {reason}"));
            Answer::Rejected
        }
        Err(e) => {
            unreachable(shared, e);
            Answer::Unreachable
        }
    };
    match up.answer(Lane::Samples, answer, Instant::now()) {
        Verdict::Retire => {
            // The hub takes a batch only after the one it follows: this Ack covers those before it.
            if let Some(Err(e)) = flight.through.map(|key| shared.outbox.retire(key)) {
                log::error!("outbox retire failed: {e}");
            }
            let mut link = shared.link();
            if link.state != LinkState::Up {
                log::info!("hub answered: sending the outbox ({} records)", shared.outbox.stats().records);
            }
            link.state = LinkState::Up;
            link.last_ack_wall_ns = Some(clock::wall_ns());
            link.last_error = None;
            link.batches_acked += answered.settles as u64;
            link.samples_acked += answered.records as u64;
            Duration::ZERO
        }
        Verdict::Keep(wait) => {
            // Later batches cannot have been taken without this one: all go again.
            window.reset();
            shared.outbox.not_sent();
            wait
        }
    }
}

/// No answer (or the send failed): everything in flight goes again later.
fn unanswered(shared: &Shared, window: &mut Window, up: &mut Uplink, e: &str) -> Duration {
    unreachable(shared, e);
    window.reset();
    shared.outbox.not_sent();
    match up.answer(Lane::Samples, Answer::Unreachable, Instant::now()) {
        Verdict::Keep(wait) => wait,
        Verdict::Retire => Duration::ZERO,
    }
}

/// Sends the oldest alarm events; they are retired once the hub
/// acknowledges every one. Returns how long to wait before the next step.
async fn send_events(
    shared: &Arc<Shared>,
    client: &mut AsyncClient,
    up: &mut Uplink,
    cfg: &UplinkConfig,
) -> Duration {
    let batch = match peek(&shared.alarms.outbox, None, cfg, false).await {
        Ok(batch) => batch,
        Err(wait) => return wait,
    };
    let Some(last_key) = batch.records.last().map(|(key, _)| *key) else { return Duration::ZERO };
    let ours = *batch.agent == *shared.id;
    let events: Vec<_> = batch.records.into_iter().map(|(_, event)| event).collect();
    let count = events.len();
    let body = Batch { agent: batch.agent.to_string(), samples: Vec::new(), events }.encode();
    shared.alarms.outbox.sending(last_key);
    let answer = match send(shared, client, up, &body, ours).await {
        Ok(Reply::Ack { accepted, duplicates }) => {
            let complete = (accepted + duplicates) as usize == count;
            if !complete {
                // A hub from before alarms read the batch's samples (none) and acknowledged those.
                let why = "the hub does not take alarm events (it predates them): they are kept until it is upgraded";
                log::error!("{why}");
                note(shared, LinkState::Up, why.into());
            }
            Answer::Ack { complete }
        }
        Ok(Reply::Retry { reason, after_ms }) => {
            note(shared, LinkState::Up, format!("hub asks to retry alarm events: {reason}"));
            Answer::Retry { after: Duration::from_millis(after_ms.into()) }
        }
        Ok(Reply::Malformed { reason } | Reply::Refused { reason }) => {
            log::error!("hub rejects our alarm events: {reason}");
            note(shared, LinkState::Up, format!("hub rejects alarm events: {reason}"));
            Answer::Rejected
        }
        Err(e) => {
            unreachable(shared, &e);
            Answer::Unreachable
        }
    };
    match up.answer(Lane::Events, answer, Instant::now()) {
        Verdict::Retire => {
            if let Err(e) = shared.alarms.outbox.retire(last_key) {
                log::error!("alarm events' outbox retire failed: {e}");
            }
            let mut link = shared.link();
            link.state = LinkState::Up;
            link.last_ack_wall_ns = Some(clock::wall_ns());
            link.events_acked += count as u64;
            Duration::ZERO
        }
        Verdict::Keep(wait) => {
            shared.alarms.outbox.not_sent();
            wait
        }
    }
}

/// One batch to ingest, with this agent's report when the batch is its own.
async fn send(
    shared: &Shared,
    client: &mut AsyncClient,
    up: &mut Uplink,
    body: &[u8],
    ours: bool,
) -> Result<Reply, String> {
    let report = report(shared).encode();
    let frames: &[&[u8]] = if ours { &[body, &report] } else { &[body] };
    if ours {
        up.reported(Instant::now());
    }
    let reply = client.request(proto::ingest::SERVICE, frames).await;
    reply.map_err(|e| e.to_string()).and_then(|frames| {
        let first = frames.first().map(|f| f.to_vec()).unwrap_or_default();
        Reply::decode(&first).map_err(|e| format!("undecodable reply from the hub: {e}"))
    })
}

fn unreachable(shared: &Shared, e: &str) {
    let mut link = shared.link();
    if link.state != LinkState::Down {
        log::warn!("hub unreachable ({e}): keeping samples and alarm events in their outboxes");
    }
    link.state = LinkState::Down;
    link.last_error = Some(e.to_string());
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

fn set_breaker(shared: &Shared, up: &Uplink) {
    let mut link = shared.link();
    link.breaker = up.breaker().state();
    link.breaker_opened = up.breaker().opened;
}
