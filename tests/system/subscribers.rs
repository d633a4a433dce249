//! Bus subscribers under security: one that misbehaves is closed without
//! harming the others, and revoking an identity (or giving its name a new
//! key) closes the connections it already had, capture included.

use std::time::Duration;

use serde_json::Value;
use system_tests::*;
use transport::{Publisher, Subscriber};

const SECOND: Duration = Duration::from_secs(1);

/// Drains `sub`, true if any message on `topic` arrived.
fn heard(sub: &mut Subscriber, topic: &[u8]) -> bool {
    let mut found = false;
    while let Ok(Some(m)) = sub.recv(Duration::from_millis(20)) {
        found |= m.topic == topic;
    }
    found
}

#[test]
fn a_subscriber_sending_junk_is_closed_and_the_others_keep_their_own_subscriptions() {
    let site = Site::new();
    let (mallory, viewer) = (site.identity("mallory"), site.identity("grafana"));
    // mallory may subscribe to "open." on the event bus, and nothing else.
    let roles = "\"mallory\" = [\"peeker\"]\n\"grafana\" = [\"viewer\"]\n\n[security.roles.peeker]\nsubscribe = { event = [\"open.\"] }\n";
    let hub = site.hub(roles, "");
    let ctx = zmq::Context::new();
    let event = hub.bus("event").clone();
    let ops = Publisher::connect(&ctx, hub.endpoint(&event.frontend), Default::default()).unwrap();
    // mallory's allowed subscriber, open throughout: the one that could be
    // given grafana's subscription if the proxy paired them up wrong.
    let mut peeker = Subscriber::connect(&ctx, site.endpoint(&mallory, &event.backend), &[b"open."]).unwrap();
    let mut victim =
        Subscriber::connect(&ctx, site.endpoint(&viewer, &event.backend), &[b"secret."]).unwrap();
    wait_for("the peeker and the victim to be subscribed", 20 * SECOND, || {
        ops.publish(b"open.1", b"{}").unwrap();
        ops.publish(b"secret.1", b"{}").unwrap();
        (heard(&mut peeker, b"open.1") && heard(&mut victim, b"secret.1")).then_some(())
    });

    // Junk (not a subscription, and a multipart one) from raw XSUBs, while
    // the victim keeps changing its subscriptions.
    // Kept open: a socket closed at once may not have sent yet.
    let mut junkies = Vec::new();
    for round in 0..20 {
        let junk = ctx.socket(zmq::XSUB).unwrap();
        transport::curve::make_client(&junk, &site.keys(&mallory)).unwrap();
        junk.set_reconnect_ivl(-1).unwrap();
        junk.connect(&event.backend).unwrap();
        junk.send(&b"\x02junk"[..], 0).unwrap();
        junk.send_multipart([&b"\x01open."[..], &b"\x01secret."[..]], 0).unwrap();
        junkies.push(junk);
        let prefix = format!("secret.{round}.");
        victim.socket().set_subscribe(prefix.as_bytes()).unwrap();
        victim.socket().set_unsubscribe(prefix.as_bytes()).unwrap();
    }
    // The first junk closes its sender and holds mallory off the bus for a
    // while: the later junk sockets are refused at the handshake, if they
    // were not in already.
    wait_for("the junk to be counted and its senders closed", 20 * SECOND, || {
        let (junk, closed) =
            (hub.bus_counter("event", "malformed_up"), hub.bus_counter("event", "subscribers_closed"));
        let held_off = hub.denials("mallory", "connect") >= 1;
        (junk >= 1 && closed >= 1 && (junk >= 2 || held_off)).then_some(())
    });

    // The victim still hears its topics (it may have had to subscribe again);
    // mallory's open subscriber never hears one of them.
    wait_for("the victim to hear a secret after the junk", 30 * SECOND, || {
        ops.publish(b"secret.after", b"{}").unwrap();
        ops.publish(b"open.after", b"{}").unwrap();
        heard(&mut victim, b"secret.after").then_some(())
    });
    let mut leaked = 0;
    while let Ok(Some(m)) = peeker.recv(Duration::from_millis(200)) {
        leaked += usize::from(m.topic.starts_with(b"secret."));
    }
    assert_eq!(leaked, 0, "a subscriber heard a topic it may not subscribe to");
}

#[test]
fn revoked_and_rekeyed_identities_lose_the_connections_they_had_capture_included() {
    let site = Site::new();
    let (tapper, viewer) = (site.identity("ops-2"), site.identity("grafana"));
    let with_capture = || {
        let mut ports = HubPorts::new();
        ports.buses.get_mut("event").expect("the event bus").capture = Some(free_endpoint());
        ports
    };
    let hub = site.hub_on("\"ops-*\" = [\"operator\"]\n\"grafana\" = [\"viewer\"]", "", with_capture);
    let ctx = zmq::Context::new();
    let event = hub.bus("event").clone();
    let capture = event.capture.clone().expect("a capture endpoint");
    let ops = Publisher::connect(&ctx, hub.endpoint(&event.frontend), Default::default()).unwrap();
    let mut tap = Subscriber::connect(&ctx, site.endpoint(&tapper, &capture), &[b""]).unwrap();
    let mut sub = Subscriber::connect(&ctx, site.endpoint(&viewer, &event.backend), &[b""]).unwrap();
    wait_for("the tap and the subscriber to hear an event", 20 * SECOND, || {
        ops.publish(b"org.plantd.Before", b"{}").unwrap();
        (heard(&mut tap, b"org.plantd.Before") && heard(&mut sub, b"org.plantd.Before")).then_some(())
    });

    // ops-2's key goes; grafana's name gets a new key (the old one leaked).
    std::fs::remove_file(site.clients_dir().join("ops-2.key")).unwrap();
    let new_key = site.stranger("grafana-new");
    std::fs::copy(&new_key.public, site.clients_dir().join("grafana.key")).unwrap();
    let config = site.path().join("hub.toml");
    let data = hub.data.path().to_str().unwrap();
    let out =
        hub_cli(&["keys", "--config", config.to_str().unwrap(), "--data-dir", data, "--json", "reload"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["reloaded"]["removed"], serde_json::json!(["ops-2"]));
    assert_eq!(report["reloaded"]["rekeyed"], serde_json::json!(["grafana"]));

    // The new key works; the old connections hear nothing new.
    let mut fresh = Subscriber::connect(&ctx, site.endpoint(&new_key, &event.backend), &[b""]).unwrap();
    wait_for("the new key's subscriber to hear an event", 20 * SECOND, || {
        ops.publish(b"org.plantd.After", b"{}").unwrap();
        heard(&mut fresh, b"org.plantd.After").then_some(())
    });
    ops.publish(b"org.plantd.After", b"{}").unwrap();
    assert!(!heard(&mut tap, b"org.plantd.After"), "the removed identity still taps the capture");
    assert!(!heard(&mut sub, b"org.plantd.After"), "the old key still hears the bus");
}
