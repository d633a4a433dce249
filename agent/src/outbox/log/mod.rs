//! The outbox's append-only, segmented log (`<data_dir>/outbox/`).
//!
//! - `<first index, 20 digits>.seg`: segments of framed records ([`record`]),
//!   named by the index of their first record and closed at about
//!   `segment_bytes`. Records are appended at the end of the last one.
//! - `head`: the head position (every record below it is retired: the hub
//!   has it, or it was dropped) and the loss counters, rewritten whole
//!   (temporary file, fdatasync, rename) at a flush when they changed.
//! - `quarantine`: copies of damaged bytes found in segments, each after a
//!   line naming where they were; it stops growing at [`QUARANTINE_MAX`].
//!
//! In memory there is one small entry per segment and one read buffer, never
//! anything per record, so memory does not grow with the backlog.
//!
//! Appends are buffered and written at a flush (or when [`WRITE_CHUNK`] has
//! gathered), then synced (fdatasync) at the flush. A write that fails (a
//! full disk) is cut back to the last whole record, the records it held are
//! counted as lost, and the next write tries again: no error is latched.
//!
//! Opening (`repair`) checks every record: a torn tail (a crash in the middle
//! of an append) is cut off; damaged bytes elsewhere are skipped by finding
//! the next marker that starts an intact record, copied to the quarantine,
//! counted, and the segment rewritten without them, every intact record kept.
//! Records must have rising indices; one that does not is damage too.
//! Whole segments are deleted once every record in them is retired.
//!
//! Here: appending, flushing, reading and retiring. Beside it: `head` (the
//! head file's format), `open` (opening, repair and verification) and
//! `scan` (reading a segment file record by record, past damage).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

mod head;
mod open;
mod scan;

pub use self::head::Counters;
use self::head::HeadState;
use self::scan::{read_region, step, Reader, Step};
use super::record::{self, HEADER, MAX_PAYLOAD};

pub const DEFAULT_SEGMENT_BYTES: u64 = 1 << 20;
/// Buffered appends are written out once this much has gathered.
pub const WRITE_CHUNK: usize = 64 * 1024;
/// The quarantine file stops growing here (damage is still counted).
pub const QUARANTINE_MAX: u64 = 1 << 20;
const READ_AHEAD: usize = 64 * 1024;
const HEAD_FILE: &str = "head";
const QUARANTINE_FILE: &str = "quarantine";

pub fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// One segment's bookkeeping.
#[derive(Clone, Debug)]
struct Seg {
    first: u64,
    /// Bytes in the file (for the last segment: written so far, buffered appends not included).
    len: u64,
    /// Live (not retired) records in it, and their bytes (buffered ones included).
    records: u64,
    bytes: u64,
    /// The highest index appended to or found in it.
    last: Option<u64>,
}

/// A write that failed: the buffered records it held are gone (none is left half-written).
#[derive(Debug, thiserror::Error)]
#[error("{source} ({lost} record(s) lost)")]
pub struct WriteError {
    pub lost: u64,
    #[source]
    pub source: io::Error,
}

/// A record at the head of the log.
pub struct Front {
    pub index: u64,
    pub payload: Vec<u8>,
    off: u64,
    len: u64,
}

/// What opening found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Recovery {
    /// Damaged stretches found (quarantined, when repairing).
    pub damaged: u64,
    pub damaged_bytes: u64,
    /// Bytes of torn tails cut off.
    pub torn_bytes: u64,
}

/// Fsyncs to do outside the outbox's lock, then the head to persist.
pub struct SyncJob {
    files: Vec<Arc<File>>,
    dir: Option<PathBuf>,
    head: Option<(PathBuf, HeadState)>,
}

impl SyncJob {
    pub fn run(&self) -> io::Result<()> {
        for file in &self.files {
            file.sync_data()?;
        }
        if let Some(dir) = &self.dir {
            File::open(dir)?.sync_all()?;
        }
        if let Some((dir, state)) = &self.head {
            let tmp = dir.join("head.tmp");
            let mut file = File::create(&tmp)?;
            file.write_all(&state.encode())?;
            file.sync_data()?;
            std::fs::rename(&tmp, dir.join(HEAD_FILE))?;
        }
        Ok(())
    }
}

pub struct Log {
    dir: PathBuf,
    segment_bytes: u64,
    /// False for inspection (`agent store status|verify|dump`): no file is changed.
    writable: bool,
    segs: VecDeque<Seg>,
    /// Every record below this index is retired.
    head: u64,
    /// Where the first live byte of `segs[0]` is.
    head_off: u64,
    next: u64,
    records: u64,
    bytes: u64,
    /// The last segment, open for appending.
    tail: Option<Arc<File>>,
    /// Written since its last sync.
    tail_dirty: bool,
    /// A failed write could not be cut back: cut before the next one.
    truncate_tail: bool,
    pending: Vec<u8>,
    pending_records: u64,
    /// The caller's tag of the last buffered record, and of the last written one.
    pending_tag: Option<(u64, u64)>,
    written_tag: Option<(u64, u64)>,
    /// Records lost to failed writes (or refused appends), ever (kept in `head`).
    lost: u64,
    /// Earlier tails written since their last sync.
    unsynced: Vec<Arc<File>>,
    dir_dirty: bool,
    reader: Option<(u64, Reader)>,
    pub counters: Counters,
    quarantined: u64,
    quarantined_bytes: u64,
    quarantine_len: u64,
    persisted: Option<HeadState>,
    pub recovery: Recovery,
}

impl Log {
    fn remove_segment_file(&mut self, first: u64) {
        if let Err(e) = std::fs::remove_file(self.dir.join(segment_name(first))) {
            log::warn!("cannot delete outbox segment {}: {e}", segment_name(first));
        }
        self.dir_dirty = true;
        if self.reader.as_ref().is_some_and(|(f, _)| *f == first) {
            self.reader = None;
        }
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn head(&self) -> u64 {
        self.head
    }

    /// The index the next append gets.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    pub fn segments(&self) -> usize {
        self.segs.len()
    }

    pub fn quarantined(&self) -> (u64, u64) {
        (self.quarantined, self.quarantined_bytes)
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Bytes the log takes on disk (segments, buffered appends, quarantine).
    pub fn disk_bytes(&self) -> u64 {
        self.segs.iter().map(|s| s.len).sum::<u64>() + self.pending.len() as u64 + self.quarantine_len
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Buffers a record; it is written at the next [`Log::write_out`].
    /// `tag` is the caller's name for it ([`Log::written_tag`]). Returns its index.
    pub fn append(&mut self, payload: &[u8], tag: (u64, u64)) -> Result<u64, WriteError> {
        if !self.writable {
            return Err(self.refuse(io::Error::other("the outbox is open read-only")));
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(self.refuse(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a record of {} bytes is over the limit of {MAX_PAYLOAD}", payload.len()),
            )));
        }
        let len = (HEADER + payload.len()) as u64;
        let used = self.segs.back().map_or(0, |s| s.len + self.pending.len() as u64);
        if self.tail.is_none() || (used > 0 && used + len > self.segment_bytes) {
            if let Err(e) = self.write_out() {
                self.lost += 1;
                return Err(WriteError { lost: e.lost + 1, source: e.source });
            }
            if let Err(e) = self.roll(self.next) {
                return Err(self.refuse(e));
            }
        }
        let index = self.next;
        record::frame(index, payload, &mut self.pending);
        self.pending_records += 1;
        self.pending_tag = Some(tag);
        self.next += 1;
        let seg = self.segs.back_mut().expect("a tail segment");
        seg.records += 1;
        seg.bytes += len;
        seg.last = Some(index);
        self.records += 1;
        self.bytes += len;
        Ok(index)
    }

    /// An append that was not made: counted as lost.
    pub fn refuse(&mut self, source: io::Error) -> WriteError {
        self.lost += 1;
        WriteError { lost: 1, source }
    }

    /// Records lost to failed writes or refused appends, ever.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// The tag of the last record written to its file (not necessarily synced yet).
    pub fn written_tag(&self) -> Option<(u64, u64)> {
        self.written_tag
    }

    pub fn set_written_tag(&mut self, tag: Option<(u64, u64)>) {
        self.written_tag = tag;
    }

    /// Starts a new last segment whose first record will be `first`.
    fn roll(&mut self, first: u64) -> io::Result<()> {
        let path = self.dir.join(segment_name(first));
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        if let Some(old) = self.tail.take() {
            if std::mem::take(&mut self.tail_dirty) {
                self.unsynced.push(old);
            }
        }
        self.segs.push_back(Seg { first, len: 0, records: 0, bytes: 0, last: None });
        self.tail = Some(Arc::new(file));
        self.dir_dirty = true;
        self.truncate_tail = false;
        // The old last segment may have been wholly retired already.
        if self.segs.len() > 1 && self.segs[0].records == 0 && self.head_off >= self.segs[0].len {
            self.drop_front_segment();
        }
        Ok(())
    }

    /// Writes the buffered records to the last segment. On failure they are
    /// dropped (and counted in the error), and the segment is cut back to its
    /// last whole record.
    pub fn write_out(&mut self) -> Result<(), WriteError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (Some(file), Some(seg)) = (self.tail.clone(), self.segs.back_mut()) else {
            unreachable!("buffered records always have a tail segment");
        };
        let mut result = Ok(());
        if self.truncate_tail {
            result = file.set_len(seg.len);
        }
        if result.is_ok() {
            self.truncate_tail = false;
            result = file.write_all_at(&self.pending, seg.len);
        }
        match result {
            Ok(()) => {
                seg.len += self.pending.len() as u64;
                self.tail_dirty = true;
                self.pending.clear();
                self.pending_records = 0;
                self.written_tag = self.pending_tag.take().or(self.written_tag);
                Ok(())
            }
            Err(source) => {
                // No half record may stay behind: a later write goes where this one began.
                if file.set_len(seg.len).is_err() {
                    self.truncate_tail = true;
                }
                let (lost, bytes) = (self.pending_records, self.pending.len() as u64);
                seg.records -= lost;
                seg.bytes -= bytes;
                self.records -= lost;
                self.bytes -= bytes;
                self.pending.clear();
                self.pending.shrink_to(WRITE_CHUNK * 2);
                self.pending_records = 0;
                self.pending_tag = None;
                self.lost += lost;
                Err(WriteError { lost, source })
            }
        }
    }

    /// Writes out buffered records and gathers what a flush must sync; run
    /// the job (outside any lock), then [`Log::finish_flush`].
    pub fn prepare_flush(&mut self) -> (Result<(), WriteError>, SyncJob) {
        let written = self.write_out();
        let mut files = std::mem::take(&mut self.unsynced);
        if std::mem::take(&mut self.tail_dirty) {
            files.extend(self.tail.clone());
        }
        let dir = std::mem::take(&mut self.dir_dirty).then(|| self.dir.clone());
        let state = self.head_state();
        let head = (self.writable && self.persisted != Some(state)).then(|| (self.dir.clone(), state));
        (written, SyncJob { files, dir, head })
    }

    pub fn finish_flush(&mut self, job: SyncJob, synced: bool) {
        if synced {
            if let Some((_, state)) = job.head {
                self.persisted = Some(state);
            }
            return;
        }
        for file in job.files {
            if !self.unsynced.iter().any(|f| Arc::ptr_eq(f, &file)) {
                self.unsynced.push(file);
            }
        }
        self.dir_dirty |= job.dir.is_some();
    }

    fn head_state(&self) -> HeadState {
        HeadState {
            head: self.head,
            counters: self.counters,
            quarantined: self.quarantined,
            quarantined_bytes: self.quarantined_bytes,
            lost: self.lost,
        }
    }

    fn reader(&mut self, first: u64) -> io::Result<&mut Reader> {
        if self.reader.as_ref().is_none_or(|(f, _)| *f != first) {
            self.reader = Some((first, Reader::open(&self.dir.join(segment_name(first)))?));
        }
        Ok(&mut self.reader.as_mut().expect("just set").1)
    }

    /// Reads buffered records past the written end: write them out first.
    fn readable(&mut self) -> Result<(), io::Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.write_out().map_err(|e| io::Error::new(e.source.kind(), e.to_string()))
    }

    fn drop_front_segment(&mut self) {
        let seg = self.segs.pop_front().expect("a front segment");
        self.records -= seg.records;
        self.bytes -= seg.bytes;
        if let Some(last) = seg.last {
            self.head = self.head.max(last + 1);
        }
        self.head_off = 0;
        if self.writable {
            self.remove_segment_file(seg.first);
        }
    }

    /// The oldest live record. Damage met at the head is quarantined and
    /// counted; wholly retired segments are deleted on the way.
    pub fn front(&mut self) -> io::Result<Option<Front>> {
        loop {
            let Some(seg) = self.segs.front() else { return Ok(None) };
            let (first, end, only) = (seg.first, seg.len, self.segs.len() == 1);
            if self.head_off >= end {
                if only {
                    if !self.pending.is_empty() {
                        self.readable()?;
                        continue;
                    }
                    return Ok(None);
                }
                self.drop_front_segment();
                continue;
            }
            let off = self.head_off;
            let head = self.head;
            match step(self.reader(first)?, off, end)? {
                Step::Record { index, len, payload } if index >= head => {
                    return Ok(Some(Front { index, payload, off, len }));
                }
                Step::Record { len, .. } => self.head_off += len,
                Step::End => self.head_off = end,
                Step::Damaged { until } => {
                    let until = until.unwrap_or(end);
                    log::error!(
                        "outbox segment {}: {} damaged bytes at offset {off}: quarantined",
                        segment_name(first),
                        until - off
                    );
                    let room = self.quarantine_room();
                    let bytes = read_region(&self.reader(first)?.file, off, until, room)?;
                    self.quarantine(&segment_name(first), off, until - off, &bytes);
                    self.head_off = until;
                    self.recount_front()?;
                }
            }
        }
    }

    /// Retires the record `front` returned.
    pub fn consume(&mut self, front: &Front) {
        self.head_off = front.off + front.len;
        self.head = front.index + 1;
        let seg = self.segs.front_mut().expect("front segment");
        seg.records = seg.records.saturating_sub(1);
        seg.bytes = seg.bytes.saturating_sub(front.len);
        self.records = self.records.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(front.len);
    }

    /// Moves the oldest record to the quarantine (its payload could not be
    /// decoded though its checksum held: written by a newer format, say).
    pub fn set_aside_front(&mut self) -> io::Result<()> {
        let Some(front) = self.front()? else { return Ok(()) };
        let first = self.segs[0].first;
        log::error!("outbox record {} cannot be decoded: quarantined", front.index);
        let room = self.quarantine_room();
        let bytes = read_region(&self.reader(first)?.file, front.off, front.off + front.len, room)?;
        self.quarantine(&segment_name(first), front.off, front.len, &bytes);
        self.consume(&front);
        Ok(())
    }

    /// The payload of the newest record on disk.
    pub fn last_payload(&mut self) -> io::Result<Option<Vec<u8>>> {
        self.readable()?;
        for i in (0..self.segs.len()).rev() {
            let (first, end) = (self.segs[i].first, self.segs[i].len);
            let reader = self.reader(first)?;
            let (mut at, mut last) = (0, None);
            loop {
                match step(reader, at, end)? {
                    Step::Record { len, payload, .. } => {
                        at += len;
                        last = Some(payload);
                    }
                    Step::End | Step::Damaged { until: None } => break,
                    Step::Damaged { until: Some(until) } => at = until,
                }
            }
            if last.is_some() {
                return Ok(last);
            }
        }
        Ok(None)
    }

    /// Retires the oldest record; returns its index and size.
    pub fn pop_front(&mut self) -> io::Result<Option<(u64, u64)>> {
        let Some(front) = self.front()? else { return Ok(None) };
        self.consume(&front);
        Ok(Some((front.index, front.len)))
    }

    /// Retires every record up to and including `through`; returns how many.
    pub fn retire(&mut self, through: u64) -> io::Result<u64> {
        let mut removed = 0;
        loop {
            while self.segs.len() > 1 && self.segs[0].last.is_none_or(|l| l <= through) {
                removed += self.segs[0].records;
                self.drop_front_segment();
            }
            match self.front()? {
                Some(front) if front.index <= through => {
                    self.consume(&front);
                    removed += 1;
                }
                _ => break,
            }
        }
        self.head = self.head.max(through.saturating_add(1).min(self.next));
        Ok(removed)
    }

    /// Calls `f` with live records from the head on, in order, until it
    /// returns false. Stops before damage that is not at the head (the next
    /// read from the head deals with it), unless `past_damage`.
    pub fn read(&mut self, past_damage: bool, f: impl FnMut(u64, &[u8]) -> bool) -> io::Result<()> {
        self.read_from(0, past_damage, f)
    }

    /// [`Log::read`], from the live record at index `from` on (segments
    /// wholly before it are not read).
    pub fn read_from(
        &mut self,
        from: u64,
        past_damage: bool,
        mut f: impl FnMut(u64, &[u8]) -> bool,
    ) -> io::Result<()> {
        if self.front()?.is_none() {
            return Ok(());
        }
        self.readable()?;
        let head = self.head.max(from);
        let spans: Vec<(u64, u64, u64)> = self
            .segs
            .iter()
            .enumerate()
            .filter(|(_, s)| s.last.is_none_or(|last| last >= from))
            .map(|(i, s)| (s.first, if i == 0 { self.head_off } else { 0 }, s.len))
            .collect();
        for (first, mut off, end) in spans {
            loop {
                match step(self.reader(first)?, off, end)? {
                    Step::Record { index, len, payload } => {
                        off += len;
                        if index >= head && !f(index, &payload) {
                            return Ok(());
                        }
                    }
                    Step::End => break,
                    Step::Damaged { until: Some(until) } if past_damage => off = until,
                    Step::Damaged { until: None } if past_damage => break,
                    Step::Damaged { .. } => return Ok(()),
                }
            }
        }
        Ok(())
    }
}
