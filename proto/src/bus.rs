//! Message-bus framing. Publishers send either the seed's two frames
//! (topic, payload) or plantd's single frame (topic bytes immediately followed
//! by the JSON payload); subscribers accept both.

use crate::Frame;

/// How a publisher lays out one message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    /// Topic frame, then payload frame (the seed's layout).
    #[default]
    TwoFrame,
    /// One frame: topic bytes, then the JSON payload (plantd's layout).
    OneFrame,
}

/// Splits a received bus message into topic and payload.
///
/// Two or more frames: the first is the topic and the second the payload
/// (further frames, which neither layout sends, are ignored). One frame: the
/// topic runs up to the first `{` or `[`, where plantd's JSON starts; a frame
/// without either is all topic.
pub fn split<F: Frame>(frames: &[F]) -> Option<(&[u8], &[u8])> {
    match frames {
        [] => None,
        [only] => {
            let bytes = only.bytes();
            let at = bytes.iter().position(|&b| b == b'{' || b == b'[').unwrap_or(bytes.len());
            Some(bytes.split_at(at))
        }
        [topic, payload, ..] => Some((topic.bytes(), payload.bytes())),
    }
}

/// A subscription message, as subscribers send it up a bus and an XPUB
/// socket reports it: `\x01` then the topic prefix to subscribe, `\x00`
/// then the prefix to unsubscribe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subscription<'a> {
    Subscribe(&'a [u8]),
    Unsubscribe(&'a [u8]),
}

impl<'a> Subscription<'a> {
    /// `None` for anything else (an XPUB also passes on messages that are not subscriptions).
    pub fn parse(message: &'a [u8]) -> Option<Subscription<'a>> {
        match message.split_first()? {
            (1, prefix) => Some(Subscription::Subscribe(prefix)),
            (0, prefix) => Some(Subscription::Unsubscribe(prefix)),
            _ => None,
        }
    }
}

/// The frames a publisher sends for `topic` and `payload`.
pub fn encode(framing: Framing, topic: &[u8], payload: &[u8]) -> Vec<Vec<u8>> {
    match framing {
        Framing::TwoFrame => vec![topic.to_vec(), payload.to_vec()],
        Framing::OneFrame => vec![[topic, payload].concat()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits_both_layouts() {
        let two = [b"org.plantd.Metric".to_vec(), br#"{"v":1}"#.to_vec()];
        assert_eq!(split(&two), Some((&b"org.plantd.Metric"[..], &br#"{"v":1}"#[..])));
        let one = [br#"org.plantd.Metric{"v":1}"#.to_vec()];
        assert_eq!(split(&one), Some((&b"org.plantd.Metric"[..], &br#"{"v":1}"#[..])));
        let array = [br#"topic[1,2]"#.to_vec()];
        assert_eq!(split(&array), Some((&b"topic"[..], &b"[1,2]"[..])));
        let bare = [b"just.a.topic".to_vec()];
        assert_eq!(split(&bare), Some((&b"just.a.topic"[..], &b""[..])));
        let none: [Vec<u8>; 0] = [];
        assert_eq!(split(&none), None);
    }

    #[test]
    fn subscriptions_parse() {
        assert_eq!(Subscription::parse(b"\x01org."), Some(Subscription::Subscribe(b"org.")));
        assert_eq!(Subscription::parse(b"\x00"), Some(Subscription::Unsubscribe(b"")));
        assert_eq!(Subscription::parse(b"\x02x"), None);
        assert_eq!(Subscription::parse(b""), None);
    }

    proptest! {
        #[test]
        fn json_payloads_round_trip_in_both_layouts(
            topic in "[a-zA-Z0-9._-]{1,40}",
            value in any::<i64>(),
            text in "[a-z ]{0,20}",
        ) {
            let payload = format!(r#"{{"value":{value},"text":"{text}"}}"#);
            for framing in [Framing::TwoFrame, Framing::OneFrame] {
                let frames = encode(framing, topic.as_bytes(), payload.as_bytes());
                prop_assert_eq!(split(&frames), Some((topic.as_bytes(), payload.as_bytes())));
            }
        }
    }
}
