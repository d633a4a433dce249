//! One shutdown request, seen by every loop that needs to stop.
//!
//! Each loop takes its own [`ShutdownWatch`]: a socket that becomes readable when
//! shutdown is triggered, so a libzmq poll loop (or an async task) wakes at
//! once instead of polling a flag on a timer.

use std::io::{self, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    triggered: AtomicBool,
    wakers: Mutex<Vec<UnixStream>>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every loop to stop. Idempotent.
    pub fn trigger(&self) {
        self.inner.triggered.store(true, Ordering::SeqCst);
        let wakers = self.inner.wakers.lock().unwrap_or_else(|e| e.into_inner());
        for mut waker in wakers.iter() {
            // A full or closed pipe already wakes (or no longer needs waking) its reader.
            let _ = waker.write(&[1]);
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::SeqCst)
    }

    /// A new readable-on-shutdown handle for one loop.
    pub fn watch(&self) -> io::Result<ShutdownWatch> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let mut wakers = self.inner.wakers.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock so a concurrent trigger cannot be missed.
        if self.is_triggered() {
            let _ = (&write).write(&[1]);
        }
        wakers.push(write);
        Ok(ShutdownWatch { read, shutdown: self.clone() })
    }
}

/// One loop's view of a [`Shutdown`].
pub struct ShutdownWatch {
    read: UnixStream,
    shutdown: Shutdown,
}

impl ShutdownWatch {
    pub fn is_set(&self) -> bool {
        self.shutdown.is_triggered()
    }

    /// For `zmq::poll`: readable once shutdown is triggered.
    pub fn poll_item(&self) -> zmq::PollItem<'static> {
        zmq::PollItem::from_fd(self.read.as_raw_fd(), zmq::POLLIN)
    }

    /// Sleeps for `duration` or until shutdown, whichever comes first.
    /// Returns true if shutdown was triggered.
    pub fn sleep(&self, duration: Duration) -> bool {
        if self.is_set() {
            return true;
        }
        let mut items = [self.poll_item()];
        let _ = zmq::poll(&mut items, duration.as_millis().min(i64::MAX as u128) as i64);
        self.is_set()
    }
}

impl AsRawFd for ShutdownWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
}

/// So an async runtime can await the shutdown (`smol::Async::new(watch)`).
impl std::os::fd::AsFd for ShutdownWatch {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.read.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn trigger_wakes_a_sleeping_loop() {
        let shutdown = Shutdown::new();
        let watch = shutdown.watch().unwrap();
        let t = shutdown.clone();
        let started = Instant::now();
        std::thread::spawn(move || t.trigger());
        assert!(watch.sleep(Duration::from_secs(10)));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_watch_taken_after_trigger_is_already_set() {
        let shutdown = Shutdown::new();
        shutdown.trigger();
        let watch = shutdown.watch().unwrap();
        let mut items = [watch.poll_item()];
        assert_eq!(zmq::poll(&mut items, 0).unwrap(), 1);
        assert!(watch.is_set());
    }
}
