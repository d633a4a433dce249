//! Best-effort telemetry, published live on the hub's metric bus. A PUB
//! socket never blocks: with no hub or no subscriber the samples are dropped,
//! which is what best-effort means.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use proto::bus::Framing;
use proto::sample::Sample;
use smol::channel::Receiver;
use transport::bus::publish_on;
use transport::Endpoint;

use crate::status::Shared;

pub async fn run(
    shared: Arc<Shared>,
    ctx: zmq::Context,
    bus: Endpoint,
    samples: Receiver<Sample>,
) -> zmq::Result<()> {
    let socket = transport::socket::connect(&ctx, zmq::PUB, &bus, |s| {
        s.set_sndhwm(1000)?;
        s.set_linger(0)
    })?;
    let mut json = Vec::new();
    while let Ok(sample) = samples.recv().await {
        let topic = sample.topic(&shared.id);
        json.clear();
        sample.write_json(&shared.id, false, false, &mut json);
        if publish_on(&socket, Framing::TwoFrame, topic.as_bytes(), &json).is_ok() {
            shared.live_published.fetch_add(1, Relaxed);
        } else {
            shared.live_dropped.fetch_add(1, Relaxed);
        }
    }
    Ok(())
}
