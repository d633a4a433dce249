//! The state service's bounds (`[state.limits]`): what it keeps, so no
//! client can fill the hub's disk or memory through it, and what it answers;
//! checked against each other and fitted to the broker's message size.

use serde::{Deserialize, Serialize};

/// The bounds on what the state service keeps, so no client can fill the
/// hub's disk or memory through it, and on what it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest value, as JSON text.
    pub max_value_bytes: usize,
    /// Longest key, and longest scope name, in bytes.
    pub max_key_bytes: usize,
    /// Keys in one scope.
    pub max_keys_per_scope: usize,
    /// Bytes of keys and values in one scope.
    pub max_scope_bytes: usize,
    /// Scopes in the store.
    pub max_scopes: usize,
    /// Scopes one identity may own (create), with security.
    pub max_scopes_per_identity: usize,
    /// Largest reply (and at most the broker's `max_message_bytes`: see
    /// [`Limits::within`]). `list-keys` and `list-scopes` page to stay within it.
    pub max_reply_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: 64 << 10,
            max_key_bytes: 256,
            max_keys_per_scope: 10_000,
            max_scope_bytes: 16 << 20,
            max_scopes: 10_000,
            max_scopes_per_identity: 64,
            // The broker's default max_message_bytes.
            max_reply_bytes: 1 << 20,
        }
    }
}

impl Limits {
    /// Bytes a reply may need around one value and two names (scope, key),
    /// each name escaped at worst (`\u00XX`, 6 bytes a byte): with this much
    /// room, no `state-get` or `state-set` reply can pass `max_reply_bytes`.
    pub fn keyed_reply_bytes(&self) -> usize {
        self.max_value_bytes.saturating_add(self.max_key_bytes.saturating_mul(12)).saturating_add(128)
    }

    /// These limits for a broker whose messages are at most
    /// `max_message_bytes`: replies no larger, and values small enough for
    /// their replies to fit. The second is whether anything was lowered.
    pub fn within(&self, max_message_bytes: i64) -> (Limits, bool) {
        let broker = usize::try_from(max_message_bytes).unwrap_or(usize::MAX).max(1);
        let mut limits = *self;
        limits.max_reply_bytes = limits.max_reply_bytes.min(broker);
        let around_a_value = limits.keyed_reply_bytes() - limits.max_value_bytes;
        limits.max_value_bytes =
            limits.max_value_bytes.min(limits.max_reply_bytes.saturating_sub(around_a_value)).max(1);
        (limits, limits != *self)
    }

    /// Checks the bounds against each other; the first problem, as (field,
    /// what is wrong).
    pub fn check(&self) -> std::result::Result<(), crate::Invalid> {
        let fields = [
            ("state.limits.max_value_bytes", self.max_value_bytes),
            ("state.limits.max_key_bytes", self.max_key_bytes),
            ("state.limits.max_keys_per_scope", self.max_keys_per_scope),
            ("state.limits.max_scope_bytes", self.max_scope_bytes),
            ("state.limits.max_scopes", self.max_scopes),
            ("state.limits.max_reply_bytes", self.max_reply_bytes),
        ];
        if let Some((field, _)) = fields.iter().find(|(_, v)| *v == 0) {
            return Err((*field, "must be at least 1".into()));
        }
        if self.keyed_reply_bytes() > self.max_reply_bytes {
            return Err((
                "state.limits.max_reply_bytes",
                format!(
                    "is {} but a state-get reply may need {} (max_value_bytes + 12 × max_key_bytes + 128): \
                     raise it, or lower max_value_bytes or max_key_bytes",
                    self.max_reply_bytes,
                    self.keyed_reply_bytes()
                ),
            ));
        }
        Ok(())
    }
}
