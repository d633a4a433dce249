use serde_json::{json, Value};

use super::*;
use crate::state::store::Limits;

struct Rig {
    store: Store,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        Rig { store: Store::open(dir.path(), 1 << 20, false, Limits::default()).unwrap(), _dir: dir }
    }

    fn raw(&self, frames: &[&[u8]]) -> (Value, Option<Event>) {
        let frames: Vec<Vec<u8>> = frames.iter().map(|f| f.to_vec()).collect();
        let outcome = handle(&self.store, &Caller::TRUSTED, &frames);
        (outcome.reply, outcome.event)
    }

    fn call(&self, op: &str, request: Value) -> (Value, Option<Event>) {
        self.raw(&[op.as_bytes(), request.to_string().as_bytes()])
    }

    fn reply(&self, op: &str, request: Value) -> Value {
        self.call(op, request).0
    }
}

fn err(message: &str) -> Value {
    json!({"success": false, "error": message})
}

#[test]
fn scope_lifecycle() {
    let r = Rig::new();
    assert_eq!(
        r.reply("list-scopes", json!({})),
        json!({"success": true, "data": {"scopes": [], "count": 0}})
    );
    let (reply, event) = r.call("create-scope", json!({"service": "plant"}));
    assert_eq!(reply, json!({"success": true, "data": {"scope": "plant", "status": "created"}}));
    assert_eq!(event.unwrap().op, EventOp::CreateScope);
    assert_eq!(r.reply("create-scope", json!({"service": "plant"})), err("Scope 'plant' already exists"));
    assert_eq!(
        r.reply("list-scopes", json!({})),
        json!({"success": true, "data": {"scopes": ["plant"], "count": 1}})
    );
    let (reply, event) = r.call("delete-scope", json!({"service": "plant"}));
    assert_eq!(reply, json!({"success": true, "data": {"scope": "plant", "status": "deleted"}}));
    assert_eq!(event.unwrap().op, EventOp::DeleteScope);
    assert_eq!(r.reply("delete-scope", json!({"service": "plant"})), err("Scope 'plant' does not exist"));
}

#[test]
fn set_get_delete_with_both_operation_names() {
    let r = Rig::new();
    for (set, get) in [("state-set", "state-get"), ("set", "get")] {
        let (reply, event) =
            r.call(set, json!({"service": "s", "key": "k", "value": "v1", "token": "ignored"}));
        assert_eq!(
            reply,
            json!({"success": true, "data": {"scope": "s", "key": "k", "value": "v1", "status": "set"}})
        );
        let event = event.unwrap();
        assert_eq!(
            (event.topic().as_str(), event.op, event.key.as_deref()),
            ("org.plantd.State.s", EventOp::Set, Some("k"))
        );
        assert_eq!(event.value, Some(json!("v1")));
        assert_eq!(
            r.reply(get, json!({"service": "s", "key": "k"})),
            json!({"success": true, "data": {"scope": "s", "key": "k", "value": "v1"}})
        );
    }
    assert_eq!(
        r.reply("state-get", json!({"service": "s", "key": "missing"})),
        json!({"success": true, "data": {"scope": "s", "key": "missing", "value": ""}})
    );
    let (reply, event) = r.call("delete", json!({"service": "s", "key": "k"}));
    assert_eq!(reply, json!({"success": true, "data": {"scope": "s", "key": "k", "status": "deleted"}}));
    assert_eq!(event.unwrap().op, EventOp::Delete);
    let (_, event) = r.call("delete", json!({"service": "s", "key": "k"}));
    assert!(event.is_none(), "deleting a missing key changes nothing and publishes nothing");
}

#[test]
fn setting_in_a_missing_scope_creates_it() {
    let r = Rig::new();
    r.reply("set", json!({"service": "new", "key": "k", "value": "v"}));
    assert_eq!(
        r.reply("list-keys", json!({"service": "new"})),
        json!({"success": true, "data": {"scope": "new", "keys": ["k"], "count": 1}})
    );
}

#[test]
fn any_json_value_comes_back_unchanged() {
    let r = Rig::new();
    for value in [json!(42), json!(true), json!(null), json!([1, "a"]), json!({"nested": {"x": 1.5}})] {
        r.reply("set", json!({"service": "j", "key": "k", "value": value}));
        assert_eq!(r.reply("get", json!({"service": "j", "key": "k"}))["data"]["value"], value);
    }
}

#[test]
fn plantds_error_replies() {
    let r = Rig::new();
    assert_eq!(r.raw(&[b"state-get"]).0, json!({"error": "Invalid message format"}));
    assert_eq!(r.raw(&[]).0, json!({"error": "Invalid message format"}));
    assert_eq!(r.reply("explode", json!({})), json!({"error": "Invalid operation"}));
    let bad = r.raw(&[b"state-get", b"{not json"]).0;
    assert_eq!(bad["success"], false);
    assert!(bad["error"].as_str().unwrap().starts_with("Invalid request format: "), "{bad}");
    assert!(r.raw(&[b"state-get", b"[1]"]).0["error"]
        .as_str()
        .unwrap()
        .starts_with("Invalid request format"));

    assert_eq!(r.reply("state-get", json!({"key": "k"})), err("Service scope required for get request"));
    assert_eq!(r.reply("state-set", json!({"key": "k"})), err("Service scope required for set request"));
    assert_eq!(r.reply("delete", json!({})), err("Service scope required for delete request"));
    assert_eq!(r.reply("create-scope", json!({})), err("Service scope required for create-scope request"));
    assert_eq!(r.reply("delete-scope", json!({})), err("Service scope required for delete-scope request"));
    assert_eq!(r.reply("list-keys", json!({})), err("Service scope required for list-keys request"));
    assert_eq!(r.reply("state-get", json!({"service": "s"})), err("Key required for get request"));
    assert_eq!(
        r.reply("state-set", json!({"service": "s", "key": "k"})),
        err("Value required for set request")
    );
    assert_eq!(
        r.reply("state-set", json!({"service": "", "key": "k", "value": "v"})),
        err("Service scope cannot be empty")
    );
    assert_eq!(
        r.reply("state-set", json!({"service": "s", "key": "", "value": "v"})),
        err("Key cannot be empty")
    );
    assert_eq!(r.reply("create-scope", json!({"service": ""})), err("Service scope cannot be empty"));
    assert_eq!(r.reply("list-keys", json!({"service": "nope"})), err("Scope 'nope' does not exist"));
    assert_eq!(
        r.reply("state-get", json!({"service": "nope", "key": "k"})),
        err("Failed to get key: scope `nope` doesn't exist")
    );
    assert_eq!(
        r.reply("delete", json!({"service": "nope", "key": "k"})),
        err("Failed to delete key: scope `nope` doesn't exist")
    );
}

#[test]
fn health_reports_the_store_and_an_optional_scope() {
    let r = Rig::new();
    r.reply("set", json!({"service": "s", "key": "k", "value": "v"}));
    let data = r.reply("health", json!({}))["data"].clone();
    assert_eq!(data["status"], "healthy");
    assert_eq!(data["service"], "org.plantd.State");
    assert_eq!(data["writes"], 1);
    assert!(data.get("scope").is_none());
    let data = r.reply("health", json!({"service": "s"}))["data"].clone();
    assert_eq!((data["scope"].clone(), data["scope_exists"].clone()), (json!("s"), json!(true)));
}

#[test]
fn event_payloads_carry_scope_key_op_value_and_time() {
    let (_, event) = Rig::new().call("state-set", json!({"service": "s", "key": "k", "value": "v"}));
    let payload = serde_json::to_value(event.unwrap()).unwrap();
    assert_eq!(
        (payload["scope"].clone(), payload["key"].clone(), payload["op"].clone()),
        (json!("s"), json!("k"), json!("set"))
    );
    assert_eq!(payload["value"], "v");
    assert!(payload["ts"].as_str().unwrap().parse::<jiff::Timestamp>().is_ok());
}

#[test]
fn a_batch_is_applied_in_order_and_made_durable_by_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 20, true, Limits::default()).unwrap();
    let frames = |op: &str, request: Value| vec![op.as_bytes().to_vec(), request.to_string().into_bytes()];
    let batch = [
        frames("set", json!({"service": "plant", "key": "mode", "value": "auto"})),
        frames("get", json!({"service": "plant", "key": "mode"})),
        frames("delete", json!({"service": "plant", "key": "gone"})),
        frames("set", json!({"service": "plant", "key": "mode", "value": "manual"})),
    ];
    let mut outcomes: Vec<Outcome> = batch.iter().map(|b| apply(&store, &Caller::TRUSTED, b)).collect();
    // Applied in order (the get sees the set before it), but not yet on disk.
    assert_eq!(outcomes[1].reply["data"]["value"], "auto");
    assert_eq!((store.writes(), store.durable_writes()), (2, 0));
    commit(&store, &mut outcomes);
    assert_eq!(store.durable_writes(), 2, "one commit makes the whole batch durable");
    let changed: Vec<bool> = outcomes.iter().map(|o| o.event.is_some()).collect();
    assert_eq!(changed, [true, false, false, true], "only writes announce a change");
    assert!(outcomes.iter().all(|o| o.reply["success"] == true), "{:?}", outcomes[2].reply);
}

#[test]
fn keys_and_scope_names_past_max_key_bytes_are_refused_and_counted() {
    let r = Rig::new();
    let long = "k".repeat(257);
    for (op, request) in [
        ("state-set", json!({"service": "s", "key": long, "value": 1})),
        ("state-get", json!({"service": "s", "key": long})),
        ("create-scope", json!({"service": long})),
        ("list-keys", json!({"service": "s", "after": long})),
    ] {
        let frames = [op.as_bytes().to_vec(), request.to_string().into_bytes()];
        let outcome = handle(&r.store, &Caller::TRUSTED, &frames);
        let said = outcome.reply["error"].as_str().unwrap_or_default().to_string();
        assert!(said.contains("257 bytes is over the limit of 256 (max_key_bytes)"), "{op}: {said}");
        assert!(outcome.refused.is_some(), "{op}: counted as a denial when security is on");
    }
    assert_eq!(r.store.refused(), 4, "and counted without security too");
    assert_eq!(r.reply("health", json!({}))["data"]["refused"], 4);
    let fits = "k".repeat(256);
    assert_eq!(r.reply("state-set", json!({"service": "s", "key": fits, "value": 1}))["success"], true);
}

/// A store whose replies may be `max_reply_bytes` long, with `n` keys of 200 bytes.
fn paged_rig(max_reply_bytes: usize, n: usize) -> (Rig, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { max_reply_bytes, max_value_bytes: 1024, ..Limits::default() };
    let r = Rig { store: Store::open(dir.path(), 1 << 20, false, limits).unwrap(), _dir: dir };
    let keys: Vec<String> = (0..n).map(|i| format!("{i:04}{}", "k".repeat(196))).collect();
    for key in &keys {
        r.reply("state-set", json!({"service": "big", "key": key, "value": 1}));
    }
    (r, keys)
}

#[test]
fn list_keys_pages_within_max_reply_bytes_and_misses_nothing() {
    let max = 8 << 10;
    let (r, keys) = paged_rig(max, 100); // 100 × 200 bytes of keys: about 20 kB to list
    let (mut listed, mut after, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        pages += 1;
        assert!(pages <= 100, "paging ends");
        let frames =
            [b"list-keys".to_vec(), json!({"service": "big", "after": after}).to_string().into_bytes()];
        let outcome = handle(&r.store, &Caller::TRUSTED, &frames);
        let sent = encode(&r.store, &outcome);
        assert!(sent.len() <= max, "page {pages}: {} bytes", sent.len());
        let reply: Value = serde_json::from_slice(&sent).unwrap();
        let page: Vec<String> = serde_json::from_value(reply["data"]["keys"].clone()).unwrap();
        assert_eq!(reply["data"]["count"], page.len());
        listed.extend(page);
        match proto::state::next_page(&reply) {
            Some(next) => {
                assert_eq!(Some(next), listed.last().map(String::as_str));
                after = Some(next.to_string());
            }
            None => break,
        }
    }
    assert!(pages >= 3, "{pages} pages");
    assert_eq!(listed, keys, "every key once, in order");

    let limited = r.reply("list-keys", json!({"service": "big", "limit": 2}));
    assert_eq!(
        (limited["data"]["count"].clone(), limited["data"]["truncated"].clone()),
        (json!(2), json!(true))
    );
    assert_eq!(limited["data"]["next"], keys[1]);
    // A list that fits is plantd's shape, nothing added.
    let (small, keys) = paged_rig(max, 2);
    assert_eq!(
        small.reply("list-keys", json!({"service": "big"})),
        json!({"success": true, "data": {"scope": "big", "keys": keys, "count": 2}})
    );
}

#[test]
fn list_scopes_pages_too() {
    let (r, _) = paged_rig(4 << 10, 0);
    let scopes: Vec<String> = (0..60).map(|i| format!("{i:02}{}", "s".repeat(198))).collect();
    for scope in &scopes {
        r.reply("create-scope", json!({"service": scope}));
    }
    let first = r.reply("list-scopes", json!({}));
    let page: Vec<String> = serde_json::from_value(first["data"]["scopes"].clone()).unwrap();
    assert!(!page.is_empty() && page.len() < 60, "{}", page.len());
    assert!(first.to_string().len() <= 4 << 10);
    let next = proto::state::next_page(&first).unwrap();
    let second = r.reply("list-scopes", json!({"after": next}));
    assert_eq!(second["data"]["scopes"][0], scopes[page.len()]);
}

#[test]
fn a_reply_over_max_reply_bytes_becomes_a_counted_failure() {
    let (r, _) = paged_rig(1 << 20, 0);
    let outcome = Outcome::answer(success(json!({"blob": "x".repeat(2 << 20)})));
    let sent: Value = serde_json::from_slice(&encode(&r.store, &outcome)).unwrap();
    assert!(
        sent["error"].as_str().unwrap().contains("over the limit of 1048576 (max_reply_bytes)"),
        "{sent}"
    );
    assert_eq!(r.store.refused(), 1);
}
