//! Majordomo Management Interface (RFC 8): services named `mmi.*` are answered
//! by the broker itself.

use crate::Frame;
/// Prefix reserved for the broker's own services. Workers may not register it.
pub const PREFIX: &[u8] = b"mmi.";

pub const SERVICE: &[u8] = b"mmi.service";
pub const SERVICES: &[u8] = b"mmi.services";
pub const WORKERS: &[u8] = b"mmi.workers";
pub const METRICS: &[u8] = b"mmi.metrics";

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
}
