//! The MQTT shell around [`Node`]: one session per connection, each with a
//! new `bdSeq` (stored before it connects) and that session's NDEATH as its
//! will. In a session: subscribe to the node's commands (and the primary
//! host's STATE), publish the births, then the journal's durable samples as
//! DDATA, a window of `max_in_flight` at a time. The journal's cursor moves
//! past a sample when the broker acknowledged its DDATA (QoS 1; MQTT
//! acknowledges in order), so a broken connection loses nothing: the next
//! session sends again from the cursor.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::backoff::Backoff;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::Value;
use transport::ShutdownWatch;

use super::commands::{write_commands, Write, COMMAND_QUEUE};
use super::node::{Known, Node, Publish, Sample, Settings};
use super::payload::{datatype, MetricValue, Payload};
use super::window::Window;
use super::{SparkplugConfig, Status, CONSUMER};
use crate::ingest::agents::Agents;
use crate::journal::Export;
use crate::security::{Kind, Security};

/// Everything the Sparkplug thread needs.
pub struct Sparkplug {
    pub config: SparkplugConfig,
    pub export: Export,
    pub status: Arc<Status>,
    pub ctx: zmq::Context,
    pub security: Option<Arc<Security>>,
    pub agents: Option<Arc<Agents>>,
    pub data_dir: PathBuf,
    /// The metric bus's in-process tap, for best-effort samples (`live`).
    pub tap: String,
    /// When the hub started.
    pub started: Instant,
    /// The DCMD writer's queue, while the node runs.
    pub writes: Option<std::sync::mpsc::SyncSender<Write>>,
}

type Live = tokio::sync::mpsc::Receiver<Sample>;

/// Best-effort samples from the metric bus's tap, into `tx` (a libzmq poll
/// loop on a blocking thread, until the receiver is gone).
fn read_live(
    ctx: &zmq::Context,
    tap: &str,
    tx: &tokio::sync::mpsc::Sender<Sample>,
    status: &Status,
) -> zmq::Result<()> {
    let socket = ctx.socket(zmq::SUB)?;
    socket.set_rcvhwm(10_000)?;
    socket.connect(tap)?;
    socket.set_subscribe(proto::sample::TOPIC_PREFIX.as_bytes())?;
    while !tx.is_closed() {
        if socket.poll(zmq::POLLIN, 250)? == 0 {
            continue;
        }
        while let Ok(frames) = socket.recv_multipart(zmq::DONTWAIT) {
            let Some((_, payload)) = proto::bus::split(&frames) else { continue };
            let Ok(json) = serde_json::from_slice::<Value>(payload) else { continue };
            // Durable samples come through the journal.
            let Some(agent) = json["agent"].as_str().filter(|_| json["durable"] == false) else { continue };
            let Some(sample) = Sample::from_json(agent, &json, false) else { continue };
            if tx.try_send(sample).is_err() {
                status.live_dropped.fetch_add(1, Relaxed);
            }
        }
    }
    Ok(())
}

/// Acknowledgements between two writes of the cursor (a crash sends the
/// ones after the last write again: a host stores them once, same time and value).
const COMMIT_EVERY: u64 = 256;

/// The cursor is made durable at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// The largest MQTT packet sent or taken.
const MAX_PACKET: usize = 4 << 20;

fn now_ms() -> u64 {
    (crate::clock::wall_ns().max(0) / 1_000_000) as u64
}

fn qos(level: u8) -> QoS {
    if level == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// The last bdSeq used, kept in `<data_dir>/sparkplug/bdseq`.
fn next_bd_seq(dir: &Path) -> std::io::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("bdseq");
    let next = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_or(0, |last| (last + 1) % 256),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let aside = path.with_extension("new");
    std::fs::write(&aside, next.to_string())?;
    std::fs::File::open(&aside)?.sync_all()?;
    std::fs::rename(&aside, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(next)
}

/// Where the system keeps the CAs it trusts (Debian's ca-certificates).
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// TLS to the broker: its CA (or the system's), and this hub's certificate if set.
fn tls(c: &SparkplugConfig) -> Result<rumqttc::Transport, String> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("sparkplug: {}: {e}", path.display()));
    let ca = read(c.tls_ca.as_deref().unwrap_or(Path::new(SYSTEM_CAS)))?;
    let client_auth = match (&c.tls_cert, &c.tls_key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    Ok(rumqttc::Transport::tls(ca, client_auth, None))
}

impl Sparkplug {
    /// Runs sessions until `stop`, on this thread.
    pub fn run(mut self, stop: &ShutdownWatch) -> Result<(), String> {
        let (writes, queue) = std::sync::mpsc::sync_channel(COMMAND_QUEUE);
        let (ctx, status) = (self.ctx.clone(), self.status.clone());
        std::thread::Builder::new()
            .name("sparkplug-dcmd".into())
            .spawn(move || write_commands(&ctx, &status, queue))
            .map_err(|e| format!("cannot start the DCMD writer: {e}"))?;
        self.writes = Some(writes);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the Sparkplug runtime: {e}"))?;
        let settings = Settings {
            group_id: self.config.group_id.clone(),
            edge_node_id: self.config.edge_node_id.clone(),
            aliases: self.config.aliases,
            data_qos: self.config.data_qos,
        };
        let mut node = Node::new(settings, 0);
        let registry = self.data_dir.join("sparkplug").join("devices.json");
        match std::fs::read(&registry).map(|bytes| serde_json::from_slice::<Vec<Known>>(&bytes)) {
            Ok(Ok(known)) => node.restore(known),
            Ok(Err(e)) => {
                self.status.failed(format!("{} is damaged ({e}): devices are born anew", registry.display()))
            }
            Err(_) => {} // none yet
        }
        // The newest STATE seen, across sessions: an older one (a stale retained one) is ignored.
        let mut host_since = 0u64;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        runtime.block_on(async {
            let (tx, mut live) = tokio::sync::mpsc::channel(self.config.live_queue);
            if self.config.live {
                let (ctx, tap, status) = (self.ctx.clone(), self.tap.clone(), self.status.clone());
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = read_live(&ctx, &tap, &tx, &status) {
                        status.failed(format!("reading the metric bus for live samples: {e}"));
                    }
                });
            }
            while !stop.is_set() {
                let began = Instant::now();
                if let Err(why) = self.session(&mut node, &mut host_since, &mut live, stop).await {
                    self.status.failed(why);
                }
                node.ended();
                self.status.connected.store(false, Relaxed);
                self.status.devices_born.store(0, Relaxed);
                if began.elapsed() > Duration::from_secs(30) {
                    backoff.reset();
                }
                let wait = backoff.next_delay();
                let until = Instant::now() + wait;
                while Instant::now() < until && !stop.is_set() {
                    tokio::time::sleep(Duration::from_millis(50).min(wait)).await;
                }
            }
            let _ = self.export.journal.flush();
        });
        Ok(())
    }

    async fn session(
        &self,
        node: &mut Node,
        host_since: &mut u64,
        live: &mut Live,
        stop: &ShutdownWatch,
    ) -> Result<(), String> {
        let c = &self.config;
        let dir = self.data_dir.join("sparkplug");
        let bd_seq =
            next_bd_seq(&dir).map_err(|e| format!("cannot store bdSeq in {}: {e}", dir.display()))?;
        node.set_bd_seq(bd_seq);
        self.status.bd_seq.store(bd_seq, Relaxed);
        let (host, port) = c.host_port().expect("validated");
        let client_id = c.client_id.clone().unwrap_or_else(|| format!("plantd-{}", c.edge_node_id));
        let mut options = MqttOptions::new(client_id, host, port);
        options.set_keep_alive(Duration::from_secs(c.keep_alive_s));
        options.set_clean_session(true);
        options.set_inflight(c.max_in_flight.min(u16::MAX as usize) as u16);
        // A birth names every channel of an agent: more than rumqttc's 10 KiB default.
        options.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        let will = node.will(now_ms());
        options.set_last_will(LastWill::new(will.topic, will.payload, QoS::AtLeastOnce, false));
        if c.tls() {
            options.set_transport(tls(c)?);
        }
        if let (Some(user), Some(file)) = (&c.username, &c.password_file) {
            let password = std::fs::read_to_string(file)
                .map_err(|e| format!("sparkplug.password_file {}: {e}", file.display()))?;
            options.set_credentials(user.clone(), password.trim().to_string());
        }
        let (client, mut events) = AsyncClient::new(options, c.max_in_flight + 1024);
        loop {
            match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                    if ack.code != rumqttc::ConnectReturnCode::Success {
                        return Err(format!("{} refused the connection: {:?}", c.broker, ack.code));
                    }
                    break;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("cannot connect to {}: {e}", c.broker)),
                Err(_) => return Err(format!("{} did not answer the connection within 10 s", c.broker)),
            }
        }
        log::info!(
            "sparkplug: connected to {} as {}/{} (bdSeq {bd_seq})",
            c.broker,
            c.group_id,
            c.edge_node_id
        );
        self.status.connected.store(true, Relaxed);
        self.status.sessions.fetch_add(1, Relaxed);
        let state_topic = c.primary_host_id.as_ref().map(|h| format!("spBv1.0/STATE/{h}"));
        for topic in node.command_topics().into_iter().chain(state_topic.clone()) {
            client.subscribe(topic, QoS::AtLeastOnce).await.map_err(|e| e.to_string())?;
        }
        // The event loop runs on a task of its own, so publishing never waits on this one.
        let (tx, mut incoming) = tokio::sync::mpsc::channel(1024);
        let poller = tokio::spawn(async move {
            loop {
                let event = events.poll().await.map_err(|e| e.to_string());
                let failed = event.is_err();
                // Only what `serve` reads: forwarding every outgoing event too
                // would fill the channel during a large birth, stop this poll,
                // and leave the publishes waiting for it for ever.
                let wanted = matches!(
                    event,
                    Err(_) | Ok(Event::Incoming(_)) | Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))
                );
                if wanted && tx.send(event).await.is_err() || failed {
                    break;
                }
            }
        });
        let state = state_topic.as_deref().map(|topic| (topic, host_since));
        let result = self.serve(node, &client, &mut incoming, live, state, stop).await;
        if result.is_ok() {
            // A disconnect withholds the will: the NDEATH goes first, as itself.
            let death = node.will(now_ms());
            let _ = self.publish(&client, death).await;
            let _ = client.disconnect().await;
            // The event loop sends them while it runs: a moment for that.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(event)) = incoming.recv().await {
                    if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                        break;
                    }
                }
            })
            .await;
        }
        poller.abort();
        result
    }

    async fn serve(
        &self,
        node: &mut Node,
        client: &AsyncClient,
        incoming: &mut tokio::sync::mpsc::Receiver<Result<Event, String>>,
        live: &mut Live,
        mut state: Option<(&str, &mut u64)>,
        stop: &ShutdownWatch,
    ) -> Result<(), String> {
        let journal = self.export.journal.clone();
        let cursor =
            journal.cursor_of(CONSUMER).map_err(|e| format!("cannot read the Sparkplug cursor: {e}"))?;
        let mut window = Window::at(cursor);
        // With a primary host, nothing is published until its STATE says online.
        let mut host_online = state.is_none();
        self.status.host_online.store(host_online, Relaxed);
        if host_online {
            self.birth(node, client).await?;
        }
        let mut ticked = Instant::now();
        while !stop.is_set() {
            let event = tokio::select! {
                event = incoming.recv() => Some(event.ok_or("the MQTT event loop ended")??),
                _ = journal.appended() => None,
                Some(sample) = live.recv() => {
                    self.live(node, client, &sample, host_online).await?;
                    None
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => None,
            };
            match event {
                Some(Event::Incoming(Packet::PubAck(_))) if window.acknowledged() => {
                    self.status.acked.fetch_add(1, Relaxed);
                }
                Some(Event::Incoming(Packet::Publish(message))) => {
                    let topic = message.topic.as_str();
                    if let Some((_, host_since)) = state.as_mut().filter(|(t, _)| *t == topic) {
                        let Ok(said) = serde_json::from_slice::<Value>(&message.payload) else { continue };
                        let (online, at) = (said["online"] == true, said["timestamp"].as_u64().unwrap_or(0));
                        if at < **host_since {
                            continue; // an older STATE (a stale retained one): ignored
                        }
                        **host_since = at;
                        if online && !host_online {
                            log::info!("sparkplug: the primary host is online");
                            host_online = true;
                            self.birth(node, client).await?;
                        } else if !online && host_online {
                            // Sparkplug 3.0: the node dies and connects again, then waits
                            // for the host. Samples wait in the journal meanwhile.
                            log::warn!("sparkplug: the primary host is offline: NDEATH, and waiting for it");
                            self.status.host_online.store(false, Relaxed);
                            return Ok(());
                        }
                        self.status.host_online.store(host_online, Relaxed);
                    } else if let Ok(payload) = Payload::decode_slice(&message.payload) {
                        self.command(node, client, topic, &payload, host_online).await?;
                    }
                }
                _ => {}
            }
            if host_online && node.in_session() {
                self.fill(node, client, &mut window).await?;
            }
            if ticked.elapsed() >= Duration::from_secs(1) {
                ticked = Instant::now();
                if host_online {
                    self.bury_silent(node, client).await?;
                }
            }
            self.commit(&mut window);
            if let Some(known) = node.take_registry() {
                self.store_registry(&known);
            }
            self.status.seq.store(node.seq().map_or(0, u64::from), Relaxed);
            self.status.devices_born.store(node.devices_born() as u64, Relaxed);
        }
        Ok(())
    }

    async fn publish(&self, client: &AsyncClient, p: Publish) -> Result<(), String> {
        client.publish(p.topic, qos(p.qos), p.retain, p.payload).await.map_err(|e| format!("publishing: {e}"))
    }

    /// A best-effort sample: DDATA at QoS 0 (after a DBIRTH if need be), or dropped.
    async fn live(
        &self,
        node: &mut Node,
        client: &AsyncClient,
        s: &Sample,
        host_online: bool,
    ) -> Result<(), String> {
        let published = if host_online && node.in_session() { node.sample(s, now_ms()) } else { None };
        let Some(published) = published else {
            self.status.live_dropped.fetch_add(1, Relaxed);
            return Ok(());
        };
        for mut p in published {
            p.qos = 0;
            self.publish(client, p).await?;
        }
        self.status.live_published.fetch_add(1, Relaxed);
        Ok(())
    }

    /// NBIRTH and every DBIRTH (a session's start, or a rebirth).
    async fn birth(&self, node: &mut Node, client: &AsyncClient) -> Result<(), String> {
        let agents = self.agents.as_ref().map_or(0, |a| a.len() as u64);
        node.health = vec![
            (
                "Properties/Hub Version".into(),
                MetricValue::String(env!("CARGO_PKG_VERSION").into()),
                datatype::String,
            ),
            ("Hub/Agents".into(), MetricValue::Long(agents), datatype::UInt64),
        ];
        for p in node.birth(now_ms()) {
            self.status.births.fetch_add(1, Relaxed);
            self.publish(client, p).await?;
        }
        Ok(())
    }

    /// Reads the journal past what is in flight and publishes it, up to the window.
    async fn fill(&self, node: &mut Node, client: &AsyncClient, w: &mut Window) -> Result<(), String> {
        let room = self.config.max_in_flight.saturating_sub(w.in_flight.len());
        if room == 0 {
            return Ok(());
        }
        let read =
            self.export.journal.read(w.sent_upto, room).map_err(|e| format!("reading the journal: {e}"))?;
        let now = now_ms();
        for (key, entry) in read {
            w.sent_upto = key;
            let sample = entry.filter(|e| e.topic.starts_with(proto::sample::TOPIC_PREFIX)).and_then(|e| {
                let json: Value = serde_json::from_slice(&e.payload).ok()?;
                let mut s = Sample::from_json(&e.agent, &json, e.historical)?;
                s.historical |= now.saturating_sub(s.at_ms) > self.config.live_window_ms;
                Some(s)
            });
            let Some(published) = sample.as_ref().and_then(|s| node.sample(s, now)) else {
                self.status.unsendable.fetch_add(1, Relaxed);
                w.in_flight.push_back((key, false));
                continue;
            };
            let mut awaited = false;
            for p in published {
                if p.topic.contains("/DDATA/") {
                    self.status.published.fetch_add(1, Relaxed);
                    awaited |= p.qos == 1;
                } else {
                    self.status.births.fetch_add(1, Relaxed);
                }
                self.publish(client, p).await?;
            }
            w.in_flight.push_back((key, awaited));
        }
        w.settle();
        Ok(())
    }

    /// Writes the cursor where the acknowledged run ends, every
    /// `COMMIT_EVERY` acknowledgements or when nothing is in flight, and
    /// flushes the journal at most every `FLUSH_EVERY`, one flush at a time,
    /// off this thread (as the NATS bridge's export does).
    fn commit(&self, w: &mut Window) {
        let due = w.acked_upto - w.committed >= COMMIT_EVERY || w.in_flight.is_empty();
        if w.acked_upto > w.committed && due {
            match self.export.journal.acked_by(CONSUMER, w.acked_upto) {
                Ok(_) => {
                    w.committed = w.acked_upto;
                    self.status.cursor.store(w.committed, Relaxed);
                }
                Err(e) => self.status.failed(format!("cannot move the Sparkplug cursor: {e}")),
            }
        }
        let idle = w.flushing.as_ref().is_none_or(|f| f.is_finished());
        if w.committed > w.flushed_upto && idle && w.flushed.elapsed() >= FLUSH_EVERY {
            let (journal, status) = (self.export.journal.clone(), self.status.clone());
            w.flushing = Some(tokio::task::spawn_blocking(move || {
                if let Err(e) = journal.flush() {
                    status.failed(format!("cannot flush the Sparkplug cursor: {e}"));
                }
            }));
            (w.flushed, w.flushed_upto) = (Instant::now(), w.committed);
        }
    }

    /// Stores the devices' channels (written aside, synced, renamed); a failure is reported, not fatal.
    fn store_registry(&self, known: &[Known]) {
        let dir = self.data_dir.join("sparkplug");
        let (path, aside) = (dir.join("devices.json"), dir.join("devices.json.new"));
        let json = serde_json::to_vec(known).expect("the registry serialises");
        let stored = std::fs::write(&aside, json)
            .and_then(|()| std::fs::File::open(&aside)?.sync_all())
            .and_then(|()| std::fs::rename(&aside, &path));
        if let Err(e) = stored {
            self.status.failed(format!("cannot store {}: {e}", path.display()));
        }
    }

    /// DDEATH for each device whose agent has been silent past `device_timeout_s`.
    async fn bury_silent(&self, node: &mut Node, client: &AsyncClient) -> Result<(), String> {
        let Some(agents) = &self.agents else { return Ok(()) };
        let timeout = Duration::from_secs(self.config.device_timeout_s);
        for agent in node.born() {
            // A device ingest has not heard from since the hub started (one
            // restored from the registry, or one the agents table let go) is
            // silent since then.
            let silent = agents.silent_for(&agent).unwrap_or_else(|| self.started.elapsed());
            if silent >= timeout {
                if let Some(p) = node.device_gone(&agent, now_ms()) {
                    log::info!("sparkplug: device {agent} silent for {timeout:?}: DDEATH");
                    self.status.deaths.fetch_add(1, Relaxed);
                    self.publish(client, p).await?;
                }
            }
        }
        Ok(())
    }

    /// NCMD (a rebirth) or DCMD (writes to an agent's outputs).
    async fn command(
        &self,
        node: &mut Node,
        client: &AsyncClient,
        topic: &str,
        payload: &Payload,
        host_online: bool,
    ) -> Result<(), String> {
        let [ncmd, dcmd] = node.command_topics();
        if topic == ncmd {
            if Node::is_rebirth(payload) && host_online {
                log::info!("sparkplug: a host asked for a rebirth");
                self.status.rebirths.fetch_add(1, Relaxed);
                self.birth(node, client).await?;
            }
            return Ok(());
        }
        let Some(agent) = topic.strip_prefix(dcmd.trim_end_matches('+')) else { return Ok(()) };
        for (channel, value) in node.writes(agent, payload) {
            let Some(value) = value.filter(|_| self.config.may_command(agent, &channel)) else {
                self.status.commands_refused.fetch_add(1, Relaxed);
                log::warn!("sparkplug: DCMD to {agent}/{channel} refused: not in sparkplug.commands");
                continue;
            };
            let service = format!("org.plantd.Agent.{agent}");
            if let Err(why) = self.authorise(&service) {
                self.status.commands_refused.fetch_add(1, Relaxed);
                log::warn!("sparkplug: DCMD to {agent}/{channel} refused: {why}");
                continue;
            }
            // One ordered worker: two quick writes to one output land in the order sent.
            let write = Write { service, channel, value };
            if let Some(Err(refused)) = self.writes.as_ref().map(|w| w.try_send(write)) {
                self.status.commands_refused.fetch_add(1, Relaxed);
                let Write { service, channel, .. } = match refused {
                    std::sync::mpsc::TrySendError::Full(w)
                    | std::sync::mpsc::TrySendError::Disconnected(w) => w,
                };
                log::warn!(
                    "sparkplug: DCMD to {service} {channel} refused: {COMMAND_QUEUE} writes are waiting"
                );
            }
        }
        Ok(())
    }

    /// With security, writes are made as `command_identity`, checked like any call.
    fn authorise(&self, service: &str) -> Result<(), String> {
        let Some(security) = &self.security else { return Ok(()) };
        let Some(identity) = &self.config.command_identity else {
            return Err("this hub has security and no sparkplug.command_identity".into());
        };
        if security.grants_by_policy(identity).may_call(service.as_bytes(), Some(b"write")) {
            return Ok(());
        }
        security.denials.record(identity, Kind::Call, || format!("DCMD write to {service}"));
        Err(format!("{identity} may not write through {service}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bd_seq_grows_by_one_per_session_and_wraps() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_bd_seq(dir.path()).unwrap(), 0);
        assert_eq!(next_bd_seq(dir.path()).unwrap(), 1);
        std::fs::write(dir.path().join("bdseq"), "255").unwrap();
        assert_eq!(next_bd_seq(dir.path()).unwrap(), 0);
    }
}
