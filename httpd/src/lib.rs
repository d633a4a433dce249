//! A small HTTP/1.1 server with every bound explicit, for the hub's and the
//! agent's health checks, metrics, JSON and live event streams: hyper on a
//! smol executor, on one thread of its own.
//!
//! Each connection is a task, not a thread, so idle and slow clients cost a
//! few KiB each, and all of it is bounded ([`Limits`]): connections at once,
//! header bytes (a longer header gets 431 and the connection closes), the
//! time to send the headers (a slowloris client is dropped), and open event
//! streams (more get 503). With a token, every path but `/healthz` and
//! `/readyz` needs it: `Authorization: Bearer <token>`, `?token=<token>`
//! (which also sets a cookie, so a browser keeps it), or that cookie.
//!
//! Handlers answer GETs synchronously from snapshots ([`Handler`]); a live
//! view returns an event stream ([`Reply::Events`]) that the server sends as
//! server-sent events until the client leaves or the server stops.
//!
//! [`metrics`] is what the `/metrics` endpoints serve: metric families
//! collected at scrape time, rendered as Prometheus text (and as JSON).

pub mod metrics;

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, COOKIE, SET_COOKIE};
use hyper::{Method, StatusCode};
use smol::future::FutureExt;
use smol::stream::{Stream, StreamExt};
use smol::Async;
use transport::ShutdownWatch;

/// The bounds. Every one is explicit, and shown in metrics by its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Request line and headers together; longer gets 431.
    pub max_header_bytes: usize,
    /// Time a client has to send its headers (also bounds an idle keep-alive).
    pub header_timeout: Duration,
    /// Event streams open at once; more get 503.
    pub max_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_header_bytes: 16 << 10,
            header_timeout: Duration::from_secs(10),
            max_streams: 256,
        }
    }
}

/// A GET request, as a handler sees it.
#[derive(Clone, Copy, Debug)]
pub struct Get<'a> {
    pub path: &'a str,
    pub query: &'a str,
}

impl Get<'_> {
    /// A query parameter, percent-decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| percent_decode(value))
        })
    }
}

/// What a handler answers.
pub enum Reply {
    Body {
        status: u16,
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// Server-sent events: each item is one event's data (one line, e.g. JSON).
    Events(Pin<Box<dyn Stream<Item = String> + Send>>),
}

impl Reply {
    pub fn json(status: u16, body: String) -> Reply {
        Reply::Body { status, content_type: "application/json", body: body.into_bytes() }
    }

    pub fn text(status: u16, body: String) -> Reply {
        Reply::Body { status, content_type: "text/plain; charset=utf-8", body: body.into_bytes() }
    }

    pub fn not_found() -> Reply {
        Reply::text(404, "not found\n".into())
    }
}

/// Answers GETs. Called on the server's thread: answer from snapshots, never block.
pub trait Handler: Send + Sync + 'static {
    fn get(&self, request: &Get<'_>) -> Reply;
}

impl<F: Fn(&Get<'_>) -> Reply + Send + Sync + 'static> Handler for F {
    fn get(&self, request: &Get<'_>) -> Reply {
        self(request)
    }
}

/// What the server has seen, for metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections open now.
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    /// Connections closed on arrival: `max_connections` were open.
    pub connections_refused: AtomicU64,
    pub requests: AtomicU64,
    /// Requests without the token.
    pub unauthorized: AtomicU64,
    /// Event streams open now.
    pub streams: AtomicU64,
    /// Event streams refused: `max_streams` were open.
    pub streams_refused: AtomicU64,
}

impl Counters {
    /// (name, value, is a gauge), for a metrics registry.
    pub fn snapshot(&self) -> [(&'static str, u64, bool); 7] {
        [
            ("connections", self.connections.load(Relaxed), true),
            ("connections_total", self.connections_total.load(Relaxed), false),
            ("connections_refused_total", self.connections_refused.load(Relaxed), false),
            ("requests_total", self.requests.load(Relaxed), false),
            ("unauthorized_total", self.unauthorized.load(Relaxed), false),
            ("streams", self.streams.load(Relaxed), true),
            ("streams_refused_total", self.streams_refused.load(Relaxed), false),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on {address}: {source} (another process on that port? change the address, or \"off\")"
)]
pub struct BindError {
    pub address: String,
    pub source: std::io::Error,
}

pub struct Server {
    listener: TcpListener,
    limits: Limits,
    token: Option<Arc<str>>,
    counters: Arc<Counters>,
}

impl Server {
    pub fn bind(address: &str, limits: Limits, token: Option<String>) -> Result<Server, BindError> {
        let listener =
            TcpListener::bind(address).map_err(|source| BindError { address: address.into(), source })?;
        let counters = Arc::default();
        Ok(Server { listener, limits, token: token.map(Arc::from), counters })
    }

    /// The bound address (a port of 0 resolved).
    pub fn address(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Serves until `stop`, on this thread. Open connections and streams end with it.
    pub fn run(self, stop: &ShutdownWatch, handler: impl Handler) -> std::io::Result<()> {
        let listener = Async::new(self.listener)?;
        let stopped = Async::new(stop)?;
        let ex = smol::Executor::new();
        let shared =
            Arc::new(Shared { handler, token: self.token, counters: self.counters, limits: self.limits });
        smol::block_on(ex.run(async {
            loop {
                enum Event {
                    Accepted(std::io::Result<(Async<TcpStream>, SocketAddr)>),
                    Tick,
                }
                let tick = async {
                    // At least every second (a watchdog watches this loop turn), and at once on shutdown.
                    let second = async {
                        smol::Timer::after(Duration::from_secs(1)).await;
                        Ok(())
                    };
                    let _ = stopped.readable().or(second).await;
                    Event::Tick
                };
                let event = async { Event::Accepted(listener.accept().await) }.or(tick).await;
                if stop.is_set() {
                    return Ok(());
                }
                let stream = match event {
                    Event::Tick => continue,
                    Event::Accepted(Ok((stream, _))) => stream,
                    Event::Accepted(Err(e)) => {
                        // Out of descriptors, say: say so, and keep serving who is connected.
                        log::warn!("http: accept failed: {e}");
                        smol::Timer::after(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let c = &shared.counters;
                if c.connections.load(Relaxed) >= shared.limits.max_connections as u64 {
                    c.connections_refused.fetch_add(1, Relaxed);
                    continue;
                }
                c.connections.fetch_add(1, Relaxed);
                c.connections_total.fetch_add(1, Relaxed);
                ex.spawn(serve(shared.clone(), stream)).detach();
            }
        }))
    }
}

struct Shared<H> {
    handler: H,
    token: Option<Arc<str>>,
    counters: Arc<Counters>,
    limits: Limits,
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One connection, until the client leaves, breaks a bound, or the server stops.
async fn serve<H: Handler>(shared: Arc<Shared<H>>, stream: Async<TcpStream>) {
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |request| {
            let response = respond(&shared, &request);
            async move { Ok::<_, Infallible>(response) }
        })
    };
    let limits = &shared.limits;
    let outcome = hyper::server::conn::http1::Builder::new()
        .timer(smol_hyper::rt::SmolTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192) + 4096)
        .max_header_size(limits.max_header_bytes)
        .serve_connection(smol_hyper::rt::FuturesIo::new(stream), service)
        .await;
    if let Err(e) = outcome {
        log::debug!("http: connection ended: {e}");
    }
    shared.counters.connections.fetch_sub(1, Relaxed);
}

fn respond<H: Handler>(
    shared: &Shared<H>,
    request: &hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body> {
    let c = &shared.counters;
    c.requests.fetch_add(1, Relaxed);
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let get = Get { path: request.uri().path(), query: request.uri().query().unwrap_or("") };
    let open = matches!(get.path, "/healthz" | "/readyz");
    let mut set_cookie = None;
    if let (Some(token), false) = (&shared.token, open) {
        match presented(request, &get) {
            Some((given, from_query)) if same(given.as_bytes(), token.as_bytes()) => {
                if from_query {
                    set_cookie = Some(format!("{COOKIE_NAME}={given}; Path=/; HttpOnly; SameSite=Strict"));
                }
            }
            _ => {
                c.unauthorized.fetch_add(1, Relaxed);
                let mut response = plain(
                    StatusCode::UNAUTHORIZED,
                    "this endpoint needs the hub's HTTP token: Authorization: Bearer <token>, or ?token=<token>\n",
                );
                response.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
                return response;
            }
        }
    }
    let mut response = match shared.handler.get(&get) {
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
    };
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    // Pages load nothing from elsewhere, and run no inline script.
    headers.insert("content-security-policy", HeaderValue::from_static("default-src 'self'"));
    if let Some(cookie) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(SET_COOKIE, cookie);
    }
    response
}

const COOKIE_NAME: &str = "plantd_token";

/// The token a request presents, and whether it came in the query.
fn presented<'a>(
    request: &'a hyper::Request<hyper::body::Incoming>,
    get: &Get<'_>,
) -> Option<(String, bool)> {
    let header = |name| request.headers().get(name).and_then(|v: &'a HeaderValue| v.to_str().ok());
    if let Some(bearer) = header(AUTHORIZATION).and_then(|v| v.strip_prefix("Bearer ")) {
        return Some((bearer.trim().to_string(), false));
    }
    if let Some(token) = get.param("token") {
        return Some((token, true));
    }
    let cookies = header(COOKIE)?;
    let token = cookies.split(';').find_map(|c| c.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='))?;
    Some((token.to_string(), false))
}

/// Compares without stopping at the first difference (no timing hint about the token).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn plain(status: StatusCode, text: &'static str) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed_unsync());
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

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests;
