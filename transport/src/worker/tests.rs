//! The worker's ways of serving, against a ROUTER standing in for the broker
//! (real libzmq sockets over inproc). Every receive is bounded by the
//! socket's receive timeout, so a worker that never answers fails the test
//! instead of hanging it.

use std::collections::HashSet;
use std::sync::atomic::AtomicUsize;
use std::sync::{Condvar, Mutex};
use std::thread;

use proto::mdp::{decode_to_broker, ToBroker};

use super::*;
use crate::Shutdown;

const WAIT: Duration = Duration::from_secs(10);

struct FakeBroker {
    router: zmq::Socket,
    /// The worker's routing id, learned from its READY.
    worker: Vec<u8>,
}

impl FakeBroker {
    fn bind(ctx: &zmq::Context, name: &str) -> (FakeBroker, Endpoint) {
        let router = ctx.socket(zmq::ROUTER).unwrap();
        router.set_rcvtimeo(WAIT.as_millis() as i32).unwrap();
        let address = format!("inproc://worker-test-{name}");
        router.bind(&address).unwrap();
        (FakeBroker { router, worker: Vec::new() }, Endpoint::plain(&address))
    }

    /// The next message that is not a heartbeat, without the routing id.
    fn recv(&mut self) -> Vec<Vec<u8>> {
        loop {
            let mut frames = self.router.recv_multipart(0).expect("the worker spoke within the deadline");
            self.worker = frames.remove(0);
            if !matches!(decode_to_broker(&frames), Ok((_, ToBroker::Heartbeat))) {
                return frames;
            }
        }
    }

    fn request(&self, dialect: Dialect, token: &[u8], body: &[u8]) {
        let mut frames = vec![self.worker.clone()];
        frames.extend(mdp::worker_request(dialect, token).frames().iter().map(|f| f.to_vec()));
        frames.push(body.to_vec());
        self.router.send_multipart(frames, 0).unwrap();
    }

    /// The next FINAL reply: (token, body).
    fn reply(&mut self) -> (Vec<u8>, Vec<Vec<u8>>) {
        let frames = self.recv();
        match decode_to_broker(&frames) {
            Ok((_, ToBroker::Reply { kind: ReplyKind::Final, client, body })) => {
                (client.to_vec(), body.to_vec())
            }
            other => panic!("expected a FINAL reply, got {other:?}"),
        }
    }
}

/// A worker serving on a thread of its own until [`Serving::stop`].
struct Serving {
    shutdown: Shutdown,
    thread: thread::JoinHandle<Result<(), WorkerError>>,
}

impl Serving {
    fn start(serve: impl FnOnce(&ShutdownWatch) -> Result<(), WorkerError> + Send + 'static) -> Serving {
        let shutdown = Shutdown::new();
        let stop = shutdown.watch().unwrap();
        Serving { shutdown, thread: thread::spawn(move || serve(&stop)) }
    }

    /// Stops the worker and checks that it ended cleanly.
    fn stop(self) {
        self.shutdown.trigger();
        self.thread.join().unwrap().unwrap();
    }
}

fn echo(body: Vec<zmq::Message>, _: &mut Replier<'_>) -> Vec<zmq::Message> {
    body
}

fn options(credit: u32) -> WorkerOptions {
    WorkerOptions { dialect: Dialect::Rfc18, credit, ..WorkerOptions::default() }
}

fn ready(credit: Option<&str>) -> Vec<Vec<u8>> {
    let mut frames = vec![b"MDPW02".to_vec(), vec![1], b"echo".to_vec()];
    frames.extend(credit.map(|c| c.as_bytes().to_vec()));
    frames
}

/// Counts handlers inside at once; each waits (bounded) until `want` are in.
struct Gate {
    inside: Mutex<usize>,
    changed: Condvar,
    want: usize,
}

impl Gate {
    fn pass(&self) -> bool {
        let mut inside = self.inside.lock().unwrap();
        *inside += 1;
        self.changed.notify_all();
        let deadline = Instant::now() + WAIT;
        while *inside < self.want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            inside = self.changed.wait_timeout(inside, left).unwrap().0;
        }
        true
    }
}

#[test]
fn a_pool_worker_announces_its_credit_and_runs_that_many_handlers_at_once() {
    let ctx = zmq::Context::new();
    let (mut broker, endpoint) = FakeBroker::bind(&ctx, "pool");
    let worker = Worker::new(&ctx, endpoint, "echo", options(4));
    let gate = Arc::new(Gate { inside: Mutex::new(0), changed: Condvar::new(), want: 4 });
    let handler_gate = gate.clone();
    let pool = PoolOptions { threads: 4, ..PoolOptions::default() };
    let serving = Serving::start(move |stop| {
        worker.run_pool(stop, pool, move |body, replier| {
            replier.partial([&b"started"[..]]).unwrap();
            let opened = handler_gate.pass();
            let mut reply = body;
            reply.push(zmq::Message::from(if opened { "together" } else { "alone" }));
            reply
        })
    });

    assert_eq!(broker.recv(), ready(Some("credit=4")));
    let tokens: Vec<Vec<u8>> = (0..4u8).map(|i| vec![b't', i]).collect();
    for token in &tokens {
        broker.request(Dialect::Rfc18, token, token);
    }
    let mut answered = HashSet::new();
    while answered.len() < 4 {
        let frames = broker.recv();
        match decode_to_broker(&frames).unwrap().1 {
            ToBroker::Reply { kind: ReplyKind::Partial, body, .. } => assert_eq!(body, [b"started".to_vec()]),
            ToBroker::Reply { kind: ReplyKind::Final, client, body } => {
                assert_eq!(body, [client.to_vec(), b"together".to_vec()], "all four handlers ran at once");
                assert!(answered.insert(client.to_vec()));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(answered, tokens.into_iter().collect());
    serving.stop();
    let frames = broker.recv();
    assert!(matches!(decode_to_broker(&frames), Ok((_, ToBroker::Disconnect))), "DISCONNECT at shutdown");
}

#[test]
fn a_pool_worker_heartbeats_while_a_handler_runs_longer_than_liveness() {
    let ctx = zmq::Context::new();
    let (mut broker, endpoint) = FakeBroker::bind(&ctx, "slow");
    let timing = WorkerTiming {
        heartbeat_interval: Duration::from_millis(30),
        heartbeat_liveness: 50,
        ..WorkerTiming::default()
    };
    let worker = Worker::new(&ctx, endpoint, "echo", WorkerOptions { timing, ..options(2) });
    let release = Arc::new((Mutex::new(false), Condvar::new()));
    let held = release.clone();
    let serving = Serving::start(move |stop| {
        worker.run_pool(stop, PoolOptions::default(), move |body, _| {
            let (open, changed) = &*held;
            let guard = open.lock().unwrap();
            drop(changed.wait_timeout_while(guard, WAIT, |open| !*open).unwrap());
            body
        })
    });
    assert_eq!(broker.recv(), ready(Some("credit=2")));
    broker.request(Dialect::Rfc18, b"T", b"x");
    // Heartbeats keep coming while the handler is stuck (the inline mode
    // would be silent): three in a row, each bounded by the socket's timeout.
    for _ in 0..3 {
        let mut frames = broker.router.recv_multipart(0).expect("a heartbeat within the deadline");
        frames.remove(0);
        assert!(matches!(decode_to_broker(&frames), Ok((_, ToBroker::Heartbeat))), "{frames:?}");
    }
    *release.0.lock().unwrap() = true;
    release.1.notify_all();
    assert_eq!(broker.reply(), (b"T".to_vec(), vec![b"x".to_vec()]));
    serving.stop();
}

#[test]
fn an_inline_worker_with_credit_answers_each_request_in_order() {
    let ctx = zmq::Context::new();
    let (mut broker, endpoint) = FakeBroker::bind(&ctx, "inline");
    let worker = Worker::new(&ctx, endpoint, "echo", options(3));
    let stats = worker.stats();
    let serving = Serving::start(move |stop| worker.run(stop, echo));
    assert_eq!(broker.recv(), ready(Some("credit=3")));
    for i in 0..3u8 {
        broker.request(Dialect::Rfc18, &[i], &[b'a' + i]);
    }
    for i in 0..3u8 {
        assert_eq!(broker.reply(), (vec![i], vec![vec![b'a' + i]]));
    }
    assert_eq!(stats.credit.load(Relaxed), 3);
    assert_eq!(stats.requests.load(Relaxed), 3);
    serving.stop();
}

#[test]
fn a_batched_worker_gets_what_waits_and_answers_in_order() {
    let ctx = zmq::Context::new();
    let (mut broker, endpoint) = FakeBroker::bind(&ctx, "batched");
    let worker = Worker::new(&ctx, endpoint, "echo", options(8));
    let handled = Arc::new(AtomicUsize::new(0));
    let count = handled.clone();
    let serving = Serving::start(move |stop| {
        worker.run_batched(stop, move |bodies| {
            count.fetch_add(bodies.len(), Relaxed);
            for body in bodies.iter_mut() {
                body.push(zmq::Message::from("!"));
            }
        })
    });
    assert_eq!(broker.recv(), ready(Some("credit=8")));
    for i in 0..8u8 {
        broker.request(Dialect::Rfc18, &[i], &[i]);
    }
    for i in 0..8u8 {
        assert_eq!(broker.reply(), (vec![i], vec![vec![i], b"!".to_vec()]));
    }
    assert_eq!(handled.load(Relaxed), 8);
    serving.stop();
}

#[test]
fn a_stock_worker_sends_a_plain_ready() {
    let ctx = zmq::Context::new();
    let (mut broker, endpoint) = FakeBroker::bind(&ctx, "stock");
    let worker = Worker::new(&ctx, endpoint, "echo", options(1));
    let serving = Serving::start(move |stop| worker.run(stop, echo));
    assert_eq!(broker.recv(), ready(None));
    serving.stop();
}

#[test]
fn a_worker_refused_with_credit_registers_again_without_it() {
    let ctx = zmq::Context::new();
    let (mut broker, endpoint) = FakeBroker::bind(&ctx, "strict");
    let worker = Worker::new(&ctx, endpoint, "echo", options(4));
    let stats = worker.stats();
    let serving = Serving::start(move |stop| worker.run(stop, echo));
    assert_eq!(broker.recv(), ready(Some("credit=4")));
    // What a strict broker does: DISCONNECT, as to an unknown worker.
    let mut disconnect = vec![broker.worker.clone()];
    disconnect.extend(mdp::worker_disconnect(Dialect::Rfc18, false).frames().iter().map(|f| f.to_vec()));
    broker.router.send_multipart(disconnect, 0).unwrap();
    assert_eq!(broker.recv(), ready(None), "the next READY is a stock one");
    broker.request(Dialect::Rfc18, b"T", b"x");
    assert_eq!(broker.reply(), (b"T".to_vec(), vec![b"x".to_vec()]));
    assert_eq!(stats.credit.load(Relaxed), 1);
    assert_eq!(stats.refused.load(Relaxed), 1);
    serving.stop();
}
