//! Credit workers (READY with `credit=N`): several requests at once, each
//! under the same rules a stock worker's one request follows.

use super::*;
use crate::broker::Census;

impl Rig {
    /// The requests `worker` was sent since the last look (heartbeats
    /// aside), as (token, body).
    fn requests_to(&mut self, worker: &str) -> Vec<(Vec<u8>, Vec<String>)> {
        let mut requests = Vec::new();
        for msg in self.out.to(worker) {
            match mdp::decode_from_broker(&msg).unwrap() {
                (_, FromBroker::Request { client, body }) => requests.push((client.to_vec(), s(body))),
                (_, FromBroker::Heartbeat) => {}
                other => panic!("expected a request to {worker}, got {other:?}"),
            }
        }
        requests
    }

    /// `worker` answers the request it knows by `token`.
    fn reply_token(&mut self, worker: &str, dialect: Dialect, token: &[u8], body: &str) {
        let body = vec![body.as_bytes().to_vec()];
        self.send(worker, dialect, ToBroker::Reply { kind: ReplyKind::Final, client: token, body: &body });
    }

    /// The bodies of the replies `client` got since the last look.
    fn replies_to(&mut self, client: &str) -> Vec<String> {
        self.out.to(client).iter().map(|m| decoded_reply(m).3.join("")).collect()
    }
}

#[test]
fn a_credit_worker_holds_up_to_its_credit_and_answers_in_any_order() {
    let mut rig = Rig::new(|_| {});
    rig.ready_credit("W", Dialect::Rfc18, "s", 3);
    assert_eq!(rig.broker.credit_of(b"W"), Some(3));
    for i in 0..5 {
        rig.request(&format!("C{i}"), Dialect::Rfc7, "s", &[&i.to_string()]);
    }
    let held = rig.requests_to("W");
    let bodies: Vec<&str> = held.iter().map(|(_, b)| b[0].as_str()).collect();
    assert_eq!(bodies, ["0", "1", "2"], "three at once, oldest first");
    assert_eq!(rig.broker.census().queued, 2);
    assert_eq!(rig.broker.census().in_flight, 3);
    assert_eq!(rig.broker.census().free_credit, 0);

    // The newest answered first: its client gets it, and the freed credit
    // takes the oldest queued request at once.
    rig.reply_token("W", Dialect::Rfc18, &held[2].0, "r2");
    assert_eq!(rig.replies_to("C2"), ["r2"]);
    let next = rig.requests_to("W");
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].1, ["3"]);
    rig.reply_token("W", Dialect::Rfc18, &held[0].0, "r0");
    assert_eq!(rig.replies_to("C0"), ["r0"]);
    assert_eq!(rig.requests_to("W")[0].1, ["4"]);
    assert_eq!(rig.broker.census().queued, 0);

    // A token answered already is one the worker no longer holds.
    rig.reply_token("W", Dialect::Rfc18, &held[0].0, "again");
    assert!(rig.out.to("W").iter().any(is_disconnect));
    assert_eq!(rig.broker.counters().violations, 1);
    assert_eq!(rig.broker.counters().credit_workers, 1);
}

#[test]
fn partials_interleave_between_the_requests_a_worker_holds() {
    let mut rig = Rig::new(|_| {});
    rig.ready_credit("W", Dialect::Plantd, "s", 2);
    rig.request("A", Dialect::Rfc18, "s", &["a"]);
    rig.request("B", Dialect::Rfc18, "s", &["b"]);
    let held = rig.requests_to("W");
    let partial = |rig: &mut Rig, token: &[u8], body: &str| {
        let body = vec![body.as_bytes().to_vec()];
        rig.send(
            "W",
            Dialect::Plantd,
            ToBroker::Reply { kind: ReplyKind::Partial, client: token, body: &body },
        );
    };
    partial(&mut rig, &held[1].0, "b1");
    partial(&mut rig, &held[0].0, "a1");
    rig.reply_token("W", Dialect::Plantd, &held[1].0, "b2");
    rig.reply_token("W", Dialect::Plantd, &held[0].0, "a2");
    assert_eq!(rig.replies_to("A"), ["a1", "a2"]);
    assert_eq!(rig.replies_to("B"), ["b1", "b2"]);
    assert_eq!(rig.broker.census().in_flight, 0);
}

#[test]
fn requests_go_to_the_most_free_credit_then_the_least_recently_ready() {
    let mut rig = Rig::new(|_| {});
    rig.ready_credit("BIG", Dialect::Rfc18, "s", 4);
    rig.ready_credit("SMALL", Dialect::Rfc18, "s", 2);
    rig.ready("STOCK", Dialect::Rfc7, "s");
    let mut order = Vec::new();
    for i in 0..7 {
        rig.request("C", Dialect::Rfc7, "s", &[&i.to_string()]);
        for w in ["BIG", "SMALL", "STOCK"] {
            if !rig.requests_to(w).is_empty() {
                order.push(w);
            }
        }
    }
    // Free credit 4/2/1: BIG until it is level with SMALL, then by who was
    // ready first among equals, STOCK once all are down to one.
    assert_eq!(order, ["BIG", "BIG", "BIG", "SMALL", "BIG", "SMALL", "STOCK"]);
    assert_eq!(rig.broker.census().free_credit, 0);
    rig.request("C", Dialect::Rfc7, "s", &["queued"]);
    assert_eq!(rig.broker.census().queued, 1);
}

#[test]
fn stock_workers_among_credit_workers_still_go_least_recently_ready_first() {
    let mut rig = Rig::new(|_| {});
    rig.ready("A", Dialect::Rfc7, "s");
    rig.ready_credit("B", Dialect::Rfc7, "s", 1); // `credit=1` is a stock READY
    rig.request("C", Dialect::Rfc7, "s", &["1"]);
    assert_eq!(rig.request_at("A").1, vec![b"1".to_vec()]);
    rig.reply("A", Dialect::Rfc7, ReplyKind::Final, "C", &["r"]);
    rig.request("C", Dialect::Rfc7, "s", &["2"]);
    rig.out.to("C");
    assert_eq!(rig.request_at("B").1, vec![b"2".to_vec()]);
    assert_eq!(rig.broker.counters().credit_workers, 0);
}

#[test]
fn the_broker_grants_at_most_its_own_bound() {
    let mut rig = Rig::new(|_| {});
    rig.ready_credit("W", Dialect::Rfc18, "s", mdp::MAX_CREDIT);
    assert_eq!(rig.broker.credit_of(b"W"), Some(mdp::MAX_BROKER_CREDIT));
}

#[test]
fn every_request_of_a_dead_credit_worker_is_redelivered_once_in_order() {
    let mut rig = Rig::new(|c| {
        c.redeliver = vec!["safe".into()];
        c.heartbeat_liveness = 3;
    });
    rig.ready_credit("A", Dialect::Rfc18, "safe", 4);
    for i in 0..6 {
        rig.request(&format!("C{i}"), Dialect::Rfc7, "safe", &[&i.to_string()]);
    }
    let held = rig.requests_to("A");
    assert_eq!(held.len(), 4);
    // One answered (its credit takes "4"), then A falls silent and is
    // purged holding four.
    rig.reply_token("A", Dialect::Rfc18, &held[1].0, "r1");
    assert_eq!(rig.requests_to("A")[0].1, ["4"]);
    let jobs = rig.broker.jobs_of(b"A");
    assert!(jobs.iter().all(|j| j.copied && !j.redelivered));
    rig.ready("B", Dialect::Rfc7, "safe");
    assert_eq!(rig.requests_to("B")[0].1, ["5"]);
    for _ in 0..4 {
        rig.advance(HB);
        rig.send("B", Dialect::Rfc7, ToBroker::Heartbeat);
    }
    assert_eq!(rig.broker.counters().workers_expired, 1);
    assert_eq!(rig.broker.counters().redelivered, 4);
    assert_eq!(rig.broker.census().queued, 4, "B is busy: they wait");
    rig.reply("B", Dialect::Rfc7, ReplyKind::Final, "C5", &["r5"]);
    let mut served = Vec::new();
    for _ in 0..4 {
        let (client, body) = rig.request_at("B");
        served.push(s(&body).concat());
        assert!(rig.broker.jobs_of(b"B")[0].redelivered);
        rig.reply("B", Dialect::Rfc7, ReplyKind::Final, std::str::from_utf8(&client).unwrap(), &["r"]);
    }
    assert_eq!(served, ["0", "2", "3", "4"], "oldest first");

    // A redelivered request dies with its second worker: lost, each counted.
    rig.send("B", Dialect::Rfc7, ToBroker::Disconnect);
    rig.ready_credit("D", Dialect::Rfc18, "safe", 2);
    rig.request("X", Dialect::Rfc7, "safe", &["x"]);
    rig.request("Y", Dialect::Rfc7, "safe", &["y"]);
    assert_eq!(rig.requests_to("D").len(), 2);
    rig.send("D", Dialect::Rfc18, ToBroker::Disconnect);
    assert_eq!(rig.broker.counters().redelivered, 6);
    rig.ready_credit("E", Dialect::Rfc18, "safe", 2);
    assert_eq!(rig.requests_to("E").len(), 2);
    rig.send("E", Dialect::Rfc18, ToBroker::Disconnect);
    assert_eq!(rig.broker.counters().lost_in_flight, 2);
    assert_eq!(rig.broker.census().in_flight, 0);
}

#[test]
fn a_dead_credit_workers_requests_are_lost_unless_the_service_opted_in() {
    let mut rig = Rig::new(|_| {});
    rig.ready_credit("A", Dialect::Rfc18, "s", 3);
    for i in 0..3 {
        rig.request("C", Dialect::Rfc7, "s", &[&i.to_string()]);
    }
    rig.send("A", Dialect::Rfc18, ToBroker::Disconnect);
    assert_eq!(rig.broker.counters().lost_in_flight, 3);
    assert_eq!(rig.broker.counters().workers_left, 1);
    assert_eq!(rig.broker.census(), Census { services: 1, ..Census::default() });
}

#[test]
fn a_busy_credit_worker_is_heartbeaten_once_and_queued_requests_still_expire() {
    let mut rig = Rig::new(|c| c.request_expiry_ms = 250);
    rig.ready_credit("W", Dialect::Rfc18, "s", 2);
    for i in 0..3 {
        rig.request("C", Dialect::Rfc7, "s", &[&i.to_string()]);
    }
    assert_eq!(rig.requests_to("W").len(), 2);
    rig.advance(HB);
    let msgs = rig.out.to("W");
    assert_eq!(msgs.len(), 1, "one heartbeat for the worker, not one per request");
    rig.send("W", Dialect::Rfc18, ToBroker::Heartbeat);
    rig.advance(HB);
    rig.send("W", Dialect::Rfc18, ToBroker::Heartbeat);
    rig.advance(Duration::from_millis(60));
    assert_eq!(rig.broker.counters().expired, 1);
    assert_eq!(rig.broker.census().in_flight, 2, "held requests do not expire at the broker");
}

#[test]
fn an_unreachable_credit_worker_gives_its_request_to_the_next() {
    let mut rig = Rig::new(|_| {});
    rig.ready_credit("A", Dialect::Rfc18, "s", 4);
    rig.ready_credit("B", Dialect::Rfc18, "s", 2);
    rig.out.gone.insert(b"A".to_vec());
    rig.request("C", Dialect::Rfc7, "s", &["job"]);
    assert_eq!(rig.requests_to("B").len(), 1);
    assert_eq!(rig.broker.census().workers, 1);
    assert_eq!(rig.broker.counters().unroutable, 1);
}

#[test]
fn mmi_workers_shows_credit_only_for_services_that_have_it() {
    let mut rig = Rig::new(|_| {});
    rig.ready_credit("W", Dialect::Rfc18, "fast", 8);
    rig.ready("S", Dialect::Rfc7, "slow");
    rig.request("C", Dialect::Rfc7, "fast", &["x"]);
    rig.out.take();
    rig.request("C", Dialect::Rfc7, "mmi.workers", &[]);
    let answer = rig.replies_to("C").concat();
    let workers: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        workers["fast"],
        serde_json::json!({"workers": 1, "idle": 0, "in_flight": 1, "credit": 8, "queued": 0, "queued_bytes": 0})
    );
    assert_eq!(workers["slow"], serde_json::json!({"workers": 1, "idle": 1, "queued": 0, "queued_bytes": 0}));
}
