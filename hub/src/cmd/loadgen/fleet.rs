//! The load generator's driver threads: each runs a shard of simulated
//! agents, one socket per agent as a real fleet has, on a zmq context of its
//! own (libzmq allows 1023 sockets per context).
//!
//! Durable agents each have a DEALER to the broker. Thousands of them are
//! watched through their `ZMQ_FD`s in one epoll set (`polling`), so a reply
//! costs the thread that socket's work alone; `zmq_poll` would check every
//! socket of the shard, a system call each, at every wake-up. A `ZMQ_FD` only
//! says "look at this socket": whether a message is there is `ZMQ_EVENTS`,
//! checked after each wake-up and after each send (a send may take the
//! signal of a reply that arrived meanwhile).

use std::num::NonZeroUsize;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use polling::{Event, Events, PollMode, Poller};
use proto::bus::Framing;
use proto::mdp::client::Send;
use proto::mdp::ReplyKind;
use transport::frames::{recv_frames, send_frames, Received};
use transport::{Endpoint, Publisher, Shutdown};

use super::agent::{live, Answer, Rules, Schedule, SimAgent};
use super::stats::Counters;

/// Agents per driver thread (and zmq context, below libzmq's 1023 sockets).
pub const AGENTS_PER_THREAD: usize = 1000;
/// How often each agent's schedule, timeouts and backoff are looked at.
const TICK: Duration = Duration::from_millis(10);
/// Frames in a reply; an ingest reply has one.
const MAX_REPLY_FRAMES: usize = 16;

/// One simulated agent to run.
#[derive(Clone, Debug)]
pub struct Spec {
    pub id: String,
    pub epoch: u64,
    /// When its first sample is due: spread over one period, so a fleet's
    /// samples do not all fall on the same instant.
    pub first: Instant,
}

/// What all drivers share.
pub struct Plan {
    pub endpoint: Endpoint,
    pub period: Duration,
    pub started: Instant,
    /// Samples are made until then (`None`: until stopped) ...
    pub produce_until: Option<Instant>,
    /// ... and acknowledgements awaited until then.
    pub drain_until: Option<Instant>,
    pub rules: Rules,
}

impl Plan {
    fn producing(&self, now: Instant) -> bool {
        self.produce_until.is_none_or(|until| now < until)
    }

    fn drain_over(&self, now: Instant) -> bool {
        self.drain_until.is_some_and(|until| now >= until)
    }
}

/// One agent as the final summary shows it.
#[derive(Clone, Debug)]
pub struct AgentSummary {
    pub id: String,
    pub epoch: u64,
    pub samples: u64,
    pub acknowledged: u64,
    pub dropped: u64,
    pub acked_through: u64,
}

fn wall_ns() -> i64 {
    hub::clock::wall_ns()
}

/// A durable agent and its connection.
struct Slot {
    agent: SimAgent,
    socket: Option<(zmq::Socket, RawFd)>,
}

/// Runs `specs` as durable agents until the plan's end or `shutdown`.
pub fn run_durable(
    specs: Vec<Spec>,
    plan: Arc<Plan>,
    counters: Arc<Counters>,
    shutdown: Shutdown,
) -> Result<Vec<AgentSummary>, String> {
    let ctx = zmq::Context::new();
    let poller = Poller::new().map_err(|e| format!("cannot make an epoll set: {e}"))?;
    let mut slots: Vec<Slot> = specs
        .into_iter()
        .map(|s| {
            let schedule = Schedule::new(s.first, plan.period);
            Slot { agent: SimAgent::new(s.id, s.epoch, plan.started, schedule, &plan.rules), socket: None }
        })
        .collect();
    let mut shell = Shell { ctx, poller, frames: Vec::new(), plan: &plan, counters: &counters };
    let mut events = Events::with_capacity(NonZeroUsize::new(1024).expect("not zero"));
    let mut next_tick = Instant::now();
    while !shutdown.is_triggered() {
        let now = Instant::now();
        if now >= next_tick {
            if !plan.producing(now) && (plan.drain_over(now) || slots.iter().all(|s| drained(&s.agent))) {
                break;
            }
            shell.tick(&mut slots, now)?;
            next_tick = now + TICK;
        }
        events.clear();
        let wait = next_tick.saturating_duration_since(Instant::now());
        shell.poller.wait(&mut events, Some(wait)).map_err(|e| format!("epoll: {e}"))?;
        let now = Instant::now();
        for event in events.iter() {
            if let Some(slot) = slots.get_mut(event.key) {
                shell.take_answers(slot, now);
            }
        }
    }
    for slot in &mut slots {
        shell.close(slot);
    }
    // The gauges as the run ends, not as the last tick saw them.
    counters.in_flight.store(slots.iter().filter(|s| s.agent.in_flight()).count() as u64, Relaxed);
    counters.backlog.store(slots.iter().map(|s| s.agent.backlog() as u64).sum(), Relaxed);
    Ok(slots.iter().map(|s| summary(&s.agent)).collect())
}

fn drained(agent: &SimAgent) -> bool {
    agent.backlog() == 0 && !agent.in_flight()
}

fn summary(a: &SimAgent) -> AgentSummary {
    AgentSummary {
        id: a.id.clone(),
        epoch: a.epoch,
        samples: a.made,
        acknowledged: a.acked,
        dropped: a.dropped,
        acked_through: a.acked_through,
    }
}

/// The socket side of a durable driver.
struct Shell<'a> {
    ctx: zmq::Context,
    poller: Poller,
    frames: Vec<zmq::Message>,
    plan: &'a Plan,
    counters: &'a Counters,
}

impl Shell<'_> {
    /// Every agent: make what is due, give up on overdue answers, send what may go.
    fn tick(&mut self, slots: &mut [Slot], now: Instant) -> Result<(), String> {
        let (c, rules) = (self.counters, &self.plan.rules);
        let producing = self.plan.producing(now);
        let wall = wall_ns();
        let (mut in_flight, mut backlog) = (0, 0);
        for (key, slot) in slots.iter_mut().enumerate() {
            if producing {
                let (made, dropped) = slot.agent.produce(now, wall, rules);
                c.samples.fetch_add(made, Relaxed);
                c.dropped.fetch_add(dropped, Relaxed);
            }
            if slot.agent.timed_out(now) {
                c.timeouts.fetch_add(1, Relaxed);
                self.close(slot);
            }
            if let Some((send, frames, count)) = slot.agent.next_batch(now, rules) {
                self.send(slot, key, send, frames, count, now)?;
            }
            in_flight += u64::from(slot.agent.in_flight());
            backlog += slot.agent.backlog() as u64;
        }
        c.in_flight.store(in_flight, Relaxed);
        c.backlog.store(backlog, Relaxed);
        Ok(())
    }

    fn send(
        &mut self,
        slot: &mut Slot,
        key: usize,
        send: Send,
        frames: [Vec<u8>; 2],
        count: usize,
        now: Instant,
    ) -> Result<(), String> {
        if send == Send::FreshSocket || slot.socket.is_none() {
            self.close(slot);
            self.open(slot, key)?;
        }
        let (socket, _) = slot.socket.as_ref().expect("just opened");
        let envelope = slot.agent.core.envelope().expect("a batch is in flight");
        // A DEALER queues at once for a connecting peer: only a full queue says EAGAIN.
        match send_frames(socket, envelope.frames(), frames, zmq::DONTWAIT) {
            Ok(()) => {
                self.counters.batches.fetch_add(1, Relaxed);
                self.counters.sent.fetch_add(count as u64, Relaxed);
                self.take_answers(slot, now);
            }
            Err(e) => {
                log::debug!("{}: cannot send a batch ({e}): backing off", slot.agent.id);
                slot.agent.failed(now);
                self.close(slot);
            }
        }
        Ok(())
    }

    fn open(&mut self, slot: &mut Slot, key: usize) -> Result<(), String> {
        let socket = transport::socket::dealer(&self.ctx, &self.plan.endpoint).map_err(|e| {
            format!("cannot open a socket for {} ({e}): too many open files? see `ulimit -n`", slot.agent.id)
        })?;
        let fd = socket.get_fd().map_err(|e| format!("ZMQ_FD: {e}"))?;
        // SAFETY: `fd` is the socket's own descriptor, open while the socket
        // lives; `close` takes it out of the set before the socket closes.
        unsafe { self.poller.add_with_mode(fd, Event::readable(key), PollMode::Level) }
            .map_err(|e| format!("epoll add: {e}"))?;
        slot.socket = Some((socket, fd));
        Ok(())
    }

    fn close(&mut self, slot: &mut Slot) {
        if let Some((socket, fd)) = slot.socket.take() {
            // SAFETY: the socket still holds `fd` open here.
            let _ = self.poller.delete(unsafe { BorrowedFd::borrow_raw(fd) });
            drop(socket);
        }
    }

    /// Reads every message waiting on the slot's socket.
    fn take_answers(&mut self, slot: &mut Slot, now: Instant) {
        let c = self.counters;
        let Some((socket, _)) = &slot.socket else { return };
        while socket.get_events().is_ok_and(|e| e.contains(zmq::POLLIN)) {
            match recv_frames(socket, &mut self.frames, MAX_REPLY_FRAMES, zmq::DONTWAIT) {
                Ok(Received::Message) => {}
                Ok(Received::TooManyFrames) => continue,
                Ok(Received::WouldBlock) | Err(_) => break,
            }
            let Some(part) = slot.agent.core.on_message(now, &self.frames) else { continue };
            if part.kind != ReplyKind::Final {
                continue;
            }
            let first = part.body.first().map(|f| &f[..]);
            match slot.agent.on_answer(now, first, &self.plan.rules) {
                Answer::Acked { samples, duplicates, latency } => {
                    c.acknowledged.fetch_add(samples, Relaxed);
                    c.duplicates.fetch_add(duplicates, Relaxed);
                    if let Some(latency) = latency {
                        c.record_latency(latency);
                    }
                }
                Answer::Retry => {
                    c.retries.fetch_add(1, Relaxed);
                }
                Answer::Rejected { reason } => {
                    if c.rejected.fetch_add(1, Relaxed) == 0 {
                        eprintln!("loadgen: the hub rejects {}'s batches: {reason}", slot.agent.id);
                    }
                }
            }
        }
    }
}

/// Runs `specs` as best-effort publishers until the plan's end or `shutdown`:
/// each agent its own PUB socket, its samples published as they are made.
pub fn run_live(
    specs: Vec<Spec>,
    plan: Arc<Plan>,
    counters: Arc<Counters>,
    shutdown: Shutdown,
) -> Result<Vec<AgentSummary>, String> {
    let ctx = zmq::Context::new();
    let mut agents = Vec::with_capacity(specs.len());
    for s in specs {
        let publisher = Publisher::connect(&ctx, &plan.endpoint, Framing::TwoFrame).map_err(|e| {
            format!("cannot open a socket for {} ({e}): too many open files? see `ulimit -n`", s.id)
        })?;
        let schedule = Schedule::new(s.first, plan.period);
        let summary = AgentSummary {
            id: s.id,
            epoch: s.epoch,
            samples: 0,
            acknowledged: 0,
            dropped: 0,
            acked_through: 0,
        };
        agents.push((publisher, schedule, summary));
    }
    let max_due = plan.rules.max_backlog as u64;
    let mut next_tick = Instant::now();
    while !shutdown.is_triggered() && plan.producing(Instant::now()) {
        let now = Instant::now();
        let wall = wall_ns();
        for (publisher, schedule, a) in &mut agents {
            for _ in 0..schedule.due(now, max_due) {
                a.samples += 1;
                let (topic, json) = live(&a.id, a.epoch, a.samples, plan.started, now, wall);
                let counter = match publisher.publish(topic.as_bytes(), json.as_bytes()) {
                    Ok(()) => &counters.sent,
                    Err(_) => {
                        a.dropped += 1;
                        &counters.dropped
                    }
                };
                counter.fetch_add(1, Relaxed);
                counters.samples.fetch_add(1, Relaxed);
            }
        }
        next_tick += TICK;
        // The schedule's own wait: the next round of samples is due then.
        std::thread::sleep(next_tick.saturating_duration_since(Instant::now()).min(TICK));
    }
    Ok(agents.into_iter().map(|(_, _, a)| a).collect())
}
