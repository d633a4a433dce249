//! plantd's state operations: request frames in, reply JSON (and the change
//! event, if anything changed) out. Messages, field names and the order of
//! checks follow plantd's Go service so its clients see the same answers;
//! where plantd was buggy we differ, on purpose:
//! - setting a key in a missing scope creates the scope (plantd deadlocked);
//! - `list-scopes` with no scopes returns `[]` (plantd returned `null`);
//! - values may be any JSON value, returned unchanged (plantd took strings only);
//! - keys and scope names are bounded (`max_key_bytes`), keys count toward
//!   `max_scope_bytes`, and no reply passes `max_reply_bytes`: `list-keys`
//!   and `list-scopes` page (`after`, `limit`; `truncated`, `next`).

use std::sync::Arc;

use proto::state::{failure, success, Event, EventOp, Op, Request};
use proto::Frame;
use serde_json::{json, Value};

use super::store::{Store, StoreError};
use crate::security::Grants;

/// Who is asking.
pub struct Caller<'a> {
    /// The identity (owner of the scopes it creates); empty for the hub
    /// itself, and with security off.
    pub name: &'a str,
    /// What it may do; `None` (anything) for the hub itself and with security off.
    pub grants: Option<Arc<Grants>>,
}

impl Caller<'_> {
    /// The hub itself, or anyone with security off.
    pub const TRUSTED: Caller<'static> = Caller { name: "", grants: None };

    fn may_read(&self, scope: &str) -> bool {
        self.grants.as_ref().is_none_or(|g| g.may_read_state(scope))
    }

    fn may_write(&self, scope: &str) -> bool {
        self.grants.as_ref().is_none_or(|g| g.may_write_state(scope))
    }
}

/// A handled request: the reply, the change to announce, and what was
/// refused (for the denial count), if anything.
pub struct Outcome {
    pub reply: Value,
    pub event: Option<Event>,
    pub refused: Option<String>,
    /// The operation whose write awaits [`commit`]; its reply may not be sent before.
    uncommitted: Option<Op>,
}

impl Outcome {
    fn answer(reply: Value) -> Outcome {
        Outcome { reply, event: None, refused: None, uncommitted: None }
    }

    fn changed(reply: Value, event: Event) -> Outcome {
        Outcome { reply, event: Some(event), refused: None, uncommitted: None }
    }

    fn refused(message: String) -> Outcome {
        Outcome { reply: failure(message.clone()), event: None, refused: Some(message), uncommitted: None }
    }
}

fn event(scope: &str, key: Option<&str>, op: EventOp, value: Option<Value>) -> Event {
    let ts = jiff::Timestamp::now().to_string();
    Event { scope: scope.into(), key: key.map(Into::into), op, value, ts }
}

/// Handles one request from `caller` and commits its write: the reply may be sent.
pub fn handle<F: Frame>(store: &Store, caller: &Caller<'_>, body: &[F]) -> Outcome {
    let mut outcome = [apply(store, caller, body)];
    commit(store, &mut outcome);
    let [outcome] = outcome;
    outcome
}

/// Makes the writes of a batch of outcomes durable together (one flush, see
/// [`Store::commit`]). If that fails, each write is answered with the
/// failure instead and announces nothing: it may not be on disk.
pub fn commit(store: &Store, outcomes: &mut [Outcome]) {
    if outcomes.iter().all(|o| o.uncommitted.is_none()) {
        return;
    }
    let result = store.commit();
    for outcome in outcomes {
        let (Some(op), Err(e)) = (outcome.uncommitted.take(), &result) else { continue };
        *outcome = Outcome::answer(failure(format!("Failed to {}: {e}", op.short_name())));
    }
}

/// Handles one request from `caller`: `body` is `[operation, json]`. A write
/// is applied but not yet durable: [`commit`] before replying.
pub fn apply<F: Frame>(store: &Store, caller: &Caller<'_>, body: &[F]) -> Outcome {
    let [op, request, ..] = body else {
        return Outcome::answer(json!({"error": "Invalid message format"}));
    };
    let Some(op) = Op::parse(op.bytes()) else {
        return Outcome::answer(json!({"error": "Invalid operation"}));
    };
    let request = match serde_json::from_slice::<Value>(request.bytes()) {
        Ok(object @ Value::Object(_)) => serde_json::from_value::<Request>(object).unwrap_or_default(),
        Ok(other) => {
            return Outcome::answer(failure(format!(
                "Invalid request format: expected a JSON object, got {other}"
            )))
        }
        Err(e) => return Outcome::answer(failure(format!("Invalid request format: {e}"))),
    };
    // Names longer than any stored one are refused before anything else:
    // nothing could be found under them, and they would be echoed back.
    let names = [("scope name", &request.scope), ("key", &request.key), ("key", &request.after)];
    for (what, name) in names {
        if let Some(Err(StoreError::Quota(why))) = name.as_deref().map(|n| store.check_name(what, n)) {
            return Outcome::refused(format!("Quota exceeded: {why}"));
        }
    }
    if let Some(scope) = request.scope.as_deref() {
        let (allowed, access) = match op {
            Op::Get | Op::ListKeys | Op::Health => (caller.may_read(scope), "read"),
            Op::ListScopes => (true, "list"),
            _ => (caller.may_write(scope), "change"),
        };
        if !allowed {
            return Outcome::refused(format!(
                "Permission denied: {} may not {access} scope '{scope}'",
                caller.name
            ));
        }
    }
    match run(store, caller, op, &request) {
        Ok(outcome) if outcome.event.is_some() => Outcome { uncommitted: Some(op), ..outcome },
        Ok(outcome) => outcome,
        Err(StoreError::Quota(why)) => Outcome::refused(format!("Quota exceeded: {why}")),
        // Logged once, when the flush failed; every write until a restart lands here.
        Err(e @ StoreError::Failed(_)) => {
            Outcome::answer(failure(format!("Failed to {}: {e}", op.short_name())))
        }
        Err(e) => {
            let name = op.short_name();
            log::error!("state store failed on {name}: {e}");
            Outcome::answer(failure(format!("Failed to {name}: storage error: {e}")))
        }
    }
}

fn run(store: &Store, caller: &Caller<'_>, op: Op, request: &Request) -> super::store::Result<Outcome> {
    // These two take no scope (health reports on one if given).
    match op {
        Op::ListScopes => {
            let readable = store
                .scopes_after(request.after.as_deref())
                .filter(|scope| scope.as_ref().map_or(true, |scope| caller.may_read(scope)));
            let envelope = json!({"scopes": [], "count": 0});
            return page(store, readable, request.limit, envelope, "scopes");
        }
        Op::Health => return Ok(Outcome::answer(health(store, request.scope.as_deref())?)),
        _ => {}
    }
    let Some(scope) = request.scope.as_deref() else {
        return Ok(Outcome::answer(failure(format!(
            "Service scope required for {} request",
            op.short_name()
        ))));
    };
    Ok(match op {
        Op::CreateScope => {
            if scope.is_empty() {
                Outcome::answer(failure("Service scope cannot be empty"))
            } else if !store.create_scope(scope, caller.name)? {
                Outcome::answer(failure(format!("Scope '{scope}' already exists")))
            } else {
                let event = event(scope, None, EventOp::CreateScope, None);
                Outcome::changed(success(json!({"scope": scope, "status": "created"})), event)
            }
        }
        Op::DeleteScope => {
            if !store.delete_scope(scope)? {
                Outcome::answer(failure(format!("Scope '{scope}' does not exist")))
            } else {
                let event = event(scope, None, EventOp::DeleteScope, None);
                Outcome::changed(success(json!({"scope": scope, "status": "deleted"})), event)
            }
        }
        Op::ListKeys => {
            if scope.is_empty() {
                Outcome::answer(failure("Service scope cannot be empty"))
            } else if !store.has_scope(scope)? {
                Outcome::answer(failure(format!("Scope '{scope}' does not exist")))
            } else {
                let keys = store.keys_after(scope, request.after.as_deref());
                let envelope = json!({"scope": scope, "keys": [], "count": 0});
                page(store, keys, request.limit, envelope, "keys")?
            }
        }
        // get, set, delete
        _ => keyed(store, caller, op, scope, request)?,
    })
}

fn keyed(
    store: &Store,
    caller: &Caller<'_>,
    op: Op,
    scope: &str,
    request: &Request,
) -> super::store::Result<Outcome> {
    let Some(key) = request.key.as_deref() else {
        return Ok(Outcome::answer(failure(format!("Key required for {} request", op.short_name()))));
    };
    let value = request.value.as_ref();
    if op == Op::Set && value.is_none() {
        return Ok(Outcome::answer(failure("Value required for set request")));
    }
    if scope.is_empty() {
        return Ok(Outcome::answer(failure("Service scope cannot be empty")));
    }
    if key.is_empty() {
        return Ok(Outcome::answer(failure("Key cannot be empty")));
    }
    Ok(match (op, value) {
        (Op::Set, Some(value)) => {
            store.set(scope, key, value, caller.name)?;
            let event = event(scope, Some(key), EventOp::Set, Some(value.clone()));
            Outcome::changed(
                success(json!({"scope": scope, "key": key, "value": value, "status": "set"})),
                event,
            )
        }
        (Op::Get, _) if !store.has_scope(scope)? => {
            Outcome::answer(failure(format!("Failed to get key: scope `{scope}` doesn't exist")))
        }
        (Op::Get, _) => {
            let value = store.get(scope, key)?.unwrap_or(json!(""));
            Outcome::answer(success(json!({"scope": scope, "key": key, "value": value})))
        }
        _ if !store.has_scope(scope)? => {
            Outcome::answer(failure(format!("Failed to delete key: scope `{scope}` doesn't exist")))
        }
        _ => {
            let existed = store.delete(scope, key)?;
            let reply = success(json!({"scope": scope, "key": key, "status": "deleted"}));
            match existed {
                true => Outcome::changed(reply, event(scope, Some(key), EventOp::Delete, None)),
                false => Outcome::answer(reply),
            }
        }
    })
}

/// Room in a paged reply for what is not a name: the success envelope,
/// `count`, `truncated` and their punctuation (`next` is counted apart).
const PAGE_OVERHEAD: usize = 96;

/// A `list-keys` or `list-scopes` reply: `envelope` (the data object without
/// its names) with as many of `names` under `field` as fit in
/// `max_reply_bytes` and `limit`. Cut short, it says `"truncated": true` and
/// the `next` name to ask after; otherwise it is plantd's shape exactly.
fn page(
    store: &Store,
    names: impl Iterator<Item = super::store::Result<String>>,
    limit: Option<u64>,
    mut envelope: Value,
    field: &str,
) -> super::store::Result<Outcome> {
    let json_len = |v: &str| serde_json::to_string(v).map_or(0, |t| t.len());
    let budget = store.limits().max_reply_bytes;
    let limit = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX).max(1));
    let mut used = PAGE_OVERHEAD + envelope.to_string().len();
    let (mut taken, mut truncated) = (Vec::new(), false);
    for name in names {
        let name = name?;
        // Its own place in the list, and its place as `next` should the page end on it.
        let cost = json_len(&name) + 1;
        if taken.len() == limit || used + 2 * cost > budget {
            truncated = true;
            break;
        }
        used += cost;
        taken.push(name);
    }
    if truncated && taken.is_empty() {
        // Only a name stored before max_key_bytes was lowered can be this long.
        return Err(
            store.quota(format!("a name in this list is too long to fit in max_reply_bytes ({budget})"))
        );
    }
    envelope["count"] = json!(taken.len());
    if truncated {
        envelope["truncated"] = json!(true);
        envelope["next"] = json!(taken.last());
    }
    envelope[field] = json!(taken);
    Ok(Outcome::answer(success(envelope)))
}

/// The reply's bytes, as sent. A reply over `max_reply_bytes` (which the
/// bounds leave no room for; this is the last guard) becomes a failure: the
/// broker's largest message is never passed.
pub fn encode(store: &Store, outcome: &Outcome) -> Vec<u8> {
    let bytes = outcome.reply.to_string().into_bytes();
    let max = store.limits().max_reply_bytes;
    if bytes.len() <= max {
        return bytes;
    }
    let done = if outcome.event.is_some() { " (the change itself was made)" } else { "" };
    let why = format!("a reply of {} bytes is over the limit of {max} (max_reply_bytes){done}", bytes.len());
    log::warn!("state: {why}");
    store.count_refusal();
    failure(format!("Quota exceeded: {why}")).to_string().into_bytes()
}

fn health(store: &Store, scope: Option<&str>) -> super::store::Result<Value> {
    let failure = store.failure();
    let mut data = json!({
        "status": if failure.is_none() { "healthy" } else { "degraded" },
        "service": proto::state::SERVICE,
        "store_available": failure.is_none(),
        "store_error": failure,
        "scopes": store.scope_count(),
        "writes": store.writes(),
        "durable_writes": store.durable_writes(),
        "refused": store.refused(),
    });
    if let Some(scope) = scope.filter(|s| !s.is_empty()) {
        data["scope"] = json!(scope);
        data["scope_exists"] = json!(store.has_scope(scope)?);
    }
    Ok(success(data))
}

#[cfg(test)]
mod tests;
