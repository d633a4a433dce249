//! The server over real sockets: answers, tokens, and every bound under abuse.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::*;
use smol::stream::StreamExt;

/// A server on a free port with these limits and token, serving on a thread until dropped.
struct Running {
    address: SocketAddr,
    counters: Arc<Counters>,
    shutdown: transport::Shutdown,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(limits: Limits, token: Option<&str>) -> Running {
        Running::start_with(limits, token, |server| server)
    }

    /// With `setup` applied to the server (hosts checked, public paths).
    fn start_with(limits: Limits, token: Option<&str>, setup: impl FnOnce(Server) -> Server) -> Running {
        let server = setup(Server::bind("127.0.0.1:0", limits, token.map(String::from)).unwrap());
        let (address, counters) = (server.address(), server.counters());
        let shutdown = transport::Shutdown::new();
        let watch = shutdown.watch().unwrap();
        let thread = std::thread::spawn(move || {
            server
                .run(&watch, |get: &Get<'_>| match get.path {
                    "/healthz" => Reply::json(200, r#"{"status":"ok"}"#.into()),
                    "/echo" => Reply::text(200, get.param("say").unwrap_or_default()),
                    "/events" => {
                        let ticks = smol::stream::repeat(()).then(|_| async {
                            smol::Timer::after(Duration::from_millis(50)).await;
                            "{\"tick\":true}".to_string()
                        });
                        Reply::Events(Box::pin(ticks))
                    }
                    _ => Reply::not_found(),
                })
                .unwrap()
        });
        Running { address, counters, shutdown, thread: Some(thread) }
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream
    }

    /// One request on a fresh connection: (status, headers and body as text).
    fn get(&self, path: &str, headers: &str) -> (u16, String) {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n"))
    }

    /// `request`, verbatim, on a fresh connection: (status, the whole answer).
    fn send(&self, request: &str) -> (u16, String) {
        let mut stream = self.connect();
        stream.write_all(request.as_bytes()).unwrap();
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, text)
    }

    /// The first chunk of a stream's answer on `path`, and the connection (left open).
    fn open_stream(&self, path: &str, headers: &str) -> (String, TcpStream) {
        let mut stream = self.connect();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").unwrap();
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).unwrap_or(0);
        (String::from_utf8_lossy(&buf[..n]).into_owned(), stream)
    }

    fn wait_until(&self, what: &str, check: impl Fn(&Counters) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check(&self.counters) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", self.counters);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn answers_gets_decodes_queries_and_refuses_other_methods() {
    let server = Running::start(Limits::default(), None);
    let (status, text) = server.get("/echo?say=a%2Fb+c", "");
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("a/b c"), "{text}");
    assert!(text.contains("content-security-policy: default-src 'self'"), "{text}");
    assert_eq!(server.get("/nowhere", "").0, 404);
    let mut stream = server.connect();
    write!(stream, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
}

#[test]
fn the_token_counts_only_in_the_header_and_a_ticket_opens_one_stream_once() {
    let limits = Limits { max_tickets: 2, ticket_ttl: Duration::from_millis(300), ..Limits::default() };
    let server = Running::start_with(limits, Some("s3cret"), |s| s.public_paths(&["/echo-public"]));
    let bearer = "Authorization: Bearer s3cret\r\n";
    assert_eq!(server.get("/healthz", "").0, 200, "probes need no token");
    assert_eq!(server.get("/echo-public", "").0, 404, "public paths need none either (the handler has none)");
    assert_eq!(server.get("/echo?say=x", "").0, 401);
    assert_eq!(server.get("/echo?say=x", "Authorization: Bearer wrong\r\n").0, 401);
    assert_eq!(server.get("/echo?say=x", bearer).0, 200);
    // In the address, the token is refused, right or wrong, header or not; a cookie is nothing.
    let (status, text) = server.get("/echo?say=x&token=s3cret", bearer);
    assert_eq!(status, 401);
    assert!(text.contains("never in the address") && !text.contains("set-cookie"), "{text}");
    assert_eq!(
        server.get("/healthz?token=s3cret", "").0,
        200,
        "an open path is served, and the leak counted"
    );
    assert_eq!(server.counters.token_in_query.load(Relaxed), 2);
    assert_eq!(server.get("/echo?say=x", "Cookie: plantd_token=s3cret\r\n").0, 401);

    // A ticket, for a token holder only.
    assert_eq!(server.get(TICKET_PATH, "").0, 401);
    let ticket = |server: &Running| {
        let (status, text) = server.get(TICKET_PATH, bearer);
        assert_eq!(status, 200, "{text}");
        let body: serde_json::Value = serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(body["expires_in_s"], 0.3);
        body["ticket"].as_str().unwrap().to_string()
    };
    let first = ticket(&server);
    let (head, stream) = server.open_stream(&format!("/events?ticket={first}"), "");
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/event-stream"), "{head}");
    drop(stream);
    let (status, text) = server.get(&format!("/events?ticket={first}"), "");
    assert_eq!(status, 401, "used once already: {text}");
    assert!(text.contains("ask /api/ticket for another"), "{text}");
    // Good for a stream only, and for a while only.
    let second = ticket(&server);
    assert_eq!(server.get(&format!("/echo?say=x&ticket={second}"), "").0, 401);
    let third = ticket(&server);
    let fourth = ticket(&server);
    assert_eq!(server.get(TICKET_PATH, bearer).0, 503, "two outstanding at most");
    assert_eq!(server.counters.tickets_refused.load(Relaxed), 1);
    assert_eq!(server.counters.tickets.load(Relaxed), 2);
    // Let the two expire (300 ms): waiting out a lifetime, not synchronising.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(server.get(&format!("/events?ticket={third}"), "").0, 401, "expired");
    let fifth = ticket(&server);
    assert_ne!(fifth, fourth);
    assert_eq!(server.counters.tickets.load(Relaxed), 1, "expired tickets are forgotten");
    assert_eq!(server.counters.tickets_issued.load(Relaxed), 5);

    // Without a token, there is nothing to ask for.
    let open = Running::start(Limits::default(), None);
    let (status, text) = open.get(TICKET_PATH, "");
    assert_eq!(status, 200);
    assert!(text.ends_with(r#"{"expires_in_s":null,"ticket":null}"#), "{text}");
}

#[test]
fn every_answer_carries_the_headers_that_keep_pages_from_being_framed_or_leaking() {
    let server = Running::start(Limits::default(), Some("s3cret"));
    let asked = [
        server.get("/healthz", ""),
        server.get("/nowhere", "Authorization: Bearer s3cret\r\n"),
        server.get("/echo", ""),
        server.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    ];
    let statuses: Vec<u16> = asked.iter().map(|(status, _)| *status).collect();
    assert_eq!(statuses, [200, 404, 401, 405]);
    for (_, text) in asked {
        let head = text.split_once("\r\n\r\n").unwrap().0.to_ascii_lowercase();
        for header in [
            "content-security-policy: default-src 'self'; frame-ancestors 'none'",
            "x-frame-options: deny",
            "referrer-policy: no-referrer",
            "x-content-type-options: nosniff",
        ] {
            assert!(head.contains(header), "{header} missing in:\n{head}");
        }
    }
}

#[test]
fn a_request_must_name_this_server_or_gets_421() {
    let hosts = Hosts::parse(&["Hub.Plant.example.".into(), "proxy.example:8443".into()]).unwrap();
    let server = Running::start_with(Limits::default(), None, |s| s.check_hosts(hosts));
    let port = server.address.port();
    let get = |host: &str| {
        server.send(&format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")).0
    };
    for allowed in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LOCALHOST.:{port}"),
        "hub.plant.example".into(),
        "hub.plant.example:1234".into(),
        "proxy.example:8443".into(),
    ] {
        assert_eq!(get(&allowed), 200, "Host: {allowed}");
    }
    for refused in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        "127.0.0.1".into(),
        format!("127.0.0.2:{port}"),
        format!("[::1]:{port}"),
        "proxy.example:9999".into(),
        "proxy.example".into(),
        format!("user@127.0.0.1:{port}"),
    ] {
        assert_eq!(get(&refused), 421, "Host: {refused}");
    }
    let (status, text) = server.send(&format!(
        "GET http://evil.example/healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(status, 421, "an absolute URI names its host too");
    assert!(text.contains("allowed_hosts") && text.contains("evil.example"), "{text}");
    // No Host: refused in HTTP/1.1 (RFC 9112), answered in HTTP/1.0 (no browser sends that).
    assert_eq!(server.send("GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").0, 400);
    assert_eq!(server.send("GET /healthz HTTP/1.0\r\n\r\n").0, 200);
    assert_eq!(server.counters.misdirected.load(Relaxed), 10);
    assert!(Hosts::parse(&["a/b".into()]).is_err());
    assert!(Hosts::parse(&["".into()]).is_err());
    assert!(Hosts::parse(&["name:".into()]).is_err());
}

#[test]
fn a_huge_header_and_hundreds_of_slow_clients_leave_health_answering() {
    // Long enough that the 500 are all connected before the first times out
    // (a connect here sometimes waits a second for a SYN to be resent).
    let limits = Limits {
        header_timeout: Duration::from_secs(8),
        max_connections_per_address: 1000,
        ..Limits::default()
    };
    let server = Running::start(limits, None);
    // A 10 MB header line: refused once past the bound, not buffered.
    let mut huge = server.connect();
    let _ = write!(huge, "GET /healthz HTTP/1.1\r\nX-Big: ");
    let chunk = vec![b'a'; 64 << 10];
    let mut sent = 0;
    while sent < 10 << 20 && huge.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    let mut text = String::new();
    let _ = huge.read_to_string(&mut text);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 431"), "{text}");
    assert!(sent < 10 << 20, "the server read 10 MB of header");

    // 500 slowloris clients: half a request line each, then nothing.
    let slow: Vec<TcpStream> = (0..500)
        .map(|_| {
            let mut s = server.connect();
            s.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ").unwrap();
            s
        })
        .collect();
    server.wait_until("500 slow connections", |c| c.connections.load(Relaxed) >= 500);
    let asked = Instant::now();
    assert_eq!(server.get("/healthz", "").0, 200);
    assert!(asked.elapsed() < Duration::from_secs(1), "healthz took {:?}", asked.elapsed());
    // The header timeout closes them all.
    server.wait_until("the slow clients to be dropped", |c| c.connections.load(Relaxed) == 0);
    drop(slow);
}

#[test]
fn streams_are_capped_and_busy_connections_keep_a_newcomer_out() {
    let limits = Limits { max_connections: 8, max_streams: 2, ..Limits::default() };
    let server = Running::start(limits, None);
    let mut streams: Vec<TcpStream> = Vec::new();
    for _ in 0..2 {
        let (head, stream) = server.open_stream("/events", "");
        assert!(head.contains("text/event-stream"), "{head}");
        streams.push(stream);
    }
    server.wait_until("two open streams", |c| c.streams.load(Relaxed) == 2);
    let (status, _) = server.get("/events", "");
    assert_eq!(status, 503, "a third stream is refused");
    // The stream sends events as they come.
    let mut buf = [0u8; 512];
    let n = streams[0].read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("data: {\"tick\":true}"));
    drop(streams);
    server.wait_until("the streams to close with their clients", |c| c.streams.load(Relaxed) == 0);

    // Per address: two streams hold both slots, and are not closed for a newcomer.
    let limits = Limits { max_connections_per_address: 2, ..Limits::default() };
    let server = Running::start(limits, None);
    let held: Vec<_> = (0..2).map(|_| server.open_stream("/events", "").1).collect();
    server.wait_until("two open streams", |c| c.streams.load(Relaxed) == 2);
    let (status, text) = server.get("/healthz", "");
    assert_eq!(status, 0, "the third connection was served: {text}");
    assert_eq!(server.counters.connections_refused_per_address.load(Relaxed), 1);
    drop(held);
    server.wait_until("the streams to close", |c| c.connections.load(Relaxed) == 0);
    assert_eq!(server.get("/healthz", "").0, 200);
}

#[test]
fn idle_connections_make_room_for_a_health_check_at_either_bound() {
    // The total bound: 60 idle connections for 50 slots.
    let limits = Limits { max_connections: 50, max_connections_per_address: 1000, ..Limits::default() };
    let server = Running::start(limits, None);
    let idle: Vec<TcpStream> = (0..60).map(|_| server.connect()).collect();
    server.wait_until("10 idle connections closed for newcomers", |c| {
        c.connections_evicted.load(Relaxed) >= 10
    });
    assert_eq!(server.counters.connections.load(Relaxed), 50);
    let asked = Instant::now();
    assert_eq!(server.get("/healthz", "").0, 200);
    assert!(asked.elapsed() < Duration::from_secs(1), "healthz took {:?}", asked.elapsed());
    assert_eq!(server.counters.connections_refused.load(Relaxed), 0);
    drop(idle);

    // The per-address bound: 300 connections from 127.0.0.1, at most 8 held.
    let limits = Limits { max_connections_per_address: 8, ..Limits::default() };
    let server = Running::start(limits, None);
    let idle: Vec<TcpStream> = (0..300).map(|_| server.connect()).collect();
    server.wait_until("292 closed for newcomers", |c| c.connections_evicted.load(Relaxed) >= 292);
    assert_eq!(server.counters.connections.load(Relaxed), 8);
    assert_eq!(server.counters.addresses.load(Relaxed), 1);
    assert_eq!(server.get("/healthz", "").0, 200);
    drop(idle);
}
