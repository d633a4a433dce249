//! Majordomo Management Interface (RFC 8): services named `mmi.*` are answered
//! by the broker itself.

use crate::Frame;
/// Prefix reserved for the broker's own services. Workers may not register it.
pub const PREFIX: &[u8] = b"mmi.";

pub const SERVICE: &[u8] = b"mmi.service";
pub const SERVICES: &[u8] = b"mmi.services";
pub const WORKERS: &[u8] = b"mmi.workers";
pub const METRICS: &[u8] = b"mmi.metrics";
/// This hub's extension: why the broker last refused the caller's READY
/// for a service (MDP has no way to say it to the worker).
pub const REFUSAL: &[u8] = b"mmi.refusal";

/// True for service names the broker answers itself.
pub fn is_mmi(service: &[u8]) -> bool {
    service.starts_with(PREFIX)
}

/// An MMI request, parsed from the service name and the request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// Is at least one worker registered for this service? Answered with 200 or 404.
    Service { name: &'a [u8] },
    /// JSON list of services that have workers.
    Services,
    /// JSON object: per service, workers, idle workers and queued requests.
    Workers,
    /// JSON object of the broker's counters.
    Metrics,
    /// Why the broker last refused the caller's READY for this service:
    /// answered with a [`ReadyRefusal`] word, or `none`.
    Refusal { name: &'a [u8] },
    /// Any other `mmi.*` name: answered with 501.
    Unknown,
}

impl<'a> Request<'a> {
    /// Parses a request to an `mmi.*` service; `None` if `service` is not one.
    pub fn parse<F: Frame>(service: &[u8], body: &'a [F]) -> Option<Self> {
        if !is_mmi(service) {
            return None;
        }
        Some(match service {
            SERVICE => Request::Service { name: body.first().map_or(&[][..], |f| f.bytes()) },
            SERVICES => Request::Services,
            WORKERS => Request::Workers,
            METRICS => Request::Metrics,
            REFUSAL => Request::Refusal { name: body.first().map_or(&[][..], |f| f.bytes()) },
            _ => Request::Unknown,
        })
    }
}

/// The status codes RFC 8 defines, and the two a hub with security answers a
/// refused request with, in the same style.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    NotFound,
    NotImplemented,
    /// The caller's identity may not make this request.
    Forbidden,
    /// The caller is over its request rate or in-flight limit: try later.
    TooManyRequests,
}

impl Status {
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Status::Ok => b"200",
            Status::NotFound => b"404",
            Status::NotImplemented => b"501",
            Status::Forbidden => b"403",
            Status::TooManyRequests => b"429",
        }
    }

    pub fn parse(frame: &[u8]) -> Option<Self> {
        match frame {
            b"200" => Some(Status::Ok),
            b"404" => Some(Status::NotFound),
            b"501" => Some(Status::NotImplemented),
            b"403" => Some(Status::Forbidden),
            b"429" => Some(Status::TooManyRequests),
            _ => None,
        }
    }
}

/// Why a broker refused a worker's READY (it answers DISCONNECT whatever
/// the reason; `mmi.refusal` tells the reason to whoever asks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadyRefusal {
    /// Another live worker serves it, and only one may (an agent's service).
    Duplicate,
    /// The caller's identity may not provide it.
    Forbidden,
    /// The broker's own name (`mmi.*`) or one of the hub's own services.
    Reserved,
    /// The broker has as many workers as it may.
    WorkersFull,
    /// The broker has as many services with workers as it may.
    ServicesFull,
}

impl ReadyRefusal {
    pub const ALL: [ReadyRefusal; 5] = [
        ReadyRefusal::Duplicate,
        ReadyRefusal::Forbidden,
        ReadyRefusal::Reserved,
        ReadyRefusal::WorkersFull,
        ReadyRefusal::ServicesFull,
    ];

    /// The word `mmi.refusal` answers with.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadyRefusal::Duplicate => "duplicate",
            ReadyRefusal::Forbidden => "forbidden",
            ReadyRefusal::Reserved => "reserved",
            ReadyRefusal::WorkersFull => "workers-full",
            ReadyRefusal::ServicesFull => "services-full",
        }
    }

    /// The reason in an `mmi.refusal` answer; `None` for `none` (or a word
    /// this version does not know).
    pub fn parse(word: &[u8]) -> Option<ReadyRefusal> {
        ReadyRefusal::ALL.into_iter().find(|r| r.as_str().as_bytes() == word)
    }
}

/// What `mmi.refusal` answers when the broker refused no READY of the
/// caller's for that service.
pub const NO_REFUSAL: &str = "none";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_and_unknown_names() {
        let body = [b"echo".to_vec()];
        assert_eq!(Request::parse(b"mmi.service", &body), Some(Request::Service { name: b"echo" }));
        let empty: [Vec<u8>; 0] = [];
        assert_eq!(Request::parse(b"mmi.service", &empty), Some(Request::Service { name: b"" }));
        assert_eq!(Request::parse(b"mmi.services", &empty), Some(Request::Services));
        assert_eq!(Request::parse(b"mmi.workers", &empty), Some(Request::Workers));
        assert_eq!(Request::parse(b"mmi.metrics", &empty), Some(Request::Metrics));
        assert_eq!(Request::parse(b"mmi.refusal", &body), Some(Request::Refusal { name: b"echo" }));
        assert_eq!(Request::parse(b"mmi.status", &empty), Some(Request::Unknown));
        assert_eq!(Request::parse(b"echo", &empty), None);
    }

    #[test]
    fn status_round_trips() {
        for s in [Status::Ok, Status::NotFound, Status::NotImplemented] {
            assert_eq!(Status::parse(s.as_bytes()), Some(s));
        }
        assert_eq!(Status::parse(b"500"), None);
    }

    #[test]
    fn refusal_words_round_trip() {
        for r in ReadyRefusal::ALL {
            assert_eq!(ReadyRefusal::parse(r.as_str().as_bytes()), Some(r));
        }
        assert_eq!(ReadyRefusal::parse(NO_REFUSAL.as_bytes()), None);
    }
}
