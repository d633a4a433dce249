//! A small HTTP/1.1 server with every bound explicit, for the hub's and the
//! agent's health checks, metrics, JSON and live event streams: hyper on a
//! smol executor, on one thread of its own.
//!
//! Each connection is a task, not a thread, so idle and slow clients cost a
//! few KiB each, and all of it is bounded ([`Limits`]): connections at once
//! and per source address (at either bound the longest idle connection makes
//! room for a newcomer, so idle clients cannot keep a health check out:
//! [`conns`]), header bytes (a longer header gets 431 and the connection
//! closes), the time to send the headers (a slowloris client is dropped),
//! open event streams (more get 503) and stream tickets.
//!
//! With a token, every path but `/healthz`, `/readyz` and the ones made
//! public ([`Server::public_paths`]) needs it, in `Authorization: Bearer
//! <token>` and nowhere else; a live stream may instead be opened once with
//! a ticket ([`auth`]). With [`Server::check_hosts`], a request must name
//! this server in `Host` ([`host`]), or gets 421. Every response carries
//! headers that keep a page from being framed, sniffed or referred from.
//!
//! Handlers answer GETs synchronously from snapshots ([`Handler`]); a live
//! view returns an event stream ([`Reply::Events`]) that the server sends as
//! server-sent events until the client leaves or the server stops.
//!
//! [`metrics`] is what the `/metrics` endpoints serve: metric families
//! collected at scrape time, rendered as Prometheus text (and as JSON).

pub mod auth;
mod conns;
pub mod host;
pub mod metrics;
mod respond;

pub use auth::TICKET_PATH;
pub use host::{HostError, Hosts};

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Frame, SizeHint};
use hyper::StatusCode;
use smol::future::FutureExt;
use smol::stream::Stream;
use smol::Async;
use transport::ShutdownWatch;

use auth::Tickets;
use conns::{Activity, Admission, Bound, Busy, Table};
use respond::{plain, respond};

/// The bounds. Every one is explicit, and shown in metrics by its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; past it, the longest idle leaves for a newcomer.
    pub max_connections: usize,
    /// Connections open at once from one source address (an IPv6 one by its /64).
    pub max_connections_per_address: usize,
    /// Request line and headers together; longer gets 431.
    pub max_header_bytes: usize,
    /// Time a client has to send its headers (also bounds an idle keep-alive).
    pub header_timeout: Duration,
    /// Event streams open at once; more get 503.
    pub max_streams: usize,
    /// Stream tickets issued and not yet used at once; more get 503.
    pub max_tickets: usize,
    /// How long a stream ticket is good for.
    pub ticket_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_connections_per_address: 64,
            max_header_bytes: 16 << 10,
            header_timeout: Duration::from_secs(10),
            max_streams: 256,
            max_tickets: 256,
            ticket_ttl: Duration::from_secs(30),
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
    /// Source addresses with a connection open now.
    pub addresses: AtomicU64,
    pub connections_total: AtomicU64,
    /// Connections closed on arrival: `max_connections` were open, all busy.
    pub connections_refused: AtomicU64,
    /// Connections closed on arrival: `max_connections_per_address` were open from there, all busy.
    pub connections_refused_per_address: AtomicU64,
    /// Idle connections closed to make room for a newcomer (at either bound).
    pub connections_evicted: AtomicU64,
    pub requests: AtomicU64,
    /// Requests without the token (or with a bad ticket).
    pub unauthorized: AtomicU64,
    /// Requests with `?token=` in the address (refused, but for open paths).
    pub token_in_query: AtomicU64,
    /// Requests naming another host (421), or an HTTP/1.1 one none (400).
    pub misdirected: AtomicU64,
    /// Event streams open now.
    pub streams: AtomicU64,
    /// Event streams refused: `max_streams` were open.
    pub streams_refused: AtomicU64,
    /// Stream tickets held now (issued, neither used nor forgotten as expired).
    pub tickets: AtomicU64,
    pub tickets_issued: AtomicU64,
    /// Tickets refused: `max_tickets` were outstanding.
    pub tickets_refused: AtomicU64,
}

impl Counters {
    /// (name, value, is a gauge), for a metrics registry.
    pub fn snapshot(&self) -> Vec<(&'static str, u64, bool)> {
        let value = |v: &AtomicU64| v.load(Relaxed);
        vec![
            ("connections", value(&self.connections), true),
            ("addresses", value(&self.addresses), true),
            ("connections_total", value(&self.connections_total), false),
            ("connections_refused_total", value(&self.connections_refused), false),
            ("connections_refused_per_address_total", value(&self.connections_refused_per_address), false),
            ("connections_evicted_total", value(&self.connections_evicted), false),
            ("requests_total", value(&self.requests), false),
            ("unauthorized_total", value(&self.unauthorized), false),
            ("token_in_query_total", value(&self.token_in_query), false),
            ("misdirected_total", value(&self.misdirected), false),
            ("streams", value(&self.streams), true),
            ("streams_refused_total", value(&self.streams_refused), false),
            ("tickets", value(&self.tickets), true),
            ("tickets_issued_total", value(&self.tickets_issued), false),
            ("tickets_refused_total", value(&self.tickets_refused), false),
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
    hosts: Option<Hosts>,
    public: Vec<String>,
    counters: Arc<Counters>,
}

impl Server {
    pub fn bind(address: &str, limits: Limits, token: Option<String>) -> Result<Server, BindError> {
        let listener =
            TcpListener::bind(address).map_err(|source| BindError { address: address.into(), source })?;
        deepen_backlog(&listener, limits.max_connections.max(128));
        let counters = Arc::default();
        Ok(Server {
            listener,
            limits,
            token: token.map(Arc::from),
            hosts: None,
            public: Vec::new(),
            counters,
        })
    }

    /// Answers only requests that name this server: the address a connection
    /// came in on, `localhost` on loopback, or one of `hosts`; others get 421.
    pub fn check_hosts(mut self, hosts: Hosts) -> Server {
        self.hosts = Some(hosts);
        self
    }

    /// Paths served without the token besides the health checks (a page's
    /// own code, which holds no data).
    pub fn public_paths(mut self, paths: &[&str]) -> Server {
        self.public = paths.iter().map(|p| p.to_string()).collect();
        self
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
        let tickets = Tickets::new(self.limits.max_tickets, self.limits.ticket_ttl);
        let shared = Arc::new(Shared {
            handler,
            token: self.token,
            hosts: self.hosts,
            public: self.public,
            counters: self.counters,
            limits: self.limits,
            table: Mutex::default(),
            tickets: Mutex::new(tickets),
        });
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
                let (stream, peer) = match event {
                    Event::Tick => continue,
                    Event::Accepted(Ok(accepted)) => accepted,
                    Event::Accepted(Err(e)) => {
                        // Out of descriptors, say: say so, and keep serving who is connected.
                        log::warn!("http: accept failed: {e}");
                        smol::Timer::after(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if let Some(task) = shared.admit(stream, peer) {
                    ex.spawn(task).detach();
                }
                // A flood of connections is accepted one at a time, with the
                // connections' tasks run in between: a health check that got in
                // is read and answered before the flood can push it out.
                smol::future::yield_now().await;
            }
        }))
    }
}

/// Lets up to `depth` handshaken connections wait to be accepted (the
/// kernel caps it at `net.core.somaxconn`). std listens with 128: a burst of
/// connections beyond that has its handshakes dropped, and each client (a
/// health probe among them) tries again only after a second. The hub's
/// depth is `max_connections`.
fn deepen_backlog(listener: &TcpListener, depth: usize) {
    use std::os::fd::AsRawFd;
    let depth = i32::try_from(depth).unwrap_or(i32::MAX);
    // SAFETY: listen(2) on a socket we own and that is listening already
    // (Linux then just changes its backlog); it touches no memory.
    if unsafe { libc::listen(listener.as_raw_fd(), depth) } != 0 {
        log::warn!("http: cannot deepen the accept backlog: {}", std::io::Error::last_os_error());
    }
}

struct Shared<H> {
    handler: H,
    token: Option<Arc<str>>,
    hosts: Option<Hosts>,
    public: Vec<String>,
    counters: Arc<Counters>,
    limits: Limits,
    table: Mutex<Table>,
    tickets: Mutex<Tickets>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<H: Handler> Shared<H> {
    /// The connection's task, if it is let in (an idle one may leave for it).
    fn admit(
        self: &Arc<Self>,
        stream: Async<TcpStream>,
        peer: SocketAddr,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let c = &self.counters;
        let limits = &self.limits;
        let mut table = lock(&self.table);
        let admission = table.admit(peer.ip(), limits.max_connections, limits.max_connections_per_address);
        self.count_table(&table);
        drop(table);
        match admission {
            Admission::Refused(bound) => {
                let refused = match bound {
                    Bound::Total => &c.connections_refused,
                    Bound::PerAddress => &c.connections_refused_per_address,
                };
                refused.fetch_add(1, Relaxed);
                None
            }
            Admission::Open { id, activity, closed, evicted } => {
                c.connections_evicted.fetch_add(evicted.len() as u64, Relaxed);
                c.connections_total.fetch_add(1, Relaxed);
                let shared = self.clone();
                Some(async move {
                    let evicted = serve(&shared, stream, activity).or(async {
                        // The table dropped the other end: closed for a newcomer.
                        let _ = closed.recv().await;
                        log::debug!("http: closed an idle connection from {peer} to make room");
                    });
                    evicted.await;
                    let mut table = lock(&shared.table);
                    table.remove(id);
                    shared.count_table(&table);
                })
            }
        }
    }

    fn count_table(&self, table: &Table) {
        self.counters.connections.store(table.len() as u64, Relaxed);
        self.counters.addresses.store(table.sources() as u64, Relaxed);
    }
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A response body that keeps its connection busy (not to be closed for a
/// newcomer) until it is sent.
struct Answering {
    body: Body,
    _busy: Busy,
}

impl hyper::body::Body for Answering {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// One connection, until the client leaves, breaks a bound, or the server stops.
async fn serve<H: Handler>(shared: &Arc<Shared<H>>, stream: Async<TcpStream>, activity: Arc<Activity>) {
    let local = stream.get_ref().local_addr();
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |request| {
            let busy = activity.begin();
            let response = match local {
                Ok(local) => respond(&shared, &request, local),
                Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "the connection has no local address\n"),
            };
            let response = response.map(|body| Answering { body, _busy: busy });
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
