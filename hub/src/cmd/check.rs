use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use hub::config::Config;

use super::CmdResult;

/// Validate a hub config file without starting anything: its syntax, every
/// value and bound, the exposure rules (what may listen beyond loopback
/// without security or a token), and the files it names (the hub's
/// certificate, the allow-list directory, the HTTP token; secret ones must be
/// their owner's alone). Exit 0 when the hub would start with it, 78 when it
/// would not.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "check-config",
    example = "hub check-config /etc/plantd/hub.toml",
    example = "hub check-config hub.toml && systemctl reload plantd-hub",
    error_code(78, "the config is invalid; the message names the field and what to do")
)]
pub struct CheckConfigArgs {
    /// the TOML config file
    #[argh(positional)]
    file: PathBuf,
}

pub fn run(args: CheckConfigArgs) -> CmdResult {
    let config = match Config::load(&args.file) {
        Ok(config) => config,
        Err(e) => return Ok(plumbing::config_invalid("hub", &e)),
    };
    if let Err(e) = config.validate() {
        return Ok(plumbing::config_invalid("hub", &e));
    }
    let security = match &config.security {
        Some(settings) => match hub::security::Security::load(settings) {
            // Files sharing a key do not stop the hub (it refuses those
            // keys, logged above as errors), so they do not fail the check.
            Ok(security) => match security.conflicting_files() {
                0 => format!("{} identities allowed", security.allow_list().len()),
                n => format!(
                    "{} identities allowed, {n} files in clients_dir refused for sharing a key",
                    security.allow_list().len()
                ),
            },
            Err(e) => return Ok(plumbing::config_invalid("hub", &e)),
        },
        None => "off (loopback only)".into(),
    };
    if let Some(path) = &config.http.token_file {
        if let Err(e) = hub::http::read_token(path) {
            return Ok(plumbing::config_invalid("hub", &e));
        }
    }
    let bridge = match config.bridge_nats() {
        Some(nats) => match nats.check_files() {
            Ok(()) => format!(", bridge to NATS as site {} into stream {}", nats.site, nats.stream),
            Err(e) => return Ok(plumbing::config_invalid("hub", &e)),
        },
        None => String::new(),
    };
    let pipelines = match config.pipelines.len() {
        0 => String::new(),
        n => format!(", {n} pipeline(s)"),
    };
    println!(
        "config ok: broker {}, {} bus(es), state {}, ingest {}, security {security}, http {}{bridge}{pipelines}",
        config.broker.endpoint,
        config.buses.len(),
        if config.state.enabled { "on" } else { "off" },
        if config.ingest.enabled { "on" } else { "off" },
        config.http.listen,
    );
    Ok(ExitCode::SUCCESS)
}
