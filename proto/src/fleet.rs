//! Fleet configuration: the configuration an operator sets at the hub for an
//! agent or a group of agents, and what each agent reports back.
//!
//! Agents poll [`SERVICE`] with a [`Poll`] (their id and what they run);
//! the hub answers with a [`PollReply`]: the desired configuration when it
//! differs from what the agent last evaluated. With security the hub takes
//! the agent's id from its certificate, so an agent reads only its own.
//!
//! Operators use [`ADMIN_SERVICE`] (a command frame, then arguments):
//!
//! | command | arguments | reply |
//! | --- | --- | --- |
//! | `set` | target, TOML | `{"target","version","hash"}`, or `{"error","field"}` |
//! | `show` | target, [version] | `{"target","version","hash","config","set_by","set_at_ns"}`, secrets redacted |
//! | `history` | target | `{"target","versions":[{"version","hash","set_by","set_at_ns","bytes"}]}` |
//! | `rollback` | target, version | a new version holding that version's config, as `set` |
//! | `status` | | `{"agents":[{"agent","desired","desired_hash","applied","applied_hash","state","reason","pending","seen_s"}]}` |
//! | `targets` | | `{"targets":[{"target","version","hash"}]}` |
//!
//! A target is an agent id, or a glob over ids (`*` any run of characters,
//! `?` one). An agent's desired configuration is the most specific matching
//! glob's (the one with the most literal characters), with the agent's own
//! target laid over it section by section. Its version is the larger of the
//! two versions: versions come from one counter for the whole hub, so any
//! change an agent should apply gives it a larger one.

use serde::{Deserialize, Serialize};

/// Agents poll here for their desired configuration.
pub const SERVICE: &str = "org.plantd.Fleet";

/// Setting and reading desired configurations: `operator`'s.
pub const ADMIN_SERVICE: &str = "org.plantd.Fleet.Admin";

/// How an agent stands with its desired configuration.
pub mod state {
    /// It runs the desired version.
    pub const APPLIED: &str = "applied";
    /// It runs the desired version's live sections; the rest waits for a restart.
    pub const PENDING_RESTART: &str = "pending-restart";
    /// The desired version failed its checks; the agent runs the last good one.
    pub const REJECTED: &str = "rejected";
    /// The desired version's drivers failed to open; the agent went back to the last good one.
    pub const ROLLED_BACK: &str = "rolled-back";
    /// No desired configuration: the local file alone.
    pub const LOCAL: &str = "local";
}

/// An agent's poll: who it is, what it runs, how the last version it evaluated went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Poll {
    pub agent: String,
    /// The version it runs (0: its local file alone).
    pub applied: u64,
    pub applied_hash: String,
    /// The last desired version it evaluated, applied or not: the hub sends
    /// the configuration again only when the desired version is another.
    pub evaluated: u64,
    /// One of [`state`]'s.
    pub state: String,
    /// Why a version was rejected or rolled back: the field, and what is wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Sections that take effect at the next restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
}

/// The hub's answer to a [`Poll`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollReply {
    /// The desired version (0: none is set for this agent).
    pub version: u64,
    pub hash: String,
    /// The TOML fragment, when `version` is not the one the agent evaluated last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Whether `target` (an id, or a glob with `*` and `?`) names `id`.
pub fn matches(target: &str, id: &str) -> bool {
    // Greedy, going back only to the last '*': linear in practice, never exponential.
    let (p, s) = (target.as_bytes(), id.as_bytes());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            (pi, si) = (pi + 1, si + 1);
        } else if pi < p.len() && p[pi] == b'*' {
            (star, mark, pi) = (Some(pi), si, pi + 1);
        } else if let Some(at) = star {
            mark += 1;
            (pi, si) = (at + 1, mark);
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Whether `target` is a glob (else an agent id).
pub fn is_glob(target: &str) -> bool {
    target.contains(['*', '?'])
}

/// How specific a glob is: its literal characters (more wins).
pub fn specificity(target: &str) -> usize {
    target.chars().filter(|c| *c != '*' && *c != '?').count()
}

/// Checks a target's spelling: an agent id, or one with `*`/`?` in it.
pub fn valid_target(target: &str) -> Result<(), String> {
    let literal: String = target.chars().filter(|c| *c != '*' && *c != '?').collect();
    if target.is_empty() || target.len() > crate::identity::MAX_LEN {
        return Err(format!("a target is 1 to {} characters", crate::identity::MAX_LEN));
    }
    if !literal.is_empty() && !crate::identity::is_valid(&literal) {
        return Err(format!(
            "target {target:?} must be an agent id ({}), '*' and '?' allowed",
            crate::identity::RULE
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_ids() {
        assert!(matches("pump-*", "pump-1"));
        assert!(matches("pump-?", "pump-1"));
        assert!(!matches("pump-?", "pump-12"));
        assert!(matches("*", "anything"));
        assert!(matches("pump-1", "pump-1"));
        assert!(!matches("pump-1", "pump-10"));
        assert!(matches("*-1*", "pump-10"));
        assert!(!matches("valve-*", "pump-1"));
        assert!(specificity("pump-*") > specificity("p*"));
        assert!(valid_target("pump-*").is_ok() && valid_target("*").is_ok());
        assert!(valid_target("pump 1").is_err() && valid_target("").is_err());
    }

    #[test]
    fn polls_round_trip() {
        let poll = Poll { agent: "a".into(), applied: 3, state: state::APPLIED.into(), ..Poll::default() };
        let text = serde_json::to_string(&poll).unwrap();
        assert_eq!(serde_json::from_str::<Poll>(&text).unwrap(), poll);
        assert!(!text.contains("reason"), "{text}");
    }
}
