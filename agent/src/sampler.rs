//! One task per channel: read the driver every period, stamp the sample, pass
//! it through the channel's edge stage (aggregation, report by exception),
//! and hand on what comes out: durable samples to the outbox (then wake the uplink),
//! best-effort ones to the live publisher. Sampling never waits on the
//! network: the outbox is local and the live queue drops when full.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boards::{ChannelConfig, Delivery, Driver};
use proto::sample::{Quality, Sample};
use smol::channel::Sender;
use smol::stream::StreamExt;

use crate::clock;
use crate::stage::Stage;
use crate::status::Shared;

pub type SharedDriver = Arc<Mutex<Box<dyn Driver>>>;

/// Sequence counters: durable and best-effort samples are counted separately
/// so the durable sequence has no gaps but drops.
#[derive(Default)]
pub struct Sequences {
    pub durable: AtomicU64,
    pub best_effort: AtomicU64,
}

pub struct Sinks {
    pub live: Sender<Sample>,
    pub wake_uplink: Sender<()>,
}

pub async fn run(
    shared: Arc<Shared>,
    channel: ChannelConfig,
    driver: SharedDriver,
    seqs: Arc<Sequences>,
    sinks: Arc<Sinks>,
) {
    // Channels of one period tick together, on multiples of it since the
    // agent started: a Modbus link then sees their reads at once and merges them.
    let period = Duration::from_millis(channel.period_ms);
    let mut ticks = smol::Timer::interval_at(shared.clock.next_multiple(period), period);
    let mut stage = Stage::new(&channel);
    let mut out = Vec::new();
    loop {
        ticks.next().await;
        // A read may block (a DS18B20's conversion takes ~750 ms in the
        // kernel): on a blocking-pool thread, so the executor's other tasks
        // (other channels, the uplink) carry on meanwhile.
        let (driver, t) = (driver.clone(), shared.clock.elapsed());
        let reading = smol::unblock(move || read(&driver, t)).await;
        match record(&shared, &channel, reading) {
            Some(sample) => {
                // Alarms judge every reading, before report by exception thins them.
                if shared.alarms.offer(&sample) {
                    let _ = sinks.wake_uplink.try_send(());
                }
                stage.offer(sample, &mut out)
            }
            None => stage.tick(&stamp(&shared, &channel, boards::Value::Bool(false), Quality::Bad), &mut out),
        }
        if !out.is_empty() {
            shared.channels().entry(channel.name.clone()).or_default().reported +=
                out.iter().filter(|s| s.channel == channel.name).count() as u64;
        }
        for mut sample in out.drain(..) {
            let counter = match channel.delivery {
                Delivery::Durable => &seqs.durable,
                Delivery::BestEffort => &seqs.best_effort,
            };
            sample.seq = counter.fetch_add(1, Relaxed) + 1;
            deliver(&shared, &channel, sample, &sinks);
        }
    }
}

/// A sample of `channel` taken now, its seq assigned when it is sent.
fn stamp(shared: &Shared, channel: &ChannelConfig, value: boards::Value, quality: Quality) -> Sample {
    Sample {
        channel: channel.name.clone(),
        epoch: shared.epoch,
        seq: 0,
        wall_ns: clock::wall_ns(),
        mono_ns: shared.clock.mono_ns(),
        clock_synced: clock::synced(),
        value,
        unit: channel.unit().to_string(),
        quality,
    }
}

fn read(driver: &SharedDriver, t: Duration) -> Result<boards::Value, boards::DriverError> {
    driver.lock().unwrap_or_else(|e| e.into_inner()).read(t)
}

/// Records a reading in the status and makes it a sample. A failed read
/// produces no sample (the fault shows in status until the next good read),
/// except a bad one: the instrument or its link failed, and consumers learn
/// it from a sample of quality `bad`, with the value read if there was one,
/// else once with the last good value when the channel turns bad.
fn record(
    shared: &Shared,
    channel: &ChannelConfig,
    reading: Result<boards::Value, boards::DriverError>,
) -> Option<Sample> {
    let mut channels = shared.channels();
    let status = channels.entry(channel.name.clone()).or_default();
    let (value, quality) = match reading {
        Ok(value) => {
            if status.fault.take().is_some() {
                log::info!("channel {}: reading again", channel.name);
            }
            status.samples += 1;
            (value, Quality::Good)
        }
        Err(e) => {
            let message = e.to_string();
            if status.fault.as_deref() != Some(&message) {
                log::warn!("channel {}: {message}", channel.name);
            }
            status.fault = Some(message);
            status.faults += 1;
            let boards::DriverError::Bad { value, .. } = e else { return None };
            let turned_bad = status.quality != Some(Quality::Bad);
            status.quality = Some(Quality::Bad);
            match (value, turned_bad) {
                (Some(value), _) => (value, Quality::Bad),
                (None, true) => (status.last.clone()?, Quality::Bad),
                (None, false) => return None,
            }
        }
    };
    status.quality = Some(quality);
    status.last = Some(value.clone());
    drop(channels);
    Some(stamp(shared, channel, value, quality))
}

fn deliver(shared: &Shared, channel: &ChannelConfig, sample: Sample, sinks: &Sinks) {
    match channel.delivery {
        // A failed append is counted and reported by the outbox itself.
        Delivery::Durable => {
            if shared.outbox.append(&sample).is_ok() {
                let _ = sinks.wake_uplink.try_send(());
            }
        }
        Delivery::BestEffort => {
            if sinks.live.try_send(sample).is_err() {
                shared.live_dropped.fetch_add(1, Relaxed);
            }
        }
    }
}
