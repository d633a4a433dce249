//! The agent's uplink decisions, without I/O: which outbox to send from
//! next, when to wait (the circuit breaker, replay pacing, a small batch
//! lingering, a hub that asked to retry), and what to do with the hub's
//! answer. The agent's shell (`agent/src/uplink.rs`) reads the outboxes,
//! sends, and sleeps as told; here time and the outboxes' sizes come in as
//! arguments, so every rule is tested without a hub or a clock.
//!
//! The rules:
//! - Alarm events go first, unpaced (they are few): an alarm raised during
//!   an outage reaches the hub ahead of the telemetry backlog. While the hub
//!   cannot take events (it asks to retry, rejects them, or predates them)
//!   they wait; the samples wait with them for [`EVENTS_AHEAD`] (a hub just
//!   back may hear from its metric subscribers before its event subscribers
//!   return), then are sent meanwhile, so alarms never hold telemetry back
//!   for long.
//! - Calls go through a [`Breaker`]: a dead hub costs one call per backoff.
//! - Samples are paced at `replay_rate` a second (bursts of one second's
//!   worth), so a long backlog does not swamp the link; a batch smaller than
//!   `batch_records` lingers once for more.
//! - With nothing to send, an empty batch carries the agent's report every
//!   `report_every`, so the hub knows the agent is there.
//! - A hub's retry-after is obeyed up to a minute: a hub (or an impostor)
//!   cannot park the uplink.

use std::time::{Duration, Instant};

use crate::breaker::Breaker;
use crate::rate::TokenBucket;

/// The uplink's settings (the agent's `[uplink]`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// A batch of fewer samples lingers once (for `linger`) to gather more.
    pub batch_records: usize,
    pub linger: Duration,
    /// Samples a second while replaying.
    pub replay_rate: f64,
    /// With nothing to send, a report this often.
    pub report_every: Duration,
    pub breaker_failures: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// Which outbox a batch comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Events,
    Samples,
}

/// What the shell does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing is due: wait for a wake-up (something appended), at most this long.
    Idle(Duration),
    /// Wait this long, then ask again (the breaker is open, or a small batch lingers).
    Wait(Duration),
    /// Send a batch from this lane; for samples, it may be empty (a report only).
    Send(Lane),
}

/// How the hub answered a batch (or did not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Acknowledged. `complete` is false when the hub counted fewer than
    /// were sent: a hub from before alarm events read none of them.
    Ack { complete: bool },
    /// The hub is there but takes nothing now (no subscriber, storage trouble).
    Retry { after: Duration },
    /// Malformed, or refused (with security, another identity's batch).
    Rejected,
    /// No answer: the hub is away, or the link is.
    Unreachable,
}

/// What to do with the batch just answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The hub has it: retire it from its outbox.
    Retire,
    /// Keep it, and wait this long before the next step (zero: go on).
    Keep(Duration),
}

/// How long a rejected batch waits: resending soon will not help, but an
/// upgraded or reconfigured hub may take it.
pub const REJECTED_WAIT: Duration = Duration::from_secs(30);
/// How long events wait when the hub predates them.
pub const NO_EVENTS_WAIT: Duration = Duration::from_secs(300);
/// How long samples wait behind events the hub cannot take yet.
pub const EVENTS_AHEAD: Duration = Duration::from_secs(5);
/// The longest retry-after obeyed.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How long an idle uplink waits for a wake-up before looking again.
const IDLE: Duration = Duration::from_secs(1);

pub struct Uplink {
    settings: Settings,
    breaker: Breaker,
    pace: TokenBucket,
    /// When the agent's report last went with a batch.
    reported: Option<Instant>,
    /// Since when a small batch of samples lingers.
    lingering: Option<Instant>,
    /// Until when events wait (the hub cannot take them now).
    events_wait: Option<Instant>,
    /// Since when the events in the outbox have been refused (samples wait
    /// behind them for [`EVENTS_AHEAD`] from then).
    events_refused: Option<Instant>,
}

impl Uplink {
    pub fn new(settings: Settings, now: Instant) -> Uplink {
        let breaker = Breaker::new(settings.breaker_failures, settings.backoff_min, settings.backoff_max);
        let rate = settings.replay_rate.max(1.0);
        let pace = TokenBucket::new(rate, rate, now);
        Uplink {
            settings,
            breaker,
            pace,
            reported: None,
            lingering: None,
            events_wait: None,
            events_refused: None,
        }
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// What to do now, with `events` and `samples` waiting in the outboxes.
    pub fn next(&mut self, now: Instant, events: u64, samples: u64) -> Next {
        if events == 0 {
            self.events_refused = None;
        }
        let events_due = events > 0 && self.events_wait.is_none_or(|t| now >= t);
        if let (false, Some(since), Some(until)) = (events_due, self.events_refused, self.events_wait) {
            let ahead = since + EVENTS_AHEAD;
            if events > 0 && now < ahead {
                return Next::Wait(until.min(ahead).saturating_duration_since(now));
            }
        }
        let report_due = self.reported.is_none_or(|t| now >= t + self.settings.report_every);
        if !events_due && samples == 0 && !report_due {
            self.lingering = None;
            return Next::Idle(IDLE);
        }
        if !events_due && samples > 0 && samples < self.settings.batch_records as u64 {
            let since = *self.lingering.get_or_insert(now);
            let left = (since + self.settings.linger).saturating_duration_since(now);
            if !left.is_zero() {
                return Next::Wait(left);
            }
        }
        if !self.breaker.allow(now) {
            return Next::Wait(self.breaker.wait(now));
        }
        self.lingering = None;
        Next::Send(if events_due { Lane::Events } else { Lane::Samples })
    }

    /// How long to wait before sending `samples` samples (replay pacing).
    pub fn pace(&mut self, samples: usize, now: Instant) -> Duration {
        self.pace.take(samples as f64, now)
    }

    /// A batch went with the agent's report.
    pub fn reported(&mut self, now: Instant) {
        self.reported = Some(now);
    }

    /// The hub's answer to a batch from `lane`.
    pub fn answer(&mut self, lane: Lane, answer: Answer, now: Instant) -> Verdict {
        match answer {
            Answer::Ack { .. } | Answer::Retry { .. } => self.breaker.success(),
            Answer::Unreachable => self.breaker.failure(now),
            Answer::Rejected => {}
        }
        if lane == Lane::Events {
            self.events_refused = match answer {
                Answer::Ack { complete: true } | Answer::Unreachable => None,
                _ => self.events_refused.or(Some(now)),
            };
        }
        let wait = match answer {
            Answer::Ack { complete: true } => return Verdict::Retire,
            // Only an events batch can be acknowledged incompletely.
            Answer::Ack { complete: false } => NO_EVENTS_WAIT,
            Answer::Retry { after } => after.min(MAX_RETRY_AFTER),
            Answer::Rejected => REJECTED_WAIT,
            Answer::Unreachable => self.breaker.wait(now),
        };
        match lane {
            // Events wait on their own; the samples go on meanwhile.
            Lane::Events => {
                self.events_wait = Some(now + wait.max(Duration::from_millis(100)));
                Verdict::Keep(Duration::ZERO)
            }
            Lane::Samples => Verdict::Keep(wait),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn uplink(t0: Instant) -> Uplink {
        let settings = Settings {
            batch_records: 100,
            linger: 50 * MS,
            replay_rate: 1000.0,
            report_every: 10_000 * MS,
            breaker_failures: 2,
            backoff_min: 100 * MS,
            backoff_max: 1000 * MS,
        };
        Uplink::new(settings, t0)
    }

    #[test]
    fn events_go_first_and_wait_aside_while_the_hub_cannot_take_them() {
        let t0 = Instant::now();
        let mut u = uplink(t0);
        assert_eq!(u.next(t0, 1, 500), Next::Send(Lane::Events));
        let (after, s) = (2000 * MS, Duration::from_secs(1));
        assert_eq!(u.answer(Lane::Events, Answer::Retry { after }, t0), Verdict::Keep(Duration::ZERO));
        assert_eq!(u.next(t0, 1, 500), Next::Wait(after), "the samples wait behind the events a while");
        assert_eq!(u.next(t0 + after, 1, 500), Next::Send(Lane::Events), "then the events again");
        u.answer(Lane::Events, Answer::Retry { after }, t0 + after);
        assert_eq!(u.next(t0 + 4 * s, 1, 500), Next::Send(Lane::Events));
        u.answer(Lane::Events, Answer::Retry { after }, t0 + 4 * s);
        assert_eq!(u.next(t0 + 4 * s, 1, 500), Next::Wait(s), "until EVENTS_AHEAD from the first refusal");
        assert_eq!(u.next(t0 + EVENTS_AHEAD, 1, 500), Next::Send(Lane::Samples), "then samples meanwhile");
        assert_eq!(u.answer(Lane::Events, Answer::Ack { complete: true }, t0 + 6 * s), Verdict::Retire);
        // A hub that predates events: they wait five minutes, the samples flow after a while.
        let t1 = t0 + 10 * s;
        assert_eq!(u.next(t1, 1, 500), Next::Send(Lane::Events));
        assert_eq!(
            u.answer(Lane::Events, Answer::Ack { complete: false }, t1),
            Verdict::Keep(Duration::ZERO)
        );
        assert_eq!(u.next(t1, 1, 500), Next::Wait(EVENTS_AHEAD));
        assert_eq!(u.next(t1 + EVENTS_AHEAD, 1, 500), Next::Send(Lane::Samples));
        assert_eq!(u.next(t1 + NO_EVENTS_WAIT - MS, 1, 500), Next::Send(Lane::Samples));
        assert_eq!(u.next(t1 + NO_EVENTS_WAIT, 1, 500), Next::Send(Lane::Events));
    }

    #[test]
    fn idle_reports_linger_and_pacing() {
        let t0 = Instant::now();
        let mut u = uplink(t0);
        assert_eq!(u.next(t0, 0, 0), Next::Send(Lane::Samples), "the first report is due at once");
        u.reported(t0);
        assert_eq!(u.next(t0 + MS, 0, 0), Next::Idle(IDLE));
        assert_eq!(u.next(t0 + 10_000 * MS, 0, 0), Next::Send(Lane::Samples), "a report every 10 s");
        u.reported(t0 + 10_000 * MS);
        let t1 = t0 + 10_001 * MS;
        assert_eq!(u.next(t1, 0, 3), Next::Wait(50 * MS), "a small batch lingers");
        assert_eq!(u.next(t1 + 20 * MS, 0, 3), Next::Wait(30 * MS), "once, not from scratch");
        assert_eq!(u.next(t1 + 50 * MS, 0, 3), Next::Send(Lane::Samples));
        assert_eq!(u.next(t1 + 50 * MS, 0, 100), Next::Send(Lane::Samples), "a full batch goes at once");
        // 1000 a second, a second's burst: the next 1000 go at once, then they wait.
        assert_eq!(u.pace(1000, t1), Duration::ZERO);
        assert_eq!(u.pace(500, t1), 500 * MS);
    }

    #[test]
    fn a_dead_hub_opens_the_breaker_and_retry_after_is_capped() {
        let t0 = Instant::now();
        let mut u = uplink(t0);
        assert_eq!(u.answer(Lane::Samples, Answer::Unreachable, t0), Verdict::Keep(Duration::ZERO));
        let Verdict::Keep(wait) = u.answer(Lane::Samples, Answer::Unreachable, t0) else { panic!() };
        assert!(!wait.is_zero() && wait <= 1000 * MS, "open after two failures: {wait:?}");
        assert!(matches!(u.next(t0, 0, 500), Next::Wait(w) if w == wait));
        assert_eq!(u.next(t0 + wait, 0, 500), Next::Send(Lane::Samples), "half-open: one trial");
        let an_hour = Duration::from_secs(3600);
        assert_eq!(
            u.answer(Lane::Samples, Answer::Retry { after: an_hour }, t0),
            Verdict::Keep(MAX_RETRY_AFTER)
        );
        assert_eq!(u.answer(Lane::Samples, Answer::Rejected, t0), Verdict::Keep(REJECTED_WAIT));
        assert_eq!(u.answer(Lane::Samples, Answer::Ack { complete: true }, t0), Verdict::Retire);
    }
}
