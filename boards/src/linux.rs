//! Any Linux machine: temperatures from thermal zones and hwmon, load,
//! memory, disk and network counters from /proc, /sys and statvfs. Paths are
//! resolved under `root` (normally `/`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::sample::Value;

use crate::driver::{parse_error, read_text, Driver, DriverError};

/// `/sys/class/thermal/thermal_zone<N>/temp`, millidegrees → °C.
pub struct ThermalZone {
    pub path: PathBuf,
}

impl ThermalZone {
    pub fn new(root: &Path, zone: u32) -> Self {
        ThermalZone { path: root.join(format!("sys/class/thermal/thermal_zone{zone}/temp")) }
    }
}

impl Driver for ThermalZone {
    fn read(&mut self, _t: Duration) -> Result<Value, DriverError> {
        read_scaled(self.path.clone(), 1000.0)
    }
}

/// Reads one integer from a file and divides it by `scale`.
pub(crate) fn read_scaled(path: PathBuf, scale: f64) -> Result<Value, DriverError> {
    let (path, text) = read_text(path)?;
    let raw: i64 =
        text.trim().parse().map_err(|e| parse_error(path, &text, format!("not an integer ({e})")))?;
    Ok(Value::Number(raw as f64 / scale))
}

/// An hwmon input (`temp1_input`, `in0_input`, `fan1_input`, ...) of the
/// chip whose `name` file says `chip`. Temperatures (m°C) and voltages (mV)
/// are scaled to °C and V.
pub struct Hwmon {
    pub root: PathBuf,
    pub chip: String,
    pub input: String,
}

impl Driver for Hwmon {
    fn read(&mut self, _t: Duration) -> Result<Value, DriverError> {
        let base = self.root.join("sys/class/hwmon");
        let dirs =
            std::fs::read_dir(&base).map_err(|source| DriverError::Io { path: base.clone(), source })?;
        for dir in dirs.flatten() {
            let name = std::fs::read_to_string(dir.path().join("name")).unwrap_or_default();
            if name.trim() == self.chip {
                let scale =
                    if self.input.starts_with("temp") || self.input.starts_with("in") { 1000.0 } else { 1.0 };
                return read_scaled(dir.path().join(&self.input), scale);
            }
        }
        Err(DriverError::NotFound {
            what: format!("hwmon chip '{}'", self.chip),
            hint: format!(" under {} (see the `name` files there)", base.display()),
        })
    }
}

/// `/proc/loadavg`: the 1, 5 or 15 minute load average.
pub struct LoadAvg {
    pub path: PathBuf,
    pub minutes: u32,
}

impl Driver for LoadAvg {
    fn read(&mut self, _t: Duration) -> Result<Value, DriverError> {
        let (path, text) = read_text(self.path.clone())?;
        let index = match self.minutes {
            1 => 0,
            5 => 1,
            15 => 2,
            m => return Err(DriverError::Invalid(format!("loadavg minutes must be 1, 5 or 15, not {m}"))),
        };
        let field = text
            .split_whitespace()
            .nth(index)
            .ok_or_else(|| parse_error(path.clone(), &text, "too few fields"))?;
        field.parse().map(Value::Number).map_err(|e| parse_error(path, &text, format!("not a number ({e})")))
    }
}

/// `/proc/meminfo`: `available_bytes`, `total_bytes` or `used_percent`.
pub struct Memory {
    pub path: PathBuf,
    pub metric: String,
}

fn meminfo_kb(path: &Path, text: &str, key: &str) -> Result<u64, DriverError> {
    let line = text
        .lines()
        .find(|l| l.split(':').next() == Some(key))
        .ok_or_else(|| parse_error(path.to_path_buf(), text, format!("no {key} line")))?;
    let value =
        line.split_whitespace().nth(1).ok_or_else(|| parse_error(path.to_path_buf(), line, "no value"))?;
    value.parse().map_err(|e| parse_error(path.to_path_buf(), line, format!("not an integer ({e})")))
}

impl Driver for Memory {
    fn read(&mut self, _t: Duration) -> Result<Value, DriverError> {
        let (path, text) = read_text(self.path.clone())?;
        let total = meminfo_kb(&path, &text, "MemTotal")?;
        let available = meminfo_kb(&path, &text, "MemAvailable")?;
        match self.metric.as_str() {
            "available_bytes" => Ok(Value::Integer((available * 1024) as i64)),
            "total_bytes" => Ok(Value::Integer((total * 1024) as i64)),
            "used_percent" if total > 0 => {
                Ok(Value::Number(100.0 * (total - available.min(total)) as f64 / total as f64))
            }
            "used_percent" => Err(parse_error(path, &text, "MemTotal is 0")),
            other => Err(DriverError::Invalid(format!(
                "memory metric '{other}': use available_bytes, total_bytes or used_percent"
            ))),
        }
    }
}

/// statvfs on a mount point: `used_percent` or `free_bytes`.
pub struct Disk {
    pub path: PathBuf,
    pub metric: String,
}

impl Driver for Disk {
    fn read(&mut self, _t: Duration) -> Result<Value, DriverError> {
        let c_path = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes())
            .map_err(|_| DriverError::Invalid(format!("{} contains a NUL byte", self.path.display())))?;
        // SAFETY: statvfs fills the zeroed struct we own; the path is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
            return Err(DriverError::Io { path: self.path.clone(), source: std::io::Error::last_os_error() });
        }
        let block = st.f_frsize as f64;
        let (total, free, available) =
            (st.f_blocks as f64 * block, st.f_bfree as f64 * block, st.f_bavail as f64 * block);
        match self.metric.as_str() {
            "free_bytes" => Ok(Value::Integer(available as i64)),
            "used_percent" if total > 0.0 => Ok(Value::Number(100.0 * (total - free) / total)),
            "used_percent" => Ok(Value::Number(0.0)),
            other => {
                Err(DriverError::Invalid(format!("disk metric '{other}': use used_percent or free_bytes")))
            }
        }
    }
}

/// `/proc/net/dev`: received or transmitted bytes of one interface (a counter).
pub struct Net {
    pub path: PathBuf,
    pub interface: String,
    pub transmit: bool,
}

impl Driver for Net {
    fn read(&mut self, _t: Duration) -> Result<Value, DriverError> {
        let (path, text) = read_text(self.path.clone())?;
        for line in text.lines() {
            let Some((name, counters)) = line.split_once(':') else { continue };
            if name.trim() != self.interface {
                continue;
            }
            // rx: bytes packets errs drop fifo frame compressed multicast; then tx: bytes ...
            let field = if self.transmit { 8 } else { 0 };
            let value = counters
                .split_whitespace()
                .nth(field)
                .ok_or_else(|| parse_error(path.clone(), line, "too few fields"))?;
            return value
                .parse()
                .map(Value::Integer)
                .map_err(|e| parse_error(path, line, format!("not an integer ({e})")));
        }
        Err(DriverError::NotFound {
            what: format!("network interface '{}'", self.interface),
            hint: format!(" in {}", path.display()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        dir
    }

    const T: Duration = Duration::ZERO;

    #[test]
    fn thermal_zones_read_millidegrees() {
        let root = tree(&[("sys/class/thermal/thermal_zone0/temp", "48312\n")]);
        assert_eq!(ThermalZone::new(root.path(), 0).read(T).unwrap(), Value::Number(48.312));
        let err = ThermalZone::new(root.path(), 3).read(T).unwrap_err().to_string();
        assert!(err.contains("thermal_zone3/temp"), "{err}");
    }

    #[test]
    fn malformed_files_are_clear_errors() {
        let root = tree(&[
            ("sys/class/thermal/thermal_zone0/temp", "hot\n"),
            ("proc/loadavg", "0.5\n"),
            ("proc/meminfo", "MemTotal: 100 kB\n"),
        ]);
        let err = ThermalZone::new(root.path(), 0).read(T).unwrap_err().to_string();
        assert!(err.contains("cannot parse \"hot\"") && err.contains("not an integer"), "{err}");
        let err =
            LoadAvg { path: root.path().join("proc/loadavg"), minutes: 5 }.read(T).unwrap_err().to_string();
        assert!(err.contains("too few fields"), "{err}");
        let err = Memory { path: root.path().join("proc/meminfo"), metric: "used_percent".into() }
            .read(T)
            .unwrap_err();
        assert!(err.to_string().contains("no MemAvailable line"), "{err}");
    }

    #[test]
    fn hwmon_finds_the_chip_by_name() {
        let root = tree(&[
            ("sys/class/hwmon/hwmon0/name", "acpitz\n"),
            ("sys/class/hwmon/hwmon1/name", "coretemp\n"),
            ("sys/class/hwmon/hwmon1/temp1_input", "51000\n"),
            ("sys/class/hwmon/hwmon1/fan1_input", "1200\n"),
        ]);
        let mut temp =
            Hwmon { root: root.path().into(), chip: "coretemp".into(), input: "temp1_input".into() };
        assert_eq!(temp.read(T).unwrap(), Value::Number(51.0));
        let mut fan = Hwmon { root: root.path().into(), chip: "coretemp".into(), input: "fan1_input".into() };
        assert_eq!(fan.read(T).unwrap(), Value::Number(1200.0));
        let mut missing =
            Hwmon { root: root.path().into(), chip: "nct6775".into(), input: "temp1_input".into() };
        assert!(missing.read(T).unwrap_err().to_string().contains("hwmon chip 'nct6775' not found"));
    }

    #[test]
    fn proc_files() {
        let root = tree(&[
            ("proc/loadavg", "0.52 0.58 0.59 1/467 12345\n"),
            ("proc/meminfo", "MemTotal:       1000 kB\nMemFree:   100 kB\nMemAvailable:    250 kB\n"),
            (
                "proc/net/dev",
                "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:  123 4 0 0 0 0 0 0  123 4 0 0 0 0 0 0\n  eth0: 987654 321 0 0 0 0 0 0 555 66 0 0 0 0 0 0\n",
            ),
        ]);
        let p = root.path();
        assert_eq!(
            LoadAvg { path: p.join("proc/loadavg"), minutes: 15 }.read(T).unwrap(),
            Value::Number(0.59)
        );
        let mut mem = Memory { path: p.join("proc/meminfo"), metric: "used_percent".into() };
        assert_eq!(mem.read(T).unwrap(), Value::Number(75.0));
        mem.metric = "available_bytes".into();
        assert_eq!(mem.read(T).unwrap(), Value::Integer(256_000));
        let mut net = Net { path: p.join("proc/net/dev"), interface: "eth0".into(), transmit: false };
        assert_eq!(net.read(T).unwrap(), Value::Integer(987_654));
        net.transmit = true;
        assert_eq!(net.read(T).unwrap(), Value::Integer(555));
        net.interface = "wlan0".into();
        assert!(net.read(T).unwrap_err().to_string().contains("wlan0"));
    }

    #[test]
    fn disk_usage_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let used = Disk { path: dir.path().into(), metric: "used_percent".into() }.read(T).unwrap();
        assert!(matches!(used, Value::Number(p) if (0.0..=100.0).contains(&p)), "{used:?}");
        let err = Disk { path: dir.path().join("missing"), metric: "free_bytes".into() }.read(T).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
