//! Who a bus payload says it is from. A publisher's grants decide the
//! topics it may use, but a payload can say more: the agent's samples carry
//! `"agent": "<id>"`, and consumers (the NATS bridge's headers, dashboards)
//! believe it. So with security, a JSON object published by an identity
//! may name only that identity as its agent.
//!
//! A payload that looks like a JSON object but does not parse as one (a
//! truncated object, a key given twice) cannot be checked, and lenient
//! parsers downstream would each read it their own way: it is refused too.
//! Anything else (not JSON, an array, a number) claims nothing.

use std::borrow::Cow;

use serde::Deserialize;

/// Why a payload is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// It names another agent.
    Agent(String),
    /// It looks like a JSON object but is not one that can be checked.
    Unreadable,
}

/// The one field checked; every other field is skipped, unparsed. A key
/// given twice is an error (serde refuses a duplicate field).
#[derive(Deserialize)]
struct Claim<'a> {
    #[serde(borrow, default)]
    agent: Option<Cow<'a, str>>,
}

/// Checks a whole bus message of `identity`'s: every frame after the topic
/// (two-frame layout), or the JSON after the topic (one frame).
pub fn check_message<F: proto::Frame>(frames: &[F], identity: &str) -> Result<(), Refused> {
    match frames {
        [one] => proto::bus::split(std::slice::from_ref(one))
            .map_or(Ok(()), |(_, payload)| check(payload, identity)),
        [_, rest @ ..] => rest.iter().try_for_each(|frame| check(frame.bytes(), identity)),
        [] => Ok(()),
    }
}

/// Checks what `payload` (one frame's payload) says about its sender, the
/// identity `identity`.
pub fn check(payload: &[u8], identity: &str) -> Result<(), Refused> {
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Ok(());
    }
    match serde_json::from_slice::<Claim<'_>>(payload) {
        Ok(Claim { agent: None }) => Ok(()),
        Ok(Claim { agent: Some(agent) }) if agent == identity => Ok(()),
        Ok(Claim { agent: Some(agent) }) => Err(Refused::Agent(agent.into_owned())),
        Err(_) => Err(Refused::Unreadable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_payload_may_name_only_its_sender() {
        assert_eq!(check(br#"{"agent":"pump-1","seq":3,"value":1.5}"#, "pump-1"), Ok(()));
        assert_eq!(check(br#" {"seq":3}"#, "pump-1"), Ok(()), "no claim");
        assert_eq!(check(br#"{"agent":"pump-2","seq":3}"#, "pump-1"), Err(Refused::Agent("pump-2".into())));
        assert_eq!(
            check(br#"{"\u0061gent":"pump-2"}"#, "pump-1"),
            Err(Refused::Agent("pump-2".into())),
            "an escaped key is the same key"
        );
        assert_eq!(check(br#"{"agent":"pump-1","agent":"pump-2"}"#, "pump-1"), Err(Refused::Unreadable));
        assert_eq!(check(br#"{"agent":"pump-1""#, "pump-1"), Err(Refused::Unreadable));
        assert_eq!(check(br#"{"agent":7}"#, "pump-1"), Err(Refused::Unreadable));
        for other in [&b"plain text"[..], b"[1,2]", b"42", b""] {
            assert_eq!(check(other, "pump-1"), Ok(()), "{other:?} claims nothing");
        }
    }

    #[test]
    fn both_layouts_and_every_frame_are_checked() {
        let forged = br#"{"agent":"pump-2"}"#.to_vec();
        let one_frame = [[&b"org.plantd.Metric.pump-1.t"[..], &forged].concat()];
        assert!(check_message(&one_frame, "pump-1").is_err());
        let extra_frame = [b"org.plantd.Metric.pump-1.t".to_vec(), br#"{"agent":"pump-1"}"#.to_vec(), forged];
        assert!(check_message(&extra_frame, "pump-1").is_err(), "a third frame is checked too");
        assert_eq!(check_message(&extra_frame[..2], "pump-1"), Ok(()));
    }

    proptest! {
        #[test]
        fn never_panics(payload in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = check(&payload, "pump-1");
        }
    }
}
