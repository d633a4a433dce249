//! [`Worker::run_pool`]: handlers on threads of their own, up to the credit
//! of requests at once, replies in whatever order they finish.
//!
//! The worker's thread keeps the socket (libzmq sockets belong to one
//! thread): it hands each request to the pool over a channel and forwards
//! the replies that come back the same way, woken by a byte on a socket pair
//! (written only when it is not already due to look). It keeps heartbeating
//! while handlers run, so a slow handler no longer gets the worker purged.
//! The pool threads own no libzmq socket, so one stuck in a handler (a sensor
//! that never answers) cannot hold up the context's shutdown: at shutdown the
//! pool gets a moment to finish, and threads still busy after it are left.
//!
//! Replies are tagged with the session they belong to: a reply for a request
//! of a session that has ended is dropped (its token means nothing to the
//! broker of the next one).

use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use proto::mdp::ReplyKind;

use super::{Io, Mode, Replier, Target, Worker, WorkerError};
use crate::shutdown::ShutdownWatch;

/// How a pool runs its handlers.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Handler threads. More than the credit would idle.
    pub threads: usize,
    /// Each thread's stack, in bytes.
    pub stack_size: usize,
    /// The threads' name (Linux shows the first 15 bytes, then `-N`).
    pub name: String,
    /// How long shutdown waits for handlers still running.
    pub grace: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            threads: 2,
            stack_size: 256 << 10,
            name: "mdp-pool".into(),
            grace: Duration::from_secs(2),
        }
    }
}

/// A request for a pool thread.
struct Job {
    session: u64,
    token: zmq::Message,
    body: Vec<zmq::Message>,
}

/// A reply part from a pool thread.
struct Reply {
    session: u64,
    kind: ReplyKind,
    token: zmq::Message,
    body: Vec<zmq::Message>,
}

/// Wakes the worker's thread when replies wait, at most once per look.
struct Waker {
    tx: UnixStream,
    due: AtomicBool,
}

impl Waker {
    fn wake(&self) {
        if !self.due.swap(true, Ordering::AcqRel) {
            // A full pipe already wakes the reader.
            let _ = (&self.tx).write(&[1]);
        }
    }
}

/// Where a pool thread's replies go.
pub(crate) struct Relay<'a> {
    replies: &'a Sender<Reply>,
    waker: &'a Waker,
    session: u64,
}

impl Relay<'_> {
    pub(crate) fn send<B>(&self, kind: ReplyKind, token: &[u8], body: B) -> Result<(), WorkerError>
    where
        B: IntoIterator,
        B::Item: Into<zmq::Message>,
    {
        let body = body.into_iter().map(Into::into).collect();
        self.forward(Reply { session: self.session, kind, token: token.into(), body });
        Ok(())
    }

    fn forward(&self, reply: Reply) {
        // The worker's thread gone means the worker is stopping: nothing to answer.
        if self.replies.send(reply).is_ok() {
            self.waker.wake();
        }
    }
}

/// Threads still running handlers, so shutdown can wait for them a while.
#[derive(Default)]
struct Busy {
    running: Mutex<usize>,
    done: Condvar,
}

struct Pool {
    jobs: Option<SyncSender<Job>>,
    replies: Receiver<Reply>,
    wake_rx: UnixStream,
    waker: Arc<Waker>,
    session: u64,
    /// This session's requests not yet answered.
    in_flight: usize,
    dropped: Arc<AtomicUsize>,
}

impl Mode for Pool {
    fn extra(&self) -> Option<std::os::unix::io::RawFd> {
        Some(self.wake_rx.as_raw_fd())
    }

    fn begin(&mut self, session: u64) {
        self.session = session;
        self.in_flight = 0;
    }

    fn request(
        &mut self,
        _io: &mut Io<'_>,
        token: zmq::Message,
        body: Vec<zmq::Message>,
    ) -> Result<(), WorkerError> {
        let Some(jobs) = &self.jobs else { return Ok(()) };
        match jobs.try_send(Job { session: self.session, token, body }) {
            Ok(()) => self.in_flight += 1,
            // The broker sent more than the credit: it would wait on a reply
            // that never comes, but a worker cannot queue without bound.
            Err(TrySendError::Full(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                log::warn!("a request beyond the worker's credit was dropped ({n} so far)");
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
        Ok(())
    }

    fn extra_ready(&mut self, io: &mut Io<'_>) -> Result<(), WorkerError> {
        let mut buf = [0u8; 64];
        while matches!((&self.wake_rx).read(&mut buf), Ok(n) if n == buf.len()) {}
        self.waker.due.store(false, Ordering::Release);
        while let Ok(Reply { session, kind, token, body }) = self.replies.try_recv() {
            if session != self.session {
                continue;
            }
            if kind == ReplyKind::Final {
                self.in_flight = self.in_flight.saturating_sub(1);
            }
            io.reply(kind, &token, body)?;
        }
        Ok(())
    }
}

pub(super) fn run<H>(
    worker: &Worker,
    stop: &ShutdownWatch,
    options: PoolOptions,
    handler: H,
) -> Result<(), WorkerError>
where
    H: Fn(Vec<zmq::Message>, &mut Replier<'_>) -> Vec<zmq::Message> + Send + Sync + 'static,
{
    let credit = worker.options.credit.max(1) as usize;
    let dialect = worker.options.dialect;
    let (wake_rx, wake_tx) = UnixStream::pair()?;
    wake_rx.set_nonblocking(true)?;
    wake_tx.set_nonblocking(true)?;
    let waker = Arc::new(Waker { tx: wake_tx, due: AtomicBool::new(false) });
    let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Job>(credit);
    let (replies_tx, replies_rx) = mpsc::channel::<Reply>();
    let jobs_rx = Arc::new(Mutex::new(jobs_rx));
    let handler = Arc::new(handler);
    let busy = Arc::new(Busy::default());
    let mut threads = Vec::new();
    for i in 0..options.threads.max(1) {
        let (jobs, replies, waker, handler, busy) =
            (jobs_rx.clone(), replies_tx.clone(), waker.clone(), handler.clone(), busy.clone());
        let name: String = options.name.chars().take(12).collect();
        let thread = std::thread::Builder::new().name(format!("{name}-{i}")).stack_size(options.stack_size);
        threads.push(thread.spawn(move || {
            loop {
                // One thread waits on the channel at a time; the others on the
                // lock. A job taken counts as running before the lock is let go.
                let job = match jobs.lock() {
                    Ok(rx) => {
                        rx.recv().inspect(|_| *busy.running.lock().unwrap_or_else(|e| e.into_inner()) += 1)
                    }
                    Err(_) => return,
                };
                let Ok(Job { session, token, body }) = job else { return };
                let relay = Relay { replies: &replies, waker: &waker, session };
                let mut replier = Replier { target: Target::Relay(relay), dialect, client: &token };
                let reply = handler(body, &mut replier);
                relay_final(&replies, &waker, session, token, reply);
                let mut running = busy.running.lock().unwrap_or_else(|e| e.into_inner());
                *running -= 1;
                busy.done.notify_all();
            }
        })?);
    }
    drop(replies_tx);
    let mut pool = Pool {
        jobs: Some(jobs_tx),
        replies: replies_rx,
        wake_rx,
        waker,
        session: 0,
        in_flight: 0,
        dropped: Arc::default(),
    };
    let result = worker.serve(stop, &mut pool);
    // No more jobs (those not started are dropped): idle threads end at
    // once, busy ones after their handler.
    pool.jobs = None;
    if let Ok(rx) = jobs_rx.lock() {
        while rx.try_recv().is_ok() {}
    }
    let deadline = Instant::now() + options.grace;
    let mut running = busy.running.lock().unwrap_or_else(|e| e.into_inner());
    while *running > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            log::warn!("{}: {} handler(s) still running at shutdown: left behind", worker.service, *running);
            return result;
        }
        running = busy.done.wait_timeout(running, left).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
    }
    drop(running);
    for thread in threads {
        let _ = thread.join();
    }
    result
}

fn relay_final(
    replies: &Sender<Reply>,
    waker: &Waker,
    session: u64,
    token: zmq::Message,
    body: Vec<zmq::Message>,
) {
    let relay = Relay { replies, waker, session };
    relay.forward(Reply { session, kind: ReplyKind::Final, token, body });
}
