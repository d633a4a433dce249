//! The NATS bridge against real nats-servers (JetStream on): sites exporting
//! into one stream each sample once and in order, through hub crashes, a NATS
//! outage and the loss of a cluster node; requests from NATS answered.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);
const STREAM: &str = "PLANTD";

/// A hub with `[bridge.nats]` (plus `extra` keys in that table) for `site`,
/// and one agent of `channels` durable ramp channels sampled every `period_ms`.
struct Plant {
    dir: tempfile::TempDir,
    hub: Option<HubProc>,
    hub_config: PathBuf,
    broker: String,
    agent: Proc,
    agent_data: PathBuf,
    agent_id: String,
}

impl Plant {
    fn start(
        site: &str,
        servers: &[String],
        extra: &str,
        agent: &str,
        channels: usize,
        period_ms: u64,
    ) -> Plant {
        Plant::start_with(site, servers, extra, agent, "", channels, period_ms)
    }

    /// [`Plant::start`] with `agent_extra` at the top of the agent's config body.
    fn start_with(
        site: &str,
        servers: &[String],
        extra: &str,
        agent_id: &str,
        agent_extra: &str,
        channels: usize,
        period_ms: u64,
    ) -> Plant {
        let dir = tempfile::tempdir().unwrap();
        let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
        let hub_config = dir.path().join("hub.toml");
        let text = format!(
            "[bridge.nats]\nservers = [{}]\nsite = \"{site}\"\nstream = \"{STREAM}\"\n{extra}\n",
            servers.join(", ")
        );
        std::fs::write(&hub_config, text).unwrap();
        let (ports, broker) = (HubPorts::new(), free_endpoint());
        let metric = ports.buses["metric"].frontend.clone();
        let data = tempfile::tempdir().unwrap();
        let hub =
            HubProc::start_with_ports(data, &broker, ports, &["--config", hub_config.to_str().unwrap()]);
        let body: String = std::iter::once(agent_extra.to_string())
            .chain((0..channels)
            .map(|i| format!("[[channel]]\nname = \"c{i}\"\nperiod_ms = {period_ms}\ndriver = {{ kind = \"ramp\" }}\n\n")))
            .collect();
        let config = agent_config(dir.path(), agent_id, &broker, &metric, &body);
        let agent = agent_run(&config);
        let agent_data = dir.path().join(format!("{agent_id}-data"));
        Plant { dir, hub: Some(hub), hub_config, broker, agent, agent_data, agent_id: agent_id.into() }
    }

    fn hub(&self) -> &HubProc {
        self.hub.as_ref().expect("the hub is running")
    }

    /// `hub bridge status`, as JSON.
    fn bridge(&self) -> Value {
        let reply =
            self.hub().try_call("org.plantd.Hub", &["bridge"], 2 * SECOND).expect("org.plantd.Hub answers");
        serde_json::from_str(&reply[0]).expect("bridge status is JSON")
    }

    fn wait_bridge<T>(&self, what: &str, timeout: Duration, check: impl Fn(&Value) -> Option<T>) -> T {
        wait_for(what, timeout, || check(&self.bridge()))
    }

    /// SIGKILL, then a restart on the same data directory and ports.
    fn crash_and_restart_hub(&mut self) {
        let hub = self.hub.take().unwrap();
        let ports = hub.ports();
        let HubProc { mut proc, data, .. } = hub;
        proc.signal(libc::SIGKILL);
        proc.wait_exit(5 * SECOND).expect("the hub dies on SIGKILL");
        let config = self.hub_config.to_str().unwrap().to_string();
        self.hub = Some(HubProc::start_with_ports(data, &self.broker, ports, &["--config", &config]));
    }

    /// (epoch, seq): every durable sample the agent made up to seq has been
    /// made (the agent keeps running and making more).
    fn made_so_far(&self) -> (u64, u64) {
        wait_for_status(&self.agent_data, "the agent's status", 10 * SECOND, |s| {
            let v = &s["outbox"]["last_appended"];
            Some((v[0].as_u64()?, v[1].as_u64()?))
        })
    }
}

/// Waits until `url`'s stream holds every durable sample of `site`'s agent up
/// to `upto` of `epoch`; returns the whole stream then.
fn wait_stream_holds(url: &str, sites: &[(&Plant, &str, (u64, u64))], timeout: Duration) -> Vec<Stored> {
    wait_for("the stream to hold every sample made", timeout, || {
        let stored = read_stream(url, STREAM);
        let all = sites.iter().all(|(site, name, (epoch, upto))| {
            let have: HashSet<u64> =
                of_agent(&stored, name, &site.agent_id, *epoch).map(|m| m.number("Plantd-Seq")).collect();
            (1..=*upto).all(|q| have.contains(&q))
        });
        all.then_some(stored)
    })
}

fn of_agent<'a>(
    stored: &'a [Stored],
    site: &'a str,
    agent: &'a str,
    epoch: u64,
) -> impl Iterator<Item = &'a Stored> {
    stored.iter().filter(move |m| {
        m.header("Plantd-Site") == site
            && m.header("Plantd-Agent") == agent
            && m.number("Plantd-Epoch") == epoch
    })
}

/// Each sample once (by its deduplication id), each agent's samples in the
/// order it made them, and from 1 without a gap; every message as the bus
/// carried it, its subject and headers matching its payload.
fn assert_once_in_order(stored: &[Stored], site: &str, agent: &str, epoch: u64) -> u64 {
    let mut ids = HashSet::new();
    for m in stored.iter().filter(|m| !m.msg_id.is_empty()) {
        assert!(ids.insert(m.msg_id.clone()), "{} stored twice", m.msg_id);
    }
    let mut last = 0;
    let mut last_per_channel: BTreeMap<String, u64> = BTreeMap::new();
    for m in of_agent(stored, site, agent, epoch) {
        let seq = m.number("Plantd-Seq");
        assert_eq!(seq, last + 1, "{site}/{agent}: seq {seq} stored after {last}");
        last = seq;
        let channel = m.payload["channel"].as_str().expect("a sample's payload names its channel");
        assert_eq!(m.subject, format!("plantd.{site}.metric.{agent}.{channel}"));
        assert_eq!(m.msg_id, format!("{site}/{agent}/{epoch}/{seq}"));
        assert_eq!((m.payload["seq"].as_u64(), m.payload["epoch"].as_u64()), (Some(seq), Some(epoch)));
        assert_eq!((m.payload["agent"].as_str(), m.payload["durable"].as_bool()), (Some(agent), Some(true)));
        assert_eq!(m.header("Plantd-Durable"), "true");
        let previous = last_per_channel.insert(channel.to_string(), seq).unwrap_or(0);
        assert!(seq > previous);
    }
    last
}

#[test]
fn two_sites_export_into_one_stream_each_sample_once_in_order_through_a_hub_crash() {
    let store = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(store.path());
    let servers = [nats.url()];
    // No bus subscriber anywhere: the bridge alone is the consumer ingest waits for.
    let mut a = Plant::start("plant-a", &servers, "", "pump-1", 2, 10);
    let b = Plant::start("plant-b", &servers, "", "pump-1", 1, 10);
    a.wait_bridge("plant-a to export 200 samples", 30 * SECOND, |s| {
        (s["acked"].as_u64()? >= 200).then_some(())
    });
    a.crash_and_restart_hub();
    a.wait_bridge("plant-a to export again after its crash", 30 * SECOND, |s| {
        (s["acked"].as_u64()? >= 100).then_some(())
    });
    let (made_a, made_b) = (a.made_so_far(), b.made_so_far());
    let stored =
        wait_stream_holds(&nats.url(), &[(&a, "plant-a", made_a), (&b, "plant-b", made_b)], 60 * SECOND);
    assert!(assert_once_in_order(&stored, "plant-a", "pump-1", made_a.0) >= made_a.1);
    assert!(assert_once_in_order(&stored, "plant-b", "pump-1", made_b.0) >= made_b.1);
    let status = a.bridge();
    assert_eq!(status["connected"], true, "{status}");
    assert_eq!(status["stream"], STREAM);
    // `hub bridge status` for operators.
    let out = hub_cli(&["bridge", "status", "--broker", &a.broker]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("server:") && text.contains("cursor:"), "{text}");
    drop(a.dir);
}

#[test]
fn a_nats_outage_fills_the_bounded_backlog_then_agents_buffer_and_it_drains_paced() {
    let store = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start(store.path());
    let (max_backlog, max_rate) = (300, 400);
    let extra =
        format!("max_backlog_records = {max_backlog}\nmax_rate = {max_rate}\npublish_timeout_ms = 1000");
    let batch = 50;
    let uplink = format!("[uplink]\nbatch_records = {batch}\nbackoff_max_ms = 500\n\n");
    let site = Plant::start_with("plant-a", &[nats.url()], &extra, "pump-1", &uplink, 1, 10);
    site.wait_bridge("the first exports", 30 * SECOND, |s| (s["acked"].as_u64()? >= 100).then_some(()));

    nats.kill();
    let mut deepest = 0;
    wait_for("the backlog to fill and ingest to push back", 60 * SECOND, || {
        let status = site.bridge();
        let backlog = status["backlog"]["records"].as_u64()?;
        // Bounded, give or take the one batch an empty journal takes whatever its size.
        assert!(backlog <= max_backlog + batch, "backlog {backlog} past its bound {max_backlog}");
        deepest = deepest.max(backlog);
        let pushed_back = site.hub().metric("plantd_ingest_batches_export_full_total") > 0;
        let agent_holds = agent_status(&site.agent_data)?["outbox"]["records"].as_u64()? >= 200;
        (backlog + 10 >= max_backlog && pushed_back && agent_holds).then_some(())
    });
    let status = site.bridge();
    assert_eq!(status["connected"], false, "{status}");
    assert!(status["last_error"].is_string(), "{status}");

    nats.restart();
    let acked_at_restart = site.bridge()["acked"].as_u64().unwrap();
    let restarted = Instant::now();
    wait_for("the backlog to drain", 60 * SECOND, || {
        let status = site.bridge();
        let drained = status["backlog"]["records"].as_u64()? <= 5;
        let agent_drained = agent_status(&site.agent_data)?["outbox"]["records"].as_u64()? <= 20;
        (drained && agent_drained).then_some(())
    });
    // Paced: never faster than max_rate a second, after one second's burst.
    let drained_in = restarted.elapsed().as_secs_f64();
    let acked = site.bridge()["acked"].as_u64().unwrap() - acked_at_restart;
    assert!(
        (acked as f64) <= max_rate as f64 * (drained_in + 1.0) + 256.0,
        "{acked} acknowledged in {drained_in:.1} s at max_rate {max_rate}"
    );
    let made = site.made_so_far();
    let stored = wait_stream_holds(&nats.url(), &[(&site, "plant-a", made)], 60 * SECOND);
    assert!(assert_once_in_order(&stored, "plant-a", "pump-1", made.0) >= made.1);
    assert!(deepest > 0);
}

#[test]
fn a_three_node_cluster_loses_the_node_in_use_and_the_stream_keeps_every_sample_once() {
    let store = tempfile::tempdir().unwrap();
    let mut cluster = NatsServer::cluster(3, store.path());
    let servers: Vec<String> = cluster.iter().map(NatsServer::url).collect();
    let mut site = Plant::start("plant-a", &servers, "replicas = 3", "pump-1", 2, 10);
    let status = site
        .wait_bridge("the first exports", 60 * SECOND, |s| (s["acked"].as_u64()? >= 200).then(|| s.clone()));
    let in_use: u16 =
        status["server"].as_str().and_then(|s| s.rsplit(':').next()?.parse().ok()).expect("a server");
    let node = cluster.iter().position(|n| n.port == in_use).expect("the node in use is one of ours");
    cluster[node].kill();
    let acked = site.bridge()["acked"].as_u64().unwrap();
    site.wait_bridge("exports through another node", 60 * SECOND, |s| {
        (s["acked"].as_u64()? >= acked + 200 && s["server"].as_str()? != status["server"].as_str()?)
            .then_some(())
    });
    site.crash_and_restart_hub();
    site.wait_bridge("exports after the hub's crash", 60 * SECOND, |s| {
        (s["acked"].as_u64()? >= 100).then_some(())
    });
    cluster[node].restart();
    let acked = site.bridge()["acked"].as_u64().unwrap();
    site.wait_bridge("exports with the node back", 60 * SECOND, |s| {
        (s["acked"].as_u64()? >= acked + 100).then_some(())
    });
    let survivor = cluster.iter().find(|n| n.port != in_use).unwrap().url();
    let made = site.made_so_far();
    let stored = wait_stream_holds(&survivor, &[(&site, "plant-a", made)], 60 * SECOND);
    assert!(assert_once_in_order(&stored, "plant-a", "pump-1", made.0) >= made.1);
}

/// One request over NATS: (Plantd-Status, Plantd-Frames, body).
fn nats_request(url: &str, subject: &str, body: &str, json_frames: bool) -> (String, String, String) {
    with_nats(url, async |client| {
        let mut headers = async_nats::HeaderMap::new();
        if json_frames {
            headers.insert("Plantd-Frames", "json");
        }
        let request = client.request_with_headers(subject.to_string(), headers, body.to_string().into());
        let reply = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .expect("a reply within 10 s")
            .expect("a reply");
        let header = |name: &str| {
            reply.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.to_string()).unwrap_or_default()
        };
        (
            header("Plantd-Status"),
            header("Plantd-Frames"),
            String::from_utf8_lossy(&reply.payload).into_owned(),
        )
    })
}

#[test]
fn central_systems_call_site_services_over_nats_with_clear_statuses() {
    let store = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(store.path());
    let site = Plant::start("plant-a", &[nats.url()], "rpc_timeout_ms = 500", "pump-1", 1, 100);
    let _worker = echo_worker(&site.broker, "echo", &[]);
    site.hub().wait_for_service("echo");
    site.hub().wait_for_service("org.plantd.Agent.pump-1");
    let url = nats.url();
    site.wait_bridge("the bridge to connect", 30 * SECOND, |s| (s["connected"] == true).then_some(()));

    assert_eq!(
        nats_request(&url, "plantd.plant-a.rpc.echo", "hello", false),
        ("200".into(), "".into(), "hello".into())
    );
    let (status, frames, body) = nats_request(&url, "plantd.plant-a.rpc.echo", r#"["a","b"]"#, true);
    assert_eq!((status.as_str(), frames.as_str(), body.as_str()), ("200", "json", r#"["a","b"]"#));
    let (status, _, body) = nats_request(&url, "plantd.plant-a.rpc.org.plantd.Agent.pump-1", "status", false);
    assert_eq!(status, "200", "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["id"], "pump-1", "{body}");

    let started = Instant::now();
    let (status, _, body) = nats_request(&url, "plantd.plant-a.rpc.nobody", "x", false);
    assert_eq!(status, "504", "{body}");
    assert!(body.contains("no reply from nobody"), "{body}");
    assert!(started.elapsed() < 5 * SECOND);
    let (status, _, body) = nats_request(&url, "plantd.plant-a.rpc.echo", "not json", true);
    assert_eq!(status, "400", "{body}");

    // An agent that is gone: no reply, and a clear timeout.
    let mut site = site;
    site.agent.kill();
    let (status, _, body) = nats_request(&url, "plantd.plant-a.rpc.org.plantd.Agent.pump-1", "status", false);
    assert_eq!(status, "504", "{body}");
    assert!(body.contains("no reply from org.plantd.Agent.pump-1 within 500 ms"), "{body}");

    let rpc = &site.bridge()["rpc"];
    assert_eq!((rpc["requests"].as_u64(), rpc["timeouts"].as_u64()), (Some(6), Some(2)), "{rpc}");
}

#[test]
fn with_security_requests_from_nats_are_made_as_rpc_identity_and_refused_beyond_it() {
    let store = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(store.path());
    let site = Site::new();
    let extra = format!(
        "[bridge.nats]\nservers = [\"{}\"]\nsite = \"plant-a\"\nrpc_identity = \"central\"\nrpc_timeout_ms = 500",
        nats.url()
    );
    let hub = site.hub("\"central\" = [\"viewer\"]", &extra);
    let url = nats.url();
    wait_for("the bridge to answer", 30 * SECOND, || {
        let (status, _, body) = nats_request(&url, "plantd.plant-a.rpc.org.plantd.Hub", "agents", false);
        (status == "200").then_some(body)
    });
    let (status, _, body) = nats_request(&url, "plantd.plant-a.rpc.echo", "hello", false);
    assert_eq!(status, "403", "{body}");
    assert!(body.contains("central may not"), "{body}");
    hub.wait_denied("central", "call");
}
