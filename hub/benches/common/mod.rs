//! What the hub's benchmarks share beyond `testkit`: the real `hub serve` as
//! a child process, and endpoints that can be switched to `ipc://`.
#![allow(dead_code)] // each bench uses a different subset

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proto::ingest::{Batch, Reply, Sent};
use testkit::bench::process_cpu_time;
use testkit::Proc;

/// Sends `samples` as one batch from `agent` to the hub's ingest, as an
/// agent's outbox does, and fails the run unless it is acknowledged.
pub fn send_batch(client: &mut transport::Client, agent: &str, samples: Vec<Sent>) {
    let body = Batch { agent: agent.into(), samples, events: Vec::new() }.encode();
    let reply = client.request(proto::ingest::SERVICE, &[&body]).expect("ingest answers");
    let reply = Reply::decode(&reply[0]);
    assert!(matches!(reply, Ok(Reply::Ack { .. })), "{reply:?}");
}

/// A fresh loopback endpoint; `BENCH_TRANSPORT=ipc` makes it an `ipc://` path instead.
pub fn endpoint() -> String {
    if std::env::var("BENCH_TRANSPORT").as_deref() == Ok("ipc") {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        return format!("ipc:///tmp/plantd-bench-{}-{n}.sock", std::process::id());
    }
    testkit::free_endpoint()
}

/// The real `hub serve` binary as a child process (killed on drop), measured like majortomo's.
pub struct HubChild {
    pub proc: Proc,
    pub endpoint: String,
    _data: tempfile::TempDir,
}

impl HubChild {
    pub fn start() -> HubChild {
        Self::start_with(&[])
    }

    /// Starts `hub serve` with extra arguments (its broker on a free endpoint).
    pub fn start_with(extra: &[&str]) -> HubChild {
        let data = tempfile::tempdir().expect("temp dir");
        let endpoint = endpoint();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hub"));
        cmd.args(["serve", "--broker", &endpoint, "--data-dir"]).arg(data.path()).args(extra);
        HubChild { proc: Proc::spawn("hub", cmd), endpoint, _data: data }
    }

    pub fn cpu(&self) -> Duration {
        process_cpu_time(self.proc.pid())
    }
}

/// A hub config with `[security]`: a fresh key pair for the hub and one
/// identity, `bench`, allowed everything; `extra` TOML goes first.
pub struct Secure {
    pub dir: tempfile::TempDir,
    pub config: std::path::PathBuf,
    pub client: transport::curve::ClientKeys,
    /// The hub's key pair, for a bench's own CURVE server.
    pub server: transport::curve::ServerKeys,
}

impl Secure {
    pub fn new(extra: &str) -> Secure {
        use transport::curve::{read_client_keys, write_new_pair};
        let dir = tempfile::tempdir().expect("temp dir");
        let (clients, keys) = (dir.path().join("clients"), dir.path().join("keys"));
        std::fs::create_dir_all(&clients).unwrap();
        let (hub_public, hub_secret) = write_new_pair(&keys, "hub", "bench").unwrap();
        let (bench_public, bench_secret) = write_new_pair(&keys, "bench", "bench").unwrap();
        std::fs::copy(&bench_public, clients.join("bench.key")).unwrap();
        let config = dir.path().join("hub.toml");
        let text = format!(
            "{extra}\n[security]\nserver_cert = \"{}\"\nclients_dir = \"{}\"\n\n[security.identities]\nbench = [\"everything\"]\n\n[security.roles.everything]\nprovide = [\"*\"]\ncall = [\"*\"]\npublish = {{ \"*\" = [\"\"] }}\nsubscribe = {{ \"*\" = [\"\"] }}\n",
            hub_secret.display(),
            clients.display()
        );
        std::fs::write(&config, text).unwrap();
        let client = read_client_keys(&bench_secret, &hub_public).unwrap();
        let server = transport::curve::read_key_pair(&hub_secret).unwrap();
        Secure { dir, config, client, server }
    }

    pub fn endpoint(&self, address: &str) -> transport::Endpoint {
        transport::Endpoint::curve(address, self.client.clone())
    }
}
