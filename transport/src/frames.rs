//! Receiving and sending whole multipart messages as `zmq::Message` frames.
//!
//! Frames are received into `zmq::Message`s, not `recv_multipart`'s `Vec<u8>`s,
//! for two reasons: no copy, and each message keeps its properties
//! (`User-Id` under CURVE) for authorisation.

/// What one receive produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// `frames` holds one whole message.
    Message,
    /// Nothing was waiting (only with `zmq::DONTWAIT`).
    WouldBlock,
    /// The message had more than `max_frames` frames; it was read and dropped.
    TooManyFrames,
}

/// Receives one whole message into `frames` (cleared first). A message with
/// more than `max_frames` frames is consumed and dropped, so a peer cannot
/// make us buffer an unbounded number of frames.
pub fn recv_frames(
    socket: &zmq::Socket,
    frames: &mut Vec<zmq::Message>,
    max_frames: usize,
    flags: i32,
) -> zmq::Result<Received> {
    frames.clear();
    let mut frame = zmq::Message::new();
    match socket.recv(&mut frame, flags) {
        Ok(()) => {}
        Err(zmq::Error::EAGAIN) => return Ok(Received::WouldBlock),
        Err(e) => return Err(e),
    }
    let mut overflow = false;
    loop {
        let more = frame.get_more();
        if frames.len() < max_frames {
            frames.push(frame);
        } else {
            overflow = true;
        }
        if !more {
            break;
        }
        // The rest of a multipart message is already here: libzmq delivers it atomically.
        frame = zmq::Message::new();
        socket.recv(&mut frame, 0)?;
    }
    if overflow {
        frames.clear();
        return Ok(Received::TooManyFrames);
    }
    Ok(Received::Message)
}

/// Sends `head` frames (copied; small frames live inside libzmq's message
/// struct, so no allocation) and then `body` frames (moved, no copy) as one
/// message.
pub fn send_frames<B>(socket: &zmq::Socket, head: &[&[u8]], body: B, flags: i32) -> zmq::Result<()>
where
    B: IntoIterator,
    B::Item: zmq::Sendable,
{
    let mut body = body.into_iter().peekable();
    let last_head = head.len().wrapping_sub(1);
    for (i, frame) in head.iter().enumerate() {
        let more = i != last_head || body.peek().is_some();
        socket.send(*frame, flags | if more { zmq::SNDMORE } else { 0 })?;
    }
    while let Some(frame) = body.next() {
        let more = body.peek().is_some();
        socket.send(frame, flags | if more { zmq::SNDMORE } else { 0 })?;
    }
    Ok(())
}

/// Frames as text for people: UTF-8 when printable, hex otherwise.
pub fn display_frame(frame: &[u8]) -> String {
    match std::str::from_utf8(frame) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => s.to_string(),
        _ => {
            let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(ctx: &zmq::Context, name: &str) -> (zmq::Socket, zmq::Socket) {
        let a = ctx.socket(zmq::PAIR).unwrap();
        let b = ctx.socket(zmq::PAIR).unwrap();
        a.bind(&format!("inproc://{name}")).unwrap();
        b.connect(&format!("inproc://{name}")).unwrap();
        (a, b)
    }

    #[test]
    fn whole_messages_round_trip_and_keep_order() {
        let ctx = zmq::Context::new();
        let (a, b) = pair(&ctx, "frames-roundtrip");
        send_frames(&a, &[b"h1", b""], vec![zmq::Message::from("body")], 0).unwrap();
        send_frames(&a, &[b"only"], Vec::<zmq::Message>::new(), 0).unwrap();
        let mut frames = Vec::new();
        assert_eq!(recv_frames(&b, &mut frames, 8, 0).unwrap(), Received::Message);
        let got: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        assert_eq!(got, vec![&b"h1"[..], b"", b"body"]);
        assert_eq!(recv_frames(&b, &mut frames, 8, 0).unwrap(), Received::Message);
        assert_eq!(frames.len(), 1);
        assert_eq!(recv_frames(&b, &mut frames, 8, zmq::DONTWAIT).unwrap(), Received::WouldBlock);
    }

    #[test]
    fn too_many_frames_are_consumed_and_dropped() {
        let ctx = zmq::Context::new();
        let (a, b) = pair(&ctx, "frames-overflow");
        let body: Vec<zmq::Message> = (0..10).map(|i| zmq::Message::from(&[i as u8][..])).collect();
        send_frames(&a, &[b"h"], body, 0).unwrap();
        send_frames(&a, &[b"next"], Vec::<zmq::Message>::new(), 0).unwrap();
        let mut frames = Vec::new();
        assert_eq!(recv_frames(&b, &mut frames, 4, 0).unwrap(), Received::TooManyFrames);
        assert!(frames.is_empty());
        // The next message is intact: the oversized one was fully consumed.
        assert_eq!(recv_frames(&b, &mut frames, 4, 0).unwrap(), Received::Message);
        assert_eq!(&frames[0][..], b"next");
    }

    #[test]
    fn frames_display_as_text_or_hex() {
        assert_eq!(display_frame(b"hello"), "hello");
        assert_eq!(display_frame(b"\x00\xff"), "0x00ff");
        assert_eq!(display_frame(b"\x01"), "0x01");
    }
}
