//! A stage: takes messages from upstream senders, runs a handler on N worker
//! threads, passes results on through its own [`Source`] (or, for a sink,
//! just finishes them), and acknowledges upstream only once a message is
//! done with here: its result acknowledged downstream, filtered out, or
//! dead-lettered. So a stage killed at any moment loses nothing: what it held
//! unacknowledged is sent again by its upstream.
//!
//! A handler error is retried with exponential backoff (on the worker
//! thread, which waits meanwhile) up to `max_attempts`; then the message
//! goes to the dead-letter callback with its error and attempts.
//!
//! One I/O thread owns the sockets (libzmq sockets belong to one thread);
//! workers take jobs from a bounded channel and hand results back over
//! an in-process PUSH socket, so the I/O thread's poll wakes for them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use proto::backoff::Backoff;

use super::{HopOptions, Inlet, Source};
use crate::ShutdownWatch;

/// What a handler made of one message.
pub type Handled = Result<Option<Vec<u8>>, String>;

/// A message given up on, for the dead-letter store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub stage: String,
    /// Stages before this one in the pipeline (to re-enter here on replay).
    pub position: u8,
    pub error: String,
    pub attempts: u32,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct StageOptions {
    pub name: String,
    /// This stage's place in its pipeline (0 first): stamped on dead letters.
    pub position: u8,
    pub workers: usize,
    /// Handler attempts per message before it is dead-lettered (at least 1).
    pub max_attempts: u32,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub hop: HopOptions,
}

impl Default for StageOptions {
    fn default() -> Self {
        StageOptions {
            name: "stage".into(),
            position: 0,
            workers: 1,
            max_attempts: 3,
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(2),
            hop: HopOptions::default(),
        }
    }
}

/// A stage's counters, for status and metrics.
#[derive(Debug, Default)]
pub struct StageStats {
    /// Messages taken from upstream.
    pub received: AtomicU64,
    /// Results acknowledged downstream (or finished, in a sink).
    pub out: AtomicU64,
    /// Messages the handler filtered out (done, nothing passed on; not in a sink).
    pub filtered: AtomicU64,
    /// Handler errors (each attempt).
    pub failed: AtomicU64,
    /// Attempts after an error.
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Messages in the stage now: being handled or waiting for downstream (a gauge).
    pub queued: AtomicU64,
    /// Malformed messages from peers, and deliveries past the credit granted (counted, dropped).
    pub malformed: AtomicU64,
}

/// Where a stage's messages come from and go.
pub struct Wiring<'a> {
    pub upstream: &'a [String],
    /// The endpoint the stage binds for the next one; `None` for a sink.
    pub downstream: Option<&'a str>,
}

struct Job {
    key: u64,
    body: Vec<u8>,
}

/// What a worker hands back: done (acknowledge upstream) or a result to pass on.
const DONE: u8 = b'D';
const FORWARD: u8 = b'F';
const DEAD: u8 = b'X';

/// One message in the stage: where it came from.
struct Taken {
    inlet: usize,
    id: u64,
}

static STAGE_IDS: AtomicU64 = AtomicU64::new(0);

/// Runs a stage until `stop`. `handler` maps a body to a result to pass on
/// (`Ok(Some)`), nothing (`Ok(None)`: filtered, or consumed by a sink), or an
/// error (retried, then dead-lettered). `dead_letter` must store durably
/// before returning `Ok`; while it fails the message is retried with it.
pub fn run<H, D>(
    ctx: &zmq::Context,
    wiring: Wiring<'_>,
    options: &StageOptions,
    handler: H,
    dead_letter: D,
    stats: &StageStats,
    stop: &ShutdownWatch,
) -> zmq::Result<()>
where
    H: Fn(&[u8]) -> Handled + Sync,
    D: Fn(DeadLetter) -> Result<(), String> + Sync,
{
    let mut inlets = Vec::with_capacity(wiring.upstream.len());
    for endpoint in wiring.upstream {
        inlets.push(Inlet::connect(ctx, endpoint, &options.hop)?);
    }
    let mut outlet = match wiring.downstream {
        Some(endpoint) => Some(Source::bind(ctx, endpoint, options.hop.clone())?),
        None => None,
    };
    let results_at = format!("inproc://pipeline-results-{}", STAGE_IDS.fetch_add(1, Relaxed));
    let results = ctx.socket(zmq::PULL)?;
    results.set_rcvhwm(0)?;
    results.bind(&results_at)?;
    // A window per upstream is in the stage, normally; after an upstream's reset (it restarted)
    // its old messages and a new window can overlap for a while: those wait in `io_loop`.
    let capacity = (options.hop.window as usize * inlets.len()).max(1);
    let (jobs, queue) = mpsc::sync_channel::<Job>(capacity);
    let queue = Arc::new(Mutex::new(queue));
    std::thread::scope(|scope| {
        let mut workers = Vec::new();
        for i in 0..options.workers.max(1) {
            let (queue, handler, dead_letter, results_at) =
                (queue.clone(), &handler, &dead_letter, &results_at);
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{i}", options.name))
                .spawn_scoped(scope, move || {
                    work(ctx, results_at, &queue, handler, dead_letter, options, stats, stop)
                });
            match spawned {
                Ok(w) => workers.push(w),
                Err(e) => log::error!("pipeline {}: cannot start a worker: {e}", options.name),
            }
        }
        let result = io_loop(&mut inlets, outlet.as_mut(), &results, &jobs, options, stats, stop);
        drop(jobs);
        for w in workers {
            if let Ok(Err(e)) = w.join() {
                log::error!("pipeline {}: a worker failed: {e}", options.name);
            }
        }
        result
    })
}

fn io_loop(
    inlets: &mut [Inlet],
    mut outlet: Option<&mut Source>,
    results: &zmq::Socket,
    jobs: &mpsc::SyncSender<Job>,
    options: &StageOptions,
    stats: &StageStats,
    stop: &ShutdownWatch,
) -> zmq::Result<()> {
    let mut taken: HashMap<u64, Taken> = HashMap::new();
    // Results waiting for downstream credit; bounded by what upstream granted.
    let mut waiting: VecDeque<(u64, u8, Vec<u8>)> = VecDeque::new();
    let mut next_key: u64 = session_base();
    // Jobs the channel has no room for yet (after a reset, see `run`); past
    // `limit` a sender is ignoring our credit, and its deliveries are dropped, counted.
    let mut overflow: VecDeque<Job> = VecDeque::new();
    let limit = 2 * options.hop.window as usize * inlets.len();
    let mut overrun = 0u64;
    let mut frames: Vec<zmq::Message> = Vec::with_capacity(3);
    let tick = options.hop.ping_every.min(Duration::from_millis(100)).as_millis() as i64;
    while !stop.is_set() {
        {
            let mut items: Vec<zmq::PollItem<'_>> = Vec::with_capacity(inlets.len() + 3);
            items.extend(inlets.iter().map(|i| i.socket().as_poll_item(zmq::POLLIN)));
            items.push(results.as_poll_item(zmq::POLLIN));
            items.push(stop.poll_item());
            if let Some(o) = &outlet {
                items.push(o.socket().as_poll_item(zmq::POLLIN));
            }
            zmq::poll(&mut items, tick)?;
        }
        // Results from workers.
        loop {
            match crate::frames::recv_frames(results, &mut frames, 3, zmq::DONTWAIT)? {
                crate::frames::Received::Message if frames.len() == 3 => {
                    let key = u64::from_be_bytes(frames[0][..8].try_into().unwrap_or_default());
                    match (frames[1][..].first(), outlet.is_some()) {
                        (Some(&FORWARD), true) => waiting.push_back((key, 0, frames[2].to_vec())),
                        // A sink's result: it is done with the message.
                        (Some(&FORWARD | &DONE), false) => {
                            stats.out.fetch_add(1, Relaxed);
                            finish(inlets, &mut taken, key, stats)?;
                        }
                        (Some(&DONE), true) => {
                            stats.filtered.fetch_add(1, Relaxed);
                            finish(inlets, &mut taken, key, stats)?;
                        }
                        _ => finish(inlets, &mut taken, key, stats)?,
                    }
                }
                crate::frames::Received::WouldBlock => break,
                _ => {}
            }
        }
        // Acknowledgements from downstream.
        if let Some(o) = outlet.as_deref_mut() {
            let mut done = Vec::new();
            o.service(|key| done.push(key))?;
            for key in done {
                stats.out.fetch_add(1, Relaxed);
                finish(inlets, &mut taken, key, stats)?;
            }
            while let Some((key, skip, body)) = waiting.pop_front() {
                if let Err(body) = o.try_send(key, skip, body)? {
                    waiting.push_front((key, skip, body));
                    break;
                }
            }
        }
        // New messages from upstream.
        for (i, inlet) in inlets.iter_mut().enumerate() {
            while let Some(d) = inlet.recv()? {
                stats.received.fetch_add(1, Relaxed);
                let key = next_key;
                next_key = next_key.wrapping_add(1);
                taken.insert(key, Taken { inlet: i, id: d.id });
                // A replayed dead letter passes through the stages before the one that gave up on it.
                if d.skip > 0 && outlet.is_some() {
                    waiting.push_back((key, d.skip - 1, d.body));
                } else if overflow.len() >= limit {
                    taken.remove(&key);
                    overrun += 1;
                } else {
                    overflow.push_back(Job { key, body: d.body });
                }
            }
            inlet.flush()?;
        }
        while let Some(job) = overflow.pop_front() {
            match jobs.try_send(job) {
                Ok(()) => {}
                Err(mpsc::TrySendError::Full(job)) => {
                    overflow.push_front(job);
                    break;
                }
                Err(mpsc::TrySendError::Disconnected(_)) => return Ok(()),
            }
        }
        stats.queued.store(taken.len() as u64, Relaxed);
        let from_peers =
            inlets.iter().map(Inlet::malformed).sum::<u64>() + outlet.as_ref().map_or(0, |o| o.malformed());
        stats.malformed.store(from_peers + overrun, Relaxed);
    }
    Ok(())
}

/// Message `key` is done here: acknowledge it upstream.
fn finish(
    inlets: &mut [Inlet],
    taken: &mut HashMap<u64, Taken>,
    key: u64,
    stats: &StageStats,
) -> zmq::Result<()> {
    if let Some(t) = taken.remove(&key) {
        if let Some(inlet) = inlets.get_mut(t.inlet) {
            inlet.ack(t.id)?;
        }
    }
    stats.queued.store(taken.len() as u64, Relaxed);
    Ok(())
}

/// Ids this stage gives its results start at a per-run random point: a
/// receiver still finishing messages of a previous run acknowledges ids this
/// run has not used, never one it holds.
fn session_base() -> u64 {
    fastrand_u64() & !0xFFFF_FFFF
}

fn fastrand_u64() -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let mut x =
        nanos as u64 ^ (std::process::id() as u64).rotate_left(32) ^ STAGE_IDS.load(Relaxed).rotate_left(48);
    // splitmix64: spreads the bits.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// What [`run`] takes, named once for the functions it hands them to.
trait Handle: Fn(&[u8]) -> Handled + Sync {}
impl<T: Fn(&[u8]) -> Handled + Sync> Handle for T {}
trait Bury: Fn(DeadLetter) -> Result<(), String> + Sync {}
impl<T: Fn(DeadLetter) -> Result<(), String> + Sync> Bury for T {}

#[allow(clippy::too_many_arguments)]
fn work<H: Handle, D: Bury>(
    ctx: &zmq::Context,
    results_at: &str,
    queue: &Mutex<mpsc::Receiver<Job>>,
    handler: &H,
    dead_letter: &D,
    options: &StageOptions,
    stats: &StageStats,
    stop: &ShutdownWatch,
) -> zmq::Result<()> {
    let results = ctx.socket(zmq::PUSH)?;
    results.set_sndhwm(0)?;
    results.connect(results_at)?;
    loop {
        let job = {
            let queue = queue.lock().unwrap_or_else(|e| e.into_inner());
            match queue.recv() {
                Ok(job) => job,
                Err(_) => return Ok(()),
            }
        };
        let mut backoff = Backoff::new(options.retry_min, options.retry_max);
        let mut attempts = 0;
        let outcome = loop {
            attempts += 1;
            match handler(&job.body) {
                Ok(out) => break Some(Ok(out)),
                Err(error) => {
                    stats.failed.fetch_add(1, Relaxed);
                    if attempts >= options.max_attempts.max(1) {
                        let letter = DeadLetter {
                            stage: options.name.clone(),
                            position: options.position,
                            error,
                            attempts,
                            body: job.body.clone(),
                        };
                        if store_dead_letter(dead_letter, letter, &mut backoff, stop) {
                            stats.dead_lettered.fetch_add(1, Relaxed);
                            break Some(Err(()));
                        }
                        // Stopping: not acknowledged, so upstream keeps it.
                        break None;
                    }
                    if stop.sleep(backoff.next_delay()) {
                        break None;
                    }
                    stats.retried.fetch_add(1, Relaxed);
                }
            }
        };
        let key = job.key.to_be_bytes();
        match outcome {
            Some(Ok(Some(out))) => results.send_multipart([&key[..], &[FORWARD], &out], 0)?,
            Some(Ok(None)) => results.send_multipart([&key[..], &[DONE], &[]], 0)?,
            Some(Err(())) => results.send_multipart([&key[..], &[DEAD], &[]], 0)?,
            None => return Ok(()),
        }
    }
}

/// Stores a dead letter, retrying while the store fails; false if stopped first.
fn store_dead_letter<D: Bury>(
    dead_letter: &D,
    letter: DeadLetter,
    backoff: &mut Backoff,
    stop: &ShutdownWatch,
) -> bool {
    loop {
        match dead_letter(letter.clone()) {
            Ok(()) => return true,
            Err(e) => {
                log::error!("pipeline {}: cannot store a dead letter: {e}", letter.stage);
                if stop.sleep(backoff.next_delay()) {
                    return false;
                }
            }
        }
    }
}
