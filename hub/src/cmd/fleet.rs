//! `hub config`: agents' desired configurations, set at the hub and
//! applied by the agents (see `hub::fleet` and `agent::fleet`).

use std::process::ExitCode;

use argh::FromArgs;
use serde_json::Value;

use super::{ask_json, print_json, text, CmdResult, Connection};

/// Fleet configuration: set a TOML fragment for an agent or a group of
/// agents (a glob over ids), and see which agents run it. Each section the
/// fragment holds replaces that section of the agent's local file; the rest
/// of the file stands. Sections: [[channel]], [[modbus]], [uplink] and
/// log_level apply at once; board, board_root, [hub], [outbox], [store],
/// [local_state] and [http] at the agent's next restart.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "config",
    example = "hub config set 'pump-*' pumps.toml     # every agent whose id starts with pump-",
    example = "hub config status                      # who runs what; drift at a glance",
    example = "hub config diff pump-7                 # the last change",
    example = "hub config rollback 'pump-*' 12",
    note = "An agent's desired configuration is the most specific glob that matches its id, with its own id's target laid over it section by section.",
    note = "Setting and reading configurations is org.plantd.Fleet.Admin: with security, an operator's certificate.",
    note = "Connects as --broker, --cert, --server-cert, --timeout and --context say (before or after the command), else PLANTD_* or the current context: see `hub context --help`.",
    error_code(1, "the hub answered with an error"),
    error_code(3, "the hub did not answer within the timeout"),
    error_code(
        78,
        "set, check: the fragment is not a valid agent configuration (the message names the field)"
    )
)]
pub struct ConfigArgs {
    #[argh(subcommand)]
    command: Sub,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Sub {
    Set(SetArgs),
    Show(ShowArgs),
    Diff(DiffArgs),
    History(HistoryArgs),
    Rollback(RollbackArgs),
    Status(StatusArgs),
    Check(CheckArgs),
}

/// Check a fragment and store it as TARGET's next version; agents apply it within seconds.
#[derive(FromArgs)]
#[argh(subcommand, name = "set")]
struct SetArgs {
    /// an agent id, or a glob over ids (`pump-*`)
    #[argh(positional)]
    target: String,
    /// the TOML fragment
    #[argh(positional)]
    file: std::path::PathBuf,
}

/// Print TARGET's desired configuration (secrets redacted).
#[derive(FromArgs)]
#[argh(subcommand, name = "show")]
struct ShowArgs {
    #[argh(positional)]
    target: String,
    /// an earlier version (see `history`)
    #[argh(option)]
    version: Option<u64>,
    /// print the JSON the hub sent
    #[argh(switch)]
    json: bool,
}

/// Show what changed between two of TARGET's versions, as a unified diff.
#[derive(FromArgs)]
#[argh(subcommand, name = "diff")]
struct DiffArgs {
    #[argh(positional)]
    target: String,
    /// the older version (default: the one before the newest)
    #[argh(option)]
    from: Option<u64>,
    /// the newer version (default: the newest)
    #[argh(option)]
    to: Option<u64>,
}

/// List TARGET's kept versions, newest first.
#[derive(FromArgs)]
#[argh(subcommand, name = "history")]
struct HistoryArgs {
    #[argh(positional)]
    target: String,
    /// print the JSON the hub sent
    #[argh(switch)]
    json: bool,
}

/// Make version VERSION's configuration TARGET's newest again (as a new version).
#[derive(FromArgs)]
#[argh(subcommand, name = "rollback")]
struct RollbackArgs {
    #[argh(positional)]
    target: String,
    #[argh(positional)]
    version: u64,
}

/// Every agent that asked for its configuration: desired and applied version, state.
#[derive(FromArgs)]
#[argh(subcommand, name = "status")]
struct StatusArgs {
    /// print the JSON the hub sent
    #[argh(switch)]
    json: bool,
}

/// Check a fragment as the hub and the agents will, without a hub.
#[derive(FromArgs)]
#[argh(subcommand, name = "check")]
struct CheckArgs {
    #[argh(positional)]
    file: std::path::PathBuf,
}

pub fn run(args: ConfigArgs, connection: &Connection) -> CmdResult {
    match args.command {
        Sub::Check(a) => {
            let fragment = read(&a.file)?;
            // Secrets are allowed here: whether they may go depends on the hub's security.
            match hub::fleet::check(&fragment, true) {
                Ok(()) => {
                    println!("fragment ok: {}", a.file.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(plumbing::config_invalid("hub", &format!("{}: {e}", a.file.display()))),
            }
        }
        Sub::Set(a) => {
            let fragment = read(&a.file)?;
            if let Err(e) = hub::fleet::check(&fragment, true) {
                return Ok(plumbing::config_invalid("hub", &format!("{}: {e}", a.file.display())));
            }
            let Some(reply) = ask(&["set", &a.target, &fragment], connection)? else {
                return Ok(ExitCode::from(3));
            };
            if reply["field"].is_string() {
                let e = format!("{}: {}", a.file.display(), text_of(&reply["error"]));
                return Ok(plumbing::config_invalid("hub", &e));
            }
            let reply = answered(reply)?;
            println!("{}: version {} ({})", a.target, reply["version"], text(&reply["hash"]));
            Ok(ExitCode::SUCCESS)
        }
        Sub::Rollback(a) => {
            let Some(reply) = ask(&["rollback", &a.target, &a.version.to_string()], connection)? else {
                return Ok(ExitCode::from(3));
            };
            let reply = answered(reply)?;
            println!(
                "{}: version {}, the configuration of version {}",
                a.target, reply["version"], a.version
            );
            Ok(ExitCode::SUCCESS)
        }
        Sub::Show(a) => {
            let version = a.version.map(|v| v.to_string());
            let mut request = vec!["show", a.target.as_str()];
            request.extend(version.as_deref());
            let Some(reply) = ask(&request, connection)? else { return Ok(ExitCode::from(3)) };
            let reply = answered(reply)?;
            if a.json {
                print_json(&reply)?;
            } else {
                println!(
                    "# {} version {} ({}), set by {} at {}",
                    a.target,
                    reply["version"],
                    text(&reply["hash"]),
                    who(&reply["set_by"]),
                    when(&reply["set_at_ns"])
                );
                print!("{}", text_of(&reply["config"]));
            }
            Ok(ExitCode::SUCCESS)
        }
        Sub::History(a) => {
            let Some(reply) = ask(&["history", &a.target], connection)? else { return Ok(ExitCode::from(3)) };
            let reply = answered(reply)?;
            if a.json {
                print_json(&reply)?;
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<8} {:<16} {:<16} {:<30} {:>6}  NOTE",
                "VERSION", "HASH", "SET BY", "SET AT", "BYTES"
            );
            for v in reply["versions"].as_array().into_iter().flatten() {
                let note = v["rollback_of"].as_u64().map(|r| format!("rollback to {r}")).unwrap_or_default();
                println!(
                    "{:<8} {:<16} {:<16} {:<30} {:>6}  {note}",
                    v["version"],
                    text(&v["hash"]),
                    who(&v["set_by"]),
                    when(&v["set_at_ns"]),
                    v["bytes"]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Sub::Diff(a) => {
            let Some(history) = ask(&["history", &a.target], connection)? else {
                return Ok(ExitCode::from(3));
            };
            let history = answered(history)?;
            let kept: Vec<u64> = history["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v["version"].as_u64())
                .collect();
            let to = a.to.or(kept.first().copied()).ok_or("no versions kept")?;
            let from = match a.from {
                Some(from) => from,
                None => *kept
                    .iter()
                    .find(|v| **v < to)
                    .ok_or_else(|| format!("{} has no version before {to}", a.target))?,
            };
            let mut texts = Vec::new();
            for v in [from, to] {
                let Some(reply) = ask(&["show", &a.target, &v.to_string()], connection)? else {
                    return Ok(ExitCode::from(3));
                };
                texts.push(text_of(&answered(reply)?["config"]));
            }
            let diff = similar::TextDiff::from_lines(&texts[0], &texts[1]);
            print!(
                "{}",
                diff.unified_diff()
                    .header(&format!("{} version {from}", a.target), &format!("{} version {to}", a.target))
            );
            Ok(ExitCode::SUCCESS)
        }
        Sub::Status(a) => {
            let Some(reply) = ask(&["status"], connection)? else { return Ok(ExitCode::from(3)) };
            let reply = answered(reply)?;
            if a.json {
                print_json(&reply)?;
                return Ok(ExitCode::SUCCESS);
            }
            println!("{:<24} {:>8} {:>8}  {:<16} DETAIL", "AGENT", "DESIRED", "APPLIED", "STATE");
            for r in reply["agents"].as_array().into_iter().flatten() {
                let detail = match (r["reason"].as_str(), r["pending"].as_array()) {
                    (Some(reason), _) => reason.to_string(),
                    (None, Some(p)) if !p.is_empty() => {
                        format!("at restart: {}", p.iter().map(text).collect::<Vec<_>>().join(", "))
                    }
                    _ => String::new(),
                };
                let state =
                    format!("{}{}", text(&r["state"]), if r["drift"] == true { " (drift)" } else { "" });
                println!(
                    "{:<24} {:>8} {:>8}  {:<16} {detail}",
                    text(&r["agent"]),
                    r["desired"],
                    r["applied"],
                    state
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read(path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The hub's JSON answer, an error in it as an error.
fn answered(reply: Value) -> Result<Value, String> {
    match reply["error"].as_str() {
        Some(e) => Err(e.to_string()),
        None => Ok(reply),
    }
}

fn text_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn who(v: &Value) -> String {
    match v.as_str() {
        Some("") | None => "-".into(),
        Some(name) => name.into(),
    }
}

fn when(ns: &Value) -> String {
    ns.as_i64()
        .and_then(|ns| jiff::Timestamp::from_nanosecond(ns as i128).ok())
        .map(|t| t.to_string())
        .unwrap_or_else(|| "-".into())
}

/// Asks org.plantd.Fleet.Admin; `None` when the hub did not answer.
fn ask(frames: &[&str], connection: &Connection) -> Result<Option<Value>, Box<dyn std::error::Error>> {
    let frames: Vec<&[u8]> = frames.iter().map(|f| f.as_bytes()).collect();
    ask_json(proto::fleet::ADMIN_SERVICE, &frames, connection)
}
