//! Records a bus to a JSON-lines file, one message per line with its receive
//! time, rotated by size: `path` is current, `path.1` the newest rotated file,
//! up to `path.<keep>`. Bounded on disk by about `max_bytes × (keep + 1)`.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proto::Frame;
use serde_json::{json, Value};

use super::config::RecordConfig;

const FLUSH_EVERY: Duration = Duration::from_secs(1);

pub struct Recorder {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: BufWriter<File>,
    size: u64,
    last_flush: Instant,
}

impl Recorder {
    pub fn open(config: &RecordConfig) -> io::Result<Recorder> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(&config.path)?;
        let size = file.metadata()?.len();
        Ok(Recorder {
            path: config.path.clone(),
            max_bytes: config.max_bytes,
            keep: config.keep,
            file: BufWriter::new(file),
            size,
            last_flush: Instant::now(),
        })
    }

    /// Appends one message: `{"ts": RFC 3339, "topic": ..., "payload": JSON or text}`.
    pub fn record<F: Frame>(&mut self, frames: &[F]) -> io::Result<()> {
        let Some((topic, payload)) = proto::bus::split(frames) else { return Ok(()) };
        let payload = serde_json::from_slice::<Value>(payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()));
        let line = json!({
            "ts": jiff::Timestamp::now().to_string(),
            "topic": String::from_utf8_lossy(topic),
            "payload": payload,
        })
        .to_string();
        self.file.write_all(line.as_bytes())?;
        self.file.write_all(b"\n")?;
        self.size += line.len() as u64 + 1;
        if self.size >= self.max_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    pub fn flush_if_due(&mut self) -> io::Result<()> {
        if self.last_flush.elapsed() >= FLUSH_EVERY {
            self.flush()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.last_flush = Instant::now();
        self.file.flush()
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        for i in (1..self.keep).rev() {
            let _ = std::fs::rename(numbered(&self.path, i), numbered(&self.path, i + 1));
        }
        if self.keep > 0 {
            std::fs::rename(&self.path, numbered(&self.path, 1))?;
        } else {
            std::fs::remove_file(&self.path)?;
        }
        self.file = BufWriter::new(open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

pub(crate) fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

pub(crate) fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect()
    }

    #[test]
    fn records_both_layouts_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bus.jsonl");
        let mut r =
            Recorder::open(&RecordConfig { path: path.clone(), max_bytes: 1 << 20, keep: 2 }).unwrap();
        r.record(&[b"org.plantd.Metric.a".to_vec(), br#"{"v":1}"#.to_vec()]).unwrap();
        r.record(&[br#"org.plantd.Metric.b{"v":2}"#.to_vec()]).unwrap();
        r.record(&[b"text".to_vec(), b"not json".to_vec()]).unwrap();
        r.flush().unwrap();
        let got = lines(&path);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0]["topic"], "org.plantd.Metric.a");
        assert_eq!(got[0]["payload"], json!({"v": 1}));
        assert_eq!(got[1]["payload"], json!({"v": 2}));
        assert_eq!(got[2]["payload"], "not json");
        let ts: jiff::Timestamp = got[0]["ts"].as_str().unwrap().parse().unwrap();
        assert!(jiff::Timestamp::now().duration_since(ts).as_secs() < 60);
    }

    #[test]
    fn rotation_caps_size_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bus.jsonl");
        let config = RecordConfig { path: path.clone(), max_bytes: 1024, keep: 2 };
        let mut r = Recorder::open(&config).unwrap();
        for i in 0..200 {
            r.record(&[b"t".to_vec(), format!(r#"{{"i":{i}}}"#).into_bytes()]).unwrap();
        }
        r.flush().unwrap();
        assert!(numbered(&path, 1).exists() && numbered(&path, 2).exists());
        assert!(!numbered(&path, 3).exists(), "only `keep` rotated files remain");
        for p in [path.clone(), numbered(&path, 1), numbered(&path, 2)] {
            let size = std::fs::metadata(&p).unwrap().len();
            assert!(size <= 1024 + 64, "{} is {size} bytes", p.display());
        }
        // The newest messages are in the current file, in order.
        let last = lines(&path);
        assert_eq!(last.last().unwrap()["payload"]["i"], 199);
        let newest_rotated = lines(&numbered(&path, 1));
        let first_current = last[0]["payload"]["i"].as_i64().unwrap();
        assert_eq!(newest_rotated.last().unwrap()["payload"]["i"].as_i64().unwrap() + 1, first_current);
    }
}
