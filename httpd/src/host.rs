//! Which `Host` a request may name. A browser sends the name it resolved, so
//! a page on `evil.example` whose name the attacker re-points at 127.0.0.1
//! (DNS rebinding) reaches a loopback server with `Host: evil.example`:
//! refusing names the server does not go by keeps such a page from reading
//! anything. An IP literal cannot be re-pointed, so the address a connection
//! arrived on (whatever the listen address: 0.0.0.0 takes any of the
//! machine's) is always allowed, as is `localhost` on a loopback connection;
//! other names only when configured.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use hyper::http::uri::Authority;

/// Names the server also answers to: `(name, port)`, lowercase, without a
/// trailing dot; no port allows any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hosts {
    names: Vec<(String, Option<u16>)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a host name or host:port (e.g. \"hub.plant.example\" or \"hub.plant.example:8081\")")]
pub struct HostError(pub String);

impl Hosts {
    /// Parses configured entries: `name`, `name:port`, an IP, `[v6]:port`.
    pub fn parse(entries: &[String]) -> Result<Hosts, HostError> {
        let names = entries
            .iter()
            .map(|entry| {
                split(entry).filter(|(host, _)| !host.is_empty()).ok_or_else(|| HostError(entry.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Hosts { names })
    }

    /// Whether a request naming `host` (a `Host` value, or an absolute URI's
    /// authority) may be answered on a connection that arrived at `local`.
    pub fn allows(&self, host: &str, local: SocketAddr) -> bool {
        let Some((name, port)) = split(host) else { return false };
        // No port in a Host means the scheme's default.
        let port = port.unwrap_or(80);
        let local_ip = local.ip().to_canonical();
        let own = match name.parse::<IpAddr>() {
            Ok(ip) => ip.to_canonical() == local_ip,
            Err(_) => name == "localhost" && local_ip.is_loopback(),
        };
        (own && port == local.port())
            || self.names.iter().any(|(allowed, p)| *allowed == name && p.is_none_or(|p| p == port))
    }
}

/// `host[:port]` as (normalised host, port); None if it is not one.
fn split(text: &str) -> Option<(String, Option<u16>)> {
    // An Authority also takes `user@host`: a Host never has one.
    if text.contains('@') {
        return None;
    }
    let authority = Authority::from_str(text.trim()).ok()?;
    if authority.as_str().contains(':') && authority.port().is_none() && !authority.host().starts_with('[') {
        // "name:" or "name:port:..." parsed loosely.
        return None;
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    Some((host, authority.port_u16()))
}
