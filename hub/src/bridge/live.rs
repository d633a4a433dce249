//! Best-effort export: live telemetry, state changes and the other
//! configured topics, from the buses' in-process taps, published to NATS
//! without waiting for anything. A queue of `live_queue` messages sits
//! between the taps and NATS: when it is full (NATS slow or down) messages
//! are dropped and counted. Durable samples are not exported here (they are
//! on the bus too, marked `"durable": true`): the journal exports those.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;
use serde_json::Value;

use super::{subjects, BridgeStatus, NatsConfig};

/// One bus message on its way to NATS.
struct Outgoing {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
}

pub async fn run(
    client: &async_nats::Client,
    config: &NatsConfig,
    ctx: &zmq::Context,
    taps: &[String],
    status: Arc<BridgeStatus>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Outgoing>(config.live_queue);
    // A libzmq poll loop on a blocking thread; it ends when the queue's
    // receiver does (the bridge stopping drops this future, and `rx` with it).
    let reader = {
        let (ctx, taps, prefixes, site) =
            (ctx.clone(), taps.to_vec(), config.export.clone(), config.site.clone());
        let status = status.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = read_taps(&ctx, &taps, &prefixes, &site, &tx, &status) {
                status.failed(format!("reading the buses for export: {e}"));
            }
        })
    };
    while let Some(out) = rx.recv().await {
        match client.publish_with_headers(out.subject, out.headers, out.payload).await {
            Ok(()) => status.live_exported.fetch_add(1, Relaxed),
            Err(_) => status.live_dropped.fetch_add(1, Relaxed),
        };
    }
    let _ = reader.await;
}

fn read_taps(
    ctx: &zmq::Context,
    taps: &[String],
    prefixes: &[String],
    site: &str,
    tx: &tokio::sync::mpsc::Sender<Outgoing>,
    status: &BridgeStatus,
) -> zmq::Result<()> {
    let mut sockets = Vec::new();
    for tap in taps {
        let socket = ctx.socket(zmq::SUB)?;
        socket.set_rcvhwm(10_000)?;
        socket.connect(tap)?;
        for prefix in prefixes {
            socket.set_subscribe(prefix.as_bytes())?;
        }
        sockets.push(socket);
    }
    while !tx.is_closed() {
        let mut items: Vec<zmq::PollItem<'_>> = sockets.iter().map(|s| s.as_poll_item(zmq::POLLIN)).collect();
        zmq::poll(&mut items, 250)?;
        for socket in &sockets {
            while let Ok(frames) = socket.recv_multipart(zmq::DONTWAIT) {
                let Some(out) = outgoing(site, &frames) else {
                    continue;
                };
                if tx.try_send(out).is_err() {
                    status.live_dropped.fetch_add(1, Relaxed);
                }
            }
        }
    }
    Ok(())
}

/// The NATS message for one bus message, unless it is a durable sample (the
/// journal exports those) or makes no subject.
fn outgoing(site: &str, frames: &[Vec<u8>]) -> Option<Outgoing> {
    let (topic, payload) = proto::bus::split(frames)?;
    let json: Option<Value> = serde_json::from_slice(payload).ok();
    if json.as_ref().is_some_and(|j| j["durable"] == true) {
        return None;
    }
    let subject = subjects::subject(site, std::str::from_utf8(topic).ok()?)?;
    let mut headers = HeaderMap::new();
    headers.insert("Plantd-Site", site);
    if let Some(j) = &json {
        for (field, header) in [("agent", "Plantd-Agent"), ("epoch", "Plantd-Epoch"), ("seq", "Plantd-Seq")] {
            match &j[field] {
                Value::String(s) => headers.insert(header, s.as_str()),
                Value::Number(n) => headers.insert(header, n.to_string().as_str()),
                _ => {}
            }
        }
    }
    Some(Outgoing { subject, headers, payload: Bytes::copy_from_slice(payload) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_samples_are_left_to_the_journal() {
        let topic = b"org.plantd.Metric.pump-1.t".to_vec();
        let live = br#"{"agent":"pump-1","epoch":7,"seq":3,"durable":false,"value":1.5}"#.to_vec();
        let out = outgoing("plant-a", &[topic.clone(), live]).expect("live samples are exported");
        assert_eq!(out.subject, "plantd.plant-a.metric.pump-1.t");
        assert_eq!(out.headers.get("Plantd-Seq").map(|v| v.as_str()), Some("3"));
        let durable = br#"{"agent":"pump-1","epoch":7,"seq":4,"durable":true}"#.to_vec();
        assert!(outgoing("plant-a", &[topic, durable]).is_none());
        let state = outgoing("plant-a", &[b"org.plantd.State.plant".to_vec(), b"{}".to_vec()]).unwrap();
        assert_eq!(state.subject, "plantd.plant-a.state.plant");
    }
}
