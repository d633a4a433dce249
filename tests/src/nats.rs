//! Real NATS servers (Debian's `nats-server`, JetStream on) for the bridge's
//! tests, alone or as a cluster, and a reader of what a stream holds.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testkit::{free_port, nats_server_binary, wait_for, Proc};

use crate::http_get;

/// One nats-server with JetStream on 127.0.0.1, its store in a directory
/// that outlives restarts; killed when dropped.
pub struct NatsServer {
    pub name: String,
    pub port: u16,
    monitor: u16,
    args: Vec<String>,
    proc: Option<Proc>,
}

impl NatsServer {
    /// A single server storing under `store`.
    pub fn start(store: &Path) -> NatsServer {
        let mut server = NatsServer::new("n0", store, &[]);
        server.restart();
        server
    }

    /// `size` servers in one JetStream cluster, each storing under `store/<name>`.
    pub fn cluster(size: usize, store: &Path) -> Vec<NatsServer> {
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let urls: Vec<String> = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
        let mut servers: Vec<NatsServer> = (0..size)
            .map(|i| {
                let cluster = [
                    "--cluster_name".to_string(),
                    "plantd-test".into(),
                    "--cluster".into(),
                    urls[i].clone(),
                    "--routes".into(),
                    urls.join(","),
                ];
                NatsServer::new(&format!("n{i}"), &store.join(format!("n{i}")), &cluster)
            })
            .collect();
        for server in &mut servers {
            server.spawn();
        }
        for server in &servers {
            server.wait_ready();
        }
        servers
    }

    fn new(name: &str, store: &Path, extra: &[String]) -> NatsServer {
        let (port, monitor) = (free_port(), free_port());
        let mut args: Vec<String> = ["-a", "127.0.0.1", "-js", "-n", name].map(String::from).to_vec();
        args.extend(["-p".into(), port.to_string(), "-m".into(), monitor.to_string()]);
        args.extend(["-sd".into(), store.display().to_string()]);
        args.extend(extra.iter().cloned());
        NatsServer { name: name.into(), port, monitor, args, proc: None }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it (again, on the same ports and store) and waits until it is ready.
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(nats_server_binary());
        cmd.args(&self.args);
        self.proc = Some(Proc::spawn(&format!("nats-server {}", self.name), cmd));
    }

    /// Ready: its monitor's /healthz (JetStream current, in a cluster a
    /// meta leader known) answers 200.
    fn wait_ready(&self) {
        let monitor = format!("127.0.0.1:{}", self.monitor);
        wait_for(&format!("nats-server {} to be ready", self.name), Duration::from_secs(30), || {
            (std::net::TcpStream::connect(&monitor).is_ok() && http_get(&monitor, "/healthz").0 == 200)
                .then_some(())
        });
    }

    /// SIGKILL: no goodbye to the cluster or the clients.
    pub fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.signal(libc::SIGKILL);
            proc.wait_exit(Duration::from_secs(10)).expect("nats-server dies on SIGKILL");
        }
    }
}

/// A message in a JetStream stream, as the bridge's headers describe it.
#[derive(Clone, Debug)]
pub struct Stored {
    pub subject: String,
    pub msg_id: String,
    pub headers: HashMap<String, String>,
    pub payload: serde_json::Value,
}

impl Stored {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    pub fn number(&self, name: &str) -> u64 {
        self.header(name).parse().unwrap_or(0)
    }
}

/// Runs `f` with a NATS client connected to `url`, on a runtime of its own.
pub fn with_nats<T>(url: &str, f: impl AsyncFnOnce(async_nats::Client) -> T) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        let client = tokio::time::timeout(Duration::from_secs(10), async_nats::connect(url))
            .await
            .expect("connecting to NATS within 10 s")
            .expect("connecting to NATS");
        f(client).await
    })
}

/// Every message in `stream`, in stream order, as a JetStream consumer (an
/// ordered one, from the first message) reads them; empty if there is no
/// such stream.
pub fn read_stream(url: &str, stream: &str) -> Vec<Stored> {
    use async_nats::jetstream::consumer::{pull, DeliverPolicy};
    use futures_util::StreamExt;
    with_nats(url, async |client| {
        let js = async_nats::jetstream::new(client);
        let Ok(mut stream) = js.get_stream(stream).await else { return Vec::new() };
        let expected = stream.info().await.expect("stream info").state.messages as usize;
        if expected == 0 {
            return Vec::new();
        }
        let config = pull::OrderedConfig { deliver_policy: DeliverPolicy::All, ..Default::default() };
        let consumer = stream.create_consumer(config).await.expect("a consumer");
        let mut messages = consumer.messages().await.expect("the consumer's messages");
        let mut out = Vec::with_capacity(expected);
        while out.len() < expected {
            let next = tokio::time::timeout(Duration::from_secs(10), messages.next()).await;
            let Ok(Some(Ok(message))) = next else {
                panic!("the consumer stopped after {} of {expected} messages: {next:?}", out.len())
            };
            let mut headers = HashMap::new();
            for (name, values) in message.headers.iter().flat_map(|h| h.iter()) {
                if let Some(value) = values.first() {
                    headers.insert(name.to_string(), value.to_string());
                }
            }
            let msg_id = headers.get("Nats-Msg-Id").cloned().unwrap_or_default();
            let payload = serde_json::from_slice(&message.payload).unwrap_or(serde_json::Value::Null);
            out.push(Stored { subject: message.subject.to_string(), msg_id, headers, payload });
        }
        out
    })
}
