//! Where the client commands connect, said once: options before the
//! command (`hub --broker B --cert C call ...`), `PLANTD_*` variables, or a
//! named context from a file (`hub context add site-a ...`, `hub context use
//! site-a`), as `nats context` and `kubectl config` do. An operator with
//! three sites types neither endpoints nor key paths twice.
//!
//! Each setting comes from the first of: an option (before the command, or
//! after it as every script before contexts wrote it); the context named by
//! `--context`; a `PLANTD_*` variable; the current context (`PLANTD_CONTEXT`,
//! else the file's `current`); the default. Errors say where each came from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use serde::{Deserialize, Serialize};

use super::{CmdResult, DEFAULT_BROKER};

/// The connection options every client command takes, before or after its name.
pub const OPTIONS: [&str; 5] = ["--broker", "--cert", "--server-cert", "--timeout", "--context"];

/// The commands that connect as clients (and `echo-worker`, as a worker):
/// their connection options are lifted before them (see [`lift`]).
/// (`hub context add NAME --broker ...` takes them as the context's settings.)
const CLIENTS: [&str; 13] = [
    "call",
    "agents",
    "state",
    "dlq",
    "consumers",
    "tap",
    "publish",
    "echo-worker",
    "bridge",
    "pipeline",
    "context",
    "config",
    "sparkplug",
];

/// Moves the connection options a client command was given after its name
/// to before it, where the top-level command reads them, so `hub call
/// --broker B svc` means `hub --broker B call svc`. One given in both places
/// counts as given after (the nearer one). Nothing after `--` is touched.
pub fn lift(args: Vec<String>) -> Vec<String> {
    let takes_value = |a: &str| OPTIONS.contains(&a);
    let mut at = 1;
    while at < args.len() && args[at].starts_with('-') && args[at] != "--" {
        at += if takes_value(&args[at]) { 2 } else { 1 };
    }
    if at >= args.len() || !CLIENTS.contains(&args[at].as_str()) {
        return args;
    }
    let (mut before, mut after) = (args[..at].to_vec(), vec![args[at].clone()]);
    let mut rest = args[at + 1..].iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            after.push(arg.clone());
            after.extend(rest.by_ref().cloned());
            break;
        }
        match (takes_value(arg), rest.clone().next()) {
            (true, Some(value)) => {
                // The nearer one wins: drop an earlier one before the command.
                if let Some(at) = before.iter().skip(1).position(|a| a == arg).map(|p| p + 1) {
                    before.drain(at..(at + 2).min(before.len()));
                }
                before.push(arg.clone());
                before.push(value.clone());
                rest.next();
            }
            _ => after.push(arg.clone()),
        }
    }
    before.extend(after);
    before
}

/// The connection options as given on the command line.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    pub broker: Option<String>,
    pub cert: Option<PathBuf>,
    pub server_cert: Option<PathBuf>,
    pub timeout: Option<u64>,
    pub context: Option<String>,
}

/// One named context in the file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// The contexts file: the current one's name and every context.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contexts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default, rename = "context")]
    pub contexts: BTreeMap<String, Context>,
}

/// Where the contexts are kept: `$PLANTD_CONTEXTS`, else
/// `$XDG_CONFIG_HOME/plantd/contexts.toml`, else `~/.config/plantd/contexts.toml`.
pub fn file() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("PLANTD_CONTEXTS")
        .or_else(|| var("XDG_CONFIG_HOME").map(|d| d.join("plantd/contexts.toml")))
        .or_else(|| var("HOME").map(|d| d.join(".config/plantd/contexts.toml")))
}

impl Contexts {
    /// The file's contexts; none if there is no file.
    pub fn load(path: &Path) -> Result<Contexts, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Contexts::default()),
            Err(e) => return Err(format!("cannot read the contexts file {}: {e}", path.display())),
        };
        toml::from_str(&text).map_err(|e| {
            format!(
                "the contexts file {} is not valid: {e} (fix it, or remove it and add the contexts again)",
                path.display()
            )
        })
    }

    /// Writes the file whole (a temporary file renamed into place), readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let fail = |e: std::io::Error| format!("cannot write the contexts file {}: {e}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let text = toml::to_string(self).map_err(|e| e.to_string())?;
        let temporary = path.with_extension("toml.new");
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(fail)?;
        out.write_all(text.as_bytes()).and_then(|_| out.sync_all()).map_err(fail)?;
        std::fs::rename(&temporary, path).map_err(fail)
    }
}

/// Where one setting came from, for messages.
#[derive(Clone, Debug, PartialEq)]
enum Origin {
    Flag,
    Named(String),
    Variable(&'static str),
    Current(String),
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag => write!(f, "the command line"),
            Origin::Named(name) | Origin::Current(name) => write!(f, "context '{name}'"),
            Origin::Variable(name) => write!(f, "${name}"),
            Origin::Default => write!(f, "the default"),
        }
    }
}

/// Where a client command connects, each setting with where it came from.
#[derive(Clone, Debug)]
pub struct Connection {
    broker: (String, Origin),
    cert: Option<(PathBuf, Origin)>,
    server_cert: Option<(PathBuf, Origin)>,
    timeout_ms: Option<(u64, Origin)>,
}

impl Connection {
    /// Resolves `flags` against the environment and the contexts file.
    pub fn resolve(flags: Flags) -> Result<Connection, String> {
        let var = |name: &'static str| {
            std::env::var(name).ok().filter(|v| !v.is_empty()).map(|v| (v, Origin::Variable(name)))
        };
        let contexts = match file() {
            Some(path) => Contexts::load(&path)?,
            None => Contexts::default(),
        };
        let pick = |name: &str, origin: fn(String) -> Origin| match contexts.contexts.get(name) {
            Some(context) => Ok(Some((context.clone(), origin(name.to_string())))),
            None => Err(format!(
                "no context named '{name}' (known: {}); add it with `hub context add {name} --broker ...`",
                known(&contexts)
            )),
        };
        let named = match &flags.context {
            Some(name) => pick(name, Origin::Named)?,
            None => None,
        };
        let current = match var("PLANTD_CONTEXT").map(|(v, _)| v).or_else(|| contexts.current.clone()) {
            Some(name) if flags.context.is_none() => pick(&name, Origin::Current)?,
            _ => None,
        };
        let from_context = |field: fn(&Context) -> Option<String>, c: &Option<(Context, Origin)>| {
            c.as_ref().and_then(|(context, origin)| Some((field(context)?, origin.clone())))
        };
        let setting =
            |flag: Option<String>, variable: &'static str, field: fn(&Context) -> Option<String>| {
                flag.map(|v| (v, Origin::Flag))
                    .or_else(|| from_context(field, &named))
                    .or_else(|| var(variable))
                    .or_else(|| from_context(field, &current))
            };
        let path = |s: Option<(String, Origin)>| s.map(|(v, o)| (PathBuf::from(v), o));
        fn text(p: Option<PathBuf>) -> Option<String> {
            p.map(|p| p.display().to_string())
        }
        let broker = setting(flags.broker, "PLANTD_BROKER", |c| c.broker.clone())
            .unwrap_or_else(|| (DEFAULT_BROKER.to_string(), Origin::Default));
        let cert = path(setting(text(flags.cert), "PLANTD_CERT", |c| text(c.cert.clone())));
        let server_cert =
            path(setting(text(flags.server_cert), "PLANTD_SERVER_CERT", |c| text(c.server_cert.clone())));
        let timeout = setting(flags.timeout.map(|t| t.to_string()), "PLANTD_TIMEOUT_MS", |c| {
            c.timeout_ms.map(|t| t.to_string())
        });
        let timeout_ms = match timeout {
            Some((t, origin)) => match t.parse::<u64>() {
                Ok(ms) if ms > 0 => Some((ms, origin)),
                _ => return Err(format!("the timeout from {origin} is '{t}': give milliseconds, above 0")),
            },
            None => None,
        };
        Ok(Connection { broker, cert, server_cert, timeout_ms })
    }

    /// The broker endpoint.
    pub fn broker(&self) -> &str {
        &self.broker.0
    }

    /// How long to wait for replies: the one given, else the command's own default.
    pub fn timeout(&self, default_ms: u64) -> Duration {
        Duration::from_millis(self.timeout_ms.as_ref().map_or(default_ms, |(ms, _)| *ms))
    }

    /// The broker, to connect to: with CURVE when keys are given.
    pub fn broker_endpoint(&self) -> Result<transport::Endpoint, Box<dyn std::error::Error>> {
        self.endpoint(self.broker())
    }

    /// `address` (the broker, or a bus), to connect to with this connection's keys.
    pub fn endpoint(&self, address: &str) -> Result<transport::Endpoint, Box<dyn std::error::Error>> {
        match (&self.cert, &self.server_cert) {
            (None, None) => Ok(transport::Endpoint::plain(address)),
            (Some((cert, _)), Some((server, _))) => {
                // Its error names the file, and keeps its exit status (78 for a secret others may read).
                let keys = transport::curve::read_client_keys(cert, server)?;
                Ok(transport::Endpoint::curve(address, keys))
            }
            _ => Err(format!(
                "a hub with security needs both --cert (this client's NAME.key_secret) and --server-cert \
                 (the hub's public .key), or PLANTD_CERT and PLANTD_SERVER_CERT, or a context with both ({})",
                self.describe()
            )
            .into()),
        }
    }

    /// What was used and where it came from, for a failure's message:
    /// `broker tcp://… (context 'site-a'), key /…/op.key_secret (context 'site-a')`.
    pub fn describe(&self) -> String {
        let mut out = format!("broker {} from {}", self.broker.0, self.broker.1);
        match (&self.cert, &self.server_cert) {
            (None, None) => out += ", no keys (plain TCP)",
            (cert, server) => {
                for (what, setting) in [("key", cert), ("hub key", server)] {
                    match setting {
                        Some((path, origin)) => out += &format!(", {what} {} from {origin}", path.display()),
                        None => out += &format!(", no {what}"),
                    }
                }
            }
        }
        out
    }
}

fn known(contexts: &Contexts) -> String {
    match contexts.contexts.keys().map(String::as_str).collect::<Vec<_>>() {
        names if names.is_empty() => "none".into(),
        names => names.join(", "),
    }
}

/// Named connections for the client commands: add, use, list, show, rm.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "context",
    example = "hub context add site-a --broker tcp://10.0.0.5:9797 --cert ~/.plantd/op.key_secret --server-cert ~/.plantd/site-a-hub.key",
    example = "hub context use site-a      # from now on: hub agents, hub call ..., to site-a",
    example = "hub --context site-b agents # once, to another site",
    example = "hub context list",
    note = "Kept in $PLANTD_CONTEXTS, else $XDG_CONFIG_HOME/plantd/contexts.toml, else ~/.config/plantd/contexts.toml (mode 600: paths to keys, never keys).",
    note = "Each setting comes from the first of: an option; the context named by --context; PLANTD_BROKER, PLANTD_CERT, PLANTD_SERVER_CERT, PLANTD_TIMEOUT_MS; the current context (PLANTD_CONTEXT, else `hub context use`); the default."
)]
pub struct ContextArgs {
    #[argh(subcommand)]
    command: ContextCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum ContextCommand {
    Add(AddArgs),
    Use(UseArgs),
    List(ListArgs),
    Show(ShowArgs),
    Rm(RmArgs),
}

/// Add a context, or replace one of the same name (the first becomes the current one).
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "add",
    note = "Its settings are the connection options given with it: --broker, --cert (this client's NAME.key_secret), --server-cert (the hub's public key), --timeout (milliseconds)."
)]
struct AddArgs {
    /// the context's name
    #[argh(positional)]
    name: String,
}

/// Make a context the current one.
#[derive(FromArgs)]
#[argh(subcommand, name = "use")]
struct UseArgs {
    /// the context's name
    #[argh(positional)]
    name: String,
}

/// List the contexts; the current one is marked *.
#[derive(FromArgs)]
#[argh(subcommand, name = "list")]
struct ListArgs {}

/// Show where the client commands would connect now, and why.
#[derive(FromArgs)]
#[argh(subcommand, name = "show")]
struct ShowArgs {}

/// Remove a context.
#[derive(FromArgs)]
#[argh(subcommand, name = "rm")]
struct RmArgs {
    /// the context's name
    #[argh(positional)]
    name: String,
}

pub fn run(args: ContextArgs, flags: Flags) -> CmdResult {
    let Some(path) = file() else {
        return Err("no place for the contexts file: set PLANTD_CONTEXTS, XDG_CONFIG_HOME or HOME".into());
    };
    let mut contexts = Contexts::load(&path)?;
    match args.command {
        ContextCommand::Add(a) => {
            if a.name.is_empty() || a.name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("'{}' cannot name a context: use letters, digits, - or _", a.name).into());
            }
            let absolute = |p: Option<PathBuf>| -> Result<Option<PathBuf>, String> {
                p.map(|p| std::path::absolute(&p).map_err(|e| format!("{}: {e}", p.display()))).transpose()
            };
            let context = Context {
                broker: flags.broker,
                cert: absolute(flags.cert)?,
                server_cert: absolute(flags.server_cert)?,
                timeout_ms: flags.timeout,
            };
            // The keys are checked now, not at the first call that needs them.
            if let (Some(cert), Some(server)) = (&context.cert, &context.server_cert) {
                transport::curve::read_client_keys(cert, server)?;
            } else if context.cert.is_some() != context.server_cert.is_some() {
                return Err("give both --cert and --server-cert, or neither".into());
            }
            contexts.contexts.insert(a.name.clone(), context);
            contexts.current.get_or_insert_with(|| a.name.clone());
            contexts.save(&path)?;
            eprintln!("context '{}' saved in {}", a.name, path.display());
        }
        ContextCommand::Use(a) => {
            if !contexts.contexts.contains_key(&a.name) {
                return Err(format!("no context named '{}' (known: {})", a.name, known(&contexts)).into());
            }
            contexts.current = Some(a.name.clone());
            contexts.save(&path)?;
            eprintln!("the client commands now connect as context '{}' says", a.name);
        }
        ContextCommand::List(_) => {
            if contexts.contexts.is_empty() {
                println!("(no contexts: add one with `hub context add NAME --broker ...`)");
            }
            for (name, c) in &contexts.contexts {
                let mark = if contexts.current.as_ref() == Some(name) { "*" } else { " " };
                let broker = c.broker.as_deref().unwrap_or("-");
                let keys = if c.cert.is_some() { "with keys" } else { "no keys" };
                println!("{mark} {name:<16} {broker:<32} {keys}");
            }
        }
        ContextCommand::Show(_) => println!("{}", Connection::resolve(flags)?.describe()),
        ContextCommand::Rm(a) => {
            if contexts.contexts.remove(&a.name).is_none() {
                return Err(format!("no context named '{}' (known: {})", a.name, known(&contexts)).into());
            }
            if contexts.current.as_ref() == Some(&a.name) {
                contexts.current = None;
            }
            contexts.save(&path)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options_after_a_client_command_are_lifted_before_it() {
        assert_eq!(lift(args("hub call --broker B echo hi")), args("hub --broker B call echo hi"));
        assert_eq!(
            lift(args("hub -v call --timeout 5 echo --cert C hi")),
            args("hub -v --timeout 5 --cert C call echo hi")
        );
        assert_eq!(lift(args("hub bridge status --broker B")), args("hub --broker B bridge status"));
        // The nearer one wins.
        assert_eq!(lift(args("hub --broker A call --broker B x")), args("hub --broker B call x"));
        // Not past `--`, not for other commands, not a dangling option.
        assert_eq!(lift(args("hub call x -- --broker B")), args("hub call x -- --broker B"));
        assert_eq!(lift(args("hub serve --broker B")), args("hub serve --broker B"));
        assert_eq!(lift(args("hub call x --broker")), args("hub call x --broker"));
        assert_eq!(lift(args("hub")), args("hub"));
    }

    #[test]
    fn the_file_round_trips_and_refuses_what_it_does_not_know() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/contexts.toml");
        let mut contexts = Contexts::default();
        contexts
            .contexts
            .insert("site-a".into(), Context { broker: Some("tcp://a:1".into()), ..Context::default() });
        contexts.current = Some("site-a".into());
        contexts.save(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let read = Contexts::load(&path).unwrap();
        assert_eq!(read.contexts["site-a"].broker.as_deref(), Some("tcp://a:1"));
        assert_eq!(read.current.as_deref(), Some("site-a"));
        std::fs::write(&path, "[context.x]\nbrokr = \"typo\"\n").unwrap();
        let e = Contexts::load(&path).unwrap_err();
        assert!(e.contains("not valid") && e.contains("brokr"), "{e}");
        assert!(Contexts::load(&dir.path().join("none.toml")).unwrap().contexts.is_empty());
    }
}
