//! Reading a segment file: one buffer, record by record, resynchronising
//! past damage on the next marker that starts an intact record, and
//! rewriting a segment without its damaged stretches.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::super::record::{self, Parsed, HEADER, MARKER, MAX_PAYLOAD};
use super::{segment_name, READ_AHEAD};

/// Bytes of `file` in [from, to), at most `limit` of them.
pub(super) fn read_region(file: &File, from: u64, to: u64, limit: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; (to - from).min(limit) as usize];
    let n = read_full_at(file, &mut buf, from)?;
    buf.truncate(n);
    Ok(buf)
}

pub(super) fn read_full_at(file: &File, buf: &mut [u8], mut off: u64) -> io::Result<usize> {
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
pub(super) struct Reader {
    pub(super) file: File,
    pub(super) buf: Vec<u8>,
    pub(super) at: u64,
}

impl Reader {
    pub(super) fn open(path: &Path) -> io::Result<Reader> {
        Ok(Reader { file: File::open(path)?, buf: Vec::new(), at: 0 })
    }

    /// The bytes from `off` to at most `end`: at least `need` of them unless `end` comes first.
    pub(super) fn bytes(&mut self, off: u64, need: usize, end: u64) -> io::Result<&[u8]> {
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

pub(super) enum Step {
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
pub(super) fn step(reader: &mut Reader, off: u64, end: u64) -> io::Result<Step> {
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
pub(super) fn resync(reader: &mut Reader, from: u64, end: u64) -> io::Result<Option<u64>> {
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

pub(super) struct Scan {
    pub(super) live: u64,
    pub(super) live_bytes: u64,
    pub(super) last: Option<u64>,
    pub(super) first_live: Option<u64>,
    /// Damaged stretches [from, to).
    pub(super) damage: Vec<(u64, u64)>,
    /// Where a torn tail begins (the last segment only).
    pub(super) torn_at: Option<u64>,
}

/// Reads a whole segment: records (rising indices after `prev_last`), damage, a torn tail.
pub(super) fn scan(
    reader: &mut Reader,
    len: u64,
    is_last: bool,
    head: u64,
    prev_last: &mut u64,
) -> io::Result<Scan> {
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
pub(super) fn scan_clean(reader: &mut Reader, len: u64, head: u64, prev_last: &mut u64) -> io::Result<Scan> {
    scan(reader, len, true, head, prev_last)
}

/// Rewrites a segment with its intact records only (through a temporary
/// file, synced, renamed over it).
pub(super) fn rewrite(
    dir: &Path,
    first: u64,
    reader: &mut Reader,
    len: u64,
    mut prev_last: u64,
) -> io::Result<()> {
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
