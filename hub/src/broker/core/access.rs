//! Who may do what through the broker: identities, their grants, request
//! rate and in-flight limits, exclusive agent services, refusals.
//!
//! With security off every peer is [`Owner::Anyone`] and nothing here
//! refuses. With it on, a request or READY is checked against its identity's
//! grants; requests count against the identity's token bucket, in-flight
//! limit and queued-bytes limit (so one identity cannot fill a service's
//! queue for everyone). Refused requests are answered in the client's dialect (403/429, or
//! plantd's error JSON); refused READYs get DISCONNECT. Every refusal is
//! counted in [`Security::denials`]. Services known only from requests are
//! bounded per identity too (see the core's module doc).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use proto::mdp::{self, Dialect, ReplyKind};
use proto::mmi::{ReadyRefusal, Status};
use proto::rate::TokenBucket;

use super::{disconnect, hex, lossy, Broker, OwnedFrame, Removal, Transmit};
use crate::broker::config::BrokerConfig;
use crate::security::{Grants, Kind, Security};

/// Services only the hub's own in-process workers may provide.
const RESERVED: [&[u8]; 9] = [
    proto::state::SERVICE.as_bytes(),
    proto::ingest::SERVICE.as_bytes(),
    proto::ingest::ORDERED_SERVICE.as_bytes(),
    proto::hub::SERVICE.as_bytes(),
    proto::hub::DLQ_SERVICE.as_bytes(),
    proto::consumer::SERVICE.as_bytes(),
    proto::consumer::ADMIN_SERVICE.as_bytes(),
    proto::fleet::SERVICE.as_bytes(),
    proto::fleet::ADMIN_SERVICE.as_bytes(),
];

/// Who a request or a worker belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Owner {
    /// Security is off.
    Anyone,
    /// One of the hub's own services, in process.
    Hub,
    /// An identity, by index into [`Callers`].
    Identity(usize),
}

struct Caller {
    name: Box<str>,
    grants: Arc<Grants>,
    bucket: TokenBucket,
    in_flight: u32,
    /// Bytes of its requests waiting in queues.
    queued_bytes: usize,
    /// Services known only from its requests (no worker ever), that it named first.
    requested_services: usize,
}

/// The identities the broker has seen (bounded: only allow-listed identities
/// get through the ZAP handler), with what each may do and has open.
pub(super) struct Callers {
    ids: HashMap<Box<str>, usize>,
    all: Vec<Caller>,
    rate: f64,
    burst: f64,
    max_in_flight: u32,
    max_queued_bytes: usize,
    max_requested_services: usize,
    /// The security generation the grants were read at.
    generation: Option<u64>,
}

/// Why a request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    Forbidden,
    TooMany,
    /// No worker ever provided the service, and no more such names may wait.
    NoSuchService,
}

impl Callers {
    pub(super) fn new(config: &BrokerConfig, generation: Option<u64>) -> Callers {
        Callers {
            ids: HashMap::new(),
            all: Vec::new(),
            rate: config.rate_per_identity,
            burst: config.burst_per_identity,
            max_in_flight: config.max_in_flight_per_identity,
            max_queued_bytes: config.max_queued_bytes_per_identity,
            max_requested_services: config.max_requested_services_per_identity,
            generation,
        }
    }

    /// The index of `name`, added with its grants on first sight.
    pub(super) fn intern(&mut self, name: &str, security: Option<&Security>, now: Instant) -> usize {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let grants = security.map_or_else(Grants::none, |s| s.grants(name));
        let caller = Caller {
            name: name.into(),
            grants,
            bucket: TokenBucket::new(self.rate, self.burst, now),
            in_flight: 0,
            queued_bytes: 0,
            requested_services: 0,
        };
        self.all.push(caller);
        self.ids.insert(name.into(), self.all.len() - 1);
        self.all.len() - 1
    }

    /// The name a request's caller is passed to the hub's own services under
    /// (empty for the hub itself, or with security off).
    pub(super) fn name(&self, owner: Owner) -> &str {
        match owner {
            Owner::Identity(id) => &self.all[id].name,
            Owner::Anyone | Owner::Hub => "",
        }
    }

    /// A request of `owner`'s was accepted.
    pub(super) fn started(&mut self, owner: Owner) {
        if let Owner::Identity(id) = owner {
            self.all[id].in_flight += 1;
        }
    }

    /// A request of `owner`'s ended (answered, expired, dropped, lost).
    pub(super) fn finished(&mut self, owner: Owner) {
        if let Owner::Identity(id) = owner {
            self.all[id].in_flight = self.all[id].in_flight.saturating_sub(1);
        }
    }

    /// `bytes` of `owner`'s requests were queued (or, negative, left a queue).
    pub(super) fn queued(&mut self, owner: Owner, bytes: isize) {
        if let Owner::Identity(id) = owner {
            let caller = &mut self.all[id];
            caller.queued_bytes = caller.queued_bytes.saturating_add_signed(bytes);
        }
    }

    /// Whether `owner` may name one more service no worker has provided
    /// (identities only: without security everyone shares the broker's bound).
    pub(super) fn may_request_new(&self, owner: Owner) -> bool {
        match owner {
            Owner::Identity(id) => self.all[id].requested_services < self.max_requested_services,
            Owner::Anyone | Owner::Hub => true,
        }
    }

    /// `owner` named (or, negative, no longer holds) services known only from requests.
    pub(super) fn requested(&mut self, owner: Owner, by: isize) {
        if let Owner::Identity(id) = owner {
            let caller = &mut self.all[id];
            caller.requested_services = caller.requested_services.saturating_add_signed(by);
        }
    }

    /// Checks the counts against what is really open: (caller, queued bytes)
    /// per request, 0 bytes for those with a worker.
    #[cfg(test)]
    pub(super) fn check_open(&self, open: impl Iterator<Item = (Owner, usize)>) {
        let mut counted = vec![(0u32, 0usize); self.all.len()];
        for (owner, bytes) in open {
            if let Owner::Identity(id) = owner {
                counted[id].0 += 1;
                counted[id].1 += bytes;
            }
        }
        for (caller, (requests, bytes)) in self.all.iter().zip(counted) {
            assert_eq!(caller.in_flight, requests, "{}'s requests in flight", caller.name);
            assert_eq!(caller.queued_bytes, bytes, "{}'s queued bytes", caller.name);
            assert!(caller.in_flight <= self.max_in_flight);
        }
    }

    /// Checks each identity's count of services known only from its
    /// requests against `named` (who named each).
    #[cfg(test)]
    pub(super) fn check_requested(&self, named: &[Owner]) {
        for (id, caller) in self.all.iter().enumerate() {
            let mine = named.iter().filter(|&&o| o == Owner::Identity(id)).count();
            assert_eq!(caller.requested_services, mine, "services {} named", caller.name);
            assert!(mine <= self.max_requested_services);
        }
    }
}

impl<F: OwnedFrame> Broker<F> {
    /// After a reload: re-reads every identity's grants, drops the workers of
    /// revoked identities and of those no longer allowed their service, and
    /// drops queued requests their callers may no longer make.
    pub(super) fn refresh(&mut self, now: Instant, out: &mut impl Transmit<F>) {
        let Some(security) = self.security.clone() else { return };
        let generation = security.generation();
        let Some(seen) = self.callers.generation.filter(|&g| g != generation) else { return };
        self.callers.generation = Some(generation);
        let revoked = security.revoked_since(seen);
        for caller in &mut self.callers.all {
            caller.grants = security.grants(&caller.name);
        }
        let callers = &self.callers;
        let allowed = |owner: Owner, may: &dyn Fn(&Grants) -> bool| match owner {
            Owner::Identity(id) => !revoked.contains(&callers.all[id].name) && may(&callers.all[id].grants),
            Owner::Anyone | Owner::Hub => true,
        };
        self.scratch.clear();
        for (wid, w) in self.workers.iter() {
            if !allowed(w.owner, &|g| g.may_provide(&self.services[w.service].name)) {
                self.scratch.push(wid);
            }
        }
        let mut purged = Vec::new();
        for (sid, service) in self.services.iter() {
            for (i, p) in service.queue.iter().enumerate() {
                let command = p.body.first().map(|f| f.bytes());
                if !allowed(p.caller, &|g| g.may_call(&service.name, command)) {
                    purged.push((sid, i));
                }
            }
        }
        for &(sid, i) in purged.iter().rev() {
            if let Some(p) = self.unqueue(sid, i) {
                self.counters.revoked_requests += 1;
                self.drop_request(p);
            }
        }
        for i in 0..self.scratch.len() {
            let wid = self.scratch[i];
            let Some(w) = self.workers.get(wid) else { continue };
            let (name, service) =
                (self.callers.name(w.owner).to_string(), lossy(&self.services[w.service].name));
            security
                .denials
                .record(&name, Kind::Provide, || format!("revoked: {name} may no longer provide {service}"));
            disconnect(out, &w.identity, w.dialect);
            self.remove_worker(now, wid, Removal::Revoked, out);
        }
    }

    /// Whether `owner` may send this request now; counts and explains a refusal.
    pub(super) fn admit(
        &mut self,
        now: Instant,
        owner: Owner,
        service: &[u8],
        body: &[F],
    ) -> Result<(), Refusal> {
        let Owner::Identity(id) = owner else { return Ok(()) };
        let command = body.first().map(|f| f.bytes());
        let bytes: usize = body.iter().map(|f| f.bytes().len()).sum();
        let caller = &mut self.callers.all[id];
        let mmi = proto::mmi::is_mmi(service);
        // Anyone may ask why its own READY was refused.
        let own_refusal = service == proto::mmi::REFUSAL;
        let (kind, refusal) = if !own_refusal && !caller.grants.may_call(service, command) {
            (Kind::Call, Refusal::Forbidden)
        } else if !caller.bucket.try_take(1.0, now) {
            (Kind::Rate, Refusal::TooMany)
        } else if !mmi && caller.in_flight >= self.callers.max_in_flight {
            (Kind::InFlight, Refusal::TooMany)
        } else if !mmi && caller.queued_bytes + bytes > self.callers.max_queued_bytes {
            // Its requests already fill its share of the queues.
            (Kind::InFlight, Refusal::TooMany)
        } else {
            return Ok(());
        };
        self.deny(owner, kind, || {
            let command = command.map(|c| format!(" {}", lossy(c))).unwrap_or_default();
            format!("request to {}{command}", lossy(service))
        });
        Err(refusal)
    }

    /// Whether `owner` may register for `service` (counted when not).
    pub(super) fn may_provide(&mut self, owner: Owner, service: &[u8]) -> Result<(), ReadyRefusal> {
        let refusal = match owner {
            Owner::Anyone | Owner::Hub => return Ok(()),
            Owner::Identity(_) if RESERVED.contains(&service) => ReadyRefusal::Reserved,
            Owner::Identity(id) if !self.callers.all[id].grants.may_provide(service) => {
                ReadyRefusal::Forbidden
            }
            Owner::Identity(_) => return Ok(()),
        };
        self.deny(owner, Kind::Provide, || format!("READY for {}", lossy(service)));
        Err(refusal)
    }

    /// An agent's service has one live worker. A READY for one already taken
    /// is refused, unless the present worker is gone (a heartbeat to it
    /// cannot be routed: the agent restarted), which is then dropped.
    pub(super) fn make_room_for(
        &mut self,
        now: Instant,
        sid: usize,
        owner: Owner,
        out: &mut impl Transmit<F>,
    ) -> bool {
        self.scratch.clear();
        self.scratch.extend(self.workers.iter().filter(|(_, w)| w.service == sid).map(|(wid, _)| wid));
        for i in 0..self.scratch.len() {
            let wid = self.scratch[i];
            let w = &self.workers[wid];
            let probe = mdp::heartbeat(w.dialect, false);
            if out.send(&w.identity, probe.frames(), std::iter::empty()).is_err() {
                self.remove_worker(now, wid, Removal::Unroutable, out);
            }
        }
        if self.services[sid].workers == 0 {
            return true;
        }
        self.counters.duplicate_workers += 1;
        let service = lossy(&self.services[sid].name);
        let present = self.workers.iter().find(|(_, w)| w.service == sid).map(|(_, w)| hex(&w.identity));
        let detail = || {
            format!(
                "a second live registration of {service} was refused (the first is worker {}): \
                 two controllers share one agent id, e.g. cloned from one SD card image",
                present.unwrap_or_default()
            )
        };
        match &self.security {
            Some(security) => security.denials.record(self.callers.name(owner), Kind::Duplicate, detail),
            None => log::error!("{}", detail()),
        }
        false
    }

    /// Counts a refusal (when security is on) and logs it, rate-limited.
    pub(super) fn deny(&mut self, owner: Owner, kind: Kind, detail: impl FnOnce() -> String) {
        self.counters.denied += 1;
        if let Some(security) = &self.security {
            let name = match owner {
                Owner::Identity(id) => &self.callers.all[id].name,
                Owner::Anyone | Owner::Hub => crate::security::denials::UNKNOWN,
            };
            security.denials.record(name, kind, detail);
        }
    }

    /// Answers a refused request in the client's dialect: plantd's error JSON,
    /// or an MMI-style status (403, 429).
    pub(super) fn refuse(
        &mut self,
        to: &[u8],
        dialect: Dialect,
        service: &[u8],
        refusal: Refusal,
        out: &mut impl Transmit<F>,
    ) {
        let status = match refusal {
            Refusal::Forbidden => Status::Forbidden,
            Refusal::TooMany => Status::TooManyRequests,
            Refusal::NoSuchService => Status::NotFound,
        };
        let body = match dialect {
            Dialect::Plantd => {
                let message = match refusal {
                    Refusal::Forbidden => "forbidden: this identity may not make this request",
                    Refusal::TooMany => "too many requests: over this identity's rate or in-flight limit",
                    Refusal::NoSuchService => {
                        "no such service: no worker has provided it, and this caller has too many requests \
                         waiting for such services"
                    }
                };
                proto::state::failure(message).to_string().into_bytes()
            }
            _ => status.as_bytes().to_vec(),
        };
        if let Ok(envelope) = mdp::client_reply(dialect, ReplyKind::Final, Some(service)) {
            if out.send(to, envelope.frames(), std::iter::once(F::copy_from(&body))).is_err() {
                self.counters.unroutable += 1;
            }
        }
    }
}
