//! The broker's routing logic, sans-IO: messages and time in, messages out.
//!
//! The core never touches a socket or a clock. The shell ([`super::BrokerServer::run`])
//! receives each message into frames, calls [`Broker::handle`] with the
//! current time, and calls [`Broker::tick`] when [`Broker::next_deadline`]
//! passes; the core answers through a [`Transmit`]. Frames are generic so the
//! same code routes `zmq::Message`s in production and `Vec<u8>`s in tests.
//!
//! Routing rules (RFC 7/18, plus what the notes say plantd and majortomo need):
//! - Each peer is answered in the dialect it spoke; a request may be served by
//!   a worker of any dialect. RFC 7 clients get only the FINAL of a stream.
//! - A worker holds up to its credit of requests at once (1 for stock
//!   workers; more if its READY said so, see `proto::mdp`). Each request goes
//!   to the worker with the most free credit, least recently ready among
//!   equals (for stock workers: least recently ready first). With no free
//!   credit, requests wait in a bounded per-service queue and expire.
//! - Every worker command but DISCONNECT proves the worker alive; silent
//!   workers are purged. Protocol violations and commands from unknown
//!   workers get DISCONNECT, which makes a worker register again.
//! - Services that have a worker (or had one, while requests wait) and
//!   services known only from requests are bounded apart (`max_services`,
//!   `max_requested_services`, and per identity
//!   `max_requested_services_per_identity`), so requests for made-up names
//!   can never fill the table a worker's READY needs. A request over those
//!   bounds is answered 404 ("no such service"). Why a READY was refused
//!   (MDP answers only DISCONNECT) is kept per caller for `mmi.refusal`.
//! - A service listed in `redeliver` gets each in-flight request of a worker
//!   that dies delivered once more.
//! - Workers never see a client's routing id: each request reaches its worker
//!   under an opaque token, which the reply must echo. libzmq makes routing
//!   ids `0x00` + a counter and aborts if a peer already took the next one by
//!   choosing it explicitly, so a worker that learned ids could crash the hub.
//!   The token is also what tells apart the requests a credit worker holds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::mdp::{self, Dialect, ReplyKind, ToBroker};
use proto::{mmi, Frame};
use slab::Slab;

use self::access::{Callers, Owner, Refusal};
use super::counters::BrokerCounters;
use crate::broker::config::BrokerConfig;
use crate::security::{Security, Sender};

mod access;
mod census;
#[cfg(test)]
mod checks;
mod dispatch;
mod own_service;
mod ready;
mod services;

pub use self::census::Census;
pub use self::own_service::ServiceRow;

/// A frame the core can own and copy (copies are made only for redelivery
/// and for the broker's own small replies).
pub trait OwnedFrame: Frame + Sized {
    fn copy_from(bytes: &[u8]) -> Self;
}

impl OwnedFrame for Vec<u8> {
    fn copy_from(bytes: &[u8]) -> Self {
        bytes.to_vec()
    }
}

/// Where the core's messages go.
pub trait Transmit<F> {
    /// Queues one message for the peer whose routing identity is `to`: the
    /// `head` frames, then the `body` frames. If the peer cannot take it (gone,
    /// or its queue is full) nothing is sent and the unsent body comes back.
    fn send<B: Iterator<Item = F>>(&mut self, to: &[u8], head: &[&[u8]], body: B) -> Result<(), B>;

    /// The metrics `mmi.metrics` answers with, given the broker's own: the
    /// shell knows the rest of the hub's, the core only its own.
    fn metrics(&mut self, broker: crate::metrics::Families) -> crate::metrics::Families {
        broker
    }
}

/// Body buffers kept for reuse, so steady-state routing does not allocate.
const SPARE_BODIES: usize = 1024;

/// Where a message came from, as the shell read it off the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin<'a> {
    /// The identity the ZAP handler gave the connection.
    pub user_id: Option<&'a str>,
    /// Over the network; in-process peers (the hub's own services) are not.
    pub remote: bool,
}

impl Origin<'_> {
    /// An in-process peer with no identity: one of the hub's own services.
    pub const HUB: Origin<'static> = Origin { user_id: None, remote: false };
}

/// A request waiting for a worker.
struct Pending<F> {
    client: F,
    dialect: Dialect,
    body: Vec<F>,
    /// The body's size, counted against the queue's byte bounds.
    bytes: usize,
    caller: Owner,
    deadline: Instant,
    redelivered: bool,
}

/// A request a worker is handling.
struct Job<F> {
    client: F,
    /// What the worker knows the request by (see the module doc).
    token: [u8; 8],
    dialect: Dialect,
    caller: Owner,
    /// A copy of the body, kept only for services that redeliver.
    copy: Option<Vec<F>>,
    redelivered: bool,
    /// The request's original deadline: a redelivery keeps it, so queues stay
    /// in deadline order and expire from the front.
    deadline: Instant,
}

struct Worker<F> {
    identity: Box<[u8]>,
    dialect: Dialect,
    service: usize,
    owner: Owner,
    /// One of the hub's own services under security: each request reaches it
    /// with a first frame naming the caller.
    told_caller: bool,
    expiry: Instant,
    /// How many requests it may hold at once.
    credit: u32,
    /// The requests it holds, in token order (tokens only grow).
    jobs: Vec<Job<F>>,
    /// Its place in its service's ready heap, or [`ready::NOT_READY`].
    slot: usize,
}

struct Service<F> {
    name: Box<[u8]>,
    /// Known only from requests, never from a worker: who asked first (it is
    /// counted against that caller's `max_requested_services_per_identity`).
    requested_by: Option<Owner>,
    redeliver: bool,
    /// An agent's service: one live worker at a time.
    exclusive: bool,
    workers: usize,
    /// Workers with free credit, best first.
    ready: ready::ReadyHeap,
    queue: VecDeque<Pending<F>>,
    queued_bytes: usize,
    /// Counted for metrics while the service is known (it is forgotten, and
    /// its counts with it, once it has neither workers nor queued requests).
    stats: ServiceStats,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub requests: u64,
    pub replies: u64,
    pub expired: u64,
    pub overflowed: u64,
    pub redelivered: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Removal {
    /// Silent for `liveness` intervals.
    Expired,
    /// Said DISCONNECT.
    Left,
    /// Broke the protocol.
    Violation,
    /// libzmq no longer knows the peer.
    Unroutable,
    /// Its identity may no longer provide the service.
    Revoked,
}

pub struct Broker<F> {
    heartbeat_interval: Duration,
    worker_ttl: Duration,
    queue_limit: usize,
    max_queued_bytes_per_service: usize,
    max_queued_bytes: usize,
    queued_bytes: usize,
    request_expiry: Duration,
    max_services: usize,
    max_requested_services: usize,
    max_workers: usize,
    redeliver: HashSet<Box<[u8]>>,
    /// Services with a worker (or that had one), and known only from requests.
    registered_services: usize,
    requested_services: usize,
    /// Why each caller's last READY was refused (one per caller: bounded).
    ready_refusals: HashMap<Owner, (Box<[u8]>, mmi::ReadyRefusal)>,

    services: Slab<Service<F>>,
    service_ids: HashMap<Box<[u8]>, usize>,
    workers: Slab<Worker<F>>,
    worker_ids: HashMap<Box<[u8]>, usize>,
    next_heartbeat: Instant,
    next_sweep: Instant,
    spare: Vec<Vec<F>>,
    scratch: Vec<usize>,
    next_token: u64,
    /// Bumped whenever a worker gains credit: orders workers by readiness.
    next_ready: u64,
    /// Requests accepted and not yet ended (queued or with a worker).
    open: usize,
    /// Requests with a worker.
    in_flight: usize,
    counters: BrokerCounters,
    /// Who may do what; `None` when security is off.
    security: Option<Arc<Security>>,
    callers: Callers,
}

impl<F: OwnedFrame> Broker<F> {
    pub fn new(config: &BrokerConfig, security: Option<Arc<Security>>, now: Instant) -> Self {
        let heartbeat_interval = config.heartbeat_interval();
        Broker {
            heartbeat_interval,
            worker_ttl: heartbeat_interval * config.heartbeat_liveness,
            queue_limit: config.queue_limit,
            max_queued_bytes_per_service: config.max_queued_bytes_per_service,
            max_queued_bytes: config.max_queued_bytes,
            queued_bytes: 0,
            request_expiry: config.request_expiry(),
            max_services: config.max_services,
            max_requested_services: config.max_requested_services,
            max_workers: config.max_workers,
            redeliver: config.redeliver.iter().map(|s| s.as_bytes().into()).collect(),
            registered_services: 0,
            requested_services: 0,
            ready_refusals: HashMap::new(),
            services: Slab::new(),
            service_ids: HashMap::new(),
            workers: Slab::new(),
            worker_ids: HashMap::new(),
            next_heartbeat: now + heartbeat_interval,
            next_sweep: now + heartbeat_interval,
            spare: Vec::new(),
            scratch: Vec::new(),
            next_token: 0,
            next_ready: 0,
            open: 0,
            in_flight: 0,
            counters: BrokerCounters::default(),
            callers: Callers::new(config, security.as_ref().map(|s| s.generation())),
            security,
        }
    }

    pub fn counters(&self) -> &BrokerCounters {
        &self.counters
    }

    pub fn counters_mut(&mut self) -> &mut BrokerCounters {
        &mut self.counters
    }

    /// When [`Broker::tick`] next has work to do.
    pub fn next_deadline(&self) -> Instant {
        self.next_sweep
    }

    /// Handles one message from `origin`. `frames[0]` is the sender's routing
    /// identity. Frames the core keeps are moved out; the rest are left for the caller.
    pub fn handle(
        &mut self,
        now: Instant,
        origin: Origin<'_>,
        frames: &mut Vec<F>,
        out: &mut impl Transmit<F>,
    ) {
        self.refresh(now, out);
        let Some((sender, rest)) = frames.split_first() else { return };
        let sender_worker = self.worker_ids.get(sender.bytes()).copied();
        let (dialect, msg) = match mdp::decode_to_broker(rest) {
            Ok(decoded) => decoded,
            Err(e) => {
                self.counters.malformed[e.index()] += 1;
                log::debug!("dropped a malformed message from {}: {e}", hex(sender.bytes()));
                if let Some(wid) = sender_worker {
                    self.violation(now, wid, out);
                }
                return;
            }
        };
        let owner = match Sender::of(self.security.is_some(), origin.user_id, origin.remote) {
            Sender::Anyone => Owner::Anyone,
            Sender::Hub => Owner::Hub,
            Sender::Identity(name) => {
                Owner::Identity(self.callers.intern(name, self.security.as_deref(), now))
            }
            Sender::Unauthenticated => {
                self.deny(Owner::Anyone, crate::security::Kind::Unauthenticated, || {
                    format!("a message from {} without an identity", hex(sender.bytes()))
                });
                return;
            }
        };
        let sender_worker = match sender_worker {
            // libzmq gives a routing id to one live connection at a time: under
            // another identity, the worker's connection is gone and this is a
            // new peer that chose the same id. It gets none of the worker's rights.
            Some(wid) if self.workers[wid].owner != owner => {
                log::debug!("worker {} replaced by a peer of another identity", hex(sender.bytes()));
                self.remove_worker(now, wid, Removal::Unroutable, out);
                None
            }
            found => found,
        };
        if let Some(wid) = sender_worker {
            if !matches!(msg, ToBroker::Disconnect) {
                self.workers[wid].expiry = now + self.worker_ttl;
            }
        }
        match msg {
            ToBroker::Request { service, body } => {
                if let Err(refusal) = self.admit(now, owner, service, body) {
                    self.refuse(sender.bytes(), dialect, service, refusal, out);
                    return;
                }
                if let Some(request) = mmi::Request::parse(service, body) {
                    let answer = self.answer_mmi(owner, request, out);
                    self.counters.mmi_requests += 1;
                    let envelope = mdp::client_reply(dialect, ReplyKind::Final, Some(service));
                    if let Ok(envelope) = envelope {
                        let body = std::iter::once(F::copy_from(&answer));
                        if out.send(sender.bytes(), envelope.frames(), body).is_err() {
                            self.counters.unroutable += 1;
                        }
                    }
                    return;
                }
                let body_at = frames.len() - body.len();
                let Some(sid) = self.service_for_request(service, owner) else {
                    self.counters.services_refused += 1;
                    self.deny(owner, crate::security::Kind::Service, || {
                        format!(
                            "request to {}: no worker ever provided it, and too many such names are waiting",
                            lossy(service)
                        )
                    });
                    self.refuse(sender.bytes(), dialect, service, Refusal::NoSuchService, out);
                    return;
                };
                self.counters.requests += 1;
                self.services[sid].stats.requests += 1;
                self.callers.started(owner);
                self.open += 1;
                let mut body = self.spare.pop().unwrap_or_default();
                let mut drain = frames.drain(..);
                let Some(client) = drain.next() else { return };
                body.extend(drain.skip(body_at - 1));
                let bytes = body.iter().map(|f| f.bytes().len()).sum();
                let deadline = now + self.request_expiry;
                let pending =
                    Pending { client, dialect, body, bytes, caller: owner, deadline, redelivered: false };
                self.submit(now, sid, pending, false, out);
            }
            ToBroker::Ready { service, credit } => {
                if let Some(wid) = sender_worker {
                    log::debug!("worker {} sent a second READY", hex(sender.bytes()));
                    self.violation(now, wid, out);
                    return;
                }
                let refused = if mmi::is_mmi(service) {
                    Some((&mut self.counters.mmi_workers_refused, mmi::ReadyRefusal::Reserved))
                } else if self.workers.len() >= self.max_workers {
                    Some((&mut self.counters.workers_refused, mmi::ReadyRefusal::WorkersFull))
                } else {
                    None
                };
                if let Some((counter, why)) = refused {
                    *counter += 1;
                    self.refuse_ready(owner, service, why, sender.bytes(), dialect, out);
                    return;
                }
                if let Err(why) = self.may_provide(owner, service) {
                    self.refuse_ready(owner, service, why, sender.bytes(), dialect, out);
                    return;
                }
                let Some(sid) = self.service_for_ready(service) else {
                    self.counters.services_refused += 1;
                    let why = mmi::ReadyRefusal::ServicesFull;
                    self.refuse_ready(owner, service, why, sender.bytes(), dialect, out);
                    return;
                };
                if self.services[sid].exclusive && !self.make_room_for(now, sid, owner, out) {
                    let why = mmi::ReadyRefusal::Duplicate;
                    self.refuse_ready(owner, service, why, sender.bytes(), dialect, out);
                    return;
                }
                if self.ready_refusals.get(&owner).is_some_and(|(s, _)| **s == *service) {
                    self.ready_refusals.remove(&owner);
                }
                let identity: Box<[u8]> = sender.bytes().into();
                let expiry = now + self.worker_ttl;
                let told_caller = self.security.is_some() && owner == Owner::Hub;
                let credit = credit.clamp(1, mdp::MAX_BROKER_CREDIT);
                let worker = Worker {
                    identity: identity.clone(),
                    dialect,
                    service: sid,
                    owner,
                    told_caller,
                    expiry,
                    credit,
                    jobs: Vec::with_capacity(credit as usize),
                    slot: ready::NOT_READY,
                };
                let wid = self.workers.insert(worker);
                self.worker_ids.insert(identity, wid);
                self.services[sid].workers += 1;
                self.counters.workers_registered += 1;
                if credit > 1 {
                    self.counters.credit_workers += 1;
                }
                log::debug!(
                    "worker {} ready for {} ({dialect}, credit {credit})",
                    hex(sender.bytes()),
                    lossy(service)
                );
                self.worker_ready(now, wid, out);
            }
            ToBroker::Reply { kind, client, body } => {
                let Some(wid) = sender_worker else {
                    self.unknown_worker(sender.bytes(), dialect, out);
                    return;
                };
                let held = self.workers[wid].jobs.binary_search_by(|job| job.token[..].cmp(client));
                let Ok(at) = held else {
                    log::debug!("worker {} replied to a request it does not hold", hex(sender.bytes()));
                    self.violation(now, wid, out);
                    return;
                };
                let body_at = frames.len() - body.len();
                self.forward_reply(now, wid, at, kind, frames.drain(body_at..), out);
            }
            ToBroker::Heartbeat => {
                if sender_worker.is_none() {
                    self.unknown_worker(sender.bytes(), dialect, out);
                }
            }
            ToBroker::Disconnect => {
                if let Some(wid) = sender_worker {
                    self.remove_worker(now, wid, Removal::Left, out);
                }
            }
        }
    }

    /// Sends due heartbeats, purges silent workers, expires queued requests
    /// and forgets unused services. Cheap to call early: it returns at once
    /// before [`Broker::next_deadline`].
    pub fn tick(&mut self, now: Instant, out: &mut impl Transmit<F>) {
        self.refresh(now, out);
        if now < self.next_sweep {
            return;
        }
        if now >= self.next_heartbeat {
            for (_, w) in self.workers.iter() {
                let envelope = mdp::heartbeat(w.dialect, false);
                // A peer that cannot take a heartbeat is caught by its own expiry.
                let _ = out.send(&w.identity, envelope.frames(), std::iter::empty());
            }
            self.next_heartbeat = now + self.heartbeat_interval;
        }

        self.scratch.clear();
        self.scratch.extend(self.workers.iter().filter(|(_, w)| w.expiry <= now).map(|(id, _)| id));
        for i in 0..self.scratch.len() {
            // Purging one worker can redeliver its job, and a failed delivery
            // can remove another worker on this list: skip those.
            let Some(w) = self.workers.get(self.scratch[i]) else { continue };
            let wid = self.scratch[i];
            log::debug!("worker {} silent for {:?}: purged", hex(&w.identity), self.worker_ttl);
            disconnect(out, &w.identity, w.dialect);
            self.remove_worker(now, wid, Removal::Expired, out);
        }

        self.scratch.clear();
        self.scratch.extend(self.services.iter().map(|(sid, _)| sid));
        for i in 0..self.scratch.len() {
            let sid = self.scratch[i];
            while self.services[sid].queue.front().is_some_and(|p| p.deadline <= now) {
                if let Some(p) = self.dequeue(sid) {
                    self.counters.expired += 1;
                    self.services[sid].stats.expired += 1;
                    self.drop_request(p);
                }
            }
        }
        self.scratch.clear();
        self.scratch.extend(
            self.services.iter().filter(|(_, s)| s.workers == 0 && s.queue.is_empty()).map(|(sid, _)| sid),
        );
        for i in 0..self.scratch.len() {
            self.forget_service(self.scratch[i]);
        }
        let mut next = self.next_heartbeat;
        for (_, w) in self.workers.iter() {
            next = next.min(w.expiry);
        }
        for (_, s) in self.services.iter() {
            if let Some(p) = s.queue.front() {
                next = next.min(p.deadline);
            }
        }
        self.next_sweep = next;
    }

    /// Tells every worker to go (they register again with the next broker).
    pub fn shutdown(&mut self, out: &mut impl Transmit<F>) {
        for (_, w) in self.workers.iter() {
            disconnect(out, &w.identity, w.dialect);
        }
    }

    /// Refuses a READY (DISCONNECT, the only answer MDP has) and keeps why,
    /// for the caller's `mmi.refusal`.
    fn refuse_ready(
        &mut self,
        owner: Owner,
        service: &[u8],
        why: mmi::ReadyRefusal,
        peer: &[u8],
        dialect: Dialect,
        out: &mut impl Transmit<F>,
    ) {
        self.ready_refusals.insert(owner, (service.into(), why));
        disconnect(out, peer, dialect);
    }

    /// A worker command from a peer we do not know, most often a worker that
    /// outlived a broker restart: DISCONNECT makes it register again.
    fn unknown_worker(&mut self, peer: &[u8], dialect: Dialect, out: &mut impl Transmit<F>) {
        self.counters.unknown_workers += 1;
        disconnect(out, peer, dialect);
    }
}

fn disconnect<F>(out: &mut impl Transmit<F>, peer: &[u8], dialect: Dialect) {
    let envelope = mdp::worker_disconnect(dialect, false);
    let _ = out.send(peer, envelope.frames(), std::iter::empty());
}

fn recycle<F>(spare: &mut Vec<Vec<F>>, mut body: Vec<F>) {
    if spare.len() < SPARE_BODIES {
        body.clear();
        spare.push(body);
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
