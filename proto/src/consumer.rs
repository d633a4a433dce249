//! Durable consumers (`org.plantd.Consumer`): a named cursor on the hub's
//! journal of durable samples, read in batches and moved only by the
//! consumer's acknowledgement. Any MDP client can speak it.
//!
//! A request is two frames: a command word and a JSON object of arguments
//! (`list` takes none; an empty second frame or none at all is `{}`). A
//! reply's first frame is a JSON object: `{"error": "..."}`, or the
//! command's answer. `fetch` adds a second frame: its samples, one JSON
//! object per line (one frame, so a large batch stays within a broker's
//! bound on frames; the hub also keeps it within its largest message).
//!
//! | command | arguments | answer |
//! | --- | --- | --- |
//! | `fetch` | `name`, `after` (position, 0: the consumer's cursor), `max` (samples), `wait_ms`, `ack` (optional: acknowledge up to here first) | `{"name", "count", "next", "backlog"}`, then a frame of `count` lines `{"pos", "topic", "sample"}` |
//! | `ack` | `name`, `pos` | `{"name", "cursor"}`: every sample up to `pos` is done with |
//! | `create` | `name`, `prefixes` (topic prefixes, none: all), `policy` (`block`/`drop-oldest`), `max_records`, `max_bytes` | the consumer, as `show` |
//! | `show` | `name` | `{"name", "prefixes", "policy", "cursor", "backlog", "bounds", ...}` |
//! | `list` | | `{"consumers": [show, ...]}` |
//! | `delete` | `name` | `{"name", "deleted": true}` |
//! | `reset` | `name`, `to` (`start`/`end`) | the consumer, as `show` |
//!
//! Delivery is at least once, in per-agent order. `next` covers every
//! sample the fetch looked at (those of other topics too): acknowledging
//! `next` after handling the batch moves the cursor past all of it. A sample
//! comes again only if it was not acknowledged (a consumer that crashed):
//! every sample carries (agent, epoch, seq), so a consumer can drop repeats.

use serde::{Deserialize, Serialize};

/// The service name: consume, and manage one's own consumers.
pub const SERVICE: &str = "org.plantd.Consumer";

/// Managing any consumer, and consumers that may hold the journal back
/// (`block`): granted to `operator` (or a role that calls it).
pub const ADMIN_SERVICE: &str = "org.plantd.Consumer.Admin";

/// Longest a fetch may wait for its first sample.
pub const MAX_WAIT_MS: u64 = 30_000;

/// What a consumer does when its backlog reaches its bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// The journal holds: ingest answers Retry and agents keep buffering.
    #[default]
    Block,
    /// The consumer's cursor skips ahead over its oldest samples (counted).
    DropOldest,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Block => "block",
            Policy::DropOldest => "drop-oldest",
        }
    }
}

/// Where `reset` moves a cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResetTo {
    /// The oldest sample the journal still holds.
    Start,
    /// Past the newest: only what comes next.
    End,
}

/// A consumer as `create` makes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    #[serde(default)]
    pub prefixes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_records: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// One request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `ack`: acknowledge up to this position first (saves a round trip).
    Fetch {
        name: String,
        after: u64,
        max: u32,
        wait_ms: u64,
        ack: Option<u64>,
    },
    Ack {
        name: String,
        pos: u64,
    },
    Create(Spec),
    Show {
        name: String,
    },
    List,
    Delete {
        name: String,
    },
    Reset {
        name: String,
        to: ResetTo,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error(
        "no command: send a command frame (fetch, ack, create, show, list, delete, reset) and a JSON object"
    )]
    Empty,
    #[error("unknown command '{0}': use fetch, ack, create, show, list, delete or reset")]
    Unknown(String),
    #[error("{command}: {problem}")]
    Arguments { command: &'static str, problem: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchArgs {
    name: String,
    #[serde(default)]
    after: u64,
    #[serde(default = "default_max")]
    max: u32,
    #[serde(default)]
    wait_ms: u64,
    #[serde(default)]
    ack: Option<u64>,
}

fn default_max() -> u32 {
    100
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckArgs {
    name: String,
    pos: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameArgs {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetArgs {
    name: String,
    to: ResetTo,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

impl Request {
    /// Parses a request's frames (after the service): the command word, then
    /// its JSON arguments.
    pub fn parse<F: crate::Frame>(frames: &[F]) -> Result<Request, RequestError> {
        let command = frames.first().ok_or(RequestError::Empty)?.bytes();
        let args = frames.get(1).map(|f| f.bytes()).filter(|a| !a.is_empty()).unwrap_or(b"{}");
        fn args_of<'a, T: Deserialize<'a>>(command: &'static str, args: &'a [u8]) -> Result<T, RequestError> {
            serde_json::from_slice(args)
                .map_err(|e| RequestError::Arguments { command, problem: e.to_string() })
        }
        Ok(match command {
            b"fetch" => {
                let a: FetchArgs = args_of("fetch", args)?;
                Request::Fetch {
                    name: a.name,
                    after: a.after,
                    max: a.max,
                    wait_ms: a.wait_ms.min(MAX_WAIT_MS),
                    ack: a.ack,
                }
            }
            b"ack" => {
                let a: AckArgs = args_of("ack", args)?;
                Request::Ack { name: a.name, pos: a.pos }
            }
            b"create" => Request::Create(args_of("create", args)?),
            b"show" => Request::Show { name: args_of::<NameArgs>("show", args)?.name },
            b"list" => {
                args_of::<NoArgs>("list", args)?;
                Request::List
            }
            b"delete" => Request::Delete { name: args_of::<NameArgs>("delete", args)?.name },
            b"reset" => {
                let a: ResetArgs = args_of("reset", args)?;
                Request::Reset { name: a.name, to: a.to }
            }
            other => return Err(RequestError::Unknown(String::from_utf8_lossy(other).into_owned())),
        })
    }

    /// The request's frames (after the service).
    pub fn encode(&self) -> [Vec<u8>; 2] {
        let (command, args) = match self {
            Request::Fetch { name, after, max, wait_ms, ack } => {
                let mut args =
                    serde_json::json!({"name": name, "after": after, "max": max, "wait_ms": wait_ms});
                if let Some(pos) = ack {
                    args["ack"] = (*pos).into();
                }
                ("fetch", args)
            }
            Request::Ack { name, pos } => ("ack", serde_json::json!({"name": name, "pos": pos})),
            Request::Create(spec) => ("create", serde_json::to_value(spec).expect("a spec is JSON")),
            Request::Show { name } => ("show", serde_json::json!({"name": name})),
            Request::List => ("list", serde_json::json!({})),
            Request::Delete { name } => ("delete", serde_json::json!({"name": name})),
            Request::Reset { name, to } => ("reset", serde_json::json!({"name": name, "to": to})),
        };
        [command.as_bytes().to_vec(), args.to_string().into_bytes()]
    }

    /// The consumer the request is about (`None` for `list`).
    pub fn name(&self) -> Option<&str> {
        match self {
            Request::Fetch { name, .. }
            | Request::Ack { name, .. }
            | Request::Show { name }
            | Request::Delete { name }
            | Request::Reset { name, .. } => Some(name),
            Request::Create(spec) => Some(&spec.name),
            Request::List => None,
        }
    }
}

/// The first frame of a `fetch` answer (the samples follow, one per line, in the second).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    pub name: String,
    /// Sample frames that follow.
    pub count: u32,
    /// Acknowledge this once they are handled; fetch after it next.
    pub next: u64,
    /// Samples still waiting after these.
    pub backlog: u64,
}

/// One sample of a `fetch` answer (a line, without its newline): its
/// position, topic, and the JSON the hub published on the bus for it, unchanged.
pub fn encode_sample(pos: u64, topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(payload.len() + topic.len() + 40);
    write_sample(&mut line, pos, topic, payload);
    line
}

/// [`encode_sample`], appended to `out`.
pub fn write_sample(out: &mut Vec<u8>, pos: u64, topic: &str, payload: &[u8]) {
    out.extend_from_slice(b"{\"pos\":");
    out.extend_from_slice(pos.to_string().as_bytes());
    out.extend_from_slice(b",\"topic\":");
    // Topics are plain names: quoted as they are unless they need escapes.
    if topic.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(topic.as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(serde_json::Value::from(topic).to_string().as_bytes());
    }
    out.extend_from_slice(b",\"sample\":");
    // Ingest's payloads are JSON objects it wrote itself, and are passed on
    // as they are (not parsed again: this is the drain's hot path); anything
    // else goes as a string, so the line stays JSON.
    let object = payload.first() == Some(&b'{') && payload.last() == Some(&b'}');
    if object && !payload.contains(&b'\n') {
        out.extend_from_slice(payload);
    } else {
        let text = serde_json::Value::from(String::from_utf8_lossy(payload));
        out.extend_from_slice(text.to_string().as_bytes());
    }
    out.push(b'}');
}

/// A sample line of a `fetch` answer, read back.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Sample {
    pub pos: u64,
    pub topic: String,
    pub sample: serde_json::Value,
}

impl Sample {
    pub fn parse(line: &[u8]) -> Result<Sample, serde_json::Error> {
        serde_json::from_slice(line)
    }

    /// Every sample of a `fetch` answer's second frame.
    pub fn parse_all(frame: &[u8]) -> Result<Vec<Sample>, serde_json::Error> {
        frame.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(Sample::parse).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(command: &str, args: &str) -> Vec<Vec<u8>> {
        vec![command.as_bytes().to_vec(), args.as_bytes().to_vec()]
    }

    /// The wire form of each command, byte for byte, both ways.
    #[test]
    fn vectors() {
        let cases = [
            (
                Request::Fetch { name: "historian".into(), after: 0, max: 500, wait_ms: 1000, ack: None },
                r#"{"after":0,"max":500,"name":"historian","wait_ms":1000}"#,
            ),
            (
                Request::Fetch { name: "h".into(), after: 77, max: 500, wait_ms: 0, ack: Some(77) },
                r#"{"ack":77,"after":77,"max":500,"name":"h","wait_ms":0}"#,
            ),
            (Request::Ack { name: "historian".into(), pos: 1234 }, r#"{"name":"historian","pos":1234}"#),
            (Request::Show { name: "h".into() }, r#"{"name":"h"}"#),
            (Request::List, "{}"),
            (Request::Delete { name: "h".into() }, r#"{"name":"h"}"#),
            (Request::Reset { name: "h".into(), to: ResetTo::End }, r#"{"name":"h","to":"end"}"#),
            (
                Request::Create(Spec {
                    name: "h".into(),
                    prefixes: vec!["org.plantd.Metric.pump-1.".into()],
                    policy: Some(Policy::DropOldest),
                    max_records: Some(1000),
                    max_bytes: None,
                }),
                r#"{"max_records":1000,"name":"h","policy":"drop-oldest","prefixes":["org.plantd.Metric.pump-1."]}"#,
            ),
        ];
        for (request, args) in cases {
            let encoded = request.encode();
            assert_eq!(String::from_utf8(encoded[1].clone()).unwrap(), args);
            assert_eq!(Request::parse(&encoded), Ok(request));
        }
    }

    #[test]
    fn defaults_bounds_and_errors() {
        assert_eq!(
            Request::parse(&frames("fetch", r#"{"name":"h","wait_ms":99999999}"#)),
            Ok(Request::Fetch { name: "h".into(), after: 0, max: 100, wait_ms: MAX_WAIT_MS, ack: None })
        );
        assert_eq!(Request::parse(&[b"list".to_vec()]), Ok(Request::List), "no arguments frame");
        assert_eq!(Request::parse::<Vec<u8>>(&[]), Err(RequestError::Empty));
        assert_eq!(Request::parse(&frames("dance", "{}")), Err(RequestError::Unknown("dance".into())));
        let bad = Request::parse(&frames("ack", r#"{"name":"h"}"#)).unwrap_err();
        assert!(bad.to_string().starts_with("ack: missing field `pos`"), "{bad}");
        assert!(Request::parse(&frames("show", r#"{"name":"h","extra":1}"#)).is_err(), "unknown fields");
    }

    #[test]
    fn samples_carry_the_payload_unchanged() {
        let payload = br#"{"agent":"pump-1","epoch":7,"seq":3,"value":1.5}"#;
        let frame = encode_sample(42, "org.plantd.Metric.pump-1.t", payload);
        assert_eq!(
            String::from_utf8(frame.clone()).unwrap(),
            r#"{"pos":42,"topic":"org.plantd.Metric.pump-1.t","sample":{"agent":"pump-1","epoch":7,"seq":3,"value":1.5}}"#
        );
        let sample = Sample::parse(&frame).unwrap();
        assert_eq!((sample.pos, sample.sample["seq"].as_u64()), (42, Some(3)));
        let odd = Sample::parse(&encode_sample(1, "t\"", b"not json")).unwrap();
        assert_eq!((odd.topic.as_str(), odd.sample.as_str()), ("t\"", Some("not json")));
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(command in "[a-z]{0,8}", args in ".{0,80}") {
            if let Ok(request) = Request::parse(&frames(&command, &args)) {
                prop_assert_eq!(Request::parse(&request.encode()), Ok(request));
            }
        }
    }
}
