//! Fuzzes the durable-consumer request parser with arbitrary frames: it must
//! never panic, and whatever parses must encode back to the same request:
//! `cargo fuzz run consumer_parse`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::consumer::{Request, Sample};

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
    if let Ok(request) = Request::parse(&frames) {
        assert_eq!(Request::parse(&request.encode()).as_ref(), Ok(&request));
    }
    if let Some(frame) = frames.first() {
        let _ = Sample::parse(frame);
    }
});
