use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use agent::config::Config;
use agent::outbox::mib;
use argh::FromArgs;
use serde_json::json;
use transport::handshake::Handshake;
use transport::{Client, ClientOptions};

use super::{config_flags, CmdResult};

config_flags! {
    /// Check that this agent can run here and reach its hub: the config, the
    /// data directory and store, the hub (TCP, then a Majordomo round trip),
    /// the metric bus, and the clock. One line per check; exit status 1 if
    /// any check fails (warnings do not fail).
    #[derive(FromArgs)]
    #[argh(
        subcommand,
        name = "check",
        example = "agent check",
        example = "agent check --config /etc/plantd/agent.toml --json",
        example = "agent check --config-only /etc/plantd/agent.toml   # the file alone, nothing else touched",
        error_code(1, "at least one check failed"),
        error_code(78, "--config-only: the file is not a valid config (the message names the field)")
    )]
    pub struct CheckArgs {
        /// print the results as a JSON array
        #[argh(switch)]
        json: [bool],
        /// only validate this config file (and the certificates it names): touch no store, call no hub
        #[argh(option)]
        config_only: [Option<std::path::PathBuf>],
    }
}

/// `--config-only`: parse, validate, and read the certificates it names.
fn config_only(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => return plumbing::config_invalid("agent", &e),
    };
    let checked = config.validate().and_then(|()| config.hub_endpoints().map(|_| ()));
    if let Err(e) = checked {
        return plumbing::config_invalid("agent", &e);
    }
    let channels = config.effective_channels().map(|c| c.len()).unwrap_or(0);
    println!(
        "config ok: id {}, board {}, {channels} channel(s), hub {}{}",
        config.agent_id(),
        config.board,
        config.hub.broker,
        if config.hub.client_cert.is_some() { " with CURVE" } else { "" }
    );
    ExitCode::SUCCESS
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Check {
    name: &'static str,
    level: Level,
    detail: String,
    ms: Option<f64>,
}

fn check(name: &'static str, level: Level, detail: impl Into<String>) -> Check {
    Check { name, level, detail: detail.into(), ms: None }
}

pub fn run(args: CheckArgs) -> CmdResult {
    if let Some(path) = &args.config_only {
        return Ok(config_only(path));
    }
    let config = args.load()?;
    let checks = run_checks(&config);
    let failed = checks.iter().any(|c| c.level == Level::Fail);
    if args.json {
        let list: Vec<_> = checks
            .iter()
            .map(|c| {
                let status = match c.level {
                    Level::Ok => "ok",
                    Level::Warn => "warn",
                    Level::Fail => "fail",
                };
                json!({"check": c.name, "status": status, "detail": c.detail, "ms": c.ms})
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        for c in &checks {
            let tag = match c.level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            let ms = c.ms.map(|ms| format!(" ({ms:.1} ms)")).unwrap_or_default();
            println!("{tag}  {:<12} {}{ms}", c.name, c.detail);
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn run_checks(config: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    match config.validate() {
        Ok(()) => {
            let channels = config.effective_channels().map(|c| c.len()).unwrap_or(0);
            out.push(check(
                "config",
                Level::Ok,
                format!("id {}, board {}, {channels} channel(s)", config.agent_id(), config.board),
            ));
        }
        Err(e) => out.push(check("config", Level::Fail, e.to_string())),
    }
    out.push(data_dir(config));
    out.push(store(config));
    out.extend(hub(config));
    out.push(tcp("bus", &config.hub.bus, config.hub_timeout()));
    out.extend(modbus(config));
    out.extend(clock(config));
    out
}

/// One read per configured unit (its first channel's point), so a wrong
/// unit id, address or wire shows before the agent runs.
fn modbus(config: &Config) -> Vec<Check> {
    use boards::modbus::wire::{self, Request};
    let channels = config.effective_channels().unwrap_or_default();
    let mut out = Vec::new();
    for link in &config.modbus {
        let mut wire = wire::open(link);
        let mut units = std::collections::BTreeSet::new();
        for channel in &channels {
            let boards::DriverSpec::Modbus(spec) = &channel.driver else { continue };
            let Ok(point) = spec.point() else { continue };
            if spec.link != link.name || !units.insert(spec.unit) {
                continue;
            }
            let request =
                Request::Read { table: point.table, address: point.address, count: spec.width(point.table) };
            let what = format!(
                "link {} unit {}: {} {} (channel {})",
                link.name,
                spec.unit,
                point.table.name(),
                point.address,
                channel.name
            );
            let started = Instant::now();
            let mut c = match wire.transact(spec.unit, &request) {
                Ok(_) => check("modbus", Level::Ok, format!("{what} answers")),
                Err(e) => check("modbus", Level::Fail, format!("{what}: {e}")),
            };
            c.ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            out.push(c);
        }
    }
    out
}

fn data_dir(config: &Config) -> Check {
    let dir = &config.data_dir;
    let probe = dir.join(".check-write");
    let result = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&probe, b"ok"))
        .and_then(|_| std::fs::remove_file(&probe));
    match result {
        Ok(()) => check("data dir", Level::Ok, format!("{} is writable", dir.display())),
        Err(e) => {
            check("data dir", Level::Fail, format!("{}: {e} (choose another with --data-dir)", dir.display()))
        }
    }
}

fn store(config: &Config) -> Check {
    let path = config.data_dir.join("store");
    let outbox = config.outbox_dir();
    if !path.exists() && !outbox.exists() {
        return match reserve(config, &config.data_dir) {
            Some(short) => check("store", Level::Warn, format!("none yet; {short}")),
            None => check("store", Level::Ok, "none yet (created on first run)"),
        };
    }
    if let Ok(status) = agent::control::ask_status(&config.data_dir, Duration::from_millis(500)) {
        // The running agent says what is wrong now (the disk short of its reserve, a store failing).
        let warnings: Vec<&str> =
            status["warnings"].as_array().into_iter().flatten().filter_map(|w| w.as_str()).collect();
        return match warnings.is_empty() {
            true => check("store", Level::Ok, "in use by the running agent, which reports no trouble"),
            false => check("store", Level::Warn, format!("the running agent says: {}", warnings.join("; "))),
        };
    }
    let cache = config.limits().map(|l| l.cache_bytes).unwrap_or(1 << 20);
    if path.exists() {
        if let Err(e) = agent::store::Store::open_as_is(&path, cache) {
            let what = if agent::store::is_damage(e.sled()) {
                "the agent will move it aside and start afresh"
            } else {
                "the agent will not start until this is fixed"
            };
            return check("store", Level::Fail, format!("{}: {e} ({what})", path.display()));
        }
    }
    let inspected = agent::outbox::Outbox::<proto::sample::Sample>::inspect(&outbox)
        .and_then(|o| Ok((o.verify()?, o.stats(), o.made_as())));
    let id = config.agent_id();
    match inspected {
        Ok(((intact, damaged), s, made_as)) => {
            let mut warnings = Vec::new();
            if damaged > 0 {
                warnings.push(format!("{damaged} damaged stretch(es): the agent quarantines them; `agent store repair` does it now"));
            }
            for (_, other) in made_as.iter().filter(|(_, made)| **made != *id) {
                warnings.push(format!(
                    "records made as '{other}' (the id is now '{id}'): they will be sent as '{other}'"
                ));
            }
            warnings.extend(reserve(config, &outbox));
            let level = if warnings.is_empty() { Level::Ok } else { Level::Warn };
            let free = s.free_bytes.map_or("unknown".into(), mib);
            let mut detail = format!("{intact} intact outbox record(s); {free} free on its file system");
            for warning in warnings {
                detail.push_str("; ");
                detail.push_str(&warning);
            }
            check("store", level, detail)
        }
        Err(e) => check("store", Level::Fail, format!("{}: {e}", outbox.display())),
    }
}

/// Whether the disk under `path` is short of the outbox's reserve (so the
/// agent would drop the oldest sample for each new one), said with what to do.
fn reserve(config: &Config, path: &std::path::Path) -> Option<String> {
    let (free, total) = stores::space(path).ok()?;
    let set = config.limits().ok()?.min_free_bytes;
    let reserve = set.unwrap_or_else(|| agent::outbox::reserve_for(total));
    (free < reserve).then(|| {
        format!(
            "the disk has {} free, under the outbox's reserve of {} ({}): the agent would drop the oldest \
             sample for each new one. Free some space, or lower outbox.min_free_bytes",
            mib(free),
            mib(reserve),
            if set.is_some() { "outbox.min_free_bytes" } else { "sized from the file system" }
        )
    })
}

/// `tcp://host:port` → a TCP connect with timing.
fn tcp(name: &'static str, endpoint: &str, timeout: Duration) -> Check {
    let Some(address) = endpoint.strip_prefix("tcp://") else {
        return check(name, Level::Ok, format!("{endpoint} is not TCP; skipped"));
    };
    let started = Instant::now();
    let resolved = address.to_socket_addrs().map(|mut a| a.next());
    let result = match resolved {
        Ok(Some(addr)) => TcpStream::connect_timeout(&addr, timeout).map(|_| ()),
        Ok(None) => Err(std::io::Error::other("no address")),
        Err(e) => Err(e),
    };
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(()) => Check { ms: Some(ms), ..check(name, Level::Ok, format!("{endpoint} accepts connections")) },
        Err(e) => check(
            name,
            Level::Fail,
            format!("{endpoint}: {e} (is the hub running, and is the endpoint right?)"),
        ),
    }
}

fn hub(config: &Config) -> Vec<Check> {
    let timeout = config.hub_timeout();
    let tcp = tcp("hub tcp", &config.hub.broker, timeout);
    if tcp.level == Level::Fail {
        return vec![tcp];
    }
    let broker = match config.hub_endpoints() {
        Ok((broker, _)) => broker,
        Err(e) => return vec![tcp, check("hub keys", Level::Fail, e.to_string())],
    };
    let ctx = zmq::Context::new();
    let mut out = vec![tcp];
    if broker.curve.is_some() {
        let keys = keys(config, &ctx, &broker, timeout);
        let failed = keys.level == Level::Fail;
        out.push(keys);
        if failed {
            return out;
        }
    }
    let mut client =
        Client::new(&ctx, broker, ClientOptions { timeout, retries: 0, ..ClientOptions::default() });
    let started = Instant::now();
    let reply = client.request("mmi.service", &[proto::ingest::SERVICE.as_bytes()]);
    let ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    let mdp = match reply.as_ref().map(|r| r.first().map(|f| f.to_vec())) {
        Ok(Some(status)) if status == b"200" => Check {
            ms,
            ..check("hub mdp", Level::Ok, "mmi.service round trip: the hub's ingest service is up")
        },
        Ok(_) => Check {
            ms,
            ..check(
                "hub mdp",
                Level::Fail,
                "the broker answers but has no org.plantd.Ingest worker (is ingest enabled in the hub?)",
            )
        },
        Err(e) => check("hub mdp", Level::Fail, e.to_string()),
    };
    out.push(mdp);
    out
}

/// The CURVE handshake with the hub, and which key to fix when it fails.
fn keys(config: &Config, ctx: &zmq::Context, broker: &transport::Endpoint, timeout: Duration) -> Check {
    let path =
        |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let (server, own) = (path(&config.hub.server_cert), path(&config.hub.client_cert));
    let host = broker
        .address
        .trim_start_matches("tcp://")
        .rsplit_once(':')
        .map_or("the hub", |(h, _)| h)
        .to_string();
    let outcome = transport::handshake::probe(ctx, broker, timeout);
    let (level, detail) = match outcome {
        Ok(Handshake::Succeeded) => (Level::Ok, "CURVE handshake with the hub succeeded".to_string()),
        Ok(Handshake::WrongServerKey) => (
            Level::Fail,
            format!(
                "the hub dropped the CURVE handshake: {server} is not the hub's public key. Fetch the hub's \
                 own (scp {host}:/etc/plantd/keys/hub.key {server})"
            ),
        ),
        Ok(Handshake::Refused(code)) => (
            Level::Fail,
            format!(
                "the hub refused this agent's key ({code}): add its public half to the hub's allow-list \
                 (on the hub: hub keys add agent.key --name {}, with agent.key copied from next to {own})",
                config.agent_id()
            ),
        ),
        Ok(Handshake::MechanismMismatch) => (
            Level::Fail,
            "the hub does not speak CURVE: give it [security], or remove server_cert/client_cert from [hub]"
                .to_string(),
        ),
        Ok(Handshake::Failed(code)) => {
            (Level::Fail, format!("the CURVE handshake failed (protocol error {code:#x})"))
        }
        Ok(Handshake::NoAnswer) => (Level::Fail, format!("no CURVE handshake within {timeout:?}")),
        Err(e) => (Level::Fail, e.to_string()),
    };
    check("hub keys", level, detail)
}

fn clock(config: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    if agent::clock::synced() {
        out.push(check("clock sync", Level::Ok, "the kernel reports a synchronised clock"));
    } else {
        out.push(check(
            "clock sync",
            Level::Warn,
            "not synchronised (samples are flagged clock_synced=false; enable NTP, e.g. systemd-timesyncd)",
        ));
    }
    let path = config.data_dir.join("store");
    let last = agent::store::Store::open_as_is(&path, 1 << 20)
        .ok()
        .and_then(|s| s.get_u64("last_wall_ns").ok().flatten());
    let now = agent::clock::wall_ns();
    match last {
        Some(last) if (last as i64) > now => out.push(check(
            "clock order",
            Level::Fail,
            format!(
                "the clock is {:.0} s behind the last time this agent recorded: it jumped back (no RTC?); fix time sync",
                (last as i64 - now) as f64 / 1e9
            ),
        )),
        Some(_) => out.push(check("clock order", Level::Ok, "not behind the last recorded time")),
        None => out.push(check("clock order", Level::Ok, "no earlier time recorded (or the agent is running)")),
    }
    out
}
