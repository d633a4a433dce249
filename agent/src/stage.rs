//! A channel's readings on their way to the outbox: aggregated per window
//! and reported by exception when its config says so (the decisions are the
//! `edge` crate's; here they are applied to samples).

use std::time::Duration;

use boards::ChannelConfig;
use edge::{Aggregator, Closed, ReportFilter, Stat, Verdict};
use proto::sample::Sample;

/// One channel's stage: samples in, samples to send out.
pub struct Stage {
    report: Option<ReportFilter>,
    aggregate: Option<Aggregator>,
    /// The last reading held back by the report filter: sent before the
    /// change that ends a flat run.
    held: Option<Sample>,
}

impl Stage {
    pub fn new(channel: &ChannelConfig) -> Self {
        Stage {
            report: channel.report.clone().map(ReportFilter::new),
            aggregate: channel.aggregate.clone().map(Aggregator::new),
            held: None,
        }
    }

    /// What to send for `sample` (its seq unassigned): closed windows'
    /// aggregates first, then the reading and the one held before it.
    pub fn offer(&mut self, sample: Sample, out: &mut Vec<Sample>) {
        if let Some(a) = &mut self.aggregate {
            let closed =
                a.offer(&sample.value, sample.quality, sample.wall_ns, sample.mono_ns, sample.clock_synced);
            out.extend(closed.map(|c| derived(&sample, c)).into_iter().flatten());
            if !a.keep_raw() {
                return;
            }
        }
        let Some(filter) = &mut self.report else {
            out.push(sample);
            return;
        };
        match filter.offer(&sample.value, sample.quality, Duration::from_nanos(sample.mono_ns)) {
            Verdict::Hold => self.held = Some(sample),
            Verdict::Send => {
                self.held = None;
                out.push(sample);
            }
            Verdict::SendHeldThenThis => {
                out.extend(self.held.take());
                out.push(sample);
            }
        }
    }

    /// A period went by without a reading (the read failed): a window that
    /// ended meanwhile still closes. `like` supplies the channel, unit and epoch.
    pub fn tick(&mut self, like: &Sample, out: &mut Vec<Sample>) {
        if let Some(a) = &mut self.aggregate {
            if let Some(c) = a.tick(like.wall_ns, like.mono_ns, like.clock_synced) {
                out.extend(derived(like, c));
            }
        }
    }
}

/// A closed window's statistics as samples of `<channel>.<stat>`, stamped
/// at the window's end (`like` is the reading that closed it, or now).
fn derived(like: &Sample, closed: Closed) -> Vec<Sample> {
    let (now_wall, now_mono) = (like.wall_ns, like.mono_ns);
    let (wall_ns, mono_ns) = if closed.on_wall_clock {
        let ago = now_wall.saturating_sub(closed.end_ns).max(0) as u64;
        (closed.end_ns, now_mono.saturating_sub(ago))
    } else {
        let end = closed.end_ns as u64;
        (now_wall - now_mono.saturating_sub(end) as i64, end)
    };
    closed
        .stats
        .into_iter()
        .map(|(stat, value)| Sample {
            channel: format!("{}.{}", like.channel, stat.name()),
            epoch: like.epoch,
            seq: 0,
            wall_ns,
            mono_ns,
            clock_synced: closed.on_wall_clock,
            value,
            unit: if stat == Stat::Count { String::new() } else { like.unit.clone() },
            quality: closed.quality,
        })
        .collect()
}
