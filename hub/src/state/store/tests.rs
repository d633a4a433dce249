use super::*;
use serde_json::json;

#[test]
fn scopes_keep_their_keys_apart() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 1 << 20, false, Limits::default()).unwrap();
    s.set("ab", "c", &json!("1"), "").unwrap();
    s.set("a", "bc", &json!("2"), "").unwrap();
    assert_eq!(s.list_keys("a").unwrap(), vec!["bc"]);
    assert_eq!(s.list_keys("ab").unwrap(), vec!["c"]);
    assert_eq!(s.get("a", "bc").unwrap(), Some(json!("2")));
    assert!(s.delete_scope("a").unwrap());
    assert_eq!(s.get("ab", "c").unwrap(), Some(json!("1")));
    assert_eq!(s.list_scopes().unwrap(), vec!["ab"]);
}

#[test]
fn bounds_hold_and_usage_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_value_bytes: 10,
        max_key_bytes: 4,
        max_keys_per_scope: 2,
        max_scope_bytes: 16,
        max_scopes: 3,
        max_scopes_per_identity: 1,
        max_reply_bytes: 1 << 20,
    };
    let quota = |r: Result<()>| matches!(r, Err(StoreError::Quota(_)));
    {
        let s = Store::open(dir.path(), 1 << 20, false, limits).unwrap();
        assert!(quota(s.set("a", "k", &json!("0123456789"), "")), "value over 10 bytes");
        assert!(quota(s.set("a", "k-too-long", &json!(1), "")), "key over 4 bytes");
        assert!(quota(s.set("scope", "k", &json!(1), "")), "scope name over 4 bytes");
        assert!(quota(s.create_scope("scope", "").map(|_| ())), "scope name over 4 bytes");
        s.set("a", "k1", &json!("12345"), "pump-1").unwrap();
        s.set("a", "k1", &json!("1234567"), "pump-1").unwrap(); // 2 + 9 bytes
        assert!(quota(s.set("a", "k2", &json!("12345"), "pump-1")), "scope over 16 bytes with its keys");
        s.set("a", "k2", &json!("1"), "pump-1").unwrap(); // 2 + 3: 16 in all
        assert_eq!(s.refused(), 5);
        assert!(quota(s.set("a", "k3", &json!(1), "pump-1")), "a third key");
        assert!(quota(s.set("b", "k", &json!(1), "pump-1")), "a second scope for pump-1");
        assert_eq!(s.owner("a").as_deref(), Some("pump-1"));
        s.flush().unwrap();
    }
    let s = Store::open(dir.path(), 1 << 20, false, limits).unwrap();
    assert!(quota(s.set("a", "k3", &json!(1), "pump-1")), "the count survived reopening");
    assert!(s.delete("a", "k2").unwrap());
    s.set("a", "k3", &json!(1), "pump-1").unwrap();
    assert!(s.delete_scope("a").unwrap());
    s.set("b", "k", &json!(1), "pump-1").unwrap();
    s.create_scope("c", "").unwrap();
    s.create_scope("d", "").unwrap();
    assert!(quota(s.create_scope("e", "").map(|_| ())), "three scopes in all");
}

#[test]
fn keys_count_toward_the_scope_and_pages_start_where_asked() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { max_scope_bytes: 1000, ..Limits::default() };
    let s = Store::open(dir.path(), 1 << 20, false, limits).unwrap();
    let e = s.set("flood", &"k".repeat(900 << 10), &json!(1), "").unwrap_err();
    assert!(e.to_string().contains("a key of 921600 bytes is over the limit of 256"), "{e}");
    // 256-byte keys with 1-byte values: three fit in 1000 bytes, the fourth does not.
    let key = |i: u8| format!("{}{i}", "k".repeat(255));
    for i in 0..3 {
        s.set("flood", &key(i), &json!(1), "").unwrap();
    }
    let e = s.set("flood", &key(3), &json!(1), "").unwrap_err();
    assert!(e.to_string().contains("max_scope_bytes"), "{e}");
    assert_eq!(s.refused(), 2);
    assert!(s.delete("flood", &key(0)).unwrap());
    s.set("flood", &key(3), &json!(1), "").unwrap();

    s.set("flood2", "a", &json!(1), "").unwrap();
    let after = |a: Option<&str>| s.keys_after("flood", a).collect::<Result<Vec<_>>>().unwrap();
    assert_eq!(after(None), [key(1), key(2), key(3)]);
    assert_eq!(after(Some(&key(1))), [key(2), key(3)], "after is exclusive");
    assert_eq!(after(Some(&key(3))), Vec::<String>::new(), "and never runs into the next scope");
    let scopes = |a| s.scopes_after(a).collect::<Result<Vec<_>>>().unwrap();
    assert_eq!(scopes(Some("flood")), ["flood2"]);
}

#[test]
fn limits_are_checked_against_each_other_and_fitted_to_the_broker() {
    let l = Limits::default();
    assert_eq!(l.check(), Ok(()));
    let tight = Limits { max_reply_bytes: 64 << 10, ..l };
    assert!(tight.check().unwrap_err().1.contains("state-get reply may need"));
    assert_eq!(Limits { max_key_bytes: 0, ..l }.check().unwrap_err().0, "state.limits.max_key_bytes");
    assert_eq!(l.within(1 << 20), (l, false), "the defaults fit the broker's defaults");
    let (small, lowered) = l.within(4096);
    assert!(lowered);
    assert_eq!(small.max_reply_bytes, 4096);
    assert!(small.keyed_reply_bytes() <= 4096, "a value's reply fits: {small:?}");
    assert_eq!(small.check(), Ok(()));
}

#[test]
fn a_deleted_scope_keeps_no_keys_when_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 1 << 20, false, Limits::default()).unwrap();
    s.set("plant", "old", &json!(1), "").unwrap();
    assert!(s.delete_scope("plant").unwrap());
    s.create_scope("plant", "").unwrap();
    assert!(s.list_keys("plant").unwrap().is_empty());
}

#[test]
fn flushed_writes_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), 1 << 20, false, Limits::default()).unwrap();
        // The first set creates the scope (with the key, atomically); the
        // others write into a scope that exists, without a transaction.
        s.set("plant", "mode", &json!({"auto": false}), "").unwrap();
        s.set("plant", "speed", &json!(3), "").unwrap();
        s.set("plant", "mode", &json!({"auto": true}), "").unwrap();
        assert_eq!((s.writes(), s.durable_writes()), (3, 0));
        s.flush().unwrap();
        assert_eq!(s.durable_writes(), 3);
    }
    let s = Store::open(dir.path(), 1 << 20, false, Limits::default()).unwrap();
    assert_eq!(s.get("plant", "mode").unwrap(), Some(json!({"auto": true})));
    assert_eq!(s.get("plant", "speed").unwrap(), Some(json!(3)));
    assert_eq!(s.list_keys("plant").unwrap().len(), 2);
}

#[test]
fn flush_each_write_is_durable_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 1 << 20, true, Limits::default()).unwrap();
    s.set("p", "k", &json!("v"), "").unwrap();
    s.set("p", "l", &json!("w"), "").unwrap();
    assert_eq!((s.writes(), s.durable_writes()), (2, 0), "writes wait for the commit");
    s.commit().unwrap();
    assert_eq!(s.durable_writes(), 2);
}

/// A value whose scope was lost (salvage can copy one tree further than the
/// other) is not counted; writing or deleting it once the scope exists again
/// must not take the counts below zero.
#[test]
fn a_value_left_without_its_scope_can_be_overwritten_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), 1 << 20, false, Limits::default()).unwrap();
        let values = s.disk().unwrap().values;
        values.insert(scope_key("ghost", "k"), &b"\"a value longer than the new one\""[..]).unwrap();
        s.flush().unwrap();
    }
    let s = Store::open(dir.path(), 1 << 20, false, Limits::default()).unwrap();
    assert!(s.list_scopes().unwrap().is_empty(), "the value brings no scope back");
    s.set("ghost", "k", &json!("v"), "").unwrap();
    assert_eq!(s.get("ghost", "k").unwrap(), Some(json!("v")));
    assert!(s.delete("ghost", "k").unwrap());
    assert!(s.delete("ghost", "k").is_ok_and(|deleted| !deleted));
    s.set("ghost", "k2", &json!("w"), "").unwrap();
    assert_eq!(s.list_keys("ghost").unwrap(), vec!["k2"]);
}
