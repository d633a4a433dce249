//! Fuzzes the Majordomo decoders with arbitrary multipart messages: they must
//! never panic, and whatever decodes must encode back to the same frames'
//! meaning in the same dialect. READY's credit frame (`credit=N`) is among
//! what it reaches; `mdp.dict` gives it the protocol's tokens:
//! `cargo fuzz run mdp_decode -- -dict=mdp.dict`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::mdp::{decode_from_broker, decode_to_broker, encode_from_broker, encode_to_broker};

/// Splits the input into frames: each frame is one length byte then that many bytes.
fn frames(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while let Some((&len, rest)) = data.split_first() {
        let len = (len as usize).min(rest.len());
        frames.push(rest[..len].to_vec());
        data = &rest[len..];
    }
    frames
}

fuzz_target!(|data: &[u8]| {
    let frames = frames(data);
    if let Ok((dialect, msg)) = decode_to_broker(&frames) {
        let encoded = encode_to_broker(dialect, &msg).expect("a decoded message encodes");
        assert_eq!(decode_to_broker(&encoded).expect("re-decodes"), (dialect, msg));
    }
    if let Ok((dialect, msg)) = decode_from_broker(&frames) {
        let encoded = encode_from_broker(dialect, &msg).expect("a decoded message encodes");
        assert_eq!(decode_from_broker(&encoded).expect("re-decodes"), (dialect, msg));
    }
});
