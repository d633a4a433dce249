//! `hub keygen` and `hub keys`: making certificates and keeping the allow-list.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use hub::config::Config;
use hub::security::{AllowList, Policy};
use serde_json::{json, Value};
use transport::curve::{self, Certificate};

use super::CmdResult;

/// Make a CURVE key pair: NAME.key (public: give it out) and NAME.key_secret
/// (keep it: mode 0600). Existing files are never overwritten.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "keygen",
    example = "hub keygen hub --dir /etc/plantd/keys          # the hub's own pair",
    example = "hub keygen ops-laptop --dir ~/.plantd          # an operator's pair",
    note = "The hub's public key (hub.key) goes to every agent and client; a client's public key goes into the hub's clients_dir (hub keys add), named after its identity."
)]
pub struct KeygenArgs {
    /// directory to write into (default: the current one)
    #[argh(option, default = "PathBuf::from(\".\")")]
    dir: PathBuf,
    /// the pair's name: letters, digits, '-' and '_'
    #[argh(positional)]
    name: String,
}

/// Checks a certificate or identity name: it becomes a file name, and an
/// identity in topics and service names.
pub fn check_name(name: &str) -> Result<(), String> {
    if proto::identity::is_valid(name) {
        Ok(())
    } else {
        Err(format!("'{name}' is not a usable name: use {}", proto::identity::RULE))
    }
}

pub fn keygen(args: KeygenArgs) -> CmdResult {
    check_name(&args.name)?;
    let (public, secret) = curve::write_new_pair(&args.dir, &args.name, "hub keygen")?;
    let key = curve::read_certificate(&public)?.public.z85();
    println!("{}\n{}", public.display(), secret.display());
    eprintln!("public key {key}: share {} freely; keep {} private", public.display(), secret.display());
    Ok(ExitCode::SUCCESS)
}

/// Keep the hub's allow-list: the public certificates in [security]
/// clients_dir. Changes reach a running hub at once (it re-reads the
/// directory, as on SIGHUP); a removed identity's connections are closed.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "keys",
    example = "hub keys list",
    example = "hub keys add /tmp/agent.key --name pump-station-1",
    example = "hub keys remove pump-station-1",
    example = "hub keys --config ./hub.toml reload"
)]
pub struct KeysArgs {
    /// the hub's config file, for [security] and data_dir (default /etc/plantd/hub.toml)
    #[argh(option, default = "PathBuf::from(\"/etc/plantd/hub.toml\")")]
    config: PathBuf,
    /// the running hub's data directory, if not the config's data_dir (where its control socket is)
    #[argh(option)]
    data_dir: Option<PathBuf>,
    /// print JSON
    #[argh(switch)]
    json: bool,
    #[argh(subcommand)]
    action: KeysAction,
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub enum KeysAction {
    List(List),
    Add(Add),
    Remove(Remove),
    Reload(Reload),
}

/// the identities in the allow-list, with their roles and keys
#[derive(FromArgs)]
#[argh(subcommand, name = "list")]
pub struct List {}

/// copy a public certificate into the allow-list
#[derive(FromArgs)]
#[argh(subcommand, name = "add")]
pub struct Add {
    /// the identity (default: the file's name without .key)
    #[argh(option)]
    name: Option<String>,
    /// a public certificate (NAME.key)
    #[argh(positional)]
    file: PathBuf,
}

/// take an identity out of the allow-list
#[derive(FromArgs)]
#[argh(subcommand, name = "remove")]
pub struct Remove {
    #[argh(positional)]
    name: String,
}

/// make the running hub re-read the allow-list
#[derive(FromArgs)]
#[argh(subcommand, name = "reload")]
pub struct Reload {}

pub fn keys(args: KeysArgs) -> CmdResult {
    let mut config = Config::load(&args.config)?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    let Some(security) = &config.security else {
        return Err(format!(
            "{} has no [security] section: there is no allow-list to manage",
            args.config.display()
        )
        .into());
    };
    let dir = &security.clients_dir;
    match args.action {
        KeysAction::List(_) => {
            let loaded = AllowList::load(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let (list, skipped, conflicts) = (loaded.list, loaded.skipped, loaded.conflicts);
            let policy = Policy::new(&security.identities, &security.roles)?;
            let rows: Vec<Value> = list
                .identities()
                .into_iter()
                .map(|name| {
                    let key = list.key_of(name).map(|k| k.z85()).unwrap_or_default();
                    json!({"identity": name, "roles": policy.roles_of(name), "public_key": key})
                })
                .collect();
            if args.json {
                println!(
                    "{}",
                    json!({
                        "identities": rows,
                        "skipped": skipped.iter().map(|s| format!("{}: {}", s.path.display(), s.why)).collect::<Vec<_>>(),
                        "conflicts": conflicts.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                    })
                );
            } else {
                for row in &rows {
                    let roles = row["roles"]
                        .as_array()
                        .map(|r| r.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
                        .unwrap_or_default();
                    let roles =
                        if roles.is_empty() { "(no role: may do nothing)".to_string() } else { roles };
                    println!(
                        "{:<24} {:<28} {}",
                        row["identity"].as_str().unwrap_or(""),
                        roles,
                        row["public_key"].as_str().unwrap_or("")
                    );
                }
                for s in &skipped {
                    eprintln!("skipped {}: {}", s.path.display(), s.why);
                }
                for c in &conflicts {
                    eprintln!("refused: {c}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysAction::Add(add) => {
            let cert = curve::read_certificate(&add.file)?;
            if cert.secret.is_some() {
                return Err(format!(
                    "{} holds a secret key: give the hub only the public certificate (NAME.key)",
                    add.file.display()
                )
                .into());
            }
            let name = match add.name {
                Some(name) => name,
                None => add.file.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string(),
            };
            check_name(&name)?;
            let target = dir.join(format!("{name}.key"));
            if target.exists() {
                return Err(
                    format!("{} exists: remove {name} first to replace its key", target.display()).into()
                );
            }
            refuse_a_second_name(dir, &cert.public, &name)?;
            let public = Certificate {
                public: cert.public,
                secret: None,
                metadata: vec![("name".into(), name.clone())],
            };
            std::fs::write(&target, public.public_text("hub keys add"))
                .map_err(|e| format!("{}: {e}", target.display()))?;
            eprintln!("added {name} ({})", target.display());
            reload_running(&config, args.json, false)
        }
        KeysAction::Remove(remove) => {
            check_name(&remove.name)?;
            let target = dir.join(format!("{}.key", remove.name));
            std::fs::remove_file(&target).map_err(|e| format!("{}: {e}", target.display()))?;
            eprintln!("removed {}", target.display());
            reload_running(&config, args.json, false)
        }
        KeysAction::Reload(_) => reload_running(&config, args.json, true),
    }
}

/// One key, one identity: refuses to list `key` as `name` when a file in
/// `dir` already holds it, whatever that file's name (else a key given out
/// as an agent's could be made an operator's, and the agent's name dropped).
fn refuse_a_second_name(dir: &Path, key: &curve::Key, name: &str) -> Result<(), String> {
    let loaded = AllowList::load(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let holders: Vec<String> = match loaded.list.identity(key) {
        Some(holder) => vec![holder.to_string()],
        None => loaded.conflicts.iter().filter(|c| c.key == *key).flat_map(|c| c.names()).collect(),
    };
    if holders.is_empty() {
        return Ok(());
    }
    let files: Vec<String> =
        holders.iter().map(|h| dir.join(format!("{h}.key")).display().to_string()).collect();
    Err(format!(
        "this key is already allowed as {} ({}): one key, one identity. It was not added as {name}; to \
         rename, `hub keys remove {}` first, then add it again",
        holders.join(", "),
        files.join(", "),
        holders[0]
    ))
}

/// Asks the running hub to re-read its allow-list. When `required`, a hub
/// that does not answer is an error; otherwise it will read it when it starts.
fn reload_running(config: &Config, json: bool, required: bool) -> CmdResult {
    match transport::control::ask(&config.data_dir, b"reload", Duration::from_secs(5)) {
        Ok(reply) => {
            let reply: Value = serde_json::from_slice(&reply)?;
            if let Some(error) = reply["error"].as_str() {
                return Err(format!("the hub could not reload: {error}").into());
            }
            if json {
                println!("{reply}");
            } else {
                let r = &reply["reloaded"];
                eprintln!(
                    "the running hub now allows {} identities (added: {}, removed: {})",
                    r["identities"],
                    list(&r["added"]),
                    list(&r["removed"])
                );
                for conflict in r["conflicts"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                    eprintln!("refused: {conflict}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if required => Err(e.into()),
        Err(_) => {
            eprintln!(
                "no hub answered on {}: it reads the allow-list when it starts",
                data_dir_socket(&config.data_dir)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn list(names: &Value) -> String {
    let names: Vec<&str> = names.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn data_dir_socket(dir: &Path) -> String {
    transport::control::endpoint(dir)
}
