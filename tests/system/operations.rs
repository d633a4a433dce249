//! What an operator runs the hub with: config checks, `hub agents`, the
//! metrics as Prometheus parses them, readiness with a broken component, and
//! the HTTP endpoint under abuse (slow, idle and handshake-only clients by
//! the thousand).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn config_checks_exit_78_naming_the_field_and_0_for_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let cases = [
        ("zero.toml", "[broker]\nqueue_limit = 0\n", "broker.queue_limit"),
        ("typo.toml", "[broker]\nqueue_limt = 5\n", "queue_limt"),
        ("exposed.toml", "[http]\nlisten = \"0.0.0.0:8081\"\n", "http.token_file"),
        ("hosts.toml", "[http]\nallowed_hosts = [\"hub/x\"]\n", "http.allowed_hosts"),
        ("ticket.toml", "[http]\nticket_ttl_ms = 0\n", "http.ticket_ttl_ms"),
        ("per-address.toml", "[http]\nmax_connections_per_address = 0\n", "http.max_connections_per_address"),
        (
            "keys.toml",
            "[security]\nserver_cert = \"/nowhere/hub.key_secret\"\nclients_dir = \"/nowhere\"\n",
            "security.server_cert",
        ),
    ];
    for (name, text, field) in cases {
        let out = hub_cli(&["check-config", write(name, text).to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{name}: {stderr}");
        assert!(stderr.contains(field), "{name}: {stderr}");
    }
    let good = write(
        "good.toml",
        "[broker]\nqueue_limit = 5\n[http]\nallowed_hosts = [\"hub.plant.example\", \"10.0.0.5:8081\"]\n",
    );
    let out = hub_cli(&["check-config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("config ok"));
    let printed = String::from_utf8_lossy(&hub_cli(&["serve", "--print-config"]).stdout).into_owned();
    for line in [
        "allowed_hosts = []",
        "max_connections_per_address = 64",
        "max_tickets = 256",
        "ticket_ttl_ms = 30000",
    ] {
        assert!(printed.contains(line), "--print-config lacks {line}:\n{printed}");
    }

    let bad_agent = write("agent.toml", "id = \"pump.7\"\n");
    let out = agent_cli(&["check", "--config-only", bad_agent.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`id`"));
    let good_agent = write("agent-ok.toml", "id = \"pump-7\"\nboard = \"sim\"\n");
    let out = agent_cli(&["check", "--config-only", good_agent.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("data").exists(), "--config-only touched nothing");
}

#[test]
fn hub_agents_lists_each_agent_with_what_it_reported() {
    let hub = HubProc::start();
    let metric = hub.bus("metric").clone();
    let dir = tempfile::tempdir().unwrap();
    // Nobody subscribes, so the hub takes no batch: the backlog grows, and
    // the agent says so in its reports.
    let body = "[uplink]\nreport_interval_ms = 1000\n\n[[channel]]\nname = \"t\"\nperiod_ms = 50\ndriver = { kind = \"ramp\" }\n";
    let _agent = agent_run(&agent_config(dir.path(), "pump-1", &hub.broker, &metric.frontend, body));
    let listed = wait_for("pump-1 to report a backlog", 20 * SECOND, || {
        let out = hub_cli(&["agents", "--json", "--broker", &hub.broker]);
        let agents: Value = serde_json::from_slice(&out.stdout).ok()?;
        let pump = agents.as_array()?.iter().find(|a| a["agent"] == "pump-1")?.clone();
        (pump["backlog"].as_u64()? >= 10).then_some(pump)
    });
    assert_eq!(listed["link"], "up");
    assert!(listed["epoch"].as_u64().unwrap() > 0);
    assert!(listed["lag_s"].as_f64().unwrap() >= 0.0);
    let out = hub_cli(&["agents", "--broker", &hub.broker]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("AGENT") && table.lines().any(|l| l.starts_with("pump-1 ")), "{table}");
}

#[test]
fn prometheus_parses_the_metrics_with_types_and_escaped_labels() {
    let hub = HubProc::start();
    // A service name that needs escaping in a label value: a queued request creates it.
    let ctx = zmq::Context::new();
    let client =
        transport::PipelinedClient::connect(&ctx, hub.endpoint(&hub.broker), proto::mdp::Dialect::Rfc7)
            .unwrap();
    client.send(b"we\"ird\\name", [&b"x"[..]]).unwrap();
    wait_for("the odd service to be known", 10 * SECOND, || {
        (hub.metric("plantd_broker_requests_total") >= 1).then_some(())
    });
    let text = wait_for("the broker's snapshot to show it", 10 * SECOND, || {
        let text = http_get(&hub.http, "/metrics").1;
        text.contains("plantd_broker_service_queued_requests{").then_some(text)
    });
    let parsed = prometheus_parse(&text);
    assert_eq!(parsed["plantd_broker_requests"]["type"], "counter");
    assert_eq!(parsed["plantd_broker_queued_requests"]["type"], "gauge");
    assert_eq!(parsed["plantd_broker_queue_limit"]["samples"][0][2], 10_000.0, "bounds are gauges");
    let queued = &parsed["plantd_broker_service_queued_requests"]["samples"];
    let odd = queued.as_array().unwrap().iter().find(|s| s[1]["service"] == "we\"ird\\name");
    assert_eq!(odd.map(|s| &s[2]), Some(&Value::from(1.0)), "the label round-trips: {queued}");
    for family in
        ["plantd_bus_messages_down", "plantd_ingest_batches", "plantd_state_writes", "plantd_http_requests"]
    {
        assert_eq!(parsed[family]["type"], "counter", "{family}");
    }
}

/// `hub serve` inside user, mount and pid namespaces with its data
/// directory on a tmpfs of `size`; `fill` (a file the test creates) fills it.
fn hub_on_small_disk(dir: &std::path::Path, ports: &HubPorts, broker: &str) -> Proc {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let script = r#"set -u
mount -t tmpfs -o size=8m tmpfs "$DATA" || exit 97
"$HUB" serve --data-dir "$DATA" --broker "$BROKER" $BUSES &
pid=$!
i=0; until [ -e "$MARKS/fill" ]; do i=$((i+1)); [ $i -gt 1200 ] && { kill -TERM $pid; exit 95; }; sleep 0.05; done
dd if=/dev/zero of="$DATA/filler" bs=64k 2>/dev/null
: > "$MARKS/filled"
wait $pid
"#;
    let mut cmd = Command::new("unshare");
    cmd.args(["-Urmpf", "--kill-child", "sh", "-c", script])
        .env("DATA", &data)
        .env("MARKS", dir)
        .env("HUB", bin("hub"))
        .env("BROKER", broker)
        .env("BUSES", ports.args().join(" "));
    Proc::spawn("hub in unshare", cmd)
}

#[test]
fn readiness_names_a_state_store_and_an_ingest_that_cannot_write() {
    require_unshare();
    let dir = tempfile::tempdir().unwrap();
    let (ports, broker) = (HubPorts::new(), free_endpoint());
    let http = ports.http.clone();
    let _hub = hub_on_small_disk(dir.path(), &ports, &broker);
    let ready = |http: &str| -> Option<(u16, Value)> {
        let mut stream = TcpStream::connect(http).ok()?;
        stream.set_read_timeout(Some(5 * SECOND)).ok()?;
        write!(stream, "GET /readyz HTTP/1.0\r\n\r\n").ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()?))
    };
    wait_for("the hub to be ready", 20 * SECOND, || ready(&http).filter(|(s, _)| *s == 200));

    std::fs::write(dir.path().join("fill"), b"").unwrap();
    wait_for("the disk to fill", 20 * SECOND, || dir.path().join("filled").exists().then_some(()));
    // Writes until one is refused: the store fails at its next flush.
    let mut n = 0;
    wait_for("a state write to be refused", 30 * SECOND, || {
        n += 1;
        let value = format!("{{\"v\": {n}, \"pad\": \"{}\"}}", "x".repeat(4000));
        let reply = call(
            broker.as_str(),
            proto::mdp::Dialect::Rfc7,
            "org.plantd.State",
            &["state-set", &format!(r#"{{"service":"plant","key":"k{n}","value":{value}}}"#)],
            2 * SECOND,
        )?;
        reply[0].contains("\"success\":false").then_some(())
    });
    let (status, verdict) =
        wait_for("readiness to fail", 10 * SECOND, || ready(&http).filter(|(s, _)| *s == 503));
    assert_eq!(status, 503);
    let state = &verdict["components"]["state"];
    assert_eq!(state["ok"], false, "{verdict}");
    assert!(state["detail"].as_str().unwrap().contains("takes no writes"), "{verdict}");
    assert_eq!(verdict["components"]["broker"]["ok"], true, "only what is broken is named: {verdict}");

    // Ingest cannot store a watermark either: the batch is answered Retry, and readiness says so.
    let batch = proto::ingest::Batch {
        agent: "pump-1".into(),
        samples: vec![proto::ingest::Sent {
            sample: proto::sample::Sample {
                channel: "t".into(),
                epoch: 1,
                seq: 1,
                wall_ns: 0,
                mono_ns: 0,
                clock_synced: true,
                value: proto::sample::Value::Number(1.0),
                unit: String::new(),
                quality: proto::sample::Quality::Good,
            },
            historical: false,
        }],
        events: Vec::new(),
    };
    let ctx = zmq::Context::new();
    let options = transport::ClientOptions { timeout: 5 * SECOND, retries: 0, ..Default::default() };
    let mut client = transport::Client::new(&ctx, transport::Endpoint::plain(&broker), options);
    // The gate takes batches only while a real subscriber listens: one does.
    let _collector = Collector::start(ports.buses["metric"].backend.as_str(), "org.plantd.Metric.");
    let verdict = wait_for("ingest to be named", 20 * SECOND, || {
        let _ = client.request(proto::ingest::SERVICE, &[&batch.encode()]);
        ready(&http).filter(|(_, v)| v["components"]["ingest"]["ok"] == false).map(|(_, v)| v)
    });
    assert!(verdict["components"]["ingest"]["detail"].as_str().unwrap().contains("cannot store watermarks"));
}

/// A hub config with these `[http]` lines, in `dir`.
fn http_config(dir: &std::path::Path, lines: &str) -> String {
    let path = dir.join("hub.toml");
    std::fs::write(&path, format!("[http]\n{lines}")).unwrap();
    path.to_str().unwrap().to_string()
}

/// Descriptors `pid` holds.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Raises this process's descriptor limit to what thousands of client sockets need.
fn allow_descriptors(n: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on our own process, with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        if limit.rlim_cur < n {
            limit.rlim_cur = n.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    assert!(limit.rlim_cur >= n, "this test needs {n} descriptors; `ulimit -n` allows {}", limit.rlim_cur);
}

/// `/healthz` on a fresh connection: its status, and how long the answer took.
fn timed_health(http: &str) -> (u16, Duration) {
    let asked = Instant::now();
    let status = http_get(http, "/healthz").0;
    (status, asked.elapsed())
}

#[test]
fn healthz_answers_at_once_with_every_connection_slot_held_by_idle_clients() {
    allow_descriptors(4096);
    let dir = tempfile::tempdir().unwrap();
    // Every slot from one address may be taken here: the total bound is the one tried.
    let config = http_config(dir.path(), "max_connections = 1024\nmax_connections_per_address = 4096\n");
    let hub = HubProc::start_with(&["--config", &config]);
    let metric = |name: &str| prometheus_value(&http_get(&hub.http, "/metrics").1, name).unwrap_or(0);
    // 1 100 clients that connect and send nothing.
    let idle: Vec<TcpStream> = (0..1100).map(|_| TcpStream::connect(&hub.http).unwrap()).collect();
    wait_for("all 1 100 accepted, the oldest idle closed for the newest", 20 * SECOND, || {
        (metric("plantd_http_connections_evicted_total") >= 76).then_some(())
    });
    assert_eq!(metric("plantd_http_connections"), 1024, "the bound holds");
    let (status, took) = timed_health(&hub.http);
    eprintln!("/healthz with 1 024 idle connections open: {status} in {took:?}");
    assert_eq!(status, 200);
    assert!(took < SECOND, "healthz took {took:?}");
    // An idle client is gone as soon as someone needs its slot, not after the 10 s header timeout.
    let mut oldest = idle.into_iter().next().unwrap();
    oldest.set_read_timeout(Some(SECOND)).unwrap();
    let mut buf = [0u8; 1];
    assert!(matches!(oldest.read(&mut buf), Ok(0) | Err(_)), "the oldest idle connection was closed");
    assert_eq!(metric("plantd_http_connections_refused_total"), 0, "nobody was turned away");
}

#[test]
fn raw_connections_from_one_address_are_bounded_and_healthz_still_answers() {
    allow_descriptors(8192);
    let hub = HubProc::start();
    let before = fds(hub.proc.pid());
    // 3 000 TCP connections from 127.0.0.1 that never send a byte.
    let started = Instant::now();
    let raw: Vec<TcpStream> = (0..3000).map(|_| TcpStream::connect(&hub.http).unwrap()).collect();
    let metric = |name: &str| prometheus_value(&http_get(&hub.http, "/metrics").1, name).unwrap_or(0);
    wait_for("all 3 000 accepted", 20 * SECOND, || {
        let turned = metric("plantd_http_connections_evicted_total")
            + metric("plantd_http_connections_refused_per_address_total");
        (turned >= 3000 - 64).then_some(())
    });
    let held = wait_for("the hub to let go of the closed ones", 10 * SECOND, || {
        let held = fds(hub.proc.pid()).saturating_sub(before);
        // The 64 connections, and a few the hub may open meanwhile (a log, a database page).
        (held <= 64 + 8).then_some(held)
    });
    eprintln!("3 000 raw connections in {:?}: the hub holds {held} more descriptors", started.elapsed());
    assert!(metric("plantd_http_connections") <= 64, "the bound holds");
    assert_eq!(metric("plantd_http_addresses"), 1);
    assert_eq!(metric("plantd_http_max_connections_per_address"), 64);
    let (status, took) = timed_health(&hub.http);
    eprintln!("/healthz from the same address: {status} in {took:?}");
    assert_eq!(status, 200);
    assert!(took < SECOND, "healthz took {took:?}");
    drop(raw);
}

#[test]
fn abuse_of_the_http_endpoint_leaves_health_answering_and_memory_bounded() {
    // The total bound is what this tries: one address may take every slot.
    let dir = tempfile::tempdir().unwrap();
    let hub =
        HubProc::start_with(&["--config", &http_config(dir.path(), "max_connections_per_address = 4096\n")]);
    let rss = || testkit::bench::rss_kib(hub.proc.pid());
    let before = rss();
    let connect = || {
        let stream = TcpStream::connect(&hub.http).unwrap();
        stream.set_read_timeout(Some(5 * SECOND)).unwrap();
        stream
    };
    // 500 slowloris clients, half a request each.
    let slow: Vec<TcpStream> = (0..500)
        .map(|_| {
            let mut s = connect();
            s.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ").unwrap();
            s
        })
        .collect();
    // A 10 MB header line: refused past its bound, not buffered.
    let mut huge = connect();
    let _ = huge.write_all(b"GET /healthz HTTP/1.1\r\nX-Big: ");
    let chunk = vec![b'a'; 64 << 10];
    let mut sent = 0;
    while sent < 10 << 20 && huge.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    assert!(sent < 10 << 20, "the hub read a 10 MB header");
    // 200 live streams, open.
    let streams: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = connect();
            write!(s, "GET /api/events HTTP/1.1\r\nHost: {}\r\n\r\n", hub.http).unwrap();
            s
        })
        .collect();
    wait_for("200 streams open", 20 * SECOND, || {
        let text = http_get(&hub.http, "/metrics").1;
        (prometheus_value(&text, "plantd_http_streams")? >= 200).then_some(())
    });
    let asked = Instant::now();
    let (status, _) = http_get(&hub.http, "/healthz");
    assert_eq!(status, 200);
    assert!(asked.elapsed() < SECOND, "healthz took {:?}", asked.elapsed());
    let grown = rss().saturating_sub(before) / 1024;
    eprintln!("hub RSS: {} MiB before, grew {grown} MiB", before / 1024);
    assert!(grown < 40, "hub RSS grew by {grown} MiB under 500 slow clients and 200 streams");
    drop((slow, streams));
}

#[test]
fn the_agent_serves_its_own_health_and_metrics_when_asked() {
    let hub = HubProc::start();
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let metric = hub.bus("metric").frontend.clone();
    let config =
        agent_config(dir.path(), "pump-1", &hub.broker, &metric, &format!("[http]\nlisten = \"{listen}\"\n"));
    let _agent = agent_run(&config);
    let health = wait_for("the agent's /healthz", 20 * SECOND, || {
        TcpStream::connect(&listen).ok()?;
        let (status, body) = http_get(&listen, "/healthz");
        (status == 200).then(|| serde_json::from_str::<Value>(&body).unwrap())
    });
    assert_eq!(health["agent"], "pump-1");
    let parsed = wait_for("a channel's counters", 20 * SECOND, || {
        let parsed = prometheus_parse(&http_get(&listen, "/metrics").1);
        parsed["plantd_agent_channel_samples"]["samples"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
            .then_some(parsed)
    });
    assert_eq!(parsed["plantd_agent_outbox_records"]["type"], "gauge");
    assert_eq!(parsed["plantd_agent_outbox_dropped"]["type"], "counter");
    assert_eq!(parsed["plantd_agent_breaker_open"]["type"], "gauge");
}
