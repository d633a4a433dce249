use super::*;
use proptest::prelude::*;

type Frames = Vec<Vec<u8>>;

fn f(parts: &[&[u8]]) -> Frames {
    parts.iter().map(|p| p.to_vec()).collect()
}

fn to_broker(parts: &[&[u8]]) -> Result<(Dialect, String), DecodeError> {
    let frames = f(parts);
    decode_to_broker(&frames).map(|(d, m)| (d, format!("{m:?}")))
}

fn from_broker(parts: &[&[u8]]) -> Result<(Dialect, String), DecodeError> {
    let frames = f(parts);
    decode_from_broker(&frames).map(|(d, m)| (d, format!("{m:?}")))
}

#[test]
fn valid_to_broker_vectors() {
    use Dialect::*;
    let table: &[(&[&[u8]], Dialect, &str)] = &[
        // RFC 7
        (
            &[b"", b"MDPC01", b"echo", b"hi"],
            Rfc7,
            r#"Request { service: [101, 99, 104, 111], body: [[104, 105]] }"#,
        ),
        (&[b"", b"MDPC01", b"echo"], Rfc7, r#"Request { service: [101, 99, 104, 111], body: [] }"#),
        (&[b"", b"MDPW01", b"\x01", b"echo"], Rfc7, r#"Ready { service: [101, 99, 104, 111], credit: 1 }"#),
        (
            &[b"", b"MDPW01", b"\x01", b"echo", b"credit=16"],
            Rfc7,
            r#"Ready { service: [101, 99, 104, 111], credit: 16 }"#,
        ),
        (
            &[b"", b"MDPW01", b"\x03", b"C", b"", b"x"],
            Rfc7,
            r#"Reply { kind: Final, client: [67], body: [[120]] }"#,
        ),
        (&[b"", b"MDPW01", b"\x04"], Rfc7, "Heartbeat"),
        (&[b"", b"MDPW01", b"\x05"], Rfc7, "Disconnect"),
        // RFC 18
        (
            &[b"MDPC02", b"\x01", b"echo", b"a", b"b"],
            Rfc18,
            r#"Request { service: [101, 99, 104, 111], body: [[97], [98]] }"#,
        ),
        (&[b"MDPW02", b"\x01", b"echo"], Rfc18, r#"Ready { service: [101, 99, 104, 111], credit: 1 }"#),
        (
            &[b"MDPW02", b"\x01", b"echo", b"credit=1"],
            Rfc18,
            r#"Ready { service: [101, 99, 104, 111], credit: 1 }"#,
        ),
        (
            &[b"MDPW02", b"\x03", b"C", b"", b"p"],
            Rfc18,
            r#"Reply { kind: Partial, client: [67], body: [[112]] }"#,
        ),
        (&[b"MDPW02", b"\x04", b"C", b""], Rfc18, r#"Reply { kind: Final, client: [67], body: [] }"#),
        (&[b"MDPW02", b"\x05"], Rfc18, "Heartbeat"),
        (&[b"MDPW02", b"\x06"], Rfc18, "Disconnect"),
        // majortomo
        (
            &[b"", b"MDPC02", b"\x02", b"echo", b"a"],
            Majortomo,
            r#"Request { service: [101, 99, 104, 111], body: [[97]] }"#,
        ),
        (
            &[b"", b"MDPW02", b"\x01", b"echo"],
            Majortomo,
            r#"Ready { service: [101, 99, 104, 111], credit: 1 }"#,
        ),
        (
            &[b"", b"MDPW02", b"\x01", b"echo", b"credit=65535"],
            Majortomo,
            r#"Ready { service: [101, 99, 104, 111], credit: 65535 }"#,
        ),
        (
            &[b"", b"MDPW02", b"\x04", b"C", b"", b"x"],
            Majortomo,
            r#"Reply { kind: Final, client: [67], body: [[120]] }"#,
        ),
        (&[b"", b"MDPW02", b"\x05"], Majortomo, "Heartbeat"),
        // plantd
        (
            &[b"", b"MDPC02", b"REQUEST", b"echo", b"a"],
            Plantd,
            r#"Request { service: [101, 99, 104, 111], body: [[97]] }"#,
        ),
        (
            &[b"", b"MDPW02", b"READY", b"echo"],
            Plantd,
            r#"Ready { service: [101, 99, 104, 111], credit: 1 }"#,
        ),
        (
            &[b"", b"MDPW02", b"READY", b"echo", b"credit=4"],
            Plantd,
            r#"Ready { service: [101, 99, 104, 111], credit: 4 }"#,
        ),
        (
            &[b"", b"MDPW02", b"FINAL", b"C", b"x"],
            Plantd,
            r#"Reply { kind: Final, client: [67], body: [[120]] }"#,
        ),
        (
            &[b"", b"MDPW02", b"PARTIAL", b"C", b"", b"x"],
            Plantd,
            r#"Reply { kind: Partial, client: [67], body: [[], [120]] }"#,
        ),
        (&[b"", b"MDPW02", b"HEARTBEAT"], Plantd, "Heartbeat"),
        (&[b"", b"MDPW02", b"DISCONNECT"], Plantd, "Disconnect"),
    ];
    for (frames, dialect, expected) in table {
        assert_eq!(to_broker(frames), Ok((*dialect, expected.to_string())), "frames {frames:?}");
    }
}

#[test]
fn invalid_to_broker_vectors() {
    use DecodeError::*;
    let table: &[(&[&[u8]], DecodeError)] = &[
        (&[], Empty),
        (&[b""], MissingHeader),
        (&[b"", b"MDPX01"], UnknownHeader),
        (&[b"HELLO"], UnknownHeader),
        (&[b"MDPC01", b"echo"], MissingEmptyFrame),
        (&[b"MDPW01", b"\x01", b"echo"], MissingEmptyFrame),
        // missing frames
        (&[b"", b"MDPC01"], MissingService),
        (&[b"MDPC02"], MissingCommand),
        (&[b"MDPW02"], MissingCommand),
        (&[b"", b"MDPW01"], MissingCommand),
        (&[b"MDPC02", b"\x01"], MissingService),
        // empty / oversized service
        (&[b"", b"MDPC01", b""], EmptyService),
        (&[b"MDPC02", b"\x01", b"", b"x"], EmptyService),
        (&[b"", b"MDPC02", b"REQUEST", b""], EmptyService),
        (&[b"", b"MDPC01", &[b'a'; 256]], ServiceTooLong),
        // READY without service
        (&[b"", b"MDPW01", b"\x01"], MissingService),
        (&[b"MDPW02", b"\x01"], MissingService),
        (&[b"", b"MDPW02", b"READY"], MissingService),
        (&[b"", b"MDPW02", b"READY", b""], EmptyService),
        (&[b"", b"MDPW01", b"\x01", b"echo", b"extra"], TrailingFrames),
        // the credit extension: one canonical `credit=N` frame, N in 1..=65535
        (&[b"", b"MDPW01", b"\x01", b"echo", b"credit=2", b"credit=2"], TrailingFrames),
        (&[b"MDPW02", b"\x01", b"echo", b"credit=0"], BadCredit),
        (&[b"MDPW02", b"\x01", b"echo", b"credit=08"], BadCredit),
        (&[b"MDPW02", b"\x01", b"echo", b"credit=65536"], BadCredit),
        (&[b"MDPW02", b"\x01", b"echo", b"credit=100000"], BadCredit),
        (&[b"MDPW02", b"\x01", b"echo", b"credit="], BadCredit),
        (&[b"MDPW02", b"\x01", b"echo", b"credit=+4"], BadCredit),
        (&[b"", b"MDPW02", b"READY", b"echo", b"credit= 4"], BadCredit),
        (&[b"MDPW02", b"\x01", b"echo", b"CREDIT=4"], TrailingFrames),
        // unknown commands
        (&[b"", b"MDPW01", b"\x09"], UnknownCommand),
        (&[b"MDPW02", b"\x07"], UnknownCommand),
        (&[b"", b"MDPW02", b"JUMP"], UnknownCommand),
        (&[b"MDPC02", b"\x05", b"echo"], UnknownCommand),
        (&[b"MDPC02", b"REQUEST", b"echo"], UnknownCommand),
        (&[b"MDPW02", b"READY", b"echo"], UnknownCommand),
        (&[b"", b"MDPW01", b"\x04", b"x"], TrailingFrames),
        // commands that flow the other way
        (&[b"", b"MDPW01", b"\x02", b"C", b""], WrongDirection),
        (&[b"MDPW02", b"\x02", b"C", b""], WrongDirection),
        (&[b"", b"MDPW02", b"REQUEST", b"C", b""], WrongDirection),
        (&[b"MDPC02", b"\x03", b"echo"], WrongDirection),
        // replies with bad addressing
        (&[b"", b"MDPW01", b"\x03"], MissingAddress),
        (&[b"", b"MDPW01", b"\x03", b"", b""], EmptyAddress),
        (&[b"", b"MDPW01", b"\x03", b"C", b"x"], MissingDelimiter),
        (&[b"", b"MDPW01", b"\x03", b"C"], MissingDelimiter),
        (&[b"MDPW02", b"\x04", b"C", b"body"], MissingDelimiter),
        (&[b"", b"MDPW02", b"FINAL"], MissingAddress),
    ];
    for (frames, expected) in table {
        assert_eq!(to_broker(frames), Err(*expected), "frames {frames:?}");
    }
}

#[test]
fn valid_from_broker_vectors() {
    use Dialect::*;
    let table: &[(&[&[u8]], Dialect, &str)] = &[
        (
            &[b"", b"MDPC01", b"echo", b"x"],
            Rfc7,
            r#"Reply { kind: Final, service: Some([101, 99, 104, 111]), body: [[120]] }"#,
        ),
        (&[b"", b"MDPW01", b"\x02", b"C", b"", b"x"], Rfc7, r#"Request { client: [67], body: [[120]] }"#),
        (&[b"", b"MDPW01", b"\x04"], Rfc7, "Heartbeat"),
        (&[b"", b"MDPW01", b"\x05"], Rfc7, "Disconnect"),
        (
            &[b"MDPC02", b"\x02", b"echo", b"x"],
            Rfc18,
            r#"Reply { kind: Partial, service: Some([101, 99, 104, 111]), body: [[120]] }"#,
        ),
        (
            &[b"MDPC02", b"\x03", b"echo"],
            Rfc18,
            r#"Reply { kind: Final, service: Some([101, 99, 104, 111]), body: [] }"#,
        ),
        (&[b"MDPW02", b"\x02", b"C", b"", b"x"], Rfc18, r#"Request { client: [67], body: [[120]] }"#),
        (&[b"MDPW02", b"\x06"], Rfc18, "Disconnect"),
        (
            &[b"", b"MDPC02", b"\x03", b"x"],
            Majortomo,
            r#"Reply { kind: Partial, service: None, body: [[120]] }"#,
        ),
        (&[b"", b"MDPC02", b"\x04"], Majortomo, r#"Reply { kind: Final, service: None, body: [] }"#),
        (
            &[b"", b"MDPW02", b"\x02", b"C", b"", b"x"],
            Majortomo,
            r#"Request { client: [67], body: [[120]] }"#,
        ),
        (&[b"", b"MDPW02", b"\x05"], Majortomo, "Heartbeat"),
        (
            &[b"MDPC02", b"FINAL", b"echo", b"x"],
            Plantd,
            r#"Reply { kind: Final, service: Some([101, 99, 104, 111]), body: [[120]] }"#,
        ),
        (&[b"MDPW02", b"REQUEST", b"C", b"", b"x"], Plantd, r#"Request { client: [67], body: [[120]] }"#),
        (&[b"MDPW02", b"HEARTBEAT"], Plantd, "Heartbeat"),
        (&[b"MDPW02", b"DISCONNECT"], Plantd, "Disconnect"),
    ];
    for (frames, dialect, expected) in table {
        assert_eq!(from_broker(frames), Ok((*dialect, expected.to_string())), "frames {frames:?}");
    }
}

#[test]
fn invalid_from_broker_vectors() {
    use DecodeError::*;
    let table: &[(&[&[u8]], DecodeError)] = &[
        (&[], Empty),
        (&[b"MDPC01", b"echo"], MissingEmptyFrame),
        (&[b"", b"MDPC01"], MissingService),
        (&[b"MDPC02", b"\x01", b"echo"], WrongDirection),
        (&[b"MDPC02", b"\x09", b"echo"], UnknownCommand),
        (&[b"", b"MDPC02", b"\x02"], WrongDirection),
        (&[b"", b"MDPC02", b"FINAL", b"echo"], UnknownCommand),
        (&[b"MDPW02", b"\x02", b"C", b"x"], MissingDelimiter),
        (&[b"MDPW02", b"REQUEST", b"C"], MissingDelimiter),
        (&[b"MDPW02", b"\x01", b"echo"], WrongDirection),
        (&[b"", b"MDPW02", b"REQUEST", b"C", b""], UnknownCommand),
        (&[b"MDPW02", b"\x05", b"x"], TrailingFrames),
        (&[b"MDPC02", b"\x03"], MissingService),
    ];
    for (frames, expected) in table {
        assert_eq!(from_broker(frames), Err(*expected), "frames {frames:?}");
    }
}

#[test]
fn ready_encodes_credit_only_above_one() {
    let mut buf = [0; 12];
    let frames = |env: Envelope<'_>| env.frames().iter().map(|f| f.to_vec()).collect::<Frames>();
    assert_eq!(
        frames(worker_ready_with_credit(Dialect::Plantd, b"s", 16, &mut buf)),
        f(&[b"", b"MDPW02", b"READY", b"s", b"credit=16"])
    );
    assert_eq!(
        frames(worker_ready_with_credit(Dialect::Rfc18, b"s", 1, &mut buf)),
        f(&[b"MDPW02", b"\x01", b"s"])
    );
    assert_eq!(
        frames(worker_ready_with_credit(Dialect::Rfc7, b"s", 1_000_000, &mut buf)),
        f(&[b"", b"MDPW01", b"\x01", b"s", b"credit=65535"]),
        "clamped to the most a READY may say"
    );
    for n in [1, 7, 10, 99, 100, 1024, 65535] {
        assert_eq!(parse_credit(credit_frame(n, &mut buf)), Some(n));
    }
}

#[test]
fn rfc7_has_no_partial() {
    assert_eq!(client_reply(Dialect::Rfc7, ReplyKind::Partial, Some(b"s")), Err(EncodeError::PartialInRfc7));
    assert_eq!(worker_reply(Dialect::Rfc7, ReplyKind::Partial, b"c"), Err(EncodeError::PartialInRfc7));
}

#[test]
fn every_decode_error_has_a_distinct_reason_and_index() {
    let reasons: std::collections::HashSet<_> = DecodeError::ALL.iter().map(|e| e.reason()).collect();
    assert_eq!(reasons.len(), DecodeError::ALL.len());
    for (i, e) in DecodeError::ALL.iter().enumerate() {
        assert_eq!(e.index(), i);
    }
}

#[test]
fn dialect_names_parse_back() {
    for d in Dialect::ALL {
        assert_eq!(d.name().parse::<Dialect>(), Ok(d));
    }
    assert!("mdp9".parse::<Dialect>().is_err());
}

// ---- properties -------------------------------------------------------------

fn dialect() -> impl Strategy<Value = Dialect> {
    prop::sample::select(Dialect::ALL.to_vec())
}

fn kind() -> impl Strategy<Value = ReplyKind> {
    prop_oneof![Just(ReplyKind::Partial), Just(ReplyKind::Final)]
}

fn service() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 1..=MAX_SERVICE_LEN)
}

fn address() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 1..=16)
}

fn body() -> impl Strategy<Value = Frames> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..32), 0..5)
}

/// Frames built from protocol tokens as well as noise, so the fuzzing reaches
/// past the header checks.
fn frames() -> impl Strategy<Value = Frames> {
    let token = prop_oneof![
        Just(b"".to_vec()),
        Just(MDPC01.to_vec()),
        Just(MDPW01.to_vec()),
        Just(MDPC02.to_vec()),
        Just(MDPW02.to_vec()),
        (1u8..=7).prop_map(|b| vec![b]),
        prop::sample::select(vec!["READY", "REQUEST", "PARTIAL", "FINAL", "HEARTBEAT", "DISCONNECT"])
            .prop_map(|w| w.as_bytes().to_vec()),
        (0u32..70_000).prop_map(|n| format!("credit={n}").into_bytes()),
        prop::collection::vec(any::<u8>(), 0..300),
    ];
    prop::collection::vec(token, 0..8)
}

proptest! {
    #[test]
    fn decoding_arbitrary_frames_never_panics(frames in frames()) {
        let _ = decode_to_broker(&frames);
        let _ = decode_from_broker(&frames);
    }

    #[test]
    fn client_request_round_trips(d in dialect(), service in service(), body in body()) {
        let msg = ToBroker::Request { service: &service, body: &body };
        let frames = encode_to_broker(d, &msg).unwrap();
        prop_assert_eq!(decode_to_broker(&frames).unwrap(), (d, msg));
    }

    #[test]
    fn worker_ready_round_trips(d in dialect(), service in service(), credit in 1..=MAX_CREDIT) {
        let msg: ToBroker<'_, Vec<u8>> = ToBroker::Ready { service: &service, credit };
        let frames = encode_to_broker(d, &msg).unwrap();
        prop_assert_eq!(decode_to_broker(&frames).unwrap(), (d, msg));
    }

    #[test]
    fn worker_reply_round_trips(d in dialect(), kind in kind(), client in address(), body in body()) {
        let msg = ToBroker::Reply { kind, client: &client, body: &body };
        match encode_to_broker(d, &msg) {
            Ok(frames) => prop_assert_eq!(decode_to_broker(&frames).unwrap(), (d, msg)),
            Err(e) => prop_assert!(d == Dialect::Rfc7 && kind == ReplyKind::Partial, "{e}"),
        }
    }

    #[test]
    fn worker_commands_round_trip_both_ways(d in dialect()) {
        for msg in [ToBroker::<Vec<u8>>::Heartbeat, ToBroker::Disconnect] {
            let frames = encode_to_broker(d, &msg).unwrap();
            prop_assert_eq!(decode_to_broker(&frames).unwrap(), (d, msg));
        }
        for msg in [FromBroker::<Vec<u8>>::Heartbeat, FromBroker::Disconnect] {
            let frames = encode_from_broker(d, &msg).unwrap();
            prop_assert_eq!(decode_from_broker(&frames).unwrap(), (d, msg));
        }
    }

    #[test]
    fn broker_request_round_trips(d in dialect(), client in address(), body in body()) {
        let msg = FromBroker::Request { client: &client, body: &body };
        let frames = encode_from_broker(d, &msg).unwrap();
        prop_assert_eq!(decode_from_broker(&frames).unwrap(), (d, msg));
    }

    #[test]
    fn client_reply_round_trips(d in dialect(), kind in kind(), service in service(), body in body()) {
        let msg = FromBroker::Reply { kind, service: Some(&service), body: &body };
        match encode_from_broker(d, &msg) {
            Ok(frames) => {
                // majortomo has no service frame in replies: it comes back as None.
                let service = (d != Dialect::Majortomo).then_some(&service[..]);
                let expected = FromBroker::Reply { kind, service, body: &body };
                prop_assert_eq!(decode_from_broker(&frames).unwrap(), (d, expected));
            }
            Err(e) => prop_assert!(d == Dialect::Rfc7 && kind == ReplyKind::Partial, "{e}"),
        }
    }
}
