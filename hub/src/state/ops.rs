//! plantd's state operations: request frames in, reply JSON (and the change
//! event, if anything changed) out. Messages, field names and the order of
//! checks follow plantd's Go service so its clients see the same answers;
//! where plantd was buggy we differ, on purpose:
//! - setting a key in a missing scope creates the scope (plantd deadlocked);
//! - `list-scopes` with no scopes returns `[]` (plantd returned `null`);
//! - values may be any JSON value, returned unchanged (plantd took strings only).

use proto::state::{failure, success, Event, EventOp, Op, Request};
use proto::Frame;
use serde_json::{json, Value};

use super::store::Store;

fn event(scope: &str, key: Option<&str>, op: EventOp, value: Option<Value>) -> Event {
    let ts = jiff::Timestamp::now().to_string();
    Event { scope: scope.into(), key: key.map(Into::into), op, value, ts }
}

/// Handles one request: `body` is `[operation, json]`.
pub fn handle<F: Frame>(store: &Store, body: &[F]) -> (Value, Option<Event>) {
    let [op, request, ..] = body else {
        return (json!({"error": "Invalid message format"}), None);
    };
    let Some(op) = Op::parse(op.bytes()) else {
        return (json!({"error": "Invalid operation"}), None);
    };
    let request = match serde_json::from_slice::<Value>(request.bytes()) {
        Ok(object @ Value::Object(_)) => serde_json::from_value::<Request>(object).unwrap_or_default(),
        Ok(other) => {
            return (failure(format!("Invalid request format: expected a JSON object, got {other}")), None)
        }
        Err(e) => return (failure(format!("Invalid request format: {e}")), None),
    };
    match run(store, op, &request) {
        Ok(outcome) => outcome,
        Err(e) => {
            let name = op.short_name();
            log::error!("state store failed on {name}: {e}");
            (failure(format!("Failed to {name}: storage error: {e}")), None)
        }
    }
}

type Outcome = (Value, Option<Event>);

fn run(store: &Store, op: Op, request: &Request) -> super::store::Result<Outcome> {
    // These two take no scope (health reports on one if given).
    match op {
        Op::ListScopes => {
            let scopes = store.list_scopes()?;
            return Ok((success(json!({"scopes": scopes, "count": scopes.len()})), None));
        }
        Op::Health => return Ok((health(store, request.scope.as_deref())?, None)),
        _ => {}
    }
    let Some(scope) = request.scope.as_deref() else {
        return Ok((failure(format!("Service scope required for {} request", op.short_name())), None));
    };
    Ok(match op {
        Op::CreateScope => {
            if scope.is_empty() {
                (failure("Service scope cannot be empty"), None)
            } else if !store.create_scope(scope)? {
                (failure(format!("Scope '{scope}' already exists")), None)
            } else {
                let event = event(scope, None, EventOp::CreateScope, None);
                (success(json!({"scope": scope, "status": "created"})), Some(event))
            }
        }
        Op::DeleteScope => {
            if !store.delete_scope(scope)? {
                (failure(format!("Scope '{scope}' does not exist")), None)
            } else {
                let event = event(scope, None, EventOp::DeleteScope, None);
                (success(json!({"scope": scope, "status": "deleted"})), Some(event))
            }
        }
        Op::ListKeys => {
            if scope.is_empty() {
                (failure("Service scope cannot be empty"), None)
            } else if !store.has_scope(scope)? {
                (failure(format!("Scope '{scope}' does not exist")), None)
            } else {
                let keys = store.list_keys(scope)?;
                (success(json!({"scope": scope, "keys": keys, "count": keys.len()})), None)
            }
        }
        // get, set, delete
        _ => keyed(store, op, scope, request)?,
    })
}

fn keyed(store: &Store, op: Op, scope: &str, request: &Request) -> super::store::Result<Outcome> {
    let Some(key) = request.key.as_deref() else {
        return Ok((failure(format!("Key required for {} request", op.short_name())), None));
    };
    let value = request.value.as_ref();
    if op == Op::Set && value.is_none() {
        return Ok((failure("Value required for set request"), None));
    }
    if scope.is_empty() {
        return Ok((failure("Service scope cannot be empty"), None));
    }
    if key.is_empty() {
        return Ok((failure("Key cannot be empty"), None));
    }
    Ok(match (op, value) {
        (Op::Set, Some(value)) => {
            store.set(scope, key, value)?;
            let event = event(scope, Some(key), EventOp::Set, Some(value.clone()));
            (success(json!({"scope": scope, "key": key, "value": value, "status": "set"})), Some(event))
        }
        (Op::Get, _) if !store.has_scope(scope)? => {
            (failure(format!("Failed to get key: scope `{scope}` doesn't exist")), None)
        }
        (Op::Get, _) => {
            let value = store.get(scope, key)?.unwrap_or(json!(""));
            (success(json!({"scope": scope, "key": key, "value": value})), None)
        }
        _ if !store.has_scope(scope)? => {
            (failure(format!("Failed to delete key: scope `{scope}` doesn't exist")), None)
        }
        _ => {
            let existed = store.delete(scope, key)?;
            let event = existed.then(|| event(scope, Some(key), EventOp::Delete, None));
            (success(json!({"scope": scope, "key": key, "status": "deleted"})), event)
        }
    })
}

fn health(store: &Store, scope: Option<&str>) -> super::store::Result<Value> {
    let mut data = json!({
        "status": "healthy",
        "service": proto::state::SERVICE,
        "store_available": true,
        "scopes": store.scope_count(),
        "writes": store.writes(),
        "durable_writes": store.durable_writes(),
    });
    if let Some(scope) = scope.filter(|s| !s.is_empty()) {
        data["scope"] = json!(scope);
        data["scope_exists"] = json!(store.has_scope(scope)?);
    }
    Ok(success(data))
}

#[cfg(test)]
mod tests;
