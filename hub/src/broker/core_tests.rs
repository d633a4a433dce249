//! The routing core driven directly: frames and instants in, recorded sends out.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proto::mdp::{self, Dialect, FromBroker, ReplyKind, ToBroker};

use super::core::{Broker, Origin, Transmit};
use crate::broker::config::BrokerConfig;
use crate::security::{testing, Kind, Security};
use std::collections::HashMap;
use std::sync::Arc;

type Frames = Vec<Vec<u8>>;

#[derive(Default)]
struct Recorder {
    sent: Vec<(Vec<u8>, Frames)>,
    /// Peers libzmq would refuse (gone).
    gone: HashSet<Vec<u8>>,
}

impl Transmit<Vec<u8>> for Recorder {
    fn send<B: Iterator<Item = Vec<u8>>>(&mut self, to: &[u8], head: &[&[u8]], body: B) -> Result<(), B> {
        if self.gone.contains(to) {
            return Err(body);
        }
        let frames = head.iter().map(|h| h.to_vec()).chain(body).collect();
        self.sent.push((to.to_vec(), frames));
        Ok(())
    }
}

impl Recorder {
    fn take(&mut self) -> Vec<(Vec<u8>, Frames)> {
        std::mem::take(&mut self.sent)
    }

    /// Messages sent to `peer`, decoded.
    fn to(&mut self, peer: &str) -> Vec<Frames> {
        let (mine, rest) = self.take().into_iter().partition(|(to, _)| to == peer.as_bytes());
        self.sent = rest;
        mine.into_iter().map(|(_, f)| f).collect()
    }
}

struct Rig {
    broker: Broker<Vec<u8>>,
    out: Recorder,
    now: Instant,
    /// Peers that connected with an identity (secure rigs); peers named
    /// `hub...` are the hub's own, in process; the rest are remote, anonymous.
    identities: HashMap<String, String>,
    security: Option<Arc<Security>>,
}

const HB: Duration = Duration::from_millis(100);

impl Rig {
    fn new(configure: impl FnOnce(&mut BrokerConfig)) -> Self {
        Self::with(None, configure)
    }

    fn with(security: Option<Arc<Security>>, configure: impl FnOnce(&mut BrokerConfig)) -> Self {
        let mut config =
            BrokerConfig { heartbeat_interval_ms: 100, request_expiry_ms: 1000, ..BrokerConfig::default() };
        configure(&mut config);
        let now = Instant::now();
        let broker = Broker::new(&config, security.clone(), now);
        Rig { broker, out: Recorder::default(), now, identities: HashMap::new(), security }
    }

    /// A broker with security: `peers` are (peer, identity), `roles` (identity pattern, role).
    fn secure(
        peers: &[(&str, &str)],
        roles: &[(&str, &str)],
        configure: impl FnOnce(&mut BrokerConfig),
    ) -> Self {
        let names: Vec<&str> = peers.iter().map(|(_, id)| *id).collect();
        let mut rig = Rig::with(Some(Arc::new(testing::security(&names, roles))), configure);
        rig.identities = peers.iter().map(|(p, id)| (p.to_string(), id.to_string())).collect();
        rig
    }

    fn raw(&mut self, from: &str, frames: Frames) {
        let mut all = vec![from.as_bytes().to_vec()];
        all.extend(frames);
        let origin = match self.identities.get(from) {
            Some(id) => Origin { user_id: Some(id), remote: true },
            None if from.starts_with("hub") => Origin::HUB,
            None => Origin { user_id: None, remote: true },
        };
        self.broker.handle(self.now, origin, &mut all, &mut self.out);
        self.broker.check_invariants();
    }

    fn denials(&self, identity: &str, kind: Kind) -> u64 {
        self.security.as_ref().expect("a secure rig").denials.count(identity, kind)
    }

    fn send(&mut self, from: &str, dialect: Dialect, msg: ToBroker<'_, Vec<u8>>) {
        let frames = mdp::encode_to_broker(dialect, &msg).unwrap();
        self.raw(from, frames);
    }

    fn request(&mut self, client: &str, dialect: Dialect, service: &str, body: &[&str]) {
        let body: Frames = body.iter().map(|b| b.as_bytes().to_vec()).collect();
        self.send(client, dialect, ToBroker::Request { service: service.as_bytes(), body: &body });
    }

    fn ready(&mut self, worker: &str, dialect: Dialect, service: &str) {
        self.ready_credit(worker, dialect, service, 1);
    }

    fn ready_credit(&mut self, worker: &str, dialect: Dialect, service: &str, credit: u32) {
        self.send(worker, dialect, ToBroker::Ready { service: service.as_bytes(), credit });
    }

    /// `worker` replies to `client`'s request: with the token it was given
    /// for it, if it holds that request, else with `client` as the address.
    fn reply(&mut self, worker: &str, dialect: Dialect, kind: ReplyKind, client: &str, body: &[&str]) {
        let body: Frames = body.iter().map(|b| b.as_bytes().to_vec()).collect();
        let jobs = self.broker.jobs_of(worker.as_bytes());
        let address = match jobs.into_iter().find(|j| j.client == client.as_bytes()) {
            Some(job) => job.token,
            None => client.as_bytes().to_vec(),
        };
        self.send(worker, dialect, ToBroker::Reply { kind, client: &address, body: &body });
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.broker.tick(self.now, &mut self.out);
        self.broker.check_invariants();
    }

    /// The one request `worker` was sent (heartbeats aside): (the client it
    /// came from, body). The worker itself sees only the request's token.
    fn request_at(&mut self, worker: &str) -> (Vec<u8>, Frames) {
        let mut msgs = self.out.to(worker);
        msgs.retain(|m| !matches!(mdp::decode_from_broker(m), Ok((_, FromBroker::Heartbeat))));
        assert_eq!(msgs.len(), 1, "expected one message to {worker}, got {msgs:?}");
        match mdp::decode_from_broker(&msgs[0]).unwrap() {
            (_, FromBroker::Request { client: token, body }) => {
                let (client, held) = self.broker.job_of(worker.as_bytes()).expect("the worker holds it");
                assert_eq!(token, held, "the worker knows the request by its token");
                assert_ne!(token, client, "and never sees the client's routing id");
                (client, body.to_vec())
            }
            other => panic!("expected a request, got {other:?}"),
        }
    }
}

fn s(frames: &[Vec<u8>]) -> Vec<String> {
    frames.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect()
}

fn decoded_reply(frames: &Frames) -> (Dialect, ReplyKind, Option<Vec<u8>>, Vec<String>) {
    match mdp::decode_from_broker(frames).unwrap() {
        (d, FromBroker::Reply { kind, service, body }) => (d, kind, service.map(<[u8]>::to_vec), s(body)),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn is_disconnect(frames: &Frames) -> bool {
    matches!(mdp::decode_from_broker(frames), Ok((_, FromBroker::Disconnect)))
}

#[test]
fn each_peer_is_answered_in_its_own_dialect() {
    for client_dialect in Dialect::ALL {
        for worker_dialect in Dialect::ALL {
            let mut rig = Rig::new(|_| {});
            rig.ready("W", worker_dialect, "echo");
            rig.request("C", client_dialect, "echo", &["a", "b"]);
            assert_eq!(rig.request_at("W"), (b"C".to_vec(), vec![b"a".to_vec(), b"b".to_vec()]));

            rig.reply("W", worker_dialect, ReplyKind::Final, "C", &["x"]);
            let replies = rig.out.to("C");
            assert_eq!(replies.len(), 1, "{client_dialect} client, {worker_dialect} worker");
            let (d, kind, service, body) = decoded_reply(&replies[0]);
            assert_eq!((d, kind, body), (client_dialect, ReplyKind::Final, vec!["x".to_string()]));
            let expected_service = (client_dialect != Dialect::Majortomo).then(|| b"echo".to_vec());
            assert_eq!(service, expected_service);
        }
    }
}

#[test]
fn partials_stream_to_clients_that_can_take_them() {
    let mut rig = Rig::new(|_| {});
    rig.ready("W", Dialect::Rfc18, "s");
    rig.request("C18", Dialect::Rfc18, "s", &["q"]);
    rig.out.take();
    rig.reply("W", Dialect::Rfc18, ReplyKind::Partial, "C18", &["p1"]);
    rig.reply("W", Dialect::Rfc18, ReplyKind::Partial, "C18", &["p2"]);
    rig.reply("W", Dialect::Rfc18, ReplyKind::Final, "C18", &["f"]);
    let kinds: Vec<_> = rig.out.to("C18").iter().map(decoded_reply).map(|r| (r.1, r.3)).collect();
    assert_eq!(
        kinds,
        vec![
            (ReplyKind::Partial, vec!["p1".to_string()]),
            (ReplyKind::Partial, vec!["p2".to_string()]),
            (ReplyKind::Final, vec!["f".to_string()])
        ]
    );
    assert_eq!(rig.broker.counters().partials, 2);
}

#[test]
fn rfc7_clients_get_the_final_part_only() {
    let mut rig = Rig::new(|_| {});
    rig.ready("W", Dialect::Majortomo, "s");
    rig.request("C7", Dialect::Rfc7, "s", &["q"]);
    rig.out.take();
    rig.reply("W", Dialect::Majortomo, ReplyKind::Partial, "C7", &["p1"]);
    rig.reply("W", Dialect::Majortomo, ReplyKind::Final, "C7", &["f1", "f2"]);
    let replies = rig.out.to("C7");
    assert_eq!(replies.len(), 1);
    assert_eq!(decoded_reply(&replies[0]).3, vec!["f1", "f2"]);
    assert_eq!(rig.broker.counters().partials_dropped_rfc7, 1);
}

#[test]
fn least_recently_ready_worker_goes_first() {
    let mut rig = Rig::new(|_| {});
    rig.ready("A", Dialect::Rfc7, "s");
    rig.ready("B", Dialect::Rfc7, "s");
    rig.request("C", Dialect::Rfc7, "s", &["1"]);
    assert_eq!(rig.request_at("A").1, vec![b"1".to_vec()]);
    rig.reply("A", Dialect::Rfc7, ReplyKind::Final, "C", &["r"]);
    // A is ready again, but B has been waiting longer.
    rig.request("C", Dialect::Rfc7, "s", &["2"]);
    rig.out.to("C");
    assert_eq!(rig.request_at("B").1, vec![b"2".to_vec()]);
    rig.request("C", Dialect::Rfc7, "s", &["3"]);
    assert_eq!(rig.request_at("A").1, vec![b"3".to_vec()]);
}

#[test]
fn requests_wait_for_a_worker_in_order() {
    let mut rig = Rig::new(|_| {});
    rig.request("C1", Dialect::Rfc7, "s", &["1"]);
    rig.request("C2", Dialect::Rfc18, "s", &["2"]);
    assert!(rig.out.take().is_empty());
    assert_eq!(rig.broker.census().queued, 2);
    rig.ready("W", Dialect::Plantd, "s");
    assert_eq!(rig.request_at("W"), (b"C1".to_vec(), vec![b"1".to_vec()]));
    rig.reply("W", Dialect::Plantd, ReplyKind::Final, "C1", &["r1"]);
    assert_eq!(rig.out.to("C1").len(), 1);
    assert_eq!(rig.request_at("W"), (b"C2".to_vec(), vec![b"2".to_vec()]));
}

#[test]
fn full_queue_drops_and_counts() {
    let mut rig = Rig::new(|c| c.queue_limit = 3);
    for i in 0..5 {
        rig.request("C", Dialect::Rfc7, "s", &[&i.to_string()]);
    }
    assert_eq!(rig.broker.census().queued, 3);
    assert_eq!(rig.broker.counters().queue_overflow, 2);
    rig.ready("W", Dialect::Rfc7, "s");
    // The oldest three were kept.
    assert_eq!(rig.request_at("W").1, vec![b"0".to_vec()]);
}

#[test]
fn queued_requests_expire_and_are_counted() {
    let mut rig = Rig::new(|c| c.request_expiry_ms = 250);
    rig.request("C", Dialect::Rfc7, "s", &["old"]);
    rig.advance(Duration::from_millis(200));
    rig.request("C", Dialect::Rfc7, "s", &["new"]);
    assert!(rig.broker.next_deadline() <= rig.now + Duration::from_millis(50));
    rig.advance(Duration::from_millis(60));
    assert_eq!(rig.broker.counters().expired, 1);
    rig.ready("W", Dialect::Rfc7, "s");
    assert_eq!(rig.request_at("W").1, vec![b"new".to_vec()]);
}

#[test]
fn heartbeats_reach_idle_and_busy_workers() {
    let mut rig = Rig::new(|_| {});
    rig.ready("IDLE", Dialect::Rfc7, "s");
    rig.ready("BUSY", Dialect::Rfc18, "s");
    rig.request("C", Dialect::Rfc7, "s", &["x"]);
    rig.out.take();
    rig.advance(HB);
    for w in ["IDLE", "BUSY"] {
        let msgs = rig.out.to(w);
        assert_eq!(msgs.len(), 1, "{w}");
        assert!(matches!(mdp::decode_from_broker(&msgs[0]), Ok((_, FromBroker::Heartbeat))));
    }
}

#[test]
fn silent_workers_are_purged_and_talking_ones_kept() {
    let mut rig = Rig::new(|c| c.heartbeat_liveness = 3);
    rig.ready("QUIET", Dialect::Rfc7, "s");
    rig.ready("CHATTY", Dialect::Rfc7, "s");
    for _ in 0..4 {
        rig.advance(HB);
        rig.send("CHATTY", Dialect::Rfc7, ToBroker::Heartbeat);
    }
    assert_eq!(rig.broker.census().workers, 1);
    assert_eq!(rig.broker.counters().workers_expired, 1);
    assert!(rig.out.to("QUIET").iter().any(is_disconnect));
    rig.out.take();
    rig.send("CHATTY", Dialect::Rfc7, ToBroker::Heartbeat);
    assert!(rig.out.take().is_empty(), "a live worker's heartbeat needs no answer");
}

#[test]
fn unknown_workers_are_told_to_reconnect() {
    let mut rig = Rig::new(|_| {});
    for d in Dialect::ALL {
        rig.send("GHOST", d, ToBroker::Heartbeat);
        let msgs = rig.out.to("GHOST");
        assert_eq!(mdp::decode_from_broker(&msgs[0]).unwrap(), (d, FromBroker::Disconnect));
    }
    rig.reply("GHOST", Dialect::Rfc7, ReplyKind::Final, "C", &["x"]);
    assert!(rig.out.to("GHOST").iter().any(is_disconnect));
    assert_eq!(rig.broker.counters().unknown_workers, 5);
}

#[test]
fn protocol_violations_disconnect_the_worker() {
    let mut rig = Rig::new(|_| {});
    rig.ready("W", Dialect::Rfc7, "s");
    rig.ready("W", Dialect::Rfc7, "s");
    assert!(rig.out.to("W").iter().any(is_disconnect));
    assert_eq!(rig.broker.census().workers, 0);

    rig.ready("W2", Dialect::Rfc18, "s");
    rig.reply("W2", Dialect::Rfc18, ReplyKind::Final, "NOBODY", &["x"]);
    assert!(rig.out.to("W2").iter().any(is_disconnect));

    rig.ready("W3", Dialect::Rfc18, "s");
    rig.raw("W3", vec![b"MDPW02".to_vec(), b"\x09".to_vec()]);
    assert!(rig.out.to("W3").iter().any(is_disconnect));
    assert_eq!(rig.broker.counters().violations, 3);
    assert_eq!(rig.broker.census().workers, 0);
}

#[test]
fn mmi_names_are_refused_to_workers() {
    let mut rig = Rig::new(|_| {});
    rig.ready("W", Dialect::Rfc7, "mmi.service");
    assert!(rig.out.to("W").iter().any(is_disconnect));
    assert_eq!(rig.broker.counters().mmi_workers_refused, 1);
    assert_eq!(rig.broker.census().workers, 0);
}

#[test]
fn redelivery_is_once_and_only_for_opted_in_services() {
    let mut rig = Rig::new(|c| c.redeliver = vec!["safe".into()]);
    rig.ready("A", Dialect::Rfc7, "safe");
    rig.request("C", Dialect::Rfc7, "safe", &["job"]);
    rig.request_at("A");
    rig.send("A", Dialect::Rfc7, ToBroker::Disconnect);
    assert_eq!(rig.broker.counters().redelivered, 1);
    rig.ready("B", Dialect::Rfc18, "safe");
    assert_eq!(rig.request_at("B"), (b"C".to_vec(), vec![b"job".to_vec()]));
    // Dies again: the request was already redelivered once.
    rig.send("B", Dialect::Rfc18, ToBroker::Disconnect);
    assert_eq!(rig.broker.counters().lost_in_flight, 1);
    assert_eq!(rig.broker.census().queued, 0);

    rig.ready("X", Dialect::Rfc7, "unsafe");
    rig.request("C", Dialect::Rfc7, "unsafe", &["job"]);
    rig.request_at("X");
    rig.advance(HB * 4); // X falls silent and is purged.
    assert_eq!(rig.broker.counters().lost_in_flight, 2);
    assert_eq!(rig.broker.counters().redelivered, 1);
}

#[test]
fn a_redelivered_request_keeps_its_deadline_so_the_queue_still_expires() {
    let mut rig = Rig::new(|c| {
        c.redeliver = vec!["safe".into()];
        c.request_expiry_ms = 1000;
        c.heartbeat_interval_ms = 10_000; // no purges in this test
    });
    rig.ready("A", Dialect::Rfc7, "safe");
    rig.request("C", Dialect::Rfc7, "safe", &["first"]); // deadline t+1000
    rig.request_at("A");
    rig.now += Duration::from_millis(500);
    rig.request("C", Dialect::Rfc7, "safe", &["second"]); // queued, deadline t+1500
    rig.now += Duration::from_millis(100);
    rig.send("A", Dialect::Rfc7, ToBroker::Disconnect); // "first" back at the front
    rig.advance(Duration::from_millis(950)); // t+1550: both are past their deadlines
    assert_eq!(rig.broker.counters().expired, 2);
    assert_eq!(rig.broker.census().queued, 0);
}

#[test]
fn redelivery_reaches_an_idle_worker_at_once() {
    let mut rig = Rig::new(|c| c.redeliver = vec!["safe".into()]);
    rig.ready("A", Dialect::Rfc7, "safe");
    rig.request("C", Dialect::Rfc7, "safe", &["job"]);
    rig.ready("B", Dialect::Rfc7, "safe");
    rig.request_at("A");
    rig.advance(HB);
    rig.send("B", Dialect::Rfc7, ToBroker::Heartbeat);
    rig.advance(HB);
    rig.send("B", Dialect::Rfc7, ToBroker::Heartbeat);
    rig.out.take();
    rig.advance(HB); // A expires.
    assert_eq!(rig.request_at("B"), (b"C".to_vec(), vec![b"job".to_vec()]));
}

#[test]
fn unreachable_worker_is_dropped_and_the_request_goes_to_the_next() {
    let mut rig = Rig::new(|_| {});
    rig.ready("A", Dialect::Rfc7, "s");
    rig.ready("B", Dialect::Rfc7, "s");
    rig.out.gone.insert(b"A".to_vec());
    rig.request("C", Dialect::Rfc7, "s", &["job"]);
    assert_eq!(rig.request_at("B").1, vec![b"job".to_vec()]);
    assert_eq!(rig.broker.census().workers, 1);
    assert_eq!(rig.broker.counters().unroutable, 1);
}

#[test]
fn mmi_answers() {
    let mut rig = Rig::new(|_| {});
    rig.ready("W", Dialect::Rfc7, "echo");
    rig.request("Q", Dialect::Rfc7, "nobody", &["x"]); // a queued request creates a service without workers
    let mut ask = |service: &str, body: &[&str], dialect: Dialect| {
        rig.request("C", dialect, service, body);
        let replies = rig.out.to("C");
        assert_eq!(replies.len(), 1);
        let (d, kind, svc, body) = decoded_reply(&replies[0]);
        assert_eq!((d, kind), (dialect, ReplyKind::Final));
        if dialect != Dialect::Majortomo {
            assert_eq!(svc.as_deref(), Some(service.as_bytes()));
        }
        body.join("")
    };
    assert_eq!(ask("mmi.service", &["echo"], Dialect::Rfc7), "200");
    assert_eq!(ask("mmi.service", &["nobody"], Dialect::Rfc18), "404");
    assert_eq!(ask("mmi.service", &["missing"], Dialect::Plantd), "404");
    assert_eq!(ask("mmi.services", &[], Dialect::Majortomo), r#"["echo"]"#);
    let workers: serde_json::Value = serde_json::from_str(&ask("mmi.workers", &[], Dialect::Rfc7)).unwrap();
    assert_eq!(workers["echo"], serde_json::json!({"workers": 1, "idle": 1, "queued": 0, "queued_bytes": 0}));
    assert_eq!(
        workers["nobody"],
        serde_json::json!({"workers": 0, "idle": 0, "queued": 1, "queued_bytes": 1})
    );
    let metrics: serde_json::Value = serde_json::from_str(&ask("mmi.metrics", &[], Dialect::Rfc7)).unwrap();
    assert_eq!(metrics["plantd_broker_workers_registered_total"], 1);
    assert_eq!(metrics["plantd_broker_queued_requests"], 1);
    let nobody = metrics["plantd_broker_service_queued_requests"].as_array().unwrap();
    assert!(nobody.contains(&serde_json::json!({"service": "nobody", "value": 1})), "{nobody:?}");
    assert_eq!(ask("mmi.status", &[], Dialect::Rfc7), "501");
}

#[test]
fn garbage_is_counted_per_reason_and_harms_nobody() {
    let mut rig = Rig::new(|_| {});
    rig.ready("W", Dialect::Rfc7, "s");
    rig.request("C", Dialect::Rfc7, "s", &["job"]);
    rig.raw("EVIL", vec![b"".to_vec(), b"MDPC01".to_vec()]);
    rig.raw("EVIL", vec![b"junk".to_vec()]);
    rig.raw("EVIL", vec![]);
    rig.raw("EVIL", vec![b"MDPC02".to_vec(), b"\x01".to_vec(), b"".to_vec()]);
    let m = rig.broker.counters().clone();
    assert_eq!(m.malformed[mdp::DecodeError::MissingService.index()], 1);
    assert_eq!(m.malformed[mdp::DecodeError::UnknownHeader.index()], 1);
    assert_eq!(m.malformed[mdp::DecodeError::Empty.index()], 1);
    assert_eq!(m.malformed[mdp::DecodeError::EmptyService.index()], 1);
    assert!(rig.out.to("EVIL").is_empty(), "garbage gets no answer");
    rig.request_at("W");
    rig.reply("W", Dialect::Rfc7, ReplyKind::Final, "C", &["done"]);
    assert_eq!(decoded_reply(&rig.out.to("C")[0]).3, vec!["done"]);
}

#[test]
fn service_and_worker_limits_hold() {
    let mut rig = Rig::new(|c| {
        c.max_services = 2;
        c.max_requested_services = 2;
        c.max_workers = 3;
    });
    rig.request("C", Dialect::Rfc7, "a", &[]);
    rig.request("C", Dialect::Rfc7, "b", &[]);
    rig.request("C", Dialect::Rfc7, "c", &[]);
    assert_eq!(rig.broker.counters().services_refused, 1);
    assert_eq!(decoded_reply(&rig.out.to("C")[0]).3, ["404"], "a request over the bound is answered");
    assert_eq!(rig.broker.census().requested_services, 2);
    // Requested names never take the places workers need.
    rig.ready("W1", Dialect::Rfc7, "d");
    rig.ready("W2", Dialect::Rfc7, "a");
    rig.ready("W3", Dialect::Rfc7, "a");
    let accepted = ["W1", "W2", "W3"].map(|w| rig.out.to(w));
    assert!(!accepted.iter().flatten().any(is_disconnect), "all accepted: {accepted:?}");
    assert_eq!(rig.broker.census().requested_services, 1, "'a' has workers now");
    rig.ready("W4", Dialect::Rfc7, "a");
    assert_eq!(rig.broker.counters().workers_refused, 1);
    assert!(rig.out.to("W4").iter().any(is_disconnect));
    let why = |rig: &mut Rig, service: &str| {
        rig.request("C", Dialect::Rfc7, "mmi.refusal", &[service]);
        decoded_reply(&rig.out.to("C")[0]).3.concat()
    };
    assert_eq!(why(&mut rig, "a"), "workers-full");
    assert_eq!(why(&mut rig, "d"), "none", "the last refusal was for another service");
    // Once the workers are purged and the requests expired, two services with workers fill the table.
    rig.advance(HB * 20);
    assert_eq!((rig.broker.census().workers, rig.broker.census().services), (0, 0));
    rig.ready("W5", Dialect::Rfc7, "e");
    rig.ready("W6", Dialect::Rfc7, "f");
    rig.ready("W7", Dialect::Rfc7, "g");
    assert!(rig.out.to("W7").iter().any(is_disconnect));
    assert_eq!(why(&mut rig, "g"), "services-full");
    rig.ready("W8", Dialect::Rfc7, "mmi.x");
    assert_eq!(why(&mut rig, "mmi.x"), "reserved");
}

/// Issue 19, finding 2: a viewer's requests for 1 000 made-up agent names
/// could fill the service table, so that a restarted agent's READY was
/// refused for ever.
#[test]
fn requests_for_made_up_names_never_lock_an_agent_out() {
    let mut rig = Rig::secure(&PEERS, &ROLES, |c| {
        c.max_services = 4;
        c.max_requested_services = 8;
        c.max_requested_services_per_identity = 3;
    });
    for i in 0..1000 {
        rig.request("V", Dialect::Rfc7, &format!("org.plantd.Agent.ghost{i}"), &["status"]);
    }
    let answers: Vec<String> = rig.out.to("V").iter().map(|f| decoded_reply(f).3.concat()).collect();
    assert_eq!(answers.len(), 997, "all but the first three are answered at once");
    assert!(answers.iter().all(|a| a == "404"), "{answers:?}");
    assert_eq!(rig.denials("grafana", Kind::Service), 997);
    assert_eq!(rig.broker.census().requested_services, 3);
    // Another identity still gets its share; the agent registers at once.
    rig.request("O", Dialect::Plantd, "org.plantd.Agent.ghost-x", &["status"]);
    assert!(rig.out.to("O").is_empty(), "queued, waiting for a worker");
    rig.ready("P1", Dialect::Rfc7, "org.plantd.Agent.pump-1");
    assert!(rig.out.to("P1").is_empty(), "accepted");
    // In plantd's dialect the refusal is its error JSON.
    for i in 0..3 {
        rig.request("O", Dialect::Plantd, &format!("org.plantd.Agent.other{i}"), &["status"]);
    }
    let refusal: serde_json::Value = serde_json::from_str(&decoded_reply(&rig.out.to("O")[0]).3[0]).unwrap();
    assert!(refusal["error"].as_str().unwrap().starts_with("no such service"), "{refusal}");
    // Why a READY was refused, for whoever asks about their own.
    rig.ready("P2", Dialect::Rfc7, "org.plantd.Agent.pump-1");
    assert!(rig.out.to("P2").iter().any(is_disconnect));
    rig.request("P2", Dialect::Rfc7, "mmi.refusal", &["org.plantd.Agent.pump-1"]);
    assert_eq!(decoded_reply(&rig.out.to("P2")[0]).3, ["forbidden"]);
    rig.request("V", Dialect::Rfc7, "mmi.refusal", &["org.plantd.Agent.pump-1"]);
    assert_eq!(decoded_reply(&rig.out.to("V")[0]).3, ["none"], "another caller's refusal is its own");
    rig.identities.insert("P1-clone".into(), "pump-1".into());
    rig.ready("P1-clone", Dialect::Rfc7, "org.plantd.Agent.pump-1");
    rig.out.take();
    rig.request("P1-clone", Dialect::Rfc7, "mmi.refusal", &["org.plantd.Agent.pump-1"]);
    let answer = rig.out.to("P1-clone").pop().unwrap();
    assert_eq!(decoded_reply(&answer).3, ["duplicate"]);
    // Once the made-up names expire, they are forgotten and their places freed.
    rig.advance(Duration::from_secs(2));
    assert_eq!(rig.broker.census().requested_services, 0);
}

#[test]
fn unused_services_are_forgotten() {
    let mut rig = Rig::new(|c| c.request_expiry_ms = 100);
    rig.request("C", Dialect::Rfc7, "gone-soon", &[]);
    assert_eq!(rig.broker.census().services, 1);
    rig.advance(HB * 2);
    assert_eq!(rig.broker.census().services, 0);
}

// ---- security: identities, grants and bounds -----------------------------------

const PEERS: [(&str, &str); 4] = [("P1", "pump-1"), ("P2", "pump-2"), ("V", "grafana"), ("O", "ops")];
const ROLES: [(&str, &str); 3] = [("pump-*", "agent"), ("grafana", "viewer"), ("ops", "operator")];

fn secure_rig() -> Rig {
    Rig::secure(&PEERS, &ROLES, |_| {})
}

mod credit;
mod props;
mod security;
