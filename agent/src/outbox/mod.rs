//! The outbox: every durable sample is appended here first, sent to the hub
//! in order, and retired only when the hub has acknowledged it.
//!
//! It is an append-only segmented log ([`log`]) under `<data_dir>/outbox/`,
//! ordered by a record index that rises by one per append (never by the boot
//! epoch). Bounded by records and by bytes (framed records); when full the
//! oldest telemetry is dropped and counted, so sampling never waits on the
//! network. While the file system has less than its reserve free (as seen
//! at the last flush) the outbox does not grow: each append drops the
//! oldest, counted apart (`dropped_for_space`), and the agent says so until
//! it stops. The reserve is `min_free_bytes` when configured, else sized
//! from the file system ([`reserve_for`]).
//!
//! Appends are durable at the next flush; `durable` tells which sample that
//! covers. A write that fails (a full disk) loses the buffered samples it
//! held, counts them (`store_errors`), leaves no partial record behind, and
//! marks the store unhealthy until a flush succeeds again with some room
//! left ([`HEALTHY_FREE_BYTES`]): nothing latches. What is already on disk
//! is still read and sent meanwhile, and retiring it makes room.
//!
//! Every record is sent under the agent id it was made with ([`ids`]).
//!
//! The agent keeps two: its durable samples, and its alarm events
//! ([`Record`] is what either holds), so a full sample outbox never drops an
//! alarm and events can be sent ahead of a telemetry backlog.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use proto::sample::Sample;
use serde::Serialize;

pub mod ids;
pub mod log;
pub mod record;
mod space;

use self::ids::Ids;
use self::log::{Counters, Log, WriteError};
pub use self::record::Record;

/// A record's place in the outbox: its log index.
pub type Key = u64;

pub type Result<T> = std::io::Result<T>;

pub use self::space::{mib, reserve_for, RESERVE_MAX, RESERVE_MIN, RESERVE_PERCENT};

/// After a failure the store counts as working again at a flush that
/// succeeds with at least this much free (a small write can still fit into
/// the last, partly used block of a full disk).
pub const HEALTHY_FREE_BYTES: u64 = log::WRITE_CHUNK as u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxOptions {
    pub max_records: u64,
    pub max_bytes: u64,
    pub segment_bytes: u64,
    /// Free space on the file system below which the outbox stops growing;
    /// `None`: sized from the file system ([`reserve_for`]).
    pub min_free_bytes: Option<u64>,
}

impl OutboxOptions {
    /// No bounds (tools and benchmarks).
    pub fn unbounded() -> OutboxOptions {
        OutboxOptions {
            max_records: u64::MAX,
            max_bytes: u64::MAX,
            segment_bytes: log::DEFAULT_SEGMENT_BYTES,
            min_free_bytes: Some(0),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OutboxStats {
    pub records: u64,
    pub bytes: u64,
    pub max_records: u64,
    pub max_bytes: u64,
    /// Samples dropped because the outbox was full (since the outbox was created).
    pub dropped: u64,
    /// Samples dropped because the disk was short of `min_free_bytes`.
    pub dropped_for_space: u64,
    /// Damaged stretches set aside (each may have held more than one record), and their bytes.
    pub quarantined: u64,
    pub quarantined_bytes: u64,
    /// Samples lost to failed writes (since the outbox was created).
    pub store_errors: u64,
    pub segments: u64,
    pub disk_bytes: u64,
    /// Free space on the outbox's file system at the last flush, and its size.
    pub free_bytes: Option<u64>,
    pub fs_bytes: Option<u64>,
    /// The reserve in force, and whether it was sized from the file system.
    pub min_free_bytes: u64,
    pub reserve_sized: bool,
    pub space_low: bool,
    /// Every record below `head` is retired; the next append gets `next`.
    pub head: u64,
    pub next: u64,
    /// The last (epoch, seq) appended, and the last known to be on disk.
    pub last_appended: Option<(u64, u64)>,
    pub durable: Option<(u64, u64)>,
}

/// Whether the outbox can write: the last error and since when (wall-clock
/// ns), cleared by the next flush that writes and syncs with room to spare.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Health {
    pub error: Option<String>,
    pub since_wall_ns: Option<i64>,
    /// Failed operations since the agent started.
    pub errors: u64,
}

impl Health {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// A batch the uplink has sent and awaits an answer for.
#[derive(Clone, Copy, Debug, Default)]
struct InFlight {
    /// The last key of the batch on the wire.
    through: Key,
    /// Records of that batch dropped while it was on the wire: counted as
    /// dropped unless the hub acknowledges the batch.
    dropped: u64,
    dropped_for_space: u64,
}

#[derive(Clone, Copy)]
enum Why {
    Full,
    Space,
}

struct Inner {
    log: Log,
    opts: OutboxOptions,
    /// The id new records are made under, and which id made which records.
    id: Arc<str>,
    ids: Ids,
    /// Batches on the wire, oldest first.
    flights: std::collections::VecDeque<InFlight>,
    last_appended: Option<(u64, u64)>,
    durable: Option<(u64, u64)>,
    /// (free, total) bytes of the file system at the last flush.
    space: Option<(u64, u64)>,
    reserve: u64,
    space_low: bool,
    /// When the disk was last said to be short of the reserve, and the drops then.
    space_warned: Option<(Instant, u64)>,
    health: Health,
}

/// The oldest records, all made under one agent id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Peeked<R = Sample> {
    /// The id they were made under: the batch's agent.
    pub agent: Arc<str>,
    pub records: Vec<(Key, R)>,
}

pub struct Outbox<R = Sample> {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// One flush at a time (the periodic one may still run when the last one starts).
    flushing: Mutex<()>,
    record: PhantomData<fn() -> R>,
}

fn write_error(e: WriteError) -> std::io::Error {
    std::io::Error::new(e.source.kind(), e.to_string())
}

impl Inner {
    fn drop_oldest(&mut self, why: Why) -> Result<bool> {
        let Some((index, _)) = self.log.pop_front()? else { return Ok(false) };
        let flight = self.flights.iter_mut().find(|f| index <= f.through);
        match (why, flight) {
            (Why::Full, flight) => {
                self.log.counters.dropped += 1;
                if let Some(flight) = flight {
                    flight.dropped += 1;
                }
            }
            (Why::Space, flight) => {
                self.log.counters.dropped_for_space += 1;
                if let Some(flight) = flight {
                    flight.dropped_for_space += 1;
                }
            }
        }
        Ok(true)
    }

    fn failed(&mut self, what: &str, e: &std::io::Error) {
        self.health.errors += 1;
        if self.health.error.is_none() {
            ::log::error!("outbox {what} failed: {e} (samples are dropped and counted until it works again)");
            self.health.since_wall_ns = Some(crate::clock::wall_ns());
        }
        self.health.error = Some(format!("{what}: {e}"));
    }

    fn healthy(&mut self) {
        if self.health.error.take().is_some() {
            ::log::info!("outbox writes work again");
            self.health.since_wall_ns = None;
        }
    }

    /// Writes buffered appends out, so reads see them; a failure (a full
    /// disk) loses them, counted, but never stops what is already on disk
    /// from being read, sent and retired.
    fn write_pending(&mut self) {
        if let Err(e) = self.log.write_out() {
            self.failed("write", &write_error(e));
        }
    }

    /// Tries to record a changed id on disk again (see [`ids`]).
    fn write_ids(&mut self) {
        if self.ids.written() {
            return;
        }
        match self.ids.write(self.log.dir()) {
            Ok(()) => ::log::info!("outbox: records from now on are recorded as made by '{}'", self.id),
            Err(e) => self.failed("recording the agent id", &e),
        }
    }
}

impl<R: Record> Outbox<R> {
    /// Opens (creating) the outbox in `dir` for the agent `id`, recovering
    /// what a crash or damage left: torn tails cut off, damaged stretches
    /// quarantined. Records made under another id stay that id's.
    pub fn open(dir: &Path, opts: OutboxOptions, id: &str) -> Result<Outbox<R>> {
        let log = Log::open(dir, opts.segment_bytes)?;
        let ids = Ids::read(dir).unwrap_or_else(|e| {
            ::log::error!("outbox: {e}: its records are taken as made under '{id}'");
            Ids::default()
        });
        let legacy = ids == Ids::default() && log.records() > 0;
        let outbox = Self::with(dir, log, opts, id, ids)?;
        {
            let mut g = outbox.inner();
            let (next, head, records) = (g.log.next_index(), g.log.head(), g.log.records());
            let (changed, previous) = g.ids.adopt(id, next, head);
            if legacy {
                ::log::warn!(
                    "outbox: its {records} record(s) were made before the agent recorded its id: they are sent as '{id}', the id it has now"
                );
            }
            if let Some(previous) = previous.filter(|_| records > 0) {
                ::log::warn!(
                    "outbox: the agent id changed from '{previous}' to '{id}': the samples made as '{previous}' are sent as '{previous}', never relabelled (see `agent status`, outbox.made_as)"
                );
            }
            if changed || !g.ids.written() {
                g.write_ids();
            }
        }
        Ok(outbox)
    }

    /// Opens the outbox of a stopped agent to look at it, changing nothing.
    pub fn inspect(dir: &Path) -> Result<Outbox<R>> {
        let log = Log::inspect(dir)?;
        let ids = Ids::read(dir).unwrap_or_else(|e| {
            ::log::warn!("outbox: {e}");
            Ids::default()
        });
        Self::with(dir, log, OutboxOptions::unbounded(), "", ids)
    }

    fn with(dir: &Path, mut log: Log, opts: OutboxOptions, id: &str, ids: Ids) -> Result<Outbox<R>> {
        let last = log.last_payload()?.and_then(|p| record::decode::<R>(&p).ok()).map(|r| r.key());
        log.set_written_tag(last);
        let recovery = log.recovery;
        if recovery.damaged > 0 {
            ::log::error!(
                "outbox: {} damaged stretch(es), {} bytes, found at open",
                recovery.damaged,
                recovery.damaged_bytes
            );
        }
        let mut inner = Inner {
            log,
            opts,
            id: Arc::from(id),
            ids,
            flights: Default::default(),
            last_appended: last,
            // What survived the last run is on disk by definition.
            durable: last,
            space: None,
            reserve: opts.min_free_bytes.unwrap_or(RESERVE_MIN),
            space_low: false,
            space_warned: None,
            health: Health::default(),
        };
        if dir.exists() {
            inner.space(stores::space(dir));
        }
        Ok(Outbox {
            dir: dir.to_path_buf(),
            inner: Mutex::new(inner),
            flushing: Mutex::new(()),
            record: PhantomData,
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What opening found: damage and torn tails.
    pub fn recovery(&self) -> log::Recovery {
        self.inner().log.recovery
    }

    pub fn stats(&self) -> OutboxStats {
        let g = self.inner();
        let Counters { dropped, dropped_for_space } = g.log.counters;
        let (quarantined, quarantined_bytes) = g.log.quarantined();
        OutboxStats {
            records: g.log.records(),
            bytes: g.log.bytes(),
            max_records: g.opts.max_records,
            max_bytes: g.opts.max_bytes,
            dropped,
            dropped_for_space,
            quarantined,
            quarantined_bytes,
            store_errors: g.log.lost(),
            segments: g.log.segments() as u64,
            disk_bytes: g.log.disk_bytes(),
            free_bytes: g.space.map(|(free, _)| free),
            fs_bytes: g.space.map(|(_, total)| total),
            min_free_bytes: g.reserve,
            reserve_sized: g.opts.min_free_bytes.is_none(),
            space_low: g.space_low,
            head: g.log.head(),
            next: g.log.next_index(),
            last_appended: g.last_appended,
            durable: g.durable,
        }
    }

    pub fn health(&self) -> Health {
        self.inner().health.clone()
    }

    /// While the disk is short of the reserve (new samples drop the oldest):
    /// what that means and what to do.
    pub fn space_warning(&self) -> Option<String> {
        let g = self.inner();
        let (free, total) = g.space?;
        g.space_low.then(|| g.space_warning(free, total))
    }

    /// The stretches of the backlog by the agent id they were made under:
    /// (first index, id); more than one after the id changed under a backlog.
    pub fn made_as(&self) -> Vec<(u64, Arc<str>)> {
        let g = self.inner();
        g.ids.live(g.log.head())
    }

    /// Appends a sample (or event), dropping the oldest first if it would
    /// not fit (or the disk is short of its reserve).
    pub fn append(&self, sample: &R) -> Result<()> {
        let payload = record::payload(sample);
        let key = sample.key();
        let len = (record::HEADER + payload.len()) as u64;
        let mut guard = self.inner();
        let g = &mut *guard;
        let result = (|| {
            if g.ids.would_mislabel(&g.id) {
                // Until the id change is on disk, a record could be read back under the old id.
                let e = std::io::Error::other("the agent id change is not recorded on disk yet");
                return Err(write_error(g.log.refuse(e)));
            }
            if g.space_low && g.log.records() > 0 {
                g.drop_oldest(Why::Space)?;
            }
            while g.log.records() > 0
                && (g.log.records() + 1 > g.opts.max_records || g.log.bytes() + len > g.opts.max_bytes)
            {
                if !g.drop_oldest(Why::Full)? {
                    break;
                }
            }
            g.log.append(&payload, key).map_err(write_error)?;
            g.last_appended = Some(key);
            if g.log.pending_bytes() >= log::WRITE_CHUNK {
                g.log.write_out().map_err(write_error)?;
            }
            Ok(())
        })();
        if let Err(e) = &result {
            g.failed("append", e);
        }
        result
    }

    /// The uplink sent a batch ending at `through` (after any still in
    /// flight) and awaits the answer.
    pub fn sending(&self, through: Key) {
        self.inner().flights.push_back(InFlight { through, ..InFlight::default() });
    }

    /// No answer came for the batches in flight (they are sent again from
    /// the oldest): whatever was dropped from them is lost.
    pub fn not_sent(&self) {
        self.inner().flights.clear();
    }

    /// Recounts records and bytes from the files (after an inconsistency).
    pub fn resync(&self) -> Result<()> {
        let mut g = self.inner();
        let result = g.log.recount();
        if let Err(e) = &result {
            g.failed("recount", e);
        }
        result
    }

    /// The oldest samples, up to `max_records` and about `max_bytes` (at
    /// least one), all made under one agent id. Damage met at the head is
    /// quarantined and counted.
    pub fn peek(&self, max_records: usize, max_bytes: usize) -> Result<Peeked<R>> {
        self.peek_after(None, max_records, max_bytes)
    }

    /// [`Outbox::peek`], of the records after key `after` (the last of the
    /// batches in flight), for the next batch to send before those are
    /// answered. Damage there is left for a read from the head: the batch
    /// comes back empty.
    pub fn peek_after(&self, after: Option<Key>, max_records: usize, max_bytes: usize) -> Result<Peeked<R>> {
        let mut guard = self.inner();
        let g = &mut *guard;
        g.write_pending();
        let from = after.map_or(0, |key| key + 1);
        loop {
            let (mut batch, mut bytes, mut undecodable) = (Vec::new(), 0, false);
            let (ids, mut end) = (&g.ids, None);
            let result = g.log.read_from(from, false, |index, payload| {
                if batch.is_empty() {
                    end = ids.end_of(index);
                }
                let full = batch.len() >= max_records || (bytes > 0 && bytes + payload.len() > max_bytes);
                if full || end.is_some_and(|end| index >= end) {
                    return false;
                }
                match record::decode(payload) {
                    Ok(sample) => {
                        bytes += payload.len();
                        batch.push((index, sample));
                        true
                    }
                    Err(_) => {
                        undecodable = batch.is_empty();
                        false
                    }
                }
            });
            if let Err(e) = result {
                g.failed("read", &e);
                return Err(e);
            }
            if !undecodable || after.is_some() {
                let agent = batch.first().and_then(|(index, _)| g.ids.id_of(*index)).unwrap_or(&g.id).clone();
                return Ok(Peeked { agent, records: batch });
            }
            g.log.set_aside_front()?;
        }
    }

    /// Retires every record up to and including `through`: the hub has them.
    /// Records of that batch the outbox dropped while it was on the wire were
    /// delivered after all, so they no longer count as dropped.
    pub fn retire(&self, through: Key) -> Result<usize> {
        let mut guard = self.inner();
        let g = &mut *guard;
        g.write_pending();
        let removed = g.log.retire(through);
        while let Some(flight) = g.flights.front().copied().filter(|f| f.through <= through) {
            let c = &mut g.log.counters;
            c.dropped = c.dropped.saturating_sub(flight.dropped);
            c.dropped_for_space = c.dropped_for_space.saturating_sub(flight.dropped_for_space);
            g.flights.pop_front();
        }
        match removed {
            Ok(n) => Ok(n as usize),
            Err(e) => {
                g.failed("retire", &e);
                Err(e)
            }
        }
    }

    /// Writes and syncs everything appended so far, persists the head and
    /// the counters, and checks the free space. The syncs run outside the
    /// lock, so appends do not wait on the disk.
    pub fn flush(&self) -> Result<()> {
        let _one = self.flushing.lock().unwrap_or_else(|e| e.into_inner());
        let (written, job, tag) = {
            let mut g = self.inner();
            g.write_ids();
            let (written, job) = g.log.prepare_flush();
            if let Err(e) = &written {
                let e = std::io::Error::new(e.source.kind(), e.to_string());
                g.failed("write", &e);
            }
            (written, job, g.log.written_tag())
        };
        let synced = job.run();
        let space = stores::space(&self.dir);
        let mut g = self.inner();
        g.log.finish_flush(job, synced.is_ok());
        g.space(space);
        match (written, synced) {
            (Ok(()), Ok(())) if g.ids.written() => {
                g.durable = tag;
                // A write squeezed into the last free bytes is no recovery.
                if g.space.is_none_or(|(free, _)| free >= HEALTHY_FREE_BYTES) {
                    g.healthy();
                }
                Ok(())
            }
            (written, synced) => {
                if let Err(e) = &synced {
                    g.failed("sync", e);
                } else {
                    g.durable = tag;
                }
                let unrecorded = || std::io::Error::other("the agent id change is not recorded on disk yet");
                Err(synced.err().or_else(|| written.err().map(write_error)).unwrap_or_else(unrecorded))
            }
        }
    }

    /// The oldest sample's wall time, if any.
    pub fn oldest_wall_ns(&self) -> Option<i64> {
        let mut g = self.inner();
        g.write_pending();
        let front = g.log.front().ok()??;
        record::decode::<R>(&front.payload).ok().map(|r| r.wall_ns())
    }

    /// Counts intact records and damaged stretches (`agent store verify`).
    pub fn verify(&self) -> Result<(u64, u64)> {
        let mut g = self.inner();
        let (intact, damaged) = g.log.verify()?;
        let mut undecodable = 0;
        g.log.read(true, |_, payload| {
            undecodable += u64::from(record::decode::<R>(payload).is_err());
            true
        })?;
        Ok((intact - undecodable, damaged + undecodable))
    }

    /// Quarantines every damaged stretch now (`agent store repair`); returns how many.
    pub fn repair(&self) -> Result<u64> {
        self.inner().log.repair()
    }

    /// Every intact record, oldest first, up to `limit` (`agent store
    /// dump`), with the agent id it was made under (`None`: not recorded).
    pub fn dump(&self, limit: usize) -> Result<Vec<(Option<Arc<str>>, R)>> {
        let mut out = Vec::new();
        let mut guard = self.inner();
        let g = &mut *guard;
        let ids = &g.ids;
        g.log.read(true, |index, payload| {
            if let Ok(sample) = record::decode(payload) {
                out.push((ids.id_of(index).cloned(), sample));
            }
            out.len() < limit
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
