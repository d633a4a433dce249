use std::time::Duration;

use proto::consumer::ResetTo;

use super::*;

fn entry(seq: u64) -> Entry {
    entry_on("org.plantd.Metric.pump-1.t", seq)
}

fn entry_on(topic: &str, seq: u64) -> Entry {
    Entry {
        topic: topic.into(),
        payload: format!("{{\"seq\":{seq}}}").into_bytes(),
        agent: "pump-1".into(),
        epoch: 7,
        seq,
        historical: false,
    }
}

fn bridge(max_records: u64) -> Spec {
    Spec::hub(BRIDGE, max_records, 1 << 20)
}

fn durable(name: &str, policy: Policy, max_records: u64, max_bytes: u64) -> Spec {
    Spec {
        policy,
        origin: Origin::Made,
        inactive_after_ms: Some(1000),
        remove_when_inactive: true,
        ..Spec::hub(name, max_records, max_bytes)
    }
}

/// The seqs a consumer's fetch takes, and where it says to acknowledge.
fn fetch_seqs(j: &Journal, consumer: &str, max: usize, scan: usize) -> (Vec<u64>, u64) {
    let mut seqs = Vec::new();
    let fetched = j
        .fetch(consumer, 0, (max, scan, usize::MAX), |_, _, payload| {
            let json: serde_json::Value = serde_json::from_slice(payload).unwrap();
            seqs.push(json["seq"].as_u64().unwrap());
        })
        .unwrap();
    assert_eq!(fetched.count, seqs.len());
    (seqs, fetched.next)
}

fn seqs(read: &[(u64, Option<Entry>)]) -> Vec<u64> {
    read.iter().map(|(_, e)| e.as_ref().unwrap().seq).collect()
}

/// sled's background flusher can hold the lock a moment after the last handle is dropped.
fn reopen(path: &std::path::Path) -> sled::Db {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(e) if Instant::now() > deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[test]
fn entries_wait_in_order_until_acked_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let j = Journal::open(&db, vec![bridge(5)]).unwrap();
        assert!(j.make_room(50, 100).is_ok(), "an empty journal takes any one batch");
        j.append(&[entry(1), entry(2)]).unwrap();
        j.append(&[entry(3)]).unwrap();
        assert!(j.make_room(2, 100).is_ok());
        let full = j.make_room(3, 100).unwrap_err();
        assert_eq!((full.consumer.as_str(), full.records), (BRIDGE, 3), "bounded in records");
        let read = j.read(0, 10).unwrap();
        assert_eq!(seqs(&read), [1, 2, 3]);
        j.acked(read[1].0).unwrap();
        assert_eq!(j.backlog().0, 1);
        j.flush().unwrap();
    }
    let db = reopen(dir.path());
    let j = Journal::open(&db, vec![bridge(5)]).unwrap();
    let cursor = j.cursor().unwrap();
    assert_eq!(seqs(&j.read(cursor, 10).unwrap()), [3], "what was acked does not come back");
    j.append(&[entry(4)]).unwrap();
    let keys: Vec<u64> = j.read(cursor, 10).unwrap().iter().map(|(k, _)| *k).collect();
    assert!(keys[1] > keys[0], "keys keep rising after a restart: {keys:?}");
}

#[test]
fn an_entry_stays_until_every_consumer_is_done_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let consumers = || vec![bridge(100), Spec::hub("pipeline.archive", 100, 1 << 20)];
    {
        let db = sled::open(dir.path()).unwrap();
        let j = Journal::open(&db, consumers()).unwrap();
        j.append(&[entry(1), entry(2), entry(3)]).unwrap();
        let keys: Vec<u64> = j.read(0, 10).unwrap().iter().map(|(k, _)| *k).collect();
        j.acked(keys[2]).unwrap();
        assert_eq!(j.backlog().0, 3, "the pipeline has not read them yet");
        j.acked_by("pipeline.archive", keys[0]).unwrap();
        assert_eq!(j.backlog().0, 2, "both are done with the first");
        assert!(j.acked_by("nobody", keys[2]).is_err(), "an unknown consumer moves nothing");
        assert_eq!(j.backlog().0, 2);
        j.flush().unwrap();
    }
    let db = reopen(dir.path());
    let j = Journal::open(&db, consumers()).unwrap();
    let cursor = j.cursor_of("pipeline.archive").unwrap();
    assert_eq!(seqs(&j.read(cursor, 10).unwrap()), [2, 3], "each consumer resumes from its own cursor");
    assert_eq!(j.read(j.cursor().unwrap(), 10).unwrap().len(), 0);
}

#[test]
fn without_consumers_nothing_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let j = Journal::open(&db, Vec::new()).unwrap();
    j.append(&[entry(1), entry(2)]).unwrap();
    assert_eq!(j.backlog(), (0, 0));
    assert!(j.make_room(1_000_000, 1 << 40).is_ok());
}

#[test]
fn a_drop_oldest_consumer_skips_ahead_and_a_block_one_holds() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let j = Journal::open(&db, vec![durable("fast", Policy::DropOldest, 4, 1 << 20)]).unwrap();
    for seq in 1..=10 {
        j.make_room(1, 100).unwrap();
        j.append(&[entry(seq)]).unwrap();
    }
    j.flush().unwrap();
    let fast = j.show("fast").unwrap();
    assert_eq!(fast["backlog"]["records"], 4, "{fast}");
    assert_eq!(fast["skipped"], 6);
    assert_eq!(fetch_seqs(&j, "fast", 100, 1000).0, [7, 8, 9, 10], "the newest are kept");
    assert_eq!(j.backlog().0, 4, "what nobody needs is gone");

    let spec = Spec { policy: Policy::Block, ..durable("slow", Policy::Block, 2, 1 << 20) };
    j.create(spec, 10, 10).unwrap();
    j.append(&[entry(11), entry(12)]).unwrap();
    let full = j.make_room(1, 100).unwrap_err();
    assert_eq!(full, Full { consumer: "slow".into(), records: 2, bytes: full.bytes });
    j.acked_by("slow", j.newest()).unwrap();
    assert!(j.make_room(1, 100).is_ok());
}

#[test]
fn backlog_bytes_come_from_the_cumulative_offsets() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let j = Journal::open(&db, vec![Spec::hub("p", 100, 1 << 20)]).unwrap();
        j.append(&[entry(1), entry(2), entry(3)]).unwrap();
        let ((records, bytes), _) = j.backlog_of("p").unwrap();
        assert_eq!((records, bytes), (3, j.backlog().1));
        let keys: Vec<u64> = j.read(0, 10).unwrap().iter().map(|(k, _)| *k).collect();
        j.acked_by("p", keys[0]).unwrap();
        assert_eq!(j.backlog_of("p").unwrap().0, (2, j.backlog().1), "{:?}", j.backlog());
        j.flush().unwrap();
    }
    let db = reopen(dir.path());
    let j = Journal::open(&db, vec![Spec::hub("p", 100, 1 << 20)]).unwrap();
    assert_eq!(j.backlog_of("p").unwrap().0, (2, j.backlog().1), "after reopening");
}

#[test]
fn fetch_reads_its_topics_only_and_next_passes_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let j = Journal::open(&db, Vec::new()).unwrap();
    let spec = Spec {
        prefixes: vec!["org.plantd.Metric.pump-2.".into()],
        ..durable("p2", Policy::DropOldest, 100, 1 << 20)
    };
    j.create(spec, 10, 10).unwrap();
    j.append(&[entry(1), entry_on("org.plantd.Metric.pump-2.t", 2), entry(3)]).unwrap();
    j.flush().unwrap();
    let (seqs, next) = fetch_seqs(&j, "p2", 10, 100);
    assert_eq!(seqs, [2]);
    assert_eq!(next, j.newest(), "past the pump-1 sample after it");
    assert!(j.covers("org.plantd.Metric.pump-2.t") && !j.covers("org.plantd.Metric.pump-1.t"));
}

#[test]
fn made_consumers_persist_and_config_ones_follow_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let declared = Spec { origin: Origin::Declared, ..durable("historian", Policy::Block, 10, 1 << 20) };
    {
        let db = sled::open(dir.path()).unwrap();
        let j = Journal::open(&db, vec![declared.clone()]).unwrap();
        j.create(durable("tap", Policy::DropOldest, 10, 1 << 20), 10, 10).unwrap();
        assert!(matches!(
            j.create(durable("tap", Policy::DropOldest, 1, 1), 10, 10),
            Err(ConsumerError::Exists(_))
        ));
        assert!(matches!(
            j.create(durable("two", Policy::DropOldest, 1, 1), 2, 10),
            Err(ConsumerError::Refused(_))
        ));
        j.append(&[entry(1)]).unwrap();
        j.flush().unwrap();
    }
    {
        let db = reopen(dir.path());
        let j = Journal::open(&db, vec![declared]).unwrap();
        let names: Vec<String> = j.list().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect();
        assert_eq!(names, ["historian", "tap"]);
        assert_eq!(fetch_seqs(&j, "tap", 10, 10).0, [1], "its cursor came back");
        j.flush().unwrap();
    }
    let db = reopen(dir.path());
    let j = Journal::open(&db, Vec::new()).unwrap();
    assert!(j.spec_of("historian").is_none(), "no longer declared: gone");
    assert!(j.spec_of("tap").is_some());
}

#[test]
fn reset_delete_and_inactivity() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let j = Journal::open(&db, vec![Spec::hub("keep", 100, 1 << 20)]).unwrap();
    j.append(&[entry(1), entry(2)]).unwrap();
    j.create(durable("late", Policy::DropOldest, 10, 1 << 20), 10, 10).unwrap();
    assert_eq!(j.show("late").unwrap()["backlog"]["records"], 0, "a new consumer starts past the newest");
    j.reset("late", ResetTo::Start).unwrap();
    j.flush().unwrap();
    assert_eq!(fetch_seqs(&j, "late", 10, 10).0, [1, 2], "what the journal still holds");
    assert!(matches!(j.delete("keep"), Err(ConsumerError::Refused(_))), "the hub's own stay");
    let later = Instant::now() + Duration::from_secs(2);
    assert_eq!(j.sweep_inactive(later), [("late".to_string(), true)]);
    assert!(j.spec_of("late").is_none(), "removed by its policy");
    assert!(j.sweep_inactive(later).is_empty(), "reported once");
}

#[test]
fn a_fetch_stays_within_its_budget_but_takes_one_entry_at_least() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let j = Journal::open(&db, vec![durable("c", Policy::Block, 100, 1 << 20)]).unwrap();
    j.append(&[entry(1), entry(2), entry(3)]).unwrap();
    j.flush().unwrap();
    let one = entry(1).topic.len() + entry(1).payload.len();
    let mut keys = Vec::new();
    let fetched = j.fetch("c", 0, (10, 10, 2 * one), |k, _, _| keys.push(k)).unwrap();
    assert_eq!((fetched.count, fetched.next), (2, keys[1]), "the third waits for the next fetch");
    let fetched = j.fetch("c", keys[1], (10, 10, 1), |_, _, _| {}).unwrap();
    assert_eq!(fetched.count, 1, "a budget smaller than one entry still takes one");
}

#[test]
fn a_waiting_fetch_wakes_once_an_append_is_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let j = std::sync::Arc::new(Journal::open(&db, vec![bridge(100)]).unwrap());
    let newest = j.newest();
    assert!(!j.wait_after(newest, Instant::now() + Duration::from_millis(20)), "nothing came");
    let appender = {
        let j = j.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            j.append(&[entry(1)]).unwrap();
            assert!(!j.wait_after(newest, Instant::now()), "not durable yet: not for a fetch");
            j.flush().unwrap();
        })
    };
    let started = Instant::now();
    assert!(j.wait_after(newest, Instant::now() + Duration::from_secs(10)));
    assert!(started.elapsed() < Duration::from_secs(5));
    appender.join().unwrap();
}

#[test]
fn a_journal_from_before_offsets_is_moved_over() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let old = db.open_tree(OLD_ENTRIES).unwrap();
    for seq in 1..=3u64 {
        old.insert(seq.to_be_bytes(), proto::codec::encode(&entry(seq))).unwrap();
    }
    let j = Journal::open(&db, vec![bridge(100)]).unwrap();
    assert_eq!(seqs(&j.read(0, 10).unwrap()), [1, 2, 3]);
    assert_eq!(j.backlog_of(BRIDGE).unwrap().0, (3, j.backlog().1));
    assert!(!db.tree_names().iter().any(|n| &n[..] == OLD_ENTRIES.as_bytes()));
}

/// Copies a store's directory: what a SIGKILL at this moment would leave
/// (the store is flushed only when asked).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        let target = to.join(item.file_name());
        match item.file_type().unwrap().is_dir() {
            true => copy_dir(&item.path(), &target),
            false => drop(std::fs::copy(item.path(), &target).unwrap()),
        }
    }
}

fn sample(agent: &str, seq: u64) -> Entry {
    Entry {
        topic: format!("org.plantd.Metric.{agent}.t"),
        payload: serde_json::json!({"agent": agent, "seq": seq}).to_string().into_bytes(),
        agent: agent.into(),
        epoch: 7,
        seq,
        historical: false,
    }
}

/// The storm's loss: a client fetched entries that were appended but not yet
/// flushed, and kept its position across a SIGKILL of the hub; after the
/// restart their keys went to another agent's batch, which the client's
/// position then skipped. A fetch gives only durable entries, so a position
/// it hands out stays valid across a crash.
#[test]
fn a_position_given_to_a_client_survives_a_crash_of_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let (live, killed) = (dir.path().join("live"), dir.path().join("killed"));
    let config = |path: &std::path::Path| sled::Config::new().path(path).flush_every_ms(None);
    let db = config(&live).open().unwrap();
    let j = Journal::open(&db, vec![durable("storm", Policy::DropOldest, 100, 1 << 20)]).unwrap();
    j.append(&[sample("a", 1), sample("a", 2)]).unwrap();
    j.flush().unwrap();
    copy_dir(&live, &killed);
    // Agent b's batch is journaled; ingest has not flushed it (nor acknowledged it) when the hub dies.
    j.append(&[sample("b", 1), sample("b", 2)]).unwrap();
    let mut printed = Vec::new();
    let mut take = |_: u64, _: &str, payload: &[u8]| {
        let json: serde_json::Value = serde_json::from_slice(payload).unwrap();
        printed.push((json["agent"].as_str().unwrap().to_string(), json["seq"].as_u64().unwrap()));
    };
    let before = j.fetch("storm", 0, (100, 100, usize::MAX), &mut take).unwrap();
    drop((j, db));

    // Started again on what the kill left: agent c's batch comes first, then b's again.
    let db = config(&killed).open().unwrap();
    let j = Journal::open(&db, Vec::new()).unwrap();
    j.append(&[sample("c", 1), sample("c", 2)]).unwrap();
    j.append(&[sample("b", 1), sample("b", 2)]).unwrap();
    j.flush().unwrap();
    // As `hub tap --durable` does: acknowledge what it printed, fetch after it.
    j.acked_by("storm", before.next.min(j.durable())).unwrap();
    j.fetch("storm", before.next, (100, 100, usize::MAX), &mut take).unwrap();
    for agent in ["a", "b", "c"] {
        let seqs: Vec<u64> = printed.iter().filter(|(a, _)| a == agent).map(|(_, s)| *s).collect();
        assert_eq!(seqs, [1, 2], "agent {agent}: every sample, once: {printed:?}");
    }
}

#[test]
fn readers_that_keep_up_read_from_memory_and_those_behind_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let j = Journal::open(&db, vec![bridge(10_000)]).unwrap();
    let size = {
        let mut value = 0u64.to_be_bytes().to_vec();
        value.extend(proto::codec::encode(&entry(30)));
        value.len()
    };
    // Room in memory for the newest 10 entries (each as long as the 30th).
    j.keep_in_memory(10 * size);
    let reads = |j: &Journal| {
        let disk = j.disk().unwrap();
        (disk.entries.reads_recent.load(Relaxed), disk.entries.reads_stored.load(Relaxed))
    };
    for seq in 1..=30 {
        j.append(&[entry(seq)]).unwrap();
    }
    assert_eq!(j.disk().unwrap().entries.in_memory().0, 10, "memory is bounded in bytes");
    assert_eq!(seqs(&j.read(25, 3).unwrap()), [26, 27, 28], "kept up: from memory");
    assert_eq!(reads(&j), (1, 0));
    assert_eq!(seqs(&j.read(0, 100).unwrap()), (1..=30).collect::<Vec<_>>(), "behind: from the store");
    assert_eq!(reads(&j), (1, 1));
    j.flush().unwrap();
    let (taken, _) = fetch_seqs(&j, BRIDGE, 100, 100);
    assert_eq!(taken, (1..=30).collect::<Vec<_>>(), "a fetch behind reads the store, in order");
    // What memory hands over is what the store holds.
    let from_memory = j.read(20, 100).unwrap();
    assert_eq!(reads(&j).0, 2);
    let disk = j.disk().unwrap();
    let stored: Vec<u64> = disk.entries.from(21).map(|i| decode(&i.unwrap().1).unwrap().seq).collect();
    assert_eq!(seqs(&from_memory), stored);
    drop(disk);
    // Opened again (as after an I/O failure): memory starts empty, the store serves.
    j.detach();
    j.attach(&db).unwrap();
    assert_eq!(j.disk().unwrap().entries.in_memory(), (0, 0));
    assert_eq!(seqs(&j.read(28, 10).unwrap()), [29, 30]);
    // Off: nothing is kept.
    j.keep_in_memory(0);
    j.append(&[entry(31)]).unwrap();
    assert_eq!(j.disk().unwrap().entries.in_memory(), (0, 0));
}
