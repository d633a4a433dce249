//! systemd's service notifications (`sd_notify(3)`): `READY=1` once started,
//! `STOPPING=1` when stopping, and `WATCHDOG=1` while every loop turns, so a
//! wedged process is restarted (`Type=notify`, `WatchdogSec=` in the units).
//! Outside systemd (no `$NOTIFY_SOCKET`) all of it does nothing.
//!
//! The protocol is one datagram per message to the socket named in
//! `$NOTIFY_SOCKET` (a leading '@' names an abstract socket): no library needed.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use transport::Shutdown;

/// Sends `state` (e.g. `READY=1`) to systemd. Returns false when not
/// running under systemd's notification (or the send failed: logged).
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return false };
    let sent = (|| -> std::io::Result<()> {
        let address = match path.to_str().and_then(|p| p.strip_prefix('@')) {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
            None => SocketAddr::from_pathname(&path)?,
        };
        UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &address)?;
        Ok(())
    })();
    if let Err(e) = &sent {
        log::warn!("cannot notify systemd ({state}): {e}");
    }
    sent.is_ok()
}

/// The watchdog interval systemd expects pings within, if it watches this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    // WATCHDOG_PID, when set, says which process is meant.
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings systemd's watchdog from its own thread, but only while every loop
/// watching `shutdown` has turned in the last half interval; names the one
/// that has not (once) and stops pinging, so systemd restarts the process.
/// Does nothing unless systemd set a watchdog interval.
pub fn start_watchdog(shutdown: &Shutdown) -> std::io::Result<()> {
    let Some(interval) = watchdog_interval() else { return Ok(()) };
    let shutdown = shutdown.clone();
    std::thread::Builder::new().name("watchdog".into()).spawn(move || {
        let mut complained = false;
        while !shutdown.is_triggered() {
            let stale = shutdown.stuck(interval / 2);
            if stale.is_empty() {
                notify("WATCHDOG=1");
                complained = false;
            } else if !complained {
                log::error!(
                    "{} stopped turning: no watchdog ping, so systemd restarts the process",
                    stale.join(", ")
                );
                complained = true;
            }
            std::thread::sleep(interval / 4);
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket_systemd_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        systemd.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // The environment is the process's: this is the only test that sets it.
        std::env::set_var("NOTIFY_SOCKET", &path);
        assert!(notify("READY=1"));
        let mut buf = [0u8; 64];
        let n = systemd.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::env::remove_var("NOTIFY_SOCKET");
        assert!(!notify("READY=1"), "outside systemd: nothing to do");
    }
}
