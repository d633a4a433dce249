//! One shutdown request, seen by every loop that needs to stop.
//!
//! Each loop takes its own [`ShutdownWatch`]: a socket that becomes readable when
//! shutdown is triggered, so a libzmq poll loop (or an async task) wakes at
//! once instead of polling a flag on a timer.
//!
//! A loop checks its watch every turn, so the watch also counts the turns:
//! [`Shutdown::turns`] lets a watchdog see that every loop still turns (and
//! name the one that does not). A loop must therefore wake at least every
//! few seconds, which every loop here does to see reloads and deadlines anyway.

use std::io::{self, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    triggered: AtomicBool,
    wakers: Mutex<Vec<UnixStream>>,
    /// Each live watch's name and turns.
    turns: Mutex<Vec<(String, Weak<Turning>)>>,
}

/// A loop's turns: how many, and the last one's time (ms since [`epoch`]).
#[derive(Default)]
struct Turning {
    count: AtomicU64,
    last_ms: AtomicU64,
}

/// The clock turns are timed by: one process-wide start.
fn epoch() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// One loop's turns so far, as [`Shutdown::turns`] reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Turns {
    pub name: String,
    pub count: u64,
    /// Since its last turn (or since it was made, if it never turned).
    pub idle: Duration,
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

    /// A new readable-on-shutdown handle for one loop, named after the
    /// current thread.
    pub fn watch(&self) -> io::Result<ShutdownWatch> {
        let name = std::thread::current().name().unwrap_or("unnamed").to_string();
        self.watch_as(&name)
    }

    /// How often, and how long ago, each live watch was checked (dropped
    /// ones are left out).
    pub fn turns(&self) -> Vec<Turns> {
        let now_ms = epoch().elapsed().as_millis() as u64;
        let mut all = self.inner.turns.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|(_, turns)| turns.strong_count() > 0);
        all.iter()
            .filter_map(|(name, turns)| {
                let turns = turns.upgrade()?;
                let last = turns.last_ms.load(Ordering::Relaxed);
                let idle = Duration::from_millis(now_ms.saturating_sub(last));
                Some(Turns { name: name.clone(), count: turns.count.load(Ordering::Relaxed), idle })
            })
            .collect()
    }

    /// The loops that have not turned for `longer_than`.
    pub fn stuck(&self, longer_than: Duration) -> Vec<String> {
        self.turns().into_iter().filter(|t| t.idle > longer_than).map(|t| t.name).collect()
    }

    /// A watch only to wait on (an async task awaiting shutdown), not a
    /// loop: left out of [`Shutdown::turns`].
    pub fn waiter(&self) -> io::Result<ShutdownWatch> {
        self.make_watch(None)
    }

    /// [`Shutdown::watch`] for the loop called `name` (in [`Shutdown::turns`]).
    pub fn watch_as(&self, name: &str) -> io::Result<ShutdownWatch> {
        self.make_watch(Some(name))
    }

    fn make_watch(&self, name: Option<&str>) -> io::Result<ShutdownWatch> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let mut wakers = self.inner.wakers.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock so a concurrent trigger cannot be missed.
        if self.is_triggered() {
            let _ = (&write).write(&[1]);
        }
        wakers.push(write);
        let turns = Arc::new(Turning::default());
        turns.last_ms.store(epoch().elapsed().as_millis() as u64, Ordering::Relaxed);
        if let Some(name) = name {
            let mut all = self.inner.turns.lock().unwrap_or_else(|e| e.into_inner());
            all.push((name.to_string(), Arc::downgrade(&turns)));
        }
        Ok(ShutdownWatch { read, shutdown: self.clone(), turns })
    }
}

/// One loop's view of a [`Shutdown`].
pub struct ShutdownWatch {
    read: UnixStream,
    shutdown: Shutdown,
    turns: Arc<Turning>,
}

impl ShutdownWatch {
    /// Whether shutdown was triggered; also counts one turn of this loop.
    pub fn is_set(&self) -> bool {
        self.turns.count.fetch_add(1, Ordering::Relaxed);
        self.turns.last_ms.store(epoch().elapsed().as_millis() as u64, Ordering::Relaxed);
        self.shutdown.is_triggered()
    }

    /// For `zmq::poll`: readable once shutdown is triggered.
    pub fn poll_item(&self) -> zmq::PollItem<'static> {
        zmq::PollItem::from_fd(self.read.as_raw_fd(), zmq::POLLIN)
    }

    /// Sleeps for `duration` or until shutdown, whichever comes first.
    /// Returns true if shutdown was triggered.
    /// Counts as turning meanwhile (it wakes every second to say so).
    pub fn sleep(&self, duration: Duration) -> bool {
        let deadline = std::time::Instant::now() + duration;
        loop {
            if self.is_set() {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut items = [self.poll_item()];
            let _ = zmq::poll(&mut items, left.min(Duration::from_secs(1)).as_millis() as i64 + 1);
        }
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

    #[test]
    fn turns_are_counted_per_live_watch() {
        let shutdown = Shutdown::new();
        let a = shutdown.watch_as("broker").unwrap();
        let b = shutdown.watch_as("bus").unwrap();
        a.is_set();
        a.is_set();
        let counts: Vec<_> = shutdown.turns().into_iter().map(|t| (t.name, t.count)).collect();
        assert_eq!(counts, [("broker".to_string(), 2), ("bus".to_string(), 0)]);
        std::thread::sleep(Duration::from_millis(30));
        a.is_set();
        assert_eq!(shutdown.stuck(Duration::from_millis(20)), ["bus"], "the bus loop has not turned since");
        drop(b);
        assert_eq!(shutdown.turns().len(), 1, "a dropped watch is no loop to watch");
        assert!(!a.sleep(Duration::from_millis(1)));
        assert!(shutdown.turns()[0].count > 2, "sleeping counts as turning");
    }
}
