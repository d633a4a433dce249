//! Pipelines (source → stage … → sink): the wire between two hops and the
//! sender's credit and acknowledgement bookkeeping.
//!
//! Each hop has a sender (it holds messages) and receivers (they grant credit
//! and acknowledge). The sender binds a ROUTER, receivers connect DEALERs: like
//! PUSH/PULL, messages fan out to whichever receiver can take one, but a
//! receiver takes only as many as it granted credit for (its high-water mark),
//! and the sender keeps every message until it is acknowledged. A receiver
//! that stops talking (killed, partitioned) is forgotten after a timeout and
//! what it held is sent again to the others: at-least-once.
//!
//! Frames (after the ROUTER's routing id):
//!
//! | kind | header frame | more frames |
//! | --- | --- | --- |
//! | data (S→R) | `D` id:u64 skip:u8 | the body |
//! | credit (R→S) | `C` n:u32 | |
//! | ack (R→S) | `A` id:u64 … (one or more) | |
//! | ping (R→S) | `P` | |
//! | reset (S→R) | `R` | |
//!
//! `skip` is how many stages pass the message on untouched: a dead letter
//! replayed from the source re-enters at the stage that gave up on it.
//! An ack gives one credit back. Reset says "I do not know you": a sender that
//! restarted asks its receivers to grant their window again.

pub mod rotation;
pub mod transform;

use std::collections::HashMap;

/// Largest number of ids one ack frame carries (a bound on what a peer can make us parse).
pub const MAX_ACKS_PER_FRAME: usize = 1024;

/// One message between hops, borrowed from the received frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire<'a> {
    Data {
        id: u64,
        skip: u8,
        body: &'a [u8],
    },
    Credit(u32),
    /// Ids, 8 bytes each, big-endian; iterate with [`acked_ids`].
    Ack(&'a [u8]),
    Ping,
    Reset,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("a pipeline message needs a header frame")]
    Empty,
    #[error("unknown pipeline message kind {0:#04x}")]
    Kind(u8),
    #[error("a pipeline {0} message is malformed")]
    Malformed(&'static str),
}

impl<'a> Wire<'a> {
    /// Parses `frames` (without the routing id). Never panics on bad input.
    pub fn decode<F: crate::Frame>(frames: &'a [F]) -> Result<Wire<'a>, WireError> {
        let head = frames.first().map(|f| f.bytes()).ok_or(WireError::Empty)?;
        let (&kind, rest) = head.split_first().ok_or(WireError::Empty)?;
        match kind {
            b'D' => {
                let (id, skip) = match (rest.get(..8), rest.get(8), frames.len()) {
                    (Some(id), Some(&skip), 2) if rest.len() == 9 => (u64_of(id), skip),
                    _ => return Err(WireError::Malformed("data")),
                };
                Ok(Wire::Data { id, skip, body: frames[1].bytes() })
            }
            b'C' if rest.len() == 4 && frames.len() == 1 => {
                Ok(Wire::Credit(u32::from_be_bytes(rest.try_into().expect("4 bytes"))))
            }
            b'A' if !rest.is_empty()
                && rest.len() % 8 == 0
                && rest.len() / 8 <= MAX_ACKS_PER_FRAME
                && frames.len() == 1 =>
            {
                Ok(Wire::Ack(rest))
            }
            b'P' if rest.is_empty() => Ok(Wire::Ping),
            b'R' if rest.is_empty() => Ok(Wire::Reset),
            b'C' => Err(WireError::Malformed("credit")),
            b'A' => Err(WireError::Malformed("ack")),
            b'P' | b'R' => Err(WireError::Malformed("ping/reset")),
            other => Err(WireError::Kind(other)),
        }
    }
}

fn u64_of(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().expect("8 bytes"))
}

/// The header frame of a data message (the body goes in its own frame, unchanged).
pub fn data_header(id: u64, skip: u8) -> [u8; 10] {
    let mut head = [0u8; 10];
    head[0] = b'D';
    head[1..9].copy_from_slice(&id.to_be_bytes());
    head[9] = skip;
    head
}

pub fn credit_frame(n: u32) -> [u8; 5] {
    let mut frame = [b'C', 0, 0, 0, 0];
    frame[1..].copy_from_slice(&n.to_be_bytes());
    frame
}

pub const PING: &[u8] = b"P";
pub const RESET: &[u8] = b"R";

/// Appends `id` to an ack frame being built in `frame` (start it with [`ack_start`]).
pub fn ack_push(frame: &mut Vec<u8>, id: u64) {
    frame.extend_from_slice(&id.to_be_bytes());
}

/// Clears `frame` and starts an ack in it (reused, so acks allocate nothing).
pub fn ack_start(frame: &mut Vec<u8>) {
    frame.clear();
    frame.push(b'A');
}

/// How many ids the ack frame being built holds.
pub fn ack_len(frame: &[u8]) -> usize {
    frame.len().saturating_sub(1) / 8
}

/// The ids of a decoded [`Wire::Ack`].
pub fn acked_ids(ids: &[u8]) -> impl Iterator<Item = u64> + '_ {
    ids.chunks_exact(8).map(u64_of)
}

/// A receiver as the sender sees it.
#[derive(Debug)]
struct Peer<K> {
    key: K,
    credit: u32,
    held: u32,
    last_heard_ms: u64,
}

/// What happened when a peer spoke.
#[derive(Debug, PartialEq, Eq)]
pub enum Heard {
    Known,
    /// First time: it may now be granted credit.
    New,
    /// Unknown, and `max_peers` are known already: ignored (and told to reset later).
    Refused,
}

/// The sender's side of a hop: which receiver has credit, which message
/// each holds, which receivers went silent. Time is milliseconds on any
/// monotonic clock the caller chooses.
#[derive(Debug)]
pub struct Dispatcher<K> {
    peers: Vec<Peer<K>>,
    /// Message id → the receiver holding it.
    held: HashMap<u64, K>,
    next: usize,
    window: u32,
    max_peers: usize,
}

impl<K: Clone + Eq + std::fmt::Debug> Dispatcher<K> {
    /// `window`: credit one receiver may hold at most, whatever it asks for.
    pub fn new(window: u32, max_peers: usize) -> Self {
        Dispatcher { peers: Vec::new(), held: HashMap::new(), next: 0, window: window.max(1), max_peers }
    }

    fn find(&self, key: &K) -> Option<usize> {
        self.peers.iter().position(|p| &p.key == key)
    }

    /// `key` spoke (any message) at `now_ms`.
    pub fn heard(&mut self, key: &K, now_ms: u64) -> Heard {
        if let Some(i) = self.find(key) {
            self.peers[i].last_heard_ms = now_ms;
            return Heard::Known;
        }
        if self.peers.len() >= self.max_peers {
            return Heard::Refused;
        }
        self.peers.push(Peer { key: key.clone(), credit: 0, held: 0, last_heard_ms: now_ms });
        Heard::New
    }

    /// `key` grants `n` more (capped so it never holds more than the window).
    pub fn credit(&mut self, key: &K, n: u32) {
        let window = self.window;
        if let Some(i) = self.find(key) {
            let p = &mut self.peers[i];
            p.credit = p.credit.saturating_add(n).min(window.saturating_sub(p.held));
        }
    }

    /// The next receiver with credit, round robin; `None` when all are full.
    pub fn next_peer(&mut self) -> Option<K> {
        let n = self.peers.len();
        for step in 0..n {
            let i = (self.next + step) % n;
            if self.peers[i].credit > 0 {
                self.next = (i + 1) % n;
                return Some(self.peers[i].key.clone());
            }
        }
        None
    }

    /// Message `id` went to `key`: one credit used, held until acknowledged.
    pub fn sent(&mut self, key: &K, id: u64) {
        if let Some(i) = self.find(key) {
            let p = &mut self.peers[i];
            p.credit = p.credit.saturating_sub(1);
            p.held += 1;
            self.held.insert(id, key.clone());
        }
    }

    /// `key` acknowledged `id`: true if it held it (its credit comes back).
    /// An ack from anyone else (a receiver already given up on) is ignored.
    pub fn acked(&mut self, key: &K, id: u64) -> bool {
        if self.held.get(&id) != Some(key) {
            return false;
        }
        self.held.remove(&id);
        if let Some(i) = self.find(key) {
            let p = &mut self.peers[i];
            p.held = p.held.saturating_sub(1);
            p.credit = (p.credit + 1).min(self.window.saturating_sub(p.held));
        }
        true
    }

    /// Forgets receivers silent for longer than `timeout_ms`; returns the ids
    /// they held, to send again.
    pub fn expire(&mut self, now_ms: u64, timeout_ms: u64) -> Vec<u64> {
        let silent: Vec<K> = self
            .peers
            .iter()
            .filter(|p| now_ms.saturating_sub(p.last_heard_ms) > timeout_ms)
            .map(|p| p.key.clone())
            .collect();
        self.forget(&silent)
    }

    /// Forgets `gone` receivers (their connection is known to be closed);
    /// returns the ids they held, to send again.
    pub fn forget(&mut self, gone: &[K]) -> Vec<u64> {
        let silent = gone;
        if silent.is_empty() {
            return Vec::new();
        }
        self.peers.retain(|p| !silent.contains(&p.key));
        self.next = 0;
        let mut again: Vec<u64> =
            self.held.iter().filter(|(_, k)| silent.contains(k)).map(|(&id, _)| id).collect();
        again.sort_unstable();
        for id in &again {
            self.held.remove(id);
        }
        again
    }

    /// Whether some receiver has credit (a send would go out now).
    pub fn has_credit(&self) -> bool {
        self.peers.iter().any(|p| p.credit > 0)
    }

    /// Whether `key` is a receiver this sender knows.
    pub fn knows(&self, key: &K) -> bool {
        self.find(key).is_some()
    }

    /// Messages out with receivers, not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.held.len()
    }

    /// Receivers known.
    pub fn peers(&self) -> usize {
        self.peers.len()
    }

    /// Whether message `id` is out with some receiver.
    pub fn holds(&self, id: u64) -> bool {
        self.held.contains_key(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_round_trip() {
        let head = data_header(42, 1);
        let frames = [head.to_vec(), b"body".to_vec()];
        assert_eq!(Wire::decode(&frames), Ok(Wire::Data { id: 42, skip: 1, body: b"body" }));
        assert_eq!(Wire::decode(&[credit_frame(7).to_vec()]), Ok(Wire::Credit(7)));
        let mut ack = Vec::new();
        ack_start(&mut ack);
        ack_push(&mut ack, 1);
        ack_push(&mut ack, u64::MAX);
        assert_eq!(ack_len(&ack), 2);
        let frames = [ack];
        let Ok(Wire::Ack(ids)) = Wire::decode(&frames) else { panic!("not an ack") };
        assert_eq!(acked_ids(ids).collect::<Vec<_>>(), [1, u64::MAX]);
        assert_eq!(Wire::decode(&[PING]), Ok(Wire::Ping));
        assert_eq!(Wire::decode(&[RESET]), Ok(Wire::Reset));
    }

    #[test]
    fn bad_frames_are_errors() {
        let empty: [&[u8]; 0] = [];
        assert_eq!(Wire::decode(&empty), Err(WireError::Empty));
        assert_eq!(Wire::decode(&[&b""[..]]), Err(WireError::Empty));
        assert_eq!(Wire::decode(&[&b"D123"[..], b"x"]), Err(WireError::Malformed("data")));
        assert_eq!(Wire::decode(&[&data_header(1, 0)[..]]), Err(WireError::Malformed("data")));
        assert_eq!(Wire::decode(&[&b"A1234567"[..]]), Err(WireError::Malformed("ack")));
        assert_eq!(Wire::decode(&[&b"Z"[..]]), Err(WireError::Kind(b'Z')));
    }

    proptest! {
        #[test]
        fn decoding_anything_never_panics(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..4)) {
            let _ = Wire::decode(&frames);
        }

        /// Whatever the order of sends, acks and silences, a receiver never
        /// holds more than the window, and every message is either held by
        /// one receiver or handed back exactly once.
        #[test]
        fn credit_is_bounded_and_nothing_is_lost(ops in proptest::collection::vec((0u8..4, 0u8..3), 1..200)) {
            let mut d: Dispatcher<u8> = Dispatcher::new(3, 8);
            let (mut next_id, mut now) = (0u64, 0u64);
            let mut out: Vec<(u8, u64)> = Vec::new();
            let mut returned = Vec::new();
            for (op, peer) in ops {
                now += 10;
                match op {
                    0 => { d.heard(&peer, now); d.credit(&peer, 5); }
                    1 => if let Some(p) = d.next_peer() { d.sent(&p, next_id); out.push((p, next_id)); next_id += 1; },
                    2 => if let Some(pos) = out.iter().position(|(p, _)| *p == peer) {
                        let (p, id) = out.remove(pos);
                        d.heard(&p, now);
                        d.acked(&p, id);
                    },
                    _ => {
                        let again = d.expire(now, 15);
                        out.retain(|(_, id)| !again.contains(id));
                        returned.extend(again);
                    }
                }
                for p in &d.peers { prop_assert!(p.credit + p.held <= 3); }
                prop_assert_eq!(d.in_flight(), out.len());
            }
            let acked_or_held = out.len() + returned.len();
            prop_assert!(acked_or_held as u64 <= next_id);
        }
    }

    #[test]
    fn a_silent_receiver_gives_its_messages_back() {
        let mut d: Dispatcher<&str> = Dispatcher::new(2, 4);
        assert_eq!(d.heard(&"a", 0), Heard::New);
        d.credit(&"a", 10);
        d.heard(&"b", 0);
        d.credit(&"b", 2);
        let mut sent = Vec::new();
        for id in 0..4 {
            let p = d.next_peer().unwrap();
            d.sent(&p, id);
            sent.push(p);
        }
        assert_eq!(sent, ["a", "b", "a", "b"], "fanned out, capped at the window");
        assert_eq!(d.next_peer(), None, "both full: the sender waits");
        d.heard(&"b", 100);
        assert!(d.acked(&"b", 1));
        assert!(!d.acked(&"a", 3), "only the holder's ack counts");
        assert_eq!(d.expire(100, 50), vec![0, 2], "a went silent: its messages come back");
        assert_eq!(d.next_peer(), Some("b"));
        assert_eq!(d.peers(), 1);
    }
}
