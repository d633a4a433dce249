//! Fleet configuration: a TOML fragment set at the hub (`hub config set`)
//! laid over the local file, section by section.
//!
//! The local file stays the bootstrap: `id`, `data_dir` and `[fleet]` come
//! from it alone. A fragment's [`LIVE`] sections replace the local file's
//! while the agent runs; its [`ON_RESTART`] sections replace them at the next
//! start (the agent reports them pending until then). A section the fragment
//! leaves out is the local file's. The hub checks fragments with these same
//! rules before it stores one ([`check`]), and the agent again before it
//! applies one.

mod applied;
pub mod follow;

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError};

pub use applied::Applied;

/// Whether and how often the agent asks the hub for its desired
/// configuration. Only the local file sets it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// false: the local file alone, and no fleet configuration applied before is used.
    pub enabled: bool,
    /// How often it asks; a new version is applied within about this long.
    pub poll_ms: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig { enabled: true, poll_ms: 2000 }
    }
}

/// Sections an agent applies while it runs.
pub const LIVE: [&str; 4] = ["channel", "modbus", "uplink", "log_level"];

/// Sections that take effect at the agent's next start.
pub const ON_RESTART: [&str; 7] = ["board", "board_root", "hub", "outbox", "store", "local_state", "http"];

/// Keys only the local file may set: who the agent is, where its data
/// lives, and whether it follows the hub at all.
pub const LOCAL_ONLY: [&str; 3] = ["id", "data_dir", "fleet"];

/// Largest fragment, in bytes.
pub const MAX_FRAGMENT_BYTES: usize = 64 << 10;

/// Fields that name secrets (key files, tokens): never sent over a
/// plaintext link, redacted when shown.
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["secret", "password", "token", "_key", "cert"].iter().any(|s| k.contains(s))
}

/// A fragment's problem: the field, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {problem}")]
pub struct Invalid {
    pub field: String,
    pub problem: String,
}

pub(crate) fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Invalid {
    Invalid { field: field.into(), problem: problem.into() }
}

/// Parses a fragment and checks that it holds only sections a fleet
/// configuration may set.
pub fn parse(text: &str) -> Result<toml::Table, Invalid> {
    if text.len() > MAX_FRAGMENT_BYTES {
        return Err(invalid("fragment", format!("is {} bytes, more than {MAX_FRAGMENT_BYTES}", text.len())));
    }
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| invalid("fragment", e.to_string()))?;
    for key in table.keys() {
        if LOCAL_ONLY.contains(&key.as_str()) {
            return Err(invalid(
                key,
                "comes from the controller's local file only (id, data_dir and [fleet] are its bootstrap)",
            ));
        }
        if !LIVE.contains(&key.as_str()) && !ON_RESTART.contains(&key.as_str()) {
            let known: Vec<&str> = LIVE.iter().chain(ON_RESTART.iter()).copied().collect();
            return Err(invalid(
                key,
                format!("is not an agent config section (known: {})", known.join(", ")),
            ));
        }
    }
    Ok(table)
}

/// The secret fields a fragment sets, as `section.key`.
pub fn secrets(fragment: &toml::Table) -> Vec<String> {
    fn walk(path: &str, value: &toml::Value, out: &mut Vec<String>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let here = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    if is_secret(k) {
                        out.push(here);
                    } else {
                        walk(&here, v, out);
                    }
                }
            }
            toml::Value::Array(items) => items.iter().for_each(|v| walk(path, v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", &toml::Value::Table(fragment.clone()), &mut out);
    out
}

/// The fragment's text with its secrets replaced by `<redacted>`.
pub fn redacted(fragment: &toml::Table) -> String {
    fn walk(value: &mut toml::Value) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t.iter_mut() {
                    if is_secret(k) {
                        *v = toml::Value::String("<redacted>".into());
                    } else {
                        walk(v);
                    }
                }
            }
            toml::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut value = toml::Value::Table(fragment.clone());
    walk(&mut value);
    toml::to_string_pretty(&value).unwrap_or_default()
}

/// `fragment` laid over `local`: each section it holds replaces the local
/// one whole. The local-only keys cannot be set ([`parse`] refuses them).
pub fn merge(local: &Config, fragment: &toml::Table) -> Result<Config, ConfigError> {
    let mut value = toml::Value::try_from(local).expect("a config is always representable as TOML");
    let table = value.as_table_mut().expect("a config is a table");
    for (key, section) in fragment {
        table.insert(key.clone(), section.clone());
    }
    value.try_into().map_err(|e: toml::de::Error| ConfigError::Invalid {
        field: "fleet configuration".into(),
        problem: e.message().to_string(),
    })
}

/// The sections of `wanted` that differ from `running` and are in `names`.
pub fn changed<'a>(running: &Config, wanted: &Config, names: &[&'a str]) -> Vec<&'a str> {
    let as_table = |c: &Config| toml::Value::try_from(c).ok().and_then(|v| v.as_table().cloned());
    let (a, b) = (as_table(running).unwrap_or_default(), as_table(wanted).unwrap_or_default());
    names.iter().copied().filter(|n| a.get(*n) != b.get(*n)).collect()
}

/// The checks the agent makes before it applies a fragment, and the hub
/// before it stores one (`local` is the agent's file; the hub passes a
/// default config): the fragment's sections, then the whole config as
/// `agent check --config-only` checks it.
pub fn check(local: &Config, text: &str) -> Result<(toml::Table, Config), Invalid> {
    let fragment = parse(text)?;
    let config = merge(local, &fragment).map_err(as_invalid)?;
    config.validate().map_err(as_invalid)?;
    Ok((fragment, config))
}

/// A config error as the field and the problem.
pub fn as_invalid(e: ConfigError) -> Invalid {
    match e {
        ConfigError::Invalid { field, problem } => Invalid { field, problem },
        other => invalid("config", other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Config {
        toml::from_str(
            "id = \"pump-1\"\n[[channel]]\nname = \"a\"\ndriver = { kind = \"sine\" }\n\
             [uplink]\nlinger_ms = 50\n",
        )
        .unwrap()
    }

    #[test]
    fn a_fragment_replaces_whole_sections_and_leaves_the_rest() {
        let (_, c) =
            check(&local(), "[[channel]]\nname = \"b\"\nperiod_ms = 500\ndriver = { kind = \"ramp\" }\n")
                .unwrap();
        assert_eq!(c.channels.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!((c.uplink.linger_ms, c.agent_id().as_str()), (50, "pump-1"), "the local file stands");
        assert_eq!(changed(&local(), &c, &LIVE), ["channel"]);
        assert!(changed(&local(), &c, &ON_RESTART).is_empty());
    }

    #[test]
    fn a_fragment_may_not_set_the_bootstrap_or_unknown_sections() {
        for (text, field) in [
            ("id = \"other\"", "id"),
            ("data_dir = \"/tmp\"", "data_dir"),
            ("[fleet]\nenabled = false", "fleet"),
            ("[roles]\nx = 1", "roles"),
        ] {
            assert_eq!(check(&local(), text).unwrap_err().field, field, "{text}");
        }
        let e = check(&local(), "[[channel]]\nname = \"b\"\nperiod_ms = 1\ndriver = { kind = \"sine\" }\n")
            .unwrap_err();
        assert_eq!(e.field, "channel[0] ('b').period_ms");
        let e =
            check(&local(), "[[channel]]\nname = \"b\"\ndriver = { kind = \"warp-drive\" }\n").unwrap_err();
        assert!(e.problem.contains("warp-drive"), "{e}");
    }

    #[test]
    fn secrets_are_found_and_redacted() {
        let f = parse("[hub]\nclient_cert = \"/etc/k\"\nbroker = \"tcp://h:1\"\n").unwrap();
        assert_eq!(secrets(&f), ["hub.client_cert"]);
        let text = redacted(&f);
        assert!(!text.contains("/etc/k") && text.contains("tcp://h:1"), "{text}");
    }
}
