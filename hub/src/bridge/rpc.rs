//! Import: central systems call this site's services through NATS.
//!
//! A request on `plantd.<site>.rpc.<service>` becomes an MDP request to
//! `<service>` through the hub's broker, and its reply the NATS reply. The
//! request's body is one frame, or, with the header `Plantd-Frames: json`, a
//! JSON array of strings, one per frame (`["write", "pump_relay", "true"]`);
//! a reply of several frames comes back the same way. Every reply carries
//! `Plantd-Status`:
//!
//! | status | when |
//! | --- | --- |
//! | 200 | the service answered |
//! | 400 | no service name, or a body that is not what the header says |
//! | 403 | with security, `rpc_identity` may not make this call |
//! | 429 | `rpc_max_in_flight` requests are open |
//! | 504 | no reply within `rpc_timeout_ms` (a service with no worker, an agent gone) |
//! | 502 | the broker could not be reached |

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{HeaderMap, Message};
use bytes::Bytes;
use smol::stream::StreamExt;
use transport::{Client, ClientError, ClientOptions, Endpoint};

use super::{subjects, BridgeStatus, NatsConfig};
use crate::broker::BROKER_INPROC;
use crate::security::{Kind, Security};

pub async fn run(
    client: &async_nats::Client,
    config: &NatsConfig,
    ctx: &zmq::Context,
    security: Option<Arc<Security>>,
    status: Arc<BridgeStatus>,
) {
    if !config.rpc {
        return std::future::pending().await;
    }
    let prefix = subjects::rpc_prefix(&config.site);
    let mut requests = loop {
        match client.subscribe(format!("{prefix}>")).await {
            Ok(subscriber) => break subscriber,
            Err(e) => {
                status.failed(format!("cannot subscribe to {prefix}>: {e}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let open = Arc::new(tokio::sync::Semaphore::new(config.rpc_max_in_flight));
    let timeout = Duration::from_millis(config.rpc_timeout_ms);
    while let Some(message) = requests.next().await {
        status.rpc_requests.fetch_add(1, Relaxed);
        let Some(reply_to) = message.reply.clone() else { continue };
        let answer = |code: &str, body: Bytes| (reply_to.clone(), code.to_string(), body, false);
        let request = match parse(&prefix, &message) {
            Ok(request) => request,
            Err(why) => {
                respond(client, answer("400", Bytes::from(why))).await;
                continue;
            }
        };
        if let Err(why) = authorise(security.as_deref(), config, &request) {
            status.rpc_denied.fetch_add(1, Relaxed);
            respond(client, answer("403", Bytes::from(why))).await;
            continue;
        }
        let Ok(permit) = open.clone().try_acquire_owned() else {
            status.rpc_busy.fetch_add(1, Relaxed);
            let why = format!("{} requests are open: try again later", config.rpc_max_in_flight);
            respond(client, answer("429", Bytes::from(why))).await;
            continue;
        };
        let (client, ctx, status) = (client.clone(), ctx.clone(), status.clone());
        tokio::spawn(async move {
            let service = request.service.clone();
            let called = tokio::task::spawn_blocking(move || call(&ctx, &request, timeout)).await;
            let reply = match called {
                Ok(Ok(frames)) => {
                    let (body, json) = encode(frames);
                    (reply_to, "200".to_string(), body, json)
                }
                Ok(Err(ClientError::Timeout { .. })) => {
                    status.rpc_timeouts.fetch_add(1, Relaxed);
                    let why = format!("no reply from {service} within {} ms", timeout.as_millis());
                    (reply_to, "504".to_string(), Bytes::from(why), false)
                }
                Ok(Err(e)) => (reply_to, "502".to_string(), Bytes::from(e.to_string()), false),
                Err(e) => (reply_to, "502".to_string(), Bytes::from(e.to_string()), false),
            };
            respond(&client, reply).await;
            drop(permit);
        });
    }
}

/// A request from NATS: the service and the body frames.
struct Request {
    service: String,
    frames: Vec<Vec<u8>>,
}

fn parse(prefix: &str, message: &Message) -> Result<Request, String> {
    let service = message.subject.as_str().strip_prefix(prefix).unwrap_or_default();
    if service.is_empty() {
        return Err(format!("no service: send to {prefix}<service>"));
    }
    let json =
        message.headers.as_ref().and_then(|h| h.get("Plantd-Frames")).is_some_and(|v| v.as_str() == "json");
    let frames = if json {
        let list: Vec<String> = serde_json::from_slice(&message.payload)
            .map_err(|e| format!("Plantd-Frames: json, but the body is not a JSON array of strings: {e}"))?;
        list.into_iter().map(String::into_bytes).collect()
    } else {
        vec![message.payload.to_vec()]
    };
    Ok(Request { service: service.to_string(), frames })
}

/// With security, the request is made as `rpc_identity` and checked like any call.
fn authorise(security: Option<&Security>, config: &NatsConfig, request: &Request) -> Result<(), String> {
    let Some(security) = security else { return Ok(()) };
    let Some(identity) = &config.rpc_identity else {
        return Err("this hub has security and no bridge.nats.rpc_identity: NATS requests are refused".into());
    };
    let command = request.frames.first().map(Vec::as_slice);
    if security.grants_by_policy(identity).may_call(request.service.as_bytes(), command) {
        return Ok(());
    }
    security.denials.record(identity, Kind::Call, || format!("request from NATS to {}", request.service));
    Err(format!("{identity} may not make this call"))
}

/// The MDP round trip, in process, on a blocking thread.
fn call(ctx: &zmq::Context, request: &Request, timeout: Duration) -> Result<Vec<zmq::Message>, ClientError> {
    let options = ClientOptions { timeout, retries: 0, ..ClientOptions::default() };
    let mut client = Client::new(ctx, Endpoint::plain(BROKER_INPROC), options);
    let frames: Vec<&[u8]> = request.frames.iter().map(Vec::as_slice).collect();
    client.request(&request.service, &frames)
}

/// One frame as it is; several as a JSON array of strings (the flag says which).
fn encode(frames: Vec<zmq::Message>) -> (Bytes, bool) {
    match frames.as_slice() {
        [one] => (Bytes::copy_from_slice(one), false),
        many => {
            let list: Vec<String> = many.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect();
            (Bytes::from(serde_json::to_vec(&list).unwrap_or_default()), true)
        }
    }
}

async fn respond(
    client: &async_nats::Client,
    (to, status, body, json): (async_nats::Subject, String, Bytes, bool),
) {
    let mut headers = HeaderMap::new();
    headers.insert("Plantd-Status", status.as_str());
    if json {
        headers.insert("Plantd-Frames", "json");
    }
    if let Err(e) = client.publish_with_headers(to, headers, body).await {
        log::debug!("bridge: cannot answer a NATS request: {e}");
    }
}
