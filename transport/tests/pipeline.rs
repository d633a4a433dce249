//! Pipelines over real sockets: a chain delivers everything with bounded
//! queues, failures retry then dead-letter, and a stage process killed with
//! SIGKILL mid-stream loses nothing (its upstream sends again).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use transport::pipeline::stage::{self, DeadLetter, StageOptions, StageStats, Wiring};
use transport::pipeline::{HopOptions, Source};
use transport::Shutdown;

fn hop(window: u32) -> HopOptions {
    HopOptions {
        window,
        peer_timeout: Duration::from_millis(600),
        ping_every: Duration::from_millis(100),
        ..HopOptions::default()
    }
}

fn options(name: &str, workers: usize, window: u32) -> StageOptions {
    StageOptions {
        name: name.into(),
        workers,
        retry_min: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        hop: hop(window),
        ..StageOptions::default()
    }
}

/// Sends ids `0..n` through `source`, servicing it until every one is acknowledged.
/// Returns the most messages it ever held and how often it had to wait.
fn pump(source: &mut Source, n: u64, deadline: Duration) -> (usize, u64) {
    let (mut next, mut acked, mut most, mut waits) = (0u64, 0u64, 0usize, 0u64);
    let start = Instant::now();
    while acked < n {
        assert!(start.elapsed() < deadline, "only {acked} of {n} acknowledged in {deadline:?}");
        source.service(|_| acked += 1).unwrap();
        while next < n {
            match source.try_send(next, 0, format!("m{next}").into_bytes()).unwrap() {
                Ok(()) => next += 1,
                Err(_) => {
                    waits += 1;
                    break;
                }
            }
        }
        most = most.max(source.in_flight());
        let mut items = [source.socket().as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, 20).unwrap();
    }
    (most, waits)
}

#[test]
fn a_slow_sink_makes_the_source_wait_and_everything_arrives() {
    let ctx = zmq::Context::new();
    let mut source = Source::bind(&ctx, "inproc://chain-src", hop(4)).unwrap();
    let shutdown = Shutdown::new();
    let got = Mutex::new(Vec::new());
    let (mid, sink) = (StageStats::default(), StageStats::default());
    std::thread::scope(|s| {
        let (stop_a, stop_b) = (shutdown.watch().unwrap(), shutdown.watch().unwrap());
        let (ctx_a, ctx_b) = (ctx.clone(), ctx.clone());
        let (mid, sink, got) = (&mid, &sink, &got);
        s.spawn(move || {
            let upstream = ["inproc://chain-src".to_string()];
            let wiring = Wiring { upstream: &upstream, downstream: Some("inproc://chain-mid") };
            let upper = |b: &[u8]| Ok(Some(b.to_ascii_uppercase()));
            stage::run(&ctx_a, wiring, &options("upper", 2, 4), upper, |_| Ok(()), mid, &stop_a).unwrap();
        });
        s.spawn(move || {
            let upstream = ["inproc://chain-mid".to_string()];
            let wiring = Wiring { upstream: &upstream, downstream: None };
            let slow = |b: &[u8]| {
                std::thread::sleep(Duration::from_millis(2));
                got.lock().unwrap().push(String::from_utf8(b.to_vec()).unwrap());
                Ok(None)
            };
            stage::run(&ctx_b, wiring, &options("sink", 1, 4), slow, |_| Ok(()), sink, &stop_b).unwrap();
        });
        let (most, waits) = pump(&mut source, 200, Duration::from_secs(20));
        shutdown.trigger();
        assert!(most <= 4, "the source held at most the stage's window: {most}");
        assert!(waits > 0, "the slow sink made the source wait");
    });
    let got = got.into_inner().unwrap();
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), 200, "every message arrived");
    assert!(got.iter().all(|m| m.starts_with('M')), "through the stage");
    assert_eq!(sink.out.load(Relaxed), got.len() as u64);
    assert_eq!(mid.received.load(Relaxed), mid.out.load(Relaxed));
}

#[test]
fn handler_errors_retry_then_dead_letter() {
    let ctx = zmq::Context::new();
    let mut source = Source::bind(&ctx, "inproc://retry-src", hop(8)).unwrap();
    let shutdown = Shutdown::new();
    let (stats, flaky_failures) = (StageStats::default(), AtomicU32::new(0));
    let dead = Mutex::new(Vec::<DeadLetter>::new());
    std::thread::scope(|s| {
        let stop = shutdown.watch().unwrap();
        let (stats, dead, flaky_failures, ctx) = (&stats, &dead, &flaky_failures, ctx.clone());
        s.spawn(move || {
            let upstream = ["inproc://retry-src".to_string()];
            let handler = |b: &[u8]| match b {
                b"m3" => Err("m3 is never accepted".to_string()),
                b"m5" if flaky_failures.fetch_add(1, Relaxed) < 1 => Err("once".to_string()),
                _ => Ok(None),
            };
            let store = |d: DeadLetter| {
                dead.lock().unwrap().push(d);
                Ok(())
            };
            let wiring = Wiring { upstream: &upstream, downstream: None };
            stage::run(&ctx, wiring, &options("sink", 2, 8), handler, store, stats, &stop).unwrap();
        });
        pump(&mut source, 10, Duration::from_secs(10));
        shutdown.trigger();
    });
    let dead = dead.into_inner().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!((dead[0].body.as_slice(), dead[0].attempts, dead[0].stage.as_str()), (&b"m3"[..], 3, "sink"));
    assert_eq!(dead[0].error, "m3 is never accepted");
    assert_eq!(stats.failed.load(Relaxed), 4, "three for m3, one for m5");
    assert_eq!(stats.retried.load(Relaxed), 3, "two for m3, one for m5");
    assert_eq!(stats.dead_lettered.load(Relaxed), 1);
    assert_eq!(stats.out.load(Relaxed), 9, "the other nine finished");
}

/// In the child process of the next test: a pass-through stage that runs until killed.
#[test]
fn child_stage() {
    let Ok(wiring) = std::env::var("PIPELINE_TEST_CHILD") else { return };
    let (up, down) = wiring.split_once(' ').unwrap();
    let ctx = zmq::Context::new();
    let shutdown = Shutdown::new();
    let upstream = [up.to_string()];
    let slow = |b: &[u8]| {
        std::thread::sleep(Duration::from_millis(1));
        Ok(Some(b.to_vec()))
    };
    let stats = StageStats::default();
    let wiring = Wiring { upstream: &upstream, downstream: Some(down) };
    let _ = stage::run(
        &ctx,
        wiring,
        &options("pass", 2, 16),
        slow,
        |_| Ok(()),
        &stats,
        &shutdown.watch().unwrap(),
    );
}

/// A child process, killed (SIGKILL) and reaped when dropped, so a failing test leaves none behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_stage_killed_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let up = format!("ipc://{}/up", dir.path().display());
    let down = format!("ipc://{}/down", dir.path().display());
    let spawn = || {
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_stage", "--nocapture", "--test-threads", "1"])
            .env("PIPELINE_TEST_CHILD", format!("{up} {down}"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Child(child)
    };
    let ctx = zmq::Context::new();
    let mut source = Source::bind(&ctx, &up, hop(16)).unwrap();
    let shutdown = Shutdown::new();
    let got = Arc::new(Mutex::new(Vec::<String>::new()));
    let stats = StageStats::default();
    let mut first = Some(spawn());
    let total = 400u64;
    std::thread::scope(|s| {
        let (stop, ctx, sunk, stats, down) =
            (shutdown.watch().unwrap(), ctx.clone(), got.clone(), &stats, &down);
        s.spawn(move || {
            let upstream = [down.clone()];
            let record = |b: &[u8]| {
                sunk.lock().unwrap().push(String::from_utf8_lossy(b).into_owned());
                Ok(None)
            };
            let wiring = Wiring { upstream: &upstream, downstream: None };
            stage::run(&ctx, wiring, &options("sink", 1, 16), record, |_| Ok(()), stats, &stop).unwrap();
        });
        // Send until the sink has some, then kill the stage with messages in its hands.
        let (mut next, mut acked) = (0u64, 0u64);
        let start = Instant::now();
        let mut second = None;
        while acked < total {
            assert!(start.elapsed() < Duration::from_secs(30), "{acked} of {total} acknowledged");
            source.service(|_| acked += 1).unwrap();
            while next < total && source.try_send(next, 0, format!("m{next}").into_bytes()).unwrap().is_ok() {
                next += 1;
            }
            if second.is_none() && got.lock().unwrap().len() >= 50 {
                assert!(source.in_flight() > 0, "the stage holds messages when it is killed");
                drop(first.take());
                second = Some(spawn());
            }
            let mut items = [source.socket().as_poll_item(zmq::POLLIN)];
            zmq::poll(&mut items, 20).unwrap();
        }
        // The sink's last acks travel after the source's: wait until it has them all.
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.lock().unwrap().iter().collect::<BTreeSet<_>>().len() < total as usize {
            assert!(Instant::now() < deadline, "the sink did not get everything");
            std::thread::sleep(Duration::from_millis(10));
        }
        shutdown.trigger();
        drop(second);
    });
    let got = got.lock().unwrap();
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), total as usize, "nothing lost");
    assert!(got.len() >= unique.len(), "at-least-once: repeats are allowed ({} received)", got.len());
}

#[test]
fn a_restarted_source_is_granted_credit_again() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("ipc://{}/src", dir.path().display());
    let ctx = zmq::Context::new();
    let shutdown = Shutdown::new();
    let got = Mutex::new(Vec::<String>::new());
    let stats = StageStats::default();
    std::thread::scope(|s| {
        let (stop, sink_ctx, got, stats, at) =
            (shutdown.watch().unwrap(), ctx.clone(), &got, &stats, &endpoint);
        s.spawn(move || {
            let upstream = [at.clone()];
            let record = |b: &[u8]| {
                got.lock().unwrap().push(String::from_utf8_lossy(b).into_owned());
                Ok(None)
            };
            let wiring = Wiring { upstream: &upstream, downstream: None };
            stage::run(&sink_ctx, wiring, &options("sink", 1, 8), record, |_| Ok(()), stats, &stop).unwrap();
        });
        // The first run sends half and goes away with messages unacknowledged.
        {
            let mut first = Source::bind(&ctx, &endpoint, hop(8)).unwrap();
            pump(&mut first, 50, Duration::from_secs(10));
            let _ = first.try_send(1000, 0, b"m1000".to_vec()).unwrap();
        }
        // The next run, on the same endpoint, is unknown to the sink: a reset, then credit again.
        let mut second = Source::bind(&ctx, &endpoint, hop(8)).unwrap();
        pump(&mut second, 100, Duration::from_secs(10));
        shutdown.trigger();
    });
    let got: BTreeSet<String> = got.into_inner().unwrap().into_iter().collect();
    assert!((0..100).all(|i| got.contains(&format!("m{i}"))), "{} distinct received", got.len());
}
