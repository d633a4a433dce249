//! A pipeline's source, on its own thread: reads ingest's journal from this
//! pipeline's cursor, the buses it takes from, and dead letters marked for
//! replay, and sends them into the first stage as credit allows.
//!
//! The journal cursor moves only over entries the pipeline acknowledged
//! (acknowledgements come back out of order from parallel workers: the cursor
//! stops below the oldest one still out). A restart resends from the cursor.
//!
//! Ids on the hop tell the sources apart: journal keys as they are, dead
//! letters and bus messages with a high tag bit.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use transport::pipeline::{HopOptions, Source};
use transport::ShutdownWatch;

use super::dlq::Dlq;
use crate::journal::Journal;

const REPLAY: u64 = 1 << 63;
const BUS: u64 = 1 << 62;
const TAGS: u64 = REPLAY | BUS;

/// Cursor moves are flushed this often (the ingest store flushes on every batch anyway).
const FLUSH_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, Default)]
pub struct SourceStats {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    /// Turns (10 ms at most each) the source had journal entries or dead letters to send
    /// and no credit: the backpressure.
    pub waited: AtomicU64,
    /// Malformed messages from the first stage (counted, dropped).
    pub malformed: AtomicU64,
    pub in_flight: AtomicU64,
    /// Journal entries that could not be decoded (skipped, counted).
    pub undecodable: AtomicU64,
    pub replayed: AtomicU64,
    pub cursor: AtomicU64,
}

pub struct Feed {
    pub pipeline: String,
    pub journal: Option<(Arc<Journal>, String, Vec<String>)>,
    /// In-process bus taps and the prefixes to take from each.
    pub buses: Vec<(String, Vec<String>)>,
    pub dlq: Arc<Dlq>,
}

pub fn run(
    ctx: &zmq::Context,
    feed: &Feed,
    endpoint: &str,
    hop: HopOptions,
    stats: &SourceStats,
    stop: &ShutdownWatch,
) -> zmq::Result<()> {
    let mut source = Source::bind(ctx, endpoint, hop.clone())?;
    let mut taps = Vec::new();
    for (tap, prefixes) in &feed.buses {
        let socket = ctx.socket(zmq::SUB)?;
        // Best effort: while the pipeline cannot take more, the tap drops past this.
        socket.set_rcvhwm(hop.window as i32)?;
        socket.connect(tap)?;
        if prefixes.is_empty() {
            socket.set_subscribe(b"")?;
        }
        for prefix in prefixes {
            socket.set_subscribe(prefix.as_bytes())?;
        }
        taps.push(socket);
    }
    let mut state = Journaled::default();
    if let Some((journal, consumer, _)) = &feed.journal {
        let cursor = journal.cursor_of(consumer).unwrap_or(0);
        state.read_after = cursor;
        state.cursor = cursor;
        stats.cursor.store(cursor, Relaxed);
    }
    let mut bus_seq = 0u64;
    let mut frames: Vec<zmq::Message> = Vec::with_capacity(2);
    let mut last_flush = Instant::now();
    // Not the store's: the first turn looks for letters marked before a restart.
    let (mut seen_generation, mut replays_left) = (u64::MAX, false);
    while !stop.is_set() {
        {
            let mut items = vec![source.socket().as_poll_item(zmq::POLLIN), stop.poll_item()];
            if source.ready() {
                items.extend(taps.iter().map(|t| t.as_poll_item(zmq::POLLIN)));
            }
            // Short: new journal entries are noticed within this.
            zmq::poll(&mut items, 10)?;
        }
        let mut acked = Vec::new();
        source.service(|id| acked.push(id))?;
        for id in acked {
            stats.acked.fetch_add(1, Relaxed);
            if id & REPLAY != 0 {
                state.replaying.remove(&(id & !TAGS));
                if let Err(e) = feed.dlq.remove(id & !TAGS) {
                    log::error!("pipeline {}: {e}", feed.pipeline);
                }
            } else if id & BUS == 0 {
                state.out.remove(&id);
            }
        }
        // Dead letters to replay, first: they wait longest. The store is scanned
        // only after a replay request, or while marked letters are left over.
        let generation = feed.dlq.replay_generation.load(Relaxed);
        if source.ready() && (generation != seen_generation || replays_left) {
            seen_generation = generation;
            let busy = |id: u64| state.replaying.contains(&id);
            match feed.dlq.marked(&feed.pipeline, hop.window as usize, busy) {
                Ok(letters) => {
                    replays_left = letters.len() == hop.window as usize;
                    for (id, letter) in letters {
                        if source.try_send(id | REPLAY, letter.position, letter.body)?.is_err() {
                            replays_left = true;
                            break;
                        }
                        state.replaying.insert(id);
                        stats.replayed.fetch_add(1, Relaxed);
                        stats.sent.fetch_add(1, Relaxed);
                    }
                }
                Err(e) => log::error!("pipeline {}: reading dead letters: {e}", feed.pipeline),
            }
        }
        if let Some((journal, consumer, prefixes)) = &feed.journal {
            send_journal(&mut source, journal, prefixes, &mut state, hop.window as usize, stats)?;
            let done = state.done_upto();
            if done > state.cursor {
                match journal.acked_by(consumer, done) {
                    Ok(_) => {
                        state.cursor = done;
                        stats.cursor.store(done, Relaxed);
                    }
                    Err(e) => log::error!("pipeline {}: moving the cursor: {e}", feed.pipeline),
                }
            }
            if last_flush.elapsed() >= FLUSH_EVERY {
                last_flush = Instant::now();
                if let Err(e) = journal.flush() {
                    log::error!("pipeline {}: flushing the cursor: {e}", feed.pipeline);
                }
            }
        }
        for tap in &taps {
            while source.ready() {
                match transport::frames::recv_frames(tap, &mut frames, 2, zmq::DONTWAIT)? {
                    transport::frames::Received::WouldBlock => break,
                    transport::frames::Received::TooManyFrames => continue,
                    transport::frames::Received::Message => {}
                }
                let Some((_, payload)) = proto::bus::split(&frames) else { continue };
                // A durable sample comes, once, from the journal: the bus adds only best-effort ones.
                if feed.journal.is_some() && proto::sample::Sample::is_durable(payload) {
                    continue;
                }
                bus_seq += 1;
                if source.try_send(bus_seq | BUS, 0, payload.to_vec())?.is_ok() {
                    stats.sent.fetch_add(1, Relaxed);
                }
            }
        }
        // Backpressure, counted: journal entries or dead letters waiting, and no credit.
        // (Bus messages cannot be counted waiting: PUB/SUB drops them past the window, unseen.)
        let journal_waiting = feed.journal.as_ref().is_some_and(|(j, _, _)| j.newest() > state.read_after);
        if !source.ready() && (journal_waiting || replays_left) {
            stats.waited.fetch_add(1, Relaxed);
        }
        stats.malformed.store(source.malformed(), Relaxed);
        stats.in_flight.store(source.in_flight() as u64, Relaxed);
    }
    if let Some((journal, _, _)) = &feed.journal {
        let _ = journal.flush();
    }
    Ok(())
}

/// Where the source is in the journal.
#[derive(Default)]
struct Journaled {
    /// Last key read (sent or skipped).
    read_after: u64,
    /// Keys sent and not yet acknowledged.
    out: BTreeSet<u64>,
    /// The cursor as last stored.
    cursor: u64,
    /// Dead letters being replayed (so a scan does not send them twice).
    replaying: BTreeSet<u64>,
}

impl Journaled {
    /// Every key up to this one is done with.
    fn done_upto(&self) -> u64 {
        match self.out.first() {
            Some(&oldest) => oldest - 1,
            None => self.read_after,
        }
    }
}

fn send_journal(
    source: &mut Source,
    journal: &Journal,
    prefixes: &[String],
    state: &mut Journaled,
    batch: usize,
    stats: &SourceStats,
) -> zmq::Result<()> {
    while source.ready() {
        let read = match journal.read(state.read_after, batch) {
            Ok(read) if !read.is_empty() => read,
            Ok(_) => return Ok(()),
            Err(e) => {
                log::error!("reading the ingest journal: {e}");
                return Ok(());
            }
        };
        for (key, entry) in read {
            let Some(entry) = entry else {
                stats.undecodable.fetch_add(1, Relaxed);
                state.read_after = key;
                continue;
            };
            if !prefixes.iter().any(|p| entry.topic.starts_with(p.as_str())) {
                state.read_after = key;
                continue;
            }
            if source.try_send(key, 0, entry.payload)?.is_err() {
                return Ok(());
            }
            state.out.insert(key);
            state.read_after = key;
            stats.sent.fetch_add(1, Relaxed);
        }
    }
    Ok(())
}
