use super::*;
use proto::ingest::Sent;
use proto::sample::{Quality, Sample, Value};

fn service(require_subscriber: bool) -> (IngestService, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = IngestConfig { require_subscriber, ..IngestConfig::default() };
    (open(dir.path(), &config), dir)
}

fn open(dir: &Path, config: &IngestConfig) -> IngestService {
    IngestService::open(
        dir,
        config,
        (Outlet::default(), Outlet::default()),
        WorkerOptions::default(),
        None,
        Default::default(),
    )
    .unwrap()
}

fn batch(agent: &str, epoch: u64, seqs: &[u64]) -> Vec<u8> {
    let samples = seqs
        .iter()
        .map(|&seq| Sent {
            sample: Sample {
                channel: "t".into(),
                epoch,
                seq,
                wall_ns: 0,
                mono_ns: 0,
                clock_synced: false,
                value: Value::Integer(seq as i64),
                unit: String::new(),
                quality: Quality::Good,
            },
            historical: seq % 2 == 0,
        })
        .collect();
    Batch { agent: agent.into(), samples, events: Vec::new() }.encode()
}

/// Topic prefixes real subscribers hold.
type Listening = Vec<Vec<u8>>;

fn everything() -> Listening {
    vec![b"".to_vec()]
}

fn run(svc: &IngestService, body: &[u8], subs: &Listening) -> (Reply, Vec<serde_json::Value>) {
    let mut published = Vec::new();
    let reply = svc.handle(
        "",
        body,
        (None, None),
        |t| subs.iter().any(|p| t.starts_with(p)),
        |_, json| published.push(serde_json::from_slice(json).unwrap()),
    );
    (reply, published)
}

#[test]
fn resent_samples_are_published_once() {
    let (svc, _dir) = service(true);
    let (reply, published) = run(&svc, &batch("pi", 1, &[1, 2, 3]), &everything());
    assert_eq!(reply, Reply::Ack { accepted: 3, duplicates: 0 });
    assert_eq!(published.iter().map(|j| j["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(published[1]["historical"], true);
    let (reply, published) = run(&svc, &batch("pi", 1, &[2, 3, 4]), &everything());
    assert_eq!(reply, Reply::Ack { accepted: 1, duplicates: 2 });
    assert_eq!(published.len(), 1);
    // Another epoch or another agent has its own watermark.
    assert_eq!(run(&svc, &batch("pi", 2, &[1]), &everything()).0, Reply::Ack { accepted: 1, duplicates: 0 });
    assert_eq!(run(&svc, &batch("pi2", 1, &[1]), &everything()).0, Reply::Ack { accepted: 1, duplicates: 0 });
}

#[test]
fn a_batch_spanning_two_epochs_keeps_both_watermarks() {
    let (svc, _dir) = service(true);
    let mut samples = Batch::decode(&batch("pi", 1, &[1, 2])).unwrap().samples;
    samples.extend(Batch::decode(&batch("pi", 2, &[1])).unwrap().samples);
    let body = Batch { agent: "pi".into(), samples, events: Vec::new() }.encode();
    assert_eq!(run(&svc, &body, &everything()).0, Reply::Ack { accepted: 3, duplicates: 0 });
    assert_eq!(run(&svc, &body, &everything()).0, Reply::Ack { accepted: 0, duplicates: 3 });
}

#[test]
fn watermarks_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let svc = open(dir.path(), &IngestConfig::default());
    run(&svc, &batch("pi", 1, &[1, 2]), &everything());
    drop(svc);
    let svc = open(dir.path(), &IngestConfig::default());
    assert_eq!(
        run(&svc, &batch("pi", 1, &[1, 2, 3]), &everything()).0,
        Reply::Ack { accepted: 1, duplicates: 2 }
    );
}

#[test]
fn no_subscriber_means_retry_and_nothing_published() {
    let (svc, _dir) = service(true);
    let only_other = vec![b"org.plantd.Metric.other.".to_vec()];
    let (reply, published) = run(&svc, &batch("pi", 1, &[1]), &only_other);
    assert!(matches!(reply, Reply::Retry { .. }), "{reply:?}");
    assert!(published.is_empty());
    // One watched channel is enough: the agent's queue is not held back for the others.
    let this_one = vec![b"org.plantd.Metric.pi.t".to_vec()];
    assert!(matches!(run(&svc, &batch("pi", 1, &[1]), &this_one).0, Reply::Ack { accepted: 1, .. }));
    let (svc, _dir) = service(false);
    assert!(matches!(run(&svc, &batch("pi", 1, &[1]), &Vec::new()).0, Reply::Ack { .. }));
}

#[test]
fn an_identity_sends_batches_only_for_itself() {
    let (svc, _dir) = service(true);
    let mut published = 0;
    // The attack: another agent poisons pump-1's watermark with seq = u64::MAX.
    let all = |_: &[u8]| true;
    let poison =
        svc.handle("pump-2", &batch("pump-1", 1, &[u64::MAX]), (None, None), all, |_, _| published += 1);
    assert!(matches!(poison, Reply::Refused { .. }), "{poison:?}");
    assert_eq!((published, svc.counters.refused.load(Relaxed)), (0, 1));
    let own = svc.handle("pump-1", &batch("pump-1", 1, &[1, 2]), (None, None), all, |_, _| published += 1);
    assert_eq!(own, Reply::Ack { accepted: 2, duplicates: 0 }, "the victim's samples still count");
}

#[test]
fn old_epochs_retire_and_new_agents_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let config = IngestConfig { epochs_kept: 2, max_agents: 2, ..IngestConfig::default() };
    let svc = open(dir.path(), &config);
    for epoch in [10, 11, 12] {
        assert_eq!(
            run(&svc, &batch("pi", epoch, &[1]), &everything()).0,
            Reply::Ack { accepted: 1, duplicates: 0 }
        );
    }
    let marks = svc.store.watermarks.get("pi").unwrap();
    assert_eq!(marks.0.iter().map(|m| m.epoch).collect::<Vec<_>>(), [12, 11], "epoch 10 retired");
    assert_eq!(run(&svc, &batch("pi", 12, &[1]), &everything()).0, Reply::Ack { accepted: 0, duplicates: 1 });
    run(&svc, &batch("pi-2", 1, &[1]), &everything());
    assert!(matches!(run(&svc, &batch("pi-3", 1, &[1]), &everything()).0, Reply::Refused { .. }));
    assert_eq!(svc.counters.agents.load(Relaxed), 2);
}

#[test]
fn garbage_is_malformed_and_counted() {
    let (svc, _dir) = service(true);
    assert!(matches!(run(&svc, b"\x01\xff\xff", &everything()).0, Reply::Malformed { .. }));
    assert!(matches!(run(&svc, b"", &everything()).0, Reply::Malformed { .. }));
    assert!(matches!(run(&svc, &batch("a\0b", 1, &[1]), &everything()).0, Reply::Malformed { .. }));
    assert_eq!(svc.counters.malformed.load(Relaxed), 3);
}

#[test]
fn alarm_events_are_deduplicated_apart_from_samples_and_wait_for_an_event_subscriber() {
    use proto::alarm::testing::event;
    use proto::alarm::{Kind, Level};
    let (svc, _dir) = service(true);
    let events = vec![event(1, Kind::Raise, Level::Hi), event(2, Kind::Acknowledge, Level::Hi)];
    let body = Batch { agent: "pi".into(), samples: Vec::new(), events }.encode();
    // Only the metric bus is watched: the events wait (the agent sends telemetry meanwhile).
    let metric_only = vec![b"org.plantd.Metric.".to_vec()];
    let (reply, published) = run(&svc, &body, &metric_only);
    assert!(matches!(&reply, Reply::Retry { reason, .. } if reason.contains("event bus")), "{reply:?}");
    assert!(published.is_empty());
    let watching = vec![b"org.plantd.Event.alarm.".to_vec()];
    let (reply, published) = run(&svc, &body, &watching);
    assert_eq!(reply, Reply::Ack { accepted: 2, duplicates: 0 }, "the Ack counts events");
    let kinds: Vec<&str> = published.iter().map(|j| j["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["raise", "acknowledge"]);
    assert_eq!(run(&svc, &body, &watching).0, Reply::Ack { accepted: 0, duplicates: 2 });
    // Samples of the same agent under another epoch are their own sequence.
    assert_eq!(
        run(&svc, &batch("pi", 1, &[1, 2]), &everything()).0,
        Reply::Ack { accepted: 2, duplicates: 0 }
    );
}

#[test]
fn a_batch_in_flight_waits_for_the_one_it_follows_and_is_never_taken_before_it() {
    let (svc, _dir) = service(false);
    let published = Mutex::new(Vec::new());
    let handle = |body: &[u8], follows| {
        svc.handle(
            "",
            body,
            (None, follows),
            |_| true,
            |_, json| {
                let json: serde_json::Value = serde_json::from_slice(json).unwrap();
                published.lock().unwrap().push(json["seq"].as_u64().unwrap());
            },
        )
    };
    // The second batch may reach its worker first: it waits for the first, whichever starts first.
    std::thread::scope(|s| {
        let second = s.spawn(|| handle(&batch("pi", 1, &[4, 5]), Some((1, 3))));
        assert_eq!(handle(&batch("pi", 1, &[1, 2, 3]), None), Reply::Ack { accepted: 3, duplicates: 0 });
        assert_eq!(second.join().unwrap(), Reply::Ack { accepted: 2, duplicates: 0 });
    });
    assert_eq!(*published.lock().unwrap(), [1, 2, 3, 4, 5], "published in the agent's order");
    // One following a batch that never comes is not taken: its samples would hide that batch's.
    let started = std::time::Instant::now();
    let reply = handle(&batch("pi", 1, &[9]), Some((1, 8)));
    assert!(matches!(&reply, Reply::Retry { after_ms: 0, .. }), "{reply:?}");
    assert!(started.elapsed() >= FOLLOW_WAIT, "it waited for the batch in hand first");
    assert_eq!(svc.store.watermarks.get("pi").unwrap().of(1), 5, "the watermark stayed");
    assert_eq!(svc.counters.out_of_order.load(Relaxed), 1);
    // Resent in order, both go.
    assert_eq!(handle(&batch("pi", 1, &[6, 7, 8]), None), Reply::Ack { accepted: 3, duplicates: 0 });
    assert_eq!(handle(&batch("pi", 1, &[9]), Some((1, 8))), Reply::Ack { accepted: 1, duplicates: 0 });
}
