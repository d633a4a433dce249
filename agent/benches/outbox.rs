//! Outbox benchmark: append rate against plain file appends of the same
//! framed records measured in the same run, and disk use under a long
//! append/retire churn.
//!
//!   cargo bench -p agent --bench outbox [-- --samples 200000 --cycles 1000000]

use std::io::Write;
use std::time::{Duration, Instant};

use agent::outbox::{record, Outbox, OutboxOptions};
use proto::sample::{Quality, Sample, Value};
use testkit::bench::Args;

fn sample(seq: u64) -> Sample {
    Sample {
        channel: "temperature".into(),
        epoch: 1,
        seq,
        wall_ns: 1_795_000_000_000_000_000 + seq as i64,
        mono_ns: seq * 1000,
        clock_synced: true,
        value: Value::Number(20.0 + (seq % 100) as f64 / 10.0),
        unit: "degC".into(),
        quality: Quality::Good,
    }
}

const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Appends `n` samples, flushing every 200 ms (the agent's default window).
fn outbox_appends(n: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("outbox"), OutboxOptions::unbounded(), "bench").unwrap();
    let started = Instant::now();
    let mut last_flush = started;
    for seq in 1..=n {
        outbox.append(&sample(seq)).unwrap();
        if last_flush.elapsed() >= FLUSH_EVERY {
            outbox.flush().unwrap();
            last_flush = Instant::now();
        }
    }
    outbox.flush().unwrap();
    n as f64 / started.elapsed().as_secs_f64()
}

/// The same records appended to a plain file, fsync after each, or every 200 ms.
fn file_appends(n: u64, fsync_each: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut file =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("log")).unwrap();
    let started = Instant::now();
    let mut last_sync = started;
    let mut framed = Vec::new();
    for seq in 1..=n {
        framed.clear();
        record::frame(seq, &record::payload(&sample(seq)), &mut framed);
        file.write_all(&framed).unwrap();
        if fsync_each || last_sync.elapsed() >= FLUSH_EVERY {
            file.sync_data().unwrap();
            last_sync = Instant::now();
        }
    }
    file.sync_data().unwrap();
    n as f64 / started.elapsed().as_secs_f64()
}

/// Appends `cycles` samples while retiring so at most `live` stay; returns
/// the largest and the final size on disk.
fn churn(cycles: u64, live: u64) -> (u64, u64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox");
    let outbox = Outbox::open(&path, OutboxOptions::unbounded(), "bench").unwrap();
    let mut largest = 0;
    let started = Instant::now();
    for seq in 1..=cycles {
        // A fresh log: the record index is the seq.
        outbox.append(&sample(seq)).unwrap();
        if seq > live && seq % 100 == 0 {
            outbox.retire(seq - live).unwrap();
        }
        if seq % 50_000 == 0 {
            outbox.flush().unwrap();
            largest = largest.max(dir_bytes(&path));
        }
    }
    outbox.flush().unwrap();
    (largest, dir_bytes(&path), cycles as f64 / started.elapsed().as_secs_f64())
}

/// Bytes of the files in `dir`, as `du --apparent-size` counts them.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).unwrap().flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()
}

fn main() {
    let n = Args::from_env().get("--samples", 200_000u64);
    let cycles = Args::from_env().get("--cycles", 1_000_000u64);
    let fsync_n = (n / 20).max(1000);
    println!(
        "outbox benchmark: {n} samples ({} bytes framed each)",
        record::HEADER + record::payload(&sample(1)).len()
    );
    let ours = outbox_appends(n);
    let batched = file_appends(n, false);
    let each = file_appends(fsync_n, true);
    println!();
    println!("append                                          samples/s   outbox is");
    println!("  outbox (segment log), flushed every 200 ms {ours:>12.0}");
    println!("  plain file, fsync every 200 ms             {batched:>12.0}   {:.2}x of it", ours / batched);
    println!("  plain file, fsync after every record       {each:>12.0}   {:.1}x of it", ours / each);
    let live = 1000;
    let (largest, last, rate) = churn(cycles, live);
    println!();
    println!("{cycles} append/retire cycles with {live} records live ({rate:.0} cycles/s):");
    println!(
        "  disk use: largest {:.1} MiB, at the end {:.1} MiB",
        largest as f64 / 1048576.0,
        last as f64 / 1048576.0
    );
}
