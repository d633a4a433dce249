//! The routing core driven directly: frames and instants in, recorded sends out.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proto::mdp::{self, Dialect, FromBroker, ReplyKind, ToBroker};

use super::core::{Broker, Origin, Transmit};
use crate::config::BrokerConfig;
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

#[test]
fn only_the_hub_provides_ingest_and_state() {
    let mut rig = secure_rig();
    rig.ready("P1", Dialect::Rfc7, "org.plantd.Ingest");
    rig.ready("O", Dialect::Rfc7, "org.plantd.State");
    assert!(rig.out.to("P1").iter().any(is_disconnect));
    assert!(rig.out.to("O").iter().any(is_disconnect), "not even an operator");
    assert_eq!((rig.denials("pump-1", Kind::Provide), rig.denials("ops", Kind::Provide)), (1, 1));
    rig.ready("hub-ingest", Dialect::Rfc7, "org.plantd.Ingest");
    // An agent's batch reaches the hub's own worker, named after its sender.
    rig.request("P1", Dialect::Rfc7, "org.plantd.Ingest", &["batch"]);
    let (_, body) = rig.request_at("hub-ingest");
    assert_eq!(s(&body), ["pump-1", "batch"]);
}

#[test]
fn agents_provide_only_their_own_service_once() {
    let mut rig = secure_rig();
    rig.ready("P1", Dialect::Rfc7, "org.plantd.Agent.pump-2");
    assert!(rig.out.to("P1").iter().any(is_disconnect), "not another agent's service");
    rig.ready("P1", Dialect::Rfc7, "org.plantd.Agent.pump-1");
    assert!(rig.out.to("P1").is_empty());
    // A second live registration (a cloned controller) is refused.
    rig.identities.insert("P1-clone".into(), "pump-1".into());
    rig.ready("P1-clone", Dialect::Rfc7, "org.plantd.Agent.pump-1");
    assert!(rig.out.to("P1-clone").iter().any(is_disconnect));
    assert_eq!(rig.denials("pump-1", Kind::Duplicate), 1);
    assert_eq!(rig.broker.counters().duplicate_workers, 1);
    rig.out.take();
    // Once the first is gone (it restarted), the new one takes over.
    rig.out.gone.insert(b"P1".to_vec());
    rig.ready("P1-clone", Dialect::Rfc7, "org.plantd.Agent.pump-1");
    assert!(rig.out.to("P1-clone").is_empty(), "accepted");
    assert_eq!(rig.broker.census().workers, 1);
}

#[test]
fn agent_commands_need_the_right_role_and_refusals_answer_in_dialect() {
    let mut rig = secure_rig();
    rig.ready("P1", Dialect::Rfc7, "org.plantd.Agent.pump-1");
    rig.request("V", Dialect::Rfc7, "org.plantd.Agent.pump-1", &["write", "pump_relay", "true"]);
    assert_eq!(decoded_reply(&rig.out.to("V")[0]).3, ["403"]);
    rig.request("V", Dialect::Plantd, "org.plantd.Agent.pump-1", &["config"]);
    let refusal: serde_json::Value = serde_json::from_str(&decoded_reply(&rig.out.to("V")[0]).3[0]).unwrap();
    assert_eq!(refusal["success"], false);
    assert!(refusal["error"].as_str().unwrap().starts_with("forbidden"));
    assert!(rig.out.to("P1").is_empty(), "nothing reached the agent");
    assert_eq!(rig.denials("grafana", Kind::Call), 2);
    rig.request("V", Dialect::Rfc7, "org.plantd.Agent.pump-1", &["status"]);
    rig.request_at("P1");
    rig.request("O", Dialect::Rfc7, "org.plantd.Agent.pump-1", &["write", "pump_relay", "true"]);
    assert_eq!(rig.broker.census().queued, 1, "an operator's write waits for the busy agent");
    rig.request("P2", Dialect::Rfc7, "org.plantd.Agent.pump-1", &["status"]);
    assert_eq!(decoded_reply(&rig.out.to("P2")[0]).3, ["403"], "agents do not call each other");
}

#[test]
fn strangers_and_unauthenticated_peers_get_nothing() {
    let mut rig = Rig::secure(&[("S", "stranger")], &ROLES, |_| {});
    rig.ready("hub-echo", Dialect::Rfc7, "echo");
    rig.request("S", Dialect::Rfc7, "echo", &["x"]);
    assert_eq!(decoded_reply(&rig.out.to("S")[0]).3, ["403"]);
    rig.request("ANON", Dialect::Rfc7, "echo", &["x"]);
    rig.ready("ANON", Dialect::Rfc7, "echo");
    assert!(rig.out.to("ANON").is_empty(), "dropped, unanswered");
    assert!(rig.out.to("hub-echo").is_empty(), "nothing through");
    assert_eq!(rig.denials(crate::security::denials::UNKNOWN, Kind::Unauthenticated), 2);
}

#[test]
fn rate_and_in_flight_limits_per_identity() {
    let mut rig = Rig::secure(&PEERS, &ROLES, |c| {
        c.rate_per_identity = 10.0;
        c.burst_per_identity = 3.0;
        c.max_in_flight_per_identity = 2;
    });
    for _ in 0..3 {
        rig.request("O", Dialect::Rfc7, "nobody-home", &["x"]);
    }
    assert_eq!(decoded_reply(&rig.out.to("O")[0]).3, ["429"], "two in flight at most");
    assert_eq!(rig.denials("ops", Kind::InFlight), 1);
    rig.request("O", Dialect::Rfc7, "mmi.service", &["x"]);
    assert_eq!(decoded_reply(&rig.out.to("O")[0]).3, ["429"], "the burst of three is spent");
    assert_eq!(rig.denials("ops", Kind::Rate), 1);
    rig.advance(Duration::from_millis(100));
    rig.request("O", Dialect::Rfc7, "mmi.service", &["x"]);
    assert_eq!(decoded_reply(&rig.out.to("O")[0]).3, ["404"], "a token came back");
    // Expired requests are no longer in flight.
    rig.advance(Duration::from_millis(1000));
    rig.advance(Duration::from_millis(200));
    rig.request("O", Dialect::Rfc7, "nobody-home", &["x"]);
    assert!(rig.out.to("O").is_empty(), "queued, not refused");
}

#[test]
fn queued_bytes_are_bounded_per_service_and_in_all() {
    let mut rig = Rig::new(|c| {
        c.max_queued_bytes_per_service = 10;
        c.max_queued_bytes = 15;
    });
    rig.request("C", Dialect::Rfc7, "a", &["123456"]);
    rig.request("C", Dialect::Rfc7, "a", &["123456"]);
    assert_eq!(rig.broker.counters().queue_bytes_overflow, 1, "a: 12 bytes would pass 10");
    rig.request("C", Dialect::Rfc7, "b", &["1234567890"]);
    assert_eq!(rig.broker.counters().queue_bytes_overflow, 2, "6 + 10 would pass 15 in all");
    rig.request("C", Dialect::Rfc7, "b", &["1234"]);
    assert_eq!(rig.broker.census().queued_bytes, 10);
    rig.ready("W", Dialect::Rfc7, "a");
    assert_eq!(rig.broker.census().queued_bytes, 4, "dispatched bytes leave the queue");
}

#[test]
fn a_removed_identity_loses_its_workers_and_its_calls() {
    let mut rig = secure_rig();
    rig.ready("P1", Dialect::Rfc7, "org.plantd.Agent.pump-1");
    let security = rig.security.clone().unwrap();
    let keep: Vec<_> =
        ["pump-2", "grafana", "ops"].iter().map(|n| security.allow_list().key_of(n).unwrap()).collect();
    let names = ["pump-2", "grafana", "ops"].map(String::from);
    security.replace(crate::security::AllowList::new(keep.into_iter().zip(names)));
    rig.advance(Duration::from_millis(1));
    assert!(rig.out.to("P1").iter().any(is_disconnect));
    assert_eq!(rig.broker.counters().workers_revoked, 1);
    rig.request("P1", Dialect::Rfc7, "org.plantd.Ingest", &["batch"]);
    assert_eq!(decoded_reply(&rig.out.to("P1")[0]).3, ["403"]);
}

#[test]
fn a_peer_that_takes_a_dead_workers_routing_id_gets_none_of_its_rights() {
    let mut rig = secure_rig();
    rig.ready("P1", Dialect::Rfc7, "org.plantd.Agent.pump-1");
    rig.request("O", Dialect::Rfc7, "org.plantd.Agent.pump-1", &["status"]);
    let token = rig.broker.job_of(b"P1").unwrap().1;
    rig.out.take();
    // pump-1's connection died; pump-2 connects with the same explicit routing
    // id and answers the request it saw no token for, guessing one.
    rig.identities.insert("P1".into(), "pump-2".into());
    let body = vec![b"forged".to_vec()];
    rig.send("P1", Dialect::Rfc7, ToBroker::Reply { kind: ReplyKind::Final, client: &token, body: &body });
    assert!(rig.out.to("O").is_empty(), "no forged reply reaches the operator");
    assert_eq!(rig.broker.census().workers, 0, "the dead worker is gone");
}

#[test]
fn one_identity_cannot_fill_a_queue_for_everyone() {
    let mut rig = Rig::secure(&PEERS, &ROLES, |c| c.max_queued_bytes_per_identity = 10);
    rig.ready("P1", Dialect::Rfc7, "org.plantd.Agent.pump-1");
    rig.request("O", Dialect::Rfc7, "org.plantd.Agent.pump-1", &["status"]);
    rig.request("O", Dialect::Rfc7, "org.plantd.Agent.pump-1", &["read", "ab"]);
    assert_eq!(rig.broker.census().queued_bytes, 6, "one with the worker, one queued");
    rig.request("O", Dialect::Rfc7, "org.plantd.Agent.pump-1", &["status"]);
    assert_eq!(decoded_reply(&rig.out.to("O")[0]).3, ["429"], "6 + 6 bytes would pass 10");
    rig.request("V", Dialect::Rfc7, "org.plantd.Agent.pump-1", &["status"]);
    assert!(rig.out.to("V").is_empty(), "another identity still queues");
    assert_eq!(rig.broker.census().queued, 2);
}

#[test]
fn a_revocation_drops_the_revoked_callers_queued_requests() {
    let mut rig = secure_rig();
    rig.ready("P1", Dialect::Rfc7, "org.plantd.Agent.pump-1");
    for caller in ["V", "V", "O"] {
        rig.request(caller, Dialect::Rfc7, "org.plantd.Agent.pump-1", &["status"]);
    }
    assert_eq!(rig.broker.census().queued, 2);
    let security = rig.security.clone().unwrap();
    let allow = security.allow_list();
    let keep = ["pump-1", "pump-2", "ops"].map(|n| (allow.key_of(n).unwrap(), n.to_string()));
    security.replace(crate::security::AllowList::new(keep));
    rig.advance(Duration::from_millis(1));
    assert_eq!(rig.broker.census().queued, 1, "grafana's queued request went, the operator's stays");
    assert_eq!(rig.broker.counters().revoked_requests, 1);
}

// ---- property: any sequence of events keeps the core consistent -------------

#[derive(Clone, Debug)]
enum Event {
    Ready(u8, Dialect, u8, u32),
    Request(u8, Dialect, u8),
    Reply(u8, Dialect, bool, u8),
    Heartbeat(u8, Dialect),
    Disconnect(u8, Dialect),
    Garbage(u8, Vec<Vec<u8>>),
    Advance(u16),
    Vanish(u8),
}

fn event() -> impl Strategy<Value = Event> {
    let d = prop::sample::select(Dialect::ALL.to_vec());
    prop_oneof![
        (0..4u8, d.clone(), 0..3u8, prop::sample::select(vec![1, 1, 2, 3]))
            .prop_map(|(w, d, s, credit)| Event::Ready(w, d, s, credit)),
        (0..4u8, d.clone(), 0..3u8).prop_map(|(c, d, s)| Event::Request(c, d, s)),
        (0..4u8, d.clone(), any::<bool>(), 0..4u8).prop_map(|(w, d, f, c)| Event::Reply(w, d, f, c)),
        (0..4u8, d.clone()).prop_map(|(w, d)| Event::Heartbeat(w, d)),
        (0..4u8, d).prop_map(|(w, d)| Event::Disconnect(w, d)),
        (0..8u8, prop::collection::vec(prop::collection::vec(any::<u8>(), 0..8), 0..6))
            .prop_map(|(p, f)| Event::Garbage(p, f)),
        (0..400u16).prop_map(Event::Advance),
        (0..8u8).prop_map(Event::Vanish),
    ]
}

proptest! {
    #[test]
    fn any_event_sequence_keeps_the_core_consistent(events in prop::collection::vec(event(), 1..120)) {
        let mut rig = Rig::new(|c| {
            c.queue_limit = 4;
            c.redeliver = vec!["s0".into()];
            c.max_workers = 3;
        });
        let worker = |i: u8| format!("W{i}");
        let client = |i: u8| format!("C{i}");
        for event in events {
            match event {
                Event::Ready(w, d, s, credit) => rig.ready_credit(&worker(w), d, &format!("s{s}"), credit),
                Event::Request(c, d, s) => rig.request(&client(c), d, &format!("s{s}"), &["x"]),
                Event::Reply(w, d, fin, c) => {
                    let kind = if fin || d == Dialect::Rfc7 { ReplyKind::Final } else { ReplyKind::Partial };
                    rig.reply(&worker(w), d, kind, &client(c), &["r"]);
                }
                Event::Heartbeat(w, d) => rig.send(&worker(w), d, ToBroker::Heartbeat),
                Event::Disconnect(w, d) => rig.send(&worker(w), d, ToBroker::Disconnect),
                Event::Garbage(p, frames) => rig.raw(&format!("G{p}"), frames),
                Event::Advance(ms) => rig.advance(Duration::from_millis(ms.into())),
                Event::Vanish(p) => {
                    let peer = if p < 4 { worker(p) } else { client(p - 4) };
                    rig.out.gone.insert(peer.into_bytes());
                }
            }
            rig.out.take();
        }
        let m = rig.broker.counters();
        prop_assert!(m.dispatched <= m.requests + m.redelivered);
    }
}

mod credit;
