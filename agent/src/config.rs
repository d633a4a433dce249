//! The agent's configuration: a TOML file (`agent run --config`), the board
//! profile's defaults for what it leaves out, and flags on top. Unknown keys
//! are errors and every error names the field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use boards::{ChannelConfig, Profile, Resources};
use serde::{Deserialize, Serialize};
use transport::Endpoint;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This agent's id: topics are `org.plantd.Metric.<id>.<channel>` and its
    /// service `org.plantd.Agent.<id>`. Defaults to the hostname and a
    /// suffix from this machine's hardware serial (or machine id), so
    /// controllers cloned from one SD card image still differ.
    pub id: Option<String>,
    /// Board profile: sim, linux, rpi-zero2w, rpi3, rpi4, rpi5.
    pub board: String,
    /// Where sysfs/procfs paths are resolved (`/` on a real board).
    pub board_root: PathBuf,
    pub data_dir: PathBuf,
    pub hub: HubConfig,
    pub uplink: UplinkConfig,
    pub outbox: OutboxConfig,
    pub store: StoreConfig,
    pub local_state: LocalStateConfig,
    pub http: HttpConfig,
    /// `info`, `debug`, ... or env_logger directives; RUST_LOG and `-v` take
    /// precedence; SIGHUP re-reads it.
    pub log_level: String,
    /// Channels to sample (`[[channel]]`); none means the board's defaults.
    #[serde(rename = "channel")]
    pub channels: Vec<ChannelConfig>,
    /// Modbus links (`[[modbus]]`) that channels read devices through.
    #[serde(rename = "modbus", skip_serializing_if = "Vec::is_empty")]
    pub modbus: Vec<boards::modbus::LinkConfig>,
    /// Following the configuration the hub sets for this agent (`hub config set`).
    pub fleet: crate::fleet::FleetConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            id: None,
            board: "sim".into(),
            board_root: "/".into(),
            data_dir: "./data/agent".into(),
            hub: HubConfig::default(),
            uplink: UplinkConfig::default(),
            outbox: OutboxConfig::default(),
            store: StoreConfig::default(),
            local_state: LocalStateConfig::default(),
            http: HttpConfig::default(),
            log_level: "info".into(),
            channels: Vec::new(),
            modbus: Vec::new(),
            fleet: Default::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// The hub's Majordomo broker.
    pub broker: String,
    /// The hub's metric bus frontend, for best-effort live telemetry.
    pub bus: String,
    /// How long to wait for the hub to answer a call.
    pub timeout_ms: u64,
    /// The hub's public certificate (its `hub.key`). With `client_cert`, every
    /// connection to the hub is CURVE: the hub must have `[security]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cert: Option<PathBuf>,
    /// This agent's secret certificate (`agent keygen` makes it); its public
    /// half goes into the hub's allow-list under this agent's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            broker: "tcp://127.0.0.1:9797".into(),
            bus: "tcp://127.0.0.1:13000".into(),
            timeout_ms: 2500,
            server_cert: None,
            client_cert: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UplinkConfig {
    /// Most samples in one batch to the hub.
    pub batch_records: usize,
    /// Most encoded bytes in one batch.
    pub batch_bytes: usize,
    /// How long to gather samples before sending a batch that is not full.
    pub linger_ms: u64,
    /// Replay pace in samples per second, so a backlog does not swamp the link.
    pub replay_rate: u64,
    /// Samples older than this when sent are marked historical.
    pub live_window_ms: u64,
    /// Reconnect backoff: exponential with jitter from min to max.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// Failed calls in a row that open the circuit breaker.
    pub breaker_failures: u32,
    /// With nothing to send, an empty batch carrying the agent's report
    /// goes this often, so the hub knows the agent is there (`hub agents`).
    pub report_interval_ms: u64,
    /// Sample batches in flight at once while a backlog drains (and the
    /// hub takes that many; it says how many it does). 1: one at a time.
    pub max_in_flight: u32,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            batch_records: 500,
            batch_bytes: 256 * 1024,
            linger_ms: 100,
            replay_rate: 20_000,
            live_window_ms: 5000,
            backoff_min_ms: 100,
            backoff_max_ms: 5000,
            breaker_failures: 3,
            report_interval_ms: 10_000,
            max_in_flight: 4,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// Bound in records (default: the board profile's).
    pub max_records: Option<u64>,
    /// Bound in bytes of encoded records (default: the board profile's).
    pub max_bytes: Option<u64>,
    /// Durability window: appended samples reach disk within this many
    /// milliseconds (batched so SD cards are not worn out by one fsync per sample).
    pub flush_interval_ms: Option<u64>,
    /// Size at which a segment file of the outbox log is closed and the next begun.
    pub segment_bytes: Option<u64>,
    /// Free space the outbox leaves on its file system: below it (checked at
    /// each flush) the outbox stops growing and each new sample drops the
    /// oldest. Default: 5 % of the file system, from 256 KiB to 32 MiB.
    pub min_free_bytes: Option<u64>,
    /// Alarm events kept for the hub (in an outbox of their own, so
    /// telemetry never pushes them out). Default 10 000.
    pub max_events: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// sled's page cache (default: the board profile's). sled's RSS runs well above it.
    pub cache_bytes: Option<u64>,
}

/// Bounds on the local state (`state-set` through the agent's service), so it
/// can never fill the SD card under the outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalStateConfig {
    pub max_keys: usize,
    /// Largest value, as JSON text.
    pub max_value_bytes: usize,
    /// All values together.
    pub max_bytes: usize,
}

impl Default for LocalStateConfig {
    fn default() -> Self {
        // A 512 MB controller: a megabyte of settings is plenty.
        LocalStateConfig { max_keys: 1_000, max_value_bytes: 16 << 10, max_bytes: 1 << 20 }
    }
}

/// The agent's own `/healthz` and `/metrics`. Off by default: the listener
/// and its thread cost memory a small controller may want back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port`, or "off".
    pub listen: String,
    /// A file holding the token `/metrics` needs (required beyond loopback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Connections open at once.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: "off".into(), token_file: None, max_connections: 16 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: `{field}` {problem}")]
    Invalid { field: String, problem: String },
    #[error("config: {0}")]
    Certificate(#[from] transport::curve::CertFileError),
    /// The HTTP token cannot be read, or others may read it.
    #[error("config: `http.token_file` {0}")]
    Token(#[from] transport::secret::SecretFileError),
}

/// The limits in force: the config's, else the board's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub outbox_records: u64,
    pub outbox_bytes: u64,
    pub cache_bytes: u64,
    pub flush_interval_ms: u64,
    pub segment_bytes: u64,
    /// `None`: sized from the outbox's file system (`outbox::reserve_for`).
    pub min_free_bytes: Option<u64>,
}

pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 200;
pub const DEFAULT_SEGMENT_BYTES: u64 = crate::outbox::log::DEFAULT_SEGMENT_BYTES;

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
    }

    pub fn profile(&self) -> Result<&'static Profile, ConfigError> {
        Profile::find(&self.board).ok_or_else(|| ConfigError::Invalid {
            field: "board".into(),
            problem: format!(
                "'{}' is not a board profile (known: {})",
                self.board,
                Profile::names().join(", ")
            ),
        })
    }

    /// The agent id: configured, else [`default_id`].
    pub fn agent_id(&self) -> String {
        self.id.clone().unwrap_or_else(|| default_id(&self.board_root))
    }

    pub fn limits(&self) -> Result<Limits, ConfigError> {
        let Resources { outbox_records, outbox_bytes, cache_bytes } = self.profile()?.resources;
        Ok(Limits {
            outbox_records: self.outbox.max_records.unwrap_or(outbox_records),
            outbox_bytes: self.outbox.max_bytes.unwrap_or(outbox_bytes),
            cache_bytes: self.store.cache_bytes.unwrap_or(cache_bytes),
            flush_interval_ms: self.outbox.flush_interval_ms.unwrap_or(DEFAULT_FLUSH_INTERVAL_MS),
            segment_bytes: self.outbox.segment_bytes.unwrap_or(DEFAULT_SEGMENT_BYTES),
            min_free_bytes: self.outbox.min_free_bytes,
        })
    }

    /// The outbox's options from the limits in force.
    pub fn outbox_options(&self) -> Result<crate::outbox::OutboxOptions, ConfigError> {
        let l = self.limits()?;
        Ok(crate::outbox::OutboxOptions {
            max_records: l.outbox_records,
            max_bytes: l.outbox_bytes,
            segment_bytes: l.segment_bytes,
            min_free_bytes: l.min_free_bytes,
        })
    }

    /// Where the outbox log lives.
    pub fn outbox_dir(&self) -> PathBuf {
        self.data_dir.join("outbox")
    }

    /// Where the alarm events' outbox lives.
    pub fn events_dir(&self) -> PathBuf {
        self.data_dir.join("outbox-events")
    }

    /// The channels to sample: configured, else the board's defaults.
    pub fn effective_channels(&self) -> Result<Vec<ChannelConfig>, ConfigError> {
        if self.channels.is_empty() {
            Ok((self.profile()?.default_channels)())
        } else {
            Ok(self.channels.clone())
        }
    }

    pub fn hub_timeout(&self) -> Duration {
        Duration::from_millis(self.hub.timeout_ms)
    }

    /// The hub's broker and metric bus, with this agent's CURVE keys when configured.
    pub fn hub_endpoints(&self) -> Result<(Endpoint, Endpoint), ConfigError> {
        let h = &self.hub;
        Ok(match (&h.client_cert, &h.server_cert) {
            (Some(own), Some(server)) => {
                let keys = transport::curve::read_client_keys(own, server)?;
                (Endpoint::curve(&h.broker, keys.clone()), Endpoint::curve(&h.bus, keys))
            }
            _ => (Endpoint::plain(&h.broker), Endpoint::plain(&h.bus)),
        })
    }

    /// Checks what serde cannot; the first problem found, naming its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |field: &str, problem: String| Err(ConfigError::Invalid { field: field.into(), problem });
        let id = self.agent_id();
        if !valid_name(&id) {
            return invalid(
                "id",
                format!("'{id}' must be {} (it becomes part of bus topics)", proto::identity::RULE),
            );
        }
        self.profile()?;
        let h = &self.http;
        let loopback = |listen: &str| transport::is_local(&format!("tcp://{listen}"));
        if h.listen != "off" && !loopback(&h.listen) && h.token_file.is_none() {
            return invalid(
                "http.token_file",
                "the agent's HTTP endpoint listens beyond loopback: set token_file (a file with a long \
                 random token), or listen on 127.0.0.1"
                    .into(),
            );
        }
        if let (true, Some(path)) = (h.listen != "off", &h.token_file) {
            // A token others may read is no secret (and the check's only read of it).
            transport::secret::read_private(path, transport::secret::Place::Disk)?;
        }
        if h.max_connections == 0 {
            return invalid("http.max_connections", "must be at least 1".into());
        }
        if self.fleet.poll_ms < 100 {
            return invalid("fleet.poll_ms", "must be at least 100".into());
        }
        if self.hub.timeout_ms == 0 {
            return invalid("hub.timeout_ms", "must be at least 1".into());
        }
        if self.hub.server_cert.is_some() != self.hub.client_cert.is_some() {
            return invalid(
                "hub.server_cert/client_cert",
                "set both for a hub with security (the hub's public hub.key and this agent's .key_secret), or neither".into(),
            );
        }
        let u = &self.uplink;
        if u.batch_records == 0 || u.batch_bytes < 1024 {
            return invalid(
                "uplink.batch_records/batch_bytes",
                "must be at least 1 record and 1024 bytes".into(),
            );
        }
        if u.max_in_flight == 0 {
            return invalid("uplink.max_in_flight", "must be at least 1 (one batch at a time)".into());
        }
        if u.replay_rate == 0 {
            return invalid("uplink.replay_rate", "must be at least 1 sample per second".into());
        }
        if u.backoff_min_ms == 0 || u.backoff_max_ms < u.backoff_min_ms {
            return invalid(
                "uplink.backoff_max_ms",
                "must be at least backoff_min_ms, which must be at least 1".into(),
            );
        }
        let limits = self.limits()?;
        if limits.outbox_records == 0 || limits.outbox_bytes < 4096 {
            return invalid(
                "outbox.max_records/max_bytes",
                "must allow at least 1 record and 4096 bytes".into(),
            );
        }
        if self.outbox.max_events == Some(0) {
            return invalid("outbox.max_events", "must allow at least 1 alarm event".into());
        }
        if !(4096..=(64 << 20)).contains(&limits.segment_bytes) {
            return invalid("outbox.segment_bytes", "must be from 4096 to 67108864".into());
        }
        let mut links = std::collections::HashSet::new();
        for (i, link) in self.modbus.iter().enumerate() {
            let field = format!("modbus[{i}] ('{}')", link.name);
            if !valid_name(&link.name) {
                return invalid(&field, "name must be letters, digits, '-' or '_'".into());
            }
            if !links.insert(link.name.as_str()) {
                return invalid(&field, "name is used twice".into());
            }
            if let Err((key, problem)) = link.validate() {
                return invalid(&format!("{field}.{key}"), problem);
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, c) in self.effective_channels()?.iter().enumerate() {
            let field = format!("channel[{i}] ('{}')", c.name);
            if !valid_name(&c.name) {
                return invalid(&field, "name must be letters, digits, '-' or '_'".into());
            }
            if !names.insert(c.name.clone()) {
                return invalid(&field, "name is used twice".into());
            }
            if c.period_ms < 10 {
                return invalid(&format!("{field}.period_ms"), "must be at least 10".into());
            }
            if let Err(problem) = c.driver.validate() {
                return invalid(&format!("{field}.driver"), problem);
            }
            if let Some(Err((key, problem))) = c.report.as_ref().map(|r| r.validate()) {
                return invalid(&format!("{field}.report.{key}"), problem);
            }
            if let Some(Err((key, problem))) = c.aggregate.as_ref().map(|a| a.validate(c.period_ms)) {
                return invalid(&format!("{field}.aggregate.{key}"), problem);
            }
            if let Some(Err((key, problem))) = c.alarm.as_ref().map(|a| a.validate()) {
                return invalid(&format!("{field}.alarm.{key}"), problem);
            }
            if let boards::DriverSpec::Modbus(point) = &c.driver {
                if !links.contains(point.link.as_str()) {
                    let known: Vec<&str> = self.modbus.iter().map(|l| l.name.as_str()).collect();
                    return invalid(
                        &format!("{field}.driver.link"),
                        format!("no [[modbus]] link is named {:?} (links: {known:?})", point.link),
                    );
                }
            }
        }
        Ok(())
    }

    /// The config as the agent runs it, as TOML, with secrets redacted.
    pub fn redacted_toml(&self) -> String {
        let mut value = toml::Value::try_from(self).expect("the config is always representable as TOML");
        redact(&mut value);
        toml::to_string_pretty(&value).unwrap_or_default()
    }
}

/// Names that end up in topics and service names (and, with security, are
/// the agent's identity): one rule, `proto::identity`.
pub fn valid_name(name: &str) -> bool {
    proto::identity::is_valid(name)
}

/// The default id: the hostname, and 6 hex digits from the hardware serial
/// (Raspberry Pi: the device tree's `serial-number`) or else the machine id,
/// under `root`. Hostnames repeat across controllers cloned from one image;
/// serials never do, and a machine id differs unless the image was cloned
/// after first boot. Stable across restarts and upgrades (CRC-32 of the text).
pub fn default_id(root: &Path) -> String {
    let host = hostname();
    let sources = ["sys/firmware/devicetree/base/serial-number", "etc/machine-id"];
    let unique = sources.iter().find_map(|p| {
        let text = std::fs::read(root.join(p)).ok()?;
        let text: Vec<u8> = text.into_iter().filter(|b| !b.is_ascii_whitespace() && *b != 0).collect();
        (!text.is_empty()).then(|| format!("{:06x}", crc32fast::hash(&text) & 0xff_ffff))
    });
    match unique {
        // Within the 64 characters an id may have.
        Some(suffix) => format!("{}-{suffix}", &host[..host.len().min(proto::identity::MAX_LEN - 7)]),
        None => host,
    }
}

fn redact(value: &mut toml::Value) {
    if let toml::Value::Table(table) = value {
        for (key, v) in table.iter_mut() {
            let k = key.to_ascii_lowercase();
            if k.contains("secret") || k.contains("password") || k.contains("token") || k.ends_with("_key") {
                *v = toml::Value::String("<redacted>".into());
            } else {
                redact(v);
            }
        }
    } else if let toml::Value::Array(items) = value {
        items.iter_mut().for_each(redact);
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name: String = String::from_utf8_lossy(&buf[..end])
        .chars()
        .map(|c| if valid_name(&c.to_string()) { c } else { '-' })
        .collect();
    if ok && !name.is_empty() {
        name
    } else {
        "agent".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        toml::from_str::<Config>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_come_from_the_board() {
        let c = parse("id = \"pi-7\"\nboard = \"rpi-zero2w\"\n").unwrap();
        c.validate().unwrap();
        let limits = c.limits().unwrap();
        assert_eq!(limits.outbox_records, Profile::find("rpi-zero2w").unwrap().resources.outbox_records);
        assert_eq!(c.effective_channels().unwrap()[0].name, "soc_temp");
        let c = parse("id = \"x\"\n[outbox]\nmax_records = 10\n").unwrap();
        assert_eq!(c.limits().unwrap().outbox_records, 10);
        assert_eq!(limits.segment_bytes, 1 << 20, "about a megabyte: SD-card friendly");
        assert_eq!(limits.min_free_bytes, None, "sized from the file system");
        let c = parse("id = \"x\"\n[outbox]\nsegment_bytes = 65536\nmin_free_bytes = 0\n").unwrap();
        c.validate().unwrap();
        assert_eq!((c.limits().unwrap().segment_bytes, c.limits().unwrap().min_free_bytes), (65536, Some(0)));
        let c = parse("id = \"x\"\n[outbox]\nsegment_bytes = 100\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("outbox.segment_bytes"));
    }

    #[test]
    fn errors_name_the_field() {
        let err = parse("[uplink]\nbatch_record = 5\n").unwrap_err();
        assert!(err.contains("batch_record"), "{err}");
        let c = parse("id = \"a.b\"").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("`id`"));
        let c = parse("id = \"a\"\nboard = \"rpi9\"").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("`board` 'rpi9' is not a board profile"));
        let c =
            parse("id = \"a\"\n[[channel]]\nname = \"t\"\nperiod_ms = 1\ndriver = { kind = \"toggle\" }\n")
                .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("channel[0] ('t').period_ms"));
        let c = parse(
            "id = \"a\"\n[[channel]]\nname = \"t\"\ndriver = { kind = \"toggle\" }\n[[channel]]\nname = \"t\"\ndriver = { kind = \"toggle\" }\n",
        )
        .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("used twice"));
    }

    #[test]
    fn redaction_hides_secrets() {
        let mut v: toml::Value =
            toml::from_str("a = 1\n[hub]\nsecret_key = \"s3cr3t\"\ntoken = \"t\"\n").unwrap();
        redact(&mut v);
        let text = toml::to_string(&v).unwrap();
        assert!(!text.contains("s3cr3t") && text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn hostname_is_a_valid_id() {
        assert!(valid_name(&hostname()));
    }

    #[test]
    fn the_default_id_tells_cloned_controllers_apart() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let serial = "sys/firmware/devicetree/base/serial-number";
        for (dir, text) in [(&a, "10000000abcdef01\0"), (&b, "10000000abcdef02\0")] {
            std::fs::create_dir_all(dir.path().join(serial).parent().unwrap()).unwrap();
            std::fs::write(dir.path().join(serial), text).unwrap();
            std::fs::create_dir_all(dir.path().join("etc")).unwrap();
            std::fs::write(dir.path().join("etc/machine-id"), "same-image-id\n").unwrap();
        }
        let (id_a, id_b) = (default_id(a.path()), default_id(b.path()));
        assert_ne!(id_a, id_b, "same hostname and machine id, different boards");
        assert!(id_a.starts_with(&hostname()) && valid_name(&id_a), "{id_a}");
        assert_eq!(default_id(a.path()), id_a, "stable");
        std::fs::remove_file(a.path().join(serial)).unwrap();
        assert_ne!(default_id(a.path()), id_a, "falls back to the machine id");
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(default_id(empty.path()), hostname(), "nothing unique known: the hostname");
    }

    #[test]
    fn a_token_others_may_read_is_refused_when_http_is_on() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("http.token");
        std::fs::write(&token, "t0ken\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = |listen: &str| {
            format!("id = \"x\"\n[http]\nlisten = \"{listen}\"\ntoken_file = \"{}\"\n", token.display())
        };
        let e = parse(&text("0.0.0.0:9100")).unwrap().validate().unwrap_err().to_string();
        assert!(
            e.contains("http.token_file") && e.contains(&format!("chmod 600 {}", token.display())),
            "{e}"
        );
        parse(&text("off")).unwrap().validate().unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        parse(&text("0.0.0.0:9100")).unwrap().validate().unwrap();
    }
}
