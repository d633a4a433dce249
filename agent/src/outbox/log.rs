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

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::record::{self, Parsed, HEADER, MARKER, MAX_PAYLOAD};

pub const DEFAULT_SEGMENT_BYTES: u64 = 1 << 20;
/// Buffered appends are written out once this much has gathered.
pub const WRITE_CHUNK: usize = 64 * 1024;
/// The quarantine file stops growing here (damage is still counted).
pub const QUARANTINE_MAX: u64 = 1 << 20;
const READ_AHEAD: usize = 64 * 1024;
const HEAD_FILE: &str = "head";
const QUARANTINE_FILE: &str = "quarantine";
const HEAD_MAGIC: &[u8; 8] = b"PLNTHEAD";
/// Version 2 added the records lost to failed writes; version 1 is still read.
const HEAD_VERSION: u32 = 2;

pub fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// Counters kept with the head position, for the outbox above.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub dropped: u64,
    pub dropped_for_space: u64,
}

/// What is persisted in `head`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct HeadState {
    head: u64,
    counters: Counters,
    quarantined: u64,
    quarantined_bytes: u64,
    /// Records lost to failed writes (or refused appends), ever.
    lost: u64,
}

impl HeadState {
    fn encode(&self) -> Vec<u8> {
        let mut out = HEAD_MAGIC.to_vec();
        out.extend(HEAD_VERSION.to_le_bytes());
        for v in [
            self.head,
            self.counters.dropped,
            self.counters.dropped_for_space,
            self.quarantined,
            self.quarantined_bytes,
            self.lost,
        ] {
            out.extend(v.to_le_bytes());
        }
        out.extend(crc32fast::hash(&out).to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<HeadState> {
        if bytes.len() < 12 || &bytes[..8] != HEAD_MAGIC {
            return None;
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        let values = match version {
            1 => 5,
            2 => 6,
            _ => return None,
        };
        if bytes.len() != 8 + 4 + values * 8 + 4 {
            return None;
        }
        let (body, sum) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != sum {
            return None;
        }
        let v = |i: usize| u64::from_le_bytes(body[12 + 8 * i..20 + 8 * i].try_into().expect("8 bytes"));
        Some(HeadState {
            head: v(0),
            counters: Counters { dropped: v(1), dropped_for_space: v(2) },
            quarantined: v(3),
            quarantined_bytes: v(4),
            lost: if values > 5 { v(5) } else { 0 },
        })
    }
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
    /// Opens the log in `dir` (creating it), repairing what it finds.
    pub fn open(dir: &Path, segment_bytes: u64) -> io::Result<Log> {
        std::fs::create_dir_all(dir)?;
        Self::open_with(dir, segment_bytes, true)
    }

    /// Opens the log to look at it: nothing on disk is changed, damage is
    /// skipped when reading and reported by [`Log::recovery`].
    pub fn inspect(dir: &Path) -> io::Result<Log> {
        Self::open_with(dir, DEFAULT_SEGMENT_BYTES, false)
    }

    fn open_with(dir: &Path, segment_bytes: u64, writable: bool) -> io::Result<Log> {
        let saved = match std::fs::read(dir.join(HEAD_FILE)) {
            Ok(bytes) => HeadState::decode(&bytes).or_else(|| {
                log::warn!(
                    "outbox head file is damaged: starting from the oldest record (some may be resent)"
                );
                None
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let saved_state = saved.unwrap_or_default();
        let mut log = Log {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(4096),
            writable,
            segs: VecDeque::new(),
            head: saved_state.head,
            head_off: 0,
            next: 1,
            records: 0,
            bytes: 0,
            tail: None,
            tail_dirty: false,
            truncate_tail: false,
            pending: Vec::new(),
            pending_records: 0,
            pending_tag: None,
            written_tag: None,
            lost: saved_state.lost,
            unsynced: Vec::new(),
            dir_dirty: false,
            reader: None,
            counters: saved_state.counters,
            quarantined: saved_state.quarantined,
            quarantined_bytes: saved_state.quarantined_bytes,
            quarantine_len: std::fs::metadata(dir.join(QUARANTINE_FILE)).map_or(0, |m| m.len()),
            persisted: saved,
            recovery: Recovery::default(),
        };
        let mut firsts = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if let Some(first) = parse_segment_name(&name) {
                        firsts.push(first);
                    } else if writable && name.ends_with(".tmp") {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && !writable => {}
            Err(e) => return Err(e),
        }
        firsts.sort_unstable();
        let mut prev_last = 0;
        let mut scanned = Vec::new();
        for (i, &first) in firsts.iter().enumerate() {
            let is_last = i + 1 == firsts.len();
            let (seg, first_live) = log.recover_segment(first, is_last, &mut prev_last)?;
            scanned.push((seg, first_live));
        }
        log.next = (prev_last + 1).max(log.head).max(1);
        // Segments before the first live record hold nothing to send.
        let keep_from =
            scanned.iter().position(|(seg, _)| seg.records > 0).unwrap_or(scanned.len().saturating_sub(1));
        for (i, (seg, first_live)) in scanned.into_iter().enumerate() {
            if i < keep_from {
                if writable {
                    log.remove_segment_file(seg.first);
                }
                continue;
            }
            if log.segs.is_empty() {
                log.head_off = first_live.unwrap_or(seg.len);
            }
            log.records += seg.records;
            log.bytes += seg.bytes;
            log.segs.push_back(seg);
        }
        if writable {
            if let Some(last) = log.segs.back() {
                if last.len < log.segment_bytes {
                    let path = dir.join(segment_name(last.first));
                    log.tail = Some(Arc::new(OpenOptions::new().read(true).write(true).open(path)?));
                }
            }
        }
        Ok(log)
    }

    fn remove_segment_file(&mut self, first: u64) {
        if let Err(e) = std::fs::remove_file(self.dir.join(segment_name(first))) {
            log::warn!("cannot delete outbox segment {}: {e}", segment_name(first));
        }
        self.dir_dirty = true;
        if self.reader.as_ref().is_some_and(|(f, _)| *f == first) {
            self.reader = None;
        }
    }

    /// Checks one segment at open; when writable, cuts a torn tail, and
    /// quarantines damage and rewrites the segment without it.
    fn recover_segment(
        &mut self,
        first: u64,
        is_last: bool,
        prev_last: &mut u64,
    ) -> io::Result<(Seg, Option<u64>)> {
        let path = self.dir.join(segment_name(first));
        let start_last = *prev_last;
        let mut reader = Reader::open(&path)?;
        let len = reader.file.metadata()?.len();
        let mut scan = scan(&mut reader, len, is_last, self.head, prev_last)?;
        self.recovery.damaged += scan.damage.len() as u64;
        self.recovery.damaged_bytes += scan.damage.iter().map(|(a, b)| b - a).sum::<u64>();
        self.recovery.torn_bytes += scan.torn_at.map_or(0, |t| len - t);
        let mut len = len;
        if self.writable && (!scan.damage.is_empty() || scan.torn_at.is_some()) {
            for &(from, to) in &scan.damage {
                log::error!(
                    "outbox segment {}: {} damaged bytes at offset {from}: quarantined",
                    segment_name(first),
                    to - from
                );
                let bytes = read_region(&reader.file, from, to, self.quarantine_room())?;
                self.quarantine(&segment_name(first), from, to - from, &bytes);
            }
            if let Some(torn) = scan.torn_at {
                log::warn!(
                    "outbox segment {}: torn tail of {} bytes cut off",
                    segment_name(first),
                    len - torn
                );
            }
            let fixed = if scan.damage.is_empty() {
                let torn = scan.torn_at.expect("torn");
                OpenOptions::new().write(true).open(&path).and_then(|f| {
                    f.set_len(torn)?;
                    f.sync_all()
                })
            } else {
                self.dir_dirty = true;
                rewrite(&self.dir, first, &mut reader, len, start_last)
            };
            match fixed {
                Ok(()) => {
                    // Read it again as it now is.
                    *prev_last = start_last;
                    reader = Reader::open(&path)?;
                    len = reader.file.metadata()?.len();
                    scan = scan_clean(&mut reader, len, self.head, prev_last)?;
                }
                // A full disk, say: go on with the segment as it is (reads
                // skip the damage) rather than refuse to start.
                Err(e) => {
                    log::error!("outbox segment {}: cannot repair it now: {e}", segment_name(first));
                    if let Some(torn) = scan.torn_at {
                        len = torn;
                        // Appends go where the torn record began; cut the rest first.
                        self.truncate_tail |= is_last;
                    }
                }
            }
        } else if let Some(torn) = scan.torn_at {
            len = torn;
        }
        let seg = Seg { first, len, records: scan.live, bytes: scan.live_bytes, last: scan.last };
        Ok((seg, scan.first_live))
    }

    fn quarantine_room(&self) -> u64 {
        QUARANTINE_MAX.saturating_sub(self.quarantine_len)
    }

    /// Counts one damaged stretch and keeps a copy of its bytes while the quarantine has room.
    fn quarantine(&mut self, segment: &str, offset: u64, len: u64, bytes: &[u8]) {
        self.quarantined += 1;
        self.quarantined_bytes += len;
        if !self.writable {
            return;
        }
        let header = format!("\n# segment {segment} offset {offset} length {len} kept {}\n", bytes.len());
        if self.quarantine_len + (header.len() + bytes.len()) as u64 > QUARANTINE_MAX {
            log::warn!("the outbox quarantine file is full: damaged bytes counted, not kept");
            return;
        }
        let result = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(QUARANTINE_FILE))
            .and_then(|mut f| f.write_all(header.as_bytes()).and_then(|_| f.write_all(bytes)));
        match result {
            Ok(()) => self.quarantine_len += (header.len() + bytes.len()) as u64,
            Err(e) => log::warn!("cannot copy damaged outbox bytes to the quarantine: {e}"),
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
    pub fn read(&mut self, past_damage: bool, mut f: impl FnMut(u64, &[u8]) -> bool) -> io::Result<()> {
        if self.front()?.is_none() {
            return Ok(());
        }
        self.readable()?;
        let head = self.head;
        let spans: Vec<(u64, u64, u64)> = self
            .segs
            .iter()
            .enumerate()
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

    /// Recounts the live records of the front segment after damage was skipped in it.
    fn recount_front(&mut self) -> io::Result<()> {
        let Some(seg) = self.segs.front() else { return Ok(()) };
        let (first, end, off) = (seg.first, seg.len, self.head_off);
        let (records, bytes) = self.count_live(first, off, end)?;
        let pending = if self.segs.len() == 1 { self.pending_records } else { 0 };
        let pending_bytes = if self.segs.len() == 1 { self.pending.len() as u64 } else { 0 };
        let seg = self.segs.front_mut().expect("front");
        self.records = self.records - seg.records + records + pending;
        self.bytes = self.bytes - seg.bytes + bytes + pending_bytes;
        seg.records = records + pending;
        seg.bytes = bytes + pending_bytes;
        Ok(())
    }

    /// The live records (at or past the head) of segment `first` between
    /// offsets `from` and `end`, and their bytes, stepping over damage.
    fn count_live(&mut self, first: u64, from: u64, end: u64) -> io::Result<(u64, u64)> {
        let head = self.head;
        let (mut records, mut bytes, mut at) = (0, 0, from);
        let reader = self.reader(first)?;
        loop {
            match step(reader, at, end)? {
                Step::Record { index, len, .. } => {
                    at += len;
                    if index >= head {
                        records += 1;
                        bytes += len;
                    }
                }
                Step::End | Step::Damaged { until: None } => return Ok((records, bytes)),
                Step::Damaged { until: Some(until) } => at = until,
            }
        }
    }

    /// Counts the live records again from the files (after an inconsistency).
    pub fn recount(&mut self) -> io::Result<()> {
        self.readable()?;
        let (mut total, mut total_bytes) = (0, 0);
        for i in 0..self.segs.len() {
            let (first, end) = (self.segs[i].first, self.segs[i].len);
            let from = if i == 0 { self.head_off } else { 0 };
            let (records, bytes) = self.count_live(first, from, end)?;
            self.segs[i].records = records;
            self.segs[i].bytes = bytes;
            total += records;
            total_bytes += bytes;
        }
        self.records = total;
        self.bytes = total_bytes;
        Ok(())
    }

    /// Intact live records and damaged stretches, from the files as they are.
    pub fn verify(&mut self) -> io::Result<(u64, u64)> {
        self.readable()?;
        let (mut intact, mut damaged) = (0, 0);
        let head = self.head;
        let count = self.segs.len();
        for i in 0..count {
            let (first, end) = (self.segs[i].first, self.segs[i].len);
            let reader = self.reader(first)?;
            let len = reader.file.metadata()?.len().max(end);
            let mut last = 0;
            let scan = scan(reader, len, i + 1 == count, head, &mut last)?;
            intact += scan.live;
            damaged += scan.damage.len() as u64;
        }
        Ok((intact, damaged))
    }

    /// Quarantines damage found in the live segments now and rewrites them
    /// without it (`agent store repair`); returns the stretches moved.
    pub fn repair(&mut self) -> io::Result<u64> {
        if !self.writable {
            return Err(io::Error::other("the outbox is open read-only"));
        }
        self.readable()?;
        let before = self.quarantined;
        let count = self.segs.len();
        let mut prev_last = 0;
        for i in 0..count {
            let first = self.segs[i].first;
            self.reader = None;
            let old = self.segs[i].clone();
            let (seg, first_live) = self.recover_segment(first, i + 1 == count, &mut prev_last)?;
            self.records = self.records - old.records + seg.records;
            self.bytes = self.bytes - old.bytes + seg.bytes;
            if i == 0 {
                self.head_off = first_live.unwrap_or(seg.len);
            }
            self.segs[i] = seg;
        }
        if let (Some(last), Some(_)) = (self.segs.back(), self.tail.as_ref()) {
            let path = self.dir.join(segment_name(last.first));
            self.tail = Some(Arc::new(OpenOptions::new().read(true).write(true).open(path)?));
        }
        Ok(self.quarantined - before)
    }
}

/// Bytes of `file` in [from, to), at most `limit` of them.
fn read_region(file: &File, from: u64, to: u64, limit: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; (to - from).min(limit) as usize];
    let n = read_full_at(file, &mut buf, from)?;
    buf.truncate(n);
    Ok(buf)
}

fn read_full_at(file: &File, buf: &mut [u8], mut off: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], off) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                off += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A segment file read through one buffer.
struct Reader {
    file: File,
    buf: Vec<u8>,
    at: u64,
}

impl Reader {
    fn open(path: &Path) -> io::Result<Reader> {
        Ok(Reader { file: File::open(path)?, buf: Vec::new(), at: 0 })
    }

    /// The bytes from `off` to at most `end`: at least `need` of them unless `end` comes first.
    fn bytes(&mut self, off: u64, need: usize, end: u64) -> io::Result<&[u8]> {
        if off >= end {
            return Ok(&[]);
        }
        let avail = end.saturating_sub(off);
        let need = (need as u64).min(avail) as usize;
        let held = off >= self.at && off + need as u64 <= self.at + self.buf.len() as u64;
        if !held {
            let want = need.max(READ_AHEAD).min(avail as usize);
            self.buf.resize(want, 0);
            let n = read_full_at(&self.file, &mut self.buf, off)?;
            self.buf.truncate(n);
            self.at = off;
        }
        let start = (off - self.at) as usize;
        let stop = ((end - self.at) as usize).min(self.buf.len()).max(start);
        Ok(&self.buf[start..stop])
    }
}

enum Step {
    Record {
        index: u64,
        len: u64,
        payload: Vec<u8>,
    },
    End,
    /// Not a record here; the next intact one starts at `until` (None: none follows).
    Damaged {
        until: Option<u64>,
    },
}

/// The record at `off` of a segment readable up to `end`.
fn step(reader: &mut Reader, off: u64, end: u64) -> io::Result<Step> {
    if off >= end {
        return Ok(Step::End);
    }
    let mut parsed = record::parse(reader.bytes(off, HEADER, end)?);
    if let Parsed::Short { need } = parsed {
        parsed = record::parse(reader.bytes(off, need, end)?);
    }
    match parsed {
        Parsed::Record { index, len } => {
            let bytes = reader.bytes(off, len, end)?;
            Ok(Step::Record { index, len: len as u64, payload: bytes[HEADER..len].to_vec() })
        }
        Parsed::Short { .. } | Parsed::Bad => Ok(Step::Damaged { until: resync(reader, off + 1, end)? }),
    }
}

/// The offset of the first intact record at or after `from`.
fn resync(reader: &mut Reader, from: u64, end: u64) -> io::Result<Option<u64>> {
    let mut p = from;
    while p + HEADER as u64 <= end {
        let chunk = reader.bytes(p, READ_AHEAD, end)?;
        if chunk.len() < MARKER.len() {
            return Ok(None);
        }
        let scanned = chunk.len() - (MARKER.len() - 1);
        match chunk.windows(MARKER.len()).position(|w| w == MARKER) {
            Some(i) => {
                let at = p + i as u64;
                let mut parsed = record::parse(reader.bytes(at, HEADER, end)?);
                if let Parsed::Short { need } = parsed {
                    parsed = record::parse(reader.bytes(at, need, end)?);
                }
                if matches!(parsed, Parsed::Record { .. }) {
                    return Ok(Some(at));
                }
                p = at + 1;
            }
            None => p += scanned as u64,
        }
    }
    Ok(None)
}

struct Scan {
    live: u64,
    live_bytes: u64,
    last: Option<u64>,
    first_live: Option<u64>,
    /// Damaged stretches [from, to).
    damage: Vec<(u64, u64)>,
    /// Where a torn tail begins (the last segment only).
    torn_at: Option<u64>,
}

/// Reads a whole segment: records (rising indices after `prev_last`), damage, a torn tail.
fn scan(reader: &mut Reader, len: u64, is_last: bool, head: u64, prev_last: &mut u64) -> io::Result<Scan> {
    let mut s =
        Scan { live: 0, live_bytes: 0, last: None, first_live: None, damage: Vec::new(), torn_at: None };
    let mut off = 0;
    loop {
        let (from, until) = match step(reader, off, len)? {
            Step::End => break,
            Step::Record { index, len: n, .. } if index > *prev_last => {
                *prev_last = index;
                s.last = Some(index);
                if index >= head {
                    s.live += 1;
                    s.live_bytes += n;
                    s.first_live.get_or_insert(off);
                }
                off += n;
                continue;
            }
            // An index that does not rise is not where it belongs: damage.
            Step::Record { .. } => (off, resync(reader, off + 1, len)?),
            Step::Damaged { until } => (off, until),
        };
        match until {
            Some(until) => {
                s.damage.push((from, until));
                off = until;
            }
            None => {
                // Nothing intact follows. In the last segment a record cut
                // short by the end of the file, or zeros (blocks the file
                // system allocated but the crash left unwritten), is a torn
                // append: never acknowledged as durable, cut off, not damage.
                let torn = is_last && len - from <= (HEADER + MAX_PAYLOAD) as u64 && {
                    let tail = read_region(&reader.file, from, len, len - from)?;
                    matches!(record::parse(&tail), Parsed::Short { .. }) || tail.iter().all(|&b| b == 0)
                };
                if !torn {
                    s.damage.push((from, len));
                }
                s.torn_at = Some(from);
                break;
            }
        }
    }
    Ok(s)
}

/// [`scan`] of a segment known to be clean.
fn scan_clean(reader: &mut Reader, len: u64, head: u64, prev_last: &mut u64) -> io::Result<Scan> {
    scan(reader, len, true, head, prev_last)
}

/// Rewrites a segment with its intact records only (through a temporary
/// file, synced, renamed over it).
fn rewrite(dir: &Path, first: u64, reader: &mut Reader, len: u64, mut prev_last: u64) -> io::Result<()> {
    let tmp = dir.join(format!("{}.tmp", segment_name(first)));
    let mut out = std::io::BufWriter::new(File::create(&tmp)?);
    let mut off = 0;
    let mut framed = Vec::new();
    loop {
        match step(reader, off, len)? {
            Step::End | Step::Damaged { until: None } => break,
            Step::Damaged { until: Some(until) } => off = until,
            Step::Record { index, len: n, payload } => {
                off += n;
                if index > prev_last {
                    prev_last = index;
                    framed.clear();
                    record::frame(index, &payload, &mut framed);
                    out.write_all(&framed)?;
                }
            }
        }
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(segment_name(first)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_of_the_first_version_is_read() {
        let state = HeadState {
            head: 7,
            counters: Counters { dropped: 2, dropped_for_space: 3 },
            quarantined: 1,
            quarantined_bytes: 40,
            lost: 5,
        };
        assert_eq!(HeadState::decode(&state.encode()), Some(state));
        // Version 1: the same without `lost`.
        let mut v1 = HEAD_MAGIC.to_vec();
        v1.extend(1u32.to_le_bytes());
        for v in [7u64, 2, 3, 1, 40] {
            v1.extend(v.to_le_bytes());
        }
        v1.extend(crc32fast::hash(&v1).to_le_bytes());
        assert_eq!(HeadState::decode(&v1), Some(HeadState { lost: 0, ..state }));
        let mut damaged = state.encode();
        damaged[20] ^= 1;
        assert_eq!(HeadState::decode(&damaged), None);
        assert_eq!(HeadState::decode(&v1[..v1.len() - 1]), None);
    }
}
