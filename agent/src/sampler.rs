//! One task per channel: read the driver every period, stamp the sample, and
//! hand it on: durable samples to the outbox (then wake the uplink),
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
    let mut ticks = smol::Timer::interval(Duration::from_millis(channel.period_ms));
    loop {
        ticks.next().await;
        // A read may block (a DS18B20's conversion takes ~750 ms in the
        // kernel): on a blocking-pool thread, so the executor's other tasks
        // (other channels, the uplink) carry on meanwhile.
        let (driver, t) = (driver.clone(), shared.clock.elapsed());
        let reading = smol::unblock(move || read(&driver, t)).await;
        if let Some(sample) = record(&shared, &channel, reading, &seqs) {
            deliver(&shared, &channel, sample, &sinks);
        }
    }
}

fn read(driver: &SharedDriver, t: Duration) -> Result<boards::Value, boards::DriverError> {
    driver.lock().unwrap_or_else(|e| e.into_inner()).read(t)
}

/// Records a reading in the status and makes it a sample. A failed read
/// produces no sample: the fault shows in status until the next good read.
fn record(
    shared: &Shared,
    channel: &ChannelConfig,
    reading: Result<boards::Value, boards::DriverError>,
    seqs: &Sequences,
) -> Option<Sample> {
    let mut channels = shared.channels();
    let status = channels.entry(channel.name.clone()).or_default();
    let value = match reading {
        Ok(value) => value,
        Err(e) => {
            let message = e.to_string();
            if status.fault.as_deref() != Some(&message) {
                log::warn!("channel {}: {message}", channel.name);
            }
            status.fault = Some(message);
            status.faults += 1;
            return None;
        }
    };
    if status.fault.take().is_some() {
        log::info!("channel {}: reading again", channel.name);
    }
    status.samples += 1;
    status.last = Some(value.clone());
    let counter = match channel.delivery {
        Delivery::Durable => &seqs.durable,
        Delivery::BestEffort => &seqs.best_effort,
    };
    Some(Sample {
        channel: channel.name.clone(),
        epoch: shared.epoch,
        seq: counter.fetch_add(1, Relaxed) + 1,
        wall_ns: clock::wall_ns(),
        mono_ns: shared.clock.mono_ns(),
        clock_synced: clock::synced(),
        value,
        unit: channel.unit().to_string(),
        quality: Quality::Good,
    })
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
