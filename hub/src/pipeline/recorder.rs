//! The recorder sink: one JSON message per line, rotated by size and by
//! time, rotated files removed past a count or an age
//! (`proto::pipeline::rotation` decides, this does the files).
//!
//! Each line is written to the OS before the message is acknowledged, so a
//! hub killed at any point loses no acknowledged line (a power cut can lose
//! what the OS had not written yet: the file is not fsynced per line).
//! Rotation and retention are checked at each write.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use proto::pipeline::rotation::Policy;

use crate::bus::recorder::{numbered, open_append};

pub struct Recorder {
    path: PathBuf,
    policy: Policy,
    /// The current file, its size and when it was opened; `None` after a failure (reopened next time).
    file: Option<(File, u64, Instant)>,
    line: Vec<u8>,
}

impl Recorder {
    pub fn new(path: PathBuf, policy: Policy) -> Recorder {
        Recorder { path, policy, file: None, line: Vec::new() }
    }

    /// Appends `message` (JSON) as one line. Not JSON is an error: the
    /// message is retried, then dead-lettered, never written half-valid.
    pub fn write(&mut self, message: &[u8]) -> Result<(), String> {
        if serde_json::from_slice::<serde::de::IgnoredAny>(message).is_err() {
            return Err("not JSON: a recorder writes JSON lines".into());
        }
        self.write_line(message).map_err(|e| {
            self.file = None;
            format!("{}: {e}", self.path.display())
        })
    }

    fn write_line(&mut self, message: &[u8]) -> std::io::Result<()> {
        let due = match &self.file {
            Some((_, size, opened)) => self.policy.rotate_now(*size, opened.elapsed()),
            None => false,
        };
        if due {
            self.file = None;
            self.rotate()?;
        }
        if self.file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let size = drop_partial_line(&self.path)?;
            let file = open_append(&self.path)?;
            self.file = Some((file, size, Instant::now()));
        }
        let (file, size, _) = self.file.as_mut().expect("opened above");
        // One write per line: the whole line reaches the OS, or none of it is counted.
        self.line.clear();
        self.line.extend_from_slice(message);
        self.line.push(b'\n');
        file.write_all(&self.line)?;
        *size += self.line.len() as u64;
        Ok(())
    }

    /// Shifts `path.N` to `path.N+1`, `path` to `path.1`, then applies retention.
    fn rotate(&mut self) -> std::io::Result<()> {
        let mut rotated = self.rotated();
        rotated.sort_unstable_by_key(|r| std::cmp::Reverse(r.0));
        for (n, _) in &rotated {
            std::fs::rename(numbered(&self.path, *n), numbered(&self.path, n + 1))?;
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))?;
        for n in self.policy.expired(&self.rotated()) {
            std::fs::remove_file(numbered(&self.path, n))?;
        }
        Ok(())
    }

    /// Rotated files that exist, with their ages (since last modified).
    fn rotated(&self) -> Vec<(u32, std::time::Duration)> {
        let now = SystemTime::now();
        (1..)
            .map_while(|n| {
                let modified = std::fs::metadata(numbered(&self.path, n)).and_then(|m| m.modified()).ok()?;
                Some((n, now.duration_since(modified).unwrap_or_default()))
            })
            .collect()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A hub killed in the middle of a write can leave half a line at the end of
/// the file; its message was not acknowledged, so it comes again. The half is
/// cut off (a whole line is never longer than a message, at most 1 MiB here)
/// so the next line starts on a line of its own. Returns the size after.
fn drop_partial_line(path: &Path) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let file = match std::fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    if size == 0 {
        return Ok(0);
    }
    let tail = size.min(2 << 20);
    let mut reader = &file;
    reader.seek(SeekFrom::Start(size - tail))?;
    let mut bytes = Vec::with_capacity(tail as usize);
    reader.take(tail).read_to_end(&mut bytes)?;
    if bytes.last() == Some(&b'\n') {
        return Ok(size);
    }
    let keep = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => size - tail + i as u64 + 1,
        None if tail == size => 0,
        None => return Ok(size),
    };
    log::warn!("recorder: cut {} bytes of a line left unfinished by a crash", size - keep);
    file.set_len(keep)?;
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rotates_by_size_and_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.jsonl");
        let policy = Policy { max_bytes: 100, max_age: None, keep: 2, retain: None };
        let mut r = Recorder::new(path.clone(), policy);
        for i in 0..40 {
            r.write(format!("{{\"i\":{i}}}").as_bytes()).unwrap();
        }
        assert!(r.write(b"not json").is_err());
        let files = |n| std::fs::read_to_string(numbered(&path, n)).unwrap_or_default();
        assert!(!files(1).is_empty() && !files(2).is_empty() && files(3).is_empty(), "keep = 2");
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("{\"i\":39}\n"));
    }

    #[test]
    fn half_a_line_left_by_a_crash_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":").unwrap();
        let mut r =
            Recorder::new(path.clone(), Policy { max_bytes: 1 << 20, max_age: None, keep: 1, retain: None });
        r.write(b"{\"c\":3}").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":1}\n{\"c\":3}\n");
    }

    #[test]
    fn rotates_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let policy = Policy { max_bytes: 1 << 20, max_age: Some(Duration::ZERO), keep: 5, retain: None };
        let mut r = Recorder::new(path.clone(), policy);
        r.write(b"1").unwrap();
        r.write(b"2").unwrap();
        assert_eq!(std::fs::read_to_string(numbered(&path, 1)).unwrap(), "1\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "2\n");
    }
}
