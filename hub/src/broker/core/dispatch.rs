//! Where requests go: to the worker with the most free credit (least
//! recently ready among equals), into a service's bounded queue, back to a
//! client as a reply, or, when a worker dies, once more to another worker.
//!
//! Invariant kept here: a service has queued requests only while none of its
//! workers has free credit (its ready heap is empty).

use std::collections::VecDeque;
use std::time::Instant;

use proto::mdp::{self, ReplyKind};

use super::ready::{Entry, NOT_READY};
use super::{disconnect, recycle, Broker, Job, OwnedFrame, Pending, Removal, Transmit};

impl<F: OwnedFrame> Broker<F> {
    /// Hands `pending` to the best ready worker, or queues it (at the front
    /// for a redelivery, which has waited longest).
    pub(super) fn submit(
        &mut self,
        now: Instant,
        sid: usize,
        mut pending: Pending<F>,
        front: bool,
        out: &mut impl Transmit<F>,
    ) {
        while let Some(Entry { wid, .. }) = self.services[sid].ready.top() {
            match self.dispatch(wid, pending, out) {
                Ok(()) => return,
                Err(back) => {
                    pending = back;
                    self.remove_worker(now, wid, Removal::Unroutable, out);
                }
            }
        }
        let service = &mut self.services[sid];
        if service.queue.len() >= self.queue_limit {
            self.counters.queue_overflow += 1;
            service.stats.overflowed += 1;
            self.drop_request(pending);
            return;
        }
        if service.queued_bytes + pending.bytes > self.max_queued_bytes_per_service
            || self.queued_bytes + pending.bytes > self.max_queued_bytes
        {
            self.counters.queue_bytes_overflow += 1;
            service.stats.overflowed += 1;
            self.drop_request(pending);
            return;
        }
        self.next_sweep = self.next_sweep.min(pending.deadline);
        self.enqueue(sid, pending, front);
    }

    /// Queues `pending` on `sid`, counting its bytes (for the service, all
    /// services, and its caller).
    pub(super) fn enqueue(&mut self, sid: usize, pending: Pending<F>, front: bool) {
        let service = &mut self.services[sid];
        service.queued_bytes += pending.bytes;
        self.queued_bytes += pending.bytes;
        self.callers.queued(pending.caller, pending.bytes as isize);
        if front {
            service.queue.push_front(pending);
        } else {
            service.queue.push_back(pending);
        }
    }

    /// Takes the oldest request off `sid`'s queue, uncounting its bytes.
    pub(super) fn dequeue(&mut self, sid: usize) -> Option<Pending<F>> {
        self.unqueue(sid, 0)
    }

    /// Takes request `i` off `sid`'s queue, uncounting its bytes.
    pub(super) fn unqueue(&mut self, sid: usize, i: usize) -> Option<Pending<F>> {
        let service = &mut self.services[sid];
        let pending = service.queue.remove(i)?;
        service.queued_bytes -= pending.bytes;
        self.queued_bytes -= pending.bytes;
        self.callers.queued(pending.caller, -(pending.bytes as isize));
        Some(pending)
    }

    /// A request that ends without a reply (expired, overflowed, lost).
    pub(super) fn drop_request(&mut self, pending: Pending<F>) {
        self.end_request(pending.caller);
        recycle(&mut self.spare, pending.body);
    }

    /// Sends `pending` to worker `wid`, which must have free credit. If the
    /// worker is unreachable the request comes back untouched.
    fn dispatch(
        &mut self,
        wid: usize,
        pending: Pending<F>,
        out: &mut impl Transmit<F>,
    ) -> Result<(), Pending<F>> {
        let Pending { client, dialect, mut body, bytes, caller, deadline, redelivered } = pending;
        let worker = &self.workers[wid];
        debug_assert!(worker.jobs.len() < worker.credit as usize, "dispatch to a worker without credit");
        let copy = (self.services[worker.service].redeliver && !redelivered).then(|| {
            let mut copy = self.spare.pop().unwrap_or_default();
            copy.extend(body.iter().map(|f| F::copy_from(f.bytes())));
            copy
        });
        self.next_token = self.next_token.wrapping_add(1);
        let token = self.next_token.to_be_bytes();
        let envelope = mdp::worker_request(worker.dialect, &token);
        // The hub's own services learn who calls: one more frame, the caller's
        // identity, in the envelope (so a failed send gives back the body alone).
        let mut head = [&[][..]; 8];
        let mut len = 0;
        for frame in envelope.frames() {
            head[len] = frame;
            len += 1;
        }
        if worker.told_caller {
            head[len] = self.callers.name(caller).as_bytes();
            len += 1;
        }
        let sent = out.send(&worker.identity, &head[..len], body.drain(..)).map_err(|rest| rest.collect());
        if let Err(rest) = sent {
            body = rest;
            if let Some(copy) = copy {
                recycle(&mut self.spare, copy);
            }
            return Err(Pending { client, dialect, body, bytes, caller, deadline, redelivered });
        }
        recycle(&mut self.spare, body);
        // Tokens only grow, so a worker's jobs stay sorted by token.
        let worker = &mut self.workers[wid];
        worker.jobs.push(Job { client, token, dialect, caller, copy, redelivered, deadline });
        self.counters.dispatched += 1;
        self.in_flight += 1;
        self.credit_changed(wid, false);
        Ok(())
    }

    /// Worker `wid`'s free credit changed (`gained`: it grew, which makes the
    /// worker the most recently ready): moves it in, within or out of its
    /// service's ready heap.
    fn credit_changed(&mut self, wid: usize, gained: bool) {
        let worker = &self.workers[wid];
        let (sid, slot) = (worker.service, worker.slot);
        let free = worker.credit - worker.jobs.len() as u32;
        let seq = if gained {
            self.next_ready += 1;
            self.next_ready
        } else if slot != NOT_READY {
            self.services[sid].ready.at(slot).seq
        } else {
            0
        };
        let workers = &mut self.workers;
        let mut moved = |w: usize, s: usize| workers[w].slot = s;
        let ready = &mut self.services[sid].ready;
        match (slot != NOT_READY, free > 0) {
            (true, true) => ready.update(slot, free, seq, &mut moved),
            (true, false) => ready.remove(slot, &mut moved),
            (false, true) => ready.insert(Entry { free, seq, wid }, &mut moved),
            (false, false) => {}
        }
    }

    /// Worker `wid` has free credit (it registered, or a request ended):
    /// give it the oldest live queued requests while it has room, then mark
    /// it ready.
    pub(super) fn worker_ready(&mut self, now: Instant, wid: usize, out: &mut impl Transmit<F>) {
        let sid = self.workers[wid].service;
        self.credit_changed(wid, true);
        while self.workers[wid].slot != NOT_READY {
            let Some(pending) = self.dequeue(sid) else { return };
            if pending.deadline <= now {
                self.counters.expired += 1;
                self.services[sid].stats.expired += 1;
                self.drop_request(pending);
                continue;
            }
            if let Err(back) = self.dispatch(wid, pending, out) {
                self.enqueue(sid, back, true);
                self.remove_worker(now, wid, Removal::Unroutable, out);
                return;
            }
        }
    }

    /// A reply part from worker `wid` for its request `token`.
    pub(super) fn forward_reply(
        &mut self,
        now: Instant,
        wid: usize,
        at: usize,
        kind: ReplyKind,
        body: impl Iterator<Item = F>,
        out: &mut impl Transmit<F>,
    ) {
        let worker = &mut self.workers[wid];
        let job = &worker.jobs[at];
        let service = &mut self.services[worker.service];
        match mdp::client_reply(job.dialect, kind, Some(&service.name)) {
            Ok(envelope) => {
                if out.send(job.client.bytes(), envelope.frames(), body).is_err() {
                    self.counters.unroutable += 1;
                }
                match kind {
                    ReplyKind::Final => {
                        self.counters.replies += 1;
                        service.stats.replies += 1;
                    }
                    ReplyKind::Partial => self.counters.partials += 1,
                }
            }
            // Only RFC 7 clients cannot take a PARTIAL: they get the FINAL alone.
            Err(_) => self.counters.partials_dropped_rfc7 += 1,
        }
        if kind == ReplyKind::Final {
            let job = worker.jobs.remove(at);
            self.in_flight -= 1;
            self.end_request(job.caller);
            if let Some(copy) = job.copy {
                recycle(&mut self.spare, copy);
            }
            self.worker_ready(now, wid, out);
        }
    }

    pub(super) fn remove_worker(
        &mut self,
        now: Instant,
        wid: usize,
        why: Removal,
        out: &mut impl Transmit<F>,
    ) {
        let (sid, slot) = (self.workers[wid].service, self.workers[wid].slot);
        if slot != NOT_READY {
            let workers = &mut self.workers;
            self.services[sid].ready.remove(slot, &mut |w, s| workers[w].slot = s);
        }
        let worker = self.workers.remove(wid);
        self.worker_ids.remove(&worker.identity);
        self.services[sid].workers -= 1;
        *match why {
            Removal::Expired => &mut self.counters.workers_expired,
            Removal::Left => &mut self.counters.workers_left,
            Removal::Violation => &mut self.counters.violations,
            Removal::Unroutable => &mut self.counters.unroutable,
            Removal::Revoked => &mut self.counters.workers_revoked,
        } += 1;
        if worker.jobs.is_empty() {
            return;
        }
        self.in_flight -= worker.jobs.len();
        // Every request it held: once more to another worker (oldest first),
        // or lost. Those that find no free credit go to the front of the
        // queue, still oldest first (they have waited longest).
        let mut again = VecDeque::new();
        for job in worker.jobs {
            match job.copy {
                Some(body) if !job.redelivered => {
                    self.counters.redelivered += 1;
                    self.services[sid].stats.redelivered += 1;
                    again.push_back(Pending {
                        client: job.client,
                        dialect: job.dialect,
                        bytes: body.iter().map(|f| f.bytes().len()).sum(),
                        body,
                        caller: job.caller,
                        deadline: job.deadline,
                        redelivered: true,
                    });
                }
                copy => {
                    self.counters.lost_in_flight += 1;
                    self.end_request(job.caller);
                    if let Some(copy) = copy {
                        recycle(&mut self.spare, copy);
                    }
                }
            }
        }
        while let Some(Entry { wid, .. }) = self.services[sid].ready.top() {
            let Some(pending) = again.pop_front() else { return };
            if let Err(back) = self.dispatch(wid, pending, out) {
                again.push_front(back);
                self.remove_worker(now, wid, Removal::Unroutable, out);
            }
        }
        // No credit left: newest first onto the front leaves the oldest first.
        while let Some(pending) = again.pop_back() {
            self.submit(now, sid, pending, true, out);
        }
    }

    pub(super) fn violation(&mut self, now: Instant, wid: usize, out: &mut impl Transmit<F>) {
        let worker = &self.workers[wid];
        disconnect(out, &worker.identity, worker.dialect);
        self.remove_worker(now, wid, Removal::Violation, out);
    }

    /// A request ended (answered, expired, dropped, lost).
    pub(super) fn end_request(&mut self, caller: super::access::Owner) {
        self.open -= 1;
        self.callers.finished(caller);
    }
}
