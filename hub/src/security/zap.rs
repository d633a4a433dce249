//! The ZAP handler: libzmq asks it about every CURVE connection to the hub.
//! It admits a key in the allow-list, as that identity, to a socket where the
//! identity's grants could do something; everything else is refused (and
//! counted). It must be bound before any CURVE socket, and outlive them:
//! libzmq admits everyone when no handler is bound. So the socket is never
//! closed early: not when the handler fails (it waits for the hub to stop),
//! and not by a panic (the process aborts first; see [`ZapHandler::serve`]).

use std::sync::Arc;

use proto::cert::Key;
use proto::zap::{self, Status};
use transport::frames::{recv_frames, send_frames, Received};
use transport::ShutdownWatch;

use super::denials::UNKNOWN;
use super::handshakes::Failure;
use super::{Kind, Security, SocketRole};

pub struct ZapHandler {
    socket: zmq::Socket,
    security: Arc<Security>,
}

/// The handler's answer to one request.
#[derive(Debug, PartialEq, Eq)]
pub struct Decision {
    pub status: Status,
    pub text: &'static str,
    pub user_id: String,
}

impl ZapHandler {
    /// Binds the ZAP endpoint in `ctx`, which must be the context of the
    /// hub's CURVE sockets.
    pub fn bind(ctx: &zmq::Context, security: Arc<Security>) -> zmq::Result<ZapHandler> {
        let socket = ctx.socket(zmq::REP)?;
        socket.set_linger(0)?;
        socket.bind(zap::ENDPOINT)?;
        Ok(ZapHandler { socket, security })
    }

    /// Runs the handler on this thread until `stop`. If it fails,
    /// `failed` is called (to stop the hub) and the socket stays bound,
    /// unanswered (connections wait, none is admitted) until `stop`. A panic
    /// aborts the process with the socket still bound.
    pub fn serve(self, stop: &ShutdownWatch, failed: impl FnOnce(&zmq::Error)) -> zmq::Result<()> {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(stop)));
        let result = match outcome {
            Ok(result) => result,
            Err(_) => {
                log::error!("ZAP handler panicked: the hub stops at once rather than admit unchecked peers");
                std::process::abort();
            }
        };
        if let Err(e) = &result {
            failed(e);
            while !stop.sleep(std::time::Duration::from_secs(1)) {}
        }
        drop(self);
        result
    }

    /// Answers requests until `stop`.
    fn run(&self, stop: &ShutdownWatch) -> zmq::Result<()> {
        let mut frames = Vec::with_capacity(8);
        while !stop.is_set() {
            let mut items = [self.socket.as_poll_item(zmq::POLLIN), stop.poll_item()];
            // Wakes every second, so the watchdog sees this loop turn.
            match zmq::poll(&mut items, 1000) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e),
            }
            // A REP socket must answer what it received: every request gets a reply.
            while recv_frames(&self.socket, &mut frames, 16, zmq::DONTWAIT)? != Received::WouldBlock {
                let mut scratch = Vec::new();
                match zap::parse(&frames, &mut scratch) {
                    Ok(request) => {
                        let decision = self.decide(&request);
                        let reply =
                            zap::reply(request.request_id, decision.status, decision.text, &decision.user_id);
                        send_frames(&self.socket, &reply, [""; 0], 0)?;
                    }
                    Err(e) => {
                        log::warn!("ZAP: malformed request: {e}");
                        send_frames(
                            &self.socket,
                            &zap::reply(b"", Status::Error, "malformed", ""),
                            [""; 0],
                            0,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    pub fn decide(&self, request: &zap::Request<'_>) -> Decision {
        let deny = |text| Decision { status: Status::Deny, text, user_id: String::new() };
        let address = String::from_utf8_lossy(request.address);
        let key = match (request.mechanism, request.credentials) {
            (b"CURVE", [key]) if key.len() == 32 => Key(key[..].try_into().expect("32 bytes")),
            _ => {
                self.security.denials.record(UNKNOWN, Kind::Connect, || {
                    format!(
                        "{address}: mechanism {} refused: CURVE only",
                        String::from_utf8_lossy(request.mechanism)
                    )
                });
                return deny("CURVE only");
            }
        };
        let allow = self.security.allow_list();
        let Some(identity) = allow.identity(&key) else {
            let domain = String::from_utf8_lossy(request.domain);
            self.security.handshake_failed(Failure::UnknownKey, || {
                format!("key {} from {address}, on {domain}", key.z85())
            });
            return deny("unknown key");
        };
        let domain = String::from_utf8_lossy(request.domain);
        if self.security.holds.is_held_off(identity, &domain, std::time::Instant::now()) {
            self.security.denials.record(identity, Kind::Connect, || {
                format!("{address}: {identity} is held off {domain} for a while, after going over its bounds there")
            });
            return deny("held off: over its bounds, try later");
        }
        let useful = SocketRole::from_domain(&domain)
            .is_some_and(|role| self.security.grants(identity).may_connect(role));
        if !useful {
            self.security.denials.record(identity, Kind::Connect, || {
                format!("{address}: no role of {identity} may use {domain}")
            });
            return deny("not allowed here");
        }
        Decision { status: Status::Allow, text: "OK", user_id: identity.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::testing::security;

    fn request<'a>(domain: &'a [u8], key: &'a [u8], credentials: &'a mut Vec<&'a [u8]>) -> zap::Request<'a> {
        credentials.push(key);
        zap::Request { request_id: b"1", domain, address: b"10.0.0.7", mechanism: b"CURVE", credentials }
    }

    #[test]
    fn admits_known_keys_where_they_can_act() {
        let ctx = zmq::Context::new();
        let security = Arc::new(security(&["pump-1", "stranger"], &[("pump-*", "agent")]));
        let handler = ZapHandler::bind(&ctx, security.clone()).unwrap();
        let key_of = |name: &str| security.allow_list().key_of(name).expect("listed");
        let pump = key_of("pump-1");
        let mut c = Vec::new();
        let ok = handler.decide(&request(b"plantd.broker", &pump.0, &mut c));
        assert_eq!((ok.status, ok.user_id.as_str()), (Status::Allow, "pump-1"));
        let mut c = Vec::new();
        let backend = handler.decide(&request(b"plantd.bus.backend.metric", &pump.0, &mut c));
        assert_eq!(backend.status, Status::Deny, "an agent may not subscribe");
        let mut c = Vec::new();
        let stranger = handler.decide(&request(b"plantd.broker", &key_of("stranger").0, &mut c));
        assert_eq!(stranger.status, Status::Deny, "no roles, nothing to do");
        let mut c = Vec::new();
        let unknown = handler.decide(&request(b"plantd.broker", &[1; 32], &mut c));
        assert_eq!(unknown.status, Status::Deny);
        assert_eq!(security.denials.count(UNKNOWN, Kind::Connect), 1);
        assert_eq!(security.denials.count("pump-1", Kind::Connect), 1);
    }
}
