//! plantd's state service protocol (`org.plantd.State`), for the hub that
//! serves it and for every client of it (the agent's state sync, `hub state`).
//!
//! A request is two frames: the operation word and a JSON object whose scope
//! field is named `service` (plantd's name). A reply is one JSON frame:
//! `{"success":true,"data":{...}}` or `{"success":false,"error":"..."}`. Every
//! change is announced on the state bus as an [`Event`].

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The Majordomo service name.
pub const SERVICE: &str = "org.plantd.State";

/// Topic prefix of change events on the state bus: `org.plantd.State.<scope>`.
pub const TOPIC_PREFIX: &str = "org.plantd.State.";

/// The operations. plantd's older clients send `get`/`set`; they mean the
/// same as `state-get`/`state-set`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    CreateScope,
    DeleteScope,
    Set,
    Get,
    Delete,
    ListKeys,
    ListScopes,
    Health,
}

impl Op {
    pub const ALL: [Op; 8] = [
        Op::CreateScope,
        Op::DeleteScope,
        Op::Set,
        Op::Get,
        Op::Delete,
        Op::ListKeys,
        Op::ListScopes,
        Op::Health,
    ];

    /// The operation frame, as clients send it.
    pub fn word(self) -> &'static str {
        match self {
            Op::CreateScope => "create-scope",
            Op::DeleteScope => "delete-scope",
            Op::Set => "state-set",
            Op::Get => "state-get",
            Op::Delete => "delete",
            Op::ListKeys => "list-keys",
            Op::ListScopes => "list-scopes",
            Op::Health => "health",
        }
    }

    /// The name plantd's error messages use ("Failed to get key", ...).
    pub fn short_name(self) -> &'static str {
        match self {
            Op::Set => "set",
            Op::Get => "get",
            other => other.word(),
        }
    }

    /// Reads an operation frame, old names included.
    pub fn parse(word: &[u8]) -> Option<Op> {
        match word {
            b"set" => Some(Op::Set),
            b"get" => Some(Op::Get),
            _ => Op::ALL.into_iter().find(|op| op.word().as_bytes() == word),
        }
    }
}

/// A request's JSON object. Every field is optional on the wire; which ones
/// an operation needs is the service's business (it answers plantd's errors).
/// Like plantd, a scope or key that is not a string counts as missing, and
/// other fields (`token`) are ignored.
///
/// `list-keys` and `list-scopes` page (our extension): a reply holds at most
/// what fits in the service's reply bound (and `limit` names, if given);
/// when it is cut short it says `"truncated": true` and `"next"`, the last
/// name it holds, to send back as `after` for the next page. A reply that
/// is not cut short is plantd's shape exactly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The scope (plantd calls it the service).
    #[serde(
        rename = "service",
        default,
        deserialize_with = "string_or_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub scope: Option<String>,
    #[serde(default, deserialize_with = "string_or_none", skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Any JSON value, `null` included (`Some(Null)`); absent is `None`.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Paging: list the names after this one (a previous reply's `next`).
    #[serde(default, deserialize_with = "string_or_none", skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Paging: at most this many names in the reply.
    #[serde(default, deserialize_with = "count_or_none", skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

fn string_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        _ => None,
    })
}

fn count_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(Value::deserialize(d)?.as_u64())
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl Request {
    pub fn scope(scope: &str) -> Request {
        Request { scope: Some(scope.into()), ..Request::default() }
    }

    pub fn key(scope: &str, key: &str) -> Request {
        Request { key: Some(key.into()), ..Request::scope(scope) }
    }

    pub fn set(scope: &str, key: &str, value: Value) -> Request {
        Request { value: Some(value), ..Request::key(scope, key) }
    }

    /// The request for the page of names after `after` (`None`: the first page).
    pub fn page(self, after: Option<String>) -> Request {
        Request { after, ..self }
    }

    /// The two request frames for `op`.
    pub fn frames(&self, op: Op) -> [Vec<u8>; 2] {
        // A struct of strings and JSON values always serialises.
        let json = serde_json::to_vec(self).expect("a request serialises");
        [op.word().as_bytes().to_vec(), json]
    }
}

/// A successful reply carrying `data`.
pub fn success(data: Value) -> Value {
    json!({"success": true, "data": data})
}

/// A failed reply saying `message`.
pub fn failure(message: impl Into<String>) -> Value {
    json!({"success": false, "error": message.into()})
}

/// Whether a reply says the operation succeeded.
pub fn succeeded(reply: &Value) -> bool {
    reply["success"] == json!(true)
}

/// Where a paged reply (`list-keys`, `list-scopes`) continues: its `next`,
/// when it says it was cut short.
pub fn next_page(reply: &Value) -> Option<&str> {
    let data = &reply["data"];
    (data["truncated"] == json!(true)).then(|| data["next"].as_str()).flatten()
}

/// What a change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventOp {
    Set,
    Delete,
    CreateScope,
    DeleteScope,
}

/// A change, published on the state bus under [`Event::topic`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub scope: String,
    pub key: Option<String>,
    pub op: EventOp,
    pub value: Option<Value>,
    /// When the hub made the change (RFC 3339).
    pub ts: String,
}

impl Event {
    pub fn topic(&self) -> String {
        format!("{TOPIC_PREFIX}{}", self.scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_read_both_names_and_write_the_new_one() {
        for op in Op::ALL {
            assert_eq!(Op::parse(op.word().as_bytes()), Some(op));
        }
        assert_eq!(Op::parse(b"set"), Some(Op::Set));
        assert_eq!(Op::parse(b"get"), Some(Op::Get));
        assert_eq!(Op::parse(b"frobnicate"), None);
        assert_eq!(Op::Set.short_name(), "set");
    }

    #[test]
    fn requests_are_plantds_json() {
        let [op, json] = Request::set("plant", "mode", json!("auto")).frames(Op::Set);
        assert_eq!(op, b"state-set");
        let sent: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(sent, json!({"service": "plant", "key": "mode", "value": "auto"}));
        let [_, json] = Request::default().frames(Op::ListScopes);
        assert_eq!(json, b"{}");
        let read: Request = serde_json::from_value(json!({"service": "s", "token": "t"})).unwrap();
        assert_eq!(read, Request::scope("s"));
        let odd: Request = serde_json::from_value(json!({"service": 5, "key": "k", "value": null})).unwrap();
        assert_eq!((odd.scope, odd.key.as_deref(), odd.value), (None, Some("k"), Some(Value::Null)));
    }

    #[test]
    fn paging_fields_are_optional_and_lenient() {
        let [_, json] = Request::scope("s").page(Some("k9".into())).frames(Op::ListKeys);
        assert_eq!(serde_json::from_slice::<Value>(&json).unwrap(), json!({"service": "s", "after": "k9"}));
        let read: Request =
            serde_json::from_value(json!({"service": "s", "after": 3, "limit": "x"})).unwrap();
        assert_eq!(read, Request::scope("s"), "wrong types count as absent, as for the other fields");
        let read: Request = serde_json::from_value(json!({"limit": 5})).unwrap();
        assert_eq!(read.limit, Some(5));
        let cut = json!({"success": true, "data": {"keys": ["a"], "truncated": true, "next": "a"}});
        assert_eq!(next_page(&cut), Some("a"));
        assert_eq!(next_page(&json!({"success": true, "data": {"keys": [], "count": 0}})), None);
    }

    #[test]
    fn events_serialise_with_kebab_case_ops() {
        let event = Event {
            scope: "plant".into(),
            key: None,
            op: EventOp::CreateScope,
            value: None,
            ts: "2026-01-01T00:00:00Z".into(),
        };
        assert_eq!(event.topic(), "org.plantd.State.plant");
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["op"], "create-scope");
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), event);
    }
}
