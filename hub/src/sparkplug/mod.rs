//! Sparkplug B: the hub as an MQTT edge node that SCADA hosts (Ignition,
//! HiveMQ, EMQX, ...) discover by themselves. Each agent is a device, each
//! channel a metric.
//!
//! - [`payload`]: the protobuf payload, as prost derives.
//! - [`node`]: births, data, deaths, `seq` and aliases, without I/O.
//! - [`client`]: the MQTT session (rumqttc on a tokio runtime on its own
//!   thread, like the NATS bridge): the will, commands, the primary host's
//!   STATE, and durable samples read from ingest's journal as a consumer of
//!   its own, whose cursor moves only when the MQTT broker acknowledged them.

pub mod client;
mod commands;
pub mod node;
pub mod payload;
mod window;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::journal::consumers::Spec;
use crate::journal::{Export, ExportConfig};
use crate::metrics::Families;

/// The journal consumer Sparkplug reads durable samples as.
pub const CONSUMER: &str = "sparkplug";

/// `[sparkplug]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparkplugConfig {
    /// The MQTT broker: `mqtt://host:port` (1883 if left out), or
    /// `mqtts://host:port` for TLS (8883 if left out).
    pub broker: String,
    pub group_id: String,
    pub edge_node_id: String,
    /// Publish only while this primary host's STATE says it is online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_host_id: Option<String>,
    /// DATA carries aliases, BIRTH names them.
    #[serde(default = "yes")]
    pub aliases: bool,
    /// The MQTT client id (default `plantd-<edge_node_id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// A user, and a file holding its password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// TLS (`mqtts://`): the CA that signed the broker's certificate (default:
    /// the system's, /etc/ssl/certs/ca-certificates.crt), and this hub's
    /// certificate and key when the broker asks for one. PEM files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    #[serde(default = "keep_alive_s")]
    pub keep_alive_s: u64,
    /// QoS of DDATA. 1 (the default) lets the journal's cursor move only on
    /// the broker's acknowledgement, so no durable sample is lost to a
    /// broken connection; Sparkplug itself asks for 0, which moves it when
    /// the message is written to the socket.
    #[serde(default = "one")]
    pub data_qos: u8,
    /// Also publish best-effort samples (live telemetry the agents do not
    /// keep), as DDATA at QoS 0, straight from the metric bus: lost while
    /// the broker is away, as best effort means.
    #[serde(default)]
    pub live: bool,
    /// Best-effort samples waiting for the broker, at most; more are dropped and counted.
    #[serde(default = "live_queue")]
    pub live_queue: usize,
    /// Samples older than this when sent are marked `is_historical`.
    #[serde(default = "live_window_ms")]
    pub live_window_ms: u64,
    /// An agent silent this long gets a DDEATH (born again with its next sample).
    #[serde(default = "device_timeout_s")]
    pub device_timeout_s: u64,
    /// Channels a DCMD may write, as `agent/channel` globs (`pump-*/valve`).
    /// Anything else is refused and counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    /// With `[security]`: the identity DCMD writes are made as (its roles decide).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_identity: Option<String>,
    /// DDATA published and not acknowledged yet, at most.
    #[serde(default = "max_in_flight")]
    pub max_in_flight: usize,
    /// The journal's bounds for samples not yet sent: past them ingest answers Retry.
    #[serde(default = "max_backlog_records")]
    pub max_backlog_records: u64,
    #[serde(default = "max_backlog_bytes")]
    pub max_backlog_bytes: u64,
}

fn yes() -> bool {
    true
}
fn one() -> u8 {
    1
}
fn keep_alive_s() -> u64 {
    30
}
fn live_queue() -> usize {
    10_000
}
fn live_window_ms() -> u64 {
    5000
}
fn device_timeout_s() -> u64 {
    60
}
fn max_in_flight() -> usize {
    256
}
fn max_backlog_records() -> u64 {
    1_000_000
}
fn max_backlog_bytes() -> u64 {
    256 << 20
}

/// A Sparkplug id element: no '/', '+' or '#' (MQTT's), not empty.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && !id.contains(['/', '+', '#'])
}

impl SparkplugConfig {
    pub fn validate(&self) -> Result<(), crate::Invalid> {
        let fail = |field: &'static str, problem: &str| Err((field, problem.to_string()));
        if self.host_port().is_none() {
            return fail(
                "sparkplug.broker",
                "an MQTT broker as mqtt://host:port, e.g. \"mqtt://127.0.0.1:1883\"",
            );
        }
        if !valid_id(&self.group_id) || !valid_id(&self.edge_node_id) {
            return fail("sparkplug.group_id/edge_node_id", "must be set, without '/', '+' or '#'");
        }
        if self.primary_host_id.as_deref().is_some_and(|h| !valid_id(h)) {
            return fail("sparkplug.primary_host_id", "without '/', '+' or '#'");
        }
        if self.data_qos > 1 {
            return fail("sparkplug.data_qos", "0 or 1");
        }
        if self.username.is_some() != self.password_file.is_some() {
            return fail("sparkplug.username/password_file", "set both, or neither");
        }
        if self.live_queue == 0 {
            return fail("sparkplug.live_queue", "at least 1");
        }
        if self.max_in_flight == 0 || self.keep_alive_s < 5 {
            return fail("sparkplug.max_in_flight/keep_alive_s", "at least 1 and 5 s");
        }
        if self.max_backlog_records == 0 || self.max_backlog_bytes < 1 << 20 {
            return fail("sparkplug.max_backlog_bytes", "at least 1 record and 1 MiB");
        }
        if self.commands.iter().any(|c| c.split_once('/').is_none()) {
            return fail("sparkplug.commands", "globs of agent/channel, like \"pump-*/valve\"");
        }
        Ok(())
    }

    /// Whether the broker is reached over TLS (`mqtts://`).
    pub fn tls(&self) -> bool {
        self.broker.starts_with("mqtts://")
    }

    /// The broker's host and port.
    pub fn host_port(&self) -> Option<(String, u16)> {
        let (rest, default_port) = match self.broker.split_once("://")? {
            ("mqtt" | "tcp", rest) => (rest, 1883),
            ("mqtts", rest) => (rest, 8883),
            _ => return None,
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().ok()?),
            None => (rest, default_port),
        };
        (!host.is_empty()).then(|| (host.to_string(), port))
    }

    /// Checks that every file named (password, TLS) can be read.
    pub fn check_files(&self) -> Result<(), String> {
        let files = [
            ("password_file", &self.password_file),
            ("tls_ca", &self.tls_ca),
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
        ];
        for (key, path) in files {
            if let Some(path) = path {
                std::fs::read(path).map_err(|e| format!("sparkplug.{key} {}: {e}", path.display()))?;
            }
        }
        Ok(())
    }

    /// Whether a DCMD may write `agent`'s `channel`.
    pub fn may_command(&self, agent: &str, channel: &str) -> bool {
        self.commands.iter().any(|c| {
            let (a, ch) = c.split_once('/').unwrap_or_default();
            proto::fleet::matches(a, agent) && proto::fleet::matches(ch, channel)
        })
    }
}

/// What ingest must keep for Sparkplug: its journal cursor, and the metric topics.
pub fn export_config(config: Option<&SparkplugConfig>) -> Option<ExportConfig> {
    let c = config?;
    let mut spec = Spec::hub(CONSUMER, c.max_backlog_records, c.max_backlog_bytes);
    spec.prefixes = vec![proto::sample::TOPIC_PREFIX.into()];
    Some(ExportConfig { prefixes: vec![proto::sample::TOPIC_PREFIX.into()], consumers: vec![spec] })
}

/// What the edge node has done: `hub sparkplug status`, metrics.
#[derive(Debug, Default)]
pub struct Status {
    pub connected: AtomicBool,
    /// The primary host is online (or none is configured).
    pub host_online: AtomicBool,
    pub bd_seq: AtomicU64,
    pub seq: AtomicU64,
    pub devices_born: AtomicU64,
    pub sessions: AtomicU64,
    pub births: AtomicU64,
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub rebirths: AtomicU64,
    pub deaths: AtomicU64,
    pub unsendable: AtomicU64,
    pub live_published: AtomicU64,
    pub live_dropped: AtomicU64,
    pub commands_written: AtomicU64,
    pub commands_refused: AtomicU64,
    pub commands_failed: AtomicU64,
    pub cursor: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Status {
    pub fn failed(&self, what: impl std::fmt::Display) {
        let text = what.to_string();
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_deref() != Some(&text) {
            log::warn!("sparkplug: {text}");
        }
        *last = Some(text);
    }

    pub fn to_json(&self, config: &SparkplugConfig, export: Option<&Export>) -> Value {
        let get = |c: &AtomicU64| c.load(Relaxed);
        let backlog = export.map_or(Value::Null, |e| e.journal.backlog_json(CONSUMER));
        json!({
            "broker": config.broker,
            "group_id": config.group_id,
            "edge_node_id": config.edge_node_id,
            "primary_host_id": config.primary_host_id,
            "connected": self.connected.load(Relaxed),
            "host_online": self.host_online.load(Relaxed),
            "bd_seq": get(&self.bd_seq),
            "seq": get(&self.seq),
            "devices_born": get(&self.devices_born),
            "sessions": get(&self.sessions),
            "published": get(&self.published),
            "acked": get(&self.acked),
            "rebirths": get(&self.rebirths),
            "cursor": get(&self.cursor),
            "backlog": backlog,
            "unsendable": get(&self.unsendable),
            "live": {"published": get(&self.live_published), "dropped": get(&self.live_dropped)},
            "commands": {
                "written": get(&self.commands_written),
                "refused": get(&self.commands_refused),
                "failed": get(&self.commands_failed),
            },
            "last_error": *self.last_error.lock().unwrap_or_else(|e| e.into_inner()),
        })
    }

    pub fn collect(&self, export: Option<&Export>, out: &mut Families) {
        let get = |c: &AtomicU64| c.load(Relaxed);
        out.gauge(
            "sparkplug_connected",
            "1 while connected to the MQTT broker.",
            vec![],
            self.connected.load(Relaxed).into(),
        );
        out.gauge(
            "sparkplug_host_online",
            "1 while the primary host is online (or none is configured).",
            vec![],
            self.host_online.load(Relaxed).into(),
        );
        out.gauge("sparkplug_bd_seq", "The session's bdSeq.", vec![], get(&self.bd_seq));
        out.gauge(
            "sparkplug_devices_born",
            "Agents born as devices in this session.",
            vec![],
            get(&self.devices_born),
        );
        let counters: [(&str, &'static str, u64); 12] = [
            ("live_published", "Best-effort samples published (sparkplug.live).", get(&self.live_published)),
            (
                "live_dropped",
                "Best-effort samples dropped: the queue full, no session, or the host offline.",
                get(&self.live_dropped),
            ),
            ("sessions", "MQTT sessions begun (each with a new bdSeq).", get(&self.sessions)),
            ("births", "NBIRTH and DBIRTH messages published.", get(&self.births)),
            ("published", "DDATA messages published.", get(&self.published)),
            ("acked", "Durable samples the MQTT broker acknowledged.", get(&self.acked)),
            ("rebirths", "Rebirths a host asked for.", get(&self.rebirths)),
            ("deaths", "DDEATH messages published.", get(&self.deaths)),
            ("unsendable", "Journal entries with no Sparkplug type (skipped).", get(&self.unsendable)),
            ("commands_written", "DCMD writes made.", get(&self.commands_written)),
            (
                "commands_refused",
                "DCMD writes refused (not in sparkplug.commands, or by security).",
                get(&self.commands_refused),
            ),
            ("commands_failed", "DCMD writes the agent did not make.", get(&self.commands_failed)),
        ];
        for (name, help, value) in counters {
            out.counter(&format!("sparkplug_{name}"), help, vec![], value);
        }
        if let Some(e) = export {
            e.journal.collect_backlog(
                CONSUMER,
                "sparkplug",
                "Durable samples waiting for the MQTT broker.",
                out,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> SparkplugConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_config_names_what_is_wrong() {
        let ok =
            config("broker = \"mqtt://127.0.0.1:1883\"\ngroup_id = \"plant-a\"\nedge_node_id = \"hub-1\"\n");
        ok.validate().unwrap();
        assert_eq!(ok.host_port(), Some(("127.0.0.1".into(), 1883)));
        let bad = config("broker = \"http://x\"\ngroup_id = \"a\"\nedge_node_id = \"b\"\n");
        assert_eq!(bad.validate().unwrap_err().0, "sparkplug.broker");
        let bad = config("broker = \"mqtt://x\"\ngroup_id = \"a/b\"\nedge_node_id = \"b\"\n");
        assert_eq!(bad.validate().unwrap_err().0, "sparkplug.group_id/edge_node_id");
    }

    #[test]
    fn commands_are_allowed_by_agent_and_channel() {
        let c = config(
            "broker = \"mqtt://x\"\ngroup_id = \"a\"\nedge_node_id = \"b\"\ncommands = [\"pump-*/valve\"]\n",
        );
        assert!(c.may_command("pump-1", "valve"));
        assert!(!c.may_command("pump-1", "heater") && !c.may_command("tank-1", "valve"));
    }
}
