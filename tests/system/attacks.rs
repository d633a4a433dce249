//! Attacks by a peer holding a low-privileged key (a viewer's, an agent's)
//! against a hub with security: each is bounded, counted against the
//! attacker's identity, and leaves the hub and every agent working.

use std::time::Duration;

use proto::mdp::Dialect;
use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);
const MIB: u64 = 1024;

/// A running sim agent of `site` with one channel, and where its data is.
struct Agent {
    proc: Proc,
    config: std::path::PathBuf,
    data: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start(site: &Site, hub: &HubProc, id: &Identity) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let body = format!(
            "{}\n[[channel]]\nname = \"t\"\nperiod_ms = 200\ndriver = {{ kind = \"sine\" }}\n",
            site.agent_keys(id)
        );
        let config = agent_config(dir.path(), &id.name, &hub.broker, &hub.bus("metric").frontend, &body);
        let data = dir.path().join(format!("{}-data", id.name));
        Agent { proc: agent_run(&config), config, data, _dir: dir }
    }

    fn wait_up(&self) {
        wait_for_status(&self.data, "the agent's link to come up", 20 * SECOND, |s| {
            (s["link"]["state"] == "up").then_some(())
        });
    }

    fn rss_kib(&self) -> u64 {
        testkit::bench::rss_kib(self.proc.pid())
    }
}

/// Waits for `listener` to hear an agent's sample.
fn hears_a_sample(listener: &mut transport::Subscriber, what: &str) {
    wait_for(what, 10 * SECOND, || {
        let message = listener.recv(Duration::from_millis(100)).ok().flatten();
        message.filter(|m| m.topic.starts_with(b"org.plantd.Metric.pump-"))
    });
}

/// A subscription prefix of `len` bytes, unique for (`conn`, `i`).
fn long_prefix(conn: usize, i: usize, len: usize) -> Vec<u8> {
    let mut prefix = format!("org.plantd.Metric.{conn:02}.{i:04}.").into_bytes();
    prefix.resize(len, b'x');
    prefix
}

/// Finding 1 of issue 19: as a viewer, 40 connections × 1 000 subscriptions
/// of 170-byte prefixes. Agents never see a subscriber's subscriptions, the
/// hub holds at most the viewer's share and gives the memory back, other
/// subscribers go on hearing samples, and the refusals are counted against
/// the viewer.
#[test]
fn a_viewer_flooding_subscriptions_costs_agents_nothing_and_the_hub_a_bounded_amount() {
    let site = Site::new();
    let (attacker, scada) = (site.identity("grafana"), site.identity("scada"));
    let pumps = [site.identity("pump-1"), site.identity("pump-2")];
    let hub = site.hub("\"grafana\" = [\"viewer\"]\n\"scada\" = [\"viewer\"]\n\"pump-*\" = [\"agent\"]", "");
    let agents: Vec<Agent> = pumps.iter().map(|id| Agent::start(&site, &hub, id)).collect();
    agents.iter().for_each(Agent::wait_up);
    let metric = hub.bus("metric").clone();

    // A real subscriber, there before and after the attack.
    let ctx = zmq::Context::new();
    let mut listener = transport::Subscriber::connect(
        &ctx,
        site.endpoint(&scada, &metric.backend),
        &[b"org.plantd.Metric."],
    )
    .unwrap();
    hears_a_sample(&mut listener, "the real subscriber to hear a sample");
    let (hub_idle, agents_idle) =
        (testkit::bench::rss_kib(hub.proc.pid()), agents.iter().map(Agent::rss_kib).collect::<Vec<_>>());

    // 40 connections, all of them in before the first subscription (so
    // holding the viewer off new connections cannot help), then the flood.
    let attack = zmq::Context::new();
    let (subscribers, monitors): (Vec<zmq::Socket>, Vec<zmq::Socket>) = (0..40)
        .map(|c| {
            let sub = attack.socket(zmq::SUB).unwrap();
            // No high-water mark: every subscription goes out.
            sub.set_sndhwm(0).unwrap();
            sub.set_linger(0).unwrap();
            transport::curve::make_client(&sub, &site.keys(&attacker)).unwrap();
            // Told when it is in, and when the hub cuts it off (closes it, or
            // refuses it at the handshake).
            let events = format!("inproc://attacker-{c}");
            sub.monitor(&events, zmq::SocketEvent::ALL as i32).unwrap();
            let monitor = attack.socket(zmq::PAIR).unwrap();
            monitor.connect(&events).unwrap();
            sub.connect(&metric.backend).unwrap();
            (sub, monitor)
        })
        .unzip();
    let cut_off = [zmq::SocketEvent::DISCONNECTED, zmq::SocketEvent::HANDSHAKE_FAILED_AUTH];
    let mut seen = vec![Vec::new(); monitors.len()];
    let watch = |seen: &mut Vec<Vec<u16>>| {
        for (events, monitor) in seen.iter_mut().zip(&monitors) {
            while let Ok(event) = monitor.recv_multipart(zmq::DONTWAIT) {
                events.extend(event[0].get(..2).map(|e| u16::from_le_bytes([e[0], e[1]])));
            }
        }
    };
    let has =
        |events: &[u16], wanted: &[zmq::SocketEvent]| wanted.iter().any(|w| events.contains(&(*w as u16)));
    wait_for("every attacking connection to be in", 20 * SECOND, || {
        watch(&mut seen);
        seen.iter().all(|events| has(events, &[zmq::SocketEvent::HANDSHAKE_SUCCEEDED])).then_some(())
    });
    for (c, sub) in subscribers.iter().enumerate() {
        for i in 0..1000 {
            sub.set_subscribe(&long_prefix(c, i, 170)).unwrap();
        }
    }
    // Each connection goes over the viewer's bounds and is closed, and its
    // reconnection is refused at the handshake while the viewer is held off.
    // Wait until every one was cut off, watching everyone's memory meanwhile.
    let (mut hub_peak, mut agents_peak) = (hub_idle, agents_idle.clone());
    let mut peaks = || {
        hub_peak = hub_peak.max(testkit::bench::rss_kib(hub.proc.pid()));
        for (peak, agent) in agents_peak.iter_mut().zip(&agents) {
            *peak = (*peak).max(agent.rss_kib());
        }
    };
    wait_for("every flooding connection to be cut off", 60 * SECOND, || {
        peaks();
        watch(&mut seen);
        seen.iter().all(|events| has(events, &cut_off)).then_some(())
    });
    assert!(hub.denials("grafana", "connect") > 0, "the viewer was held off at the handshake");
    assert!(hub.denials("grafana", "subscribe") > 0, "refused subscriptions are counted against the viewer");
    hears_a_sample(&mut listener, "the real subscriber to hear samples during the flood");
    let held =
        prometheus_value(&http_get(&hub.http, "/metrics").1, "plantd_bus_subscription_bytes{bus=\"metric\"}");
    peaks();
    assert!(held.unwrap() <= 64 * 1024 + 64, "the viewer holds at most its share of prefix bytes: {held:?}");
    for (i, (idle, peak)) in agents_idle.iter().zip(&agents_peak).enumerate() {
        assert!(peak <= &(idle + 2 * MIB), "agent {i}: RSS {idle} → {peak} KiB under the flood");
    }
    // A transient peak: libzmq 4.3.4's XPUB drains each connection's
    // subscription messages into a queue of its own (unbounded) before the
    // proxy reads them and cuts the connection, so how much piles up depends
    // on how soon the bus thread runs. Measured on a busy 2-core machine: +7
    // to +24 MiB usually, +57 to +102 MiB in about one run in three (the
    // flood is 6.8 MB of prefixes); it is all given back below. The bound
    // catches growth with the flood, not that spread.
    assert!(hub_peak <= hub_idle + 160 * MIB, "hub RSS {hub_idle} → {hub_peak} KiB under the flood");

    // The attacker leaves: its subscriptions go, and the memory with them.
    drop((subscribers, monitors));
    drop(attack);
    wait_for("the viewer's subscriptions to be released", 20 * SECOND, || {
        let text = http_get(&hub.http, "/metrics").1;
        (prometheus_value(&text, "plantd_bus_subscriptions{bus=\"metric\"}") == Some(1)).then_some(())
    });
    // Freed heap goes back to the system at most once a second, and not all
    // of it (fragmentation): after a +100 MiB peak, +2 to +12 MiB stays.
    let given_back = wait_for("the hub to give the memory back", 20 * SECOND, || {
        let rss = testkit::bench::rss_kib(hub.proc.pid());
        (rss <= hub_idle + 16 * MIB).then_some(rss)
    });
    eprintln!("hub RSS: idle {hub_idle} KiB, peak {hub_peak} KiB, after {given_back} KiB; agents idle {agents_idle:?}, peak {agents_peak:?} KiB");
    hears_a_sample(&mut listener, "the real subscriber to hear samples after the flood");
}

/// Finding 2 of issue 19: a viewer's requests for 1 000 made-up agent names
/// filled the broker's service table, so that a restarted agent was refused
/// for ever (and said two controllers shared its id). Now such names are
/// bounded per identity, answered "404" past the bound and counted; the
/// agent registers again at once.
#[test]
fn requests_for_ghost_services_leave_a_restarted_agent_able_to_register() {
    let site = Site::new();
    let (attacker, pump) = (site.identity("grafana"), site.identity("pump-1"));
    let hub = site.hub("\"grafana\" = [\"viewer\"]\n\"pump-*\" = [\"agent\"]", "");
    let mut agent = Agent::start(&site, &hub, &pump);
    agent.wait_up();
    hub.wait_for_service("org.plantd.Agent.pump-1");

    let ctx = zmq::Context::new();
    let mut flood =
        transport::PipelinedClient::connect(&ctx, site.endpoint(&attacker, &hub.broker), Dialect::Rfc7)
            .unwrap();
    for i in 0..1000 {
        flood.send(format!("org.plantd.Agent.ghost{i}").as_bytes(), [&b"status"[..]]).unwrap();
    }
    let mut not_found = 0;
    wait_for("the ghost requests past the bound to be answered 404", 20 * SECOND, || {
        while let Ok(Some(reply)) = flood.recv(Duration::from_millis(50)) {
            not_found += usize::from(reply.body.first().is_some_and(|f| &f[..] == b"404"));
        }
        (not_found >= 1000 - 16).then_some(())
    });
    assert!(hub.denials("grafana", "service") >= 1000 - 16, "counted against the viewer");

    // The agent restarts while the ghost names still wait: it registers at once.
    agent.proc.signal(libc::SIGTERM);
    assert!(agent.proc.wait_exit(20 * SECOND).is_some_and(|s| s.success()));
    hub.wait_for_no_service("org.plantd.Agent.pump-1", 20 * SECOND);
    agent.proc = agent_run(&agent.config);
    hub.wait_for_service("org.plantd.Agent.pump-1");
    let status = hub.try_call("org.plantd.Agent.pump-1", &["status"], 5 * SECOND).expect("the agent answers");
    assert!(status[0].contains("pump-1"), "{status:?}");
}

/// An agent whose key may not provide its service is told why, not that
/// another controller has its id.
#[test]
fn an_agent_refused_its_service_says_the_real_reason() {
    let site = Site::new();
    let pump = site.identity("pump-9");
    // pump-9 may reach the broker (as a viewer) but provide nothing.
    let hub = site.hub("\"pump-9\" = [\"viewer\"]", "");
    let agent = Agent::start(&site, &hub, &pump);
    let said = wait_for("the agent to say why the hub refuses its service", 60 * SECOND, || {
        let log = agent.proc.stderr();
        log.contains("the hub refuses org.plantd.Agent.pump-9").then_some(log)
    });
    assert!(said.contains("may not provide it"), "{said}");
    assert!(!said.contains("share the id"), "{said}");
}

/// Finding 5 of issue 19: plaintext peers and peers with the wrong server
/// key failed their handshakes uncounted and unlogged, and raw connections
/// that never start one held a descriptor each for libzmq's 30 s.
#[test]
fn every_kind_of_failed_handshake_is_counted_and_raw_connections_do_not_linger() {
    let mut site = Site::new();
    site.security_extra = "handshake_timeout_ms = 500".into();
    let hub = site.hub("\"pump-*\" = [\"agent\"]", "");
    let failures = |kind: &str| hub.metric_with("plantd_handshake_failures_total", &[("kind", kind)]);
    let ctx = zmq::Context::new();

    // Plaintext peers, on the broker and on a bus, one more each turn below:
    // where a plaintext peer sees the mismatch first and hangs up, the hub
    // cannot tell why, and counts a bad handshake.
    let mut plain = Vec::new();
    let mut one_more_plaintext_peer = || {
        for endpoint in [&hub.broker, &hub.bus("metric").frontend] {
            let socket = ctx.socket(zmq::DEALER).unwrap();
            socket.set_linger(0).unwrap();
            socket.connect(endpoint).unwrap();
            plain.push(socket);
        }
    };
    // A CURVE client that has the wrong server key.
    let stranger_hub = transport::curve::generate().unwrap();
    let me = transport::curve::generate().unwrap();
    let wrong = ctx.socket(zmq::DEALER).unwrap();
    wrong.set_linger(0).unwrap();
    let keys =
        transport::curve::ClientKeys { public: me.public, secret: me.secret, server: stranger_hub.public };
    transport::curve::make_client(&wrong, &keys).unwrap();
    wrong.connect(&hub.broker).unwrap();
    // A key the hub does not know.
    let stranger = site.stranger("stranger");
    let unknown = ctx.socket(zmq::DEALER).unwrap();
    unknown.set_linger(0).unwrap();
    transport::curve::make_client(&unknown, &site.keys(&stranger)).unwrap();
    unknown.connect(&hub.broker).unwrap();
    wait_for("each kind of failed handshake to be counted", 20 * SECOND, || {
        one_more_plaintext_peer();
        (failures("plaintext") >= 1 && failures("bad_handshake") >= 1 && failures("unknown_key") >= 1)
            .then_some(())
    });
    // Logged, at most once per log_interval_ms for all peers without an identity
    // (the line can come a moment after the counters).
    wait_for("the failed handshake to be logged", 10 * SECOND, || {
        hub.proc.stderr().contains("denied (unknown) (connect): a failed CURVE handshake").then_some(())
    });

    // 300 raw TCP connections that never start a handshake: the hub closes
    // each after handshake_timeout_ms, rather than hold it for libzmq's 30 s.
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", hub.proc.pid())).unwrap().count();
    let before = fds();
    let address = hub.broker.trim_start_matches("tcp://");
    let started = std::time::Instant::now();
    let raw: Vec<std::net::TcpStream> =
        (0..300).map(|_| std::net::TcpStream::connect(address).unwrap()).collect();
    for mut stream in &raw {
        use std::io::Read;
        stream.set_read_timeout(Some(10 * SECOND)).unwrap();
        let mut byte = [0u8; 64];
        // libzmq sends its greeting, then closes: read to the end.
        while matches!(stream.read(&mut byte), Ok(n) if n > 0) {}
    }
    assert!(started.elapsed() < 10 * SECOND, "all closed by the hub in {:?}", started.elapsed());
    wait_for("the hub's descriptors to be back", 10 * SECOND, || (fds() <= before + 10).then_some(()));
    drop(raw);
}

/// Finding 5 of issue 19: an agent could publish, on its own topic, a
/// payload claiming another agent's id (only the topic was checked).
#[test]
fn a_payload_may_not_claim_another_agents_id() {
    let site = Site::new();
    let (pump, viewer) = (site.identity("pump-1"), site.identity("grafana"));
    let hub = site.hub("\"pump-*\" = [\"agent\"]\n\"grafana\" = [\"viewer\"]", "");
    let metric = hub.bus("metric").clone();
    let ctx = zmq::Context::new();
    let mut listener = transport::Subscriber::connect(
        &ctx,
        site.endpoint(&viewer, &metric.backend),
        &[b"org.plantd.Metric."],
    )
    .unwrap();
    let publisher = transport::Publisher::connect(
        &ctx,
        site.endpoint(&pump, &metric.frontend),
        proto::bus::Framing::TwoFrame,
    )
    .unwrap();
    let topic = b"org.plantd.Metric.pump-1.temp";
    // Publish until the subscription has reached the hub and a true claim arrives.
    wait_for("a sample that names its own agent to arrive", 10 * SECOND, || {
        publisher.publish(topic, br#"{"agent":"pump-1","seq":1}"#).unwrap();
        listener.recv(Duration::from_millis(100)).ok().flatten()
    });
    for forged in [&br#"{"agent":"pump-2","seq":2}"#[..], br#"{"agent":"pump-1","agent":"pump-2"}"#] {
        publisher.publish(topic, forged).unwrap();
    }
    publisher.publish(topic, br#"{"agent":"pump-1","seq":3}"#).unwrap();
    let mut seen = Vec::new();
    wait_for("the sample after the forgeries to arrive", 10 * SECOND, || {
        let message = listener.recv(Duration::from_millis(100)).ok().flatten()?;
        seen.push(String::from_utf8_lossy(&message.payload).into_owned());
        message.payload.ends_with(b"\"seq\":3}").then_some(())
    });
    assert!(seen.iter().all(|p| !p.contains("pump-2")), "a forged claim got through: {seen:?}");
    hub.wait_denied("pump-1", "publish");
    assert!(hub.denials("pump-1", "publish") >= 2);
}
