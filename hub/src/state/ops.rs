//! plantd's state operations: request frames in, reply JSON (and the change
//! event, if anything changed) out. Messages, field names and the order of
//! checks follow plantd's Go service so its clients see the same answers;
//! where plantd was buggy we differ, on purpose:
//! - setting a key in a missing scope creates the scope (plantd deadlocked);
//! - `list-scopes` with no scopes returns `[]` (plantd returned `null`);
//! - values may be any JSON value, returned unchanged (plantd took strings only).

use serde_json::{json, Map, Value};

use super::store::Store;
use proto::Frame;

pub const SERVICE: &str = "org.plantd.State";

/// A successful change, published on the state bus.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub scope: String,
    pub key: Option<String>,
    /// "set", "delete", "create-scope" or "delete-scope".
    pub op: &'static str,
    pub value: Option<Value>,
}

impl Event {
    pub fn topic(&self) -> String {
        format!("{SERVICE}.{}", self.scope)
    }

    pub fn payload(&self) -> Value {
        json!({
            "scope": self.scope,
            "key": self.key,
            "op": self.op,
            "value": self.value,
            "ts": jiff::Timestamp::now().to_string(),
        })
    }
}

fn success(data: Value) -> Value {
    json!({"success": true, "data": data})
}

fn failure(message: impl Into<String>) -> Value {
    json!({"success": false, "error": message.into()})
}

/// Handles one request: `body` is `[operation, json]`.
pub fn handle<F: Frame>(store: &Store, body: &[F]) -> (Value, Option<Event>) {
    let [op, request, ..] = body else {
        return (json!({"error": "Invalid message format"}), None);
    };
    // plantd's callback names: the old `get`/`set` and the newer `state-*` share one.
    let op = match op.bytes() {
        b"create-scope" => "create-scope",
        b"delete-scope" => "delete-scope",
        b"state-set" | b"set" => "set",
        b"state-get" | b"get" => "get",
        b"delete" => "delete",
        b"list-keys" => "list-keys",
        b"list-scopes" => "list-scopes",
        b"health" => "health",
        _ => return (json!({"error": "Invalid operation"}), None),
    };
    let request = match serde_json::from_slice::<Value>(request.bytes()) {
        Ok(Value::Object(map)) => map,
        Ok(other) => {
            return (failure(format!("Invalid request format: expected a JSON object, got {other}")), None)
        }
        Err(e) => return (failure(format!("Invalid request format: {e}")), None),
    };
    match run(store, op, &request) {
        Ok(outcome) => outcome,
        Err(e) => {
            log::error!("state store failed on {op}: {e}");
            (failure(format!("Failed to {op}: storage error: {e}")), None)
        }
    }
}

type Outcome = (Value, Option<Event>);

fn field<'a>(request: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    request.get(name).and_then(Value::as_str)
}

fn run(store: &Store, op: &'static str, request: &Map<String, Value>) -> super::store::Result<Outcome> {
    // These two take no scope (health reports on one if given).
    match op {
        "list-scopes" => {
            let scopes = store.list_scopes()?;
            return Ok((success(json!({"scopes": scopes, "count": scopes.len()})), None));
        }
        "health" => return Ok((health(store, field(request, "service"))?, None)),
        _ => {}
    }
    let Some(scope) = field(request, "service") else {
        return Ok((failure(format!("Service scope required for {op} request")), None));
    };
    Ok(match op {
        "create-scope" => {
            if scope.is_empty() {
                (failure("Service scope cannot be empty"), None)
            } else if !store.create_scope(scope)? {
                (failure(format!("Scope '{scope}' already exists")), None)
            } else {
                let event = Event { scope: scope.into(), key: None, op: "create-scope", value: None };
                (success(json!({"scope": scope, "status": "created"})), Some(event))
            }
        }
        "delete-scope" => {
            if !store.delete_scope(scope)? {
                (failure(format!("Scope '{scope}' does not exist")), None)
            } else {
                let event = Event { scope: scope.into(), key: None, op: "delete-scope", value: None };
                (success(json!({"scope": scope, "status": "deleted"})), Some(event))
            }
        }
        "list-keys" => {
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

fn keyed(
    store: &Store,
    op: &'static str,
    scope: &str,
    request: &Map<String, Value>,
) -> super::store::Result<Outcome> {
    let Some(key) = field(request, "key") else {
        return Ok((failure(format!("Key required for {op} request")), None));
    };
    let value = request.get("value");
    if op == "set" && value.is_none() {
        return Ok((failure("Value required for set request"), None));
    }
    if scope.is_empty() {
        return Ok((failure("Service scope cannot be empty"), None));
    }
    if key.is_empty() {
        return Ok((failure("Key cannot be empty"), None));
    }
    Ok(match (op, value) {
        ("set", Some(value)) => {
            store.set(scope, key, value)?;
            let event =
                Event { scope: scope.into(), key: Some(key.into()), op: "set", value: Some(value.clone()) };
            (success(json!({"scope": scope, "key": key, "value": value, "status": "set"})), Some(event))
        }
        ("get", _) if !store.has_scope(scope)? => {
            (failure(format!("Failed to get key: scope `{scope}` doesn't exist")), None)
        }
        ("get", _) => {
            let value = store.get(scope, key)?.unwrap_or(json!(""));
            (success(json!({"scope": scope, "key": key, "value": value})), None)
        }
        _ if !store.has_scope(scope)? => {
            (failure(format!("Failed to delete key: scope `{scope}` doesn't exist")), None)
        }
        _ => {
            let existed = store.delete(scope, key)?;
            let event = existed.then(|| Event {
                scope: scope.into(),
                key: Some(key.into()),
                op: "delete",
                value: None,
            });
            (success(json!({"scope": scope, "key": key, "status": "deleted"})), event)
        }
    })
}

fn health(store: &Store, scope: Option<&str>) -> super::store::Result<Value> {
    let mut data = json!({
        "status": "healthy",
        "service": SERVICE,
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
