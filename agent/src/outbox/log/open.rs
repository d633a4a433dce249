//! Opening a log: every segment is read through, a torn tail cut off, and
//! damage skipped to the next intact record, copied to the quarantine and
//! counted (when writable: an inspection changes nothing); and the checks
//! and repairs `agent store verify|repair` run on a stopped agent.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::sync::Arc;

use super::scan::{rewrite, scan, scan_clean, step, Reader, Step};
use super::*;

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

    pub(super) fn quarantine_room(&self) -> u64 {
        QUARANTINE_MAX.saturating_sub(self.quarantine_len)
    }

    /// Counts one damaged stretch and keeps a copy of its bytes while the quarantine has room.
    pub(super) fn quarantine(&mut self, segment: &str, offset: u64, len: u64, bytes: &[u8]) {
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

    /// Recounts the live records of the front segment after damage was skipped in it.
    pub(super) fn recount_front(&mut self) -> io::Result<()> {
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
