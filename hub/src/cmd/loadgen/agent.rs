//! One simulated agent, without sockets: samples made on a schedule, and for
//! durable ones the outbox's rules (as `agent/src/uplink.rs` has them): keep
//! every sample until the hub acknowledges it, one batch in flight, batch
//! what accumulated, resend after a timeout (on a fresh connection, after a
//! jittered backoff) or when the hub says Retry (after the time it gives).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use proto::backoff::Backoff;
use proto::ingest::{Batch, Reply, Report, Sent};
use proto::mdp::client::{ClientCore, ClientOptions, Send, Timeout};
use proto::sample::{Quality, Sample, Value};

/// Every simulated agent's one channel: topics are `org.plantd.Metric.<agent>.load`.
pub const CHANNEL: &str = "load";

/// Samples older than this when sent are marked historical (the agent's `live_window_ms`).
const LIVE_WINDOW: Duration = Duration::from_secs(5);
/// After a refused or malformed batch, as the agent does: resending soon will not help.
const AFTER_REJECTED: Duration = Duration::from_secs(30);
/// A hub (or an impostor) cannot park an agent longer than this with Retry.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// When samples are due: every `period` from a start.
#[derive(Clone, Debug)]
pub struct Schedule {
    next: Instant,
    period: Duration,
}

impl Schedule {
    pub fn new(first: Instant, period: Duration) -> Schedule {
        Schedule { next: first, period }
    }

    /// How many samples are due by `now`, at most `max`; a schedule further
    /// behind than that (the process was stopped) skips ahead, as a sampler would.
    pub fn due(&mut self, now: Instant, max: u64) -> u64 {
        let mut n = 0;
        while self.next <= now && n < max {
            self.next += self.period;
            n += 1;
        }
        if self.next <= now {
            self.next = now + self.period;
        }
        n
    }
}

/// How simulated agents send, the same for all of them.
#[derive(Clone, Debug)]
pub struct Rules {
    pub service: String,
    /// Any answer counts as an Ack (a baseline against an echo service).
    pub any_answer_acks: bool,
    pub batch: usize,
    pub max_backlog: usize,
    pub timeout: Duration,
    pub backoff: (Duration, Duration),
    /// Latencies of batches sent before this are not recorded (connection set-up).
    pub measure_from: Instant,
}

/// A durable sample waiting in the outbox.
#[derive(Clone, Copy, Debug)]
struct Pending {
    seq: u64,
    wall_ns: i64,
    mono_ns: u64,
}

struct InFlight {
    samples: usize,
    last_seq: u64,
    sent_at: Instant,
}

/// What the hub's answer to a batch came to.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// Retired from the outbox; `latency` when it is to be recorded.
    Acked {
        samples: u64,
        duplicates: u64,
        latency: Option<Duration>,
    },
    Retry,
    Rejected {
        reason: String,
    },
}

/// One simulated agent's durable side.
pub struct SimAgent {
    pub id: String,
    pub epoch: u64,
    started: Instant,
    schedule: Schedule,
    next_seq: u64,
    outbox: VecDeque<Pending>,
    pub core: ClientCore,
    backoff: Backoff,
    not_before: Instant,
    in_flight: Option<InFlight>,
    /// Samples made, acknowledged, dropped from a full outbox; the highest seq acknowledged.
    pub made: u64,
    pub acked: u64,
    pub dropped: u64,
    pub acked_through: u64,
}

impl SimAgent {
    pub fn new(id: String, epoch: u64, started: Instant, schedule: Schedule, rules: &Rules) -> SimAgent {
        let options = ClientOptions { timeout: rules.timeout, retries: 0, ..ClientOptions::default() };
        SimAgent {
            id,
            epoch,
            started,
            schedule,
            next_seq: 1,
            outbox: VecDeque::new(),
            core: ClientCore::new(options),
            backoff: Backoff::new(rules.backoff.0, rules.backoff.1),
            not_before: started,
            in_flight: None,
            made: 0,
            acked: 0,
            dropped: 0,
            acked_through: 0,
        }
    }

    /// Makes the samples due by `now` (`wall_ns` is now on the wall clock);
    /// returns how many it made and how many old ones a full outbox dropped.
    pub fn produce(&mut self, now: Instant, wall_ns: i64, rules: &Rules) -> (u64, u64) {
        let due = self.schedule.due(now, rules.max_backlog as u64);
        let mono_ns = now.duration_since(self.started).as_nanos() as u64;
        let mut dropped = 0;
        for _ in 0..due {
            self.outbox.push_back(Pending { seq: self.next_seq, wall_ns, mono_ns });
            self.next_seq += 1;
            if self.outbox.len() > rules.max_backlog {
                // The oldest goes, as in the agent's full outbox. One already
                // on the wire is retired if acknowledged, but counted here.
                self.outbox.pop_front();
                dropped += 1;
            }
        }
        self.made += due;
        self.dropped += dropped;
        (due, dropped)
    }

    /// The next batch's frames (batch, report) when one may go now: nothing
    /// in flight, no backoff pending, samples waiting. The caller sends them
    /// after [`ClientCore::envelope`], on a fresh socket when `Send` says so.
    pub fn next_batch(&mut self, now: Instant, rules: &Rules) -> Option<(Send, [Vec<u8>; 2], usize)> {
        if self.in_flight.is_some() || now < self.not_before || self.outbox.is_empty() {
            return None;
        }
        let now_mono = now.duration_since(self.started).as_nanos() as u64;
        let samples: Vec<Sent> = self
            .outbox
            .iter()
            .take(rules.batch)
            .map(|p| Sent {
                sample: sample(self.epoch, p),
                historical: now_mono.saturating_sub(p.mono_ns) > LIVE_WINDOW.as_nanos() as u64,
            })
            .collect();
        let count = samples.len();
        let last_seq = self.outbox[count - 1].seq;
        let body = Batch { agent: self.id.clone(), samples, events: Vec::new() }.encode();
        let report = self.report(now).encode();
        self.in_flight = Some(InFlight { samples: count, last_seq, sent_at: now });
        let send = self.core.start(now, rules.service.as_bytes());
        Some((send, [body, report], count))
    }

    fn report(&self, now: Instant) -> Report {
        let oldest = self.outbox.front().map(|p| p.mono_ns);
        let now_mono = now.duration_since(self.started).as_nanos() as u64;
        Report {
            epoch: self.epoch,
            backlog: self.outbox.len() as u64,
            oldest_age_ms: oldest.map_or(0, |m| now_mono.saturating_sub(m) / 1_000_000),
            dropped: self.dropped,
            store_ok: true,
            uptime_s: now.duration_since(self.started).as_secs(),
            version: format!("loadgen {}", env!("CARGO_PKG_VERSION")),
            channels: vec![CHANNEL.to_string()],
            ..Report::default()
        }
    }

    /// The final answer to the batch in flight (its first frame).
    pub fn on_answer(&mut self, now: Instant, frame: Option<&[u8]>, rules: &Rules) -> Answer {
        let Some(sent) = self.in_flight.take() else {
            return Answer::Rejected { reason: "an answer with no batch in flight".into() };
        };
        let reply = if rules.any_answer_acks {
            Ok(Reply::Ack { accepted: sent.samples as u32, duplicates: 0 })
        } else {
            Reply::decode(frame.unwrap_or_default()).map_err(|e| format!("an undecodable answer: {e}"))
        };
        match reply {
            Ok(Reply::Ack { duplicates, .. }) => {
                self.backoff.reset();
                // Retire what the batch held; a sample a full outbox dropped meanwhile is gone already.
                let mut retired = 0;
                while self.outbox.front().is_some_and(|p| p.seq <= sent.last_seq) {
                    self.outbox.pop_front();
                    retired += 1;
                }
                self.acked += retired;
                self.acked_through = self.acked_through.max(sent.last_seq);
                let latency = (sent.sent_at >= rules.measure_from).then(|| now - sent.sent_at);
                Answer::Acked { samples: retired, duplicates: duplicates.into(), latency }
            }
            Ok(Reply::Retry { after_ms, .. }) => {
                self.not_before = now + Duration::from_millis(after_ms.into()).min(MAX_RETRY_AFTER);
                Answer::Retry
            }
            Ok(Reply::Malformed { reason } | Reply::Refused { reason }) => {
                self.not_before = now + AFTER_REJECTED;
                Answer::Rejected { reason }
            }
            Err(reason) => {
                self.not_before = now + AFTER_REJECTED;
                Answer::Rejected { reason }
            }
        }
    }

    /// Whether the batch in flight went unanswered past its deadline: then
    /// the caller drops the socket (a late answer must not be taken for the
    /// next batch's), and the batch goes again after a backoff.
    pub fn timed_out(&mut self, now: Instant) -> bool {
        if self.core.deadline().is_none_or(|d| now < d) {
            return false;
        }
        let Timeout::GiveUp { .. } = self.core.on_timeout(now) else {
            unreachable!("a client with no retries gives up at its first timeout")
        };
        self.failed(now);
        true
    }

    /// The batch could not be sent (or timed out): try again after a backoff.
    pub fn failed(&mut self, now: Instant) {
        self.core.on_failure();
        self.in_flight = None;
        self.not_before = now + self.backoff.next_delay();
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    pub fn backlog(&self) -> usize {
        self.outbox.len()
    }
}

fn sample(epoch: u64, p: &Pending) -> Sample {
    Sample {
        channel: CHANNEL.into(),
        epoch,
        seq: p.seq,
        wall_ns: p.wall_ns,
        mono_ns: p.mono_ns,
        clock_synced: true,
        value: Value::Number(p.seq as f64),
        unit: "1".into(),
        quality: Quality::Good,
    }
}

/// A best-effort sample as an agent publishes it live: (topic, JSON).
pub fn live(
    id: &str,
    epoch: u64,
    seq: u64,
    started: Instant,
    now: Instant,
    wall_ns: i64,
) -> (String, String) {
    let mono_ns = now.duration_since(started).as_nanos() as u64;
    let s = sample(epoch, &Pending { seq, wall_ns, mono_ns });
    (s.topic(id), s.to_json(id, false, false).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::mdp::{Dialect, ReplyKind};

    const MS: Duration = Duration::from_millis(1);

    fn rules(t0: Instant) -> Rules {
        Rules {
            service: proto::ingest::SERVICE.into(),
            any_answer_acks: false,
            batch: 3,
            max_backlog: 5,
            timeout: 100 * MS,
            backoff: (10 * MS, 50 * MS),
            measure_from: t0,
        }
    }

    fn agent(t0: Instant, r: &Rules) -> SimAgent {
        SimAgent::new("a-1".into(), 9, t0, Schedule::new(t0, 10 * MS), r)
    }

    fn batch_of(frames: &[Vec<u8>; 2]) -> Batch {
        Batch::decode(&frames[0]).unwrap()
    }

    fn ack(n: u32) -> Vec<u8> {
        Reply::Ack { accepted: n, duplicates: 0 }.encode()
    }

    /// `frame` as the broker delivers a reply, through the client's core as the shell does.
    fn answer(a: &mut SimAgent, now: Instant, frame: &[u8], r: &Rules) -> Answer {
        let reply = proto::mdp::client_reply(Dialect::Rfc7, ReplyKind::Final, Some(r.service.as_bytes()));
        let frames = reply.unwrap().with_body(&[frame]);
        let part = a.core.on_message(now, &frames).expect("the answer to the batch in flight");
        let first = part.body.first().map(|f| &f[..]);
        a.on_answer(now, first, r)
    }

    #[test]
    fn one_batch_in_flight_of_what_accumulated_retired_on_ack() {
        let t0 = Instant::now();
        let r = rules(t0);
        let mut a = agent(t0, &r);
        assert_eq!(a.produce(t0 + 35 * MS, 0, &r), (4, 0), "due at 0, 10, 20 and 30 ms");
        let (send, frames, n) = a.next_batch(t0 + 35 * MS, &r).expect("a batch goes");
        assert_eq!((send, n), (Send::FreshSocket, 3), "at most `batch` samples");
        let batch = batch_of(&frames);
        assert_eq!(batch.agent, "a-1");
        assert_eq!(batch.samples.iter().map(|s| s.sample.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(Report::decode(&frames[1]).unwrap().backlog, 4);
        assert!(a.next_batch(t0 + 36 * MS, &r).is_none(), "one in flight");
        let got = answer(&mut a, t0 + 40 * MS, &ack(3), &r);
        assert_eq!(got, Answer::Acked { samples: 3, duplicates: 0, latency: Some(5 * MS) });
        assert_eq!((a.acked, a.acked_through, a.backlog()), (3, 3, 1));
        let (send, frames, _) = a.next_batch(t0 + 40 * MS, &r).unwrap();
        assert_eq!(send, Send::SameSocket);
        assert_eq!(batch_of(&frames).samples[0].sample.seq, 4);
    }

    #[test]
    fn a_timeout_resends_the_same_samples_on_a_fresh_socket_after_backoff() {
        let t0 = Instant::now();
        let r = rules(t0);
        let mut a = agent(t0, &r);
        a.produce(t0, 0, &r);
        a.next_batch(t0, &r).unwrap();
        assert!(!a.timed_out(t0 + 99 * MS));
        assert!(a.timed_out(t0 + 100 * MS));
        assert!(!a.in_flight());
        assert!(a.next_batch(t0 + 100 * MS, &r).is_none(), "backing off");
        let (send, frames, _) = a.next_batch(t0 + 200 * MS, &r).expect("after the backoff");
        assert_eq!(send, Send::FreshSocket);
        assert_eq!(batch_of(&frames).samples[0].sample.seq, 1, "nothing was retired");
    }

    #[test]
    fn retry_waits_as_told_and_rejection_waits_long() {
        let t0 = Instant::now();
        let r = rules(t0);
        let mut a = agent(t0, &r);
        a.produce(t0, 0, &r);
        a.next_batch(t0, &r).unwrap();
        let retry = Reply::Retry { reason: "no subscriber".into(), after_ms: 500 }.encode();
        assert_eq!(answer(&mut a, t0, &retry, &r), Answer::Retry);
        assert!(a.next_batch(t0 + 499 * MS, &r).is_none());
        let (send, _, _) = a.next_batch(t0 + 500 * MS, &r).expect("retried");
        assert_eq!(send, Send::SameSocket, "the hub answered: the connection is fine");
        let refused = Reply::Refused { reason: "not yours".into() }.encode();
        let t1 = t0 + 500 * MS;
        assert_eq!(answer(&mut a, t1, &refused, &r), Answer::Rejected { reason: "not yours".into() });
        assert!(a.next_batch(t1 + AFTER_REJECTED - MS, &r).is_none());
        let t2 = t1 + AFTER_REJECTED;
        a.next_batch(t2, &r).expect("sent again, much later");
        let junk = answer(&mut a, t2, b"\x09junk", &r);
        assert!(matches!(&junk, Answer::Rejected { reason } if reason.contains("undecodable")), "{junk:?}");
        assert_eq!((a.backlog(), a.acked), (1, 0), "samples are kept whatever the answer");
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_and_counts_it() {
        let t0 = Instant::now();
        let r = rules(t0);
        let mut a = agent(t0, &r);
        assert_eq!(a.produce(t0 + 65 * MS, 0, &r), (5, 0), "at most max_backlog at once");
        // The schedule skipped ahead to 75 ms: due at 75 and 85.
        assert_eq!(a.produce(t0 + 90 * MS, 0, &r), (2, 2));
        assert_eq!((a.made, a.dropped, a.backlog()), (7, 2, 5));
        let (_, frames, _) = a.next_batch(t0 + 90 * MS, &r).unwrap();
        assert_eq!(batch_of(&frames).samples[0].sample.seq, 3);
    }

    #[test]
    fn latencies_before_measure_from_are_not_recorded() {
        let t0 = Instant::now();
        let mut r = rules(t0);
        r.measure_from = t0 + 10 * MS;
        let mut a = agent(t0, &r);
        a.produce(t0, 0, &r);
        a.next_batch(t0, &r).unwrap();
        let got = answer(&mut a, t0 + 20 * MS, &ack(1), &r);
        assert_eq!(got, Answer::Acked { samples: 1, duplicates: 0, latency: None });
    }

    #[test]
    fn a_late_schedule_skips_ahead() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, 10 * MS);
        assert_eq!(s.due(t0 + 1000 * MS, 5), 5);
        assert_eq!(s.due(t0 + 1000 * MS, 5), 0, "the rest was skipped");
        assert_eq!(s.due(t0 + 1010 * MS, 5), 1);
    }
}
