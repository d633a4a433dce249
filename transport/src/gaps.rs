//! Missed-sample detection for bus subscribers, sans-IO.
//!
//! The bus is best effort: a subscriber whose queue at the hub is full is
//! dropped for, and nobody else knows. Durable samples carry what it takes
//! to notice: `"durable": true`, the `"agent"`, its boot `"epoch"` and a
//! `"seq"` that counts up by one per durable sample within that epoch. A
//! [`GapWatch`] fed every payload a subscriber receives keeps, per (agent,
//! epoch), the highest seq seen, and counts the seqs jumped over as missed.
//!
//! What is not a gap: a repeat or an earlier seq (a hub killed between
//! publishing and acknowledging publishes a batch again), and everything
//! before the first sample seen of an (agent, epoch) (the subscriber started
//! mid-stream). One agent's durable samples reach the bus in order (ingest
//! publishes them through one socket), so an earlier seq arriving after a
//! later one does not happen there; were it to, it was counted missed when
//! the later one came, and stays counted.
//!
//! Memory is bounded: at most `max_streams` (agent, epoch) pairs are tracked,
//! the least recently heard forgotten first (a forgotten stream starts again
//! as if first seen), and agent ids longer than [`MAX_AGENT_BYTES`] are not
//! tracked at all.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Agent ids longer than this are not tracked: a hostile publisher cannot
/// make a watch hold megabytes per stream.
pub const MAX_AGENT_BYTES: usize = 256;

/// How often [`GapWatch::report`] says something, at most.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// What one payload was to the watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Not a durable sample (best effort, another message, not JSON), or an
    /// agent id too long to track.
    Ignored,
    /// The first of its (agent, epoch), or the next in sequence.
    InSequence,
    /// A repeat, or earlier than one already seen.
    Repeat,
    /// In sequence after this many missed ones.
    AfterGap(u64),
}

type Stream = (String, u64);

/// Per (agent, epoch) highest seq, and what was missed.
#[derive(Debug)]
pub struct GapWatch {
    max_streams: usize,
    /// Highest seq seen, and when last heard (a tick of `clock`).
    streams: HashMap<Stream, (u64, u64)>,
    /// The streams by when last heard: the first is the one to forget.
    by_age: BTreeMap<u64, Stream>,
    clock: u64,
    /// Missed per agent since the last report, at most `max_streams`
    /// agents (the rest lumped into `others_pending`).
    pending: BTreeMap<String, u64>,
    others_pending: u64,
    last_report: Option<Instant>,
    totals: Totals,
}

/// Everything a watch has counted since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Durable samples seen (repeats included).
    pub durable: u64,
    /// Seqs jumped over.
    pub missed: u64,
    /// Repeats and earlier seqs.
    pub repeats: u64,
    /// Streams forgotten to stay within `max_streams`.
    pub forgotten: u64,
}

/// What was missed since the last report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Missed {
    /// Per agent, by agent id.
    pub agents: Vec<(String, u64)>,
    /// Agents past the watch's bound, lumped together.
    pub others: u64,
}

impl Missed {
    pub fn total(&self) -> u64 {
        self.agents.iter().map(|(_, n)| n).sum::<u64>() + self.others
    }
}

impl GapWatch {
    /// A watch tracking at most `max_streams` (agent, epoch) pairs (at least one).
    pub fn new(max_streams: usize) -> GapWatch {
        GapWatch {
            max_streams: max_streams.max(1),
            streams: HashMap::new(),
            by_age: BTreeMap::new(),
            clock: 0,
            pending: BTreeMap::new(),
            others_pending: 0,
            last_report: None,
            totals: Totals::default(),
        }
    }

    /// One payload as received from the bus (JSON, or anything else).
    pub fn observe(&mut self, payload: &[u8]) -> Seen {
        match serde_json::from_slice::<Value>(payload) {
            Ok(value) => self.observe_json(&value),
            Err(_) => Seen::Ignored,
        }
    }

    /// [`GapWatch::observe`] of a payload the caller has parsed already.
    pub fn observe_json(&mut self, payload: &Value) -> Seen {
        if payload["durable"] != Value::Bool(true) {
            return Seen::Ignored;
        }
        let (Some(agent), Some(epoch), Some(seq)) =
            (payload["agent"].as_str(), payload["epoch"].as_u64(), payload["seq"].as_u64())
        else {
            return Seen::Ignored;
        };
        self.observe_sample(agent, epoch, seq)
    }

    /// One durable sample, by its key.
    pub fn observe_sample(&mut self, agent: &str, epoch: u64, seq: u64) -> Seen {
        if agent.len() > MAX_AGENT_BYTES {
            return Seen::Ignored;
        }
        self.totals.durable += 1;
        self.clock += 1;
        let key = (agent.to_string(), epoch);
        let Some((highest, heard)) = self.streams.get_mut(&key) else {
            self.make_room();
            self.streams.insert(key.clone(), (seq, self.clock));
            self.by_age.insert(self.clock, key);
            return Seen::InSequence;
        };
        let previous = std::mem::replace(heard, self.clock);
        let stream = self.by_age.remove(&previous).expect("every stream is in by_age");
        self.by_age.insert(self.clock, stream);
        if seq <= *highest {
            self.totals.repeats += 1;
            return Seen::Repeat;
        }
        let missed = seq - *highest - 1;
        *highest = seq;
        if missed == 0 {
            return Seen::InSequence;
        }
        self.totals.missed += missed;
        if let Some(count) = self.pending.get_mut(agent) {
            *count += missed;
        } else if self.pending.len() < self.max_streams {
            self.pending.insert(agent.to_string(), missed);
        } else {
            self.others_pending += missed;
        }
        Seen::AfterGap(missed)
    }

    fn make_room(&mut self) {
        while self.streams.len() >= self.max_streams {
            let Some((_, oldest)) = self.by_age.pop_first() else { break };
            self.streams.remove(&oldest);
            self.totals.forgotten += 1;
        }
    }

    /// What was missed since the last report, if anything was and the last
    /// report is at least [`REPORT_EVERY`] old: call it as often as you like.
    pub fn report(&mut self, now: Instant) -> Option<Missed> {
        if self.pending.is_empty() && self.others_pending == 0 {
            return None;
        }
        if self.last_report.is_some_and(|last| now.saturating_duration_since(last) < REPORT_EVERY) {
            return None;
        }
        self.last_report = Some(now);
        let agents = std::mem::take(&mut self.pending).into_iter().collect();
        Some(Missed { agents, others: std::mem::take(&mut self.others_pending) })
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// (agent, epoch) pairs tracked now.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }
}

/// A report as one line for people: the word `missed`, the count, and the
/// agents with theirs (the first `shown` of them).
pub fn describe(missed: &Missed, shown: usize) -> String {
    let mut parts: Vec<String> =
        missed.agents.iter().take(shown).map(|(agent, n)| format!("{agent} {n}")).collect();
    let hidden = missed.agents.len().saturating_sub(shown);
    if hidden > 0 {
        parts.push(format!("{hidden} more agents"));
    }
    if missed.others > 0 {
        parts.push(format!("{} from agents past the watch's bound", missed.others));
    }
    format!("missed {} durable samples: {}", missed.total(), parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn durable(agent: &str, epoch: u64, seq: u64) -> Vec<u8> {
        json!({"agent": agent, "channel": "t", "epoch": epoch, "seq": seq, "durable": true, "value": 1})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn gaps_are_counted_per_agent_and_epoch() {
        let mut watch = GapWatch::new(16);
        assert_eq!(watch.observe(&durable("a", 1, 5)), Seen::InSequence, "started mid-stream: no gap");
        assert_eq!(watch.observe(&durable("a", 1, 6)), Seen::InSequence);
        assert_eq!(watch.observe(&durable("a", 1, 9)), Seen::AfterGap(2));
        assert_eq!(watch.observe(&durable("b", 1, 1)), Seen::InSequence);
        assert_eq!(watch.observe(&durable("a", 2, 1)), Seen::InSequence, "a new epoch starts afresh");
        assert_eq!(watch.observe(&durable("b", 1, 4)), Seen::AfterGap(2));
        assert_eq!(watch.observe(&durable("a", 1, 10)), Seen::InSequence, "epoch 1 still tracked");
        let missed = watch.report(Instant::now()).expect("something was missed");
        assert_eq!(missed.agents, vec![("a".to_string(), 2), ("b".to_string(), 2)]);
        assert_eq!(watch.totals(), Totals { durable: 7, missed: 4, repeats: 0, forgotten: 0 });
    }

    #[test]
    fn repeats_and_earlier_seqs_are_not_gaps() {
        let mut watch = GapWatch::new(4);
        for seq in [1, 2, 3, 3, 2, 1, 4] {
            watch.observe(&durable("a", 7, seq));
        }
        assert_eq!(watch.totals().missed, 0);
        assert_eq!(watch.totals().repeats, 3);
        assert_eq!(watch.report(Instant::now()), None);
    }

    #[test]
    fn what_is_not_a_durable_sample_is_ignored() {
        let mut watch = GapWatch::new(4);
        let best_effort = json!({"agent": "a", "epoch": 1, "seq": 9, "durable": false}).to_string();
        let no_seq = json!({"agent": "a", "epoch": 1, "durable": true}).to_string();
        let long = "x".repeat(MAX_AGENT_BYTES + 1);
        for payload in [best_effort.as_bytes(), no_seq.as_bytes(), b"not json", b"", &durable(&long, 1, 1)] {
            assert_eq!(watch.observe(payload), Seen::Ignored);
        }
        assert_eq!(watch.streams(), 0);
        assert_eq!(watch.totals(), Totals::default());
    }

    #[test]
    fn reports_come_at_most_once_a_second_and_hold_what_came_between() {
        let mut watch = GapWatch::new(4);
        let start = Instant::now();
        watch.observe(&durable("a", 1, 1));
        watch.observe(&durable("a", 1, 3));
        assert_eq!(watch.report(start).map(|m| m.total()), Some(1));
        watch.observe(&durable("a", 1, 6));
        assert_eq!(watch.report(start + Duration::from_millis(999)), None, "too soon");
        watch.observe(&durable("a", 1, 8));
        let missed = watch.report(start + REPORT_EVERY).expect("due");
        assert_eq!(missed.agents, vec![("a".to_string(), 3)]);
        assert_eq!(watch.report(start + 5 * REPORT_EVERY), None, "nothing new");
        assert_eq!(describe(&missed, 4), "missed 3 durable samples: a 3");
    }

    #[test]
    fn the_least_recently_heard_stream_is_forgotten_first() {
        let mut watch = GapWatch::new(2);
        watch.observe(&durable("a", 1, 1));
        watch.observe(&durable("b", 1, 1));
        watch.observe(&durable("a", 1, 2)); // a heard last: b is the oldest
        watch.observe(&durable("c", 1, 1));
        assert_eq!(watch.streams(), 2);
        assert_eq!(watch.totals().forgotten, 1);
        assert_eq!(watch.observe(&durable("a", 1, 4)), Seen::AfterGap(1), "a is still tracked");
        assert_eq!(watch.observe(&durable("b", 1, 9)), Seen::InSequence, "b was forgotten: starts afresh");
    }

    #[test]
    fn pending_agents_past_the_bound_are_lumped_together() {
        let mut watch = GapWatch::new(1);
        for agent in ["a", "b", "c"] {
            watch.observe(&durable(agent, 1, 1));
            watch.observe(&durable(agent, 1, 3));
        }
        // One stream tracked: each agent's gap is counted while it is tracked, but only
        // one agent is named; the others are counted all the same.
        let missed = watch.report(Instant::now()).unwrap();
        assert_eq!(missed.agents, vec![("a".to_string(), 1)]);
        assert_eq!(missed.others, 2);
        assert_eq!(
            describe(&missed, 0),
            "missed 3 durable samples: 1 more agents, 2 from agents past the watch's bound"
        );
    }

    proptest! {
        /// Any interleaving of in-order streams with some seqs dropped: the
        /// watch counts exactly the drops after each stream's first seen seq,
        /// whatever repeats are mixed in, and stays within its bound.
        #[test]
        fn counts_exactly_what_was_dropped(
            streams in prop::collection::vec((1u64..100, prop::collection::vec((any::<bool>(), any::<bool>()), 1..60)), 1..8),
            order in prop::collection::vec(any::<prop::sample::Index>(), 0..400),
        ) {
            // Per stream: seq 1..=n, kept or dropped, some kept ones repeated.
            let mut queues: Vec<Vec<u64>> = Vec::new();
            let mut expected = 0u64;
            for (_, seqs) in &streams {
                let mut sent = Vec::new();
                let kept: Vec<u64> = seqs.iter().enumerate().filter(|(_, (keep, _))| *keep).map(|(i, _)| i as u64 + 1).collect();
                if let (Some(first), Some(last)) = (kept.first(), kept.last()) {
                    expected += (last - first + 1) - kept.len() as u64;
                }
                for (i, (keep, repeat)) in seqs.iter().enumerate() {
                    if *keep {
                        sent.push(i as u64 + 1);
                        if *repeat {
                            sent.push(i as u64 + 1);
                        }
                    }
                }
                sent.reverse(); // popped from the end
                queues.push(sent);
            }
            let mut watch = GapWatch::new(streams.len());
            let mut picks = order.into_iter();
            while queues.iter().any(|q| !q.is_empty()) {
                let live: Vec<usize> = (0..queues.len()).filter(|&i| !queues[i].is_empty()).collect();
                let at = picks.next().map_or(0, |p| p.index(live.len()));
                let stream = live[at];
                let seq = queues[stream].pop().unwrap();
                let epoch = streams[stream].0;
                watch.observe(&durable(&format!("agent-{stream}"), epoch, seq));
                prop_assert!(watch.streams() <= streams.len());
            }
            prop_assert_eq!(watch.totals().missed, expected);
            let reported = watch.report(Instant::now()).map_or(0, |m| m.total());
            prop_assert_eq!(reported, expected);
        }

        #[test]
        fn never_holds_more_than_its_bound(
            keys in prop::collection::vec((0u8..50, 0u64..5, 0u64..20), 0..300),
            bound in 1usize..10,
        ) {
            let mut watch = GapWatch::new(bound);
            for (agent, epoch, seq) in keys {
                watch.observe_sample(&format!("a{agent}"), epoch, seq);
                prop_assert!(watch.streams() <= bound);
                prop_assert!(watch.pending.len() <= bound);
                prop_assert_eq!(watch.by_age.len(), watch.streams());
            }
        }

        #[test]
        fn arbitrary_payloads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut watch = GapWatch::new(2);
            let _ = watch.observe(&bytes);
        }
    }
}
