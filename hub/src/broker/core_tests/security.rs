//! The core with security: who may provide and call what, per-identity
//! bounds, and revocation.

use super::*;

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
