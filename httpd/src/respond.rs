//! One request's answer: the Host check, the token or a ticket, the
//! handler's reply (or a stream, if one may open), and the headers every
//! answer carries.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, HOST};
use hyper::{Method, StatusCode, Version};
use serde_json::json;
use smol::stream::{Stream, StreamExt};

use crate::auth::{self, IssueError, Presented, TICKET_PATH};
use crate::{lock, Body, Counters, Get, Handler, Hosts, Reply, Shared};

pub(crate) fn respond<H: Handler>(
    shared: &Shared<H>,
    request: &hyper::Request<hyper::body::Incoming>,
    local: SocketAddr,
) -> hyper::Response<Body> {
    let mut response = answer(shared, request, local);
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    // Pages load nothing from elsewhere, run no inline script, and are never
    // framed (clickjacking); a link followed from them says nothing of them.
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

fn answer<H: Handler>(
    shared: &Shared<H>,
    request: &hyper::Request<hyper::body::Incoming>,
    local: SocketAddr,
) -> hyper::Response<Body> {
    let c = &shared.counters;
    c.requests.fetch_add(1, Relaxed);
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    if let Some(hosts) = &shared.hosts {
        if let Some(response) = misdirected(hosts, request, local) {
            c.misdirected.fetch_add(1, Relaxed);
            return response;
        }
    }
    let get = Get { path: request.uri().path(), query: request.uri().query().unwrap_or("") };
    let open = matches!(get.path, "/healthz" | "/readyz") || shared.public.iter().any(|p| p == get.path);
    if open && shared.token.is_some() && get.param("token").is_some() {
        // Served (the page explains), but the token is in some log now: say so.
        c.token_in_query.fetch_add(1, Relaxed);
    }
    let mut by_ticket = false;
    if let (Some(token), false) = (&shared.token, open) {
        let mut presented = {
            let mut tickets = lock(&shared.tickets);
            let presented = auth::presented(token, request.headers(), |name| get.param(name), &mut tickets);
            c.tickets.store(tickets.outstanding(Instant::now()) as u64, Relaxed);
            presented
        };
        if presented == Presented::Ticket && get.path == TICKET_PATH {
            // A ticket buys no other ticket: that takes the token.
            presented = Presented::Nothing;
        }
        if let Some(why) = presented.refusal(shared.limits.ticket_ttl) {
            c.unauthorized.fetch_add(1, Relaxed);
            if presented == Presented::TokenInQuery {
                c.token_in_query.fetch_add(1, Relaxed);
            }
            return unauthorized(why.into());
        }
        by_ticket = presented == Presented::Ticket;
    }
    if get.path == TICKET_PATH {
        return ticket(shared);
    }
    match shared.handler.get(&get) {
        // A refusal (400, 503) says why, and holds no data: a ticket may read it.
        Reply::Body { status, .. } if by_ticket && status < 400 => {
            c.unauthorized.fetch_add(1, Relaxed);
            unauthorized(
                "a ticket opens a live stream only: send the token in `Authorization: Bearer <token>` for this \
                 path\n"
                    .into(),
            )
        }
        Reply::Body { status, content_type, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = hyper::Response::new(Full::new(Bytes::from(body)).boxed_unsync());
            *response.status_mut() = status;
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        }
        Reply::Events(events) => {
            if c.streams.load(Relaxed) >= shared.limits.max_streams as u64 {
                c.streams_refused.fetch_add(1, Relaxed);
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many live streams open: try again later\n",
                );
            }
            let stream = Counted::new(events, c.clone())
                .map(|data| Ok::<_, Infallible>(Frame::data(Bytes::from(format!("data: {data}\n\n")))));
            let mut response = hyper::Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            response
        }
    }
}

/// The refusal of a request naming another server (DNS rebinding: 421), or an
/// HTTP/1.1 one naming none (400, RFC 9112 §3.2). An HTTP/1.0 request without
/// `Host` is answered: no browser sends one, so it is no rebinding, and
/// simple probes (`printf 'GET /healthz HTTP/1.0\r\n\r\n' | nc`) do. The
/// health checks are held to it too: a probe connects by address and names
/// it, which always passes, and `/readyz` tells more than a stranger should.
fn misdirected(
    hosts: &Hosts,
    request: &hyper::Request<hyper::body::Incoming>,
    local: SocketAddr,
) -> Option<hyper::Response<Body>> {
    let named: Vec<&str> = request
        .headers()
        .get_all(HOST)
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .chain(request.uri().authority().map(|a| a.as_str()))
        .collect();
    if named.is_empty() {
        return match request.version() {
            Version::HTTP_10 | Version::HTTP_09 => None,
            _ => Some(plain(StatusCode::BAD_REQUEST, "an HTTP/1.1 request needs a Host header\n")),
        };
    }
    let host = named.iter().find(|host| !hosts.allows(host, local))?;
    let mut response = plain(
        StatusCode::MISDIRECTED_REQUEST,
        format!(
            "misdirected request: this server does not answer to `{}`. If that is a name of this machine, add \
             it to [http] allowed_hosts (its own address, and localhost on loopback, always pass)\n",
            host.escape_debug()
        ),
    );
    // Nothing more on this connection: it was opened under another name.
    response.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    Some(response)
}

/// `{"ticket": ..., "expires_in_s": ...}` for a token holder.
fn ticket<H>(shared: &Shared<H>) -> hyper::Response<Body> {
    let c = &shared.counters;
    if shared.token.is_none() {
        return json_response(json!({"ticket": null, "expires_in_s": null}).to_string());
    }
    let mut tickets = lock(&shared.tickets);
    let issued = tickets.issue(Instant::now());
    c.tickets.store(tickets.outstanding(Instant::now()) as u64, Relaxed);
    let ttl = tickets.ttl().as_secs_f64();
    drop(tickets);
    match issued {
        Ok(ticket) => {
            c.tickets_issued.fetch_add(1, Relaxed);
            json_response(json!({"ticket": ticket, "expires_in_s": ttl}).to_string())
        }
        Err(IssueError::Full) => {
            c.tickets_refused.fetch_add(1, Relaxed);
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{} stream tickets are outstanding ([http] max_tickets): each lasts {ttl:.0} s; try again then\n",
                    shared.limits.max_tickets
                ),
            )
        }
        Err(IssueError::Random(e)) => {
            log::error!("http: cannot draw a stream ticket from the OS: {e}");
            plain(StatusCode::SERVICE_UNAVAILABLE, format!("cannot draw a ticket: {e}\n"))
        }
    }
}

fn json_response(body: String) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn unauthorized(text: Cow<'static, str>) -> hyper::Response<Body> {
    let mut response = plain(StatusCode::UNAUTHORIZED, text);
    response.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
    response
}

pub(crate) fn plain(status: StatusCode, text: impl Into<Cow<'static, str>>) -> hyper::Response<Body> {
    let body = match text.into() {
        Cow::Borrowed(text) => Bytes::from_static(text.as_bytes()),
        Cow::Owned(text) => Bytes::from(text),
    };
    let mut response = hyper::Response::new(Full::new(body).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// An event stream counted as open until dropped (the client left, or the server stopped).
struct Counted {
    inner: Pin<Box<dyn Stream<Item = String> + Send>>,
    counters: Arc<Counters>,
}

impl Counted {
    fn new(inner: Pin<Box<dyn Stream<Item = String> + Send>>, counters: Arc<Counters>) -> Counted {
        counters.streams.fetch_add(1, Relaxed);
        Counted { inner, counters }
    }
}

impl Stream for Counted {
    type Item = String;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<String>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.counters.streams.fetch_sub(1, Relaxed);
    }
}
