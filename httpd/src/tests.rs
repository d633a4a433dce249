//! The server over real sockets: answers, tokens, and every bound under abuse.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::*;

/// A server on a free port with these limits and token, serving on a thread until dropped.
struct Running {
    address: SocketAddr,
    counters: Arc<Counters>,
    shutdown: transport::Shutdown,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(limits: Limits, token: Option<&str>) -> Running {
        let server = Server::bind("127.0.0.1:0", limits, token.map(String::from)).unwrap();
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
        let mut stream = self.connect();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n").unwrap();
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, text)
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
fn a_token_guards_everything_but_health_and_a_browser_keeps_it_in_a_cookie() {
    let server = Running::start(Limits::default(), Some("s3cret"));
    assert_eq!(server.get("/healthz", "").0, 200, "probes need no token");
    assert_eq!(server.get("/echo?say=x", "").0, 401);
    assert_eq!(server.get("/echo?say=x", "Authorization: Bearer wrong\r\n").0, 401);
    assert_eq!(server.get("/echo?say=x", "Authorization: Bearer s3cret\r\n").0, 200);
    let (status, text) = server.get("/echo?say=x&token=s3cret", "");
    assert_eq!(status, 200);
    assert!(text.contains("set-cookie: plantd_token=s3cret; Path=/; HttpOnly; SameSite=Strict"), "{text}");
    assert_eq!(server.get("/echo?say=x", "Cookie: a=b; plantd_token=s3cret\r\n").0, 200);
    assert_eq!(server.counters.unauthorized.load(Relaxed), 2);
}

#[test]
fn a_huge_header_and_hundreds_of_slow_clients_leave_health_answering() {
    // Long enough that the 500 are all connected before the first times out
    // (a connect here sometimes waits a second for a SYN to be resent).
    let limits = Limits { header_timeout: Duration::from_secs(8), ..Limits::default() };
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
fn connections_and_streams_are_capped() {
    let limits = Limits { max_connections: 8, max_streams: 2, ..Limits::default() };
    let server = Running::start(limits, None);
    let mut streams: Vec<TcpStream> = Vec::new();
    for _ in 0..2 {
        let mut s = server.connect();
        s.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(head.contains("text/event-stream"), "{head}");
        streams.push(s);
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

    let idle: Vec<TcpStream> = (0..8).map(|_| server.connect()).collect();
    server.wait_until("8 connections", |c| c.connections.load(Relaxed) == 8);
    let mut extra = server.connect();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = extra.read_to_string(&mut text);
    assert!(text.is_empty(), "the ninth connection was served: {text}");
    assert!(server.counters.connections_refused.load(Relaxed) >= 1);
    drop(idle);
}
