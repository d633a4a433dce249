//! What the load generator says: a line a second on stderr while it runs,
//! and the summary at the end (JSON, or lines for people).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::fleet::AgentSummary;
use super::stats::{Counters, Totals};
use super::{LoadgenArgs, Results};

/// A line on stderr every second until every driver is done; their results.
pub fn report_until_done(
    results: &Results,
    threads: &[std::sync::Arc<Counters>],
    durable: bool,
    started: Instant,
) -> Vec<Result<Vec<AgentSummary>, String>> {
    let mut done = Vec::new();
    let mut last = (Instant::now(), Totals::default());
    let mut next_line = Instant::now() + Duration::from_secs(1);
    while done.len() < threads.len() {
        let wait = next_line.saturating_duration_since(Instant::now());
        match results.recv_timeout(wait) {
            Ok(result) => done.push(result),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= next_line {
            let now = Totals::gather(threads, true);
            eprintln!("loadgen: {}", line(&last.1, &now, last.0.elapsed(), durable, started));
            last = (Instant::now(), now);
            next_line += Duration::from_secs(1);
        }
    }
    done
}

fn line(before: &Totals, now: &Totals, over: Duration, durable: bool, started: Instant) -> String {
    let per_s = |a: u64, b: u64| (a - b) as f64 / over.as_secs_f64().max(1e-3);
    let t = started.elapsed().as_secs_f64();
    if !durable {
        return format!(
            "{t:5.0} s  published {:.0}/s  dropped {}",
            per_s(now.sent, before.sent),
            now.dropped
        );
    }
    let ms = |p| now.interval.percentile_ms(p).map_or("-".into(), |v| format!("{v:.1} ms"));
    format!(
        "{t:5.0} s  sent {:.0}/s  acknowledged {:.0}/s  p50 {}  p99 {}  in flight {}  backlog {}  retries {}  timeouts {}",
        per_s(now.sent, before.sent),
        per_s(now.acknowledged, before.acknowledged),
        ms(50.0),
        ms(99.0),
        now.in_flight,
        now.backlog,
        now.retries,
        now.timeouts
    )
}

/// User and system CPU this process has used.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

pub fn summary(
    args: &LoadgenArgs,
    t: &Totals,
    agents: &[AgentSummary],
    elapsed: Duration,
    cpu: Duration,
) -> Value {
    let ms = |p| t.all.percentile_ms(p);
    let per_sample_us = cpu.as_secs_f64() * 1e6 / t.samples.max(1) as f64;
    let mut summary = json!({
        "agents": args.agents,
        "rate": args.rate,
        "durable": args.durable,
        "seconds": elapsed.as_secs_f64(),
        "samples": t.samples,
        "sent": t.sent,
        "dropped": t.dropped,
        "cpu": {
            "seconds": cpu.as_secs_f64(),
            "per_sample_us": per_sample_us,
            "of_one_core": cpu.as_secs_f64() / elapsed.as_secs_f64().max(1e-3),
        },
    });
    if args.durable {
        let extra = json!({
            "batches": t.batches,
            "acknowledged": t.acknowledged,
            "duplicates": t.duplicates,
            "retries": t.retries,
            "timeouts": t.timeouts,
            "rejected": t.rejected,
            "in_flight": t.in_flight,
            "backlog": t.backlog,
            "latency_ms": {
                "batches": t.all.count(),
                "p50": ms(50.0),
                "p99": ms(99.0),
                "max": t.all.max_ms(),
            },
        });
        summary.as_object_mut().expect("an object").extend(extra.as_object().expect("an object").clone());
    }
    if args.json {
        let each: Vec<Value> = agents
            .iter()
            .map(|a| {
                json!({"agent": a.id, "epoch": a.epoch, "samples": a.samples, "acknowledged": a.acknowledged,
                       "dropped": a.dropped, "acked_through": a.acked_through})
            })
            .collect();
        summary["per_agent"] = Value::Array(each);
    }
    summary
}

pub fn human(s: &Value) -> String {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let ms = |v: &Value| v.as_f64().map_or("-".to_string(), |v| format!("{v:.2} ms"));
    let mut out = format!(
        "{} agents for {:.1} s: {} samples made, {} sent, {} dropped\n",
        n(&s["agents"]),
        s["seconds"].as_f64().unwrap_or(0.0),
        n(&s["samples"]),
        n(&s["sent"]),
        n(&s["dropped"])
    );
    if s["durable"] == true {
        let l = &s["latency_ms"];
        out += &format!(
            "{} acknowledged ({} duplicates), {} batches: {} Retry, {} timed out, {} rejected; {} in flight, {} unacknowledged at the end\n",
            n(&s["acknowledged"]),
            n(&s["duplicates"]),
            n(&s["batches"]),
            n(&s["retries"]),
            n(&s["timeouts"]),
            n(&s["rejected"]),
            n(&s["in_flight"]),
            n(&s["backlog"])
        );
        out += &format!(
            "ingest latency (batch sent to its Ack): p50 {}, p99 {}, max {}\n",
            ms(&l["p50"]),
            ms(&l["p99"]),
            ms(&l["max"])
        );
    }
    let cpu = &s["cpu"];
    out += &format!(
        "loadgen CPU: {:.2} s ({:.0} % of one core), {:.1} us per sample\n",
        cpu["seconds"].as_f64().unwrap_or(0.0),
        100.0 * cpu["of_one_core"].as_f64().unwrap_or(0.0),
        cpu["per_sample_us"].as_f64().unwrap_or(0.0)
    );
    out
}
