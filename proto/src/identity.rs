//! Names of peers (agent ids, certificate stems): one rule everywhere.
//!
//! A name is spliced into topics (`org.plantd.Metric.{id}.`), service names
//! (`org.plantd.Agent.{id}`) and state scopes, and is compared there by
//! prefix. A '.' would let `pump` publish as `pump.7` (its topic prefix
//! covers the other's), and a '*' would turn an exact grant into a prefix;
//! so neither is allowed, nor anything else that is not plain text.

/// The longest name (it also becomes a file name and a metric label).
pub const MAX_LEN: usize = 64;

/// The rule, for error messages.
pub const RULE: &str = "1 to 64 letters, digits, '-' and '_'";

/// Whether `name` may name a peer.
pub fn is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_widen_a_grant() {
        for good in ["pump-1", "PLC_7", "a"] {
            assert!(is_valid(good), "{good}");
        }
        let long = "x".repeat(MAX_LEN + 1);
        for bad in ["", "pump.7", "pump*", "a b", "é", "../x", long.as_str()] {
            assert!(!is_valid(bad), "{bad}");
        }
    }
}
