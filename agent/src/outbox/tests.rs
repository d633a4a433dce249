use std::path::Path;

use proptest::prelude::*;
use proto::sample::{Quality, Value};

use super::log::segment_name;
use super::*;

/// The samples' outbox (the events' is the same type over another record).
type Outbox = super::Outbox<Sample>;

fn sample(epoch: u64, seq: u64) -> Sample {
    Sample {
        channel: "c".into(),
        epoch,
        seq,
        wall_ns: seq as i64,
        mono_ns: seq,
        clock_synced: true,
        value: Value::Number(seq as f64),
        unit: "u".into(),
        quality: Quality::Good,
    }
}

const ID: &str = "pump-1";

fn framed_len(s: &Sample) -> u64 {
    (record::HEADER + record::payload(s).len()) as u64
}

fn opts(max_records: u64, max_bytes: u64) -> OutboxOptions {
    OutboxOptions { max_records, max_bytes, ..OutboxOptions::unbounded() }
}

fn rig(max_records: u64, max_bytes: u64) -> (Outbox, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("outbox"), opts(max_records, max_bytes), ID).unwrap();
    (outbox, dir)
}

fn seqs(outbox: &Outbox) -> Vec<u64> {
    outbox.peek(usize::MAX, usize::MAX).unwrap().records.into_iter().map(|(_, s)| s.seq).collect()
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// Where each record starts in a segment file, by scanning for the marker.
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut at = 0;
    let mut out = Vec::new();
    while at + record::HEADER <= bytes.len() {
        match record::parse(&bytes[at..]) {
            record::Parsed::Record { len, .. } => {
                out.push(at);
                at += len;
            }
            _ => break,
        }
    }
    out
}

#[test]
fn keeps_order_and_retires_through_a_key() {
    let (outbox, _dir) = rig(100, 1 << 20);
    for seq in 1..=5 {
        outbox.append(&sample(1, seq)).unwrap();
    }
    outbox.append(&sample(2, 1)).unwrap();
    let batch = outbox.peek(4, 1 << 20).unwrap().records;
    assert_eq!(
        batch.iter().map(|(_, s)| (s.epoch, s.seq)).collect::<Vec<_>>(),
        [(1, 1), (1, 2), (1, 3), (1, 4)]
    );
    assert_eq!(outbox.retire(batch[3].0).unwrap(), 4);
    let rest: Vec<_> =
        outbox.peek(10, 1 << 20).unwrap().records.into_iter().map(|(_, s)| (s.epoch, s.seq)).collect();
    assert_eq!(rest, [(1, 5), (2, 1)]);
    assert_eq!(outbox.stats().records, 2);
}

#[test]
fn order_is_append_order_whatever_the_epochs() {
    // Random epochs: a later run may well have a smaller one.
    let (outbox, _dir) = rig(100, 1 << 20);
    let order = [(900, 1), (900, 2), (3, 1), (7_000_000_000, 1), (3, 2)];
    for (epoch, seq) in order {
        outbox.append(&sample(epoch, seq)).unwrap();
    }
    let got: Vec<_> =
        outbox.peek(10, 1 << 20).unwrap().records.into_iter().map(|(_, s)| (s.epoch, s.seq)).collect();
    assert_eq!(got, order);
}

#[test]
fn full_outbox_drops_the_oldest_and_counts_exactly() {
    let (outbox, _dir) = rig(10, 1 << 20);
    for seq in 1..=25 {
        outbox.append(&sample(1, seq)).unwrap();
    }
    let s = outbox.stats();
    assert_eq!((s.records, s.dropped), (10, 15));
    assert_eq!(outbox.peek(100, 1 << 20).unwrap().records[0].1.seq, 16);
    // The byte bound holds too.
    let one = framed_len(&sample(1, 1));
    let (outbox, _dir) = rig(1000, one * 3 + 1);
    for seq in 1..=7 {
        outbox.append(&sample(1, seq)).unwrap();
    }
    let s = outbox.stats();
    assert_eq!((s.records, s.dropped), (3, 4));
    assert!(s.bytes <= s.max_bytes);
}

#[test]
fn drops_from_a_batch_the_hub_then_acknowledges_are_not_counted() {
    let (outbox, _dir) = rig(5, 1 << 20);
    for seq in 1..=5 {
        outbox.append(&sample(1, seq)).unwrap();
    }
    let batch = outbox.peek(5, 1 << 20).unwrap().records;
    outbox.sending(batch[4].0);
    for seq in 6..=7 {
        outbox.append(&sample(1, seq)).unwrap(); // drops 1 and 2, which are on the wire
    }
    assert_eq!(outbox.stats().dropped, 2);
    outbox.retire(batch[4].0).unwrap(); // the hub had them
    assert_eq!((outbox.stats().records, outbox.stats().dropped), (2, 0));
    // Without an answer they stay counted.
    let batch = outbox.peek(5, 1 << 20).unwrap().records;
    outbox.sending(batch[1].0);
    for seq in 8..=11 {
        outbox.append(&sample(1, seq)).unwrap();
    }
    outbox.not_sent();
    assert_eq!(outbox.stats().dropped, 1);
}

#[test]
fn batches_in_flight_peek_past_each_other_and_settle_oldest_first() {
    let (outbox, _dir) = rig(8, 1 << 20);
    for seq in 1..=8 {
        outbox.append(&sample(1, seq)).unwrap();
    }
    let first = outbox.peek(3, 1 << 20).unwrap().records;
    outbox.sending(first[2].0);
    let second = outbox.peek_after(Some(first[2].0), 3, 1 << 20).unwrap().records;
    assert_eq!(second.iter().map(|(_, s)| s.seq).collect::<Vec<_>>(), [4, 5, 6], "after the first");
    outbox.sending(second[2].0);
    let rest = outbox.peek_after(Some(second[2].0), 3, 1 << 20).unwrap().records;
    assert_eq!(rest.iter().map(|(_, s)| s.seq).collect::<Vec<_>>(), [7, 8]);
    assert!(
        outbox.peek_after(Some(rest[1].0), 3, 1 << 20).unwrap().records.is_empty(),
        "nothing past the end"
    );
    // Full: 1, on the wire in the first batch, is dropped; the first batch's Ack delivered it.
    outbox.append(&sample(1, 9)).unwrap();
    assert_eq!(outbox.stats().dropped, 1);
    outbox.retire(first[2].0).unwrap();
    assert_eq!(outbox.stats().dropped, 0);
    // 4, 5 and 6 are dropped from the second batch: counted only until its Ack.
    for seq in 10..=14 {
        outbox.append(&sample(1, seq)).unwrap();
    }
    assert_eq!(outbox.stats().dropped, 3);
    outbox.retire(second[2].0).unwrap();
    assert_eq!(outbox.stats().dropped, 0);
    assert_eq!(seqs(&outbox), (7..=14).collect::<Vec<_>>());
    // No answer: everything goes again from the oldest.
    let third = outbox.peek(2, 1 << 20).unwrap().records;
    outbox.sending(third[1].0);
    outbox.not_sent();
    assert_eq!(outbox.peek(2, 1 << 20).unwrap().records, third);
}

#[test]
fn damaged_records_are_quarantined_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox");
    {
        let outbox = Outbox::open(&path, opts(100, 1 << 20), ID).unwrap();
        for seq in 1..=3 {
            outbox.append(&sample(1, seq)).unwrap();
        }
        outbox.flush().unwrap();
    }
    let file = &segment_files(&path)[0];
    let mut bytes = std::fs::read(file).unwrap();
    let second = record_offsets(&bytes)[1];
    bytes[second + record::HEADER + 2] ^= 0xff;
    std::fs::write(file, &bytes).unwrap();

    let inspected = Outbox::inspect(&path).unwrap();
    assert_eq!(inspected.verify().unwrap(), (2, 1));
    assert_eq!(std::fs::read(file).unwrap(), bytes, "inspecting changes nothing");
    drop(inspected);

    let outbox = Outbox::open(&path, opts(100, 1 << 20), ID).unwrap();
    assert_eq!(seqs(&outbox), [1, 3]);
    let s = outbox.stats();
    assert_eq!((s.records, s.quarantined), (2, 1));
    assert_eq!(outbox.verify().unwrap(), (2, 0), "the segment was rewritten without the damage");
    let kept = std::fs::read(path.join("quarantine")).unwrap();
    assert!(kept.ends_with(&bytes[second..second + record::HEADER + record::payload(&sample(1, 2)).len()]));
    // And the count is kept.
    outbox.flush().unwrap();
    drop(outbox);
    assert_eq!(Outbox::open(&path, opts(100, 1 << 20), ID).unwrap().stats().quarantined, 1);
}

#[test]
fn counts_and_drops_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox");
    {
        let outbox = Outbox::open(&path, opts(5, 1 << 20), ID).unwrap();
        for seq in 1..=8 {
            outbox.append(&sample(1, seq)).unwrap();
        }
        outbox.flush().unwrap();
        assert_eq!(outbox.stats().durable, Some((1, 8)));
    }
    let s = Outbox::open(&path, opts(5, 1 << 20), ID).unwrap().stats();
    assert_eq!((s.records, s.dropped, s.last_appended), (5, 3, Some((1, 8))));
}

#[test]
fn every_loss_counter_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox");
    {
        let short = OutboxOptions { min_free_bytes: Some(u64::MAX), ..opts(100, 1 << 20) };
        let outbox = Outbox::open(&path, short, ID).unwrap();
        // A record the log refuses is lost and counted as a failed write would be.
        let mut huge = sample(1, 1);
        huge.value = Value::Text("x".repeat(record::MAX_PAYLOAD + 1));
        assert!(outbox.append(&huge).is_err());
        for seq in 2..=4 {
            outbox.append(&sample(1, seq)).unwrap();
        }
        outbox.flush().unwrap();
        let s = outbox.stats();
        assert_eq!((s.dropped_for_space, s.store_errors), (2, 1));
    }
    let s = Outbox::open(&path, opts(100, 1 << 20), ID).unwrap().stats();
    assert_eq!((s.records, s.dropped_for_space, s.store_errors), (1, 2, 1), "kept in the head");
}

#[test]
fn the_backlog_is_sent_under_the_id_it_was_made_with() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox");
    {
        let outbox = Outbox::open(&path, opts(100, 1 << 20), "pump-old").unwrap();
        for seq in 1..=3 {
            outbox.append(&sample(1, seq)).unwrap();
        }
        outbox.flush().unwrap();
    }
    let outbox = Outbox::open(&path, opts(100, 1 << 20), "pump-new").unwrap();
    for seq in 1..=2 {
        outbox.append(&sample(2, seq)).unwrap();
    }
    outbox.flush().unwrap();
    let made_as: Vec<(u64, String)> =
        outbox.made_as().into_iter().map(|(i, id)| (i, id.to_string())).collect();
    assert_eq!(made_as, [(0, "pump-old".to_string()), (4, "pump-new".to_string())]);
    let dumped: Vec<(String, u64)> =
        outbox.dump(10).unwrap().into_iter().map(|(id, s)| (id.unwrap().to_string(), s.epoch)).collect();
    assert_eq!(dumped.iter().filter(|(id, epoch)| (id == "pump-old") != (*epoch == 1)).count(), 0);
    // A batch never mixes ids, however large it may be.
    let old = outbox.peek(100, 1 << 20).unwrap();
    assert_eq!((&*old.agent, old.records.len()), ("pump-old", 3));
    assert!(old.records.iter().all(|(_, s)| s.epoch == 1));
    outbox.retire(old.records.last().unwrap().0).unwrap();
    let new = outbox.peek(100, 1 << 20).unwrap();
    assert_eq!((&*new.agent, new.records.len()), ("pump-new", 2));
    assert!(new.records.iter().all(|(_, s)| s.epoch == 2));
    outbox.retire(new.records.last().unwrap().0).unwrap();
    outbox.flush().unwrap();
    drop(outbox);
    // A restart after the old id's records are gone forgets it.
    let outbox = Outbox::open(&path, opts(100, 1 << 20), "pump-new").unwrap();
    assert_eq!(outbox.made_as().len(), 1);
    assert_eq!(&*outbox.peek(100, 1 << 20).unwrap().agent, "pump-new");
}

#[test]
fn an_outbox_that_recorded_no_id_is_read_as_the_configured_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox");
    {
        let outbox = Outbox::open(&path, opts(100, 1 << 20), "pump-old").unwrap();
        outbox.append(&sample(1, 1)).unwrap();
        outbox.flush().unwrap();
    }
    // As an agent from before ids were recorded left it.
    std::fs::remove_file(path.join("ids")).unwrap();
    let inspected = Outbox::inspect(&path).unwrap();
    assert_eq!(inspected.dump(10).unwrap()[0].0, None, "not known");
    drop(inspected);
    let outbox = Outbox::open(&path, opts(100, 1 << 20), "pump-new").unwrap();
    let batch = outbox.peek(10, 1 << 20).unwrap();
    assert_eq!((&*batch.agent, batch.records.len()), ("pump-new", 1));
    assert!(path.join("ids").exists(), "recorded from now on");
}

#[test]
fn the_reserve_is_sized_from_the_file_system_unless_set() {
    assert_eq!(reserve_for(20 << 20), 1 << 20, "5 % of a 20 MiB file system");
    assert_eq!(reserve_for(64 << 30), RESERVE_MAX);
    assert_eq!(reserve_for(1 << 20), RESERVE_MIN);
    let dir = tempfile::tempdir().unwrap();
    let sized = OutboxOptions { min_free_bytes: None, ..OutboxOptions::unbounded() };
    let s = Outbox::open(&dir.path().join("a"), sized, ID).unwrap().stats();
    assert!(s.reserve_sized);
    assert_eq!(s.min_free_bytes, reserve_for(s.fs_bytes.unwrap()));
    let set = OutboxOptions { min_free_bytes: Some(12345), ..OutboxOptions::unbounded() };
    let outbox = Outbox::open(&dir.path().join("b"), set, ID).unwrap();
    let s = outbox.stats();
    assert_eq!((s.reserve_sized, s.min_free_bytes), (false, 12345), "min_free_bytes wins");
    assert_eq!(outbox.space_warning(), None);
    let short = OutboxOptions { min_free_bytes: Some(u64::MAX), ..OutboxOptions::unbounded() };
    let warning = Outbox::open(&dir.path().join("c"), short, ID).unwrap().space_warning().unwrap();
    assert!(warning.contains("drops the oldest") && warning.contains("outbox.min_free_bytes"), "{warning}");
}

#[test]
fn acknowledged_records_are_not_sent_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox");
    {
        let outbox = Outbox::open(&path, opts(100, 1 << 20), ID).unwrap();
        for seq in 1..=10 {
            outbox.append(&sample(1, seq)).unwrap();
        }
        let batch = outbox.peek(4, 1 << 20).unwrap().records;
        outbox.retire(batch[3].0).unwrap();
        outbox.flush().unwrap();
    }
    let outbox = Outbox::open(&path, opts(100, 1 << 20), ID).unwrap();
    assert_eq!(seqs(&outbox), (5..=10).collect::<Vec<_>>());
    assert_eq!(outbox.stats().records, 6);
    // Indices go on rising after the restart.
    outbox.append(&sample(2, 1)).unwrap();
    let keys: Vec<Key> = outbox.peek(100, 1 << 20).unwrap().records.into_iter().map(|(k, _)| k).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
}

#[test]
fn a_torn_tail_is_cut_at_the_last_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox");
    {
        let outbox = Outbox::open(&path, opts(100, 1 << 20), ID).unwrap();
        for seq in 1..=10 {
            outbox.append(&sample(1, seq)).unwrap();
        }
        outbox.flush().unwrap();
    }
    let file = &segment_files(&path)[0];
    let len = std::fs::metadata(file).unwrap().len();
    // A crash in the middle of appending the tenth record.
    std::fs::OpenOptions::new().write(true).open(file).unwrap().set_len(len - 5).unwrap();
    let outbox = Outbox::open(&path, opts(100, 1 << 20), ID).unwrap();
    assert_eq!(seqs(&outbox), (1..=9).collect::<Vec<_>>());
    let s = outbox.stats();
    assert_eq!((s.quarantined, s.last_appended), (0, Some((1, 9))), "a torn append is not damage");
    assert_eq!(outbox.recovery().torn_bytes, framed_len(&sample(1, 10)) - 5);
    outbox.append(&sample(2, 1)).unwrap();
    outbox.flush().unwrap();
    drop(outbox);
    let outbox = Outbox::open(&path, opts(100, 1 << 20), ID).unwrap();
    assert_eq!(seqs(&outbox), [1, 2, 3, 4, 5, 6, 7, 8, 9, 1]);
    assert_eq!(outbox.verify().unwrap(), (10, 0));
}

#[test]
fn segments_roll_and_retired_ones_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox");
    let small = OutboxOptions { segment_bytes: 4096, ..OutboxOptions::unbounded() };
    let outbox = Outbox::open(&path, small, ID).unwrap();
    for seq in 1..=1000 {
        outbox.append(&sample(1, seq)).unwrap();
    }
    outbox.flush().unwrap();
    let files = segment_files(&path);
    assert!(files.len() > 10, "{} segments", files.len());
    assert!(files.iter().all(|f| std::fs::metadata(f).unwrap().len() <= 4096));
    // Each is named by the index of its first record.
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let record::Parsed::Record { index, .. } = record::parse(&bytes) else { panic!("{f:?}") };
        assert_eq!(f.file_name().unwrap().to_str().unwrap(), segment_name(index));
    }
    let batch = outbox.peek(900, usize::MAX).unwrap().records;
    outbox.retire(batch.last().unwrap().0).unwrap();
    assert!(segment_files(&path).len() <= 3, "retired segments are deleted");
    assert_eq!(seqs(&outbox), (901..=1000).collect::<Vec<_>>());
    // Dropping the oldest for room deletes segments too.
    let bounded =
        Outbox::open(&dir.path().join("b"), OutboxOptions { max_records: 50, ..small }, ID).unwrap();
    for seq in 1..=5000 {
        bounded.append(&sample(1, seq)).unwrap();
    }
    bounded.flush().unwrap();
    assert!(segment_files(&dir.path().join("b")).len() <= 3);
    assert_eq!(bounded.stats().dropped, 4950);
}

#[test]
fn disk_use_stays_bounded_under_churn() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox");
    let outbox =
        Outbox::open(&path, OutboxOptions { segment_bytes: 16 << 10, ..OutboxOptions::unbounded() }, ID)
            .unwrap();
    let mut largest = 0;
    for seq in 1..=50_000u64 {
        outbox.append(&sample(1, seq)).unwrap();
        if seq > 1000 && seq % 100 == 0 {
            let through = outbox.peek(100, usize::MAX).unwrap().records.last().unwrap().0;
            outbox.retire(through).unwrap();
        }
        if seq % 5000 == 0 {
            outbox.flush().unwrap();
            largest = largest.max(outbox.stats().disk_bytes);
        }
    }
    let live = 1100 * framed_len(&sample(1, 50_000));
    assert!(largest < live + 3 * (16 << 10), "{largest} bytes on disk for {live} live");
}

#[test]
fn while_space_is_short_the_outbox_does_not_grow_and_counts_apart() {
    let dir = tempfile::tempdir().unwrap();
    let short = OutboxOptions { min_free_bytes: Some(u64::MAX), ..OutboxOptions::unbounded() };
    let outbox = Outbox::open(&dir.path().join("outbox"), short, ID).unwrap();
    for seq in 1..=5 {
        outbox.append(&sample(1, seq)).unwrap();
    }
    let s = outbox.stats();
    assert!(s.space_low);
    assert_eq!((s.records, s.dropped, s.dropped_for_space), (1, 0, 4));
    assert_eq!(seqs(&outbox), [5]);
    // The in-flight rule applies to these drops as well.
    let batch = outbox.peek(1, usize::MAX).unwrap().records;
    outbox.sending(batch[0].0);
    outbox.append(&sample(1, 6)).unwrap();
    outbox.retire(batch[0].0).unwrap();
    assert_eq!(outbox.stats().dropped_for_space, 4);
}

#[test]
fn a_record_that_does_not_decode_is_set_aside() {
    let (outbox, dir) = rig(100, 1 << 20);
    outbox.append(&sample(1, 1)).unwrap();
    outbox.inner().log.append(b"not a sample", (0, 0)).unwrap();
    outbox.append(&sample(1, 3)).unwrap();
    assert_eq!(outbox.verify().unwrap(), (2, 1));
    assert_eq!(outbox.dump(10).unwrap().iter().map(|(_, s)| s.seq).collect::<Vec<_>>(), [1, 3]);
    let first = outbox.peek(10, 1 << 20).unwrap().records;
    assert_eq!(first.len(), 1, "stops before the bad one");
    outbox.retire(first[0].0).unwrap();
    assert_eq!(seqs(&outbox), [3]);
    assert_eq!(outbox.stats().quarantined, 1);
    drop(dir);
}

fn write_log(path: &Path, n: u64, segment_bytes: u64) {
    let outbox =
        Outbox::open(path, OutboxOptions { segment_bytes, ..OutboxOptions::unbounded() }, ID).unwrap();
    for seq in 1..=n {
        outbox.append(&sample(1, seq)).unwrap();
    }
    outbox.flush().unwrap();
}

/// Everything the outbox offers, on whatever the files hold: nothing may panic.
fn exercise(path: &Path) {
    if let Ok(inspected) = Outbox::inspect(path) {
        let _ = inspected.verify();
        let _ = inspected.dump(1000);
        let _ = inspected.peek(100, 1 << 20);
        let _ = inspected.oldest_wall_ns();
    }
    let outbox = Outbox::open(path, OutboxOptions { segment_bytes: 4096, ..OutboxOptions::unbounded() }, ID)
        .expect("damage never stops the outbox opening");
    let before = outbox.stats();
    let batch = outbox.peek(7, 1 << 20).unwrap().records;
    if let Some((k, _)) = batch.last() {
        outbox.retire(*k).unwrap();
    }
    for seq in 1..=20 {
        outbox.append(&sample(9, seq)).unwrap();
    }
    outbox.flush().unwrap();
    let _ = outbox.verify().unwrap();
    let _ = outbox.dump(1000).unwrap();
    let _ = outbox.resync();
    let rest = outbox.peek(usize::MAX, usize::MAX).unwrap().records;
    let keys: Vec<Key> = rest.iter().map(|(k, _)| *k).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "order holds: {keys:?}");
    assert!(rest.iter().rev().take(20).all(|(_, s)| s.epoch == 9), "new appends follow whatever was there");
    assert!(outbox.stats().records >= 20 && before.records >= batch.len() as u64);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn garbage_segments_never_panic(
        files in prop::collection::vec((0u64..50, prop::collection::vec(any::<u8>(), 0..3000)), 0..4),
        head in prop::option::of(prop::collection::vec(any::<u8>(), 0..80)),
        marked in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        std::fs::create_dir_all(&path).unwrap();
        for (first, mut bytes) in files {
            if marked && bytes.len() > 24 {
                // Plausible-looking headers among the garbage.
                bytes[..4].copy_from_slice(&record::MARKER);
                bytes[10..14].copy_from_slice(&record::MARKER);
            }
            std::fs::write(path.join(segment_name(first)), bytes).unwrap();
        }
        if let Some(head) = head {
            std::fs::write(path.join("head"), head).unwrap();
        }
        exercise(&path);
    }

    #[test]
    fn damage_in_the_middle_loses_only_the_records_it_touches(
        n in 5u64..120,
        at in 0.0f64..1.0,
        len in 1usize..80,
        flips in prop::collection::vec(any::<u8>(), 1..80),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        write_log(&path, n, 1 << 20);
        let file = segment_files(&path)[0].clone();
        let mut bytes = std::fs::read(&file).unwrap();
        let offsets = record_offsets(&bytes);
        let from = (at * (bytes.len() - 1) as f64) as usize;
        let to = (from + len).min(bytes.len());
        let mut changed = false;
        for (i, b) in bytes[from..to].iter_mut().enumerate() {
            let new = *b ^ flips[i % flips.len()].max(1);
            changed |= new != *b;
            *b = new;
        }
        prop_assume!(changed);
        std::fs::write(&file, &bytes).unwrap();
        // Records wholly outside the damaged bytes must all be kept.
        let ends: Vec<usize> = offsets.iter().skip(1).copied().chain([bytes.len()]).collect();
        let untouched: Vec<u64> = offsets
            .iter()
            .zip(&ends)
            .enumerate()
            .filter(|(_, (&s, &e))| e <= from || s >= to)
            .map(|(i, _)| i as u64 + 1)
            .collect();
        let outbox = Outbox::open(&path, OutboxOptions::unbounded(), ID).unwrap();
        let got: Vec<u64> = outbox.dump(usize::MAX).unwrap().iter().map(|(_, s)| s.seq).collect();
        for seq in &untouched {
            prop_assert!(got.contains(seq), "record {} lost; kept {:?}", seq, got);
        }
        prop_assert!(got.len() as u64 <= n);
        let s = outbox.stats();
        // Damage reaching the end of the last segment may be a torn append, not counted.
        prop_assert!(s.quarantined >= 1 || to == bytes.len() || got.len() as u64 == n);
        exercise(&path);
    }

    #[test]
    fn a_torn_tail_anywhere_keeps_every_whole_record(n in 1u64..60, cut in 0.0f64..1.0) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        write_log(&path, n, 1 << 20);
        let file = segment_files(&path)[0].clone();
        let bytes = std::fs::read(&file).unwrap();
        let keep = (cut * bytes.len() as f64) as usize;
        std::fs::write(&file, &bytes[..keep]).unwrap();
        let whole = record_offsets(&bytes).iter().zip(record_offsets(&bytes).iter().skip(1).chain([&bytes.len()])).filter(|(_, &e)| e <= keep).count() as u64;
        let outbox = Outbox::open(&path, OutboxOptions::unbounded(), ID).unwrap();
        prop_assert_eq!(outbox.stats().records, whole);
        prop_assert_eq!(outbox.stats().quarantined, 0);
        exercise(&path);
    }
}
