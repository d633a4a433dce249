//! Following the hub's desired configuration: poll `org.plantd.Fleet`
//! (which also reports how the agent stands), and apply a new version.
//!
//! A version is applied only whole: its fragment passes the fleet rules and
//! the merged config `agent check --config-only`'s checks, every new or
//! changed channel's driver reads once (a GPIO line that cannot be opened, a
//! sysfs file that is not there: rolled back, the old channels never
//! stopped), and the version is stored in the data directory. Only then do
//! the channel tasks change: unchanged channels run on, durable samples keep
//! their one sequence, so nothing is lost or renumbered.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::fleet::{state, Poll, PollReply};
use serde_json::{json, Value as Json};
use smol::channel::Sender;
use transport::{AsyncClient, ClientOptions, Endpoint};

use super::{Applied, Invalid, LIVE, ON_RESTART};
use crate::config::Config;
use crate::service::Channels;
use crate::status::Shared;

/// How the agent stands with its desired configuration (status, and each poll).
#[derive(Clone, Debug)]
pub struct FleetStatus {
    pub enabled: bool,
    pub applied: Applied,
    /// The last desired version evaluated, applied or not.
    pub evaluated: u64,
    /// The desired version the hub last named (0: none set, or not heard yet).
    pub desired: u64,
    pub state: &'static str,
    pub reason: Option<String>,
    pub pending: Vec<String>,
}

impl FleetStatus {
    pub fn new(enabled: bool, applied: Applied) -> Self {
        let state = if applied.version == 0 { state::LOCAL } else { state::APPLIED };
        FleetStatus {
            enabled,
            evaluated: applied.version,
            desired: 0,
            state,
            reason: None,
            pending: Vec::new(),
            applied,
        }
    }

    pub fn to_json(&self) -> Json {
        json!({
            "enabled": self.enabled,
            "applied": self.applied.version,
            "applied_hash": self.applied.hash,
            "desired": self.desired,
            "state": self.state,
            "reason": self.reason,
            "pending": self.pending,
        })
    }

    fn poll(&self, agent: &str) -> Poll {
        Poll {
            agent: agent.to_string(),
            applied: self.applied.version,
            applied_hash: self.applied.hash.clone(),
            evaluated: self.evaluated,
            state: self.state.to_string(),
            reason: self.reason.clone(),
            pending: self.pending.clone(),
        }
    }
}

/// The configuration an agent starts with: the local file, with the fleet
/// version applied before laid over it (unless `[fleet] enabled = false`).
/// A stored version that no longer passes is reported and left out.
pub fn startup(local: &Config) -> (Config, FleetStatus) {
    let enabled = local.fleet.enabled;
    let stored = if enabled { Applied::load(&local.data_dir) } else { Ok(None) };
    let applied = match stored {
        Ok(Some(applied)) => applied,
        Ok(None) => return (local.clone(), FleetStatus::new(enabled, Applied::default())),
        Err(e) => {
            log::error!("fleet configuration: {e}; starting on the local file");
            return (local.clone(), FleetStatus::new(enabled, Applied::default()));
        }
    };
    match super::check(local, &applied.fragment) {
        Ok((_, config)) => {
            log::info!("starting on fleet configuration version {} over the local file", applied.version);
            (config, FleetStatus::new(enabled, applied))
        }
        Err(e) => {
            log::error!(
                "the stored fleet configuration version {} no longer passes ({e}); starting on the local file",
                applied.version
            );
            let mut status = FleetStatus::new(enabled, Applied::default());
            (status.state, status.reason) = (state::REJECTED, Some(e.to_string()));
            (local.clone(), status)
        }
    }
}

/// What the follower needs to apply a version.
pub struct Follower {
    pub shared: Arc<Shared>,
    /// The local file (with its flags): every version is laid over it.
    pub local: Config,
    /// What the agent started with: sections that apply on restart are compared to it.
    pub boot: Config,
    /// What runs now.
    pub running: Config,
    /// Told when the channel set changed, so the samplers follow.
    pub channels_changed: Sender<()>,
    pub wake_uplink: Sender<()>,
}

impl Follower {
    /// Polls the hub every `poll_ms` until the agent stops; applies what it sends.
    pub async fn run(mut self, ctx: zmq::Context, broker: Endpoint, timeout: Duration) {
        let every = Duration::from_millis(self.local.fleet.poll_ms);
        let options = ClientOptions { timeout, retries: 0, ..ClientOptions::default() };
        let mut client = AsyncClient::new(&ctx, &broker, options);
        let mut refused = false;
        loop {
            let poll =
                serde_json::to_string(&self.shared.fleet().poll(&self.shared.id)).expect("a poll serialises");
            let answer = client.request(proto::fleet::SERVICE, &[b"poll".as_slice(), poll.as_bytes()]).await;
            let reply = answer.ok().and_then(|frames| frames.into_iter().next());
            match reply.map(|f| serde_json::from_slice::<PollReply>(&f).map_err(|_| f)) {
                Some(Ok(reply)) if reply.error.is_none() => {
                    refused = false;
                    self.shared.fleet().desired = reply.version;
                    if let Some(text) = reply.config {
                        self.apply(reply.version, reply.hash, text).await;
                        continue; // report at once
                    }
                }
                Some(other) => {
                    if !refused {
                        let why = match other {
                            Ok(reply) => reply.error.unwrap_or_default(),
                            Err(frame) => String::from_utf8_lossy(&frame).into_owned(),
                        };
                        log::warn!(
                            "the hub refuses this agent's fleet configuration polls ({why}): give its identity \
                             a role that may call {} (the built-in agent role may)",
                            proto::fleet::SERVICE
                        );
                    }
                    refused = true;
                }
                None => {} // the hub is away: ask again later
            }
            smol::Timer::after(every).await;
        }
    }

    /// Evaluates desired `version`; on success it runs and is stored.
    async fn apply(&mut self, version: u64, hash: String, text: String) {
        self.shared.fleet().evaluated = version;
        let outcome = match super::check(&self.local, &text) {
            Err(e) => Err((state::REJECTED, e)),
            Ok((_, wanted)) => match wanted.hub_endpoints() {
                Err(e) => Err((state::REJECTED, super::as_invalid(e))),
                Ok(_) => {
                    self.switch(&wanted, Applied { version, hash, fragment: text }).await.map(|()| wanted)
                }
            },
        };
        let mut fleet = self.shared.fleet();
        match outcome {
            Ok(wanted) => {
                let pending = super::changed(&self.boot, &wanted, &ON_RESTART);
                fleet.pending = pending.iter().map(|s| s.to_string()).collect();
                fleet.state = if pending.is_empty() { state::APPLIED } else { state::PENDING_RESTART };
                fleet.reason = None;
                log::info!(
                    "applied fleet configuration version {version}{}",
                    if pending.is_empty() {
                        String::new()
                    } else {
                        format!("; at the next restart: {pending:?}")
                    }
                );
                self.running = wanted;
            }
            Err((state, why)) => {
                log::warn!(
                    "fleet configuration version {version} {state}: {why}; running on the last good one"
                );
                (fleet.state, fleet.reason) = (state, Some(why.to_string()));
            }
        }
    }

    /// Builds what changed, stores the version, then switches to it.
    async fn switch(&mut self, wanted: &Config, applied: Applied) -> Result<(), (&'static str, Invalid)> {
        let live = super::changed(&self.running, wanted, &LIVE);
        let channels = if live.contains(&"channel") || live.contains(&"modbus") {
            Some(self.build(wanted).await.map_err(|e| (state::ROLLED_BACK, e))?)
        } else {
            None
        };
        let (stored, dir) = (applied.clone(), self.local.data_dir.clone());
        smol::unblock(move || stored.save(&dir)).await.map_err(|e| {
            let why = super::invalid("data_dir", format!("cannot store the applied version: {e}"));
            (state::ROLLED_BACK, why)
        })?;
        let shared = &self.shared;
        if let Some(channels) = channels {
            shared.alarms.reconfigure(channels.by_name.values().map(|(c, _)| c));
            *shared.channel_set.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(channels);
            let _ = self.channels_changed.try_send(());
        }
        if live.contains(&"uplink") {
            *shared.uplink.lock().unwrap_or_else(|e| e.into_inner()) = wanted.uplink.clone();
            shared.uplink_changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = self.wake_uplink.try_send(());
        }
        if live.contains(&"log_level") {
            plumbing::set_log_level(Some(&wanted.log_level));
        }
        *shared.config_toml.lock().unwrap_or_else(|e| e.into_inner()) = wanted.redacted_toml();
        shared.fleet().applied = applied;
        Ok(())
    }

    /// The channel set `wanted` names: unchanged channels keep their
    /// drivers; new and changed ones get new drivers, each read once.
    async fn build(&self, wanted: &Config) -> Result<Channels, Invalid> {
        let current = self.shared.channel_set();
        let relinked = self.running.modbus != wanted.modbus;
        let links = if relinked {
            boards::modbus::Links::start(&wanted.modbus)
                .map_err(|e| super::invalid("modbus", format!("cannot start a link: {e}")))?
        } else {
            current.links.clone()
        };
        let mut by_name = BTreeMap::new();
        for (i, c) in wanted.effective_channels().map_err(super::as_invalid)?.into_iter().enumerate() {
            // An unchanged driver is kept even if the rest of the channel
            // changed (its period, unit, alarm): a GPIO line stays requested
            // by its driver, and a second request for it would fail.
            let kept = current.by_name.get(&c.name).filter(|(old, _)| {
                old.driver == c.driver && !(relinked && matches!(c.driver, boards::DriverSpec::Modbus(_)))
            });
            if let Some((_, driver)) = kept {
                by_name.insert(c.name.clone(), (c, driver.clone()));
                continue;
            }
            let driver = Arc::new(Mutex::new(c.driver.build(&wanted.board_root, &links)));
            let (probe, t) = (driver.clone(), self.shared.clock.elapsed());
            let read =
                smol::unblock(move || probe.lock().unwrap_or_else(|e| e.into_inner()).read(t).map(|_| ()))
                    .await;
            match read {
                // The instrument answered badly: the driver itself works.
                Ok(()) | Err(boards::DriverError::Bad { .. }) => {}
                Err(e) => {
                    return Err(super::invalid(format!("channel[{i}] ('{}').driver", c.name), e.to_string()))
                }
            }
            by_name.insert(c.name.clone(), (c, driver));
        }
        Ok(Channels { by_name, links })
    }
}
