//! Any sequence of events (readies, requests, replies, heartbeats,
//! garbage, time, vanished peers) keeps the core consistent.

use super::*;

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
