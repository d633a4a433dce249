//! Benchmark plumbing: `-- --name value` arguments, and what a process costs.

use std::str::FromStr;
use std::time::Duration;

/// The arguments after `cargo bench ... --`. `cargo bench` adds its own
/// (`--bench`); unknown names are ignored.
pub struct Args(Vec<String>);

impl Args {
    pub fn from_env() -> Args {
        Args(std::env::args().skip(1).collect())
    }

    /// The value after `--name`, parsed; `default` when absent or unparsable.
    pub fn get<T: FromStr>(&self, name: &str, default: T) -> T {
        self.text(name).and_then(|v| v.parse().ok()).unwrap_or(default)
    }

    /// The raw value after `--name`.
    pub fn text(&self, name: &str) -> Option<&str> {
        let at = self.0.iter().position(|a| a == name)?;
        self.0.get(at + 1).map(String::as_str)
    }
}

/// User + system CPU time a process has used, from /proc/<pid>/stat.
pub fn process_cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// A process's resident memory (VmRSS), in KiB; 0 if it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Microseconds, for printing.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Runs `f` on a thread named `name` (so profiles and `top -H` say what it is).
pub fn named<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::Builder::new().name(name.into()).spawn(f).expect("spawn a thread")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse_by_name_with_defaults() {
        let args =
            Args(["--bench", "--clients", "4", "--only", "raw", "--seconds", "x"].map(String::from).to_vec());
        assert_eq!(args.get("--clients", 1usize), 4);
        assert_eq!(args.get("--window", 64usize), 64);
        assert_eq!(args.get("--seconds", 3.0f64), 3.0, "unparsable falls back");
        assert_eq!(args.text("--only"), Some("raw"));
    }

    #[test]
    fn this_process_has_memory_and_cpu() {
        let me = std::process::id();
        assert!(rss_kib(me) > 0);
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {}
        assert!(process_cpu_time(me) > Duration::ZERO);
    }
}
