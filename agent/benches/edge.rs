//! Report by exception, in bytes: a 10-channel Modbus-like power meter read
//! every second for an hour, sent as it is (the baseline, same run) and with
//! a 0.5 % deadband. Counts the outbox's bytes (framed records, as on the SD
//! card) and the link's bytes (ingest batches of 500, as sent to the hub).
//!
//!   cargo bench -p agent --bench edge [-- --seconds 3600 --deadband-pct 0.5]

use std::time::Duration;

use agent::outbox::record;
use edge::{ReportConfig, ReportFilter, Verdict};
use proto::ingest::{Batch, Sent};
use proto::sample::{Quality, Sample, Value};
use testkit::bench::Args;

/// What a meter's registers do over time `t` (seconds): steady values with
/// small noise, a load that steps now and then, counters that count.
fn meter(channel: usize, t: u64, rng: &mut fastrand::Rng) -> Value {
    let noise = |rng: &mut fastrand::Rng, scale: f64| (rng.f64() - 0.5) * scale;
    let load = if (t / 600) % 2 == 0 { 40.0 } else { 65.0 }; // a step every 10 minutes
    match channel {
        0..=2 => Value::Number(230.0 + noise(rng, 0.4)), // phase voltages, V
        3..=5 => Value::Number(load + noise(rng, 0.2)),  // phase currents, A
        6 => Value::Number(3.0 * 230.0 * load / 1000.0 + noise(rng, 0.05)), // active power, kW
        7 => Value::Number(0.95 + noise(rng, 0.002)),    // power factor
        8 => Value::Number(50.0 + noise(rng, 0.02)),     // frequency, Hz
        _ => Value::Integer((t * 27) as i64 / 3600),     // energy counter, kWh
    }
}

struct Bytes {
    samples: u64,
    outbox: u64,
    link: u64,
}

fn run(seconds: u64, report: Option<ReportConfig>) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut filters: Vec<Option<ReportFilter>> =
        (0..10).map(|_| report.clone().map(ReportFilter::new)).collect();
    let mut held: Vec<Option<Sample>> = vec![None; 10];
    let mut sent = Vec::new();
    let mut seq = 0;
    for t in 0..seconds {
        for (c, filter) in filters.iter_mut().enumerate() {
            let sample = Sample {
                channel: format!("meter_{c}"),
                epoch: 1,
                seq: 0,
                wall_ns: 1_795_000_000_000_000_000 + (t * 1_000_000_000) as i64,
                mono_ns: t * 1_000_000_000,
                clock_synced: true,
                value: meter(c, t, &mut rng),
                unit: "V".into(),
                quality: Quality::Good,
            };
            let verdict = match filter {
                None => Verdict::Send,
                Some(f) => f.offer(&sample.value, sample.quality, Duration::from_secs(t)),
            };
            let mut out = Vec::new();
            match verdict {
                Verdict::Hold => held[c] = Some(sample),
                Verdict::Send => out.push(sample),
                Verdict::SendHeldThenThis => out.extend(held[c].take().into_iter().chain([sample])),
            }
            for mut s in out {
                seq += 1;
                s.seq = seq;
                sent.push(s);
            }
        }
    }
    let mut outbox = 0;
    let mut framed = Vec::new();
    for s in &sent {
        framed.clear();
        record::frame(s.seq, &record::payload(s), &mut framed);
        outbox += framed.len() as u64;
    }
    let link = sent
        .chunks(500)
        .map(|chunk| {
            let samples = chunk.iter().map(|s| Sent { sample: s.clone(), historical: false }).collect();
            Batch { agent: "meter-1".into(), samples, events: Vec::new() }.encode().len() as u64
        })
        .sum();
    Bytes { samples: sent.len() as u64, outbox, link }
}

fn main() {
    let args = Args::from_env();
    let seconds = args.get("seconds", 3600u64);
    let pct = args.get("deadband-pct", 0.5f64);
    let hours = seconds as f64 / 3600.0;
    let all = run(seconds, None);
    let config = ReportConfig { deadband_pct: Some(pct), max_interval_ms: 60_000, ..ReportConfig::default() };
    let rbe = run(seconds, Some(config));
    println!("10-channel meter, a reading a second, {hours:.2} h; report by exception at {pct} % with a 60 s heartbeat");
    println!("{:<24}{:>12}{:>16}{:>16}", "", "samples/h", "outbox B/h", "link B/h");
    for (name, b) in [("every reading", &all), ("report by exception", &rbe)] {
        let per_hour = |x: u64| x as f64 / hours;
        println!(
            "{name:<24}{:>12.0}{:>16.0}{:>16.0}",
            per_hour(b.samples),
            per_hour(b.outbox),
            per_hour(b.link)
        );
    }
    println!(
        "ratio (exception / every reading): samples {:.3}x, outbox bytes {:.3}x, link bytes {:.3}x",
        rbe.samples as f64 / all.samples as f64,
        rbe.outbox as f64 / all.outbox as f64,
        rbe.link as f64 / all.link as f64
    );
}
